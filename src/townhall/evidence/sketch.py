"""Bounded sketches the evidence recorder keeps per interval.

- :class:`HyperLogLog`: distinct counts in a fixed 2**p bytes. With the default
  p = 11 (2,048 registers) the standard error is 1.04 / sqrt(2048) = 2.3 %;
  below 5/2 * 2**p distinct items the linear-counting correction is used,
  which is near exact for small counts (Flajolet et al. 2007, Heule et al. 2013).
- :class:`BoundedCounts`: exact per-key counts for at most ``max_keys`` keys;
  hits on further keys are counted in ``overflow`` (so quantiles and entropy
  are computed on the first ``max_keys`` keys seen, and the record says how
  many hits that left out).

Inputs are 64-bit integers from a keyed hash (:func:`keyed_hash`): no client
address is kept, only hashes nobody outside this node can invert by trying
addresses.
"""

from __future__ import annotations

import hashlib
import math


def keyed_hash(key: bytes, text: str) -> int:
    """A 64-bit keyed BLAKE2b hash of ``text`` (``key``: this node's secret)."""
    return int.from_bytes(
        hashlib.blake2b(text.encode(), key=key, digest_size=8).digest(), "big", signed=False
    )


class HyperLogLog:
    """Distinct-count sketch over 64-bit hashes; merge by register maximum."""

    __slots__ = ("_registers", "p")

    def __init__(self, p: int = 11) -> None:
        if not 4 <= p <= 16:
            raise ValueError("HyperLogLog precision p must be 4..16")
        self.p = p
        self._registers = bytearray(1 << p)

    @property
    def standard_error(self) -> float:
        return 1.04 / math.sqrt(1 << self.p)

    def add(self, hashed: int) -> None:
        index = hashed >> (64 - self.p)
        rest = (hashed << self.p) & 0xFFFF_FFFF_FFFF_FFFF
        # rank: position of the first 1 bit in the remaining 64 - p bits
        rank = 65 - self.p if rest == 0 else 65 - rest.bit_length()
        rank = min(rank, 64 - self.p + 1)
        if rank > self._registers[index]:
            self._registers[index] = rank

    def merge(self, other: HyperLogLog) -> None:
        if other.p != self.p:
            raise ValueError("cannot merge sketches of different precision")
        regs = self._registers
        for i, value in enumerate(other._registers):
            if value > regs[i]:
                regs[i] = value

    def estimate(self) -> float:
        m = 1 << self.p
        alpha = 0.7213 / (1 + 1.079 / m)
        total = 0.0
        zeros = 0
        for value in self._registers:
            total += 2.0**-value
            if value == 0:
                zeros += 1
        raw = alpha * m * m / total
        if raw <= 2.5 * m and zeros:
            return m * math.log(m / zeros)
        return raw


class BoundedCounts:
    """Hit counts per key, for at most ``max_keys`` keys."""

    __slots__ = ("counts", "max_keys", "overflow")

    def __init__(self, max_keys: int = 4096) -> None:
        self.max_keys = max_keys
        self.counts: dict[int, int] = {}
        self.overflow = 0

    def add(self, key: int, n: int = 1) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += n
        elif len(counts) < self.max_keys:
            counts[key] = n
        else:
            self.overflow += n

    def total(self) -> int:
        return sum(self.counts.values()) + self.overflow

    def quantile(self, q: float) -> float:
        """The q-quantile (nearest rank) of the per-key counts; 0 with no keys."""
        if not self.counts:
            return 0.0
        values = sorted(self.counts.values())
        rank = max(0, min(len(values) - 1, math.ceil(q * len(values)) - 1))
        return float(values[rank])

    def entropy_bits(self) -> float:
        """Shannon entropy (bits) of the distribution of hits over keys."""
        total = sum(self.counts.values())
        if total <= 0:
            return 0.0
        h = 0.0
        for count in self.counts.values():
            p = count / total
            h -= p * math.log2(p)
        return h

    def top(self, n: int) -> list[tuple[int, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


class SeenFilter:
    """Which keys were seen in earlier intervals: a Bloom filter of
    ``bits`` bits and ``hashes`` probes (false-positive rate about
    (1 - e^(-k n / m))^k: 0.8 % with the defaults at 100,000 keys)."""

    __slots__ = ("_bits", "hashes", "size")

    def __init__(self, bits: int = 1 << 20, hashes: int = 7) -> None:
        self.size = bits
        self.hashes = hashes
        self._bits = bytearray(bits // 8)

    def _probes(self, hashed: int) -> list[int]:
        h1 = hashed & 0xFFFF_FFFF
        h2 = (hashed >> 32) | 1
        return [(h1 + i * h2) % self.size for i in range(self.hashes)]

    def __contains__(self, hashed: int) -> bool:
        bits = self._bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in self._probes(hashed))

    def add(self, hashed: int) -> None:
        bits = self._bits
        for p in self._probes(hashed):
            bits[p >> 3] |= 1 << (p & 7)
