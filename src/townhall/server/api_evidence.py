"""Evidence over HTTP: ``/spaces/{id}/evidence.json`` (the signed chain,
cacheable), ``/spaces/{id}/evidence`` (the same as a page with plots),
``/api/evidence/key`` (this node's public key) and the players' stall
reports (``POST /api/spaces/{id}/stalls``) that measure goodput.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse, Response

from townhall import metrics
from townhall.errors import NotFound
from townhall.evidence.chain import ALGORITHM, key_id
from townhall.server.auth import (
    PROBLEM_RESPONSES,
    Bearer,
    client_host,
    client_network,
    refuse_if,
    services_of,
    verify,
)
from townhall.server.evidence_node import EvidenceNode
from townhall.server.evidence_page import render_page

router = APIRouter(tags=["evidence"], responses=PROBLEM_RESPONSES)

SpaceId = Annotated[str, Field(min_length=1, max_length=64)]


class KeyOut(BaseModel):
    algorithm: str
    public_key: str = Field(description="Raw Ed25519 public key, base64.")
    key_id: str


class StallsIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    played_s: float = Field(ge=0, le=600, description="Seconds played since the last report.")
    stalled_s: float = Field(
        ge=0, le=600, description="Seconds spent stalled (waiting for media) since the last report."
    )


class AcceptedOut(BaseModel):
    accepted: bool = True


def _node(request: Request) -> EvidenceNode:
    node: EvidenceNode | None = getattr(services_of(request), "evidence", None)
    if node is None:
        raise NotFound("This server does not record evidence.")
    return node


def _document(request: Request, space_id: str) -> dict[str, Any]:
    services = services_of(request)
    node = _node(request)
    doc = node.document(space_id)
    if doc is None:
        if services.spaces.index.get(space_id) is None:
            raise NotFound(f"There is no space '{space_id}'; check the link.")
        return node.empty_document(space_id)
    return doc


@router.get("/api/evidence/key", response_model=KeyOut, summary="This node's evidence key")
async def evidence_key(request: Request) -> KeyOut:
    public = _node(request).public_key
    return KeyOut(algorithm=ALGORITHM, public_key=public, key_id=key_id(public))


@router.get(
    "/spaces/{space_id}/evidence.json",
    summary="What the space saw: signed 10 s records (verify with `townhall evidence verify`)",
)
async def evidence_json(space_id: SpaceId, request: Request) -> Response:
    data = _node(request).document_bytes(space_id)
    if data is None:
        data = orjson.dumps(_document(request, space_id))
    max_age = services_of(request).settings.evidence_max_age_s
    return Response(
        data,
        media_type="application/json",
        headers={"Cache-Control": f"public, max-age={max_age}"},
    )


@router.get("/spaces/{space_id}/evidence", include_in_schema=False)
async def evidence_page(space_id: SpaceId, request: Request) -> HTMLResponse:
    doc = _document(request, space_id)
    max_age = services_of(request).settings.evidence_max_age_s
    return HTMLResponse(render_page(doc), headers={"Cache-Control": f"public, max-age={max_age}"})


@router.post(
    "/api/spaces/{space_id}/stalls",
    status_code=202,
    response_model=AcceptedOut,
    summary="A player's stall report (listener token; at most one per stall_report_interval_s)",
)
async def report_stalls(
    space_id: SpaceId, body: StallsIn, request: Request, _credentials: Bearer
) -> AcceptedOut:
    services = services_of(request)
    node = _node(request)
    claims = verify(request, "listener", space_id)
    interval = services.settings.stall_report_interval_s
    refuse_if(
        node.stall_tokens.hit_now(claims.token_id),
        "stalls-token",
        f"Report stalls at most once per {interval:g} s.",
    )
    network = client_network(client_host(request))
    refuse_if(
        node.stall_networks.hit_now(network),
        "stalls-network",
        "Too many stall reports from your network; try again later.",
    )
    rec = node.recorder(space_id)
    if rec is not None:
        rec.goodput(body.played_s, body.stalled_s)
    metrics.STALL_REPORTS.inc()
    return AcceptedOut()
