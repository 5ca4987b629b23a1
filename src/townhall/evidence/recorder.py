"""One space's figures for one evidence interval (10 s by default), fed by
cheap calls from the adapters: each is a counter bump or a sketch update.

Clients and networks arrive as 64-bit keyed hashes (see
:func:`townhall.evidence.sketch.keyed_hash`); nothing here ever sees an
address. :meth:`IntervalRecorder.close` turns the counters into the JSON
figures of a record (without the chain fields) and labels them.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from townhall.evidence.rule import Thresholds, classify
from townhall.evidence.sketch import BoundedCounts, HyperLogLog, SeenFilter

TOP_NETWORKS = 5


def _r(value: float) -> float:
    return round(value, 4)


class IntervalRecorder:
    """Counters of one interval. Not thread-safe: one event loop feeds it."""

    def __init__(self, start_s: float, *, max_keys: int = 4096, hll_p: int = 11) -> None:
        self.start_s = start_s
        self.arrivals = 0
        self.requests = 0
        self.kinds: Counter[str] = Counter()
        self.networks = HyperLogLog(hll_p)
        self.per_network = BoundedCounts(max_keys)
        self.per_client = BoundedCounts(max_keys)
        self.marked_networks: set[int] = set()
        self.challenges_issued = 0
        self.challenges_solved = 0
        self.challenges_failed: Counter[str] = Counter()
        self.effort_bits: Counter[int] = Counter()
        self.admitted = 0
        self.queued = 0
        self.refused: Counter[str] = Counter()
        self.capacity = 0
        self.load = 0
        self.goodput_reports = 0
        self.played_s = 0.0
        self.stalled_s = 0.0

    # ------------------------------------------------------------ feeding

    def request(
        self, kind: str, client: int, network: int, *, arrival: bool = False, marked: bool = False
    ) -> None:
        """One request of ``kind`` (join, ticket, state, reaction, ...)."""
        self.requests += 1
        self.kinds[kind] += 1
        if arrival:
            self.arrivals += 1
        self.networks.add(network)
        self.per_network.add(network)
        self.per_client.add(client)
        if marked and len(self.marked_networks) < self.per_network.max_keys:
            self.marked_networks.add(network)

    def challenge(self, outcome: str, effort_bits: int = 0) -> None:
        """``issued``, ``solved`` (with its effort) or a failure reason."""
        if outcome == "issued":
            self.challenges_issued += 1
        elif outcome == "solved":
            self.challenges_solved += 1
            self.effort_bits[effort_bits] += 1
        else:
            self.challenges_failed[outcome] += 1

    def admission(self, outcome: str, reason: str = "") -> None:
        """``admitted``, ``queued`` or ``refused`` (with a reason)."""
        if outcome == "admitted":
            self.admitted += 1
        elif outcome == "queued":
            self.queued += 1
        else:
            self.refused[reason or outcome] += 1

    def goodput(self, played_s: float, stalled_s: float) -> None:
        """One player's report: seconds played and seconds stalled since its last."""
        self.goodput_reports += 1
        self.played_s += max(0.0, played_s)
        self.stalled_s += max(0.0, stalled_s)

    # ------------------------------------------------------------ closing

    def close(self, end_s: float, seen: SeenFilter, thresholds: Thresholds) -> dict[str, Any]:
        """The interval's figures (JSON-ready) and label; marks its networks seen."""
        duration_s = max(1e-3, end_s - self.start_s)
        keys = list(self.per_network.counts)
        returning = sum(1 for k in keys if k in seen or k in self.marked_networks)
        returning_share = returning / len(keys) if keys else 0.0
        for k in keys:
            seen.add(k)
        rate_p50 = self.per_client.quantile(0.5) / duration_s
        rate_p99 = self.per_client.quantile(0.99) / duration_s
        entropy = self.per_network.entropy_bits()
        label, triggers = classify(
            arrivals=self.arrivals,
            requests=self.requests,
            returning_share=_r(returning_share),
            rate_p99_per_s=_r(rate_p99),
            thresholds=thresholds,
        )
        total_time = self.played_s + self.stalled_s
        return {
            "start_s": _r(self.start_s),
            "end_s": _r(end_s),
            "arrivals": self.arrivals,
            "requests": self.requests,
            "requests_by_kind": dict(sorted(self.kinds.items())),
            "networks_estimate": round(self.networks.estimate()),
            "networks_standard_error": _r(self.networks.standard_error),
            "networks_tracked": len(keys),
            "hits_untracked": self.per_network.overflow,
            "returning_share": _r(returning_share),
            "rate_per_client_p50_per_s": _r(rate_p50),
            "rate_per_client_p99_per_s": _r(rate_p99),
            "network_entropy_bits": _r(entropy),
            "network_entropy_max_bits": _r(math.log2(len(keys)) if keys else 0.0),
            # keyed hashes (the key never leaves this node), never addresses
            "top_networks": [[f"{k:016x}", n] for k, n in self.per_network.top(TOP_NETWORKS)],
            "challenges": {
                "issued": self.challenges_issued,
                "solved": self.challenges_solved,
                "failed": dict(sorted(self.challenges_failed.items())),
                "effort_bits_histogram": {str(k): v for k, v in sorted(self.effort_bits.items())},
            },
            "admission": {
                "admitted": self.admitted,
                "queued": self.queued,
                "refused": dict(sorted(self.refused.items())),
            },
            "capacity": self.capacity,
            "load": self.load,
            "goodput": {
                "reports": self.goodput_reports,
                "played_s": _r(self.played_s),
                "stalled_s": _r(self.stalled_s),
                "share": _r(self.played_s / total_time) if total_time > 0 else None,
            },
            "label": label,
            "triggers": triggers,
        }
