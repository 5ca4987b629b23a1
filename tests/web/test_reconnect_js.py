"""reconnect.js, the rules by which the host's and speakers' pages notice a
lost server and come back by themselves, run in the real browser with plain
values (no peer connection, no timers)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.test_js_units import page, run  # noqa: F401 (page is the fixture)

pytestmark = pytest.mark.browser

# One look every 250 ms (as speak.js does) from t=0 with the given counters;
# returns each look's verdict.
_LOOKS = """
const watch = new m.LossWatch(m.RECONNECT, 0);
return looks.map(([at_ms, state, received, reports]) => watch.observe({at_ms, state, received, reports}).verdict);
"""


def looks(page: Any, samples: list[tuple[int, str, int, int]]) -> list[str]:  # noqa: F811
    body = f"const looks = {[list(s) for s in samples]!r};" + _LOOKS
    result: list[str] = run(page, "reconnect.js", body)
    return result


def steady(
    start_ms: int, end_ms: int, *, received: bool, reports: bool
) -> list[tuple[int, str, int, int]]:
    """Looks every 250 ms; the return audio grows 12 packets a look and the
    receiver reports one a second, each unless stopped."""
    return [
        (t, "connected", (t // 250) * 12 if received else 0, t // 1000 if reports else 0)
        for t in range(start_ms, end_ms, 250)
    ]


def test_a_healthy_connection_is_never_lost(page: Any) -> None:  # noqa: F811
    assert set(looks(page, steady(0, 20_000, received=True, reports=True))) == {"ok"}


def test_lost_when_return_audio_and_reports_both_stop(page: Any) -> None:  # noqa: F811
    alive = steady(0, 5000, received=True, reports=True)
    last = alive[-1]
    dead = [(t, "connected", last[2], last[3]) for t in range(5000, 9000, 250)]
    verdicts = looks(page, alive + dead)
    first_lost = next(t for (t, *_), v in zip(alive + dead, verdicts, strict=True) if v == "lost")
    # the last reports grew at 4000 ms (one a second), the return audio at 4750 ms:
    # lost once the return has stalled 1.5 s and the reports 2 s
    assert first_lost == 6250, verdicts


def test_one_signal_alone_is_not_a_loss(page: Any) -> None:  # noqa: F811
    # the return audio stops (a silent mix-minus sender, a busy decoder) while
    # the reports go on: not lost
    return_only = steady(0, 4000, received=True, reports=True) + [
        (t, "connected", 12 * 15, t // 1000) for t in range(4000, 12_000, 250)
    ]
    assert "lost" not in looks(page, return_only)
    # the reports stop while the return audio goes on: lost only after stall_ms (5 s)
    reports_only = steady(0, 4000, received=True, reports=True) + [
        (t, "connected", (t // 250) * 12, 4) for t in range(4000, 12_000, 250)
    ]
    verdicts = looks(page, reports_only)
    first_lost = next(t for (t, *_), v in zip(reports_only, verdicts, strict=True) if v == "lost")
    assert first_lost == 4000 + 5000, verdicts


def test_a_held_up_page_is_not_taken_for_a_lost_server(page: Any) -> None:  # noqa: F811
    # the page's own timers stopped for 3 s (a busy machine): the counters did
    # not move for it, so nothing is judged for confirm_ms after the gap
    before = steady(0, 2000, received=True, reports=True)
    after = [(t, "connected", (t // 250) * 12, t // 1000) for t in range(5000, 9000, 250)]
    assert "lost" not in looks(page, before + after)
    # ...but a server that really is gone is still found after that
    frozen = [(t, "connected", before[-1][2], before[-1][3]) for t in range(5000, 9000, 250)]
    verdicts = looks(page, before + frozen)
    first_lost = next(
        t for (t, *_), v in zip(before + frozen, verdicts, strict=True) if v == "lost"
    )
    assert first_lost == 5000 + 2000, verdicts


def test_connection_states(page: Any) -> None:  # noqa: F811
    alive = steady(0, 2000, received=True, reports=True)
    assert looks(page, [*alive, (2000, "failed", 96, 2)])[-1] == "lost"
    assert looks(page, [*alive, (2000, "closed", 96, 2)])[-1] == "lost"
    # "disconnected" is said at once and counts as lost after disconnected_ms
    # even when counters still move (ICE consent gone)
    flaky = [(t, "disconnected", (t // 250) * 12, t // 1000) for t in range(2000, 7000, 250)]
    verdicts = looks(page, alive + flaky)
    assert verdicts[len(alive)] == "interrupted"
    assert verdicts[len(alive) + 15] == "interrupted"  # 5750 ms: 3.75 s
    assert verdicts[len(alive) + 16] == "lost"  # 6000 ms: 4 s
    # a connection that recovers is "ok" again
    recovered = [*alive, (2000, "disconnected", 96, 2), (2250, "connected", 108, 2)]
    assert looks(page, recovered)[-2:] == ["interrupted", "ok"]


def test_backoff_is_exponential_jittered_and_bounded(page: Any) -> None:  # noqa: F811
    low = run(
        page,
        "reconnect.js",
        "return [0,1,2,3,4,10].map((a) => m.retryDelayMs(a, m.RECONNECT, () => 0));",
    )
    high = run(
        page,
        "reconnect.js",
        "return [0,1,2,3,4,10].map((a) => m.retryDelayMs(a, m.RECONNECT, () => 1));",
    )
    assert low == [250, 500, 1000, 2000, 2000, 2000]
    assert high == [500, 1000, 2000, 4000, 4000, 4000]
    refused = run(
        page,
        "reconnect.js",
        "return [0, 0.5, 1].map((r) => m.refusedDelayMs(m.RECONNECT, () => r));",
    )
    assert refused == [100, 200, 300]


def test_which_failures_are_asked_again(page: Any) -> None:  # noqa: F811
    body = """
    const { ApiError } = await import('/static/js/api.js');
    const e = (status) => new ApiError(status, {detail: `status ${status}`});
    const timeout = new DOMException('timed out', 'TimeoutError');
    const flagged = Object.assign(new Error('ICE did not open'), {retryable: true});
    const cases = [e(503), e(502), e(504), e(429), new TypeError('Failed to fetch'), timeout, flagged,
                   e(401), e(403), e(404), e(409), e(422), new Error('plain'),
                   new DOMException('no', 'NotAllowedError')];
    return [cases.map((c) => m.retryable(c)), m.tokenRefused(e(401)), m.tokenRefused(e(403))];
    """
    verdicts, renew_401, renew_403 = run(page, "reconnect.js", body)
    assert verdicts == [True] * 7 + [False] * 7
    assert renew_401 is True and renew_403 is False


def test_give_up_sentence_says_what_happened(page: Any) -> None:  # noqa: F811
    body = """
    const { ApiError } = await import('/static/js/api.js');
    return [m.giveUpSentence(new ApiError(503, {detail: 'moving'}), 30000),
            m.giveUpSentence(new ApiError(403, {detail: 'You are not on the stage of this space any more.'})),
            m.giveUpSentence(null, 12400)];
    """
    timed_out, refused, nothing = run(page, "reconnect.js", body)
    assert timed_out == "Could not reconnect to the room within 30 s."
    assert (
        refused
        == "Could not reconnect to the room: You are not on the stage of this space any more."
    )
    assert nothing.startswith("Could not reconnect to the room within 12 s")


def test_read_stats_counts_return_audio_and_receiver_reports(page: Any) -> None:  # noqa: F811
    body = """
    const report = new Map([
      ['i1', {type: 'inbound-rtp', kind: 'audio', packetsReceived: 250}],
      ['v1', {type: 'inbound-rtp', kind: 'video', packetsReceived: 9999}],
      ['r1', {type: 'remote-inbound-rtp', kind: 'audio', roundTripTimeMeasurements: 7, timestamp: 123}],
      ['o1', {type: 'outbound-rtp', kind: 'audio', packetsSent: 300}],
    ]);
    const noRtt = [{type: 'remote-inbound-rtp', kind: 'audio', timestamp: 4567.5}];
    return [m.readStats(report), m.readStats(noRtt), m.readStats([]), m.readStats(null)];
    """
    assert run(page, "reconnect.js", body) == [
        {"received": 250, "reports": 7},
        {"received": 0, "reports": 4567.5},
        {"received": 0, "reports": 0},
        {"received": 0, "reports": 0},
    ]
