"""`townhall bench storm`: a rehearsal of the night. N arrivals in T seconds
against a space with a cap, some before the start; then the host goes live.
Simulated listeners join, wait with their tickets as the waiting page does
(position from queue.json, the ticket posted when their turn comes or to
renew it), play once admitted (LL-HLS, or plain HLS when told so), leave
after a while so the line moves, and some give up waiting.

The bench creates its own host account and a scheduled space on the target
(so the target must run with a cap: ``--max-listeners``). Waiting listeners
read one shared copy of queue.json per second (the cache every deployment
has in front; ``--poll each`` makes every one fetch for itself, e.g. through
nginx). The load generator's own CPU is always reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
import orjson
import psutil
import uvloop

from townhall.bench import storm_report
from townhall.bench.hlsclient import (
    ListenerConfig,
    ListenerStats,
    run_llhls,
    run_plain_hls,
)
from townhall.bench.hlsplaylist import BenchError
from townhall.bench.listeners import is_loopback
from townhall.bench.playout import Playout
from townhall.bench.storm_client import StormClient, host_post, scrape, write_records
from townhall.bench.storm_probe import Probe, join_latency, summarize_probe
from townhall.bench.storm_report import Arrival, Sample
from townhall.bench.storm_wait import Lookouts, look
from townhall.policy.eta import eta_s

MAX_ARRIVALS = 15000
MAX_DURATION_S = 1800.0
POLL_S = 1.0
MAX_DOCS_KEPT = 4000  # queue.json copies kept for --records (one a second)


class Storm:
    def __init__(self, opts: dict[str, Any]) -> None:
        self.o = opts
        parts = urlsplit(opts["target"])
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.cfg = ListenerConfig(self.host, self.port, "/", "llhls", request_timeout_s=15.0)
        self.doc: dict[str, Any] = {}
        self.doc_at = 0.0
        self.max_doc_age_s = 0.0
        self.samples: list[Sample] = []
        self.docs: list[tuple[float, bytes]] = []  # (when read, body): the shared copies
        self.arrivals: list[Arrival] = []
        self.live_at: float | None = None
        self.space_id = ""
        self.host_headers: dict[str, str] = {}
        self.playing = 0
        self.arrived = 0
        self.lookouts = Lookouts(lambda: self.doc, shown_eta)
        self.join_s: list[tuple[float, float]] = []  # (when, seconds a join post took)
        self._parsed: dict[bytes, dict[str, Any]] = {}  # --poll each: bodies seen, parsed
        self.start_post_s: float | None = None  # how long the host's start took to answer

    # -- set-up: a host and a scheduled space --------------------------------------

    async def prepare(self, http: httpx.AsyncClient) -> None:
        creds = {"username": "storm" + secrets.token_hex(4), "password": secrets.token_urlsafe(12)}
        assert (await http.post("/api/accounts", json=creds)).status_code == 201
        session = await http.post("/api/sessions", json=creds)
        session.raise_for_status()
        self.host_headers = {"Authorization": f"Bearer {session.json()['token']}"}
        start = datetime.now(UTC) + timedelta(seconds=self.o["pre_s"] + 60)
        space = await http.post(
            "/api/spaces",
            json={
                "title": "Storm rehearsal",
                "visibility": "unlisted",
                "scheduled_for": start.isoformat(),
            },
            headers=self.host_headers,
        )
        space.raise_for_status()
        self.space_id = space.json()["id"]

    async def cap_of(self, http: httpx.AsyncClient) -> int:
        """The space's cap from queue.json; behind a load balancer another node
        may not know the new space for up to one index refresh, so ask again
        (bounded, 10 s)."""
        deadline = time.monotonic() + 10
        while True:
            doc = (await http.get(f"/spaces/{self.space_id}/queue.json")).json()
            if "max_listeners" in doc or time.monotonic() > deadline:
                return int(doc["max_listeners"])
            await asyncio.sleep(0.2)

    # -- the queue document (shared copy) ------------------------------------------------

    async def poll_doc(self, deadline: float) -> None:
        client = StormClient(self.cfg, ListenerStats(time.monotonic(), Playout(0)))
        url = f"/spaces/{self.space_id}/queue.json"
        while time.monotonic() < deadline:
            try:
                answer = await client.request(url, timeout_s=5.0)
                self.doc = orjson.loads(answer.body)
                self.doc_at = time.time()
                if self.o.get("records") and len(self.docs) < MAX_DOCS_KEPT:
                    self.docs.append((self.doc_at, answer.body))
                self.doc_age_s()  # how old the position is when a page gets it
                self.samples.append(
                    Sample(
                        self.doc_at,
                        int(self.doc["admitted"]),
                        int(self.doc["waiting"]),
                        int(self.doc["admitting_through"]),
                        int(self.doc.get("released_places", 0)),
                        self.arrived,
                        self.playing,
                    )
                )
            except (BenchError, orjson.JSONDecodeError, KeyError):
                client.close()
            await asyncio.sleep(POLL_S)
        client.close()

    async def fetch_doc(self, client: StormClient) -> dict[str, Any]:
        """``--poll each``: this waiter's own GET of queue.json (through
        whatever is in front); the same bytes are parsed once."""
        try:
            answer = await client.request(f"/spaces/{self.space_id}/queue.json", timeout_s=5.0)
        except BenchError:
            client.close()
            return {}
        doc = self._parsed.get(answer.body)
        if doc is None:
            try:
                doc = orjson.loads(answer.body)
            except orjson.JSONDecodeError:
                return {}
            if len(self._parsed) >= 8:
                self._parsed.clear()
            self._parsed[answer.body] = doc
            self.doc_age_s(doc)  # its age when first seen here (the oldest a copy can be)
        return doc

    def doc_age_s(self, doc: dict[str, Any] | None = None) -> float:
        updated = (self.doc if doc is None else doc).get("updated_at")
        if not updated:
            return 0.0
        age = time.time() - datetime.fromisoformat(updated).timestamp()
        self.max_doc_age_s = max(self.max_doc_age_s, age)
        return age

    # -- one arrival ---------------------------------------------------------------------

    async def arrival(self, a: Arrival, t0: float, deadline: float) -> None:
        await asyncio.sleep(max(0.0, t0 + a.offset_s - time.monotonic()))
        a.arrived_at = time.time()
        self.arrived += 1
        client = StormClient(self.cfg, a.stats)
        join = f"/api/spaces/{self.space_id}/join"
        body: dict[str, Any] = {}
        waited_since = time.monotonic()
        posted_at = time.monotonic()
        try:
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    status, answer, _ = await client.post_json(join, body)
                    self.join_s.append((time.time(), time.monotonic() - sent))
                except BenchError as exc:
                    # a slow or reset answer: try again as a page would (bounded)
                    a.refusals[f"client_{exc.kind}"] += 1
                    client.close()
                    if a.refusals.total() >= 20:
                        return
                    await asyncio.sleep(1.0)
                    continue
                posted_at = time.monotonic()
                if status == 200:
                    await self.play(a, client, answer, deadline)
                    return
                if status == 202:
                    a.queued = True
                    body = {"ticket": answer["ticket"]}
                    if isinstance(answer.get("number"), int):
                        a.number = answer["number"]
                        if a.eta_at is None and answer.get("eta_s") is not None:
                            a.eta_at, a.eta_s = time.time(), float(answer["eta_s"])
                        elif a.eta_at is None:
                            a.first_eta_unknown = True
                    retry_s = float(answer.get("retry_after_s") or 1.0)
                    if not await self.wait_turn(
                        a, client, posted_at, retry_s, waited_since, deadline
                    ):
                        return
                    continue
                a.refusals[str(answer.get("reason") or f"http_{status}")] += 1
                if status >= 500 and a.refusals.total() < 20:
                    await asyncio.sleep(float(answer.get("retry_after_s") or 1.0))
                    continue
                return
        finally:
            client.close()
            a.stats.ended_at_s = time.monotonic()

    async def wait_turn(
        self,
        a: Arrival,
        client: StormClient,
        posted_at: float,
        retry_s: float,
        since: float,
        deadline: float,
    ) -> bool:
        """Wait as the page does; True when it is time to post the ticket again."""
        if self.o["poll"] == "shared":
            return await self.lookouts.wait(a, posted_at, retry_s, since)
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            now = time.monotonic()
            if a.give_up_after_s is not None and now - since > a.give_up_after_s:
                a.gave_up_at = time.time()
                return False
            doc = await self.fetch_doc(client)
            if doc and look(
                a,
                doc,
                now=now,
                posted_at=posted_at,
                retry_s=retry_s,
                jitter=random.random(),
                eta_of=shown_eta,
            ):
                return True
        return False

    async def play(
        self, a: Arrival, client: StormClient, answer: dict[str, Any], deadline: float
    ) -> None:
        a.admitted_at = time.time()
        a.delivery = str(answer.get("delivery", "llhls"))
        a.stats.started_at_s = time.monotonic()
        token = str(answer.get("token", ""))
        client.cookie = "; ".join(f"{k}={v}" for k, v in client.jar.items()) or (
            f"th_listener={token}"
        )
        path = urlsplit(str(answer.get("listen_url") or answer["urls"]["live_m3u8"])).path
        runner = run_llhls if a.delivery == "llhls" else run_plain_hls
        self.playing += 1
        until = min(deadline, time.monotonic() + a.listen_s)
        try:
            for _ in range(5):
                try:
                    await runner(client, path, until)
                    break
                except BenchError as exc:
                    a.refusals[f"play_{exc.kind}"] += 1
                    client.close()
                    if time.monotonic() >= until:
                        break
        finally:
            self.playing -= 1
            if a.stats.first_audio_s is not None:
                a.first_audio_at = a.admitted_at + a.stats.first_audio_s
            a.stats.ended_at_s = time.monotonic()
            with contextlib.suppress(BenchError):
                await client.post_json(f"/api/spaces/{self.space_id}/leave", {"token": token})

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> storm_report.Summary:
        o = self.o
        # the host's and the bench's own requests: a fresh connection each, so
        # none is sent on a kept-alive one the server's idle timeout just closed
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=o["target"], timeout=15, limits=no_keepalive) as http:
            await self.prepare(http)
            metrics_before = (await http.get("/metrics")).text
            cap = await self.cap_of(http)
            if cap <= 0:
                raise click.UsageError("The target has no cap: start it with --max-listeners C.")
            rng = random.Random(o["seed"])
            n = o["arrivals"]
            for i in range(n):
                offset = o["over_s"] * i / max(1, n - 1)
                self.arrivals.append(
                    Arrival(
                        index=i,
                        offset_s=offset,
                        before_start=offset < o["pre_s"],
                        give_up_after_s=rng.uniform(3, 30) if rng.random() < o["give_up"] else None,
                        listen_s=rng.uniform(o["listen_s"] * 0.5, o["listen_s"] * 1.5),
                        stats=ListenerStats(0.0, Playout(0.0)),
                    )
                )
            proc = psutil.Process()
            cpu0 = sum(proc.cpu_times()[:2])
            t0 = time.monotonic()
            deadline = t0 + o["duration_s"]
            probe = Probe(o.get("server_pid"), o.get("origin"))
            tasks = [asyncio.create_task(self.poll_doc(deadline))]
            tasks.append(asyncio.create_task(probe.run(deadline)))
            tasks.append(asyncio.create_task(self.lookouts.run(deadline)))
            tasks += [asyncio.create_task(self.arrival(a, t0, deadline)) for a in self.arrivals]
            bar = None
            if o["progress"]:
                from tqdm import tqdm

                bar = tqdm(total=n, unit="admitted", file=sys.stderr, leave=False)
            metrics_live = ""
            while time.monotonic() < deadline:
                if self.live_at is not None and not metrics_live and time.time() > self.live_at + 2:
                    metrics_live = await scrape(http) or "-"  # "-": asked, not answered
                if self.live_at is None and time.monotonic() - t0 >= o["pre_s"]:
                    started = await host_post(
                        http, f"/api/spaces/{self.space_id}/start", self.host_headers
                    )
                    started.raise_for_status()
                    self.live_at = time.time()
                    self.start_post_s = time.monotonic() - t0 - o["pre_s"]
                if bar is not None:
                    bar.n = sum(1 for a in self.arrivals if a.admitted_at is not None)
                    bar.set_postfix(waiting=self.doc.get("waiting"), playing=self.playing)
                if all(t.done() for t in tasks[3:]):
                    break
                await asyncio.sleep(0.2)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
            if bar is not None:
                bar.close()
            wall_s = time.monotonic() - t0
            cpu_s = sum(proc.cpu_times()[:2]) - cpu0
            metrics_after = await scrape(http)
            await host_post(http, f"/api/spaces/{self.space_id}/end", self.host_headers)
        summary = storm_report.summarize(
            self.arrivals,
            self.samples,
            live_at=self.live_at,
            cap=cap,
            max_doc_age_s=self.max_doc_age_s,
            clock_late_p99_s=clock_late_p99(
                metrics_before if metrics_live in ("", "-") else metrics_live, metrics_after
            ),
            clock_late_whole_p99_s=clock_late_p99(metrics_before, metrics_after),
            client_cpu_percent=100 * cpu_s / wall_s if wall_s else 0.0,
            drawn_count=self.doc.get("drawn_count"),
            meta={
                "url": o["target"],
                "space": self.space_id,
                "wall_s": round(wall_s, 1),
                "start_post_s": None if self.start_post_s is None else round(self.start_post_s, 3),
                **{k: o[k] for k in ("arrivals", "over_s", "pre_s", "give_up", "listen_s", "poll")},
            },
        )
        summary["probe"] = summarize_probe(probe.seconds, t0=self.arrivals[0].arrived_at)
        summary["probe"].update(join_latency(self.join_s, self.arrivals[0].arrived_at))
        if o.get("records"):
            write_records(Path(o["records"]), self.arrivals, self.docs)
        if o["plot"]:
            storm_report.plot(self.samples, Path(o["plot"]), live_at=self.live_at)
        return summary


def shown_eta(
    doc: dict[str, Any], position: int, now_s: float, *, settled: bool = True
) -> float | None:
    """The ETA a waiting page shows (the model of policy/eta.py, fed by
    queue.json as a page is): from the document's time, less its age, plus
    this client's lag in noticing its turn (half an interval, one poll).
    ``settled=False``: the model before the settled speed (h1's: the full
    line's measured speed only), for the side-by-side figure."""
    free = doc.get("free_places")
    eta = eta_s(
        max(0, position),
        free_places=float("inf") if free is None else float(free),
        admit_rate_per_s=float(doc.get("admit_rate_per_s") or 0.0),
        full_rate_per_s=doc.get("full_rate_per_s"),
        lag_s=float(doc.get("interval_ms") or 1000) / 2000 + POLL_S,
        settled_rate_per_s=doc.get("settled_rate_per_s") if settled else None,
        settling=bool(doc.get("settling")) if settled else False,
    )
    if eta is None or position <= 0:
        return eta
    updated = doc.get("updated_at")
    age_s = 0.0 if not updated else now_s - _epoch_of(updated)
    return max(0.0, eta - max(0.0, age_s))


_EPOCHS: dict[str, float] = {}


def _epoch_of(iso: str) -> float:
    """An ISO time as epoch seconds, parsed once (every waiter looks at the
    same few documents)."""
    epoch = _EPOCHS.get(iso)
    if epoch is None:
        if len(_EPOCHS) > 64:
            _EPOCHS.clear()
        epoch = _EPOCHS[iso] = datetime.fromisoformat(iso).timestamp()
    return epoch


def clock_late_p99(before: str, after: str) -> float | None:
    """The p99 of the mixer clock's lateness during the run, as the upper
    bound of its histogram bucket (from two /metrics scrapes)."""

    def buckets(text: str) -> dict[float, float]:
        out: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith("townhall_mixer_clock_late_seconds_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                bound = float("inf") if le == "+Inf" else float(le)
                out[bound] = out.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    b0, b1 = buckets(before), buckets(after)
    delta = sorted((le, b1[le] - b0.get(le, 0.0)) for le in b1)
    if not delta or delta[-1][1] <= 0:
        return None
    total = delta[-1][1]
    for le, count in delta:
        if count >= 0.99 * total:
            return le
    return None


@click.command("storm")
@click.option(
    "--target", required=True, help="Base URL of a townhall started with --max-listeners C."
)
@click.option("--arrivals", type=int, default=10_000, show_default=True, help="How many arrive.")
@click.option(
    "--over-s", type=float, default=10.0, show_default=True, help="Seconds over which they arrive."
)
@click.option(
    "--pre-s",
    type=float,
    default=3.0,
    show_default=True,
    help="Seconds after the first arrival the host goes live (arrivals before it are shuffled).",
)
@click.option(
    "--give-up",
    type=float,
    default=0.05,
    show_default=True,
    help="Fraction of arrivals that give up waiting after 3-30 s.",
)
@click.option(
    "--listen-s",
    type=float,
    default=20.0,
    show_default=True,
    help="Mean seconds an admitted listener plays before leaving (0.5x-1.5x).",
)
@click.option(
    "--duration-s",
    type=float,
    default=240.0,
    show_default=True,
    help="The run ends after this, whatever is left.",
)
@click.option(
    "--poll",
    type=click.Choice(["shared", "each"]),
    default="shared",
    show_default=True,
    help="Waiting listeners read one shared queue.json per second (a cache in front), or each fetch their own.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--origin",
    default=None,
    help="The node's own URL when --target is a cache in front of it: its queue.json answers per second are counted.",
)
@click.option(
    "--server-pid",
    type=int,
    default=None,
    help="PID of the target's server on this machine: its CPU (with its children) is sampled each second.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG of admitted / waiting / arrivals over time.",
)
@click.option(
    "--records",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write one JSON line per arrival (numbers, times, stalls, ETAs shown) to this file, "
    "and every queue.json the shared copy read, one a line, to FILE.docs.",
)
@click.option("--allow-remote", is_flag=True, help="Allow a target that is not a loopback address.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
def storm_command(**kw: Any) -> None:
    """A join storm against a capped space: start delay, waits, ETA error,
    fairness, reclaimed places, stalls, mixer clock, refusals."""
    parts = urlsplit(kw["target"])
    if parts.scheme != "http" or not parts.hostname:
        raise click.UsageError("--target must be an http:// URL.")
    if not kw["allow_remote"] and not is_loopback(parts.hostname):
        raise click.UsageError("--target is not a loopback address; pass --allow-remote.")
    if not 1 <= kw["arrivals"] <= MAX_ARRIVALS:
        raise click.UsageError(f"--arrivals must be between 1 and {MAX_ARRIVALS}.")
    if not 1 <= kw["duration_s"] <= MAX_DURATION_S:
        raise click.UsageError(f"--duration-s must be between 1 and {MAX_DURATION_S:g}.")
    kw["progress"] = not kw.pop("no_progress") and sys.stderr.isatty()
    summary: storm_report.Summary = uvloop.run(Storm(kw).run())
    if kw["as_json"]:
        click.echo(orjson.dumps(summary).decode())
    else:
        click.echo(storm_report.format_table(summary))
