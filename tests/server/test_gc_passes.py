"""`townhall serve` spaces out the cyclic collector's full passes
(``gc_full_pass_every``), which thousands of open connections make long."""

from __future__ import annotations

import gc

from townhall.config import Settings
from townhall.server.run import space_full_gc_passes


def test_full_passes_are_spaced_and_the_young_thresholds_kept() -> None:
    before = gc.get_threshold()
    try:
        assert space_full_gc_passes(250) == (before[0], before[1], 250)
        assert gc.get_threshold()[2] == 250
    finally:
        gc.set_threshold(*before)


def test_the_default_spaces_them_more_than_python() -> None:
    assert Settings().gc_full_pass_every > 10
