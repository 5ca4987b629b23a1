"""The evidence recorder, rule and chain, without a server."""

from __future__ import annotations

import copy
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from townhall.evidence.book import EvidenceBook
from townhall.evidence.chain import verify_chain
from townhall.evidence.rule import classify
from townhall.evidence.sketch import BoundedCounts, HyperLogLog, SeenFilter, keyed_hash


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("n", [10, 500, 5000, 50_000])
def test_hyperloglog_within_three_standard_errors(n: int) -> None:
    hll = HyperLogLog()
    for i in range(n):
        hll.add(keyed_hash(b"k", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"))
    assert abs(hll.estimate() - n) <= max(1, 3 * hll.standard_error * n)


def test_bounded_counts_quantiles_entropy_and_overflow() -> None:
    counts = BoundedCounts(max_keys=3)
    for key, n in ((1, 1), (2, 1), (3, 8), (4, 5)):
        counts.add(key, n)
    assert counts.overflow == 5 and counts.total() == 15
    assert counts.quantile(0.5) == 1 and counts.quantile(0.99) == 8
    two = BoundedCounts()
    two.add(1)
    two.add(2)
    assert two.entropy_bits() == pytest.approx(1.0)


def test_seen_filter() -> None:
    seen = SeenFilter(bits=1 << 16)
    seen.add(12345)
    assert 12345 in seen
    assert sum(keyed_hash(b"x", str(i)) in seen for i in range(1000)) < 10


@pytest.mark.parametrize(
    ("arrivals", "requests", "returning", "rate", "label"),
    [
        (10, 50, 0.0, 5.0, "quiet"),
        (500, 900, 0.8, 0.2, "flash crowd"),
        (500, 900, 0.5, 0.9, "flash crowd"),
        (500, 9000, 0.05, 8.0, "attack"),
        (50, 5000, 0.1, 3.0, "attack"),
        (500, 900, 0.05, 0.3, "mixed"),
        (500, 9000, 0.9, 5.0, "mixed"),
    ],
)
def test_rule_table(
    arrivals: int, requests: int, returning: float, rate: float, label: str
) -> None:
    got, triggers = classify(
        arrivals=arrivals, requests=requests, returning_share=returning, rate_p99_per_s=rate
    )
    assert got == label
    assert triggers and all("=" in t for t in triggers)


def _book(clock: Clock, key: Ed25519PrivateKey | None = None) -> EvidenceBook:
    return EvidenceBook(key or Ed25519PrivateKey.generate(), b"secret", clock=clock)


def _flash_crowd(book: EvidenceBook, clock: Clock, rng: random.Random) -> None:
    """Warm-up interval: 20 /24s visit; then 800 arrivals from those, at player rates."""
    for net in range(20):
        book.request("s", "join", f"10.0.{net}.1", f"10.0.{net}.0/24", arrival=True)
    clock.now += 10
    book.tick()
    for i in range(800):
        net = rng.randrange(22)  # 2 of 22 networks are new
        host = f"10.0.{net}.{i % 250 + 2}"
        book.request("s", "join", host, f"10.0.{net}.0/24", arrival=True)
        book.request("s", "state", host, f"10.0.{net}.0/24")
    clock.now += 10


def _attack(book: EvidenceBook, clock: Clock, rng: random.Random) -> None:
    """Quiet warm-up, then 1,500 new /24s each sending ~20 joins in 10 s."""
    book.request("s", "join", "10.0.0.1", "10.0.0.0/24", arrival=True)
    clock.now += 10
    book.tick()
    for i in range(30_000):
        net = i % 1500
        host = f"127.{net >> 8}.{net & 255}.{1 + rng.randrange(3)}"
        book.request("s", "join", host, f"127.{net >> 8}.{net & 255}.0/24", arrival=True)
    clock.now += 10


@pytest.mark.parametrize(
    ("scenario", "label"), [(_flash_crowd, "flash crowd"), (_attack, "attack")]
)
def test_recorded_scenarios_are_labelled(scenario, label) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    book = _book(clock)
    scenario(book, clock, random.Random(7))
    records = [r for _, r in book.tick()]
    assert [r["label"] for r in records] == [label], records[0]["triggers"]
    doc = book.document("s")
    assert doc is not None and len(doc["records"]) == 2
    verdict = verify_chain(doc, pinned_key=book.public_key)
    assert verdict.ok, verdict.problems
    assert verdict.labels[label] == 1
    # no address is published
    text = str(doc)
    assert "10.0." not in text and "127." not in text


def _chain(n: int = 4) -> tuple[EvidenceBook, dict]:  # type: ignore[type-arg]
    clock = Clock()
    book = _book(clock)
    for i in range(n):
        book.request("s", "join", f"10.0.0.{i}", "10.0.0.0/24", arrival=True)
        clock.now += 10
        book.tick()
    doc = book.document("s")
    assert doc is not None
    return book, doc


def test_one_changed_byte_names_the_record() -> None:
    book, doc = _chain()
    bad = copy.deepcopy(doc)
    bad["records"][2]["arrivals"] += 1
    verdict = verify_chain(bad, pinned_key=book.public_key)
    assert not verdict.ok and "record #2 (seq 2)" in verdict.problems[0]
    assert "signature" in verdict.problems[0]


def test_missing_and_reordered_records_are_named() -> None:
    _, doc = _chain()
    missing = copy.deepcopy(doc)
    del missing["records"][1]
    verdict = verify_chain(missing)
    assert not verdict.ok and "record #1 (seq 2)" in verdict.problems[0]
    swapped = copy.deepcopy(doc)
    swapped["records"][1], swapped["records"][2] = swapped["records"][2], swapped["records"][1]
    verdict = verify_chain(swapped)
    assert not verdict.ok and "record #1" in verdict.problems[0]


def test_resigned_with_another_key_fails() -> None:
    book, doc = _chain()
    other = EvidenceBook(Ed25519PrivateKey.generate(), b"x", clock=Clock())
    # one record re-signed with another key, the document's key unchanged
    from townhall.evidence.chain import ChainWriter

    forged_writer = ChainWriter("s", other._key, seq=1, prev=doc["records"][1]["prev"])
    figures = {
        k: v
        for k, v in doc["records"][1].items()
        if k not in {"sig", "seq", "prev", "key_id", "space_id"}
    }
    forged = copy.deepcopy(doc)
    forged["records"][1] = forged_writer.append(figures)
    verdict = verify_chain(forged)
    assert not verdict.ok and "record #1" in verdict.problems[0]
    # the whole document re-signed with another key: only a pinned key catches it
    rebuilt_writer = ChainWriter("s", other._key)
    rebuilt = copy.deepcopy(doc)
    rebuilt["records"] = [
        rebuilt_writer.append(
            {k: v for k, v in r.items() if k not in {"sig", "seq", "prev", "key_id", "space_id"}}
        )
        for r in doc["records"]
    ]
    rebuilt["public_key"] = other.public_key
    del rebuilt["head"]
    assert verify_chain(rebuilt).ok
    verdict = verify_chain(rebuilt, pinned_key=book.public_key)
    assert not verdict.ok and "not the node's key" in verdict.problems[0]


def test_book_is_bounded() -> None:
    clock = Clock()
    book = EvidenceBook(Ed25519PrivateKey.generate(), b"k", clock=clock, max_spaces=2)
    for space in ("a", "b", "c"):
        book.request(space, "join", "10.0.0.1", "10.0.0.0/24")
    assert book.statistics().spaces == 2 and book.statistics().spaces_refused == 1
