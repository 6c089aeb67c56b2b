#!/usr/bin/env python
"""Memory per center (issue #14, part 2): RSS per million centers, and join / Bk-means times.

Not a pytest test: a script that prints a table and saves ``results/memory_<UTC timestamp>.json``.

Every measurement runs in a fresh subprocess (``--worker``) that first warms up the Numba kernels
(``core.warmup.warm_up`` plus the job itself on tiny data), so imports, compilation and the
allocator's history of other jobs do not mix into the numbers:

* online   RSS growth (``/proc/self/statm``) of an ``OnlineClusterer`` restored with
           ``OnlineClusterer.from_state`` holding N random centers (what ``streams.state.
           restore_clusterer`` hands it), after one window has been processed: a join against all N
           centers (90 % of the window lies near a center, 10 % is random and is scanned) and a small
           Bk-means run on what joined nothing. The inputs (centers, bookkeeping arrays, the window)
           are made before the first reading and kept alive, so only what the clusterer holds counts.
* grown    the same for an ``OnlineClusterer`` grown to N centers by ``add_centers`` in blocks of
           ``GROW_BLOCK`` (about what one window of 100k photos founds), as a long-running found
           stage grows: capacity kept for growth and the allocator's leftovers of the regrown arrays
           count too.
* centers  RSS growth of a ``core.centers.CenterIndex`` grown to N centers one block of
           ``CENTER_BLOCK`` at a time (as a worker's copy of the centers is), after a join.
* join     wall time of ``MultiIndexHash().fit`` on N random centers, of ``join_within`` (what
           ``OnlineClusterer`` and ``CenterIndex`` join with) for Q codes near a center (flip
           probability 0.1, so MIH resolves them) and for Qf random codes (MIH gives up, they are
           scanned), and of ``MultiIndexHash.nearest`` for the Q near codes (no budget, pure MIH).
* bkmeans  wall time of ``BKMeans(k, max_iter, tol=0, init="linked", random_state=1).fit`` on
           ``planted_codes(n, k, flip_prob=0.1, random_state=0)``.

Before / after: ``--baseline REV`` extracts ``core/`` of a git revision (e.g. ``main``) into a temp
directory and runs every job for it too; the versions alternate (old, new, new, old, ...) and timings
are medians over ``--repeats``, so both meet the same (noisy, shared) machine. Each job also returns
a digest of its labels and distances: equal digests across versions mean identical results.

Usage:
    python tests/benchmarks/bench_memory.py                    # this checkout only
    python tests/benchmarks/bench_memory.py --baseline main    # main's core/ against this checkout
    python tests/benchmarks/bench_memory.py --quick --baseline main   # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
RESULT_TAG = "@@MEMORY_BENCH_RESULT "
TARGET_MB_PER_MILLION = 150.0  # the target for an OnlineClusterer holding 1M centers
TARGET_CENTERS = 1_000_000
CENTER_BLOCK = 1024  # streams.state.CENTER_BLOCK: centers travel (and a CenterIndex grows) in these blocks
GROW_BLOCK = 10_000  # centers added per step in the "grown" job
RADIUS = 64  # the default join radius at 256 bits (n_bits // 4)
NEAR_FLIP = 0.1  # near codes: a center with each bit flipped with this probability
MB = 2**20

FULL = dict(centers=1_000_000, queries=100_000, far_queries=1_000, window=10_000, bk_n=500_000, bk_k=50_000)
QUICK = dict(centers=100_000, queries=10_000, far_queries=200, window=2_000, bk_n=20_000, bk_k=2_000)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# =============================================================================================
# Worker side: one measurement per process, with the code under test first on sys.path.
# =============================================================================================


def rss_bytes() -> int:
    """Current resident set size (/proc/self/statm: resident pages), not the peak."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def malloc_trim() -> bool:
    """Hand glibc's free heap memory back to the kernel (to tell allocator slack from live data)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def n_compiled() -> int:
    """Compiled (or cache-loaded) specialisations over all photoclust Numba kernels."""
    from numba.core.registry import CPUDispatcher

    from core import _kernels

    return sum(len(obj.signatures) for obj in vars(_kernels).values() if isinstance(obj, CPUDispatcher))


def random_codes(rng, n: int, n_words: int):
    import numpy as np

    return rng.integers(0, np.iinfo(np.uint64).max, (n, n_words), dtype=np.uint64, endpoint=True)


def near_codes(rng, centers, n: int, p: float):
    """``n`` codes, each a random center with every bit flipped with probability ``p``."""
    import numpy as np

    picked = centers[rng.integers(0, centers.shape[0], n)]
    flips = np.packbits(rng.random((n, centers.shape[1] * 64)) < p, axis=1).view(np.uint64)
    return np.ascontiguousarray(picked ^ flips)


def window_codes(rng, centers, n: int):
    """A window: 90 % near a center (they join), 10 % random (scanned, then held back)."""
    import numpy as np

    n_far = n // 10
    codes = np.concatenate((near_codes(rng, centers, n - n_far, NEAR_FLIP), random_codes(rng, n_far, centers.shape[1])))
    return codes[rng.permutation(n)]


def digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def array_bytes(obj: Any, prefix: str = "") -> dict[str, int]:
    """nbytes of the numpy arrays ``obj`` holds (and one level down: its index), by attribute name."""
    import numpy as np

    out: dict[str, int] = {}
    for name, value in vars(obj).items():
        if isinstance(value, np.ndarray):
            out[prefix + name] = int(value.nbytes)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
            out[prefix + name] = int(sum(v.nbytes for v in value))
        elif hasattr(value, "__dict__") and type(value).__module__.startswith("core"):
            out.update(array_bytes(value, prefix + name + "."))
    return out


def _restored_clusterer(n_centers: int, seed: int):
    """The inputs of an OnlineClusterer.from_state with ``n_centers`` random centers."""
    import numpy as np

    from core.online import OnlineClusterer

    rng = np.random.default_rng(seed)
    state = OnlineClusterer(n_bits=256, window_size=1_000_000, random_state=seed).export_state()
    now = 1.7e9
    state.update(
        centers=random_codes(rng, n_centers, 4),
        sizes=rng.integers(10, 1000, n_centers).astype(np.int64),
        created_ts=now + rng.random(n_centers) * 1e6,
        updated_ts=now + 1e6 + rng.random(n_centers) * 1e6,
        cluster_ids=np.arange(n_centers, dtype=np.int64),  # read by core/ from state format 2 on
        next_cluster_id=n_centers,
    )
    return state, rng


def measure_rss(build: Callable[[], Any], use: Callable[[Any], Any]) -> dict:
    """RSS growth while ``build()`` makes the object measured and ``use(it)`` searches it: the object
    stays alive, what ``use`` returns is dropped. Warm every kernel up before calling this."""
    gc.collect()
    compiled = n_compiled()
    before = rss_bytes()
    started = time.perf_counter()
    held = build()
    build_s = time.perf_counter() - started
    gc.collect()
    after_build = rss_bytes()
    started = time.perf_counter()
    use(held)
    use_s = time.perf_counter() - started
    gc.collect()
    after_use = rss_bytes()
    trimmed = malloc_trim()
    after_trim = rss_bytes()
    return dict(
        growth_bytes=after_use - before,
        growth_after_build_bytes=after_build - before,
        growth_after_trim_bytes=after_trim - before if trimmed else None,
        build_seconds=build_s,
        use_seconds=use_s,
        arrays=array_bytes(held),
        kernels_compiled_during_run=n_compiled() - compiled,
    )


def job_online(spec: dict) -> dict:
    from core.online import OnlineClusterer

    state, rng = _restored_clusterer(spec["centers"], spec["seed"])
    window = window_codes(rng, state["centers"], spec["window"])
    ids = [f"p{i}" for i in range(window.shape[0])]
    small = dict(state, next_cluster_id=5000,
                 **{key: state[key][:5000] for key in ("centers", "sizes", "created_ts", "updated_ts", "cluster_ids")})
    OnlineClusterer.from_state(small).process(ids[:500], window[:500], now=1.8e9)  # warm the same path
    del small
    return measure_rss(lambda: OnlineClusterer.from_state(state),
                       lambda clusterer: clusterer.process(ids, window, now=1.8e9))


def job_grown(spec: dict) -> dict:
    from core.online import OnlineClusterer

    state, rng = _restored_clusterer(spec["centers"], spec["seed"])
    window = window_codes(rng, state["centers"], spec["window"])
    ids = [f"p{i}" for i in range(window.shape[0])]
    columns = [state[key] for key in ("centers", "sizes", "created_ts", "updated_ts")]

    def grow(n: int, block: int) -> OnlineClusterer:
        clusterer = OnlineClusterer(n_bits=256, window_size=1_000_000, random_state=spec["seed"])
        for first in range(0, n, block):
            clusterer.add_centers(*(column[first:min(first + block, n)] for column in columns))
        return clusterer

    grow(5000, 1000).process(ids[:500], window[:500], now=1.8e9)  # warm the same path
    return measure_rss(lambda: grow(spec["centers"], GROW_BLOCK),
                       lambda clusterer: clusterer.process(ids, window, now=1.8e9))


def job_centers(spec: dict) -> dict:
    import numpy as np

    from core.centers import CenterIndex

    rng = np.random.default_rng(spec["seed"])
    centers = random_codes(rng, spec["centers"], 4)
    queries = window_codes(rng, centers, spec["window"])

    def grow(n: int) -> CenterIndex:
        # As the worker's centers reader applies them: up to 500 block records per update.
        index = CenterIndex(256)
        blocks = [(first, first + CENTER_BLOCK, np.arange(first, min(first + CENTER_BLOCK, n)),
                   centers[first:min(first + CENTER_BLOCK, n)]) for first in range(0, n, CENTER_BLOCK)]
        for start in range(0, len(blocks), 500):
            index.update(blocks[start:start + 500])
        return index

    grow(5000).join(queries[:500], RADIUS)  # warm the same path
    return measure_rss(lambda: grow(spec["centers"]), lambda index: index.join(queries, RADIUS))


def job_join(spec: dict) -> dict:
    import numpy as np

    from core.centers import join_within
    from core.mih import MultiIndexHash

    rng = np.random.default_rng(spec["seed"])
    centers = random_codes(rng, spec["centers"], 4)
    near = near_codes(rng, centers, spec["queries"], NEAR_FLIP)
    far = random_codes(rng, spec["far_queries"], 4)
    warm = MultiIndexHash().fit(centers[:5000])
    join_within(warm, near[:200], RADIUS)
    join_within(warm, far[:50], RADIUS)
    warm.nearest(near[:200])
    del warm
    compiled = n_compiled()
    started = time.perf_counter()
    index = MultiIndexHash().fit(centers)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    near_labels, near_d = join_within(index, near, RADIUS)
    near_s = time.perf_counter() - started
    started = time.perf_counter()
    far_labels, far_d = join_within(index, far, RADIUS)
    far_s = time.perf_counter() - started
    started = time.perf_counter()
    nn_labels, nn_d = index.nearest(near)
    nearest_s = time.perf_counter() - started
    return dict(
        fit_seconds=fit_s,
        join_near_seconds=near_s,
        join_far_seconds=far_s,
        nearest_seconds=nearest_s,
        joined_fraction=float(np.mean(near_labels >= 0)),
        digest=digest(near_labels, near_d, far_labels, far_d, nn_labels, nn_d),
        kernels_compiled_during_run=n_compiled() - compiled,
    )


def job_bkmeans(spec: dict) -> dict:
    from core import BKMeans, planted_codes

    X, _, _ = planted_codes(spec["bk_n"], spec["bk_k"], flip_prob=NEAR_FLIP, random_state=0)
    compiled = n_compiled()
    model = BKMeans(spec["bk_k"], max_iter=spec["bk_iters"], tol=0, init="linked", random_state=1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    model.fit(X)
    fit_s = time.perf_counter() - started
    return dict(
        fit_seconds=fit_s,
        minor_page_faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
        n_iter=int(model.n_iter_),
        inertia=int(model.inertia_),
        digest=digest(model.labels_, model.cluster_centers_),
        kernels_compiled_during_run=n_compiled() - compiled,
    )


JOBS = {"online": job_online, "grown": job_grown, "centers": job_centers, "join": job_join, "bkmeans": job_bkmeans}


def warm_kernels() -> None:
    """Kernels that ``warm_up`` of earlier versions left out: without this, Bk-means at these sizes
    loads ``nearest_among`` inside the timed fit."""
    import numpy as np

    from core import _kernels

    codes = np.arange(40, dtype=np.uint64).reshape(10, 4)
    _kernels.nearest_among(codes, np.arange(4, dtype=np.int64), np.ascontiguousarray(codes[:3].T),
                           np.arange(3, dtype=np.int64), np.zeros(10, dtype=np.int64),
                           np.full(10, 1 << 10, dtype=np.int32), np.full(10, 1 << 10, dtype=np.int32))


def worker(spec: dict) -> None:
    sys.path.insert(0, spec["code"])  # the version under test wins over anything installed
    import numba

    import core
    from core.warmup import warm_up

    assert Path(core.__file__).resolve().parent == Path(spec["code"]).resolve() / "core", core.__file__
    started = time.perf_counter()
    warm_up()
    warm_kernels()
    warm_s = time.perf_counter() - started
    load = os.getloadavg()
    result = JOBS[spec["job"]](spec)
    result.update(spec=spec, warm_up_seconds=warm_s, numba_threads=numba.get_num_threads(),
                  loadavg_start=load, loadavg_end=os.getloadavg())
    print(RESULT_TAG + json.dumps(result), flush=True)


# =============================================================================================
# Parent side.
# =============================================================================================


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def checkout_core(rev: str) -> Path:
    """``core/`` of ``rev`` in a temp directory kept across runs (so Numba's cache is reused)."""
    sha = git("rev-parse", rev)
    root = Path(tempfile.gettempdir()) / f"photoclust-bench-memory-{sha[:12]}"
    if not (root / "core" / "__init__.py").exists():
        root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, "core"], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def run_worker(spec: dict, threads: int, extra_env: dict[str, str]) -> dict:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), **extra_env)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=spec["code"])
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            result["process_seconds"] = time.perf_counter() - started
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-20:]
    raise RuntimeError(f"worker {spec['job']} ({spec['version']}) exited with {proc.returncode}:\n" + "\n".join(tail))


def per_million(nbytes: float, n: int) -> float:
    return nbytes / MB * 1_000_000 / n


def summarise(version: str, runs: dict[str, list[dict]], n: int) -> dict:
    s: dict[str, Any] = dict(version=version)
    for job, key in (("online", "growth_bytes"), ("grown", "growth_bytes"), ("centers", "growth_bytes")):
        if runs.get(job):
            values = [per_million(r[key], n) for r in runs[job]]
            s[f"{job}_mb_per_million"] = statistics.median(values)
            s[f"{job}_mb_per_million_runs"] = values
            trims = [r["growth_after_trim_bytes"] for r in runs[job] if r.get("growth_after_trim_bytes") is not None]
            s[f"{job}_mb_per_million_after_malloc_trim"] = statistics.median(per_million(t, n) for t in trims) if trims else None
            s[f"{job}_array_bytes_per_center"] = {name: b / n for name, b in runs[job][-1]["arrays"].items()}
    for job, keys in (("join", ("fit_seconds", "join_near_seconds", "join_far_seconds", "nearest_seconds")),
                      ("bkmeans", ("fit_seconds",))):
        for key in keys:
            values = [r[key] for r in runs.get(job, [])]
            if values:
                s[f"{job}_{key}"] = statistics.median(values)
                s[f"{job}_{key}_runs"] = values
        digests = sorted({r["digest"] for r in runs.get(job, [])})
        if digests:
            s[f"{job}_digest"] = digests[0] if len(digests) == 1 else digests
    s["kernels_compiled_during_runs"] = sum(r.get("kernels_compiled_during_run", 0) for rs in runs.values() for r in rs)
    return s


def verdict(mb: float, n_centers: int) -> str:
    if n_centers != TARGET_CENTERS:  # the tables' fixed part weighs more on fewer centers, less on more
        return f"N/A (the target is for {TARGET_CENTERS:,} centers)"
    return "met" if mb <= TARGET_MB_PER_MILLION else f"not met (+{mb - TARGET_MB_PER_MILLION:.0f} MB)"


def print_table(summaries: list[dict], args: argparse.Namespace) -> None:
    env = f", env {' '.join(args.env)}" if args.env else ""
    print(f"\n{args.centers:,} centers, 256 bits, {args.threads} Numba thread(s){env}; memory = RSS growth in MB per "
          f"million centers (median of {args.memory_repeats}); times in s (median of {args.repeats}, versions "
          "alternating)")
    rows = [
        ("OnlineClusterer MB/1M", "online_mb_per_million", "{:.1f}"),
        ("  after malloc_trim", "online_mb_per_million_after_malloc_trim", "{:.1f}"),
        ("OnlineClusterer grown MB/1M", "grown_mb_per_million", "{:.1f}"),
        ("  after malloc_trim", "grown_mb_per_million_after_malloc_trim", "{:.1f}"),
        ("CenterIndex MB/1M", "centers_mb_per_million", "{:.1f}"),
        ("  after malloc_trim", "centers_mb_per_million_after_malloc_trim", "{:.1f}"),
        (f"MIH fit, {args.centers:,}", "join_fit_seconds", "{:.3f}"),
        (f"join {args.queries:,} near", "join_join_near_seconds", "{:.3f}"),
        (f"join {args.far_queries:,} random", "join_join_far_seconds", "{:.3f}"),
        (f"nearest {args.queries:,} near", "join_nearest_seconds", "{:.3f}"),
        (f"Bk-means {args.bk_n:,}->{args.bk_k:,} x{args.bk_iters}", "bkmeans_fit_seconds", "{:.3f}"),
    ]
    width = 16
    print(f"{'':<30}" + "".join(f"{s['version']:>{width}}" for s in summaries)
          + (f"{'new/old':>{width}}" if len(summaries) == 2 else ""))
    for label, key, fmt in rows:
        values = [s.get(key) for s in summaries]
        line = f"{label:<30}" + "".join(f"{(fmt.format(v) if v is not None else '-'):>{width}}" for v in values)
        if len(values) == 2 and all(v is not None for v in values) and values[0]:
            line += f"{values[1] / values[0]:>{width}.3f}"
        print(line)
    for s in summaries:
        for job, name in (("online", "OnlineClusterer (restored)"), ("grown", "OnlineClusterer (grown)")):
            if f"{job}_mb_per_million" in s:
                mb = s[f"{job}_mb_per_million"]
                print(f"target <= {TARGET_MB_PER_MILLION:.0f} MB per million centers ({s['version']}): {name} "
                      f"{mb:.1f} MB: {verdict(mb, args.centers)}")
    if len(summaries) == 2:
        for job in ("join", "bkmeans"):
            a, b = (s.get(f"{job}_digest") for s in summaries)
            if a is not None and b is not None:
                print(f"{job} results identical across versions: {'yes' if a == b else 'NO'} ({a} / {b})")
    for s in summaries:
        if s["kernels_compiled_during_runs"]:
            print(f"WARNING: {s['version']}: {s['kernels_compiled_during_runs']} Numba kernel(s) compiled inside a "
                  "measured section")
    for s in summaries:
        for job, name in (("online", "OnlineClusterer (restored)"), ("grown", "OnlineClusterer (grown)"),
                          ("centers", "CenterIndex")):
            parts = s.get(f"{job}_array_bytes_per_center")
            if parts:
                shown = ", ".join(f"{k} {v:.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= 0.05)
                print(f"{s['version']}: {name} arrays, bytes per center: {shown} (total {sum(parts.values()):.1f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--centers", type=int, help="centers held (default 1000000; quick 100000)")
    ap.add_argument("--queries", type=int, help="near codes joined (default 100000; quick 10000)")
    ap.add_argument("--far-queries", type=int, help="random codes joined (default 1000; quick 200)")
    ap.add_argument("--window", type=int, help="window processed in the memory jobs (default 10000)")
    ap.add_argument("--bk-n", type=int, help="Bk-means points (default 500000; quick 20000)")
    ap.add_argument("--bk-k", type=int, help="Bk-means clusters (default 50000; quick 2000)")
    ap.add_argument("--bk-iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="timing runs per version (median)")
    ap.add_argument("--memory-repeats", type=int, default=1, help="memory runs per version (median)")
    ap.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    ap.add_argument("--baseline", help="a git revision whose core/ is measured too, alternating (e.g. main)")
    ap.add_argument("--threads", type=int, default=1, help="NUMBA_NUM_THREADS of the workers (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--env", nargs="+", default=[], metavar="NAME=VALUE",
                    help="environment of the workers, e.g. MALLOC_TRIM_THRESHOLD_=131072 (glibc tunables)")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--out", default=str(REPO / "tests" / "benchmarks" / "results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    from report import fill_defaults, save_report  # noqa: E402  (tests/benchmarks is this script's directory)

    fill_defaults(args, QUICK if args.quick else FULL)

    extra_env = dict(item.split("=", 1) for item in args.env)
    versions = []
    if args.baseline:
        versions.append((f"{args.baseline}@{git('rev-parse', '--short', args.baseline)}", str(checkout_core(args.baseline))))
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "core"))
    versions.append((f"this@{git('rev-parse', '--short', 'HEAD')}{'+dirty' if dirty else ''}", str(REPO)))
    base = dict(centers=args.centers, queries=args.queries, far_queries=args.far_queries, window=args.window,
                bk_n=args.bk_n, bk_k=args.bk_k, bk_iters=args.bk_iters, seed=args.seed)
    runs: dict[str, dict[str, list[dict]]] = {label: {} for label, _ in versions}
    plan = [(job, args.memory_repeats) for job in ("online", "grown", "centers") if job in args.jobs]
    plan += [(job, args.repeats) for job in ("join", "bkmeans") if job in args.jobs]
    for job, repeats in plan:
        for rep in range(repeats):
            order = versions if rep % 2 == 0 else versions[::-1]  # old, new, new, old, ...
            for label, code in order:
                spec = dict(base, job=job, version=label, code=code)
                result = run_worker(spec, args.threads, extra_env)
                runs[label].setdefault(job, []).append(result)
                shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()
                         if k.endswith(("seconds", "bytes")) and v is not None}
                log(f"[{job} {rep + 1}/{repeats}] {label}: {shown}")
    summaries = [summarise(label, runs[label], args.centers) for label, _ in versions]
    print_table(summaries, args)
    save_report(args.out, "memory", dict(
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        args={k: v for k, v in vars(args).items() if k != "worker"},
        target_mb_per_million=TARGET_MB_PER_MILLION,
        machine=dict(nodename=os.uname().nodename, nproc=os.cpu_count(), loadavg_end=os.getloadavg()),
        summaries=summaries,
        runs=runs,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
