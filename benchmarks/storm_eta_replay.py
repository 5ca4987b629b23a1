"""Replay a storm run's looks through ETA models, from its records (issue 9).

`townhall bench storm --records FILE` (benchmarks/storm_bar.sh writes
OUT.json.records) keeps, per arrival, its number, admission time and the ETAs
its page showed (one look in five, with times), and in FILE.docs every
queue.json the shared copy read. This script pairs each look with the
document it was computed from and recomputes the ETA with:

- ``shown``: the page's model from the document as published (must match
  the recorded ETAs: the count of mismatches is printed as a check);
- ``h10``: the settled speed as h10-eta computed it (until a cap's worth has
  left, the mean listening time is at least the age of the oldest calls
  still in, passing over the oldest tenth), rebuilt from the documents'
  pointer history with the policy's own matching (``listen_sample``);
- ``now``: the same rebuild with this tree's ``settled_rate`` (so a candidate
  in policy/eta.py is compared with h10's on the same documents and looks,
  before any new run).

Error as the storm reports it (storm_report ``shown_errors``):
|actual - shown| / max(10 s, actual). Also prints the error by the time since
go-live (where the misses are) and the settled speeds over the first minute.

    PYTHONPATH=src python benchmarks/storm_eta_replay.py /tmp/h1/base.json.records
"""

from __future__ import annotations

import argparse
import bisect
import math
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from townhall.bench.report import percentile
from townhall.policy import eta as policy

Doc = dict[str, Any]
Model = Callable[[Doc, int, float], float | None]


def h10_settled_rate(
    knots: policy.Knots, now_s: float, *, through: int, cap: int, listen_sum: float, listen_n: float
) -> float | None:
    """h10-eta's settled speed (before h1-eta): the mean of the matched
    times, but until a cap's worth has left at least the age of the oldest
    calls still in, passing over the oldest tenth of the cap."""
    if cap <= 0 or listen_n < max(1.0, min(20.0, cap / 10)) or listen_sum <= 0:
        return None
    mean_s = listen_sum / listen_n
    if listen_n < cap * (1.0 - math.exp(-1.0)) and through - cap + 1 >= 1:
        at_s = policy.called_at(knots, through - cap + 1 + cap // 10)
        if at_s is not None:
            mean_s = max(mean_s, now_s - at_s)
    return cap / mean_s


def rebuild(docs: list[Doc]) -> dict[str, tuple[float | None, float | None]]:
    """updated_at -> (h10's settled speed, this tree's), from the pointer
    history the documents show (a move bound by the free places, while
    people wait, is a departure sample, as in policy.admission.advance)."""
    knots: policy.Knots = ()
    listen_sum = listen_n = 0.0
    prev: Doc | None = None
    out: dict[str, tuple[float | None, float | None]] = {}
    for doc in docs:
        now, through, cap = doc["_at"], doc["admitting_through"], int(doc["max_listeners"])
        rate = float(doc["admit_rate_per_s"])
        if prev is not None and doc.get("drawn") and cap > 0:
            k = through - prev["admitting_through"]
            step_s = max(1e-3, now - prev["_at"])
            allowance = math.floor(min(rate * step_s, 2 * rate))
            bound = (doc.get("free_places") or 0) + k < allowance and doc["waiting"] > 0
            if bound and k > 0:
                sample = policy.listen_sample(
                    knots, now, through=prev["admitting_through"], freed=k, cap=cap
                )
                if sample is not None:
                    listen_s, n = sample
                    decay = math.exp(-n / cap)
                    listen_sum = listen_sum * decay + n * listen_s
                    listen_n = listen_n * decay + n
        if doc.get("drawn") and cap > 0:
            knots = policy.with_knot(knots, now, through, cap)
        old = h10_settled_rate(
            knots, now, through=through, cap=cap, listen_sum=listen_sum, listen_n=listen_n
        )
        new = policy.settled_rate(
            cap,
            listen_sum,
            listen_n,
            policy.next_age(knots, now, through=through, cap=cap),
            matched=through - cap,
        )
        out[doc["updated_at"]] = (old, new)
        prev = doc
    return out


def page_eta(doc: Doc, position: int, now_s: float, settled: float | None = None) -> float | None:
    """The page's ETA from ``doc`` (storm.shown_eta), optionally with another
    settled speed."""
    settled_rate = doc.get("settled_rate_per_s") if settled is None else settled
    free = doc.get("free_places")
    eta = policy.eta_s(
        max(0, position),
        free_places=math.inf if free is None else float(free),
        admit_rate_per_s=float(doc.get("admit_rate_per_s") or 0.0),
        full_rate_per_s=doc.get("full_rate_per_s"),
        lag_s=float(doc.get("interval_ms") or 1000) / 2000 + 1.0,
        settled_rate_per_s=settled_rate,
        settling=bool(doc.get("settling")),
    )
    if eta is None or position <= 0:
        return eta
    return max(0.0, eta - max(0.0, now_s - float(doc["_at"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", type=Path)
    args = parser.parse_args()
    records = [orjson.loads(line) for line in args.records.read_bytes().splitlines()]
    reads = [orjson.loads(line) for line in Path(f"{args.records}.docs").read_bytes().splitlines()]
    for r in reads:
        r["doc"]["_at"] = datetime.fromisoformat(r["doc"]["updated_at"]).timestamp()
    read_at = [r["read_at"] for r in reads]
    distinct = sorted(
        {r["doc"]["updated_at"]: r["doc"] for r in reads}.values(), key=lambda d: d["_at"]
    )
    live = next(d["_at"] for d in distinct if d.get("drawn"))
    rates = rebuild(distinct)

    def settled_as(which: int) -> Model:
        def model(doc: Doc, position: int, now_s: float) -> float | None:
            rate = rates[doc["updated_at"]][which]
            if rate is None and doc.get("settled_rate_per_s") is not None:
                return None  # not known by this rule yet (the page would say so)
            return page_eta(doc, position, now_s, rate)

        return model

    models: dict[str, Model] = {"shown": page_eta, "h10": settled_as(0), "now": settled_as(1)}
    looks: list[tuple[float, float, int, float, Doc]] = []  # (at, recorded, position, actual, doc)
    for r in records:
        if r["admitted_at"] is None:
            continue
        for at, shown in r["shown_etas"]:
            i = bisect.bisect_right(read_at, at) - 1
            if i >= 0:
                doc = reads[i]["doc"]
                looks.append(
                    (at, shown, r["number"] - doc["admitting_through"], r["admitted_at"] - at, doc)
                )
    mismatches = 0
    for at, shown, position, _, doc in looks:
        eta = page_eta(doc, position, at)
        mismatches += eta is None or abs(eta - shown) > 0.6
    print(
        f"{len(looks)} looks of admitted listeners; the page's model differs from the recorded ETA in {mismatches}"
    )
    by_time: dict[str, dict[int, list[float]]] = {}
    for name, model in models.items():
        errors: list[float] = []
        unknown = 0
        by_time[name] = defaultdict(list)
        for at, _, position, actual, doc in looks:
            eta = model(doc, position, at)
            if eta is None:
                unknown += 1
                continue
            error = abs(actual - eta) / max(10.0, actual)
            errors.append(error)
            by_time[name][int((at - live) // 5) * 5].append(error)
        print(
            f"{name:>6}: p50 {percentile(errors, 50) or 0.0:.3f}"
            f"  p90 {percentile(errors, 90) or 0.0:.3f}"
            f"  ({len(errors)} looks, {unknown} not known by this rule)"
        )
    print("\nseconds after go-live: looks, p90 shown / h10 / now")
    for second in sorted(by_time["shown"]):
        row = [percentile(by_time[n][second], 90) or 0.0 for n in models]
        print(
            f"{second:>4}: {len(by_time['shown'][second]):>6}  "
            + " / ".join(f"{x:.3f}" for x in row)
        )
    print("\nsettled speed (places/s), published / h10 / now, first minute after go-live")
    for doc in distinct:
        if 0 <= doc["_at"] - live <= 60 and doc.get("settled_rate_per_s") is not None:
            old, new = rates[doc["updated_at"]]
            print(
                f"{doc['_at'] - live:5.1f} s  {doc['settled_rate_per_s']} / {old and round(old, 2)} / {new and round(new, 2)}"
            )


if __name__ == "__main__":
    main()
