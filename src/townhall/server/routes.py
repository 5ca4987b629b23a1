"""Which routers make up the app, in order. Each module owns one area and
exposes ``router`` (a FastAPI APIRouter)."""

from __future__ import annotations

import importlib

from fastapi import FastAPI

# module name under townhall.server -> included if present (areas land one by one)
ROUTER_MODULES = (
    "api_accounts",
    "api_spaces",
    "api_stage",
    "api_webrtc",
    "listener",
    "hls",
    "pages",
)


def include_all(app: FastAPI) -> None:
    for name in ROUTER_MODULES:
        try:
            module = importlib.import_module(f"townhall.server.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"townhall.server.{name}":
                continue
            raise
        app.include_router(module.router)
