"""Numba kernels on binary codes: popcount distances, nearest-center scans, majority votes, MIH probes.

Every kernel takes C-contiguous arrays and writes into output arrays that the caller allocates
(scikit-learn's IN/OUT convention). Kernels never draw random numbers and never read module-level
arrays: parallel kernels that read globals are not cached by Numba. The plain Python API lives in
``core.hamming``, ``core.mih`` and ``core.bkmeans``.

Ties between equally distant centers always go to the lowest center index, in every kernel, so
that the brute-force scan and the multi-index search return identical labels.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

#: Larger than any Hamming distance between supported codes (at most 512 bits).
FAR = np.int32(1 << 20)


@intrinsic
def _ctpop64(typingctx, x):
    """LLVM's ctpop: one POPCNT instruction on x86-64 (numba has no builtin popcount)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@njit(inline="always", nogil=True, cache=True)
def popcount64(x):
    return _ctpop64(x)


@njit(inline="always", nogil=True, cache=True)
def row_distance(a, i, b, j):
    """Hamming distance between row ``i`` of ``a`` and row ``j`` of ``b``."""
    d = 0
    for w in range(a.shape[1]):
        d += _ctpop64(a[i, w] ^ b[j, w])
    return d


@njit(parallel=True, nogil=True, cache=True)
def pairwise_distances(a, b, out):
    """OUT ``out[i, j]`` = distance(a[i], b[j])."""
    for i in prange(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = row_distance(a, i, b, j)


@njit(parallel=True, nogil=True, cache=True)
def paired_distances(a, b, out):
    """OUT ``out[i]`` = distance(a[i], b[i])."""
    for i in prange(a.shape[0]):
        out[i] = row_distance(a, i, b, i)


@njit(parallel=True, nogil=True, cache=True)
def labelled_distances(points, centers, labels, out):
    """OUT ``out[i]`` = distance(points[i], centers[labels[i]])."""
    for i in prange(points.shape[0]):
        out[i] = row_distance(points, i, centers, labels[i])


@njit(inline="always", nogil=True, cache=True)
def distances_into(points, i, centers_t, n, buf):
    """OUT ``buf[c]`` = distance(points[i], center c) for the first ``n`` of TRANSPOSED centers
    ``[n_words, k]``.

    Branch-free loops over contiguous words, which LLVM vectorises (AVX2 popcount by nibble
    lookup): about 1.5x the branchy one-center-at-a-time loop.
    """
    word = points[i, 0]
    column = centers_t[0]
    for c in range(n):
        buf[c] = np.int16(_ctpop64(word ^ column[c]))
    for w in range(1, centers_t.shape[0]):
        word = points[i, w]
        column = centers_t[w]
        for c in range(n):
            buf[c] += np.int16(_ctpop64(word ^ column[c]))


@njit(parallel=True, nogil=True, cache=True)
def nearest_scan(points, rows, centers_t, labels, best, second):
    """Exhaustive nearest center for ``points[rows]``, against TRANSPOSED centers ``[n_words, k]``.

    Distances to all k centers go into a buffer (:func:`distances_into`); the min / argmin /
    runner-up passes over the buffer vectorise too.
    OUT ``labels``, ``best`` (indexed by point row) and ``second``: the smallest distance to any
    center other than the winner (a lower bound the caller keeps for the next iteration).
    """
    n_rows = rows.shape[0]
    k = centers_t.shape[1]
    n_chunks = min(n_rows, 64)
    for chunk in prange(n_chunks):
        buf = np.empty(k, dtype=np.int16)
        for r in range(chunk * n_rows // n_chunks, (chunk + 1) * n_rows // n_chunks):
            i = rows[r]
            distances_into(points, i, centers_t, k, buf)
            best_d = np.int16(32767)
            for c in range(k):
                best_d = min(best_d, buf[c])
            best_c = 0
            while buf[best_c] != best_d:
                best_c += 1
            second_d = np.int16(32767)
            for c in range(k):
                second_d = min(second_d, buf[c] if c != best_c else np.int16(32767))
            labels[i] = best_c
            best[i] = best_d
            second[i] = min(np.int32(second_d), FAR)


@njit(parallel=True, nogil=True, cache=True)
def nearest_among(points, rows, subset_t, subset, labels, best, lower):
    """Let ``points[rows]`` move to a center of ``subset`` if it is nearer.

    ``subset_t`` holds the subset's codes TRANSPOSED (``[n_words, len(subset)]``, contiguous), so
    the distances vectorise (:func:`distances_into`); ``subset`` holds their center ids,
    ascending. IN/OUT ``labels``/``best``: the current candidate, replaced when a subset center
    is nearer, or as near with a lower id. IN/OUT ``lower``: a lower bound on the distance to
    every center other than the label; on exit it also covers the subset centers that did not
    win and the old label when the point moved.
    """
    n_rows = rows.shape[0]
    k = subset_t.shape[1]
    n_chunks = min(n_rows, 64)
    for chunk in prange(n_chunks):
        buf = np.empty(k, dtype=np.int16)
        for r in range(chunk * n_rows // n_chunks, (chunk + 1) * n_rows // n_chunks):
            i = rows[r]
            distances_into(points, i, subset_t, k, buf)
            cur_c = labels[i]
            cur_d = best[i]
            low = lower[i]
            for s in range(k):
                c = subset[s]
                if c == cur_c:
                    continue
                d = np.int32(buf[s])
                if d < cur_d or (d == cur_d and c < cur_c):
                    if cur_d < low:
                        low = cur_d
                    cur_d = d
                    cur_c = c
                elif d < low:
                    low = d
            labels[i] = cur_c
            best[i] = cur_d
            lower[i] = low


# ---------------------------------------------------------------------------------------------
# Centers near a candidate center (Elkan's bound). If a point is u away from center a, every center
# c with d(x, c) <= u lies within 2u of a (triangle inequality), and a center farther than R from a
# is more than R - u from the point. So the nearest center of a point with a candidate is found
# among the centers near its candidate, and where codes form clusters those are few.
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, nogil=True, cache=True)
def nearest_near_candidates(
    points, centers, sources, offsets, members, targets_t, targets, max_gather, spare, spare_bits, labels, best,
    lower, left,
):
    """Exact nearest center of points that share a candidate, searched among the candidate's neighbours.

    ``sources[s]`` is a candidate center ``a`` and ``members[offsets[s]:offsets[s + 1]]`` the points
    whose candidate it is: IN ``labels[i] == a``, ``best[i]`` = their exact distance ``u``. The
    targets (``targets_t``: their codes TRANSPOSED, ``targets``: their ids) are the centers that may
    beat ``a``; ``lower[i]`` IN bounds every other center (FAR when the targets are all centers).

    Every target as near to a member as ``a`` lies within ``2u`` of ``a``. One pass over the targets
    per source gathers them nearest first, out to the largest radius ``R`` that holds at most
    ``max_gather`` targets and does not pass twice the largest ``u`` by more than ``spare`` targets. A
    member with ``2u <= R`` scans the gathered targets within ``2u`` and beyond, up to ``spare`` of
    them or ``R``, so that its bound on the others is tight. OUT for those: ``labels``/``best`` =
    the nearest (ties: lowest id), ``lower`` = min(IN, every scanned loser, the candidate if it lost,
    ``r + 1 - u`` for the targets beyond the scanned radius ``r``), ``left`` False. Members with
    ``2u > R`` are untouched, with ``left`` True: search them another way.
    """
    n_sources = sources.shape[0]
    n_targets = targets_t.shape[1]
    n_words = targets_t.shape[0]
    n_bits = 64 * n_words
    n_chunks = min(n_sources, 256)
    for chunk in prange(n_chunks):
        buf = np.empty(n_targets, dtype=np.int16)
        near_ids = np.empty(max_gather, dtype=np.int64)
        near_t = np.empty((n_words, max_gather), dtype=np.uint64)
        histogram = np.empty(n_bits + 2, dtype=np.int64)
        for s in range(chunk * n_sources // n_chunks, (chunk + 1) * n_sources // n_chunks):
            a = sources[s]
            wanted = 0
            for p in range(offsets[s], offsets[s + 1]):
                wanted = max(wanted, 2 * best[members[p]])
            distances_into(centers, a, targets_t, n_targets, buf)
            # Targets beyond ``limit`` are never gathered; skipping them keeps this pass cheap where
            # most targets are far (a rarely taken branch).
            limit = min(n_bits, wanted + spare_bits)
            histogram[: limit + 2] = 0
            for t in range(n_targets):
                d = buf[t]
                if d <= limit and targets[t] != a:
                    histogram[d + 1] += 1
            # histogram[r + 1] becomes the number of targets within r, which is where r + 1 starts.
            radius = -1
            for r in range(limit + 1):
                histogram[r + 1] += histogram[r]
                within = histogram[r + 1]
                if within > max_gather or (r > wanted and within > spare):
                    break
                radius = r
            if radius >= 0:
                for t in range(n_targets):
                    d = buf[t]
                    if d <= radius and targets[t] != a:
                        q = histogram[d]
                        histogram[d] += 1
                        near_ids[q] = targets[t]
                        for w in range(n_words):
                            near_t[w, q] = targets_t[w, t]
                # Now histogram[d] is the number of targets within d, for every d <= radius.
            for p in range(offsets[s], offsets[s + 1]):
                i = members[p]
                u = best[i]
                scanned = min(2 * u, n_bits)  # every target is within n_bits
                if scanned > radius:
                    left[i] = True
                    continue
                left[i] = False
                while scanned < radius and histogram[scanned + 1] <= spare:
                    scanned += 1
                n_near = histogram[scanned]
                distances_into(points, i, near_t, n_near, buf)
                best_d = u
                best_c = a
                second_d = min(lower[i], np.int32(scanned + 1 - u))
                for t in range(n_near):
                    best_d, best_c, second_d = offer_nearest(np.int32(buf[t]), near_ids[t], best_d, best_c, second_d)
                labels[i] = best_c
                best[i] = best_d
                lower[i] = second_d


# ---------------------------------------------------------------------------------------------
# Linked groups (the "linked" Bk-means init): codes that share a bucket of a substring table and
# lie within a radius are linked; groups grow along the links, nearest first, up to a size cap.
# ---------------------------------------------------------------------------------------------


@njit(inline="always", nogil=True, cache=True)
def offer_link(partner, partner_d, x, y, d):
    """Keep ``y`` among the nearest links of ``x`` (a short list sorted by distance, -1 = empty slot)."""
    slots = partner.shape[1]
    if partner[x, slots - 1] >= 0 and d >= partner_d[x, slots - 1]:
        return
    for t in range(slots):
        if partner[x, t] == y:
            return
    t = slots - 1
    while t > 0 and (partner[x, t - 1] < 0 or partner_d[x, t - 1] > d):
        partner[x, t] = partner[x, t - 1]
        partner_d[x, t] = partner_d[x, t - 1]
        t -= 1
    partner[x, t] = y
    partner_d[x, t] = d


@njit(parallel=True, nogil=True, cache=True)
def bucket_links(
    codes, sub_len, table_base, block_start, bucket_offset, block_shift, items, radius, window, key_chunks, partner,
    partner_d,
):
    """The nearest codes within ``radius`` that share a bucket of an MIH table over ``codes`` (the
    tables' arrays as :class:`core.mih.MultiIndexHash` keeps them).

    Each code is compared with the next ``window`` codes of its bucket (every pair in buckets of up
    to ``window + 1``), table after table; a table's buckets are cut into ``key_chunks[j]`` slices
    worked on in parallel (a code sits in one bucket per table, so no two threads touch its list).
    IN/OUT ``partner[i]`` / ``partner_d[i]``: the nearest codes found for ``i`` so far and their
    distances, ascending (-1: no code). Keeping a few links per code, not every one, bounds the
    memory where clusters are large.
    """
    n = codes.shape[0]
    for j in range(sub_len.shape[0]):
        base = table_base[j]
        first = j * n
        n_keys = np.int64(1) << sub_len[j]
        n_chunks = key_chunks[j]
        for chunk in prange(n_chunks):
            for key in range(chunk * n_keys // n_chunks, (chunk + 1) * n_keys // n_chunks):
                start = bucket_start(block_start, bucket_offset, block_shift, base + key)
                stop = bucket_start(block_start, bucket_offset, block_shift, base + key + 1)
                for p in range(start, stop):
                    x = items[first + p]
                    for q in range(p + 1, min(stop, p + 1 + window)):
                        y = items[first + q]
                        d = row_distance(codes, x, codes, y)
                        if d <= radius:
                            offer_link(partner, partner_d, x, y, d)
                            offer_link(partner, partner_d, y, x, d)


@njit(parallel=True, nogil=True, cache=True)
def permute_bits(codes, source_bit, out):
    """OUT ``out[i]``: code ``i`` with bit ``j`` taken from bit ``source_bit[j]`` (bits numbered as
    ``core.codes.unpack_bits`` does: most significant first). Distances are the same as between
    the original codes; only which bits share a substring changes."""
    for i in prange(codes.shape[0]):
        for w in range(out.shape[1]):
            word = np.uint64(0)
            for b in range(64):
                src = source_bit[w * 64 + b]
                bit = (codes[i, src >> 6] >> np.uint64(63 - (src & 63))) & np.uint64(1)
                word |= bit << np.uint64(63 - b)
            out[i, w] = word


@njit(inline="always", nogil=True, cache=True)
def find_root(parent, i):
    """Root of ``i``'s group, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(nogil=True, cache=True)
def capped_groups(a, b, order, cap, parent, size):
    """Union-find over the links ``(a[e], b[e])`` taken in ``order`` (nearest first), joining two
    groups only while the joined group stays within ``cap`` codes. OUT ``parent[i]``: the root of
    code ``i``'s group, ``size[root]``: the group's size."""
    for i in range(parent.shape[0]):
        parent[i] = i
        size[i] = 1
    for e in order:
        ra = find_root(parent, a[e])
        rb = find_root(parent, b[e])
        if ra == rb or size[ra] + size[rb] > cap:
            continue
        if size[ra] < size[rb] or (size[ra] == size[rb] and rb < ra):
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
    for i in range(parent.shape[0]):
        parent[i] = find_root(parent, i)


@njit(parallel=True, nogil=True, cache=True)
def lower_min_distance(points, centers, c, dist):
    """IN/OUT ``dist[i]`` = min(dist[i], distance(points[i], centers[c])) (k-means++ seeding)."""
    for i in prange(points.shape[0]):
        d = row_distance(points, i, centers, c)
        if d < dist[i]:
            dist[i] = d


@njit(parallel=True, nogil=True, cache=True)
def seeding_potentials(points, dist, trials, potentials):
    """OUT ``potentials[t]`` = sum over i of min(dist[i], distance(points[i], points[trials[t]]))^2.

    The k-means++ potential after adding each candidate, without materialising its distances;
    integer sums, so the result does not depend on how the threads split the work.
    """
    for t in range(trials.shape[0]):
        c = trials[t]
        total = 0
        for i in prange(points.shape[0]):
            d = row_distance(points, i, points, c)
            if dist[i] < d:
                d = dist[i]
            total += np.int64(d) * np.int64(d)
        potentials[t] = total


@njit(nogil=True, cache=True)
def members_by_label(labels, n_clusters, offsets, order):
    """Counting sort of point indices by label: OUT CSR ``offsets[k+1]`` and ``order[N]``."""
    offsets[:] = 0
    for i in range(labels.shape[0]):
        offsets[labels[i] + 1] += 1
    for c in range(n_clusters):
        offsets[c + 1] += offsets[c]
    fill = offsets[:-1].copy()
    for i in range(labels.shape[0]):
        c = labels[i]
        order[fill[c]] = i
        fill[c] += 1


@njit(parallel=True, nogil=True, cache=True)
def majority_centers(points, offsets, order, old_centers, new_centers, sizes):
    """Majority vote per bit over each cluster's members (the Bk-means center update).

    A bit whose vote is tied keeps the value it had in the old center: any tie choice minimises the
    summed distance equally, and keeping the old bit is deterministic and keeps centers from moving
    for nothing, which keeps the drift bounds of the next assignment tight. An empty cluster keeps
    its old center (the caller re-seeds it). OUT ``new_centers``, ``sizes``.
    """
    n_words = points.shape[1]
    n_clusters = offsets.shape[0] - 1
    for c in prange(n_clusters):
        start = offsets[c]
        stop = offsets[c + 1]
        size = stop - start
        sizes[c] = size
        if size == 0:
            for w in range(n_words):
                new_centers[c, w] = old_centers[c, w]
            continue
        counts = np.zeros(64, dtype=np.int32)
        for w in range(n_words):
            counts[:] = 0
            for p in range(start, stop):
                word = points[order[p], w]
                while word:
                    # Walk only the set bits: codes are about half ones, so this halves the work.
                    low = word & (~word + np.uint64(1))
                    counts[_ctpop64(low - np.uint64(1))] += 1
                    word ^= low
            old = old_centers[c, w]
            out = np.uint64(0)
            for t in range(64):
                twice = 2 * counts[t]
                bit = np.uint64(1) << np.uint64(t)
                if twice > size or (twice == size and (old & bit)):
                    out |= bit
            new_centers[c, w] = out


# ---------------------------------------------------------------------------------------------
# Multi-index hashing (Norouzi, Punjani & Fleet). The code is cut into m disjoint substrings; table j
# is a CSR bucket array keyed by substring j. Pigeonhole: an item that differs from the query in at
# most s bits in none of the substrings is at distance >= m * (s + 1), so searching every substring
# out to radius s settles every item nearer than that.
#
# The tables are compact: table j's bucket b holds the ids of the tabled items whose substring j is
# b, ascending, at ``items[j * n + start(b) : j * n + start(b + 1)]``. The bucket starts are stored in
# two parts: ``block_start`` (int32, one per block of ``2**block_shift`` buckets) and
# ``bucket_offset`` (uint8 or uint16, one per bucket: its start minus its block's start). Tables sit
# at ``table_base[j]`` in the flat arrays, ``2**len_j + 1`` entries (the last one ends the table),
# padded to whole blocks. At about one item per bucket (what the automatic number of substrings
# aims for) uint8 offsets in blocks of 64 take ~1.1 bytes per bucket instead of 8 for int64 starts,
# which were the bulk of an index's memory (a 20-bit substring has 2**20 buckets). Where a bucket
# is crowded (many equal substrings) the blocks shrink or the offsets widen to uint16 (see
# ``core.mih``); the kernels are the same for both widths.
# ---------------------------------------------------------------------------------------------


@njit(inline="always", nogil=True, cache=True)
def substring_key(codes, i, word, shift, length):
    """Bits [shift, shift + length) of word ``word`` of row ``i`` (continuing into the next word)."""
    mask = (np.uint64(1) << np.uint64(length)) - np.uint64(1)
    key = codes[i, word] >> np.uint64(shift)
    if shift + length > 64:
        key |= codes[i, word + 1] << np.uint64(64 - shift)
    return np.int64(key & mask)


@njit(inline="always", nogil=True, cache=True)
def bucket_start(block_start, bucket_offset, block_shift, pos):
    """Where the bucket at flat position ``pos`` starts in its table's items."""
    return np.int64(block_start[pos >> block_shift]) + np.int64(bucket_offset[pos])


@njit(nogil=True, cache=True)
def table_starts(codes, word, shift, length, starts):
    """OUT ``starts[b]``: the number of codes whose substring (word, shift, length) is below b, for
    b in 0 .. 2**length (a counting sort's bucket starts)."""
    starts[:] = 0
    for i in range(codes.shape[0]):
        starts[substring_key(codes, i, word, shift, length) + 1] += 1
    for b in range(starts.shape[0] - 1):
        starts[b + 1] += starts[b]


@njit(parallel=True, nogil=True, cache=True)
def table_block_shifts(codes, sub_word, sub_shift, sub_len, max_span, max_shift, out):
    """OUT ``out[j, t]``: the largest block shift (at most ``max_shift[t]``) for which every bucket
    of table j starts at most ``max_span[t]`` items after its block of ``2**shift`` buckets (0
    always fits: every bucket its own block)."""
    for j in prange(sub_word.shape[0]):
        n_entries = (1 << sub_len[j]) + 1
        starts = np.empty(n_entries, dtype=np.int64)
        table_starts(codes, sub_word[j], sub_shift[j], sub_len[j], starts)
        for t in range(max_span.shape[0]):
            out[j, t] = 0
            for block_shift in range(max_shift[t], 0, -1):
                fits = True
                for first in range(0, n_entries, 1 << block_shift):
                    last = min(first + (1 << block_shift), n_entries) - 1
                    if starts[last] - starts[first] > max_span[t]:
                        fits = False
                        break
                if fits:
                    out[j, t] = block_shift
                    break


@njit(parallel=True, nogil=True, cache=True)
def build_tables(codes, sub_word, sub_shift, sub_len, table_base, block_shift, block_start, bucket_offset, items):
    """The compact CSR tables over ``codes`` (see above), one table per thread: OUT ``block_start``,
    ``bucket_offset`` and ``items[j * n + p]`` (item ids ascending within each bucket).
    ``table_base`` must leave each table whole blocks of ``2**block_shift`` entries, and
    ``block_shift`` must fit every table (:func:`table_block_shifts`)."""
    n = codes.shape[0]
    low = (np.int64(1) << block_shift) - 1
    for j in prange(sub_word.shape[0]):
        n_entries = (1 << sub_len[j]) + 1
        base = table_base[j]
        starts = np.empty(n_entries, dtype=np.int64)
        table_starts(codes, sub_word[j], sub_shift[j], sub_len[j], starts)
        for b in range(n_entries):
            first = b & ~low
            if b == first:
                block_start[(base + b) >> block_shift] = starts[b]
            bucket_offset[base + b] = starts[b] - starts[first]
        for pos in range(base + n_entries, table_base[j + 1]):  # padding to a whole block
            bucket_offset[pos] = 0
        for i in range(n):  # starts[b] becomes the next free slot of bucket b
            b = substring_key(codes, i, sub_word[j], sub_shift[j], sub_len[j])
            items[j * n + starts[b]] = i
            starts[b] += 1


@njit(inline="always", nogil=True, cache=True)
def next_combination(v):
    """Gosper's hack: the next larger integer with the same number of set bits."""
    c = v & -v
    r = v + c
    return (((r ^ v) >> 2) // c) | r


@njit(inline="always", nogil=True, cache=True)
def probe_start(queries, q, j, s, sub_word, sub_shift, sub_len, table_base, n_tabled):
    """Start a probe of table ``j`` at radius ``s``: the buckets whose keys differ from substring
    ``j`` of ``queries[q]`` in exactly ``s`` bits, in Gosper order. Walk it with ``probe_next``.

    The state is (query key, table start in the bucket arrays, table start in ``items``, key bits,
    s, current mask or -1 before the first, current bucket ``p:stop`` in ``items``).
    """
    length = sub_len[j]
    qkey = substring_key(queries, q, sub_word[j], sub_shift[j], length)
    return (
        qkey, table_base[j], j * n_tabled, length, np.int64(s), np.int64(-1), np.int64(0), np.int64(0)
    )


@njit(inline="always", nogil=True, cache=True)
def probe_next(probe, block_start, bucket_offset, block_shift, items, stamp, stamp_value, skip):
    """Next item of the probe neither stamped with ``stamp_value`` nor ``skip``; stamps it.

    Returns ``(item, probe)``; item is -1 once the probe is exhausted. ``skip`` is read afresh on
    every call, so a caller passes its current candidate (which stays unstamped, as it is skipped).
    """
    qkey, base, first, length, s, mask, p, stop = probe
    while True:
        while p < stop:
            c = items[first + p]
            p += 1
            if stamp[c] != stamp_value and c != skip:
                stamp[c] = stamp_value
                return c, (qkey, base, first, length, s, mask, p, stop)
        # This bucket is done: on to the next mask of s bits (the first one if not started).
        if mask < 0:
            mask = (np.int64(1) << s) - 1
        elif s == 0:
            return -1, (qkey, base, first, length, s, mask, p, stop)
        else:
            mask = next_combination(mask)
        if mask >= np.int64(1) << length:
            return -1, (qkey, base, first, length, s, mask, p, stop)
        key = qkey ^ mask
        p = bucket_start(block_start, bucket_offset, block_shift, base + key)
        stop = bucket_start(block_start, bucket_offset, block_shift, base + key + 1)


@njit(inline="always", nogil=True, cache=True)
def offer_nearest(d, c, best_d, best_c, second_d):
    """Item ``c`` at distance ``d`` against the candidate (ties: lowest index) and the runner-up
    distance ``second_d``; returns the new (best_d, best_c, second_d)."""
    if d < best_d or (d == best_d and c < best_c):
        if best_c >= 0 and best_d < second_d:
            second_d = best_d
        return d, c, second_d
    if d < second_d:
        second_d = d
    return best_d, best_c, second_d


@njit(nogil=True, cache=True)
def mih_search_one(
    queries, q, items_codes, sub_word, sub_shift, sub_len, table_base, block_start, bucket_offset, block_shift,
    items, n_tabled, stamp, stamp_value, max_distance, probe_budget, best_d, best_c,
):
    """Exact nearest item to ``queries[q]`` starting from the candidate (best_d, best_c).

    Items ``n_tabled ..`` are not in the tables yet and are scanned directly. The search stops as
    soon as the pigeonhole bound proves no unseen item can beat the candidate, or when every item
    within ``max_distance`` has been seen (then a farther candidate may be returned), or when
    it would exceed ``probe_budget`` bucket probes (then ``resolved`` is False).

    Returns (best_d, best_c, second_d, lower, resolved): ``second_d`` is the smallest distance seen
    to an item other than the winner and ``lower`` a bound on every unseen item.
    """
    m = sub_word.shape[0]
    second_d = FAR
    for c in range(n_tabled, items_codes.shape[0]):
        if c == best_c:
            continue
        d = row_distance(queries, q, items_codes, c)
        best_d, best_c, second_d = offer_nearest(d, c, best_d, best_c, second_d)
    if n_tabled == 0:
        return best_d, best_c, second_d, FAR, True
    min_len = 64
    for j in range(m):
        if sub_len[j] < min_len:
            min_len = sub_len[j]
    probes = 0
    s = 0
    while True:
        # Settled: no unseen item can be nearer than m * s (all substrings searched to s - 1).
        if best_d < m * s or m * s > max_distance:
            return best_d, best_c, second_d, m * s, True
        for j in range(m):
            length = sub_len[j]
            if s > length:
                continue
            n_masks = 1
            for t in range(s):
                n_masks = n_masks * (length - t) // (t + 1)
            probes += n_masks
            if probes > probe_budget:
                return best_d, best_c, second_d, m * s, False
            probe = probe_start(queries, q, j, s, sub_word, sub_shift, sub_len, table_base, n_tabled)
            while True:
                c, probe = probe_next(probe, block_start, bucket_offset, block_shift, items, stamp, stamp_value,
                                      best_c)
                if c < 0:
                    break
                d = row_distance(queries, q, items_codes, c)
                best_d, best_c, second_d = offer_nearest(d, c, best_d, best_c, second_d)
            if s == length:
                # Every key of this substring was probed: every item has been seen.
                return best_d, best_c, second_d, FAR, True
            # Substrings 0..j searched to s, the rest to s - 1: every unseen item is at least
            # ``bound`` away, so stop once that settles the candidate or passes max_distance.
            bound = (j + 1) * (s + 1) + (m - j - 1) * s
            if best_d < bound or bound > max_distance:
                return best_d, best_c, second_d, bound, True
        s += 1
        if s > min_len:
            return best_d, best_c, second_d, FAR, True


@njit(parallel=True, nogil=True, cache=True)
def mih_nearest(
    queries, rows, items_codes, sub_word, sub_shift, sub_len, table_base, block_start, bucket_offset, block_shift,
    items, n_tabled, max_distance, probe_budget, labels, best, lower, resolved,
):
    """MIH nearest for ``queries[rows]``; IN/OUT ``labels``/``best`` (candidate in, nearest out),
    OUT ``lower`` (bound on every other item) and ``resolved`` (False: over budget, scan instead)."""
    n_rows = rows.shape[0]
    n_chunks = min(n_rows, 64)
    for chunk in prange(n_chunks):
        stamp = np.zeros(items_codes.shape[0], dtype=np.int32)
        stamp_value = 0
        for r in range(chunk * n_rows // n_chunks, (chunk + 1) * n_rows // n_chunks):
            i = rows[r]
            stamp_value += 1
            d, c, second_d, unseen, ok = mih_search_one(
                queries, i, items_codes, sub_word, sub_shift, sub_len, table_base, block_start, bucket_offset,
                block_shift, items, n_tabled, stamp, stamp_value, max_distance, probe_budget, best[i], labels[i],
            )
            labels[i] = c
            best[i] = d
            lower[i] = min(second_d, unseen)
            resolved[i] = ok


@njit(nogil=True, cache=True)
def mih_range_one(
    queries, q, items_codes, sub_word, sub_shift, sub_len, table_base, block_start, bucket_offset, block_shift,
    items, n_tabled, stamp, stamp_value, radius, out_idx, out_dist, emit,
):
    """Every item within ``radius`` of ``queries[q]``; writes them if ``emit``; returns the count."""
    m = sub_word.shape[0]
    count = 0
    for c in range(n_tabled, items_codes.shape[0]):
        d = row_distance(queries, q, items_codes, c)
        if d <= radius:
            if emit:
                out_idx[count] = c
                out_dist[count] = d
            count += 1
    if n_tabled == 0:
        return count
    s_max = radius // m
    for s in range(s_max + 1):
        for j in range(m):
            length = sub_len[j]
            if s > length:
                continue
            probe = probe_start(queries, q, j, s, sub_word, sub_shift, sub_len, table_base, n_tabled)
            while True:
                c, probe = probe_next(probe, block_start, bucket_offset, block_shift, items, stamp, stamp_value, -1)
                if c < 0:
                    break
                d = row_distance(queries, q, items_codes, c)
                if d <= radius:
                    if emit:
                        out_idx[count] = c
                        out_dist[count] = d
                    count += 1
            if s == length:
                return count
    return count


@njit(parallel=True, nogil=True, cache=True)
def mih_range(
    queries, items_codes, sub_word, sub_shift, sub_len, table_base, block_start, bucket_offset, block_shift, items,
    n_tabled, radius, out_offsets, out_idx, out_dist, emit,
):
    """Range search for all queries. With ``emit`` False, OUT ``out_offsets[q + 1]`` = count;
    with ``emit`` True, fills ``out_idx``/``out_dist`` at the given CSR offsets."""
    n_q = queries.shape[0]
    n_chunks = min(n_q, 64)
    for chunk in prange(n_chunks):
        stamp = np.zeros(items_codes.shape[0], dtype=np.int32)
        stamp_value = 0
        for q in range(chunk * n_q // n_chunks, (chunk + 1) * n_q // n_chunks):
            stamp_value += 1
            if emit:
                start = out_offsets[q]
                count = mih_range_one(
                    queries, q, items_codes, sub_word, sub_shift, sub_len, table_base, block_start, bucket_offset,
                    block_shift, items, n_tabled, stamp, stamp_value, radius, out_idx[start:], out_dist[start:], True,
                )
            else:
                out_offsets[q + 1] = mih_range_one(
                    queries, q, items_codes, sub_word, sub_shift, sub_len, table_base, block_start, bucket_offset,
                    block_shift, items, n_tabled, stamp, stamp_value, radius, out_idx, out_dist, False,
                )
