"""The ``townhall`` command line (the group, ``serve`` and the attached verbs).

``serve`` and ``demo`` take one flag per setting (generated from
:class:`townhall.config.Settings`: field ``part_ms`` is ``--part-ms`` and
``TOWNHALL_PART_MS``). Other verbs (``speak``, ``bench ...``) live beside the
code they drive and are attached here.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from townhall import __version__
from townhall.cli.options import build_settings, settings_options
from townhall.server.run import run_server
from townhall.server.workers import resolve_workers

# Verbs that live beside the code they drive: verb -> (module, attribute: a
# click command). Imported when the verb runs or help lists it, not at every
# start: `serve` then skips the speaker client, the bench and the evidence CLI.
ATTACHED = {
    "speak": ("townhall.client.speak", "speak_command"),
    "demo": ("townhall.cli.demo", "demo_command"),
    "bench": ("townhall.bench.cli", "bench_group"),
    "evidence": ("townhall.evidence.cli", "evidence_group"),
}


class _Verbs(click.Group):
    """The group with the ATTACHED verbs loaded on first use (click's lazy
    subcommands); a verb whose module is not installed is left out."""

    def _load(self, name: str) -> click.Command | None:
        module_name, attribute = ATTACHED[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        command: click.Command = getattr(module, attribute)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        have = set(super().list_commands(ctx))
        loaded = {name for name in ATTACHED if name not in have and self.get_command(ctx, name)}
        return sorted(have | loaded)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in ATTACHED:
            command = self._load(cmd_name)
            if command is not None:
                self.add_command(command, cmd_name)
        return command


@click.group(
    cls=_Verbs,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.version_option(__version__, prog_name="townhall")
def main() -> None:
    """townhall: live audio spaces. A few people talk over WebRTC; any number
    listen over Low-Latency HLS, in a browser or any HLS player.

    \b
    Start here:
      townhall serve               run the server (SQLite and files under ./townhall-data)
      townhall demo                the same, plus a live demo space with bot speakers
      townhall speak FILE ...      publish an audio file into a space as a speaker
      townhall bench join ...      load-test a running server before your event

    Every setting has a flag, a TOWNHALL_* environment variable and a default:
    see `townhall serve --help`.
    """


@main.command()
@settings_options
def serve(**overrides: Any) -> None:
    """Run townhall: API, listener plane, pages, on one process.

    With no flags it uses SQLite and local files under ./townhall-data and
    needs no other service.
    """
    settings = build_settings(overrides)
    # a refusal (more workers than one process may run) comes first and alone
    resolve_workers(settings)
    click.echo(
        f"townhall {__version__} serving on http://{settings.host}:{settings.port}/ (data in {settings.data_dir})"
    )
    run_server(settings)


__all__ = ["build_settings", "main", "run_server", "settings_options"]
