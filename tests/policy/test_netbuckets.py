"""Per-network buckets and caps."""

from __future__ import annotations

import pytest

from townhall.policy.netbuckets import NetBuckets, NetworkCap, network_of


@pytest.mark.parametrize(
    ("host", "network"),
    [
        ("10.1.2.3", "10.1.2.0/24"),
        ("127.0.0.1", "127.0.0.0/24"),
        ("::ffff:10.1.2.3", "10.1.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("[2001:db8::1]", "2001:db8::/64"),
        ("300.1.2.3", "unknown"),
        ("a.b.c.d", "unknown"),
        ("testclient", "unknown"),
        (None, "unknown"),
    ],
)
def test_network_of(host: str | None, network: str) -> None:
    assert network_of(host) == network


def test_bucket_burst_then_rate() -> None:
    b = NetBuckets(5, 10.0)
    assert [b.hit("n", 0.0) for _ in range(5)] == [0.0] * 5
    assert b.hit("n", 0.0) == pytest.approx(2.0)
    assert b.hit("other", 0.0) == 0.0
    assert b.hit("n", 2.0) == 0.0
    assert b.statistics().refused == 1


def test_bucket_memory_is_bounded() -> None:
    b = NetBuckets(1, 10.0, max_keys=100)
    for i in range(10_000):
        b.hit(f"net{i}", 0.0)
    assert b.statistics().keys == 100


def test_network_cap_counts_per_generation() -> None:
    cap = NetworkCap(3, 60.0, max_keys=2)
    assert [cap.count("a", 0.0) for _ in range(5)] == [True, True, True, False, False]
    assert cap.count("b", 1.0) and not cap.count("c", 1.0)  # key bound
    assert cap.count("a", 61.0)  # a new generation


def test_hit_if_busy_consumes_only_for_a_key_in_use() -> None:
    buckets = NetBuckets(2, 10.0)
    assert buckets.hit_if_busy("quiet", 0.0) == 0.0  # nothing counted: free, not consumed
    assert buckets.statistics().keys == 0
    buckets.hit("hot", 0.0)
    assert buckets.hit_if_busy("hot", 0.0) == 0.0  # in use: the last unit, consumed
    assert buckets.hit_if_busy("hot", 0.0) > 0  # and now refused
    assert buckets.hit_if_busy("hot", 10.0) == 0.0  # drained: free again
    assert buckets.hit_if_busy("hot", 10.0) == 0.0
    assert buckets.statistics().allowed == 2
