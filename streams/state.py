"""The clusterer's state as key-value records, for the RocksDB tables and their Kafka topic.

Millions of centers cannot be one Kafka message and must not be one message each (every window
touches up to a window's worth of clusters), so they are stored in blocks of ``CENTER_BLOCK``
clusters: a window rewrites only the blocks whose clusters it founded or joined. The pending pool
is small and rewritten whole, in chunks, every window. The ``meta`` record is written last; a
restore reads exactly the blocks and chunks it names, so it never mixes two windows' records.

Keys are ``b"centers/<block>"``, ``b"pending/<chunk>"`` and ``b"meta"``; values are msgpack maps
holding little-endian numpy buffers. A value of ``None`` (a tombstone) deletes a key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
import numpy as np

from core.online import OnlineClusterer, WindowResult

CENTER_BLOCK = 1024
PENDING_CHUNK = 4096
META_KEY = b"meta"
CENTERS_PREFIX = b"centers/"
PENDING_PREFIX = b"pending/"
STATE_FORMAT = 1
_PARAMS = ("n_bits", "window_size", "new_centers_ratio", "radius", "min_cluster_size", "pending_capacity",
           "pending_max_windows", "max_iter", "random_state")

Record = tuple[bytes, bytes | None]


def center_key(block: int) -> bytes:
    return CENTERS_PREFIX + str(block).encode()


def pending_key(chunk: int) -> bytes:
    return PENDING_PREFIX + str(chunk).encode()


def _pack(**fields: Any) -> bytes:
    return msgpack.packb(
        {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in fields.items()}, use_bin_type=True
    )


def _array(value: bytes, dtype: str, n_words: int | None = None) -> np.ndarray:
    array = np.frombuffer(value, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    return array.reshape(-1, n_words) if n_words else array


InputPositions = Mapping[tuple[str, int], int]


def state_records(clusterer: OnlineClusterer, result: WindowResult | None = None,
                  input_positions: InputPositions | None = None) -> list[Record]:
    """Records that bring a stored copy up to date after ``result`` (``None``: everything).

    ``input_positions`` maps (topic, partition) to the next input offset the state does not yet
    reflect; a restarted worker skips redelivered events below it instead of clustering them twice.
    Order matters: blocks and chunks first, ``meta`` last.
    """
    # Centers are read through the clusterer's read-only views: export_state() would copy all of
    # them (tens of MB at a million clusters) to write the few blocks a window touched.
    centers, sizes = clusterer.centers_, clusterer.sizes_
    created, updated = clusterer.created_ts_, clusterer.updated_ts_
    state = clusterer.export_state(include_centers=False)
    n_clusters = centers.shape[0]
    if result is None:
        blocks: Iterable[int] = range((n_clusters + CENTER_BLOCK - 1) // CENTER_BLOCK)
    else:
        touched = result.touched_clusters // CENTER_BLOCK
        blocks = np.unique(touched).tolist()
    records: list[Record] = []
    for block in blocks:
        rows = slice(block * CENTER_BLOCK, min((block + 1) * CENTER_BLOCK, n_clusters))
        records.append((center_key(block), _pack(
            first=block * CENTER_BLOCK,
            codes=centers[rows].astype("<u8"),
            sizes=sizes[rows].astype("<i8"),
            created=created[rows].astype("<f8"),
            updated=updated[rows].astype("<f8"),
        )))
    offsets = state["pending_ids_offsets"]
    n_pending = offsets.shape[0] - 1
    n_chunks = (n_pending + PENDING_CHUNK - 1) // PENDING_CHUNK
    for chunk in range(n_chunks):
        lo, hi = chunk * PENDING_CHUNK, min((chunk + 1) * PENDING_CHUNK, n_pending)
        records.append((pending_key(chunk), _pack(
            window=state["n_windows"],
            ids=state["pending_ids_blob"][offsets[lo]:offsets[hi]].tobytes(),
            lengths=np.diff(offsets[lo:hi + 1]).astype("<i8"),
            codes=state["pending_codes"][lo:hi].astype("<u8"),
            first_seen=state["pending_first_seen"][lo:hi].astype("<f8"),
            first_window=state["pending_first_window"][lo:hi].astype("<i8"),
        )))
    meta = {name: state[name] for name in _PARAMS}
    meta.update(format=STATE_FORMAT, n_windows=state["n_windows"], n_clusters=n_clusters,
                n_pending=n_pending, n_pending_chunks=n_chunks,
                input_positions=sorted([topic, partition, offset]
                                       for (topic, partition), offset in (input_positions or {}).items()))
    records.append((META_KEY, msgpack.packb(meta, use_bin_type=True)))
    return records


def stale_pending_keys(previous_chunks: int, current_chunks: int) -> list[Record]:
    """Tombstones for pending chunks that a shrinking pool no longer uses."""
    return [(pending_key(chunk), None) for chunk in range(current_chunks, previous_chunks)]


def n_pending_chunks(records: list[Record]) -> int:
    return msgpack.unpackb(records[-1][1])["n_pending_chunks"]


# Settings a restart may change: a restored clusterer takes the new value. ``n_bits`` cannot
# change (the stored centers have the old width); the seed stays the stored one, so that window
# w's Bk-means start does not depend on restarts.
CHANGEABLE_PARAMS = ("window_size", "new_centers_ratio", "radius", "min_cluster_size", "pending_capacity",
                     "max_iter")
FIXED_PARAMS = ("n_bits",)


def stored_params(raw_meta: bytes | None) -> dict[str, Any] | None:
    """The clusterer parameters a stored ``meta`` record holds (None without state)."""
    if raw_meta is None:
        return None
    meta = msgpack.unpackb(raw_meta)
    return {name: meta[name] for name in _PARAMS if name in meta}


def param_changes(stored: Mapping[str, Any], wanted: Mapping[str, Any],
                  names: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """``(name, stored value, wanted value)`` for each of ``names`` whose value differs."""
    return [(name, stored.get(name), wanted[name]) for name in names if stored.get(name) != wanted[name]]


def stored_input_positions(get: Mapping[bytes, bytes] | Any) -> dict[tuple[str, int], int]:
    """The input positions the stored state reflects (empty without state)."""
    raw_meta = get.get(META_KEY)
    if raw_meta is None:
        return {}
    return {(topic, partition): offset for topic, partition, offset in msgpack.unpackb(raw_meta).get("input_positions", [])}


def restore_clusterer(get: Mapping[bytes, bytes] | Any) -> OnlineClusterer | None:
    """Rebuild the clusterer from stored records (``get[key]`` -> value); ``None`` if there is no state.

    Raises ``ValueError`` naming the missing or inconsistent record.
    """
    raw_meta = get.get(META_KEY)
    if raw_meta is None:
        return None
    meta = msgpack.unpackb(raw_meta)
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"stored state has format {meta.get('format')!r}, expected {STATE_FORMAT}")
    n_bits, n_clusters = meta["n_bits"], meta["n_clusters"]
    n_words = n_bits // 64
    codes, sizes, created, updated = [], [], [], []
    for block in range((n_clusters + CENTER_BLOCK - 1) // CENTER_BLOCK):
        raw = get.get(center_key(block))
        if raw is None:
            raise ValueError(f"stored state names {n_clusters} clusters but record {center_key(block)!r} is missing")
        value = msgpack.unpackb(raw)
        codes.append(_array(value["codes"], "uint64", n_words))
        sizes.append(_array(value["sizes"], "int64"))
        created.append(_array(value["created"], "float64"))
        updated.append(_array(value["updated"], "float64"))
    centers = np.concatenate(codes)[:n_clusters] if codes else np.zeros((0, n_words), np.uint64)
    if centers.shape[0] != n_clusters:
        raise ValueError(f"stored centers hold {centers.shape[0]} clusters, meta says {n_clusters}")
    ids, lengths, pcodes, seen, first_window = [], [], [], [], []
    for chunk in range(meta["n_pending_chunks"]):
        raw = get.get(pending_key(chunk))
        if raw is None:
            raise ValueError(f"stored state names {meta['n_pending_chunks']} pending chunks but {pending_key(chunk)!r} is missing")
        value = msgpack.unpackb(raw)
        if value["window"] != meta["n_windows"]:
            raise ValueError(f"pending chunk {chunk} is from window {value['window']}, meta from {meta['n_windows']}")
        ids.append(value["ids"])
        lengths.append(_array(value["lengths"], "int64"))
        pcodes.append(_array(value["codes"], "uint64", n_words))
        seen.append(_array(value["first_seen"], "float64"))
        first_window.append(_array(value["first_window"], "int64"))
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    state = {name: meta[name] for name in _PARAMS}
    state.update(
        format_version=1,
        n_windows=meta["n_windows"],
        centers=centers,
        sizes=np.concatenate(sizes)[:n_clusters] if sizes else np.zeros(0, np.int64),
        created_ts=np.concatenate(created)[:n_clusters] if created else np.zeros(0),
        updated_ts=np.concatenate(updated)[:n_clusters] if updated else np.zeros(0),
        pending_ids_blob=np.frombuffer(b"".join(ids), dtype=np.uint8).copy(),
        pending_ids_offsets=np.concatenate(([0], np.cumsum(all_lengths))).astype(np.int64),
        pending_codes=np.concatenate(pcodes) if pcodes else np.zeros((0, n_words), np.uint64),
        pending_first_seen=np.concatenate(seen) if seen else np.zeros(0),
        pending_first_window=np.concatenate(first_window) if first_window else np.zeros(0, np.int64),
    )
    return OnlineClusterer.from_state(state)


def cluster_record(get: Mapping[bytes, bytes] | Any, cluster_id: int) -> dict[str, Any] | None:
    """One cluster's center and bookkeeping, read from its block (for the web view)."""
    raw = get.get(center_key(cluster_id // CENTER_BLOCK))
    if raw is None:
        return None
    value = msgpack.unpackb(raw)
    row = cluster_id - value["first"]
    sizes = _array(value["sizes"], "int64")
    if not 0 <= row < sizes.shape[0]:
        return None
    n_words = len(value["codes"]) // 8 // sizes.shape[0]
    code = _array(value["codes"], "uint64", n_words)[row]
    return {
        "cluster": cluster_id,
        "center": code.astype(">u8").tobytes().hex(),
        "size": int(sizes[row]),
        "created_ts": float(_array(value["created"], "float64")[row]),
        "updated_ts": float(_array(value["updated"], "float64")[row]),
    }
