#!/usr/bin/env python
"""Gong et al. (CVPR 2015), Figure 1 and Table 2, on real images: Bk-means against float k-means,
KDk-means and k-medoids on the same 256-bit ITQ codes.

Data (``datasets.py``; install with ``setup.sh``): the held-out **test** splits of Fashion-MNIST
(10,000 images), MNIST (10,000) and both together ("combined", 20,000 images, 20 classes).
Features are learned on the train splits only:

* ``pixels``: raw pixels;
* ``mlp``: last hidden layer (512 ReLU units) of an MLP classifier trained on the train split.

Codes: ``ITQ(n_bits=256, n_iter=50, random_state=0)`` fitted on ``--itq-train`` (20,000 by
default) random train images' features, then applied to the test images: the paper's pipeline
(features, then ITQ to 256 bits).

Methods, all on those codes, all with ``--max-iter`` iterations at most (20), same seeds:

* ``kmeans``:   float k-means, ``faiss.Kmeans`` on the 0/1 bits as float32 (no subsampling);
* ``bkmeans``:  ours, ``BKMeans(k, max_iter, tol=0, init="random", assign="auto")``;
* ``kdkmeans``: k-means whose assignment is an approximate randomized kd-forest search
  (4 trees, 32 checks; see ``kdkmeans.py``);
* ``kmedoids``: alternating k-medoids in Hamming distance (``kdkmeans.py``).

Bk-means, KDk-means and k-medoids start from the same k random codes for a given seed (FAISS picks
its own k random points from its seed). Each time is the wall time of the fit including the final
labelling, after a warm-up that compiles every Numba kernel; data preparation (unpacking bits to
floats) is not timed. Numba and FAISS use every core (2 here).

Writes ``results/paper.json`` (every run, and the mean/std table), ``results/paper.md``,
``results/purity_vs_k.png`` and ``results/time_vs_k.png``.

    python tests/benchmarks/experiments/paper.py            # full: 3 x 2 x 5 k x 4 methods x 3 seeds
    python tests/benchmarks/experiments/paper.py --quick    # fashion/pixels, k 10 50, 1 seed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[2]))

import datasets  # noqa: E402
from kdkmeans import HammingKMedoids, KDKMeans  # noqa: E402

from core.bkmeans import BKMeans  # noqa: E402
from core.codes import unpack_bits  # noqa: E402
from core.itq import ITQ  # noqa: E402
from core.metrics import normalized_mutual_info, purity  # noqa: E402

METHODS = ("kmeans", "bkmeans", "kdkmeans", "kmedoids")
LABELS = {"kmeans": "k-means (float, FAISS)", "bkmeans": "Bk-means (ours)", "kdkmeans": "KDk-means",
          "kmedoids": "k-medoids (Hamming)"}
COLORS = {"kmeans": "tab:blue", "bkmeans": "tab:red", "kdkmeans": "tab:green", "kmedoids": "tab:purple"}


# -- codes ---------------------------------------------------------------------------------------------


def codes_for(name: str, feature: str, itq_train: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """256-bit ITQ codes of ``name``'s test images under ``feature``, their labels and info (cached)."""
    cache = datasets.cache_dir() / f"codes_{name}_{feature}_itq{itq_train}_v1.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["codes"], z["labels"], json.loads(str(z["info"]))
    data = datasets.load(name)
    train, test, info = datasets.features(data, feature)
    rng = np.random.default_rng(0)
    subset = np.sort(rng.choice(train.shape[0], size=min(itq_train, train.shape[0]), replace=False))
    started = time.perf_counter()
    itq = ITQ(n_bits=256, n_iter=50, random_state=0).fit(np.ascontiguousarray(train[subset], dtype=np.float32))
    codes = itq.transform(np.ascontiguousarray(test, dtype=np.float32))
    info = {**info, "n_features": int(test.shape[1]), "itq_train": int(len(subset)),
            "itq_seconds": round(time.perf_counter() - started, 1), "n_test": int(test.shape[0]),
            "n_classes": data.n_classes}
    np.savez(cache, codes=codes, labels=data.y_test, info=json.dumps(info))
    return codes, data.y_test, info


# -- methods ---------------------------------------------------------------------------------------------


def run_method(method: str, codes: np.ndarray, bits: np.ndarray, k: int, seed: int, max_iter: int) -> dict:
    started = time.perf_counter()
    if method == "kmeans":
        import faiss

        km = faiss.Kmeans(bits.shape[1], k, niter=max_iter, seed=seed + 1, verbose=False,
                          max_points_per_centroid=bits.shape[0], min_points_per_centroid=1)
        km.train(bits)
        _, labels = km.index.search(bits, 1)
        labels, n_iter = labels[:, 0].astype(np.int64), max_iter
    elif method == "bkmeans":
        model = BKMeans(k, max_iter=max_iter, tol=0.0, init="random", assign="auto", random_state=seed).fit(codes)
        labels, n_iter = model.labels_, model.n_iter_
    elif method == "kdkmeans":
        model = KDKMeans(k, max_iter=max_iter, n_trees=4, checks=32, random_state=seed).fit(bits)
        labels, n_iter = model.labels_, model.n_iter_
    elif method == "kmedoids":
        model = HammingKMedoids(k, max_iter=max_iter, random_state=seed).fit(codes)
        labels, n_iter = model.labels_, model.n_iter_
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "iterations": int(n_iter), "labels": labels}


def warm_up() -> None:
    """Compile (or load) every Numba kernel and start FAISS before anything is timed."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, size=(600, 4), dtype=np.uint64)
    bits = unpack_bits(codes).astype(np.float32)
    for method in METHODS:
        run_method(method, codes, bits, 20, 0, 3)


# -- tables and plots ------------------------------------------------------------------------------------


def aggregate(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["dataset"], r["features"], r["k"]) for r in runs},
                  key=lambda t: (DATASET_ORDER.index(t[0]), FEATURE_ORDER.index(t[1]), t[2]))
    for dataset, feature, k in keys:
        row = {"dataset": dataset, "features": feature, "k": k}
        here = [r for r in runs if (r["dataset"], r["features"], r["k"]) == (dataset, feature, k)]
        for method in METHODS:
            mine = [r for r in here if r["method"] == method]
            if not mine:
                continue
            for metric in ("purity", "nmi", "seconds", "iterations"):
                values = np.array([r[metric] for r in mine], dtype=np.float64)
                row[f"{method}_{metric}"] = float(values.mean())
                row[f"{method}_{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row["n_seeds"] = len(mine)
        pairs = {}
        for r in here:
            pairs.setdefault(r["seed"], {})[r["method"]] = r["seconds"]
        speedups = np.array([p["kmeans"] / p["bkmeans"] for p in pairs.values() if "kmeans" in p and "bkmeans" in p])
        if speedups.size:
            row["speedup_mean"] = float(speedups.mean())
            row["speedup_std"] = float(speedups.std(ddof=1)) if speedups.size > 1 else 0.0
        if "kmeans_purity" in row and "bkmeans_purity" in row:
            row["bk_minus_kmeans_purity"] = row["bkmeans_purity"] - row["kmeans_purity"]
        rows.append(row)
    return rows


DATASET_ORDER = list(datasets.DATASETS)
FEATURE_ORDER = list(datasets.FEATURE_SETS)


def markdown(rows: list[dict], meta: dict) -> str:
    methods = [m for m in METHODS if any(f"{m}_purity" in r for r in rows)]
    out = [f"Test splits; 256-bit ITQ codes; {meta['max_iter']} iterations at most; seeds {meta['seeds']}; "
           "mean ± std over seeds. Purity and NMI in %. Time in seconds (wall, 2 cores, nice 19 on a shared "
           "machine). Speedup = k-means time / Bk-means time, per seed, then averaged.", ""]
    for dataset in DATASET_ORDER:
        for feature in FEATURE_ORDER:
            mine = [r for r in rows if r["dataset"] == dataset and r["features"] == feature]
            if not mine:
                continue
            info = meta["codes"].get(f"{dataset}/{feature}", {})
            extra = f", MLP held-out accuracy {100 * info['test_accuracy']:.1f} %" if "test_accuracy" in info else ""
            out += [f"### {dataset}, {feature} ({info.get('n_test', '?')} images, {info.get('n_classes', '?')} classes{extra})", ""]
            head = ["k"] + [f"{m} purity" for m in methods] + ["Bk − k-means"] + [f"{m} NMI" for m in methods]
            head += [f"{m} time" for m in methods] + ["speedup"]
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            for r in mine:
                cells = [str(r["k"])]
                cells += [f"{100 * r[f'{m}_purity']:.1f} ± {100 * r[f'{m}_purity_std']:.1f}" for m in methods]
                diff = r.get("bk_minus_kmeans_purity")
                cells.append("" if diff is None else f"{100 * diff:+.1f}")
                cells += [f"{100 * r[f'{m}_nmi']:.1f}" for m in methods]
                cells += [f"{r[f'{m}_seconds']:.2f}" for m in methods]
                cells.append(f"{r['speedup_mean']:.1f}× ± {r['speedup_std']:.1f}" if "speedup_mean" in r else "")
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def plot(rows: list[dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, f) for d in DATASET_ORDER for f in FEATURE_ORDER
              if any(r["dataset"] == d and r["features"] == f for r in rows)]
    methods = [m for m in METHODS if any(f"{m}_purity" in r for r in rows)]
    written = []
    for metric, fname, ylabel, log in (("purity", "purity_vs_k.png", "purity (%)", False),
                                       ("seconds", "time_vs_k.png", "time (s, log)", True)):
        n_cols = min(3, len(panels))
        n_rows = (len(panels) + n_cols - 1) // n_cols
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.6 * n_cols, 3.6 * n_rows), squeeze=False)
        for ax, (dataset, feature) in zip(axes.flat, panels):
            mine = [r for r in rows if r["dataset"] == dataset and r["features"] == feature]
            ks = [r["k"] for r in mine]
            scale = 100.0 if metric == "purity" else 1.0
            for m in methods:
                y = np.array([r[f"{m}_{metric}"] for r in mine]) * scale
                e = np.array([r[f"{m}_{metric}_std"] for r in mine]) * scale
                ax.errorbar(ks, y, yerr=e, marker="o", ms=4, capsize=2, color=COLORS[m], label=LABELS[m])
            ax.set_xscale("log")
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{dataset}, {feature}")
            ax.set_xlabel("number of centers k")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        written.append(str(out_dir / fname))
    return written


# -- main ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(datasets.DATASETS), choices=datasets.DATASETS)
    parser.add_argument("--features", nargs="+", default=list(datasets.FEATURE_SETS), choices=datasets.FEATURE_SETS)
    parser.add_argument("--ks", nargs="+", type=int, default=[10, 50, 100, 500, 1000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--itq-train", type=int, default=20_000, help="train images ITQ is fitted on")
    parser.add_argument("--quick", action="store_true", help="fashion/pixels, k 10 50, seed 0 (a smoke run)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="paper", help="basename of the .json/.md outputs")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.features, args.ks, args.seeds = ["fashion"], ["pixels"], [10, 50], [0]
        args.name = "paper_quick" if args.name == "paper" else args.name
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    print("warming up Numba kernels and FAISS ...", flush=True)
    warm_up()
    runs: list[dict] = []
    meta: dict = {"max_iter": args.max_iter, "seeds": args.seeds, "ks": args.ks, "methods": args.methods,
                  "itq_train": args.itq_train, "codes": {}, "machine": {
                      "platform": platform.platform(), "python": platform.python_version(),
                      "cpus": os.cpu_count(), "nice": os.nice(0)}}
    for dataset in args.datasets:
        for feature in args.features:
            print(f"== {dataset} / {feature}: features + ITQ 256 ...", flush=True)
            codes, truth, info = codes_for(dataset, feature, args.itq_train)
            meta["codes"][f"{dataset}/{feature}"] = info
            bits = np.ascontiguousarray(unpack_bits(codes), dtype=np.float32)
            for k in args.ks:
                for seed in args.seeds:
                    line = [f"  k={k:<5d} seed={seed}"]
                    for method in args.methods:
                        result = run_method(method, codes, bits, k, seed, args.max_iter)
                        labels = result.pop("labels")
                        record = {"dataset": dataset, "features": feature, "k": k, "seed": seed, "method": method,
                                  "purity": purity(labels, truth), "nmi": normalized_mutual_info(labels, truth),
                                  "n_clusters_used": int(np.unique(labels).shape[0]), **result}
                        runs.append(record)
                        line.append(f"{method} {100 * record['purity']:.1f}% {record['seconds']:.2f}s")
                    print("  ".join(line), flush=True)
    rows = aggregate(runs)
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "table": rows, "runs": runs}, indent=1))
    md = markdown(rows, meta)
    (args.out / f"{args.name}.md").write_text(md + "\n")
    written = plot(rows, args.out) if not args.quick else []
    print(md)
    print(f"wrote {args.out / (args.name + '.json')}, {args.out / (args.name + '.md')} {' '.join(written)}")
    print(f"total {meta['total_seconds']} s")


if __name__ == "__main__":
    main()
