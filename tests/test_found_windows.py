"""The found stage's windows of exactly n photos (streams.found), without Kafka: a forwarded event
that does not fit is split across two windows, acknowledged with the second, a restart skips
exactly the photos the first window took, and join counts past a window's end count for the
windows after it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from streams.codecs import JOINS_KEY, PHOTOS_KEY, encode_forwarded, encode_joins
from streams.config import Settings
from streams.found import FoundStage

TOPIC = "photoclust-unjoined"


@dataclass
class Message:
    offset: int
    value: bytes
    topic: str = TOPIC
    partition: int = 0
    key: bytes = PHOTOS_KEY
    acked: list[int] = field(default_factory=list)

    @property
    def tp(self):
        return (self.topic, self.partition)

    def ack(self, consumer) -> None:
        self.acked.append(self.offset)


class AcceptAll:
    async def accept(self, message) -> bool:
        return True


def _events(n_events: int, rows: int) -> list[SimpleNamespace]:
    events = []
    for e in range(n_events):
        ids = [f"e{e}-r{r}" for r in range(rows)]
        value, = encode_forwarded(ids, [bytes([e, r]) * 16 for r in range(rows)], [float(e)] * rows)
        events.append(SimpleNamespace(message=Message(e, value)))
    return events


def _stage(window_size: int) -> FoundStage:
    stage = FoundStage(Settings(window_size=window_size), SimpleNamespace(consumer=None), None, None, None, AcceptAll())
    stage._queue = asyncio.Queue()
    stage.owner = True  # this worker owns the unjoined partition, and its state is restored
    stage._ready.set()
    return stage


def _closed(stage: FoundStage) -> list:
    windows = []
    while not stage._queue.empty():
        windows.append(stage._queue.get_nowait())
    return windows


def test_an_event_that_does_not_fit_is_split_and_acked_with_its_last_window():
    stage = _stage(window_size=10)
    asyncio.run(stage.add_events(_events(3, rows=7)))
    first, second = _closed(stage)
    assert first.ids == [f"e0-r{r}" for r in range(7)] + ["e1-r0", "e1-r1", "e1-r2"]
    assert [m.offset for m in first.messages] == [0] and first.split == (TOPIC, 0, 1, 3)
    assert second.ids == [f"e1-r{r}" for r in range(3, 7)] + [f"e2-r{r}" for r in range(6)]
    assert [m.offset for m in second.messages] == [1] and second.split == (TOPIC, 0, 2, 6)
    assert stage.window.ids == ["e2-r6"] and [m.offset for m in stage.window.messages] == [2]


def test_a_restart_skips_exactly_what_the_stored_state_holds():
    stage = _stage(window_size=10)
    stage._input_positions = {(TOPIC, 0): (1, 3)}  # event 0, and 3 photos of event 1, are stored
    events = _events(3, rows=7)
    asyncio.run(stage.add_events(events))
    assert stage.counters["replays_skipped"] == 1
    first, = _closed(stage)
    assert first.ids == [f"e1-r{r}" for r in range(3, 7)] + [f"e2-r{r}" for r in range(6)]
    assert stage.window.ids == ["e2-r6"]


def _joins(offset: int, count: int) -> SimpleNamespace:
    value = encode_joins(np.array([0]), np.array([count]), 1.0)
    return SimpleNamespace(message=Message(offset, value, key=JOINS_KEY))


def test_join_counts_past_a_window_end_count_for_the_next_windows():
    # A stream of 50 photos in windows of 10: 7 forwarded, then 36 joined by the join stage (one
    # join-count event), then 7 forwarded. Windows end every 10 photos of the stream, as with one
    # stage: at 10 (the join counts close it, 33 past its end), 20, 30 and 40 (counts only), 50.
    stage = _stage(window_size=10)
    first_event, last_event = _events(2, rows=7)
    last_event.message.offset = 2
    asyncio.run(stage.add_events([first_event, _joins(1, 36), last_event]))
    windows = _closed(stage)
    assert [len(w) + w.n_joined_elsewhere for w in windows] == [43, 33, 23, 13, 10]
    assert [w.carry_after for w in windows] == [33, 23, 13, 3, 0]
    assert [len(w) for w in windows] == [7, 0, 0, 0, 7]
    assert [[m.offset for m in w.messages] for w in windows] == [[0, 1], [], [], [], [2]]
    assert stage.window.empty and stage.window.n_joined_elsewhere == 0


def test_a_restart_starts_its_first_window_with_the_stored_carry():
    stage = _stage(window_size=10)
    stage._carry = 4  # the last stored window ended 4 photos into its last join counts
    stage.window = stage._window_after_last_clustered()  # as a restore starts
    asyncio.run(stage.add_events(_events(1, rows=7)))
    first, = _closed(stage)
    assert first.n_joined_elsewhere == 4 and first.ids == [f"e0-r{r}" for r in range(6)]
