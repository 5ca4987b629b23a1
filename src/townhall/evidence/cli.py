"""``townhall evidence verify URL``: fetch a space's evidence chain, check
every link and signature, print a summary; exit 1 naming the first bad record.

The key is pinned: by ``--key`` (base64, e.g. published by the operator), or
else fetched from the same server's ``/api/evidence/key``, so a document
re-signed with another key and carrying that key fails too. URL may also be
a local file (a chain kept with a recording: ``evidence.jsonl`` or a saved
``evidence.json``; give ``--key`` then).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
import orjson

from townhall.evidence.chain import key_id, verify_chain


def _load(source: str, timeout_s: float) -> tuple[dict[str, Any], str | None]:
    """(document, the server's key URL or None for a file)."""
    path = Path(source)
    if not source.startswith(("http://", "https://")) and path.exists():
        data = path.read_bytes()
        if path.suffix == ".jsonl":
            records = [orjson.loads(line) for line in data.splitlines() if line.strip()]
            space = records[0].get("space_id") if records else None
            return {"space_id": space, "records": records}, None
        return orjson.loads(data), None
    url = source if "evidence" in source else source.rstrip("/") + "/evidence.json"
    response = httpx.get(url, timeout=timeout_s, follow_redirects=True)
    response.raise_for_status()
    parts = urlsplit(url)
    return response.json(), f"{parts.scheme}://{parts.netloc}/api/evidence/key"


@click.group("evidence")
def evidence_group() -> None:
    """Check what a space saw (its signed evidence chain)."""


@evidence_group.command("verify")
@click.argument("url")
@click.option("--key", "pinned", default=None, help="The node's public key (base64) to pin.")
@click.option("--timeout-s", default=10.0, show_default=True, help="HTTP timeout.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def verify_command(url: str, pinned: str | None, timeout_s: float, as_json: bool) -> None:
    """Verify the evidence chain at URL (…/spaces/ID/evidence.json, or a file)."""
    try:
        document, key_url = _load(url, timeout_s)
        if pinned is None and key_url is not None:
            pinned = str(httpx.get(key_url, timeout=timeout_s).json()["public_key"])
    except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
        raise click.ClickException(f"could not fetch the evidence: {exc}") from None
    if pinned is not None and "public_key" not in document:
        document["public_key"] = pinned
    verdict = verify_chain(document, pinned_key=pinned)
    summary = {
        "ok": verdict.ok,
        "space_id": document.get("space_id"),
        "key_id": key_id(pinned) if pinned else None,
        "records": verdict.records,
        "labels": dict(verdict.labels),
        "first": verdict.first_s,
        "last": verdict.last_s,
        "head": verdict.head,
        "problems": verdict.problems,
    }
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:

        def when(t: float | None) -> str:
            return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))

        click.echo(f"space     {summary['space_id']}")
        click.echo(f"key       {summary['key_id']}")
        click.echo(
            f"records   {verdict.records} good, {when(verdict.first_s)} .. {when(verdict.last_s)}"
        )
        labels = ", ".join(f"{k}: {v}" for k, v in sorted(verdict.labels.items())) or "-"
        click.echo(f"labels    {labels}")
        click.echo(f"head      {verdict.head}")
    if not verdict.ok:
        raise click.ClickException("verification FAILED: " + "; ".join(verdict.problems))
    if not as_json:
        click.echo("verified: every link and signature checks")
