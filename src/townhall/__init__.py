"""townhall: live audio spaces.

A few people talk over WebRTC; the program mix is encoded once and reaches any
number of listeners as the same cacheable Low-Latency HLS bytes.
"""

from __future__ import annotations

__version__ = "0.1.0"
