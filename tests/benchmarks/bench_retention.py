#!/usr/bin/env python
"""Retention soak: with ``max_centers`` the centers held, and the RSS, stay flat on a stream that
keeps founding clusters; without it both keep growing.

Not a pytest test: a script that prints a table and saves ``results/retention_<UTC timestamp>.json``
(``retention_quick_<...>`` with ``--quick``) and a PNG plot with the same name next to it.

The same planted stream is clustered twice by ``core.online.OnlineClusterer``, each run in a process
of its own (``--worker``), so that each has a clean RSS:

* ``off``: no retention (``max_centers=None, max_idle=None``, the default);
* ``on``:  ``max_centers=--max-centers`` (and ``max_idle=--max-idle`` if given).

The two processes run in lockstep: the parent hands them the windows one at a time, alternating
(off then on for even windows, on then off for odd ones), and only one of them works at a time. So
both runs meet the same machine, also when its load changes during the run. A first process only
fills Numba's cache, so that both runs load the kernels rather than compile them (in a first trial
the process that compiled them held 319 MB after warm-up, the one that loaded them 157 MB). Workers
run with one Numba thread by default (``--threads``): on 2 cores, Numba's parallel sections with a
thread per core stall many-fold whenever another process takes a core.

Every window of W photos holds:

* photos of brand-new true clusters (1 - ``--recurring-fraction`` of the window): ``planted_codes``
  with ``--photos-per-center`` photos per true cluster and a random_state of its own per window, so
  that every window founds new centers;
* photos of ``--recurring`` true clusters drawn once for the whole run (``--recurring-fraction``):
  they join the centers founded for them in every window, so that joins happen and those centers stay
  the most recently joined ones (least recently joined centers are retired first).

Window ``w`` is processed with ``now = T0 + 60 w``. Before the windows, each worker warms the Numba
kernels up (``core.warmup.warm_up(256)`` and one tiny clusterer that retires). Per window it records:
centers held (``n_clusters_``), ``next_cluster_id_``, the ids retired, the RSS (``/proc/self/statm``,
after dropping the window's input and ``WindowResult`` and ``gc.collect()``), glibc's bytes in use,
the seconds of ``process`` and of the retirement inside it (``_retire``, timed by wrapping it:
accounting only), and the cores other processes kept busy meanwhile (``/proc/stat`` minus its own
CPU time). Outside the clock it checks that cluster ids are never reused:

* every id of ``WindowResult.new_cluster_ids`` is above every id seen before (held, joined, founded,
  retired) and at or above the previous window's ``next_cluster_id``;
* every retired id was handed out (held at the end of the previous window, or founded in this one),
  is retired once, and never appears again: not among the held ``cluster_ids_``, not as a photo's
  cluster in a later window;
* centers held = ids handed out - ids retired.

Summary: RSS at the start (after warm-up, before window 0), the middle and the end; the RSS growth
over the second half of the run (last window minus the last window of the first half, and a
least-squares slope per window) in both runs and their ratio; the mean (and median) window seconds
of both runs and their ratio (all windows, and the second half, where the retention run retires every
window and rebuilds its index); the id check. Nothing is asserted; there are no thresholds.

The radius is 32 with bit noise 0.05 (as in ``bench_soak.py``), not the stream default 64 / 0.1: at
radius 64, a photo that joins nothing exhausts its MIH budget and is scanned against every center.

Usage:
    python tests/benchmarks/bench_retention.py            # 60 windows of 100,000, max_centers 100,000
    python tests/benchmarks/bench_retention.py --quick    # 20 windows of 5,000, max_centers 2,000
    python tests/benchmarks/bench_retention.py --windows 40 --window 50000 --max-centers 50000
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # this checkout's core/, ahead of an installed (editable) one
sys.path.insert(0, str(HERE))

from bench_bkmeans import _busy_cpu_seconds  # noqa: E402
from bench_memory import n_compiled  # noqa: E402
from bench_soak import MB, log, machine_info, malloc_stats, ols, rss_bytes  # noqa: E402
from report import fill_defaults, save_report  # noqa: E402

RESULT_TAG = "@@RETENTION_BENCH_RESULT "
READY_TAG = "@@RETENTION_BENCH_READY "
ROW_TAG = "@@RETENTION_BENCH_ROW "
T0 = 1_800_000_000.0  # ``now`` of window 0; window w is at T0 + STEP * w
STEP = 60.0
N_BITS = 256
DISTURBED_CORES = 0.3  # a window during which other processes kept more cores busy than this is "disturbed"

FULL = dict(windows=60, window=100_000, max_centers=100_000)
QUICK = dict(windows=20, window=5_000, max_centers=2_000)


# =============================================================================================
# Worker side: one run (retention off or on) per process.
# =============================================================================================


def recurring_centers(spec: dict) -> np.ndarray:
    from core import planted_codes

    k = spec["recurring"]
    return planted_codes(k, k, n_bits=N_BITS, random_state=np.random.default_rng((spec["seed"], 0)))[2]


def window_codes(spec: dict, w: int, recurring: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Window ``w``: photos of new true clusters (their own random_state) and of the recurring ones."""
    from core import planted_codes
    from core.synth import bernoulli_words

    n = spec["window"]
    n_recurring = int(round(n * spec["recurring_fraction"])) if recurring.shape[0] else 0
    n_new = n - n_recurring
    parts = []
    if n_new:
        k_new = max(1, n_new // spec["photos_per_center"])
        parts.append(planted_codes(n_new, k_new, n_bits=N_BITS, flip_prob=spec["flip_prob"],
                                   random_state=np.random.default_rng((spec["seed"], 1, w)))[0])
    rng = np.random.default_rng((spec["seed"], 2, w))
    if n_recurring:
        labels = rng.integers(0, recurring.shape[0], n_recurring)
        noise = bernoulli_words(n_recurring * recurring.shape[1], spec["flip_prob"], rng)
        parts.append(recurring[labels] ^ noise.reshape(n_recurring, -1))
    codes = np.ascontiguousarray(np.concatenate(parts)[rng.permutation(n)])
    return [f"w{w:04d}-{i:07d}" for i in range(n)], codes


class IdCheck:
    """Cluster ids are never reused: see the module docstring. Problems are collected, not raised."""

    def __init__(self) -> None:
        self.next_id = 0  # next_cluster_id after the previous window
        self.max_seen = -1  # highest id seen anywhere so far
        self.retired = np.zeros(0, dtype=np.bool_)  # by id: retired in an earlier window
        self.held = np.zeros(0, dtype=np.int64)  # ids held after the previous window
        self.n_retired = 0
        self.problems: list[str] = []

    def _problem(self, window: int, message: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(f"window {window}: {message}")

    def window(self, result: Any, held: np.ndarray) -> None:
        w = result.window
        new = result.new_cluster_ids
        if result.next_cluster_id < self.next_id:
            self._problem(w, f"next_cluster_id fell from {self.next_id} to {result.next_cluster_id}")
        if new.shape[0] and (int(new[0]) < self.next_id or int(new[0]) <= self.max_seen):
            self._problem(w, f"new id {int(new[0])} is not above the earlier ids (next id was {self.next_id}, "
                             f"highest seen {self.max_seen})")
        self.retired = np.concatenate((self.retired, np.zeros(max(0, result.next_cluster_id - self.retired.shape[0]),
                                                              dtype=np.bool_)))
        joined = result.cluster[result.cluster >= 0]
        if joined.shape[0] and int(joined.max()) >= result.next_cluster_id:
            self._problem(w, f"a photo has cluster {int(joined.max())}, never handed out")
        elif np.any(self.retired[joined]):
            self._problem(w, f"photos joined retired clusters {np.unique(joined[self.retired[joined]])[:5].tolist()}")
        gone = result.retired
        if gone.shape[0]:
            if np.any(np.diff(gone) <= 0):
                self._problem(w, "retired ids are not strictly ascending")
            if int(gone.max()) >= result.next_cluster_id:
                self._problem(w, f"retired id {int(gone.max())} was never handed out")
            else:
                if np.any(self.retired[gone]):
                    self._problem(w, f"ids retired twice: {gone[self.retired[gone]][:5].tolist()}")
                handed = np.isin(gone, self.held) | np.isin(gone, new)
                if not handed.all():
                    self._problem(w, f"retired ids that were not held: {gone[~handed][:5].tolist()}")
                self.retired[gone] = True
            self.n_retired += int(gone.shape[0])
        if held.shape[0]:
            if np.any(np.diff(held) <= 0):
                self._problem(w, "cluster_ids_ are not strictly ascending")
            if int(held.max()) >= result.next_cluster_id:
                self._problem(w, f"held id {int(held.max())} was never handed out")
            elif np.any(self.retired[held]):
                self._problem(w, f"retired ids held again: {held[self.retired[held]][:5].tolist()}")
        if held.shape[0] != result.next_cluster_id - self.n_retired:
            self._problem(w, f"{held.shape[0]} centers held but {result.next_cluster_id} ids handed out and "
                             f"{self.n_retired} retired")
        for ids in (new, joined, gone, held):
            if ids.shape[0]:
                self.max_seen = max(self.max_seen, int(ids.max()))
        self.next_id = result.next_cluster_id
        self.held = np.array(held, dtype=np.int64)

    def report(self) -> dict:
        return dict(ok=not self.problems, problems=self.problems, ids_handed_out=self.next_id,
                    ids_retired=self.n_retired, ids_held=int(self.held.shape[0]))


def timed_retire(clusterer: Any) -> list[float]:
    """Wrap the clusterer's ``_retire`` (private: accounting only); returns the list of its seconds."""
    seconds: list[float] = []
    inner = clusterer._retire

    def retire(now: float) -> np.ndarray:
        started = time.perf_counter()
        out = inner(now)
        seconds.append(time.perf_counter() - started)
        return out

    clusterer._retire = retire
    return seconds


def make_clusterer(spec: dict, window_size: int, max_centers: int | None, max_idle: float | None) -> Any:
    from core.online import OnlineClusterer

    return OnlineClusterer(n_bits=N_BITS, window_size=window_size, radius=spec["radius"],
                           min_cluster_size=spec["min_cluster_size"], max_centers=max_centers, max_idle=max_idle,
                           random_state=spec["seed"])


def warm(spec: dict) -> float:
    """Compile or load every kernel: ``warm_up`` and a tiny clusterer that retires. Returns seconds."""
    from core.warmup import warm_up

    started = time.perf_counter()
    warm_up(N_BITS)
    tiny = make_clusterer(spec, 400, 3, None)
    small = dict(spec, window=400, recurring=4)
    for w in range(3):
        tiny.process(*window_codes(small, w, recurring_centers(small)), now=T0 + STEP * w)
    return time.perf_counter() - started


def send(tag: str, payload: dict) -> None:
    print(tag + json.dumps(payload), flush=True)


def worker(spec: dict) -> None:
    """One run. Warms up, says READY, then processes the window numbers it reads from stdin, one line
    each, answering with the window's row, until ``end``: the parent alternates the two runs window by
    window, so that both meet the same machine."""
    import numba

    import core

    assert Path(core.__file__).resolve().parent == REPO / "core", core.__file__
    warm_s = warm(spec)
    if spec["run"] == "prime":  # only fills Numba's cache, so that both runs load rather than compile
        return
    clusterer = make_clusterer(spec, spec["window"], spec["max_centers"], spec["max_idle"])
    retire_seconds = timed_retire(clusterer)
    recurring = recurring_centers(spec)
    check = IdCheck()
    gc.collect()
    compiled = n_compiled()
    start = dict(rss=rss_bytes(), malloc=malloc_stats())
    log(f"[{spec['run']}] RSS after warm-up {start['rss'] / MB:.1f} MB (warm-up {warm_s:.1f} s)")
    send(READY_TAG, start)
    rows = []
    for line in sys.stdin:
        if line.strip() == "end":
            break
        w = int(line)
        started = time.perf_counter()
        ids, codes = window_codes(spec, w, recurring)
        data_s = time.perf_counter() - started
        n_retire_calls = len(retire_seconds)
        busy, own = _busy_cpu_seconds(), time.process_time()
        started = time.perf_counter()
        result = clusterer.process(ids, codes, now=T0 + STEP * w)
        window_s = time.perf_counter() - started
        own, busy = time.process_time() - own, _busy_cpu_seconds() - busy
        check.window(result, np.asarray(clusterer.cluster_ids_))
        row = dict(window=w, centers=clusterer.n_clusters_, next_cluster_id=clusterer.next_cluster_id_,
                   new_clusters=result.n_new_clusters, retired=int(result.retired.shape[0]),
                   joined=result.n_joined, founded=result.n_founded, held=result.n_held, noise=result.n_noise,
                   pending=clusterer.n_pending_, window_seconds=window_s,
                   retire_seconds=sum(retire_seconds[n_retire_calls:]), data_seconds=data_s,
                   other_cores=max(busy - own, 0.0) / window_s,
                   stream_digest=hashlib.sha1(codes.tobytes()).hexdigest()[:12])
        del ids, codes, result
        gc.collect()
        row.update(rss=rss_bytes(), malloc_in_use=(malloc_stats() or {}).get("in_use"))
        rows.append(row)
        log(f"[{spec['run']:>3}] window {w:3d}: centers {row['centers']:>8,}  next id {row['next_cluster_id']:>8,}  "
            f"retired {row['retired']:>6,}  RSS {row['rss'] / MB:7.1f} MB  {window_s:6.2f} s")
        send(ROW_TAG, row)
    send(RESULT_TAG, dict(spec=spec, start=start, rows=rows, id_check=check.report(), warm_up_seconds=warm_s,
                          kernels_compiled_during_run=n_compiled() - compiled, numba_threads=numba.get_num_threads()))


# =============================================================================================
# Parent side.
# =============================================================================================


def worker_command(spec: dict, threads: int | None) -> dict:
    """Arguments of ``subprocess.run`` / ``Popen`` for a worker of ``spec``."""
    env = dict(os.environ)
    if threads:
        env.update(NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    return dict(args=[sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)], env=env, cwd=REPO)


class Run:
    """A worker process (one run), driven window by window over its stdin / stdout."""

    def __init__(self, spec: dict, threads: int | None) -> None:
        self.name = spec["run"]
        self.proc = subprocess.Popen(**worker_command(spec, threads), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def read(self, tag: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith(tag):
                return json.loads(line[len(tag):])
        raise RuntimeError(f"worker {self.name} exited with {self.proc.wait()} before {tag.strip()}")

    def ask(self, line: str, tag: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read(tag)

    def finish(self) -> dict:
        result = self.ask("end", RESULT_TAG)
        self.proc.stdin.close()
        self.proc.wait()
        return result


def run_both(base: dict, args: argparse.Namespace) -> tuple[dict, dict]:
    """Prime Numba's cache, start both runs (one after the other), then alternate them window by
    window: off, on for even windows, on, off for odd ones."""
    prime = subprocess.run(**worker_command(dict(base, run="prime"), args.threads))
    if prime.returncode:
        raise RuntimeError(f"priming worker exited with {prime.returncode}")
    runs = {}
    for name, max_centers, max_idle in (("off", None, None), ("on", args.max_centers, args.max_idle)):
        runs[name] = Run(dict(base, run=name, max_centers=max_centers, max_idle=max_idle), args.threads)
        runs[name].read(READY_TAG)
    for w in range(args.windows):
        for name in (("off", "on") if w % 2 == 0 else ("on", "off")):
            runs[name].ask(str(w), ROW_TAG)
    return runs["off"].finish(), runs["on"].finish()


def summarise(run: dict) -> dict:
    rows = run["rows"]
    n = len(rows)
    half = n // 2  # second half: windows half .. n-1; its growth is measured from the end of window half - 1
    rss = np.array([r["rss"] for r in rows], dtype=np.float64)
    secs = np.array([r["window_seconds"] for r in rows])
    other = np.array([r["other_cores"] for r in rows])
    tail = np.arange(max(half - 1, 0), n)
    slope = ols(tail.astype(np.float64), rss[tail])["slope"]
    capped = [r["window"] for r in rows if r["retired"]]
    return dict(
        run=run["spec"]["run"],
        max_centers=run["spec"]["max_centers"],
        max_idle=run["spec"]["max_idle"],
        rss_start_mb=run["start"]["rss"] / MB,
        rss_after_first_window_mb=rss[0] / MB,
        rss_middle_mb=rss[half - 1] / MB if half else None,
        rss_end_mb=rss[-1] / MB,
        middle_window=half - 1,
        second_half_windows=[half, n - 1],
        second_half_growth_mb=(rss[-1] - rss[half - 1]) / MB if half else None,
        second_half_growth_mb_per_window=(rss[-1] - rss[half - 1]) / MB / (n - half) if half else None,
        second_half_slope_mb_per_window=slope / MB,
        centers_middle=rows[half - 1]["centers"] if half else None,
        centers_end=rows[-1]["centers"],
        next_cluster_id_end=rows[-1]["next_cluster_id"],
        retired_total=sum(r["retired"] for r in rows),
        first_retiring_window=capped[0] if capped else None,
        mean_window_seconds=float(secs.mean()),
        mean_window_seconds_second_half=float(secs[half:].mean()),
        median_window_seconds=float(np.median(secs)),
        median_window_seconds_second_half=float(np.median(secs[half:])),
        mean_retire_seconds_second_half=float(np.mean([r["retire_seconds"] for r in rows[half:]])),
        total_window_seconds=float(secs.sum()),
        other_cores_mean=float(other.mean()),
        other_cores_max=float(other.max()),
        windows_disturbed=int(np.count_nonzero(other > DISTURBED_CORES)),
        id_check=run["id_check"],
        kernels_compiled_during_run=run["kernels_compiled_during_run"],
        numba_threads=run["numba_threads"],
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(off: dict, on: dict, s_off: dict, s_on: dict) -> dict:
    """Retention on over off. The RSS ratios are only meaningful when ``off`` grew."""
    same = [a["stream_digest"] == b["stream_digest"] for a, b in zip(off["rows"], on["rows"])]
    return dict(
        second_half_growth_ratio_on_over_off=ratio(s_on["second_half_growth_mb"], s_off["second_half_growth_mb"]),
        second_half_slope_ratio_on_over_off=ratio(s_on["second_half_slope_mb_per_window"],
                                                  s_off["second_half_slope_mb_per_window"]),
        mean_window_seconds_ratio_on_over_off=ratio(s_on["mean_window_seconds"], s_off["mean_window_seconds"]),
        mean_window_seconds_second_half_ratio_on_over_off=ratio(s_on["mean_window_seconds_second_half"],
                                                                s_off["mean_window_seconds_second_half"]),
        median_window_seconds_ratio_on_over_off=ratio(s_on["median_window_seconds"], s_off["median_window_seconds"]),
        same_stream_in_both_runs=all(same) and len(off["rows"]) == len(on["rows"]),
    )


def print_table(off: dict, on: dict) -> None:
    cols = f"{'centers':>9}{'next id':>10}{'retired':>8}{'RSS MB':>8}{'win s':>7}{'other':>6}"
    width = len(cols)
    on_title = f"retention on, max_centers {on['spec']['max_centers']:,}"
    print(f"\n{'':>4} | {'retention off':^{width}} | {on_title:^{width}}")
    print(f"{'win':>4} | {cols} | {cols}")
    fmt = lambda r: (f"{r['centers']:>9,}{r['next_cluster_id']:>10,}{r['retired']:>8,}"  # noqa: E731
                     f"{r['rss'] / MB:>8.1f}{r['window_seconds']:>7.2f}{r['other_cores']:>6.2f}")
    for a, b in zip(off["rows"], on["rows"]):
        print(f"{a['window']:>4} | {fmt(a)} | {fmt(b)}")


def summary_lines(s_off: dict, s_on: dict, c: dict) -> list[str]:
    f = lambda v, spec=".1f": "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = [""]
    for s in (s_off, s_on):
        lines.append(
            f"{s['run']:>3}: RSS start {f(s['rss_start_mb'])} MB, middle (after window {s['middle_window']}) "
            f"{f(s['rss_middle_mb'])} MB, end {f(s['rss_end_mb'])} MB; second half (windows "
            f"{s['second_half_windows'][0]}..{s['second_half_windows'][1]}): "
            f"{f(s['second_half_growth_mb'], '+.1f')} MB, "
            f"{f(s['second_half_growth_mb_per_window'], '+.3f')} MB/window "
            f"(slope {f(s['second_half_slope_mb_per_window'], '+.3f')}); "
            f"centers {s['centers_middle']:,} -> {s['centers_end']:,}, ids handed out {s['next_cluster_id_end']:,}, "
            f"retired {s['retired_total']:,}"
            + (f" (first in window {s['first_retiring_window']})" if s["first_retiring_window"] is not None else ""))
    lines.append(f"RSS growth over the second half, on / off: {f(c['second_half_growth_ratio_on_over_off'], '.3f')} "
                 f"(slopes: {f(c['second_half_slope_ratio_on_over_off'], '.3f')})")
    lines.append(f"mean window seconds: off {s_off['mean_window_seconds']:.3f}, on {s_on['mean_window_seconds']:.3f}, "
                 f"on / off {f(c['mean_window_seconds_ratio_on_over_off'], '.3f')}; second half: off "
                 f"{s_off['mean_window_seconds_second_half']:.3f}, on {s_on['mean_window_seconds_second_half']:.3f} "
                 f"(of which retirement {s_on['mean_retire_seconds_second_half']:.3f}), on / off "
                 f"{f(c['mean_window_seconds_second_half_ratio_on_over_off'], '.3f')}; medians: off "
                 f"{s_off['median_window_seconds']:.3f}, on {s_on['median_window_seconds']:.3f}, on / off "
                 f"{f(c['median_window_seconds_ratio_on_over_off'], '.3f')}")
    for s in (s_off, s_on):
        lines.append(f"other processes during the {s['run']} windows: {s['other_cores_mean']:.2f} cores on average, "
                     f"at most {s['other_cores_max']:.2f}; {s['windows_disturbed']} window(s) above "
                     f"{DISTURBED_CORES} cores")
    for s in (s_off, s_on):
        check = s["id_check"]
        verdict = "ok, no id reused" if check["ok"] else f"{len(check['problems'])} PROBLEM(S): {check['problems'][:3]}"
        lines.append(f"id check {s['run']}: {verdict} (ids handed out {check['ids_handed_out']:,}, retired "
                     f"{check['ids_retired']:,}, held {check['ids_held']:,})")
    same = "yes" if c["same_stream_in_both_runs"] else "NO"
    lines.append(f"same stream in both runs (digest of every window's codes): {same}")
    for s in (s_off, s_on):
        if s["kernels_compiled_during_run"]:
            lines.append(f"WARNING: {s['run']}: {s['kernels_compiled_during_run']} Numba kernel(s) compiled "
                         "during the windows")
    return lines


def plot(off: dict, on: dict, s_on: dict, path: Path, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except Exception as exc:
        return f"plot skipped: matplotlib is not usable ({type(exc).__name__}: {exc})"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    runs = ((off, "retention off", "tab:red"), (on, f"max_centers {on['spec']['max_centers']:,}", "tab:blue"))
    half = len(off["rows"]) // 2
    for ax in axes:
        ax.axvspan(half - 0.5, len(off["rows"]) - 0.5, color="0.92", zorder=0)
        if s_on["first_retiring_window"] is not None:
            ax.axvline(s_on["first_retiring_window"], color="tab:blue", linestyle=":", alpha=0.7)
        ax.set_xlabel("window")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for run, label, color in runs:
        w = [r["window"] for r in run["rows"]]
        axes[0].plot(w, [r["rss"] / MB for r in run["rows"]], "o-", ms=3, color=color, label=label)
        axes[1].plot(w, [r["centers"] for r in run["rows"]], "o-", ms=3, color=color, label=f"{label}: centers held")
        axes[2].plot(w, [r["window_seconds"] for r in run["rows"]], "o-", ms=3, color=color, label=label)
    w = [r["window"] for r in on["rows"]]
    axes[1].plot(w, [r["next_cluster_id"] for r in on["rows"]], "--", color="tab:blue", alpha=0.6,
                 label="max_centers run: next_cluster_id")
    axes[2].plot(w, [r["retire_seconds"] for r in on["rows"]], "x:", ms=4, color="tab:blue", alpha=0.7,
                 label="of which retirement")
    axes[0].set_ylabel("RSS after the window, MB")
    axes[0].set_title("RSS (second half shaded)")
    axes[1].set_ylabel("centers")
    axes[1].set_title("centers held")
    axes[2].set_ylabel("seconds")
    axes[2].set_title("window time (process)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, help="windows per run (default 60; quick 20)")
    ap.add_argument("--window", type=int, help="photos per window (default 100000; quick 5000)")
    ap.add_argument("--max-centers", type=int, help="max_centers of the retention run (default 100000; quick 2000)")
    ap.add_argument("--max-idle", type=float, help="max_idle (seconds; a window is 60 s) of the retention run too")
    ap.add_argument("--recurring", type=int, default=200, help="true clusters that recur in every window")
    ap.add_argument("--recurring-fraction", type=float, default=0.15, help="share of a window from recurring clusters")
    ap.add_argument("--photos-per-center", type=int, default=12, help="photos per new true cluster in its window")
    ap.add_argument("--flip-prob", type=float, default=0.05, help="bit noise of a photo around its true center")
    ap.add_argument("--radius", type=int, default=32, help="OnlineClusterer radius")
    ap.add_argument("--min-cluster-size", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="NUMBA_NUM_THREADS of the workers (default 1; 0: Numba's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run (explicit flags still win)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    fill_defaults(args, QUICK if args.quick else FULL)

    command = shlex.join([Path(sys.executable).name, *sys.argv])
    machine = machine_info()
    title = (f"photoclust retention soak: {args.windows} windows of {args.window:,} photos "
             f"({1 - args.recurring_fraction:.0%} new true clusters x {args.photos_per_center}, "
             f"{args.recurring_fraction:.0%} from {args.recurring} recurring), radius {args.radius}, "
             f"flip_prob {args.flip_prob}")
    print(f"command: {command}")
    print(f"machine: {machine.get('cpu_model')}, nproc {machine['nproc']}, loadavg "
          f"{tuple(round(x, 2) for x in machine['loadavg_at_start'])}")
    print(title, flush=True)
    base = dict(windows=args.windows, window=args.window, recurring=args.recurring,
                recurring_fraction=args.recurring_fraction, photos_per_center=args.photos_per_center,
                flip_prob=args.flip_prob, radius=args.radius, min_cluster_size=args.min_cluster_size, seed=args.seed)
    started = time.perf_counter()
    off, on = run_both(base, args)
    seconds = time.perf_counter() - started
    s_off, s_on = summarise(off), summarise(on)
    c = compare(off, on, s_off, s_on)
    print_table(off, on)
    lines = summary_lines(s_off, s_on, c)
    lines.append(f"both runs took {seconds:.0f} s; loadavg at the end {tuple(round(x, 2) for x in os.getloadavg())}")
    print("\n".join(lines), flush=True)

    path = save_report(args.out, "retention_quick" if args.quick else "retention", dict(
        command=command,
        args={k: v for k, v in vars(args).items() if k != "worker"},
        machine=machine,
        seconds=seconds,
        notes=[
            "MB = 2**20 bytes. RSS = /proc/self/statm of the worker process of each run, read after every window "
            "once the window's input and WindowResult are dropped and gc.collect() ran; start = after warm-up.",
            "The runs are separate processes on the same planted stream, driven in lockstep: window w is processed "
            "by off then on for even w, on then off for odd w, one process at a time. A priming process fills "
            "Numba's cache first, so that both load the kernels.",
            "other_cores = cores busy with other processes during the window's process() (/proc/stat busy time "
            "minus the worker's own CPU time, over the window's wall time).",
            "second half: windows n//2 .. n-1; growth = RSS after the last window - RSS after window n//2 - 1; "
            "slope = least squares of RSS on window over windows n//2 - 1 .. n-1.",
            "window_seconds = OnlineClusterer.process; retire_seconds = its _retire call (index rebuild), timed by "
            "wrapping the private method.",
            "radius 32 with flip_prob 0.05, as bench_soak.py: at the default radius 64 every photo that joins "
            "nothing is scanned against every center, so windows would slow down with the centers.",
            "No thresholds, nothing asserted.",
        ],
        summaries=dict(off=s_off, on=s_on),
        comparison=c,
        runs=dict(off=off, on=on),
    ))
    problem = plot(off, on, s_on, path.with_suffix(".png"), title)
    print(problem or f"plot: {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
