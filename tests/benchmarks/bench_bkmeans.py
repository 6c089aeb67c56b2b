#!/usr/bin/env python
"""Bk-means benchmark: photoclust's BKMeans against the baselines of shared/anchors.md.

Not a pytest test (pytest only collects ``test_*.py``): a script that prints a table and saves
``results/bkmeans_<UTC timestamp>.json`` and ``results/bkmeans.png``. See README.md next to it.

For every flip probability p, on planted data ``planted_codes(n, k, flip_prob=p, random_state=0)``:

* ours         BKMeans(k, max_iter=iters, tol=0, init="linked", assign="auto", random_state=1)
               on the FULL n; measured. "auto-random" is the same with init="random" (uniform seeds).
               After the timed fit, the labels of 20,000 random points are checked against an
               exhaustive scan of the final centers.
* brute        BKMeans(assign="brute") (the exhaustive Numba scan) on a random subset of
               baseline-n points, same k, baseline-iters iterations; its mean seconds per
               iteration are SCALED linearly to n points: x (n / baseline_n).
* faiss-flat   the same Bk-means loop with faiss.IndexBinaryFlat(256) (search k=1) as the
               assignment and photoclust's majority-vote kernels as the update; same subset,
               same initial centers and same scaling as brute.
* faiss-float  faiss.Kmeans on the 0/1 bits as float32 at float-n x float-k (its own planted data
               with float-k true centers), float-iters iterations; seconds per iteration
               EXTRAPOLATED to n x k: x (n / float_n) x (k / float_k). Our auto and brute modes run
               on the same float-n x float-k data for a same-size comparison.

Every measurement runs in its own subprocess (``--worker``), so peak memory (VmHWM / ru_maxrss)
of one method does not mix with another's, and every subprocess warms up the Numba kernels (and
FAISS) on tiny data before anything is timed. The worker checks that no Numba kernel was compiled
or loaded during the timed run. Targets are printed as information (MET / NOT MET), never asserted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the checkout's core/, also without `pip install -e .`

from report import fill_defaults  # noqa: E402  (tests/benchmarks is this script's directory)

RESULT_TAG = "@@BKMEANS_BENCH_RESULT "
SUBSET_SEED = 12345  # which baseline-n points the subset baselines (brute, faiss-flat) use
DATA_SEED = 0  # planted_codes(..., random_state=DATA_SEED)
INIT_SEED = 1  # BKMeans(random_state=INIT_SEED); the FAISS loops use the same seed
# The targets: 1M codes into 100k clusters, 10 iterations.
TARGET_SIZE = (1_000_000, 100_000, 10)
TARGET_SECONDS = {0.1: 120.0, 0.2: 240.0}

FULL_DEFAULTS = dict(n=1_000_000, k=100_000, baseline_n=100_000, float_n=100_000, float_k=10_000)
QUICK_DEFAULTS = dict(n=20_000, k=2_000, baseline_n=5_000, float_n=5_000, float_k=500)
METHODS = ("auto", "auto-random", "mih", "brute", "faiss-flat", "faiss-float", "sklearn-float")
DEFAULT_METHODS = ["auto", "auto-random", "brute", "faiss-flat", "faiss-float"]
EXACT_CHECK_POINTS = 20_000
# Warn when other processes used more than this many cores on average while a measurement ran.
FOREIGN_LOAD_WARNING = 0.2


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# =============================================================================================
# Worker side: one measurement per process.
# =============================================================================================


def _proc_status_mb(key: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
    return int(match.group(1)) / 1024.0 if match else None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak covers only the timed run."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _n_compiled() -> int:
    """Compiled (or cache-loaded) specialisations over all photoclust Numba kernels."""
    from numba.core.registry import CPUDispatcher

    from core import _kernels

    return sum(len(obj.signatures) for obj in vars(_kernels).values() if isinstance(obj, CPUDispatcher))


def _warm_up(job: str, p: float) -> float:
    """Compile / load every kernel (and FAISS, sklearn) on tiny data; returns seconds spent."""
    import numpy as np

    from core import BKMeans, planted_codes

    started = time.perf_counter()
    small, _, _ = planted_codes(4000, 200, flip_prob=p, random_state=99)
    for assign in ("auto", "mih", "brute"):
        for init in ("linked", "random"):
            BKMeans(200, max_iter=4, tol=0, init=init, assign=assign, random_state=0).fit(small)
    if job in ("faiss-flat", "faiss-float"):
        import faiss

        from core.codes import to_uint8, unpack_bits

        index = faiss.IndexBinaryFlat(small.shape[1] * 64)
        index.add(to_uint8(small[:200]))
        index.search(to_uint8(small), 1)
        if job == "faiss-float":
            km = faiss.Kmeans(small.shape[1] * 64, 50, niter=2, seed=0, max_points_per_centroid=1 << 30,
                              min_points_per_centroid=1, verbose=False)
            km.train(unpack_bits(small).astype(np.float32))
    if job == "sklearn-float":
        from sklearn.cluster import KMeans

        from core.codes import unpack_bits

        KMeans(50, init="random", n_init=1, max_iter=2, random_state=0).fit(unpack_bits(small).astype(np.float32))
    return time.perf_counter() - started


def _history(model) -> list[dict]:
    return [
        dict(
            iteration=h.iteration,
            seconds=h.seconds,
            n_changed=h.n_changed,
            changed_fraction=h.changed_fraction,
            inertia=h.inertia,
            n_searched=h.n_searched,
            n_moved_centers=h.n_moved_centers,
        )
        for h in model.history_
    ]


def _subset(n: int, size: int):
    import numpy as np

    return np.sort(np.random.default_rng(SUBSET_SEED).choice(n, size=size, replace=False))


def _job_ours(spec: dict, X, truth) -> dict:
    """BKMeans on the given data; ``max_iter`` iterations (fewer only if it converges exactly)."""
    import numpy as np

    from core import BKMeans, normalized_mutual_info, purity

    snapshot_at = spec.get("snapshot_at")
    snapshot: dict = {}

    def callback(info) -> None:  # history_[i].labels alias the live labels array: copy when needed
        if info.iteration == snapshot_at:
            snapshot["labels"] = np.array(info.labels)

    model = BKMeans(spec["k"], max_iter=spec["max_iter"], tol=0, init=spec["init"], assign=spec["assign"],
                    random_state=INIT_SEED, callback=callback if snapshot_at else None)
    started = time.perf_counter()
    model.fit(X)
    wall = time.perf_counter() - started
    history = _history(model)
    out = dict(
        fit_seconds=wall,
        iteration_seconds_sum=sum(h["seconds"] for h in history),
        n_iter=model.n_iter_,
        history=history,
        final_inertia=int(model.inertia_),
        purity=purity(model.labels_, truth),
        nmi=normalized_mutual_info(model.labels_, truth),
    )
    if "labels" in snapshot:
        out["purity_at_iteration"] = {str(snapshot_at): purity(snapshot["labels"], truth)}
    if spec["assign"] != "brute":
        out["_fitted"] = (model.cluster_centers_, model.labels_)  # for _exact_check, outside the measurement
    return out


def _exact_check(X, centers, labels) -> dict:
    """labels_ must be the nearest final center: compared with an exhaustive scan on a sample."""
    import numpy as np

    from core.hamming import nearest_brute

    sample = np.sort(np.random.default_rng(SUBSET_SEED).choice(X.shape[0], min(EXACT_CHECK_POINTS, X.shape[0]),
                                                               replace=False))
    nearest, _ = nearest_brute(X[sample], centers)
    return dict(points=int(sample.shape[0]), label_mismatches=int(np.count_nonzero(nearest != labels[sample])))


def _job_faiss_flat(spec: dict, X, truth) -> dict:
    """Bk-means with faiss.IndexBinaryFlat as the assignment and the majority-vote update."""
    import faiss
    import numpy as np

    from core import _kernels, normalized_mutual_info, purity
    from core.bkmeans import BKMeans, _init_random
    from core.codes import to_uint8

    k, n_iter = spec["k"], spec["max_iter"]
    n, n_bits = X.shape[0], X.shape[1] * 64
    xb = to_uint8(X)  # one-off conversion, not timed: a FAISS user stores uint8[N, 32] anyway
    # The same initial centers as BKMeans(init="random", random_state=INIT_SEED) on this data.
    centers = _init_random(X, k, np.random.default_rng(INIT_SEED))[0]
    offsets = np.empty(k + 1, dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    sizes = np.empty(k, dtype=np.int64)
    labels = np.full(n, -1, dtype=np.int64)
    best = np.zeros(n, dtype=np.int32)
    history = []
    fit_started = time.perf_counter()
    for iteration in range(1, n_iter + 1):
        started = time.perf_counter()
        previous = labels
        index = faiss.IndexBinaryFlat(n_bits)
        index.add(to_uint8(centers))
        distances, neighbours = index.search(xb, 1)
        search_seconds = time.perf_counter() - started
        labels = np.ascontiguousarray(neighbours[:, 0], dtype=np.int64)
        best = np.ascontiguousarray(distances[:, 0], dtype=np.int32)
        n_changed = int(np.count_nonzero(labels != previous))
        new_centers = np.empty_like(centers)
        _kernels.members_by_label(labels, k, offsets, order)
        _kernels.majority_centers(X, offsets, order, centers, new_centers, sizes)
        BKMeans._reseed_empty(X, new_centers, sizes, best)
        centers = new_centers
        history.append(dict(
            iteration=iteration,
            seconds=time.perf_counter() - started,
            search_seconds=search_seconds,
            n_changed=n_changed,
            changed_fraction=n_changed / n,
            inertia=int(best.sum(dtype=np.int64)),
        ))
    wall = time.perf_counter() - fit_started
    return dict(
        fit_seconds=wall,
        iteration_seconds_sum=sum(h["seconds"] for h in history),
        n_iter=len(history),
        history=history,
        # Labels of the last assignment (against the centers before the last update).
        purity=purity(labels, truth),
        nmi=normalized_mutual_info(labels, truth),
        faiss_threads=faiss.omp_get_max_threads(),
    )


def _job_faiss_float(spec: dict, X, truth) -> dict:
    """faiss.Kmeans on the bits as float32 (what users do today: cluster floats, round later)."""
    import faiss
    import numpy as np

    from core import nearest_brute, normalized_mutual_info, purity
    from core.codes import pack_bits, unpack_bits

    k, n_iter = spec["k"], spec["max_iter"]
    bits = unpack_bits(X).astype(np.float32)  # not timed
    km = faiss.Kmeans(bits.shape[1], k, niter=n_iter, seed=INIT_SEED, verbose=False,
                      max_points_per_centroid=1 << 30,  # no subsampling: every point, every iteration
                      min_points_per_centroid=1)  # (only silences the "too few points" warning)
    started = time.perf_counter()
    km.train(bits)
    wall = time.perf_counter() - started
    stats = [dict(s) for s in km.iteration_stats]
    cumulative = [s["time"] for s in stats]  # FAISS reports time since the start of train()
    seconds = [cumulative[0]] + [b - a for a, b in zip(cumulative, cumulative[1:])]
    history = [dict(iteration=i + 1, seconds=sec, search_seconds=s.get("time_search"), objective=s["obj"])
               for i, (sec, s) in enumerate(zip(seconds, stats))]
    # Quality, not timed: float labels, and the float centroids rounded to bits then Hamming-assigned.
    _, float_labels = km.index.search(bits, 1)
    rounded = pack_bits(km.centroids > 0.5)
    rounded_labels, _ = nearest_brute(X, rounded)
    return dict(
        fit_seconds=wall,
        iteration_seconds_sum=sum(seconds),
        n_iter=len(history),
        history=history,
        purity=purity(float_labels[:, 0], truth),
        nmi=normalized_mutual_info(float_labels[:, 0], truth),
        purity_rounded_centroids=purity(rounded_labels, truth),
        faiss_threads=faiss.omp_get_max_threads(),
    )


def _job_sklearn_float(spec: dict, X, truth) -> dict:
    import numpy as np
    from sklearn.cluster import KMeans

    from core import normalized_mutual_info, purity
    from core.codes import unpack_bits

    bits = unpack_bits(X).astype(np.float32)
    km = KMeans(spec["k"], init="random", n_init=1, max_iter=spec["max_iter"], tol=0.0, algorithm="lloyd",
                random_state=INIT_SEED)
    started = time.perf_counter()
    km.fit(bits)
    wall = time.perf_counter() - started
    return dict(
        fit_seconds=wall,
        iteration_seconds_sum=wall,
        n_iter=int(km.n_iter_),
        history=[],  # sklearn exposes no per-iteration times; mean = fit_seconds / n_iter
        purity=purity(km.labels_, truth),
        nmi=normalized_mutual_info(km.labels_, truth),
    )


JOBS = {
    "ours": _job_ours,
    "faiss-flat": _job_faiss_flat,
    "faiss-float": _job_faiss_float,
    "sklearn-float": _job_sklearn_float,
}


def worker(spec: dict) -> None:
    """Run one measurement described by ``spec`` and print one tagged JSON line on stdout."""
    import numba
    import numpy as np

    from core import planted_codes

    load_start = os.getloadavg()
    warm_seconds = _warm_up(spec["job"], spec["p"])
    rss_before_data = _proc_status_mb("VmRSS")

    started = time.perf_counter()
    X, truth, _ = planted_codes(spec["data_n"], spec["data_k"], flip_prob=spec["p"], random_state=DATA_SEED)
    if spec.get("subset"):
        rows = _subset(X.shape[0], spec["subset"])
        X, truth = np.ascontiguousarray(X[rows]), truth[rows]
    data_seconds = time.perf_counter() - started

    setup_peak = _ru_maxrss_mb()
    rss_before_run = _proc_status_mb("VmRSS")
    peak_was_reset = _reset_peak_rss()
    compiled_before = _n_compiled()
    result = JOBS[spec["job"]](spec, X, truth)
    compiled_after = _n_compiled()
    run_peak = _proc_status_mb("VmHWM") if peak_was_reset else None
    if "_fitted" in result:
        result["exact_check"] = _exact_check(X, *result.pop("_fitted"))

    result.update(
        spec=spec,
        points=int(X.shape[0]),
        data_bytes=int(X.nbytes),
        warm_up_seconds=warm_seconds,
        data_seconds=data_seconds,
        numba_kernels_compiled_during_run=compiled_after - compiled_before,
        numba_threads=numba.get_num_threads(),
        memory_mb=dict(
            rss_after_warm_up=rss_before_data,
            rss_before_run=rss_before_run,
            # Peak RSS during the timed run alone (VmHWM reset just before it), data included.
            peak_during_run=run_peak,
            # Whole-process peak (getrusage ru_maxrss): imports, warm-up, data generation and run.
            peak_process=_ru_maxrss_mb(),
            peak_before_run=setup_peak,
        ),
        loadavg_start=load_start,
        loadavg_end=os.getloadavg(),
    )
    print(RESULT_TAG + json.dumps(result), flush=True)


# =============================================================================================
# Parent side: run the workers, derive the comparisons, print, save, plot.
# =============================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark photoclust Bk-means against brute force, a FAISS binary-flat loop and float k-means.",
    )
    parser.add_argument("--n", type=int, help="points in the planted data (default 1000000; quick 20000)")
    parser.add_argument("--k", type=int, help="clusters, also the planted true centers (default 100000; quick 2000)")
    parser.add_argument("--p", type=float, nargs="+", default=[0.1, 0.2], help="bit-flip probabilities")
    parser.add_argument("--iters", type=int, default=10, help="Bk-means iterations for ours (tol=0)")
    parser.add_argument("--baseline-n", type=int, help="subset size for brute / faiss-flat (default 100000; quick 5000)")
    parser.add_argument("--baseline-iters", type=int, default=2, help="iterations measured for brute / faiss-flat")
    parser.add_argument("--float-n", type=int, help="points for float k-means (default 100000; quick 5000)")
    parser.add_argument("--float-k", type=int, help="clusters for float k-means (default 10000; quick 500)")
    parser.add_argument("--float-iters", type=int, default=2, help="iterations measured for float k-means")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=DEFAULT_METHODS,
                        help="'auto'/'mih': ours on the full data; the others are baselines")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="directory for the JSON and the plot")
    parser.add_argument("--threads", type=int, help="set NUMBA_NUM_THREADS and OMP_NUM_THREADS for the workers")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (< 1 minute)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    fill_defaults(args, QUICK_DEFAULTS if args.quick else FULL_DEFAULTS)
    problems = []
    if not 1 <= args.k <= args.n:
        problems.append(f"--k {args.k} must be between 1 and --n {args.n}")
    if ("brute" in args.methods or "faiss-flat" in args.methods) and not args.k <= args.baseline_n <= args.n:
        problems.append(f"--baseline-n {args.baseline_n} must be between --k {args.k} and --n {args.n}")
    if any(m.endswith("-float") for m in args.methods) and not 1 <= args.float_k <= args.float_n:
        problems.append(f"--float-k {args.float_k} must be between 1 and --float-n {args.float_n}")
    for name in ("iters", "baseline_iters", "float_iters"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1")
    if any(not 0.0 <= p <= 1.0 for p in args.p):
        problems.append("--p values must be probabilities in [0, 1]")
    if problems:
        parser.error("; ".join(problems))
    args.methods = list(dict.fromkeys(args.methods))
    return args


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes on the machine have used since boot (/proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    guest = sum(ticks[8:10]) if len(ticks) > 9 else 0  # already counted in user / nice
    return (sum(ticks) - idle - guest) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_worker(spec: dict, threads: int | None) -> dict:
    env = os.environ.copy()
    if threads:
        env["NUMBA_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    busy_before, own_before = _busy_cpu_seconds(), _children_cpu_seconds()
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    elapsed = time.perf_counter() - started
    busy_after, own_after = _busy_cpu_seconds(), _children_cpu_seconds()
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            result["process_seconds"] = elapsed
            if busy_before is not None and busy_after is not None and elapsed > 0:
                # Cores busy with OTHER processes while this worker ran (whole worker lifetime, not
                # only the timed part): the machine is shared, and OpenMP code (FAISS) in particular
                # slows down many-fold when another process takes one of its cores.
                foreign = (busy_after - busy_before) - (own_after - own_before)
                result["foreign_cpu_cores"] = max(foreign, 0.0) / elapsed
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return dict(spec=spec, error=f"worker exited with status {proc.returncode} and no result", stderr_tail=tail)


def faiss_problem() -> str | None:
    """Why FAISS cannot be used, or None."""
    try:
        import faiss

        faiss.IndexBinaryFlat(256)
    except Exception as exc:  # ImportError, or a broken wheel (missing CPU features, libs)
        return f"faiss is not usable ({type(exc).__name__}: {exc}); install it with `pip install faiss-cpu`"
    return None


def sklearn_problem() -> str | None:
    try:
        import sklearn.cluster  # noqa: F401
    except Exception as exc:
        return f"scikit-learn is not usable ({type(exc).__name__}: {exc}); install it with `pip install scikit-learn`"
    return None


def machine_info(args: argparse.Namespace) -> dict:
    import numba
    import numpy as np

    info: dict = dict(
        hostname=platform.node(),
        platform=platform.platform(),
        python=platform.python_version(),
        nproc=os.cpu_count(),
        cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        numba_threads=int(args.threads) if args.threads else numba.config.NUMBA_NUM_THREADS,
        numpy=np.__version__,
        numba=numba.__version__,
        loadavg_at_start=os.getloadavg(),
    )
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
        flags = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
        info["cpu_model"] = model.group(1).strip() if model else None
        flag_set = set(flags.group(1).split()) if flags else set()
        info["cpu_flags"] = sorted(flag_set & {"avx2", "avx512f", "avx512_vpopcntdq", "popcnt", "bmi2"})
    except OSError:
        info["cpu_model"] = None
    try:
        meminfo = Path("/proc/meminfo").read_text()
        total = re.search(r"^MemTotal:\s+(\d+)", meminfo, re.M)
        info["mem_total_mb"] = int(total.group(1)) // 1024 if total else None
    except OSError:
        pass
    for module in ("faiss", "sklearn", "matplotlib"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout
        info["git_dirty"] = bool(dirty.strip())
    except OSError:
        info["git_commit"] = None
    return info


def mean_iteration_seconds(result: dict | None) -> float | None:
    if not result or "error" in result or "skipped" in result or not result.get("n_iter"):
        return None
    return result["iteration_seconds_sum"] / result["n_iter"]


def derive(p: float, jobs: dict, args: argparse.Namespace) -> dict:
    """Scaled baselines, speedups and the target check for one p."""
    n, k, iters = args.n, args.k, args.iters
    ours_key = next((m for m in ("auto", "mih") if m in jobs and "fit_seconds" in jobs[m]), None)
    ours = jobs.get(ours_key) if ours_key else None
    d: dict = dict(ours_method=ours_key)
    ours_iters = ours["n_iter"] if ours else iters
    d["ours_n_iter"] = ours_iters if ours else None
    if ours:
        d["ours_fit_seconds"] = ours["fit_seconds"]
        d["ours_mean_iteration_seconds"] = mean_iteration_seconds(ours)

    for name in ("brute", "faiss-flat"):
        per_iter = mean_iteration_seconds(jobs.get(name))
        if per_iter is None:
            continue
        factor = n / args.baseline_n
        entry = dict(
            how=f"SCALED: mean of {jobs[name]['n_iter']} measured iteration(s) on {args.baseline_n} points "
                f"x {k} centers, x (n / baseline_n) = x {factor:g}",
            measured_mean_iteration_seconds=per_iter,
            scaled_iteration_seconds=per_iter * factor,
            scaled_total_seconds=per_iter * factor * iters,
            scaled_total_seconds_at_ours_iterations=per_iter * factor * ours_iters,
        )
        if ours:
            entry["speedup_of_ours"] = entry["scaled_total_seconds_at_ours_iterations"] / ours["fit_seconds"]
        d[name] = entry

    float_per_iter = mean_iteration_seconds(jobs.get("faiss-float"))
    for name in ("faiss-float", "sklearn-float"):
        per_iter = mean_iteration_seconds(jobs.get(name))
        if per_iter is None:
            continue
        factor = (n / args.float_n) * (k / args.float_k)
        entry = dict(
            how=f"EXTRAPOLATED: mean of {jobs[name]['n_iter']} iteration(s) at {args.float_n} x {args.float_k}, "
                f"x (n / float_n) x (k / float_k) = x {factor:g}",
            measured_mean_iteration_seconds=per_iter,
            extrapolated_iteration_seconds=per_iter * factor,
            extrapolated_total_seconds=per_iter * factor * iters,
            extrapolated_total_seconds_at_ours_iterations=per_iter * factor * ours_iters,
        )
        if ours:
            entry["speedup_of_ours"] = entry["extrapolated_total_seconds_at_ours_iterations"] / ours["fit_seconds"]
        d[name] = entry

    # Same size as float k-means: ours (auto) and brute measured at float_n x float_k.
    same = {}
    for name in ("float-auto", "float-brute"):
        per_iter = mean_iteration_seconds(jobs.get(name))
        if per_iter is not None:
            same[name] = dict(mean_iteration_seconds=per_iter, fit_seconds=jobs[name]["fit_seconds"],
                              n_iter=jobs[name]["n_iter"])
    if same:
        for float_name in ("faiss-float", "sklearn-float"):
            per_iter = mean_iteration_seconds(jobs.get(float_name))
            if per_iter is None:
                continue
            for name, entry in same.items():
                entry[f"per_iteration_speedup_vs_{float_name}"] = per_iter / entry["mean_iteration_seconds"]
        d["same_size_as_float"] = same

    # Sanity: brute and faiss-flat start from the same centers on the same subset, so the first
    # assignment's summed distance must be equal (ties may pick different labels, not distances).
    brute, flat = jobs.get("brute"), jobs.get("faiss-flat")
    if brute and flat and brute.get("history") and flat.get("history"):
        d["first_iteration_inertia_brute_vs_faiss_flat"] = [brute["history"][0]["inertia"],
                                                            flat["history"][0]["inertia"]]

    target = TARGET_SECONDS.get(round(p, 6))
    if ours is None:
        d["target"] = dict(status="NOT MEASURED", text="ours (auto) was not run")
    elif target is None:
        d["target"] = dict(status="N/A", text=f"no target stated for p={p}")
    elif (n, k, iters) != TARGET_SIZE:
        d["target"] = dict(status="N/A", target_seconds=target, measured_seconds=ours["fit_seconds"],
                           text=f"target applies to 1M x 100k x 10 iterations; this run is {n} x {k} x {iters}")
    else:
        status = "MET" if ours["fit_seconds"] <= target else "NOT MET"
        d["target"] = dict(status=status, target_seconds=target, measured_seconds=ours["fit_seconds"])
    return d


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def fmt_mb(result: dict) -> str:
    mem = result.get("memory_mb") or {}
    peak = mem.get("peak_during_run") or mem.get("peak_process")
    return f"{peak:,.0f}" if peak else "-"


def report(p: float, jobs: dict, d: dict, args: argparse.Namespace) -> str:
    n, k, iters = args.n, args.k, args.iters
    lines = [
        "",
        f"=== p = {p}: n = {n:,} codes x 256 bits, k = {k:,} clusters, {iters} iterations (tol=0) ===",
        f"{'method':<26}{'measured at':>18}{'iters':>6}{'s/iter':>10}{'total s @ n x k x iters':>25}"
        f"{'speedup':>10}{'peak MB':>9}{'purity':>8}{'other':>7}  how",
    ]

    def row(label, result, size, total, speedup, how):
        if result is None:
            return
        if "skipped" in result:
            lines.append(f"{label:<26}  SKIPPED: {result['skipped']}")
            return
        if "error" in result:
            lines.append(f"{label:<26}  ERROR: {result['error']}")
            return
        other = f"{result['foreign_cpu_cores']:.2f}" if "foreign_cpu_cores" in result else "-"
        lines.append(
            f"{label:<26}{size:>18}{result['n_iter']:>6}{fmt_s(mean_iteration_seconds(result)):>10}"
            f"{fmt_s(total):>25}{(f'{speedup:.1f}x' if speedup else '-'):>10}{fmt_mb(result):>9}"
            f"{result.get('purity', float('nan')):>8.4f}"
            f"{other:>7}  {how}"
        )

    ours_key = d.get("ours_method")
    for m, label in (("auto", "ours (auto, linked init)"), ("mih", "ours (mih, linked init)"),
                     ("auto-random", "ours (auto, random init)")):
        if m in jobs:
            early = f" (converged after {jobs[m].get('n_iter')} iterations)" if jobs[m].get("n_iter", iters) < iters else ""
            check = jobs[m].get("exact_check")
            exact = (f"; exact check: {check['label_mismatches']} of {check['points']:,} labels differ from a scan"
                     if check else "")
            row(label, jobs[m], f"{n} x {k}", jobs[m].get("fit_seconds"), None,
                "measured, full data, BKMeans.fit wall time" + early + exact)
    for name, label in (("brute", "brute (Numba scan)"), ("faiss-flat", "faiss IndexBinaryFlat loop")):
        if name in jobs:
            e = d.get(name, {})
            row(label, jobs[name], f"{args.baseline_n} x {k}", e.get("scaled_total_seconds"),
                e.get("speedup_of_ours"), f"SCALED x{n / args.baseline_n:g} from {args.baseline_n} points")
    for name, label in (("faiss-float", "faiss.Kmeans float32"), ("sklearn-float", "sklearn KMeans float32")):
        if name in jobs:
            e = d.get(name, {})
            row(label, jobs[name], f"{args.float_n} x {args.float_k}", e.get("extrapolated_total_seconds"),
                e.get("speedup_of_ours"),
                f"EXTRAPOLATED x{(n / args.float_n) * (k / args.float_k):g} from "
                f"{args.float_n} x {args.float_k}")
    for name, label in (("float-auto", "ours (auto) @ float size"), ("float-brute", "brute @ float size")):
        if name in jobs:
            same = d.get("same_size_as_float", {}).get(name, {})
            ref = next((f for f in ("faiss-float", "sklearn-float") if f"per_iteration_speedup_vs_{f}" in same), None)
            row(label, jobs[name], f"{args.float_n} x {args.float_k}", None,
                same.get(f"per_iteration_speedup_vs_{ref}"),
                f"measured at float size; speedup = {ref} s/iter / this s/iter" if ref else "measured at float size")
    lines.append("(speedup = baseline total, scaled to ours' iteration count, / ours' fit wall time; "
                 "peak MB = peak RSS of the timed run, data included; other = cores busy with other "
                 "processes meanwhile)")

    if ours_key and jobs[ours_key].get("history"):
        lines.append("")
        lines.append(f"ours ({ours_key}) per iteration:")
        lines.append(f"{'iter':>6}{'seconds':>10}{'searched':>12}{'moved ctr':>11}{'changed':>10}{'inertia':>14}")
        for h in jobs[ours_key]["history"]:
            lines.append(f"{h['iteration']:>6}{h['seconds']:>10.4f}{h['n_searched']:>12,}{h['n_moved_centers']:>11,}"
                         f"{h['changed_fraction']:>10.4f}{h['inertia']:>14,}")
        lines.append(f"final inertia {jobs[ours_key]['final_inertia']:,}, purity {jobs[ours_key]['purity']:.4f}, "
                     f"NMI {jobs[ours_key]['nmi']:.4f}")
    if "first_iteration_inertia_brute_vs_faiss_flat" in d:
        a, b = d["first_iteration_inertia_brute_vs_faiss_flat"]
        lines.append(f"check: first-iteration inertia brute {a:,} vs faiss-flat {b:,}: "
                     f"{'equal' if a == b else 'DIFFERENT (a bug in one of them)'}")
    busy = {name: round(r["foreign_cpu_cores"], 2) for name, r in jobs.items()
            if r.get("foreign_cpu_cores", 0.0) > FOREIGN_LOAD_WARNING}
    if busy:
        lines.append(f"WARNING: other processes kept these many cores busy during the runs of {busy} "
                     f"(of {os.cpu_count()} cores); those timings are not clean, rerun on an idle machine")
    compiled = {name: r.get("numba_kernels_compiled_during_run") for name, r in jobs.items()
                if r.get("numba_kernels_compiled_during_run")}
    if compiled:
        lines.append(f"WARNING: Numba kernels compiled/loaded inside the timed run of {compiled}")
    for name in ("faiss-float", "sklearn-float"):
        r = jobs.get(name)
        if r and "purity" in r and "error" not in r:
            extra = (f", rounded centroids + Hamming assignment {r['purity_rounded_centroids']:.4f}"
                     if "purity_rounded_centroids" in r else "")
            fa = jobs.get("float-auto", {}).get("purity_at_iteration", {}).get(str(args.float_iters))
            lines.append(f"quality at {args.float_n} x {args.float_k} after {r['n_iter']} iteration(s): "
                         f"{name} purity {r['purity']:.4f}{extra}; ours (auto) after {args.float_iters}: "
                         f"{fa if fa is None else f'{fa:.4f}'}, after {jobs.get('float-auto', {}).get('n_iter')}: "
                         f"{jobs.get('float-auto', {}).get('purity', float('nan')):.4f}")
    t = d["target"]
    measured = t.get("measured_seconds")
    lines.append(
        f"TARGET 1M into 100k, 10 iterations: <= 120 s at p=0.1, <= 240 s at p=0.2 | p={p}: "
        f"measured {fmt_s(measured)} s"
        + (f" vs {t['target_seconds']:.0f} s" if "target_seconds" in t else "")
        + f" -> {t['status']}" + (f" ({t['text']})" if "text" in t else "")
    )
    return "\n".join(lines)


def plot(results: dict, args: argparse.Namespace, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"plot skipped: matplotlib is not usable ({type(exc).__name__}: {exc})"
    ps = list(results)
    fig, axes = plt.subplots(1, len(ps), figsize=(6.5 * len(ps), 4.8), squeeze=False)
    for ax, p in zip(axes[0], ps):
        jobs, d = results[p]["jobs"], results[p]["derived"]
        ours_key = d.get("ours_method")
        for key, shift, color, label in ((ours_key, -0.2, "tab:blue", f"ours ({ours_key}, linked init)"),
                                         ("auto-random", 0.2, "lightsteelblue", "ours (auto, random init)")):
            if key and jobs.get(key, {}).get("history"):
                hist = jobs[key]["history"]
                ax.bar([h["iteration"] + shift for h in hist], [h["seconds"] for h in hist], width=0.4,
                       color=color, label=f"{label}: {jobs[key]['fit_seconds']:.0f} s in all, measured")
        lines = (
            ("brute", "scaled_iteration_seconds", "tab:red", "brute Numba scan (scaled)"),
            ("faiss-flat", "scaled_iteration_seconds", "tab:orange", "FAISS IndexBinaryFlat loop (scaled)"),
            ("faiss-float", "extrapolated_iteration_seconds", "tab:green", "faiss.Kmeans float32 (extrapolated)"),
            ("sklearn-float", "extrapolated_iteration_seconds", "tab:purple", "sklearn KMeans float32 (extrapolated)"),
        )
        for name, key, color, label in lines:
            if name in d:
                ax.axhline(d[name][key], color=color, linestyle="--", label=f"{label}: {d[name][key]:.3g} s")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("seconds per iteration")
        ax.set_title(f"p={p}: {args.n:,} x 256 bits into {args.k:,} clusters")
        ax.legend(fontsize=8, loc="best")
        ax.grid(True, which="both", axis="y", alpha=0.3)
    fig.suptitle("Bk-means per-iteration time: photoclust vs baselines (dashed: per-iteration at full size)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    command = shlex.join([sys.executable, *sys.argv])
    started_utc = _dt.datetime.now(_dt.timezone.utc)
    machine = machine_info(args)
    skip_reasons: dict[str, str] = {}
    if any(m.startswith("faiss") for m in args.methods):
        problem = faiss_problem()
        if problem:
            for m in ("faiss-flat", "faiss-float"):
                skip_reasons[m] = problem
    if "sklearn-float" in args.methods:
        problem = sklearn_problem()
        if problem:
            skip_reasons["sklearn-float"] = problem
    for m, reason in skip_reasons.items():
        if m in args.methods:
            print(f"SKIP {m}: {reason}", flush=True)

    print(f"command: {command}")
    print(f"machine: {machine.get('cpu_model')}, nproc {machine['nproc']}, numba threads {machine['numba_threads']}, "
          f"numpy {machine['numpy']}, numba {machine['numba']}, faiss {machine.get('faiss')}, "
          f"loadavg {tuple(round(x, 2) for x in machine['loadavg_at_start'])}", flush=True)

    results: dict = {}
    for p in args.p:
        jobs: dict = {}
        base = dict(p=p, data_n=args.n, data_k=args.k)
        plan: list[tuple[str, dict]] = []
        for m in args.methods:
            if m in ("auto", "mih"):
                plan.append((m, dict(base, job="ours", assign=m, init="linked", k=args.k, max_iter=args.iters)))
            elif m == "auto-random":
                plan.append((m, dict(base, job="ours", assign="auto", init="random", k=args.k, max_iter=args.iters)))
            elif m == "brute":
                # Random seeds, the same as the faiss-flat loop's; an exhaustive scan costs the same
                # whatever the seeds.
                plan.append((m, dict(base, job="ours", assign="brute", init="random", k=args.k,
                                     max_iter=args.baseline_iters, subset=args.baseline_n)))
            elif m == "faiss-flat":
                plan.append((m, dict(base, job="faiss-flat", k=args.k, max_iter=args.baseline_iters,
                                     subset=args.baseline_n)))
            elif m in ("faiss-float", "sklearn-float"):
                # Float k-means gets its own planted data with float_k true centers, same p and seed.
                fbase = dict(p=p, data_n=args.float_n, data_k=args.float_k, k=args.float_k)
                plan.append((m, dict(fbase, job=m, max_iter=args.float_iters)))
                plan.append(("float-auto", dict(fbase, job="ours", assign="auto", init="linked", max_iter=args.iters,
                                                snapshot_at=args.float_iters)))
                plan.append(("float-brute", dict(fbase, job="ours", assign="brute", init="random",
                                                 max_iter=args.baseline_iters)))
        seen = set()
        for name, spec in plan:
            if name in seen:
                continue
            seen.add(name)
            if name in skip_reasons:
                jobs[name] = dict(spec=spec, skipped=skip_reasons[name])
                continue
            log(f"[p={p}] running {name}: {json.dumps(spec)}")
            jobs[name] = run_worker(spec, args.threads)
            r = jobs[name]
            if "error" in r:
                log(f"[p={p}] {name} FAILED: {r['error']}\n  " + "\n  ".join(r.get("stderr_tail", [])))
            else:
                log(f"[p={p}] {name}: fit {r['fit_seconds']:.3f} s over {r['n_iter']} iteration(s), "
                    f"warm-up {r['warm_up_seconds']:.1f} s, process {r['process_seconds']:.1f} s")
        derived = derive(p, jobs, args)
        results[str(p)] = dict(jobs=jobs, derived=derived)
        print(report(p, jobs, derived, args), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started_utc.strftime("%Y%m%dT%H%M%SZ")
    prefix = "bkmeans_quick" if args.quick else "bkmeans"
    json_path = args.out / f"{prefix}_{stamp}.json"
    png_path = args.out / f"{prefix}.png"
    payload = dict(
        benchmark="bkmeans",
        started_utc=started_utc.isoformat(),
        finished_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(),
        command=command,
        args={key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
              if key != "worker"},
        machine=machine,
        seeds=dict(data=DATA_SEED, init=INIT_SEED, subset=SUBSET_SEED),
        notes=[
            "ours: BKMeans(k, max_iter=iters, tol=0, init='linked', assign, random_state=1).fit on the full "
            "planted_codes(n, k, flip_prob=p, random_state=0); auto-random: the same with init='random'. "
            "fit_seconds is the wall time of fit() (init, iterations and the final relabel pass). tol=0 stops "
            "early only at exact convergence (a round in which no label changed). exact_check: after the "
            "clock stopped, the labels of a random sample compared with an exhaustive scan of the final centers.",
            "brute and faiss-flat: measured on a random subset of baseline_n points (same subset, same initial "
            "centers for both), same k; totals are SCALED: mean s/iteration x (n / baseline_n) x iterations. "
            "Speedups use the iteration count ours actually ran and exclude the baselines' final relabel pass.",
            "faiss-float / sklearn-float: float32 k-means on the 0/1 bits of planted_codes(float_n, float_k, "
            "flip_prob=p, random_state=0); totals are EXTRAPOLATED: mean s/iteration x (n/float_n) x (k/float_k) "
            "x iterations. float-auto / float-brute: ours on the same float-size data.",
            "Each measurement ran in its own subprocess after warming up the Numba kernels on tiny data; "
            "memory_mb.peak_during_run is VmHWM reset right before the timed run (data included).",
            "Targets are information, not assertions.",
        ],
        results=results,
    )
    json_path.write_text(json.dumps(payload, indent=1))
    problem = plot(results, args, png_path)
    print("")
    print(problem or f"plot: {png_path}")
    print(f"results: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
