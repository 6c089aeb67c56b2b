"""Run the stream benchmark on an earlier version and on this checkout, back to back, and print ratios.

The earlier version is checked out into a git worktree (``--rev``, default ``HEAD~1``), and each
version runs its *own* ``tests/benchmarks/bench_stream.py`` with the same arguments on the same
broker, one after the other in this one run, so that both meet the same machine. Prints the
photos/s of every (mode, run) with new / old, and, where a mode has a ``baseline`` run, the
worker / plain-loop ratio of each version; saves both reports plus the ratios to
``tests/benchmarks/results/compare_<timestamp>.json``.

A 1M-photo batch run varies by up to 10 % from one run to the next on this 2-core machine.
``--repeat N`` runs old and new alternately N times (one JSON file, every run kept) and prints the
median of each ratio; ``new_rev`` says ``+changes`` when the checkout has uncommitted changes.

Usage:
    python tests/benchmarks/compare_versions.py --rev f3740dd -- --quick --kinds backlog live-max
    python tests/benchmarks/compare_versions.py --rev 4c1bd5a --repeat 3 -- --modes batch \
        --kinds backlog baseline --photos 1000000 --window 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from report import save_report

REPO = Path(__file__).resolve().parents[2]


def run_bench(checkout: Path, bench_args: list[str], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(checkout / "tests" / "benchmarks" / "bench_stream.py"), *bench_args,
               "--out", str(out), "--workdir", str(out / "work")]
    print("$", " ".join(command), flush=True)
    before = set(out.glob("stream_*.json"))
    subprocess.run(command, cwd=checkout, check=True)
    (report,) = set(out.glob("stream_*.json")) - before
    return json.loads(report.read_text())


def rates(report: dict[str, Any]) -> dict[str, float]:
    """photos/s per "mode/kind" (and after window 0), plus "mode: worker/baseline" where both ran."""
    out = {}
    for mode, runs in report["runs"].items():
        for kind, run in runs.items():
            if isinstance(run, dict) and "photos_per_s" in run and kind != "backlog_produce":
                out[f"{mode}/{kind}"] = run["photos_per_s"]
                if "after_window0" in run:
                    out[f"{mode}/{kind} after window 0"] = run["after_window0"]["photos_per_s"]
    return out


def worker_over_baseline(rates_of_run: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, value in rates_of_run.items():
        mode, _, kind = name.partition("/")
        if not kind.startswith("backlog"):
            continue
        suffix = kind[len("backlog"):]  # "" or " after window 0"
        baseline = rates_of_run.get(f"{mode}/baseline{suffix}")
        if baseline is not None:
            out[f"{mode}: worker/baseline{suffix}"] = round(value / baseline, 3)
    return out


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, text=True, capture_output=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", default="HEAD~1", help="the earlier version (any git revision)")
    ap.add_argument("--repeat", type=int, default=1, help="old and new runs, alternately [1]")
    ap.add_argument("--out", default=str(REPO / "tests" / "benchmarks" / "results"))
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench_stream.py, after --")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1, got {args.repeat}")
    bench_args = [a for a in args.bench_args if a != "--"]
    rev = git("rev-parse", "--short", args.rev)
    head = git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="photoclust-compare-") as tmp:
        old_checkout = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_checkout), rev], cwd=REPO, check=True)
        try:
            for _ in range(args.repeat):
                old = run_bench(old_checkout, bench_args, Path(tmp) / "old-results")
                new = run_bench(REPO, bench_args, Path(tmp) / "new-results")
                runs.append({"old": old, "new": new})
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_checkout)], cwd=REPO, check=False)
    table: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        old_rates, new_rates = rates(run["old"]), rates(run["new"])
        old_rates.update(worker_over_baseline(old_rates))
        new_rates.update(worker_over_baseline(new_rates))
        for name in sorted(set(old_rates) & set(new_rates)):
            table.setdefault(name, []).append((old_rates[name], new_rates[name]))
    ratios = {name: round(statistics.median(n / o for o, n in pairs), 3) for name, pairs in table.items()
              if "worker/baseline" not in name and all(o for o, _ in pairs)}
    print(f"\n{'run':<40} {'old ' + rev:>16} {'new ' + head:>16} {'new/old':>8}   (medians of {len(runs)} runs)")
    for name, pairs in table.items():
        old_median = statistics.median(o for o, _ in pairs)
        new_median = statistics.median(n for _, n in pairs)
        ratio = f"{ratios[name]:>8.3f}" if name in ratios else " " * 8
        print(f"{name:<40} {old_median:>16,.3f} {new_median:>16,.3f} {ratio}" if "worker/baseline" in name else
              f"{name:<40} {old_median:>16,.0f} {new_median:>16,.0f} {ratio}")
        if len(pairs) > 1:
            each = (lambda v: f"{v:.3f}") if "worker/baseline" in name else (lambda v: f"{v:,.0f}")
            print(f"{'  each run:':<40} {', '.join(each(o) for o, _ in pairs)} | {', '.join(each(n) for _, n in pairs)}")
    report: dict[str, Any] = {"old_rev": rev, "new_rev": head, "bench_args": bench_args, "repeat": args.repeat,
                              "ratios": ratios,
                              "medians": {name: {"old": statistics.median(o for o, _ in pairs),
                                                 "new": statistics.median(n for _, n in pairs)}
                                          for name, pairs in table.items()}}
    if len(runs) == 1:
        report.update(runs[0])  # the layout of single runs, as before
    else:
        report["runs"] = runs
    save_report(args.out, "compare", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
