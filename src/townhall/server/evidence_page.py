"""The evidence page: the document's records as small inline SVG plots and a
table, server-rendered (no script, no dependency), so anyone can read it and
anyone can check it with ``townhall evidence verify``."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

COLORS = {"quiet": "#d9d9d9", "flash crowd": "#8fd18f", "attack": "#f08a8a", "mixed": "#f2cf7a"}
W, H, PAD = 720, 120, 30


def _when(epoch_s: Any) -> str:
    if not isinstance(epoch_s, (int, float)):
        return "?"
    return time.strftime("%H:%M:%S", time.gmtime(epoch_s))


def _plot(
    records: list[dict[str, Any]], title: str, value: Callable[[dict[str, Any]], float | None]
) -> str:
    values = [value(r) for r in records]
    known = [v for v in values if v is not None]
    top = max(known, default=0.0) or 1.0
    n = max(1, len(records))
    step = (W - 2 * PAD) / n
    bands = []
    points = []
    for i, (record, v) in enumerate(zip(records, values, strict=True)):
        x = PAD + i * step
        color = COLORS.get(str(record.get("label")), "#ffffff")
        bands.append(
            f'<rect x="{x:.1f}" y="{PAD / 2:.0f}" width="{step:.1f}" height="{H - PAD:.0f}" '
            f'fill="{color}" opacity="0.35"/>'
        )
        if v is not None:
            y = H - PAD / 2 - (v / top) * (H - PAD)
            points.append(f"{x + step / 2:.1f},{y:.1f}")
    line = (
        f'<polyline fill="none" stroke="#1f4e9c" stroke-width="2" points="{" ".join(points)}"/>'
        if points
        else ""
    )
    return (
        f"<figure><figcaption>{html.escape(title)} (max {top:g})</figcaption>"
        f'<svg role="img" aria-label="{html.escape(title)}" viewBox="0 0 {W} {H}" width="100%">'
        f"{''.join(bands)}{line}</svg></figure>"
    )


def _goodput(record: dict[str, Any]) -> float | None:
    share = (record.get("goodput") or {}).get("share")
    return float(share) if isinstance(share, (int, float)) else None


def render_page(doc: dict[str, Any]) -> str:
    records: list[dict[str, Any]] = list(doc.get("records") or [])
    space = html.escape(str(doc.get("space_id")))
    plots = "".join(
        [
            _plot(records, "Arrivals per interval", lambda r: float(r.get("arrivals", 0))),
            _plot(records, "Requests per interval", lambda r: float(r.get("requests", 0))),
            _plot(
                records,
                "Distinct client networks (estimate)",
                lambda r: float(r.get("networks_estimate", 0)),
            ),
            _plot(
                records, "Share of returning networks", lambda r: float(r.get("returning_share", 0))
            ),
            _plot(
                records,
                "Requests per client per second, p99",
                lambda r: float(r.get("rate_per_client_p99_per_s", 0)),
            ),
            _plot(records, "Listener goodput (share played without stall)", _goodput),
        ]
    )
    rows = "".join(
        "<tr>"
        f"<td>{r.get('seq')}</td><td>{_when(r.get('start_s'))}</td>"
        f'<td style="background:{COLORS.get(str(r.get("label")), "#fff")}">'
        f"{html.escape(str(r.get('label')))}</td>"
        f"<td>{r.get('arrivals')}</td><td>{r.get('networks_estimate')}</td>"
        f"<td>{r.get('returning_share')}</td><td>{r.get('rate_per_client_p99_per_s')}</td>"
        f"<td>{html.escape('; '.join(map(str, r.get('triggers') or [])))}</td>"
        "</tr>"
        for r in reversed(records[-200:])
    )
    legend = " ".join(
        f'<span style="background:{c};padding:0 .5em">{html.escape(k)}</span>'
        for k, c in COLORS.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evidence: space {space}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:15px system-ui,sans-serif;max-width:760px;margin:1em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 4px}}
figure{{margin:1em 0}}code{{word-break:break-all}}</style></head>
<body><h1>What space {space} saw</h1>
<p>{len(records)} signed records of {doc.get("interval_s")} s each. Key
<code>{html.escape(str(doc.get("key_id")))}</code> ({html.escape(str(doc.get("algorithm")))}):
<code>{html.escape(str(doc.get("public_key")))}</code>. Check it yourself:
<code>townhall evidence verify URL/spaces/{space}/evidence.json</code>.
The machine-readable chain is <a href="evidence.json">evidence.json</a>. No client
address is published; networks appear only as keyed hashes.</p>
<p>Labels: {legend}. The rule (thresholds in the document): busy when arrivals or
requests pass a threshold; <b>attack</b> when most networks are new and clients ask
far faster than players; <b>flash crowd</b> when most networks were seen before and
clients ask at player rates; otherwise <b>mixed</b>.</p>
{plots}
<table><thead><tr><th>seq</th><th>start (UTC)</th><th>label</th><th>arrivals</th>
<th>networks</th><th>returning</th><th>rate p99/s</th><th>why</th></tr></thead>
<tbody>{rows}</tbody></table></body></html>"""
