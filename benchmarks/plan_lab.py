"""The lab both plan scripts share: real `townhall serve` nodes on the machine's
PostgreSQL (a database of their own, dropped at the end) and a Redis of their
own (a redis-server on a free loopback port, so its CPU and command counts
are ours alone), nginx in front, wrk. Every process started here is stopped
by its id at the end; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SERVER_CORE = "0"
CLIENT_CORE = "1"
PG_ADMIN = os.environ.get("PLAN_PG", "postgresql://postgres@127.0.0.1:5432/test")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# limits that would answer a calibration flood from one address with 429:
# raised so the costs measured are those of the legitimate path
OPEN_LIMITS = {
    "TOWNHALL_CHALLENGE_JOINS_PER_S": "1000000000",
    "TOWNHALL_JOINS_PER_NETWORK_PER_10S": "1000000000",
    "TOWNHALL_STATE_PER_NETWORK_PER_10S": "1000000000",
    "TOWNHALL_STATE_PER_CONNECTION_PER_10S": "0",  # wrk sends many on one connection
    "TOWNHALL_PLAYLISTS_PER_NETWORK_PER_10S": "1000000000",
    "TOWNHALL_LISTENERS_COUNTED_PER_NETWORK": "1000000000",
    "TOWNHALL_HTTP_MAX_CONNECTIONS_PER_NETWORK": "0",
    "TOWNHALL_PROGRAM_WAITS_FOR_HOST": "false",  # on the air with no speaker (silence)
    "TOWNHALL_ARGON2_TIME_COST": "1",
    "TOWNHALL_ARGON2_MEMORY_KIB": "1024",
}
BUS = {
    "TOWNHALL_BUS_ENABLED": "true",
    "TOWNHALL_ROOM_LEASE_TTL_MS": "3000",
    "TOWNHALL_ROOM_LEASE_RENEW_MS": "1000",
    "TOWNHALL_HTTP_WORKERS": "1",  # one process per node, as calibrated (scaled out defaults to one per core)
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children still running."""
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def uptime() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0:3].__str__()


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


class Lab:
    """Children we started, stopped in reverse order by ``close``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.children: list[subprocess.Popen[bytes]] = []
        self.database = ""
        self.redis_port = 0
        self.redis_proc: subprocess.Popen[bytes] | None = None

    def spawn(self, name: str, cmd: Sequence[str], env: dict[str, str] | None = None) -> Any:
        out = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        self.children.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.database:
            psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    # -- Redis and PostgreSQL ------------------------------------------------------------

    def redis(self) -> str:
        self.redis_port = free_port()
        self.redis_proc = self.spawn(
            "redis",
            [
                "taskset", "-c", CLIENT_CORE, "redis-server", "--port", str(self.redis_port),
                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.root),
            ],
        )  # fmt: skip
        for _ in range(100):
            if redis_info(self.redis_port).get("total_commands_processed") is not None:
                break
            time.sleep(0.1)
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def postgres(self) -> str:
        self.database = "townhall_plan_" + secrets.token_hex(5)
        psql(f'CREATE DATABASE "{self.database}"')
        host = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{host}/{self.database}"

    def redis_ops(self) -> int:
        return int(redis_info(self.redis_port)["total_commands_processed"])

    def redis_commands(self) -> dict[str, int]:
        """Calls per command so far (INFO commandstats), e.g. {"evalsha": 12}."""
        return redis_commandstats(self.redis_port)

    def redis_cpu_s(self) -> float:
        assert self.redis_proc is not None
        return proc_cpu_s(self.redis_proc.pid)

    # -- townhall and nginx --------------------------------------------------------------

    def node(self, name: str, env: dict[str, str], args: Sequence[str] = ()) -> Node:
        port = free_port()
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        full = {**os.environ, **env}
        cmd = [
            "taskset", "-c", SERVER_CORE, sys.executable, "-m", "townhall", "serve",
            "--port", str(port), "--data-dir", str(data), "--log-level", "warning", *args,
        ]  # fmt: skip
        proc = self.spawn(name, cmd, full)
        node = Node(name, port, proc)
        wait_http(node.url + "/healthz", 60, proc)
        return node

    def nginx(self, template: str, fields: dict[str, str], http_extra: str = "") -> tuple[Any, str]:
        """nginx on ``deploy/<template>``; ``http_extra``: directives added at the
        top of its http block in the copy we run (e.g. an access log of our own)."""
        prefix = self.root / "nginx"
        (prefix / "cache").mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = (ROOT / "deploy" / template).read_text()
        fields = {
            "@LISTEN@": f"127.0.0.1:{port}",
            "@CACHE_DIR@": str(prefix / "cache"),
            "@MEDIA_GATE@": "off",
            "@LINK_SECRET@": "plan",
            **fields,
        }
        for key, value in fields.items():
            conf = conf.replace(key, value)
        if http_extra:
            conf = conf.replace("http {", "http {\n    " + http_extra, 1)
        (prefix / "nginx.conf").write_text(conf)
        directives = f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/error.log;"
        if os.geteuid() == 0:
            directives += " user root;"
        proc = self.spawn(
            "nginx",
            ["taskset", "-c", SERVER_CORE, "nginx", "-p", str(prefix), "-c",
             str(prefix / "nginx.conf"), "-g", directives],
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", 15, proc)
        return proc, url

    def delay_proxy(self, target: str, rtt_ms: float) -> tuple[Any, str]:
        """A round trip of ``rtt_ms`` between the clients and ``target``
        (townhall.bench.delay_proxy, on the clients' core): this kernel has no
        sch_netem, so a veth pair in a namespace of our own could not delay."""
        port = free_port()
        host = target.removeprefix("http://")
        proc = self.spawn(
            "delay-proxy",
            ["taskset", "-c", CLIENT_CORE, sys.executable, "-m", "townhall.bench.delay_proxy",
             "--listen", f"127.0.0.1:{port}", "--to", host, "--rtt-ms", f"{rtt_ms:g}"],
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", 15, proc)
        return proc, url


class Node:
    def __init__(self, name: str, port: int, proc: Any) -> None:
        self.name, self.port, self.proc = name, port, proc
        self.url = f"http://127.0.0.1:{port}"

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)


def wait_http(url: str, timeout_s: float, proc: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited early")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")


def psql(sql: str) -> None:
    subprocess.run(["psql", PG_ADMIN, "-q", "-c", sql], check=True, capture_output=True)


def redis_info(port: int) -> dict[str, str]:
    try:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), "INFO", "stats"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(
        line.strip().split(":", 1) for line in out.splitlines() if ":" in line and line[0] != "#"
    )


def redis_commandstats(port: int) -> dict[str, int]:
    try:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), "INFO", "commandstats"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = re.findall(r"^cmdstat_([^:]+):calls=(\d+)", out, re.M)
    return {name: int(calls) for name, calls in found}


def commands_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Calls per command between two INFO commandstats readings, busiest first
    (the redis-cli INFO calls of the readings themselves left out)."""
    out = {k: v - before.get(k, 0) for k, v in after.items()}
    out["info"] = out.get("info", 0) - 1
    return dict(sorted(((k, v) for k, v in out.items() if v > 0), key=lambda kv: -kv[1]))


# -- wrk -------------------------------------------------------------------------------

WRK_LUA = """
wrk.method = "{method}"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{cookie}
local paths = {paths}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format(nil, paths[i])
end
"""


def wrk(
    lab: Lab, url: str, paths: Sequence[str], seconds: float, *, method: str = "GET",
    body: str | None = None, connections: int = 32, cookie: str = "",
) -> dict[str, Any]:  # fmt: skip
    script = lab.root / f"wrk-{secrets.token_hex(3)}.lua"
    lua_paths = "{" + ",".join(json.dumps(p) for p in paths) + "}"
    script.write_text(
        WRK_LUA.format(
            method=method,
            body=json.dumps(body) if body is not None else "nil",
            paths=lua_paths,
            cookie=f'wrk.headers["Cookie"] = {json.dumps(cookie)}' if cookie else "",
        )
    )
    cmd = [
        "taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
        "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    done = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(done.group(1)) if done else 0,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "command": " ".join(cmd[3:6]) + f" -d{seconds:g}s -s <{method} {paths[0]}> {url}",
    }


def shutil_which(names: Sequence[str]) -> list[str]:
    return [n for n in names if shutil.which(n) is None]
