"""A listener's ?t= carried on to every URI of its playlist (players without
cookies resolve relative URIs without the playlist's query)."""

from __future__ import annotations

from townhall.origin.answers import FromDisk, Rendered, Wait
from townhall.origin.token_uris import token_param, tokened, tokened_playlist, with_token

LL = b"""#EXTM3U
#EXT-X-VERSION:6
#EXT-X-MAP:URI="init/0.mp4"
#EXT-X-PROGRAM-DATE-TIME:2026-12-01T10:00:00.000Z
#EXTINF:2.0,
seg/0.m4s
#EXT-X-PART:DURATION=0.5,URI="part/1.0.m4s",INDEPENDENT=YES
#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part/1.1.m4s"
#EXT-X-RENDITION-REPORT:URI="plain.m3u8?x=1",LAST-MSN=1
"""


def test_every_uri_gets_the_token() -> None:
    out = with_token(LL, b"t=abc.def-_")
    assert out == (
        LL.replace(b'"init/0.mp4"', b'"init/0.mp4?t=abc.def-_"')
        .replace(b"seg/0.m4s", b"seg/0.m4s?t=abc.def-_")
        .replace(b'"part/1.0.m4s"', b'"part/1.0.m4s?t=abc.def-_"')
        .replace(b'"part/1.1.m4s"', b'"part/1.1.m4s?t=abc.def-_"')
        .replace(b'"plain.m3u8?x=1"', b'"plain.m3u8?x=1&t=abc.def-_"')
    )
    assert with_token(b"#EXTM3U\r\nseg/0.m4s\r\n", b"t=x") == b"#EXTM3U\r\nseg/0.m4s?t=x\r\n"


def test_token_param() -> None:
    assert token_param(b"_HLS_msn=3&t=a.b.c") == b"t=a.b.c"
    assert token_param(b"t=a%2Eb") == b"t=a%2Eb"
    assert token_param(b"_HLS_msn=3") is None
    assert token_param(None) is None
    assert token_param(b't=a"b') is None  # never echoed into the playlist
    assert token_param(b"t=") is None


def test_the_answer_is_rewritten_now_after_a_wait_or_from_disk() -> None:
    head = b"content-type: application/vnd.apple.mpegurl\r\ncache-control: public, max-age=1\r\ncontent-length: %d\r\n"
    found = Rendered(200, head % len(LL), LL, "playlist")
    mine = tokened_playlist(found, b"t=tok")
    assert mine.body == with_token(LL, b"t=tok")
    assert b"content-length: %d\r\n" % len(mine.body) in mine.head
    assert b"cache-control: private, max-age=1" in mine.head  # never a shared cache object
    assert tokened(found, b"_HLS_msn=1") is found  # no token in the query: the shared bytes
    assert tokened_playlist(found, None) is found
    disk = tokened(FromDisk("playlist", "s1"), b"t=tok")
    assert isinstance(disk, FromDisk) and disk.token == b"t=tok"
    wait = Wait(None, (1, 0), 1.0, lambda: found, lambda: found)  # type: ignore[arg-type]
    later = tokened(wait, b"t=tok")
    assert isinstance(later, Wait)
    assert later.then() == mine
    problem = Rendered(404, head % 2, b"{}", "problem")
    assert tokened(problem, b"t=tok") is problem
