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

Methods, all on those codes, all with ``--max-iter`` iterations at most (20):

* ``kmeans``:   float k-means, ``faiss.Kmeans`` on the 0/1 bits as float32 (no subsampling);
* ``bkmeans``:  ours, ``BKMeans(k, max_iter, tol=0, init=<the start>, assign="auto")``;
* ``kdkmeans``: k-means whose assignment is an approximate randomized kd-forest search
  (4 trees, 32 checks; see ``kdkmeans.py``);
* ``kmedoids``: alternating k-medoids in Hamming distance (``kdkmeans.py``).

For each seed and each ``--inits`` scheme all four methods start from the **same k codes**:
``random`` (k distinct codes, uniformly) or ``k-means++`` (``core.kmeans_plusplus``; for 0/1
vectors squared Euclidean distance is the Hamming distance, so this is also float k-means++ up to
the power of the weights). A shared start removes the init from the comparison: with FAISS drawing
its own start, most of the gaps at k = 10 were one method's lucky draw. The start is chosen
outside the timed fit. Each time is the wall time of the fit including the final labelling, after
a warm-up that compiles every Numba kernel; data preparation (unpacking bits to floats) is not
timed. Numba and FAISS use every core (2 here).

Besides purity and NMI every run records ``hamming_cost``: the summed Hamming distance of the codes
to the per-bit majority of their cluster, the objective Bk-means minimises, evaluated on each
method's partition. The k-means runs also record ``rounded_purity``: the purity of assigning every
code to the nearest of k-means' centers rounded to bits. Both show where Bk-means' gap to k-means
comes from (binary centers, not the search). The KDk-means runs record ``exact_fraction``: the share
of points whose kd-forest label is a nearest center of the final centers.

Writes ``results/paper.json`` (every run, and the mean/std table), ``results/paper.md``,
``results/purity_vs_k_<start>.png`` and ``results/time_vs_k_<start>.png`` (start: ``kmeanspp``, ``random``).

    python tests/benchmarks/experiments/paper.py            # full: 3 x 2 x 5 k x 2 starts x 4 methods x 5 seeds
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
from kdkmeans import HammingKMedoids, KDKMeans, init_indices  # noqa: E402

from core.bkmeans import BKMeans, kmeans_plusplus  # noqa: E402
from core.codes import pack_bits, unpack_bits  # noqa: E402
from core.hamming import nearest_brute  # noqa: E402
from core.itq import ITQ  # noqa: E402
from core.purity import normalized_mutual_info, purity  # noqa: E402

METHODS = ("kmeans", "bkmeans", "kdkmeans", "kmedoids")
LABELS = {"kmeans": "k-means (float, FAISS)", "bkmeans": "Bk-means (ours)", "kdkmeans": "KDk-means",
          "kmedoids": "k-medoids (Hamming)"}
COLORS = {"kmeans": "tab:blue", "bkmeans": "tab:red", "kdkmeans": "tab:green", "kmedoids": "tab:purple"}
INITS = ("k-means++", "random")
# Bk-means counts as "within" float k-means when its mean purity is at most this far below.
WITHIN = 0.02


# -- codes ---------------------------------------------------------------------------------------------


def codes_for(name: str, feature: str, itq_train: int, all_images: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """256-bit ITQ codes of ``name``'s test images under ``feature``, their labels and info (cached).

    ``all_images``: the train and the test images (pixels only: learned features would be applied to
    the very images they were trained on).
    """
    if all_images and feature != "pixels":
        raise ValueError(f"--all-images needs features that learn nothing from the images (pixels), not {feature!r}")
    cache = datasets.cache_dir() / f"codes_{name}_{feature}_itq{itq_train}{'_all' if all_images else ''}_v1.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["codes"], z["labels"], json.loads(str(z["info"]))
    data = datasets.load(name)
    train, test, info = datasets.features(data, feature)
    rng = np.random.default_rng(0)
    subset = np.sort(rng.choice(train.shape[0], size=min(itq_train, train.shape[0]), replace=False))
    started = time.perf_counter()
    itq = ITQ(n_bits=256, n_iter=50, random_state=0).fit(np.ascontiguousarray(train[subset], dtype=np.float32))
    images = np.concatenate([train, test]) if all_images else test
    labels = np.concatenate([data.y_train, data.y_test]) if all_images else data.y_test
    codes = itq.transform(np.ascontiguousarray(images, dtype=np.float32))
    info = {**info, "n_features": int(test.shape[1]), "itq_train": int(len(subset)),
            "itq_seconds": round(time.perf_counter() - started, 1), "n_test": int(images.shape[0]),
            "n_classes": data.n_classes, "images": "train + test" if all_images else "test"}
    np.savez(cache, codes=codes, labels=labels, info=json.dumps(info))
    return codes, labels, info


# -- methods ---------------------------------------------------------------------------------------------


def start_indices(codes: np.ndarray, k: int, seed: int, init: str) -> np.ndarray:
    """The k codes (row numbers, ascending) every method starts from for this seed."""
    if init == "random":
        return init_indices(codes.shape[0], k, seed)
    if init == "k-means++":
        return np.sort(kmeans_plusplus(codes, k, random_state=seed)[1])
    raise ValueError(f"unknown init {init!r}")


def run_method(method: str, codes: np.ndarray, bits: np.ndarray, k: int, start: np.ndarray, seed: int,
               max_iter: int) -> dict:
    """Fit one method from ``start``; the time covers the fit and its labels, not the diagnostics."""
    started = time.perf_counter()
    if method == "kmeans":
        import faiss

        model = faiss.Kmeans(bits.shape[1], k, niter=max_iter, seed=seed + 1, verbose=False,
                             max_points_per_centroid=bits.shape[0], min_points_per_centroid=1)
        model.train(bits, init_centroids=np.ascontiguousarray(bits[start]))
        _, labels = model.index.search(bits, 1)
        labels, n_iter = labels[:, 0].astype(np.int64), max_iter
    elif method == "bkmeans":
        model = BKMeans(k, max_iter=max_iter, tol=0.0, init=codes[start], assign="auto", random_state=seed).fit(codes)
        labels, n_iter = model.labels_, model.n_iter_
    elif method == "kdkmeans":
        model = KDKMeans(k, max_iter=max_iter, n_trees=4, checks=32, random_state=seed, init=start).fit(bits)
        labels, n_iter = model.labels_, model.n_iter_
    elif method == "kmedoids":
        model = HammingKMedoids(k, max_iter=max_iter, random_state=seed, init=start).fit(codes)
        labels, n_iter = model.labels_, model.n_iter_
    else:
        raise ValueError(method)
    result = {"seconds": time.perf_counter() - started, "iterations": int(n_iter), "labels": labels}
    if method == "kmeans":
        result["rounded_labels"] = nearest_brute(codes, pack_bits((model.centroids > 0.5).astype(np.uint8)))[0]
    elif method == "kdkmeans":
        result["exact_fraction"] = exact_fraction(bits, model.cluster_centers_, labels)
    return result


def exact_fraction(x: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of points whose (approximate) label is a nearest center, ties included."""
    import faiss

    index = faiss.IndexFlatL2(centers.shape[1])
    index.add(np.ascontiguousarray(centers, dtype=np.float32))
    nearest, _ = index.search(x, 1)
    given = ((x - centers[labels]) ** 2).sum(axis=1)
    return float(np.mean(given <= nearest[:, 0] + 1e-3))


def hamming_cost(bits: np.ndarray, labels: np.ndarray) -> int:
    """Summed Hamming distance of the codes to their cluster's per-bit majority (Bk-means' objective)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    ones = np.add.reduceat(bits[order].astype(np.int32), starts, axis=0)
    sizes = np.diff(np.r_[starts, labels.shape[0]])[:, None]
    return int(np.minimum(ones, sizes - ones).sum())


def warm_up() -> None:
    """Compile (or load) every Numba kernel and start FAISS before anything is timed."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, size=(600, 4), dtype=np.uint64)
    bits = unpack_bits(codes).astype(np.float32)
    for init in INITS:
        start = start_indices(codes, 20, 0, init)
        for method in METHODS:
            run_method(method, codes, bits, 20, start, 0, 3)


# -- tables and plots ------------------------------------------------------------------------------------


DATASET_ORDER = list(datasets.DATASETS)
FEATURE_ORDER = list(datasets.FEATURE_SETS)


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (init, dataset, features, k): mean and std over seeds of every metric."""
    rows = []
    keys = sorted({(r["init"], r["dataset"], r["features"], r["k"]) for r in runs},
                  key=lambda t: (INITS.index(t[0]), DATASET_ORDER.index(t[1]), FEATURE_ORDER.index(t[2]), t[3]))
    for init, dataset, feature, k in keys:
        row = {"init": init, "dataset": dataset, "features": feature, "k": k}
        here = [r for r in runs if (r["init"], r["dataset"], r["features"], r["k"]) == (init, dataset, feature, k)]
        for method in METHODS:
            mine = [r for r in here if r["method"] == method]
            if not mine:
                continue
            for metric in ("purity", "nmi", "seconds", "iterations", "hamming_cost", "rounded_purity", "exact_fraction"):
                if metric in mine[0]:
                    row[f"{method}_{metric}"], row[f"{method}_{metric}_std"] = _mean_std([r[metric] for r in mine])
            row["n_seeds"] = len(mine)
        by_seed: dict[int, dict] = {}
        for r in here:
            by_seed.setdefault(r["seed"], {})[r["method"]] = r
        pairs = [m for m in by_seed.values() if "kmeans" in m and "bkmeans" in m]
        if pairs:
            row["speedup_mean"], row["speedup_std"] = _mean_std([m["kmeans"]["seconds"] / m["bkmeans"]["seconds"] for m in pairs])
            row["bk_over_kmeans_cost"] = float(np.mean([m["bkmeans"]["hamming_cost"] / m["kmeans"]["hamming_cost"] for m in pairs]))
            row["bk_minus_kmeans_purity"] = row["bkmeans_purity"] - row["kmeans_purity"]
        rows.append(row)
    return rows


def goal_summary(rows: list[dict]) -> list[str]:
    """The issue's goal, counted from the table (means over seeds), one block per init."""
    out = []
    for init in INITS:
        mine = [r for r in rows if r["init"] == init and "bk_minus_kmeans_purity" in r]
        if not mine:
            continue
        name = lambda r: f"{r['dataset']}/{r['features']} k={r['k']}"  # noqa: E731
        out.append(f"**Start: {init}** ({len(mine)} settings, {mine[0]['n_seeds']} seeds each)")
        out.append("")
        within = [r for r in mine if r["bk_minus_kmeans_purity"] >= -WITHIN - 1e-12]
        misses = ", ".join(f"{name(r)} ({100 * r['bk_minus_kmeans_purity']:+.1f})" for r in mine if r not in within)
        out.append(f"* Bk-means within {100 * WITHIN:.0f} points of float k-means: {len(within)} of {len(mine)}"
                   + (f"; missed on {misses}" if misses else "") + ".")
        for other in ("kmedoids", "kdkmeans"):
            if all(f"{other}_purity" in r for r in mine):
                above = [r for r in mine if r["bkmeans_purity"] > r[f"{other}_purity"]]
                worst = min(mine, key=lambda r: r["bkmeans_purity"] - r[f"{other}_purity"])
                out.append(f"* Bk-means above {other}: {len(above)} of {len(mine)} (Bk-means − {other} at its "
                           f"lowest: {100 * (worst['bkmeans_purity'] - worst[f'{other}_purity']):+.1f} at {name(worst)}).")
        grows = []
        for dataset in DATASET_ORDER:
            for feature in FEATURE_ORDER:
                panel = sorted((r for r in mine if (r["dataset"], r["features"]) == (dataset, feature)), key=lambda r: r["k"])
                if len(panel) > 1:
                    grows.append((panel[0]["speedup_mean"], panel[-1]["speedup_mean"], panel[0]["k"], panel[-1]["k"]))
        if grows:
            n_up = sum(last > first for first, last, _, _ in grows)
            out.append(f"* Speedup over float k-means, smallest k → largest k ({grows[0][2]} → {grows[0][3]}): "
                       + ", ".join(f"{a:.1f}×→{b:.1f}×" for a, b, _, _ in grows)
                       + f"; larger at the largest k in {n_up} of {len(grows)} panels.")
        out.append("")
    return out


def gap_table(rows: list[dict]) -> list[str]:
    """Where Bk-means' purity gap to float k-means comes from, per setting."""
    mine = [r for r in rows if "kmeans_rounded_purity" in r and "bkmeans_purity" in r]
    if not mine:
        return []
    out = ["| start | data | k | Bk − k-means | k-means rounded − k-means | Bk cost / k-means cost | KDk-means exact |",
           "|---|---|---|---|---|---|---|"]
    for r in mine:
        out.append(f"| {r['init']} | {r['dataset']}/{r['features']} | {r['k']} | "
                   f"{100 * r['bk_minus_kmeans_purity']:+.1f} | "
                   f"{100 * (r['kmeans_rounded_purity'] - r['kmeans_purity']):+.1f} | {r['bk_over_kmeans_cost']:.3f} | "
                   + (f"{100 * r['kdkmeans_exact_fraction']:.1f} % |" if "kdkmeans_exact_fraction" in r else " |"))
    return out + [""]


def markdown(rows: list[dict], meta: dict) -> str:
    methods = [m for m in METHODS if any(f"{m}_purity" in r for r in rows)]
    out = [("Train + test images" if meta.get("all_images") else "Test splits") + f"; 256-bit ITQ codes; {meta['max_iter']} iterations at most; seeds {meta['seeds']}; "
           "every method starts from the same k codes per seed (start: k-means++ or random). "
           f"Mean ± std over seeds. Purity and NMI in %. Time in seconds (wall, {meta['machine']['cpus']} cores, "
           f"nice {meta['machine']['nice']}). Speedup = k-means time / Bk-means time, per seed, then averaged.", ""]
    out += ["### Against the issue's goal", ""] + goal_summary(rows)
    for init in INITS:
        for dataset in DATASET_ORDER:
            for feature in FEATURE_ORDER:
                mine = [r for r in rows if (r["init"], r["dataset"], r["features"]) == (init, dataset, feature)]
                if not mine:
                    continue
                info = meta["codes"].get(f"{dataset}/{feature}", {})
                extra = f", MLP held-out accuracy {100 * info['test_accuracy']:.1f} %" if "test_accuracy" in info else ""
                out += [f"### start {init}: {dataset}, {feature} ({info.get('n_test', '?')} images, "
                        f"{info.get('n_classes', '?')} classes{extra})", ""]
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
    gaps = gap_table(rows)
    if gaps:
        out += ["### Where the gap to k-means comes from", "",
                "`k-means rounded`: every code assigned to the nearest of k-means' final centers rounded to bits. "
                "`cost`: summed Hamming distance of the codes to their cluster's per-bit majority (Bk-means' "
                "objective) on each method's partition; below 1 means Bk-means found the better partition "
                "under its own objective. `KDk-means exact`: share of the points whose kd-forest label is a "
                "nearest center of its final centers.", ""] + gaps
    return "\n".join(out)


def plot(rows: list[dict], out_dir: Path, prefix: str = "") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for init in INITS:
        these = [r for r in rows if r["init"] == init]
        panels = [(d, f) for d in DATASET_ORDER for f in FEATURE_ORDER
                  if any(r["dataset"] == d and r["features"] == f for r in these)]
        if not panels:
            continue
        methods = [m for m in METHODS if any(f"{m}_purity" in r for r in these)]
        slug = init.replace("+", "p").replace("-", "")
        for metric, stem, ylabel, log in (("purity", "purity_vs_k", "purity (%)", False),
                                          ("seconds", "time_vs_k", "time (s, log)", True)):
            n_cols = min(3, len(panels))
            n_rows = (len(panels) + n_cols - 1) // n_cols
            fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.6 * n_cols, 3.6 * n_rows), squeeze=False)
            for ax, (dataset, feature) in zip(axes.flat, panels):
                mine = [r for r in these if r["dataset"] == dataset and r["features"] == feature]
                ks = [r["k"] for r in mine]
                scale = 100.0 if metric == "purity" else 1.0
                for m in methods:
                    y = np.array([r[f"{m}_{metric}"] for r in mine]) * scale
                    e = np.array([r[f"{m}_{metric}_std"] for r in mine]) * scale
                    ax.errorbar(ks, y, yerr=e, marker="o", ms=4, capsize=2, color=COLORS[m], label=LABELS[m])
                ax.set_xscale("log")
                if log:
                    ax.set_yscale("log")
                ax.set_title(f"{dataset}, {feature} (start: {init})")
                ax.set_xlabel("number of centers k")
                ax.set_ylabel(ylabel)
                ax.grid(True, which="both", alpha=0.3)
            for ax in list(axes.flat)[len(panels):]:
                ax.axis("off")
            axes.flat[0].legend(fontsize=8)
            fig.tight_layout()
            path = out_dir / f"{prefix}{stem}_{slug}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(str(path))
    return written


def write_report(rows: list[dict], meta: dict, out_dir: Path, name: str, plots: bool) -> tuple[str, list[str]]:
    """Write ``<name>.md`` and, for more than one k, the plots (``paper``'s unprefixed); return both."""
    md = markdown(rows, meta)
    (out_dir / f"{name}.md").write_text(md + "\n")
    written = plot(rows, out_dir, "" if name == "paper" else f"{name}_") if plots and len(meta["ks"]) > 1 else []
    return md, written


# -- main ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(datasets.DATASETS), choices=datasets.DATASETS)
    parser.add_argument("--features", nargs="+", default=list(datasets.FEATURE_SETS), choices=datasets.FEATURE_SETS)
    parser.add_argument("--ks", nargs="+", type=int, default=[10, 50, 100, 500, 1000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS,
                        help="how the shared start of every method is chosen")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--itq-train", type=int, default=20_000, help="train images ITQ is fitted on")
    parser.add_argument("--all-images", action="store_true",
                        help="cluster the train and test images (pixels only), e.g. combined: 140,000 codes")
    parser.add_argument("--quick", action="store_true", help="fashion/pixels, k 10 50, seed 0 (a smoke run)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="paper", help="basename of the .json/.md outputs")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite the .md (and plots) of a saved run's JSON, e.g. results/paper.json")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        _, written = write_report(saved["table"], saved["meta"], args.render.parent, args.render.stem, plots=True)
        print(f"rewrote {args.render.with_suffix('.md')} {' '.join(written)}")
        return
    if args.quick:
        args.datasets, args.features, args.ks, args.seeds = ["fashion"], ["pixels"], [10, 50], [0]
        args.name = "paper_quick" if args.name == "paper" else args.name
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    print("warming up Numba kernels and FAISS ...", flush=True)
    warm_up()
    runs: list[dict] = []
    meta: dict = {"max_iter": args.max_iter, "seeds": args.seeds, "ks": args.ks, "methods": args.methods,
                  "inits": args.inits, "itq_train": args.itq_train, "all_images": args.all_images, "codes": {}, "machine": {
                      "platform": platform.platform(), "python": platform.python_version(),
                      "cpus": os.cpu_count(), "nice": os.nice(0)}}
    for dataset in args.datasets:
        for feature in args.features:
            print(f"== {dataset} / {feature}: features + ITQ 256 ...", flush=True)
            codes, truth, info = codes_for(dataset, feature, args.itq_train, args.all_images)
            meta["codes"][f"{dataset}/{feature}"] = info
            bits = np.ascontiguousarray(unpack_bits(codes), dtype=np.float32)
            for init in args.inits:
                for k in args.ks:
                    for seed in args.seeds:
                        chosen_at = time.perf_counter()
                        start = start_indices(codes, k, seed, init)
                        line = [f"  {init:9s} k={k:<5d} seed={seed} (start {time.perf_counter() - chosen_at:.2f}s)"]
                        for method in args.methods:
                            result = run_method(method, codes, bits, k, start, seed, args.max_iter)
                            labels = result.pop("labels")
                            rounded = result.pop("rounded_labels", None)
                            record = {"init": init, "dataset": dataset, "features": feature, "k": k, "seed": seed,
                                      "method": method, "purity": purity(labels, truth),
                                      "nmi": normalized_mutual_info(labels, truth),
                                      "hamming_cost": hamming_cost(bits, labels),
                                      "n_clusters_used": int(np.unique(labels).shape[0]), **result}
                            if rounded is not None:
                                record["rounded_purity"] = purity(rounded, truth)
                            runs.append(record)
                            line.append(f"{method} {100 * record['purity']:.1f}% {record['seconds']:.2f}s")
                        print("  ".join(line), flush=True)
    rows = aggregate(runs)
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "table": rows, "runs": runs}, indent=1))
    md, written = write_report(rows, meta, args.out, args.name, plots=not args.quick)
    print(md)
    print(f"wrote {args.out / (args.name + '.json')}, {args.out / (args.name + '.md')} {' '.join(written)}")
    print(f"total {meta['total_seconds']} s")


if __name__ == "__main__":
    main()
