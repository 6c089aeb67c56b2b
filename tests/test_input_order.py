"""The worker takes each input partition's events strictly in offset order (streams.input_order).

Faust 0.15.3 can drop the first events after the committed offset when it resumes a partition
before seeking it (see the method's docstring); this guard turns that loss into a seek back. The
race itself could not be provoked on demand on the real broker, so the guard's rules are checked
here, on a stand-in for the three things it reads from Faust's consumer.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from types import SimpleNamespace

from streams.input_order import InputOrderGuard

TOPIC, PARTITION = "photo-hashes", 0
TP = (TOPIC, PARTITION)


@dataclass
class ConsumerStandIn:
    """The committed offsets, log start and seeks of Faust's consumer, and nothing else."""

    committed: int | None = None
    log_start: int = 0
    seeks: list[int] = field(default_factory=list)

    @property
    def _committed_offset(self) -> dict:
        return {} if self.committed is None else {TP: self.committed}

    async def earliest_offsets(self, tp):
        return {tp: self.log_start}

    async def seek_wait(self, positions):
        self.seeks.append(positions[TP])


def _guard(consumer: ConsumerStandIn) -> InputOrderGuard:
    return InputOrderGuard(lambda: consumer)


def _taken(guard: InputOrderGuard, offsets: list[int], fast: bool = True) -> list[int]:
    """The offsets the guard takes, asked as the stages ask it: ``accept_next`` first, then ``accept``
    (``fast=False``: ``accept`` alone)."""
    async def run() -> list[int]:
        taken = []
        for offset in offsets:
            message = SimpleNamespace(topic=TOPIC, partition=PARTITION, offset=offset, tp=TP)
            if (fast and guard.accept_next(message)) or await guard.accept(message):
                taken.append(offset)
        return taken

    return asyncio.run(run())


def test_events_in_order_from_the_committed_offset_are_taken_and_repeats_skipped():
    consumer = ConsumerStandIn(committed=100)
    guard = _guard(consumer)
    assert _taken(guard, [100, 101, 101, 102, 100]) == [100, 101, 102]
    assert consumer.seeks == []


def test_lost_first_events_are_fetched_again():
    # The race: the events from the committed offset (100, 101) never reach the agent; 102 does.
    consumer = ConsumerStandIn(committed=100)
    guard = _guard(consumer)
    assert _taken(guard, [102, 103]) == []  # 103 was fetched before the seek: dropped as well
    assert consumer.seeks == [100]
    assert _taken(guard, [100, 101, 102, 103, 104]) == [100, 101, 102, 103, 104]
    assert consumer.seeks == [100]


def test_a_refetch_dropped_again_seeks_again():
    consumer = ConsumerStandIn(committed=100)
    guard = _guard(consumer)
    # 101 arrives before 100, then the stale batch's last record (101) is delivered twice.
    assert _taken(guard, [101, 102, 101]) == []
    assert consumer.seeks == [100, 100]
    assert _taken(guard, [100, 101, 102]) == [100, 101, 102]


def test_a_gap_without_records_is_accepted_after_two_refetches_agree():
    # Offsets 10-11 hold transaction markers, not events: re-fetching from 10 yields 12 again.
    consumer = ConsumerStandIn(committed=10)
    guard = _guard(consumer)
    assert _taken(guard, [12]) == []
    assert _taken(guard, [12]) == []
    assert _taken(guard, [12, 13]) == [12, 13]
    assert consumer.seeks == [10, 10]


def test_without_a_commit_the_partition_starts_at_the_log_start():
    consumer = ConsumerStandIn(committed=None, log_start=5)
    guard = _guard(consumer)
    assert _taken(guard, [6]) == []
    assert consumer.seeks == [5]
    assert _taken(guard, [5, 6]) == [5, 6]


def test_a_commit_beyond_the_next_offset_moves_the_start():
    # Another guard owned the partition for a while and committed up to 200.
    consumer = ConsumerStandIn(committed=100)
    guard = _guard(consumer)
    assert _taken(guard, [100, 101]) == [100, 101]
    consumer.committed = 200
    assert _taken(guard, [150, 200, 201]) == [200, 201]
    assert consumer.seeks == []


def test_read_committed_gaps_are_taken_once_the_partition_started():
    # exactly_once: every transaction leaves a marker; only the first event after an assignment
    # must be the committed offset (Faust's race happens there).
    consumer = ConsumerStandIn(committed=100)
    guard = InputOrderGuard(lambda: consumer, gaps_after_start=True)
    assert _taken(guard, [102]) == []
    assert consumer.seeks == [100]
    assert _taken(guard, [100, 102, 105, 105, 104]) == [100, 102, 105]
    assert consumer.seeks == [100]
    guard.on_rebalance()  # a new assignment: the start is checked again
    assert _taken(guard, [108]) == []
    assert consumer.seeks == [100, 106]


def test_a_partition_taken_back_resumes_at_the_commit_even_below_what_was_taken():
    # Work in flight at the revocation was not committed: the partition comes back at 100, and
    # the events from there are taken again instead of being skipped as repeats.
    consumer = ConsumerStandIn(committed=100)
    guard = _guard(consumer)
    assert _taken(guard, [100, 101, 102]) == [100, 101, 102]
    guard.forget([SimpleNamespace(topic=TOPIC, partition=PARTITION)])
    assert _taken(guard, [100, 101]) == [100, 101]
    assert consumer.seeks == []


def test_the_synchronous_fast_path_decides_as_accept_alone_does():
    # accept_next answers only "the expected offset, taken"; every other case falls through to
    # accept, so both ways of asking take the same events and seek the same offsets.
    rng = random.Random(5)
    for gaps_after_start in (False, True):
        for _ in range(200):
            committed = rng.choice([None, 0, 3])
            consumers = [ConsumerStandIn(committed=committed) for _ in range(2)]
            guards = [InputOrderGuard(lambda c=c: c, gaps_after_start=gaps_after_start) for c in consumers]
            offsets = [rng.randrange(0, 12) for _ in range(30)]
            for start in range(0, 30, 6):
                if rng.random() < 0.2:
                    committed = rng.randrange(0, 12)
                    for consumer in consumers:
                        consumer.committed = committed
                if rng.random() < 0.1:
                    for guard in guards:
                        guard.on_rebalance()
                chunk = offsets[start:start + 6]
                assert _taken(guards[0], chunk, fast=True) == _taken(guards[1], chunk, fast=False)
            assert consumers[0].seeks == consumers[1].seeks
