"""Run the stream benchmark on an earlier version and on this checkout, back to back, and print ratios.

The earlier version is checked out into a git worktree (``--rev``, default ``HEAD~1``), and each
version runs its *own* ``tests/benchmarks/bench_stream.py`` with the same arguments on the same
broker, one after the other in this one run, so that both meet the same machine. Prints the
photos/s of every (mode, run) with new / old, and saves both reports plus the ratios to
``tests/benchmarks/results/compare_<timestamp>.json``.

Usage:
    python tests/benchmarks/compare_versions.py --rev f3740dd -- --quick --kinds backlog live-max
"""

from __future__ import annotations

import argparse
import json
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
    subprocess.run(command, cwd=checkout, check=True)
    reports = sorted(out.glob("stream_*.json"))
    return json.loads(reports[-1].read_text())


def rates(report: dict[str, Any]) -> dict[str, float]:
    out = {}
    for mode, runs in report["runs"].items():
        for kind, run in runs.items():
            if isinstance(run, dict) and "photos_per_s" in run and kind != "backlog_produce":
                out[f"{mode}/{kind}"] = run["photos_per_s"]
                if "after_window0" in run:
                    out[f"{mode}/{kind} after window 0"] = run["after_window0"]["photos_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", default="HEAD~1", help="the earlier version (any git revision)")
    ap.add_argument("--out", default=str(REPO / "tests" / "benchmarks" / "results"))
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench_stream.py, after --")
    args = ap.parse_args(argv)
    bench_args = [a for a in args.bench_args if a != "--"]
    rev = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=REPO, check=True, text=True,
                         capture_output=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True, text=True,
                          capture_output=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="photoclust-compare-") as tmp:
        old_checkout = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_checkout), rev], cwd=REPO, check=True)
        try:
            old = run_bench(old_checkout, bench_args, Path(tmp) / "old-results")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_checkout)], cwd=REPO, check=False)
        new = run_bench(REPO, bench_args, Path(tmp) / "new-results")
    old_rates, new_rates = rates(old), rates(new)
    ratios = {name: round(new_rates[name] / old_rates[name], 3) for name in new_rates
              if name in old_rates and old_rates[name]}
    print(f"\n{'run':<36} {'old ' + rev:>14} {'new ' + head:>14} {'new/old':>8}")
    for name in sorted(set(old_rates) | set(new_rates)):
        print(f"{name:<36} {old_rates.get(name, float('nan')):>14,.0f} {new_rates.get(name, float('nan')):>14,.0f} "
              f"{ratios.get(name, float('nan')):>8.3f}")
    save_report(args.out, "compare", {"old_rev": rev, "new_rev": head, "bench_args": bench_args, "ratios": ratios,
                                      "old": old, "new": new})
    return 0


if __name__ == "__main__":
    sys.exit(main())
