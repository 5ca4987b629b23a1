"""`townhall bench ...`: the load generators, one sub-command per module."""

from __future__ import annotations

import importlib

import click


@click.group("bench")
def bench_group() -> None:
    """Load-test a running townhall (yours, before the event). Traffic goes only
    to the --target you name; every run is bounded in count and time."""


# module under townhall.bench -> click command attribute
ATTACHED = (
    ("join", "join_command"),
    ("listeners", "listeners_command"),
    ("latency", "latency_command"),
    ("storm", "storm_command"),
)

for _module, _attr in ATTACHED:
    try:
        _mod = importlib.import_module(f"townhall.bench.{_module}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"townhall.bench.{_module}":
            raise
        continue
    bench_group.add_command(getattr(_mod, _attr))
