"""The ``townhall`` command line.

``serve`` and ``demo`` take one flag per setting (generated from
:class:`townhall.config.Settings`: field ``part_ms`` is ``--part-ms`` and
``TOWNHALL_PART_MS``). Other verbs (``speak``, ``bench ...``) live beside the
code they drive and are attached here.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from townhall import __version__
from townhall.config import Settings

F = Callable[..., Any]


def _click_type(annotation: Any) -> Any:
    if annotation is bool:
        return bool
    if annotation is int:
        return int
    if annotation is float:
        return float
    if annotation is Path:
        return click.Path(path_type=Path)
    return str


def settings_options(func: F) -> F:
    """Decorate a command with one ``--flag`` per Settings field.

    Unset flags stay None, so environment variables and defaults apply.
    """
    hints = typing.get_type_hints(Settings)
    for name, field in reversed(list(Settings.model_fields.items())):
        annotation = hints[name]
        flag = "--" + name.replace("_", "-")
        env = "TOWNHALL_" + name.upper()
        help_text = f"{field.description} [env {env}; default {field.default!r}]"
        if annotation is bool:
            option = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
        else:
            option = click.option(
                flag, name, type=_click_type(annotation), default=None, help=help_text
            )
        func = option(func)
    return func


def build_settings(overrides: dict[str, Any]) -> Settings:
    """Settings from flags given (not None) over environment over defaults."""
    given = {k: v for k, v in overrides.items() if v is not None and k in Settings.model_fields}
    return Settings(**given)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
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


def run_server(settings: Settings, *, on_startup: Callable[[Any], Any] | None = None) -> None:
    """Run the app on uvicorn (uvloop and httptools where available) until a signal.

    Shutdown: stop accepting, let open requests finish for ``shutdown_drain_s``,
    then cancel the rest; rooms finish their recordings in the lifespan close.
    """
    import uvicorn

    from townhall.server import logs
    from townhall.server.app import create_app

    logs.configure(settings.log_level, json=settings.log_json)
    app = create_app(settings)
    if on_startup is not None:
        app.state.on_startup = on_startup
    loop = settings.workers_loop
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http: Any = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if settings.fast_path and http == "httptools":
        # the listener plane's hot GETs below the framework (server/fastproto.py)
        from townhall.server.fastproto import protocol_for_app

        http = protocol_for_app(app, settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop=loop,
        http=http,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_drain_s) or None,
        server_header=False,
    )
    uvicorn.Server(config).run()


@main.command()
@settings_options
def serve(**overrides: Any) -> None:
    """Run townhall: API, listener plane, pages, on one process.

    With no flags it uses SQLite and local files under ./townhall-data and
    needs no other service.
    """
    settings = build_settings(overrides)
    click.echo(
        f"townhall {__version__} serving on http://{settings.host}:{settings.port}/ (data in {settings.data_dir})"
    )
    run_server(settings)


# Verbs that live beside the code they drive: module -> attribute (a click command).
ATTACHED = (
    ("townhall.client.speak", "speak_command"),
    ("townhall.live.demo", "demo_command"),
    ("townhall.bench.cli", "bench_group"),
)


def _attach() -> None:
    for module_name, attribute in ATTACHED:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        main.add_command(getattr(module, attribute))


_attach()

__all__ = ["build_settings", "main", "run_server", "settings_options"]
