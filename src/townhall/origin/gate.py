"""The media gate of an app built by ``create_app``: wired to its token signer
and to admission (which spaces have a cap), both there once the lifespan
started (``policy/media_gate.py`` is the gate itself)."""

from __future__ import annotations

from typing import Any

from townhall.policy.media_gate import MediaGate


def gate_of(app: Any) -> MediaGate:
    """The gate for the listener rules of ``app``: a space is gated when
    admission says it has a cap (before the services exist: when the
    deployment has one)."""

    def capped(space_id: str) -> bool:
        admission = getattr(getattr(app.state, "services", None), "admission", None)
        if admission is None:
            return getattr(getattr(app.state, "settings", None), "max_listeners", 1) > 0
        return bool(admission.capped(space_id))

    return MediaGate(
        lambda: getattr(getattr(app.state, "services", None), "tokens", None), capped=capped
    )
