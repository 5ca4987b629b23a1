"""Which routers make up the app, in order. Each module owns one area and
exposes ``router`` (a FastAPI APIRouter)."""

from __future__ import annotations

import importlib

from fastapi import FastAPI

# full module names, in the order their routes are matched
ROUTER_MODULES = (
    "townhall.server.api_accounts",
    "townhall.server.api_spaces",
    "townhall.server.api_space_cap",
    "townhall.server.api_stage",
    "townhall.server.api_webrtc",
    "townhall.server.api_state",
    "townhall.server.api_evidence",
    "townhall.server.api_queue",
    "townhall.origin.master",
    "townhall.server.api_captions",
    "townhall.server.api_clips",
    "townhall.origin.asgi",
    "townhall.server.local_bus",
    "townhall.server.pages",
)


def include_all(app: FastAPI) -> None:
    for name in ROUTER_MODULES:
        app.include_router(importlib.import_module(name).router)
