"""The stated rule that labels an evidence interval: "quiet", "flash crowd",
"attack" or "mixed", with the figures that triggered the label.

After Jung, Krishnamurthy and Rabinovich (WWW 2002): a flash crowd's clients
come from relatively few network clusters, most of them seen before, each
asking at a normal rate; an attack's sources spread over many clusters that
are mostly new, each asking far more than a player does. The rule:

1. **quiet** unless the interval is *busy*: ``arrivals >= busy_arrivals`` or
   ``requests >= busy_requests``.
2. ``new_share = 1 - returning_share`` (share of this interval's client
   networks never seen in an earlier interval and carrying no "seen before"
   mark); ``hot`` when the per-client request rate p99 is at least
   ``hot_rate_per_s`` (a player asks for state.json every 2 s and joins once
   per token lifetime: well under 1/s).
3. **attack** when busy, ``new_share >= attack_new_share`` and hot.
4. **flash crowd** when busy, ``new_share <= crowd_new_share`` and not hot.
5. otherwise **mixed** (e.g. a first-time crowd from new networks at normal
   rates, or known networks asking too fast).

The thresholds travel in every evidence document, so anyone can re-apply the
rule to the published figures (:func:`classify` is all it takes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Label = Literal["quiet", "flash crowd", "attack", "mixed"]


@dataclass(frozen=True, slots=True)
class Thresholds:
    busy_arrivals: int = 100
    busy_requests: int = 1000
    hot_rate_per_s: float = 1.0
    attack_new_share: float = 0.7
    crowd_new_share: float = 0.5

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def classify(
    *,
    arrivals: int,
    requests: int,
    returning_share: float,
    rate_p99_per_s: float,
    thresholds: Thresholds = Thresholds(),
) -> tuple[Label, list[str]]:
    """The label and the comparisons that decided it (human-readable)."""
    t = thresholds
    busy_by_arrivals = arrivals >= t.busy_arrivals
    busy_by_requests = requests >= t.busy_requests
    if not (busy_by_arrivals or busy_by_requests):
        return "quiet", [
            f"arrivals={arrivals}<{t.busy_arrivals}",
            f"requests={requests}<{t.busy_requests}",
        ]
    triggers = [
        f"arrivals={arrivals}>={t.busy_arrivals}"
        if busy_by_arrivals
        else f"requests={requests}>={t.busy_requests}"
    ]
    new_share = round(1.0 - returning_share, 4)
    hot = rate_p99_per_s >= t.hot_rate_per_s
    rate = (
        f"rate_p99={rate_p99_per_s:g}/s>={t.hot_rate_per_s:g}"
        if hot
        else f"rate_p99={rate_p99_per_s:g}/s<{t.hot_rate_per_s:g}"
    )
    if new_share >= t.attack_new_share and hot:
        return "attack", [*triggers, f"new_share={new_share:g}>={t.attack_new_share:g}", rate]
    if new_share <= t.crowd_new_share and not hot:
        return "flash crowd", [
            *triggers,
            f"new_share={new_share:g}<={t.crowd_new_share:g}",
            rate,
        ]
    return "mixed", [*triggers, f"new_share={new_share:g}", rate]
