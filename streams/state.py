"""Wire formats of the found stage's two compacted topics, and the rebuild of its clusterer from them.

``photoclust-centers`` is public: downstream consumers may read it (README, "The centers topic").
Millions of centers cannot be one Kafka message and must not be one message each, so a record holds
a block of ``CENTER_BLOCK`` consecutive cluster ids:

* key ``b"centers/<block>"`` (ASCII), block b holding cluster ids ``b * 1024 .. b * 1024 + 1023``;
* value, a msgpack map: ``{"format": 2, "n_bits": int, "first": int, "count": int, "rows": bin,
  "codes": bin, "created": bin, "window": int}``: ``count`` the ids of the block handed out so far
  (``first .. first + count - 1``); ``rows`` the held centers as little-endian uint16 offsets from
  ``first``, ascending (a retired center's row is left out); ``codes`` their centers as
  little-endian uint64, ``n_bits / 64`` words each; ``created`` their founding times (little-endian
  float64, epoch seconds); ``window`` the found-stage window that last wrote the block.
  Format 1 (before retirement) had no ``count`` and ``rows``: every row ``0 .. len - 1`` held.

A block is rewritten while it fills up, and when one of its centers is retired; a center never
changes once founded, so the newest record of a block (all that compaction keeps) holds every center
of it that is still held. A full block whose centers are all retired gets a tombstone (the newest
block never does: its ``count`` tells the next cluster id).

``photoclust-state`` is the found stage's own: ``stats/<block>`` (size and last-joined time of each
held cluster of a block, ``rows`` as in the centers topic), ``pending/<chunk>`` (the pending pool, rewritten whole every window) and
``meta`` (parameters, window count, the offsets the state reflects), written last. Values are msgpack
maps holding little-endian numpy buffers; a value of ``None`` (a tombstone) deletes a key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from core.centers import rows_of
from core.online import OnlineClusterer

CENTER_BLOCK = 1024
PENDING_CHUNK = 4096
CENTERS_FORMAT = 2
READABLE_CENTERS_FORMATS = (1, 2)
STATE_FORMAT = 2
META_KEY = b"meta"
CENTERS_PREFIX = b"centers/"
STATS_PREFIX = b"stats/"
PENDING_PREFIX = b"pending/"
_PARAMS = ("n_bits", "window_size", "new_centers_ratio", "radius", "min_cluster_size", "pending_capacity",
           "pending_max_windows", "max_iter", "max_centers", "max_idle", "random_state")
# Settings a restart may change: a restored clusterer takes the new value. ``n_bits`` cannot
# change (the stored centers have the old width); the seed stays the stored one, so that window
# w's Bk-means start does not depend on restarts.
CHANGEABLE_PARAMS = ("window_size", "new_centers_ratio", "radius", "min_cluster_size", "pending_capacity",
                     "max_iter", "max_centers", "max_idle")
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


def blocks_of(cluster_ids: np.ndarray) -> list[int]:
    """The blocks that hold ``cluster_ids``, ascending."""
    return np.unique(np.asarray(cluster_ids, dtype=np.int64) // CENTER_BLOCK).tolist()


def _held_blocks(clusterer: OnlineClusterer, cluster_ids: np.ndarray) -> Iterator[tuple[int, slice | None, np.ndarray]]:
    """For each block holding ``cluster_ids``: ``(block, rows, offsets)``, ``rows`` the clusterer's
    rows of the block's held centers (ids ascend with the rows) and ``offsets`` their ids less the
    block's first id, as the records store them; ``rows`` is None for a block to delete from both
    topics: a full block with no held center, below the newest block (whose ``count`` tells the
    next id, so it is never deleted)."""
    held_ids = clusterer.cluster_ids_
    for block in blocks_of(cluster_ids):
        first = block * CENTER_BLOCK
        lo, hi = (int(bound) for bound in np.searchsorted(held_ids, [first, first + CENTER_BLOCK]))
        deleted = lo == hi and first + CENTER_BLOCK <= clusterer.next_cluster_id_ - 1
        yield block, None if deleted else slice(lo, hi), (held_ids[lo:hi] - first).astype("<u2")


# -- the centers topic ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CenterBlock:
    """One decoded centers-topic record."""

    first: int  # cluster id of the block's first row: block * CENTER_BLOCK
    count: int  # ids of the block handed out so far
    cluster_ids: np.ndarray  # int64, the held centers' ids, ascending
    codes: np.ndarray  # uint64[len(cluster_ids), n_bits/64]
    created: np.ndarray  # float64, their founding times
    window: int  # the found-stage window that last wrote the block

    @property
    def block(self) -> int:
        return self.first // CENTER_BLOCK


def center_records(clusterer: OnlineClusterer, cluster_ids: np.ndarray, window: int) -> list[Record]:
    """Records of the center blocks that hold ``cluster_ids`` (new or retired centers), each block
    whole: its held centers, or a tombstone once it is full and all of it retired."""
    centers, created = clusterer.centers_, clusterer.created_ts_
    records: list[Record] = []
    for block, rows, offsets in _held_blocks(clusterer, cluster_ids):
        first = block * CENTER_BLOCK
        records.append((center_key(block), None if rows is None else _pack(
            format=CENTERS_FORMAT, n_bits=clusterer.n_bits_, first=first, window=int(window),
            count=min(clusterer.next_cluster_id_ - first, CENTER_BLOCK), rows=offsets,
            codes=centers[rows].astype("<u8"), created=created[rows].astype("<f8"))))
    return records


def decode_center_block(value: bytes) -> CenterBlock:
    """A centers-topic value (format 1 or 2); ValueError if it is not one."""
    try:
        block = msgpack.unpackb(value)
        if block.get("format") not in READABLE_CENTERS_FORMATS:
            raise ValueError(f"format {block.get('format')!r}, expected one of {READABLE_CENTERS_FORMATS}")
        n_words = int(block["n_bits"]) // 64
        codes = _array(block["codes"], "uint64", n_words)
        created = _array(block["created"], "float64")
        first, window = int(block["first"]), int(block["window"])
        if block["format"] == 1:
            rows, count = np.arange(codes.shape[0], dtype=np.int64), codes.shape[0]
        else:
            rows, count = _array(block["rows"], "uint16").astype(np.int64), int(block["count"])
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as e:
        raise ValueError(f"not a center block: {e}") from None
    if (codes.shape[0] != created.shape[0] or codes.shape[0] != rows.shape[0] or first % CENTER_BLOCK
            or not 0 < count <= CENTER_BLOCK or np.any(np.diff(rows) <= 0) or (rows.size and rows[-1] >= count)):
        raise ValueError(f"not a center block: {codes.shape[0]} codes, {created.shape[0]} times, "
                         f"{rows.shape[0]} rows, first={first}, count={count}")
    return CenterBlock(first, count, first + rows, codes, created, window)


def center_update(key: bytes, value: bytes | None, n_bits: int) -> tuple[tuple[int, int, np.ndarray, np.ndarray], CenterBlock | None]:
    """A centers-topic record as a :meth:`core.centers.CenterIndex.update` block, and the decoded
    block (None for a tombstone: every center of the block retired)."""
    try:
        first = int(key[len(CENTERS_PREFIX):]) * CENTER_BLOCK
    except ValueError:
        raise ValueError(f"not a center block key: {key!r}") from None
    if value is None:
        return (first, first + CENTER_BLOCK, np.zeros(0, np.int64), np.zeros((0, n_bits // 64), np.uint64)), None
    block = decode_center_block(value)
    if block.first != first:
        raise ValueError(f"center block {key!r} holds first={block.first}")
    return (first, first + CENTER_BLOCK, block.cluster_ids, block.codes), block


# -- the state topic --------------------------------------------------------------------------------


def state_records(clusterer: OnlineClusterer, touched: np.ndarray | None = None,
                  input_positions: InputPositions | None = None, previous_chunks: int = 0,
                  carry: int = 0) -> list[Record]:
    """Records that bring the stored state up to date: the stats blocks of the ``touched`` cluster
    ids (``None``: all), the pending pool (with tombstones for chunks it no longer uses, of the
    ``previous_chunks`` stored), and ``meta`` last.

    Retired clusters count as touched: their rows leave the stats blocks.
    ``input_positions`` maps (topic, partition) to the next (offset, row) the state does not reflect;
    a restarted found stage skips what comes before instead of clustering it twice. ``carry``: the
    photos the join stage joined that count for the next window (its end stays where it was).
    """
    sizes, updated = clusterer.sizes_, clusterer.updated_ts_
    state = clusterer.export_state(include_centers=False)
    n_clusters = sizes.shape[0]
    records: list[Record] = []
    for block, rows, offsets in _held_blocks(clusterer, clusterer.cluster_ids_ if touched is None else touched):
        records.append((stats_key(block), None if rows is None else _pack(
            first=block * CENTER_BLOCK, rows=offsets, sizes=sizes[rows].astype("<i8"),
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
                next_cluster_id=state["next_cluster_id"],
                n_pending=n_pending, n_pending_chunks=n_chunks, carry=int(carry),
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
    return [(name, stored.get(name), wanted.get(name)) for name in names if stored.get(name) != wanted.get(name)]


def stored_input_positions(raw_meta: bytes | None) -> dict[tuple[str, int], tuple[int, int]]:
    """The input positions a stored ``meta`` record reflects (empty without state)."""
    if raw_meta is None:
        return {}
    return {(topic, partition): (offset, row)
            for topic, partition, offset, row in msgpack.unpackb(raw_meta).get("input_positions", [])}


def stored_carry(raw_meta: bytes | None) -> int:
    """The joined photos a stored ``meta`` record carries into the next window (0 without state)."""
    return 0 if raw_meta is None else int(msgpack.unpackb(raw_meta).get("carry", 0))


# -- rebuilding the found stage's clusterer ---------------------------------------------------------


def _decode_stats(raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cluster_ids, sizes, updated)`` of a ``stats/<block>`` value (without ``rows``: every row
    from ``first`` on, as written before retirement)."""
    value = msgpack.unpackb(raw)
    sizes = _array(value["sizes"], "int64")
    rows = _array(value["rows"], "uint16").astype(np.int64) if "rows" in value else np.arange(sizes.shape[0])
    return value["first"] + rows, sizes, _array(value["updated"], "float64")


def stored_cluster(cluster_id: int, get_center_block: Callable[[bytes], bytes | None],
                   get_state: Callable[[bytes], bytes | None]) -> dict[str, Any] | None:
    """One cluster's figures as the two topics hold them (what a worker that does not found
    answers): its center and founding time from the centers topic, its size and last join from
    the state topic. None if the centers topic holds no such cluster (never founded, or retired)."""
    block = cluster_id // CENTER_BLOCK
    raw_center = get_center_block(center_key(block))
    if raw_center is None:
        return None
    centers = decode_center_block(raw_center)
    row = int(rows_of(centers.cluster_ids, [cluster_id])[0])
    if row < 0:
        return None
    created = float(centers.created[row])
    size, updated = 0, created  # founded by a window whose state records never followed
    raw_stats = get_state(stats_key(block))
    if raw_stats is not None:
        ids, sizes, updated_ts = _decode_stats(raw_stats)
        at = int(rows_of(ids, [cluster_id])[0])
        if at >= 0:
            size, updated = int(sizes[at]), float(updated_ts[at])
    return {"cluster": cluster_id, "center": centers.codes[row].astype(">u8").tobytes().hex(), "size": size,
            "created_ts": created, "updated_ts": updated}


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
    # A parameter the stored state predates (max_centers, max_idle) had its default then: None.
    stored = {name: meta.get(name) for name in _PARAMS} if meta is not None else dict(params)
    refused = param_changes(stored, params, FIXED_PARAMS)
    if refused:
        raise ValueError("; ".join(f"{name}={new} differs from the stored state's {name}={old}"
                                   for name, old, new in refused))
    changes = param_changes(stored, params, CHANGEABLE_PARAMS)
    n_words = int(params["n_bits"]) // 64
    blocks = sorted((decode_center_block(value) for value in center_values), key=lambda block: block.first)
    next_id, windows = 0, [meta["n_windows"] if meta is not None else 0]
    for block in blocks:
        if block.codes.shape[1] != n_words:
            raise ValueError(f"center block {block.block} holds {block.codes.shape[1] * 64}-bit codes, "
                             f"expected {params['n_bits']}")
        next_id = block.first + block.count
        windows.append(block.window + 1)
    # Ids the state handed out: a lost center block would otherwise let them be handed out again.
    stored_next = (meta.get("next_cluster_id", meta["n_clusters"]) if meta is not None else 0)
    if stored_next > next_id:
        raise ValueError(f"stored state handed out cluster ids up to {stored_next - 1} but the centers topic "
                         f"holds ids only below {next_id}")
    cluster_ids = (np.concatenate([b.cluster_ids for b in blocks]) if blocks else np.zeros(0, np.int64))
    centers = np.concatenate([b.codes for b in blocks]) if blocks else np.zeros((0, n_words), np.uint64)
    created = np.concatenate([b.created for b in blocks]) if blocks else np.zeros(0)
    n_clusters = cluster_ids.shape[0]
    sizes, updated = np.zeros(n_clusters, np.int64), created.copy()
    for block in blocks_of(cluster_ids):
        raw = get(stats_key(block))
        if raw is None:
            continue  # clusters founded by a window whose state records never followed: size 0
        ids, block_sizes, block_updated = _decode_stats(raw)
        rows = rows_of(cluster_ids, ids)
        held = rows >= 0  # stats of a center retired since: dropped
        sizes[rows[held]] = block_sizes[held]
        updated[rows[held]] = block_updated[held]
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
        format_version=2,
        n_windows=max(windows),
        next_cluster_id=next_id,
        cluster_ids=cluster_ids,
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
