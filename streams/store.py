"""The worker's local copy of its compacted topics, in RocksDB (rocksdict), with the offsets it reflects.

State flows one way: the found stage writes its records to Kafka (``photoclust-centers``, the
public centers topic, and ``photoclust-state``), and this store is filled only by *reading* those
topics back. So the topics are the one source of truth, a lost data dir costs only a longer read,
and a restart reads just the records written since the offset the store holds.

Faust's tables were not used for this: a table cannot be written from where a window is processed
(a ``stream.take()`` batch), and copying the records into one through an agent stored every record
three times. Each topic's keys live under their own prefix; the next offset to read is stored with
the records of the same write, so the two never disagree.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

_OFFSET_PREFIX = b"\x00offset/"

Record = tuple[bytes, bytes | None]


class LocalStore:
    """Key-value records of several topics and, per topic, the next offset to read."""

    def __init__(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        # Small buffers and cache: the store is read on restore and by /clusters, not on a hot path.
        options.set_write_buffer_size(16 * 1024 * 1024)
        options.set_max_write_buffer_number(2)
        self._db = Rdict(str(path), options=options)
        self._lock = threading.Lock()  # one writer at a time (the centers reader, a restore)

    @staticmethod
    def _prefix(topic: str) -> bytes:
        return topic.encode() + b"\x00"

    def next_offset(self, topic: str) -> int:
        """The next offset of partition 0 of ``topic`` to read (0: nothing read yet)."""
        raw = self._db.get(_OFFSET_PREFIX + topic.encode())
        return int(raw) if raw is not None else 0

    def apply(self, topic: str, records: Iterable[Record], next_offset: int) -> None:
        """Write ``records`` (a None value deletes the key) and the next offset, atomically."""
        prefix = self._prefix(topic)
        batch = WriteBatch(raw_mode=True)
        for key, value in records:
            if value is None:
                batch.delete(prefix + key)
            else:
                batch.put(prefix + key, value)
        batch.put(_OFFSET_PREFIX + topic.encode(), str(int(next_offset)).encode())
        with self._lock:
            self._db.write(batch)

    def get(self, topic: str, key: bytes) -> bytes | None:
        return self._db.get(self._prefix(topic) + key)

    def items(self, topic: str, key_prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` of ``topic`` whose key starts with ``key_prefix``, in key order."""
        start = self._prefix(topic) + key_prefix
        cut = len(self._prefix(topic))
        for key, value in self._db.items(from_key=start):
            if not key.startswith(start):
                break
            yield key[cut:], value

    def close(self) -> None:
        with self._lock:
            self._db.close()
