"""A space's own listener cap as the API takes it: what the field means and
the check against the deployment's ceiling (``policy.admission.cap_problem``)."""

from __future__ import annotations

from townhall.config import Settings
from townhall.errors import ValidationFailed
from townhall.policy.admission import cap_problem

CAP_DOC = (
    "The space's own listener cap: at most this many listen at once, the rest wait in line. "
    "null: the server's max_listeners (which is also the most a host may set; 0 there means "
    "no limit, and then 0 here means no limit too)."
)


def check_cap(settings: Settings, value: int | None) -> None:
    """Raise 422 problem+json naming what is wrong with ``value``."""
    problem = cap_problem(value, settings.max_listeners)
    if problem is not None:
        raise ValidationFailed(
            problem, extra={"errors": [{"field": "max_listeners", "message": problem}]}
        )
