"""HTTP/1.1 chunked transfer coding (RFC 9112 section 7.1): the framing the
live.aac fan-out writes straight to transports. No I/O here."""

from __future__ import annotations


def http_chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
