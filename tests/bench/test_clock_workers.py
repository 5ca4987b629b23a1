"""``python -m townhall.bench.clock --workers N``'s pure parts: the scaled-out
state it makes for itself, where it pins the server, the owners' figures
added up from several nodes' scrapes, wrk's output and the CPU per role."""

from __future__ import annotations

import argparse

from tests.bench.test_clock import scrape
from townhall.bench.clock import wrk_summary
from townhall.bench.clock_nodes import (
    is_scaled_out,
    node_entry,
    owners_figures,
    scaled_out_env,
    scaled_out_plan,
    server_core,
    tree_usage,
)

WRK_OUT = b"""Running 28s test @ http://127.0.0.1:40001
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    30.12ms    5.01ms  90.00ms   80.00%
  45000 requests in 28.00s, 40.00MB read
  Socket errors: connect 0, read 0, write 0, timeout 12
  Non-2xx or 3xx responses: 37
Requests/sec:   1607.14
Transfer/sec:      1.43MB
"""


def args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"workers": 1, "scaled_out": False, "server_core": "auto"}
    return argparse.Namespace(**(base | kw))


def test_a_fresh_database_and_prefix_named_after_the_tag_password_kept() -> None:
    plan = scaled_out_plan("postgresql+asyncpg://u:pw@db.local:6543/test", "redis://r:1/2", "ab12")
    assert plan.admin_url.endswith("/test")
    assert plan.database == "townhall_bench_clock_ab12"
    assert plan.database_url == "postgresql+asyncpg://u:pw@db.local:6543/townhall_bench_clock_ab12"
    assert plan.prefix == "townhall-bench-clock:ab12:"
    env = scaled_out_env(plan)
    assert env == {
        "TOWNHALL_DATABASE_URL": plan.database_url,
        "TOWNHALL_REDIS_URL": "redis://r:1/2",
        "TOWNHALL_REDIS_PREFIX": "townhall-bench-clock:ab12:",
        "TOWNHALL_BUS_ENABLED": "true",
    }


def test_scaled_out_with_several_workers_or_when_asked_and_where_the_server_runs() -> None:
    assert not is_scaled_out(args())
    assert is_scaled_out(args(workers=2))
    assert is_scaled_out(args(scaled_out=True))
    assert server_core(args()) == 0  # the bench's old default: one worker on core 0
    assert server_core(args(scaled_out=True)) == 0
    assert server_core(args(workers=2)) is None  # several: the kernel places them
    assert server_core(args(workers=2, server_core="0")) == 0
    assert server_core(args(server_core="none")) is None


def test_a_nodes_entry_gives_its_address_and_pid_or_nothing() -> None:
    assert node_entry(b'{"url": "http://127.0.0.1:5001", "pid": 42}') == (
        "http://127.0.0.1:5001",
        42,
    )
    assert node_entry('{"url": "http://127.0.0.1:5001"}') == ("http://127.0.0.1:5001", None)
    assert node_entry(b'{"pid": 42}') is None
    assert node_entry(b"not json") is None


def test_the_owners_scrapes_add_up_and_another_nodes_do_not_count() -> None:
    # node w1 owns room A: 1000 ticks, 10 of them in (20, 50] ms, 2 skipped;
    # node w2 owns room B from the go-live: 500 ticks within 1 ms;
    # node w3 owns nothing here but its (stale) histogram says it was late
    before = {"w1": scrape([0] * 11, 0), "w2": scrape([0] * 11, 0), "w3": scrape([0] * 11, 0)}
    after = {
        "w1": scrape([990, 990, 990, 990, 990, 1000, 1000, 1000, 1000, 1000, 1000], 2),
        "w2": scrape([500] * 11, 0),
        "w3": scrape([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 300], 900),
    }
    only_a = owners_figures(before, after, ["w1"])
    assert only_a.ticks == 1000 and only_a.skipped_frames == 2 and only_a.late_max_ms == 50.0
    both = owners_figures(before, after, ["w1", "w2", "w1"])  # a node owning both counts once
    assert both.ticks == 1500
    assert both.skipped_frames == 2
    assert both.late_max_ms == 50.0
    assert both.share_within_20ms == round(1490 / 1500, 5)
    assert owners_figures(before, after, ["gone"]).ticks == 0


def test_wrk_output_gives_rate_non_2xx_and_socket_errors() -> None:
    assert wrk_summary(WRK_OUT) == {
        "requests_per_s": 1607.14,
        "non_2xx": 37,
        "socket_errors": "connect 0, read 0, write 0, timeout 12",
    }
    assert wrk_summary(b"") == {"requests_per_s": None, "non_2xx": 0, "socket_errors": ""}


def test_cores_per_role_and_runqueue_waits_between_two_samples() -> None:
    def proc(role: str, cpu_s: float, sched: tuple[int, int] | None) -> dict[str, object]:
        return {"role": role, "ppid": 1, "cpu_s": cpu_s, "policy": "other",
                "affinity": [0, 1], "last_core": 0, "schedstat": sched}  # fmt: skip

    first = {10: proc("worker", 1.0, None), 11: proc("media", 2.0, (1_000_000_000, 0))}
    last = {
        10: proc("worker", 9.0, None),
        11: proc("media", 3.0, (1_500_000_000, 250_000_000)),
        12: proc("worker", 4.0, None),  # started within the window: all its CPU counts
    }
    usage = tree_usage(first, last, wall_s=10.0)
    assert usage["cores_by_role"] == {"media": 0.1, "worker": 1.2}
    assert usage["cores"] == 1.3
    media = next(p for p in usage["processes"] if p["role"] == "media")
    assert media["run_s"] == 0.5 and media["runqueue_wait_s"] == 0.25
