"""Settings as command-line options: one ``--flag`` per field of
:class:`townhall.config.Settings` (field ``part_ms`` is ``--part-ms`` and
``TOWNHALL_PART_MS``), shared by every verb that runs a server."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from townhall.config import Settings

F = Callable[..., Any]
ALIASES = {"http_workers": ("--workers",)}  # short names the brief and docs use


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
                flag,
                *ALIASES.get(name, ()),
                name,
                type=_click_type(annotation),
                default=None,
                help=help_text,
            )
        func = option(func)
    return func


def build_settings(overrides: dict[str, Any]) -> Settings:
    """Settings from flags given (not None) over environment over defaults."""
    given = {k: v for k, v in overrides.items() if v is not None and k in Settings.model_fields}
    return Settings(**given)
