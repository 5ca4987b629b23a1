#!/usr/bin/env python3
"""townhall's listener plane side by side with nginx (static HLS) and Icecast 2
(progressive HTTP), on one 2-core machine, in one bounded run.

    .venv/bin/python benchmarks/side_by_side.py            # ~10 minutes at most

Servers run pinned to core 0 (``taskset -c 0``); the load generator (``townhall
bench listeners``, one process per step), wrk, the ffmpeg feeds and the speaker
bot run on core 1. For each system the number of concurrent listeners steps up
(250, 500, 1000, ...) until the stall ratio passes 0.5 %, listeners are lost,
the load generator saturates its core, or the time budget runs out. Server CPU
and RSS come from psutil on the server's processes.

Writes docs/BENCHMARKS.md (sections "Listeners side by side" and "Join
storm"), docs/plots/*.png and benchmarks/results/side_by_side.json. Traffic
goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from townhall.bench import report  # noqa: E402

SERVER_CORE = "0"
CLIENT_CORE = "1"
BITRATE = "64k"  # townhall's program_bitrate_bps default
SEGMENT_S = 4.096  # townhall: 8 parts of 0.512 s
STALL_BAR = report.STALL_BAR


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render(template: Path, **fields: str) -> str:
    text = template.read_text()
    for key, value in fields.items():
        text = text.replace("${" + key + "}", value)
    return text


def pinned(core: str, cmd: Sequence[str]) -> list[str]:
    return ["taskset", "-c", core, *cmd]


class Child:
    """A child process we started (and only those), stopped by ``stop``."""

    def __init__(self, name: str, cmd: Sequence[str], log_path: Path, **kw: Any) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            list(cmd), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw
        )
        self.ps = psutil.Process(self.popen.pid)

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.procs():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for p in self.procs():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self._log.close()


def wait_http(url: str, ok: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=2)
            if ok(r):
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready at {url} after {timeout_s:g} s: {last}")


# -- the systems ------------------------------------------------------------------


def serve_pinned(
    name: str, src: Path, tmp: Path, env_extra: dict[str, str], wait_s: float = 60
) -> tuple[Child, str]:
    """``townhall serve`` from ``src`` pinned to SERVER_CORE (cheap password
    hashing, ``env_extra`` on top), answered /healthz; returns it and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(src), TOWNHALL_ARGON2_TIME_COST="1",
               TOWNHALL_ARGON2_MEMORY_KIB="1024", **env_extra)  # fmt: skip
    server = Child(
        name,
        pinned(SERVER_CORE, [sys.executable, "-m", "townhall", "serve", "--port", str(port),
                             "--data-dir", str(tmp / f"{name}-data"), "--log-level", "warning"]),
        tmp / f"{name}.log",
        env=env,
    )  # fmt: skip
    wait_http(url + "/healthz", lambda r: r.status_code == 200, wait_s, name)
    return server, url


def sign_up_host(http: httpx.Client) -> str:
    """A fresh host account on ``http``'s server; returns its bearer token."""
    user, password = "benchhost", secrets.token_urlsafe(12)
    http.post("/api/accounts", json={"username": user, "password": password}).raise_for_status()
    session = http.post("/api/sessions", json={"username": user, "password": password})
    session.raise_for_status()
    return str(session.json()["token"])


@dataclass
class System:
    key: str
    label: str
    server: Child
    target: str
    path: str
    mode: str
    notes: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    baseline_cpu_per_s: float = 0.0
    baseline_rss: int = 0


@dataclass
class Lab:
    tmp: Path
    tone: Path
    children: list[Child] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def start(self, name: str, cmd: Sequence[str], **kw: Any) -> Child:
        child = Child(name, cmd, self.tmp / f"{name}.log", **kw)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()


def make_tone(tmp: Path) -> Path:
    """60 s of a 440 Hz tone with a 3 Hz tremolo (so encoders cannot coast on
    silence), mono 48 kHz WAV: the same audio for every system."""
    path = tmp / "tone.wav"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "sine=frequency=440:sample_rate=48000:duration=60", "-af", "tremolo=f=3:d=0.5",
         "-ac", "1", str(path)],
        check=True,
    )  # fmt: skip
    return path


def start_townhall(lab: Lab) -> tuple[System | None, str, str]:
    """townhall serve on core 0 with a live space; the speak bot loops the tone
    (on core 1). Returns the system (None if it could not start), base URL, id."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update({"TOWNHALL_ARGON2_TIME_COST": "1", "TOWNHALL_ARGON2_MEMORY_KIB": "1024"})
    # every simulated listener comes from 127.0.0.1: one client network
    env["TOWNHALL_HTTP_MAX_CONNECTIONS_PER_NETWORK"] = "0"
    # ... whose plain HLS reloads are far over one network's playlist bucket
    env["TOWNHALL_PLAYLISTS_PER_NETWORK_PER_10S"] = "100000000"
    server = lab.start(
        "townhall",
        pinned(SERVER_CORE, [sys.executable, "-m", "townhall", "serve", "--port", str(port),
                             "--data-dir", str(lab.tmp / "townhall-data"), "--log-level", "warning"]),
        env=env,
    )  # fmt: skip
    try:
        wait_http(url + "/healthz", lambda r: r.status_code == 200, 30, "townhall")
        user, password = "benchhost", secrets.token_urlsafe(12)
        with httpx.Client(base_url=url, timeout=10) as http:
            http.post(
                "/api/accounts", json={"username": user, "password": password}
            ).raise_for_status()
            token = http.post(
                "/api/sessions", json={"username": user, "password": password}
            ).json()["token"]
            space = http.post(
                "/api/spaces",
                json={"title": "side by side", "visibility": "public"},
                headers={"Authorization": f"Bearer {token}"},
            )
            space.raise_for_status()
            space_id = space.json()["id"]
    except (RuntimeError, httpx.HTTPError, KeyError) as exc:
        lab.notes.append(f"townhall could not start a live space: {exc}")
        return None, url, ""
    system = System("townhall", "townhall", server, url, "", "llhls")
    bot = lab.start(
        "speak",
        pinned(CLIENT_CORE, [sys.executable, "-m", "townhall", "speak", str(lab.tone), "--server", url,
                             "--space", space_id, "--username", user, "--password", password, "--loop"]),
        env=env,
    )  # fmt: skip
    time.sleep(2)
    if not bot.alive():
        system.notes.append(
            "the speak bot exited (see speak.log); the space stayed live on the stage clock's silence"
        )
    return system, url, space_id


def start_nginx(lab: Lab) -> tuple[System, Path]:
    """ffmpeg (core 1) writes live HLS from the tone at the same bitrate and
    segment length; nginx (core 0, one worker) serves the files."""
    port = free_port()
    prefix = lab.tmp / "nginx"
    www = prefix / "www"
    (www / "hls").mkdir(parents=True)
    (www / "parts").mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(
        render(
            ROOT / "benchmarks" / "nginx.conf.template",
            prefix=str(prefix),
            port=str(port),
            root=str(www),
        )
    )
    lab.start(
        "ffmpeg-hls",
        pinned(CLIENT_CORE, ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
                             "-i", str(lab.tone), "-c:a", "aac", "-b:a", BITRATE, "-ar", "48000", "-ac", "1",
                             "-f", "hls", "-hls_time", str(SEGMENT_S), "-hls_list_size", "12",
                             "-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4",
                             "-hls_flags", "delete_segments+independent_segments+temp_file+omit_endlist",
                             str(www / "hls" / "plain.m3u8")]),
    )  # fmt: skip
    server = lab.start(
        "nginx",
        pinned(
            SERVER_CORE,
            ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        ),
    )
    url = f"http://127.0.0.1:{port}"
    return System("nginx", "nginx static HLS", server, url, "/hls/plain.m3u8", "hls"), www


def start_icecast(lab: Lab) -> System:
    port = free_port()
    password = secrets.token_hex(8)
    logdir = lab.tmp / "icecast"
    logdir.mkdir()
    changeowner = ""
    if os.geteuid() == 0:  # icecast refuses to run as root; it drops to its Debian user
        changeowner = (
            "        <changeowner><user>icecast2</user><group>icecast</group></changeowner>"
        )
        shutil.chown(logdir, user="icecast2")
    conf = lab.tmp / "icecast.xml"
    conf.write_text(
        render(ROOT / "benchmarks" / "icecast.xml.template", max_clients="20000", password=password,
               port=str(port), logdir=str(logdir), changeowner=changeowner)
    )  # fmt: skip
    server = lab.start("icecast", pinned(SERVER_CORE, ["icecast2", "-c", str(conf)]))
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/status-json.xsl", lambda r: r.status_code == 200, 15, "icecast")
    lab.start(
        "ffmpeg-icecast",
        pinned(CLIENT_CORE, ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
                             "-i", str(lab.tone), "-c:a", "aac", "-b:a", BITRATE, "-ar", "48000", "-ac", "1",
                             "-f", "adts", "-content_type", "audio/aac",
                             f"icecast://source:{password}@127.0.0.1:{port}/live.aac"]),
    )  # fmt: skip
    return System("icecast", "Icecast 2", server, url, "/live.aac", "progressive")


# -- measuring ----------------------------------------------------------------------


def idle_baseline(system: System, seconds: float = 3.0) -> None:
    c0, t0 = system.server.cpu_s(), time.monotonic()
    time.sleep(seconds)
    system.baseline_cpu_per_s = (system.server.cpu_s() - c0) / (time.monotonic() - t0)
    system.baseline_rss = system.server.rss_bytes()


def bench_cmd(target: str, path: str | None, space: str | None, mode: str, listeners: int,
              duration_s: float, ramp_s: float, *, shape: str = "steady", join: bool = False) -> list[str]:  # fmt: skip
    cmd = [sys.executable, "-m", "townhall", "bench", "listeners", "--target", target, "--mode", mode,
           "--shape", shape, "--listeners", str(listeners), "--duration-s", f"{duration_s:g}",
           "--ramp-s", f"{ramp_s:g}", "--json"]  # fmt: skip
    if path:
        cmd += ["--path", path]
    if space:
        cmd += ["--space", space]
    if join:
        cmd.append("--join")
    return pinned(CLIENT_CORE, cmd)


def run_bench(cmd: list[str], timeout_s: float) -> dict[str, Any]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench failed ({out.returncode}): {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def step(system: System, listeners: int, duration_s: float) -> dict[str, Any]:
    """One fixed-length step: the load generator on core 1, server CPU and peak
    RSS measured around it."""
    ramp_s = min(3.0, duration_s / 4)
    peak = [system.server.rss_bytes()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            peak[0] = max(peak[0], system.server.rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    core0 = core_busy_s()
    c0, t0 = system.server.cpu_s(), time.monotonic()
    sampler.start()
    try:
        summary = run_bench(
            bench_cmd(system.target, system.path, None, system.mode, listeners, duration_s, ramp_s),
            timeout_s=duration_s + 60,
        )
    finally:
        stop.set()
        sampler.join()
    wall = time.monotonic() - t0
    cpu = system.server.cpu_s() - c0
    core0_busy = core_busy_s() - core0
    listener_h = summary["listener_s"] / 3600
    marginal = max(0.0, cpu - system.baseline_cpu_per_s * wall)
    summary.update(
        {
            "server_cpu_s": round(cpu, 3),
            "server_cpu_percent": round(100 * cpu / wall, 1),
            # everything that ran on the server's core, ours or not (a shared machine)
            "core0_busy_percent": round(100 * core0_busy / wall, 1),
            "server_cpu_s_per_listener_hour": round(marginal / listener_h, 3)
            if listener_h
            else None,
            "server_rss_peak_bytes": peak[0],
            "server_rss_per_listener_bytes": round((peak[0] - system.baseline_rss) / listeners),
            "step_wall_s": round(wall, 2),
        }
    )
    for key in ("ttfa_quantiles_s", "join_quantiles_s"):
        summary.setdefault(key, [])
    return summary


def core_busy_s() -> float:
    """Seconds core 0 spent busy (all processes): shows contention from others."""
    t = psutil.cpu_times(percpu=True)[int(SERVER_CORE)]
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


def passes(summary: dict[str, Any]) -> bool:
    ratio = summary["stall_ratio"]
    return (
        ratio is not None
        and ratio <= STALL_BAR
        and summary["listeners_held"] >= 0.99 * summary["listeners"]
    )


def capacity(system: System) -> dict[str, Any]:
    """Most listeners held at the bar, and the extrapolation from measured
    marginal server CPU per listener when the server was not the limit."""
    good = [s for s in system.steps if passes(s)]
    best = max(good, key=lambda s: s["listeners"]) if good else None
    out: dict[str, Any] = {"measured": best["listeners"] if best else 0}
    if best is None:
        return out
    cpu_per_listener_s = best["server_cpu_s_per_listener_hour"] / 3600  # core-seconds per second
    headroom = max(0.0, 1.0 - system.baseline_cpu_per_s)
    if cpu_per_listener_s > 0:
        out["per_core_estimate"] = int(headroom / cpu_per_listener_s)
    last = system.steps[-1]
    if last["client_saturated"]:
        out["limit"] = "load generator saturated"
    elif not passes(last):
        out["limit"] = "server (stall bar or lost listeners)"
    else:
        out["limit"] = "time budget / step list"
    return out


def run_steps(system: System, counts: Sequence[int], step_s: float, budget_end: float) -> None:
    for n in counts:
        if time.monotonic() + step_s + 20 > budget_end:
            system.notes.append(f"time budget reached before the {n}-listener step")
            break
        if not system.server.alive():
            system.notes.append("server process exited")
            break
        log(f"{system.label}: {n} listeners for {step_s:g} s")
        try:
            s = step(system, n, step_s)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            system.notes.append(f"{n}-listener step failed: {exc}")
            break
        system.steps.append(s)
        ratio = s["stall_ratio"]
        log(f"  held {s['listeners_held']}/{n}, stall {100 * (ratio or 0):.3f} %, server CPU "
            f"{s['server_cpu_percent']} % (core 0 busy {s['core0_busy_percent']} %), client CPU {s['client_cpu_percent']} %, errors {s['errors']}")  # fmt: skip
        if not passes(s) or s["client_saturated"]:
            break


# -- wrk -----------------------------------------------------------------------------


WRK_LUA = """-- cycles through part URLs, as a crowd of listeners does
local paths = {%s}
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def wrk(
    lab: Lab, server: Child, url: str, paths: Sequence[str], seconds: float, name: str
) -> dict[str, Any]:
    script = lab.tmp / f"{name}.lua"
    script.write_text(WRK_LUA % ", ".join(json.dumps(p) for p in paths))
    c0, t0, busy0 = server.cpu_s(), time.monotonic(), core_busy_s()
    out = subprocess.run(
        pinned(CLIENT_CORE, ["wrk", "-t1", "-c64", f"-d{seconds:g}s", "--latency", "-s", str(script), url]),
        capture_output=True, text=True, timeout=seconds + 30, check=False,
    )  # fmt: skip
    wall = time.monotonic() - t0
    cpu = server.cpu_s() - c0
    busy = core_busy_s() - busy0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    rps = float(m.group(1)) if m else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out.stdout)
    cores = cpu / wall if wall else 0.0
    return {
        "requests_per_s": rps,
        "server_cores": round(cores, 3),
        "core0_busy_percent": round(100 * busy / wall, 1) if wall else None,
        "requests_per_s_per_core": round(rps / cores, 1) if cores else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "paths": len(paths),
        "command": f"taskset -c 1 wrk -t1 -c64 -d{seconds:g}s --latency -s {name}.lua {url}",
    }


def median_pair(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The round pair (townhall, nginx) with the median per-core ratio; every
    round's ratio is kept for the report."""

    def ratio(pair: tuple[dict[str, Any], dict[str, Any]]) -> float:
        a, b = pair[0]["requests_per_s_per_core"], pair[1]["requests_per_s_per_core"]
        return float(a / b) if a and b else 0.0

    ranked = sorted(pairs, key=ratio)
    townhall, nginx = ranked[len(ranked) // 2]
    townhall = dict(townhall, round_ratios=[round(ratio(p), 3) for p in pairs])
    return {"townhall LL-HLS parts": townhall, "nginx static files": nginx}


def townhall_parts(url: str, space_id: str, www: Path) -> list[str]:
    """The part URLs of townhall's live playlist, and a copy of each part's bytes
    under nginx's root (same sizes for the static comparison)."""
    from townhall.bench.hlsplaylist import parse_playlist

    with httpx.Client(base_url=url, timeout=10) as http:
        text = http.get(f"/spaces/{space_id}/live.m3u8").text
        playlist = parse_playlist(text)
        paths = []
        for part in playlist.all_parts():
            path = f"/spaces/{space_id}/{part.uri}"
            body = http.get(path).content
            name = part.uri.replace("/", "_")
            (www / "parts" / name).write_bytes(body)
            paths.append(path)
    return paths


# -- output ---------------------------------------------------------------------------


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def section_listeners(res: dict[str, Any]) -> str:
    lines = [
        "## Listeners side by side",
        "",
        f"Run {res['date']} on {res['machine']} by `{res['command']}` "
        f"(whole run {res['wall_s']:.0f} s). Servers pinned to core 0, load generator "
        "(`townhall bench listeners`, one process per step), wrk, ffmpeg feeds and the speak bot "
        f"on core 1. Same audio everywhere: a 440 Hz tone with tremolo, AAC-LC {BITRATE}bit/s mono "
        "48 kHz; HLS segments of ~4.1 s (townhall: 8 parts of 0.512 s). Each step "
        f"runs {res['step_s']:g} s (3 s ramp included); a step passes when the stall ratio "
        f"is <= {100 * STALL_BAR:g} % and >= 99 % of listeners are held. "
        "The machine is shared with other work, so figures move by some 10-20 % between runs.",
        "",
        "| system | listeners | held | stall % | TTFA p50 / p99 s | server CPU % of core (core 0 busy %) | server CPU-s per listener-hour | server RSS per listener | client CPU % | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sys_ in res["systems"]:
        for s in sys_["steps"]:
            ratio = s["stall_ratio"]
            lines.append(
                f"| {sys_['label']} | {s['listeners']} | {s['listeners_held']} | "
                f"{'-' if ratio is None else f'{100 * ratio:.3f}'} | {fmt(s['ttfa_p50_s'])} / {fmt(s['ttfa_p99_s'])} | "
                f"{s['server_cpu_percent']} ({s.get('core0_busy_percent', '-')}) | {fmt(s['server_cpu_s_per_listener_hour'])} | "
                f"{s['server_rss_per_listener_bytes'] / 1024:.1f} KiB | {s['client_cpu_percent']}"
                f"{' (saturated)' if s['client_saturated'] else ''} | "
                f"{', '.join(f'{k} {v}' for k, v in s['errors'].items()) or '-'} |"
            )
    lines += [
        "",
        "Capacity per core at the stall bar: *measured* is the largest step that passed; "
        "*estimate* is (1 core - idle CPU) / (marginal server CPU per listener at that step), "
        "i.e. linear extrapolation from measured server CPU, used where the load generator "
        "or the time budget stopped the steps before the server did.",
        "",
        "| system | measured | per-core estimate | what stopped the steps | idle CPU % | notes |",
        "|---|---|---|---|---|---|",
    ]
    for sys_ in res["systems"]:
        cap = sys_["capacity"]
        lines.append(
            f"| {sys_['label']} | {cap.get('measured', 0)} | {fmt(cap.get('per_core_estimate'))} | "
            f"{cap.get('limit', '-')} | {100 * sys_['baseline_cpu_per_s']:.1f} | {'; '.join(sys_['notes']) or '-'} |"
        )
    lines += ["", "Ratios (per-core estimates):", ""]
    for name, value in res["ratios"].items():
        lines.append(f"- {name}: {fmt(value)}")
    w = res.get("wrk", {})
    if w:
        lines += ["", "Request rate, wrk cycling over the live window's part URLs (townhall) and "
                  "the same bytes as static files (nginx), in rounds that alternate between the two "
                  "(the median round pair is shown; the server's cores used include, for townhall, "
                  "its live space's stage and encoder, ~0.1 core):", "",
                  "| server | requests/s | server cores used (core 0 busy %) | requests/s per core | non-2xx |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, r in w.items():
            lines.append(f"| {name} | {r['requests_per_s']:.0f} | {r['server_cores']} ({r.get('core0_busy_percent', '-')}) | "
                         f"{fmt(r['requests_per_s_per_core'], 4)} | {r['non_2xx']} |")  # fmt: skip
        th_w = w.get("townhall LL-HLS parts") or {}
        if th_w.get("round_ratios"):
            lines += ["", "townhall / nginx requests per core, each round: "
                      + ", ".join(f"{x:.3f}" for x in th_w["round_ratios"])]  # fmt: skip
        lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in w.values())]
    lines += ["", "Bars:", ""] + [f"- {b}" for b in res["bars"]]
    a, b = w.get("townhall LL-HLS parts"), w.get("nginx static files")
    if a and b and a["requests_per_s_per_core"] and b["requests_per_s_per_core"]:
        us_th, us_ng = 1e6 / a["requests_per_s_per_core"], 1e6 / b["requests_per_s_per_core"]
        lines += [
            "",
            "What limits townhall here:",
            "",
            f"- Cost per request: {us_th:.0f} us of server CPU per part request against nginx's "
            f"{us_ng:.0f} us. Every LL-HLS listener makes two requests per 0.512 s part (the hinted "
            "part and the blocking reload), so a core serves about "
            f"{a['requests_per_s_per_core'] / 4:.0f} LL-HLS listeners at best, before playlists and the encoder.",
            "- Bursts: every blocked listener wakes at the same instant when a part is published; the "
            "fast path answers them in slices (`--listener-wake-batch`) so the mixer clock keeps its "
            "20 ms schedule, but a listener's buffer is only PART-HOLD-BACK minus one part (~1 s) "
            "ahead, so all the answers of one publish must go out within that.",
            "- What is left per request is mostly the kernel (one recv, one send on loopback, charged "
            "to the server) plus some 5-8 us of Python in uvicorn's httptools callbacks and the fast "
            "path; matching nginx would take a C or Rust front end. The deployment guide puts nginx "
            "or a CDN in front instead, which serves the immutable parts and collapses blocking "
            "reloads (proxy_cache_lock), so the origin's cost grows with caches, not listeners.",
            "- Column 'core 0 busy' counts every process on the server's core: the gap to the server's "
            "own CPU is other work on this shared machine, which also shortens townhall's budget.",
        ]
    if res["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in res["notes"]]
    lines += [
        "",
        "![listeners vs server CPU](plots/listeners_cpu.png)",
        "![time to first audio](plots/ttfa_cdf.png)",
        "",
        "Reproduce one step by hand: `taskset -c 1 townhall bench listeners --target "
        "http://127.0.0.1:8000 --space ID --mode llhls --listeners 1000 --duration-s 20`.",
        "",
    ]
    return "\n".join(lines)


def section_storm(res: dict[str, Any]) -> str:
    st = res.get("storm")
    lines = ["## Join storm", ""]
    if not st:
        lines += [
            "Not measured in the last run: "
            + res.get("storm_note", "townhall was not available")
            + ".",
            "",
        ]
        return "\n".join(lines)
    s, bg = st["storm"], st["background"]
    lines += [
        f"Run {res['date']}: {bg['listeners']} LL-HLS listeners already playing (steady), then "
        f"{s['listeners']} more join from 0 in {s['ramp_s']:g} s, each doing what a player does: "
        "`POST /api/spaces/{id}/join`, then the LL-HLS URL it hands out. Both load generators on core 1, "
        "townhall on core 0.",
        "",
        f"Command: `{st['command']}`",
        "",
        "| what | value |",
        "|---|---|",
        f"| joins | {s['joins']} ({s['joins'] / s['ramp_s']:.0f}/s offered) |",
        f"| join latency p50 / p99 | {fmt(s['join_p50_s'])} s / {fmt(s['join_p99_s'])} s |",
        f"| time to first audio p50 / p99 (storm) | {fmt(s['ttfa_p50_s'])} s / {fmt(s['ttfa_p99_s'])} s |",
        f"| storm listeners held | {s['listeners_held']} / {s['listeners']} |",
        f"| stall % storm / background | {fmt(100 * (s['stall_ratio'] or 0))} / {fmt(100 * (bg['stall_ratio'] or 0))} |",
        f"| errors storm / background | {s['errors'] or '-'} / {bg['errors'] or '-'} |",
        f"| server CPU during the storm | {st['server_cpu_percent']} % of core 0 |",
        f"| client CPU storm / background | {s['client_cpu_percent']} % / {bg['client_cpu_percent']} % |",
        "",
        "![join latency](plots/join_cdf.png)",
        "",
    ]
    return "\n".join(lines)


def write_doc(path: Path, sections: dict[str, str]) -> None:
    """Replace (or append) our sections; other sections of the file stay as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    for title, body in sections.items():
        pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
        if pattern.search(text):
            text = pattern.sub(lambda _m, b=body: b.rstrip() + "\n\n", text, count=1)
        else:
            text = text.rstrip() + "\n\n" + body.rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")


# -- main ----------------------------------------------------------------------------------


@contextlib.contextmanager
def lab_dir(keep: bool) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="townhall-sbs-"))
    tmp.chmod(0o755)  # nginx's worker and icecast drop privileges when run as root
    try:
        yield tmp
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--steps", default="250,500,1000,2000,4000,8000", help="listener counts to step through"
    )
    ap.add_argument("--step-s", type=float, default=12.0, help="length of each step")
    ap.add_argument(
        "--budget-s", type=float, default=570.0, help="whole run, setup included (max 600)"
    )
    ap.add_argument("--wrk-s", type=float, default=5.0, help="length of each wrk round")
    ap.add_argument(
        "--wrk-rounds",
        type=int,
        default=3,
        help="wrk rounds, townhall and nginx interleaved (other load on a shared machine drifts; the median round pair counts)",
    )
    ap.add_argument("--storm-ramp-s", type=float, default=10.0)
    ap.add_argument(
        "--only",
        default="",
        help="comma list of: townhall-llhls,townhall-hls,townhall-progressive,nginx,icecast",
    )
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    ap.add_argument("--plots", type=Path, default=ROOT / "docs" / "plots")
    ap.add_argument(
        "--json-out", type=Path, default=ROOT / "benchmarks" / "results" / "side_by_side.json"
    )
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument(
        "--from-json", type=Path, default=None, help="rewrite doc and plots from a saved run"
    )
    args = ap.parse_args(argv)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        plots(saved, args.plots)
        write_doc(
            args.doc,
            {
                "Listeners side by side": section_listeners(saved),
                "Join storm": section_storm(saved),
            },
        )
        return 0
    for tool in ("taskset", "ffmpeg", "nginx", "icecast2", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run scripts/setup.sh --test", file=sys.stderr)
            return 2
    if psutil.cpu_count() < 2:
        print("needs 2 cores (server on core 0, load on core 1)", file=sys.stderr)
        return 2
    start = time.monotonic()
    budget_end = start + min(600.0, args.budget_s)
    counts = [int(x) for x in args.steps.split(",") if x]
    only = set(filter(None, args.only.split(",")))
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())  # fmt: skip
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores ({cpu_model}), {psutil.virtual_memory().total / 2**30:.1f} GiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}",
        "command": "python benchmarks/side_by_side.py"
        + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
        "step_s": args.step_s,
        "notes": [],
        "bars": [],
        "ratios": {},
    }
    with lab_dir(args.keep_tmp) as tmp:
        lab = Lab(tmp, make_tone(tmp))
        try:
            log(f"lab in {tmp}")
            th, th_url, space_id = start_townhall(lab)
            nginx, www = start_nginx(lab)
            icecast = start_icecast(lab)
            wait_http(nginx.target + nginx.path, lambda r: r.status_code == 200 and r.text.count("#EXTINF") >= 3,
                      30, "nginx HLS")  # fmt: skip
            systems: list[System] = []
            if th is not None:
                for key, label, mode, suffix in (
                    ("townhall-llhls", "townhall LL-HLS", "llhls", "live.m3u8"),
                    ("townhall-hls", "townhall plain HLS", "hls", "plain.m3u8"),
                    ("townhall-progressive", "townhall /live.aac", "progressive", "live.aac"),
                ):
                    systems.append(System(key, label, th.server, th_url, f"/spaces/{space_id}/{suffix}", mode,
                                          notes=list(th.notes)))  # fmt: skip
            systems += [nginx, icecast]
            systems = [s for s in systems if not only or s.key in only]
            res["notes"] += lab.notes
            for s in systems:
                idle_baseline(s, 2.0)
            # progressive checks first, a failing stream costs one short step
            for s in systems:
                run_steps(s, counts, args.step_s, budget_end - 60)
            # wrk: townhall parts vs the same bytes from nginx
            wrk_res: dict[str, Any] = {}
            rounds = max(1, args.wrk_rounds)
            if th is not None and time.monotonic() + 2 * rounds * args.wrk_s + 30 < budget_end:
                paths = townhall_parts(th_url, space_id, www)
                if paths:
                    log(f"wrk over {len(paths)} part URLs, {rounds} rounds")
                    static = [
                        f"/parts/{p.rsplit('/', 2)[-2]}_{p.rsplit('/', 1)[-1]}" for p in paths
                    ]
                    pairs = []
                    for _ in range(rounds):
                        pairs.append(
                            (
                                wrk(lab, th.server, th_url, paths, args.wrk_s, "wrk-townhall"),
                                wrk(
                                    lab, nginx.server, nginx.target, static, args.wrk_s, "wrk-nginx"
                                ),
                            )
                        )
                    wrk_res = median_pair(pairs)
            res["wrk"] = wrk_res
            # join storm on townhall
            llhls = next((s for s in systems if s.key == "townhall-llhls"), None)
            if (
                llhls is not None
                and llhls.steps
                and time.monotonic() + args.storm_ramp_s + 40 < budget_end
            ):
                res["storm"] = join_storm(llhls, space_id, args.storm_ramp_s)
            elif llhls is None or not llhls.steps:
                res["storm_note"] = "townhall LL-HLS was not measured"
            else:
                res["storm_note"] = "the time budget ran out before it"
        finally:
            lab.stop_all()
        res["systems"] = [
            {"key": s.key, "label": s.label, "mode": s.mode, "path": s.path, "steps": s.steps, "notes": s.notes,
             "baseline_cpu_per_s": round(s.baseline_cpu_per_s, 4), "baseline_rss": s.baseline_rss,
             "capacity": capacity(s)}
            for s in systems
        ]  # fmt: skip
    res["wall_s"] = time.monotonic() - start
    judge(res)
    plots(res, args.plots)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(res, indent=1))
    write_doc(
        args.doc,
        {"Listeners side by side": section_listeners(res), "Join storm": section_storm(res)},
    )
    log(f"done in {res['wall_s']:.0f} s: {args.doc}, {args.plots}, {args.json_out}")
    for b in res["bars"]:
        log(b)
    return 0


def join_storm(llhls: System, space_id: str, ramp_s: float) -> dict[str, Any]:
    """Half the measured LL-HLS capacity already playing, the other half joining
    (POST /join, then play) from 0 in ``ramp_s``."""
    cap = capacity(llhls)["measured"] or 250
    background, storm_n = max(1, cap // 2), max(1, cap - cap // 2)
    duration = ramp_s + 8
    bg_cmd = bench_cmd(llhls.target, None, space_id, "llhls", background, duration + 6, 2.0)
    st_cmd = bench_cmd(
        llhls.target, None, space_id, "llhls", storm_n, duration, ramp_s, shape="storm", join=True
    )
    log(f"join storm: {background} playing, {storm_n} joining in {ramp_s:g} s")
    bg_proc = subprocess.Popen(bg_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)  # the background crowd is playing
        c0, t0 = llhls.server.cpu_s(), time.monotonic()
        storm = run_bench(st_cmd, timeout_s=duration + 60)
        cpu = llhls.server.cpu_s() - c0
        wall = time.monotonic() - t0
        out, err = bg_proc.communicate(timeout=duration + 60)
    finally:
        if bg_proc.poll() is None:
            bg_proc.kill()
            bg_proc.wait()
    if bg_proc.returncode != 0:
        raise RuntimeError(f"background bench failed: {err[-2000:]}")
    return {
        "storm": storm,
        "background": json.loads(out.strip().splitlines()[-1]),
        "server_cpu_percent": round(100 * cpu / wall, 1),
        "command": " ".join(st_cmd[3:]).replace(sys.executable, "python"),
    }


def judge(res: dict[str, Any]) -> None:
    caps = {
        s["key"]: s["capacity"].get("per_core_estimate") or s["capacity"].get("measured")
        for s in res["systems"]
    }
    ratios = res["ratios"]
    ice = caps.get("icecast")
    for key in ("townhall-llhls", "townhall-hls", "townhall-progressive"):
        if caps.get(key) and ice:
            ratios[f"{key} / Icecast listeners per core"] = round(caps[key] / ice, 2)
        if caps.get(key) and caps.get("nginx"):
            ratios[f"{key} / nginx listeners per core"] = round(caps[key] / caps["nginx"], 2)
    best_th = max(
        (caps.get(k) or 0) for k in ("townhall-llhls", "townhall-hls", "townhall-progressive")
    )
    if ice and best_th:
        r = best_th / ice
        res["bars"].append(f"townhall listeners per core >= 2x Icecast: {'MET' if r >= 2 else 'MISSED'} "
                           f"(best townhall mode {best_th} vs Icecast {ice}: {r:.2f}x)")  # fmt: skip
    w = res.get("wrk") or {}
    a, b = w.get("townhall LL-HLS parts"), w.get("nginx static files")
    if a and b and a["requests_per_s_per_core"] and b["requests_per_s_per_core"]:
        r = a["requests_per_s_per_core"] / b["requests_per_s_per_core"]
        ratios["townhall / nginx part requests per core"] = round(r, 3)
        res["bars"].append(
            f"townhall LL-HLS part requests per core >= 0.5x nginx: {'MET' if r >= 0.5 else 'MISSED'} ({r:.3f}x)"
        )
    st = (res.get("storm") or {}).get("storm")
    if st and st["ttfa_p99_s"] is not None:
        ok = st["ttfa_p99_s"] <= 3.0 and st["listeners_held"] >= 0.99 * st["listeners"]
        res["bars"].append(f"time to first audio p99 <= 3 s in a storm of {st['listeners']}: "
                           f"{'MET' if ok else 'MISSED'} (p99 {st['ttfa_p99_s']} s, held {st['listeners_held']})")  # fmt: skip


def plots(res: dict[str, Any], out: Path) -> None:
    series = {
        s["label"]: [(st["listeners"], st["server_cpu_percent"]) for st in s["steps"]]
        for s in res["systems"]
    }
    report.plot_cpu_vs_listeners(series, out / "listeners_cpu.png")
    ttfa = {}
    for s in res["systems"]:
        good = [st for st in s["steps"] if passes(st)] or s["steps"]
        if good:
            best = max(good, key=lambda st: st["listeners"])
            ttfa[f"{s['label']} ({best['listeners']})"] = best["ttfa_quantiles_s"]
    st = (res.get("storm") or {}).get("storm")
    if st:
        ttfa[f"townhall LL-HLS join storm ({st['listeners']})"] = st["ttfa_quantiles_s"]
    report.plot_cdfs(
        ttfa,
        out / "ttfa_cdf.png",
        xlabel="time to first audio, s",
        title="Time to first audio (CDF)",
    )
    if st:
        report.plot_cdfs({f"POST /join during a storm of {st['listeners']}": st["join_quantiles_s"]},
                         out / "join_cdf.png", xlabel="join latency, s", title="Join latency (CDF)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
