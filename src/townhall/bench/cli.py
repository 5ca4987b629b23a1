"""`townhall bench ...`: the load generators, one sub-command per module.

They need the ``bench`` extra (matplotlib, psutil, tqdm), which a plain
install leaves out; without it every ``townhall bench`` verb says in one
sentence how to install it and exits with status 2.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

BENCH_EXTRA = ("matplotlib", "psutil", "tqdm")
"""Top-level modules of the packages the ``bench`` extra installs."""

INSTALL_HINT = "pip install 'townhall[bench]'"


def missing_extra() -> list[str]:
    """The modules of the bench extra that cannot be imported here."""
    missing = []
    for name in BENCH_EXTRA:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def missing_sentence(missing: list[str]) -> str:
    return (
        f"townhall bench needs the bench extra ({', '.join(missing)} not installed): "
        f"install it with {INSTALL_HINT}"
    )


@click.group("bench")
@click.pass_context
def bench_group(ctx: click.Context) -> None:
    """Load-test a running townhall (yours, before the event). Traffic goes only
    to the --target you name; every run is bounded in count and time. Needs the
    bench extra: pip install 'townhall[bench]'."""
    missing = missing_extra()
    if missing:
        click.echo(missing_sentence(missing), err=True)
        ctx.exit(2)


# module under townhall.bench -> click command attribute
ATTACHED = (
    ("join", "join_command"),
    ("listeners", "listeners_command"),
    ("latency", "latency_command"),
    ("attack", "attack_command"),
    ("storm", "storm_command"),
    ("plan_report", "plan_command"),
)


def _placeholder(name: str) -> click.Command:
    """Stands in for a verb whose module needs the extra (the group refuses first)."""

    @click.command(
        name,
        help=f"(needs the bench extra: {INSTALL_HINT})",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def placeholder() -> None:
        raise click.ClickException(missing_sentence(missing_extra() or list(BENCH_EXTRA)))

    return placeholder


for _module, _attr in ATTACHED:
    try:
        _mod = importlib.import_module(f"townhall.bench.{_module}")
    except ModuleNotFoundError as _exc:
        if (_exc.name or "").partition(".")[0] in BENCH_EXTRA:
            bench_group.add_command(_placeholder(_module))
            continue
        if _exc.name != f"townhall.bench.{_module}":
            raise
        continue
    bench_group.add_command(getattr(_mod, _attr))
