"""Wire formats of the found stage's two compacted topics, and the rebuild of its clusterer from them.

``photoclust-centers`` is public: downstream consumers may read it (README, "The centers topic").
Millions of centers cannot be one Kafka message and must not be one message each, so a record holds
a block of ``CENTER_BLOCK`` consecutive cluster ids:

* key ``b"centers/<block>"`` (ASCII), block b holding cluster ids ``b * 1024 .. b * 1024 + 1023``;
* value, a msgpack map: ``{"format": 1, "n_bits": int, "first": int, "codes": bin, "created": bin,
  "window": int}``: ``codes`` the centers of ids ``first, first + 1, ...`` as little-endian uint64,
  ``n_bits / 64`` words each; ``created`` their founding times (little-endian float64, epoch
  seconds); ``window`` the found-stage window that last wrote the block.

A block is rewritten, with rows appended, while it fills up; a center never changes once founded,
so the newest record of a block (all that compaction keeps) holds every center it ever held.

``photoclust-state`` is the found stage's own: ``stats/<block>`` (size and last-joined time of each
cluster of a block), ``pending/<chunk>`` (the pending pool, rewritten whole every window) and
``meta`` (parameters, window count, the offsets the state reflects), written last. Values are msgpack
maps holding little-endian numpy buffers; a value of ``None`` (a tombstone) deletes a key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack
import numpy as np

from core.online import OnlineClusterer

CENTER_BLOCK = 1024
PENDING_CHUNK = 4096
CENTERS_FORMAT = 1
STATE_FORMAT = 2
META_KEY = b"meta"
CENTERS_PREFIX = b"centers/"
STATS_PREFIX = b"stats/"
PENDING_PREFIX = b"pending/"
_PARAMS = ("n_bits", "window_size", "new_centers_ratio", "radius", "min_cluster_size", "pending_capacity",
           "pending_max_windows", "max_iter", "random_state")
# Settings a restart may change: a restored clusterer takes the new value. ``n_bits`` cannot
# change (the stored centers have the old width); the seed stays the stored one, so that window
# w's Bk-means start does not depend on restarts.
CHANGEABLE_PARAMS = ("window_size", "new_centers_ratio", "radius", "min_cluster_size", "pending_capacity",
                     "max_iter")
FIXED_PARAMS = ("n_bits",)

Record = tuple[bytes, bytes | None]
# (topic, partition) -> the next (offset, row) the state does not hold: events below the offset, and
# the first ``row`` photos of the event at it (split across two windows), are in the state.
InputPositions = Mapping[tuple[str, int], tuple[int, int]]


def center_key(block: int) -> bytes:
    return CENTERS_PREFIX + str(block).encode()


def stats_key(block: int) -> bytes:
    return STATS_PREFIX + str(block).encode()


def pending_key(chunk: int) -> bytes:
    return PENDING_PREFIX + str(chunk).encode()


def _pack(**fields: Any) -> bytes:
    return msgpack.packb(
        {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in fields.items()}, use_bin_type=True
    )


def _array(value: bytes, dtype: str, n_words: int | None = None) -> np.ndarray:
    array = np.frombuffer(value, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    return array.reshape(-1, n_words) if n_words else array


def _blocks(first: int, stop: int) -> range:
    return range(first // CENTER_BLOCK, (stop + CENTER_BLOCK - 1) // CENTER_BLOCK)


# -- the centers topic ------------------------------------------------------------------------------


def center_records(clusterer: OnlineClusterer, first_new: int, window: int) -> list[Record]:
    """Records of the center blocks that hold clusters ``first_new ..`` (each block whole)."""
    centers, created = clusterer.centers_, clusterer.created_ts_
    n_clusters = centers.shape[0]
    records = []
    for block in _blocks(first_new, n_clusters):
        rows = slice(block * CENTER_BLOCK, min((block + 1) * CENTER_BLOCK, n_clusters))
        records.append((center_key(block), _pack(
            format=CENTERS_FORMAT, n_bits=clusterer.n_bits_, first=block * CENTER_BLOCK, window=int(window),
            codes=centers[rows].astype("<u8"), created=created[rows].astype("<f8"))))
    return records


def decode_center_block(value: bytes) -> tuple[int, np.ndarray, np.ndarray, int]:
    """``(first, codes, created, window)`` of a centers-topic value; ValueError if it is not one."""
    try:
        block = msgpack.unpackb(value)
        if block.get("format") != CENTERS_FORMAT:
            raise ValueError(f"format {block.get('format')!r}, expected {CENTERS_FORMAT}")
        n_words = int(block["n_bits"]) // 64
        codes = _array(block["codes"], "uint64", n_words)
        created = _array(block["created"], "float64")
        first, window = int(block["first"]), int(block["window"])
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as e:
        raise ValueError(f"not a center block: {e}") from None
    if codes.shape[0] != created.shape[0] or first % CENTER_BLOCK or codes.shape[0] > CENTER_BLOCK:
        raise ValueError(f"not a center block: {codes.shape[0]} codes, {created.shape[0]} times, first={first}")
    return first, codes, created, window


# -- the state topic --------------------------------------------------------------------------------


def state_records(clusterer: OnlineClusterer, touched: np.ndarray | None = None,
                  input_positions: InputPositions | None = None, previous_chunks: int = 0) -> list[Record]:
    """Records that bring the stored state up to date: the stats blocks of the ``touched`` cluster
    ids (``None``: all), the pending pool (with tombstones for chunks it no longer uses, of the
    ``previous_chunks`` stored), and ``meta`` last.

    ``input_positions`` maps (topic, partition) to the next (offset, row) the state does not reflect;
    a restarted found stage skips what comes before instead of clustering it twice.
    """
    sizes, updated = clusterer.sizes_, clusterer.updated_ts_
    state = clusterer.export_state(include_centers=False)
    n_clusters = sizes.shape[0]
    blocks = _blocks(0, n_clusters) if touched is None else np.unique(np.asarray(touched) // CENTER_BLOCK).tolist()
    records: list[Record] = []
    for block in blocks:
        rows = slice(block * CENTER_BLOCK, min((block + 1) * CENTER_BLOCK, n_clusters))
        records.append((stats_key(block), _pack(first=block * CENTER_BLOCK, sizes=sizes[rows].astype("<i8"),
                                                updated=updated[rows].astype("<f8"))))
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
    records += [(pending_key(chunk), None) for chunk in range(n_chunks, previous_chunks)]
    meta = {name: state[name] for name in _PARAMS}
    meta.update(format=STATE_FORMAT, n_windows=state["n_windows"], n_clusters=n_clusters,
                n_pending=n_pending, n_pending_chunks=n_chunks,
                input_positions=sorted([topic, partition, offset, row]
                                       for (topic, partition), (offset, row) in (input_positions or {}).items()))
    records.append((META_KEY, msgpack.packb(meta, use_bin_type=True)))
    return records


def n_pending_chunks(records: list[Record]) -> int:
    """The pending chunks that ``records`` (of :func:`state_records`) leave stored."""
    return msgpack.unpackb(records[-1][1])["n_pending_chunks"]


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


def stored_input_positions(raw_meta: bytes | None) -> dict[tuple[str, int], tuple[int, int]]:
    """The input positions a stored ``meta`` record reflects (empty without state)."""
    if raw_meta is None:
        return {}
    return {(topic, partition): (offset, row)
            for topic, partition, offset, row in msgpack.unpackb(raw_meta).get("input_positions", [])}


# -- rebuilding the found stage's clusterer ---------------------------------------------------------


def stored_cluster(cluster_id: int, get_center_block: Callable[[bytes], bytes | None],
                   get_state: Callable[[bytes], bytes | None]) -> dict[str, Any] | None:
    """One cluster's figures as the two topics hold them (what a worker that does not found
    answers): its center and founding time from the centers topic, its size and last join from
    the state topic. None if the centers topic has no such cluster."""
    block = cluster_id // CENTER_BLOCK
    raw_center = get_center_block(center_key(block))
    if raw_center is None:
        return None
    first, codes, created, _ = decode_center_block(raw_center)
    row = cluster_id - first
    if row >= codes.shape[0]:
        return None
    size, updated = 0, float(created[row])  # founded by a window whose state records never followed
    raw_stats = get_state(stats_key(block))
    if raw_stats is not None:
        value = msgpack.unpackb(raw_stats)
        sizes = _array(value["sizes"], "int64")
        if row < sizes.shape[0]:
            size, updated = int(sizes[row]), float(_array(value["updated"], "float64")[row])
    return {"cluster": cluster_id, "center": codes[row].astype(">u8").tobytes().hex(), "size": size,
            "created_ts": float(created[row]), "updated_ts": updated}


def restore_clusterer(center_values: Iterable[bytes], get: Callable[[bytes], bytes | None],
                      params: Mapping[str, Any]) -> tuple[OnlineClusterer, list[tuple[str, Any, Any]]]:
    """The clusterer that the stored records describe, run with ``params`` (the new settings);
    returns it and the changed settings ``(name, stored, new)``.

    ``center_values`` are the centers topic's values (any order); ``get(key)`` reads the state
    topic. The centers topic is authoritative for the centers: a block sent just before a crash,
    whose window's ``meta`` never followed, still holds published centers (copies of them may
    have joined photos already), so they are kept, and their ids are never handed out again.
    Raises ``ValueError`` naming the missing or inconsistent record, or a setting that cannot change.
    """
    raw_meta = get(META_KEY)
    meta = msgpack.unpackb(raw_meta) if raw_meta is not None else None
    if meta is not None and meta.get("format") != STATE_FORMAT:
        hint = (" (written by the one-stage worker, which kept the centers in the state topic; this version "
                "keeps them in the centers topic and cannot read it: start with a new app_id and topics)"
                if meta.get("format") == 1 else "")
        raise ValueError(f"stored state has format {meta.get('format')!r}, expected {STATE_FORMAT}{hint}")
    stored = {name: meta[name] for name in _PARAMS} if meta is not None else dict(params)
    refused = param_changes(stored, params, FIXED_PARAMS)
    if refused:
        raise ValueError("; ".join(f"{name}={new} differs from the stored state's {name}={old}"
                                   for name, old, new in refused))
    changes = param_changes(stored, params, CHANGEABLE_PARAMS)
    n_words = int(params["n_bits"]) // 64
    blocks = sorted((decode_center_block(value) for value in center_values), key=lambda block: block[0])
    n_clusters, windows = 0, [meta["n_windows"] if meta is not None else 0]
    for first, codes, _, window in blocks:
        if first != n_clusters:
            raise ValueError(f"the centers topic has no center {n_clusters} (the next block starts at {first})")
        if codes.shape[1] != n_words:
            raise ValueError(f"center block {first // CENTER_BLOCK} holds {codes.shape[1] * 64}-bit codes, "
                             f"expected {params['n_bits']}")
        n_clusters += codes.shape[0]
        windows.append(window + 1)
    if meta is not None and meta["n_clusters"] > n_clusters:
        raise ValueError(f"stored state names {meta['n_clusters']} clusters but the centers topic holds {n_clusters}")
    centers = np.concatenate([b[1] for b in blocks]) if blocks else np.zeros((0, n_words), np.uint64)
    created = np.concatenate([b[2] for b in blocks]) if blocks else np.zeros(0)
    sizes, updated = np.zeros(n_clusters, np.int64), created.copy()
    for block in _blocks(0, n_clusters):
        raw = get(stats_key(block))
        if raw is None:
            continue  # clusters founded by a window whose state records never followed: size 0
        value = msgpack.unpackb(raw)
        first, block_sizes = value["first"], _array(value["sizes"], "int64")
        rows = slice(first, min(first + block_sizes.shape[0], n_clusters))
        sizes[rows] = block_sizes[:rows.stop - first]
        updated[rows] = _array(value["updated"], "float64")[:rows.stop - first]
    ids, lengths, pcodes, seen, first_window = [], [], [], [], []
    for chunk in range(meta["n_pending_chunks"] if meta is not None else 0):
        raw = get(pending_key(chunk))
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
    state = {name: (stored if name in FIXED_PARAMS or name == "random_state" else params).get(name, stored.get(name))
             for name in _PARAMS}
    state.update(
        format_version=1,
        n_windows=max(windows),
        centers=centers,
        sizes=sizes,
        created_ts=created,
        updated_ts=updated,
        pending_ids_blob=np.frombuffer(b"".join(ids), dtype=np.uint8).copy(),
        pending_ids_offsets=np.concatenate(([0], np.cumsum(all_lengths))).astype(np.int64),
        pending_codes=np.concatenate(pcodes) if pcodes else np.zeros((0, n_words), np.uint64),
        pending_first_seen=np.concatenate(seen) if seen else np.zeros(0),
        pending_first_window=np.concatenate(first_window) if first_window else np.zeros(0, np.int64),
    )
    return OnlineClusterer.from_state(state), changes
