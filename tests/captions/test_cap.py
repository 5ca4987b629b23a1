"""At most captions_max_recognizers recognizer processes per node: past it a
live space goes on without captions and says so (captions.json, state.json)."""

from __future__ import annotations

from pathlib import Path

from townhall import metrics
from townhall.captions.live import RECOGNIZERS, LiveCaptions, Recognizers
from townhall.config import Settings


def test_slots_are_counted_per_space() -> None:
    slots = Recognizers()
    assert slots.take("a", 2) and slots.take("b", 2)
    assert slots.take("a", 2)  # the same space again takes no second slot
    assert not slots.take("c", 2)
    slots.give_back("a")
    assert slots.take("c", 2)
    assert not slots.take("d", 0) or "d" in slots.spaces


async def test_a_space_past_the_cap_goes_on_without_captions(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, captions=True, captions_max_recognizers=1)
    RECOGNIZERS.spaces.clear()
    RECOGNIZERS.spaces.add("another-space")  # this node already captions one space
    refused = metrics.CAPTIONS_REFUSED._value.get()
    live = LiveCaptions("s", settings, tmp_path / "s")
    try:
        await live.start()
        status, message = live.status()
        assert status == "unavailable"
        assert "already captions 1 live spaces" in message
        assert "captions_max_recognizers" in message
        assert live.captioner is None and not live.active  # no process was started
        assert metrics.CAPTIONS_REFUSED._value.get() == refused + 1
        live.feed(__import__("numpy").zeros(960, "int16"), 0, None)  # ignored
        await live.end(drain=False)
        assert "s" not in RECOGNIZERS.spaces
    finally:
        RECOGNIZERS.spaces.clear()


async def test_state_json_says_why_a_space_has_no_captions(tmp_path: Path) -> None:
    import httpx

    from tests.conftest import FAST_ARGON2, Api
    from townhall.server.app import create_app

    settings = Settings(
        data_dir=tmp_path / "data",
        captions=True,
        captions_max_recognizers=0,  # this node captions nothing
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            api = Api(client)
            _, host = await api.account("ada")
            sid = (await api.space(host))["id"]
            state = (await client.get(f"/spaces/{sid}/state.json")).json()
            assert state["captions"]["status"] == "unavailable", state
            assert "captions_max_recognizers" in state["captions"]["message"]
            assert state["program"]["status"] == "ok"  # the space goes on
            doc = (await client.get(f"/spaces/{sid}/captions.json")).json()
            assert doc["status"] == "unavailable"
            master = (await client.get(f"/spaces/{sid}/master.m3u8")).text
            assert "SUBTITLES" not in master  # no rendition that would stay empty
