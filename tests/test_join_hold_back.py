"""The join stage's hold-back (streams.join): while the found stage is more than
``forward_ahead_windows`` windows of forwarded photos behind, the join stage takes no new batch;
without Kafka, the found stage's backlog is a list of readings."""

from __future__ import annotations

import asyncio

import pytest

from streams.config import Settings
from streams.join import JoinStage


class Backlog:
    """Readings of the found stage's backlog, in records, one per call; the last one repeats."""

    def __init__(self, *readings: int | Exception) -> None:
        self.readings = list(readings)
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        reading = self.readings[min(self.calls, len(self.readings)) - 1]
        if isinstance(reading, Exception):
            raise reading
        return reading


def _stage(backlog: Backlog, ahead: float = 2.0, forwarded_photos: int = 1000, forwarded_records: int = 10,
           buffer_fill: float = 0.0) -> JoinStage:
    # 100 photos per forwarded record and windows of 1,000 photos: 2 windows ahead are 20 records.
    stage = JoinStage(Settings(window_size=1000, forward_ahead_windows=ahead), None, None, None, None,
                      found_backlog=backlog, input_buffer_fill=lambda: buffer_fill)
    stage.counters["forwarded"] = forwarded_photos
    stage._forwarded_records = forwarded_records
    return stage


def test_it_waits_until_the_found_stage_is_within_the_limit():
    backlog = Backlog(35, 28, 21, 20)
    stage = _stage(backlog)
    asyncio.run(stage._hold_back())
    assert backlog.calls == 4 and stage.counters["held_back_s"] > 0


def test_it_asks_the_broker_again_only_when_its_own_records_could_pass_the_limit():
    backlog = Backlog(5)
    stage = _stage(backlog)
    asyncio.run(stage._hold_back())
    stage._forwarded_since_read = 15  # 5 + 15 = 20 records: still within 2 windows
    asyncio.run(stage._hold_back())
    assert backlog.calls == 1
    stage._forwarded_since_read = 16
    asyncio.run(stage._hold_back())
    assert backlog.calls == 2


@pytest.mark.parametrize("state", ["stopping", "paused"])
def test_it_never_holds_back_a_stage_that_stops_or_hands_over(state):
    backlog = Backlog(1000)
    stage = _stage(backlog)
    setattr(stage, f"_{state}", True)
    asyncio.run(asyncio.wait_for(stage._hold_back(), 1.0))
    assert backlog.calls == 0


def test_never_once_the_input_buffer_is_half_full():
    # A full buffer would stop Faust's hand-over of the unjoined partition too: the found stage
    # would get no photos, and the join stage would wait for it forever.
    backlog = Backlog(1000)
    stage = _stage(backlog, buffer_fill=0.5)
    asyncio.run(asyncio.wait_for(stage._hold_back(), 1.0))
    assert backlog.calls == 0


def test_off_before_the_first_forward_and_with_zero():
    for stage in (_stage(Backlog(1000), forwarded_photos=0, forwarded_records=0), _stage(Backlog(1000), ahead=0)):
        asyncio.run(asyncio.wait_for(stage._hold_back(), 1.0))
        assert stage.found_backlog.calls == 0


def test_a_backlog_that_cannot_be_read_holds_nothing_back():
    backlog = Backlog(RuntimeError("broker away"))
    stage = _stage(backlog)
    asyncio.run(asyncio.wait_for(stage._hold_back(), 1.0))
    assert backlog.calls == 1


def test_the_setting_is_validated():
    with pytest.raises(ValueError, match="forward_ahead_windows"):
        Settings(forward_ahead_windows=-1)
