#!/usr/bin/env python
"""Near-duplicate check on real images: PDQ hashes of edited copies, clustered online.

Sources (real images nobody here made, all installed offline by ``setup.sh``):

* ``photos``: the photographs that ship inside scikit-image (``skimage.data``: astronaut, coffee,
  chelsea, rocket, ...), each cut into non-overlapping 256x256 tiles (a tile is a distinct
  picture; tiles with almost no texture, PDQ quality < 50, are left out);
* ``fashion``: Fashion-MNIST test images upscaled 28 -> 224 pixels (bicubic).

Each source becomes a *family*: the original plus ``--copies`` edited copies, each copy one
random edit from: crop (5-15 % off the edges), resize (x0.5 - x1.5), JPEG re-encode (quality
20-80), brightness (x0.7 - x1.3), small rotation (1-5 degrees, edges filled), or two of those
combined. All copies are PDQ-hashed with the same code as ``photoclust hash``.

Then, for several radii around PDQ's customary match threshold (31 bits):

* ``online``: ``OnlineClusterer(radius=r)`` over the shuffled stream in windows (photoclust's
  stream clustering; Bk-means founds clusters, later items join within ``r``); noise items count
  as singletons;
* ``pairs``: plain PDQ matching, every pair at distance <= r is a match (no clustering; the
  reference the clusterer is compared with).

Reported: pairwise precision and recall of "same family" against the truth (and F1), plus how far
each kind of edit moves the hash. Writes ``results/neardup.json`` and ``results/neardup.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[2]))

from core.codes import from_hex  # noqa: E402
from core.hamming import hamming_distances  # noqa: E402
from core.online import NO_CLUSTER, OnlineClusterer  # noqa: E402

# The photographs shipped inside scikit-image's wheel (no download). Left out: "cat" (the same
# picture as "chelsea"), "horse" (a binary silhouette), synthetic images, and loaders that download.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
                  "stereo_motorcycle")
EDITS = ("crop", "resize", "jpeg", "brightness", "rotate")
TILE = 256


# -- sources ---------------------------------------------------------------------------------------


def photo_sources(max_tiles_per_photo: int) -> list[tuple[str, "Image.Image"]]:
    from PIL import Image
    from skimage import data

    out = []
    for name in SKIMAGE_PHOTOS:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        try:
            array = loader()
        except Exception as e:  # noqa: BLE001 - some need a download: skip them, say so
            print(f"  skimage.data.{name}: skipped ({type(e).__name__})", flush=True)
            continue
        if isinstance(array, tuple):  # stereo_motorcycle-style loaders return several images
            array = array[0]
        array = np.asarray(array)
        if array.dtype != np.uint8:
            array = (255 * (array - array.min()) / max(np.ptp(array), 1e-9)).astype(np.uint8)
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        array = array[..., :3]
        h, w = array.shape[:2]
        tiles = [(y, x) for y in range(0, h - TILE + 1, TILE) for x in range(0, w - TILE + 1, TILE)]
        if not tiles:
            tiles = [(0, 0)]
        if len(tiles) > max_tiles_per_photo:  # spread the tiles kept over the whole photo
            tiles = [tiles[int(i)] for i in np.unique(np.linspace(0, len(tiles) - 1, max_tiles_per_photo).round())]
        for y, x in tiles:
            out.append((f"{name}@{y},{x}", Image.fromarray(np.ascontiguousarray(array[y : y + TILE, x : x + TILE]))))
    return out


def fashion_sources(n: int, seed: int) -> list[tuple[str, "Image.Image"]]:
    from PIL import Image

    import datasets

    data = datasets.load_fashion()
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(data.x_test.shape[0], size=n, replace=False))
    out = []
    for i in idx:
        gray = (data.x_test[i].reshape(28, 28) * 255).round().astype(np.uint8)
        out.append((f"fashion#{i}", Image.fromarray(gray).convert("RGB").resize((224, 224), Image.BICUBIC)))
    return out


# -- edits -----------------------------------------------------------------------------------------


def edit(image: "Image.Image", kind: str, rng: np.random.Generator) -> tuple["Image.Image", str]:
    from PIL import Image, ImageEnhance

    w, h = image.size
    if kind == "crop":
        f = rng.uniform(0.05, 0.15)
        left, top = int(rng.uniform(0, f) * w), int(rng.uniform(0, f) * h)
        right, bottom = w - int((f - left / w) * w), h - int((f - top / h) * h)
        return image.crop((left, top, right, bottom)), f"crop {100 * f:.0f}%"
    if kind == "resize":
        s = rng.uniform(0.5, 1.5)
        return image.resize((max(8, int(w * s)), max(8, int(h * s))), Image.BICUBIC), f"resize x{s:.2f}"
    if kind == "jpeg":
        q = int(rng.integers(20, 81))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=q)
        buf.seek(0)
        return Image.open(buf).convert("RGB"), f"jpeg q{q}"
    if kind == "brightness":
        b = rng.uniform(0.7, 1.3)
        return ImageEnhance.Brightness(image).enhance(b), f"brightness x{b:.2f}"
    if kind == "rotate":
        a = rng.uniform(1, 5) * rng.choice([-1, 1])
        return image.rotate(a, resample=Image.BICUBIC, expand=False, fillcolor=(0, 0, 0)), f"rotate {a:+.1f}°"
    raise ValueError(kind)


def family(image: "Image.Image", copies: int, rng: np.random.Generator) -> list[tuple["Image.Image", str, str]]:
    """(image, edit kind, description): the original first, then ``copies`` edited copies."""
    out = [(image, "original", "original")]
    for c in range(copies):
        if c < len(EDITS):
            kinds = [EDITS[c]]  # every family gets each single edit once ...
        else:  # ... then random single or double edits
            kinds = list(rng.choice(EDITS, size=int(rng.integers(1, 3)), replace=False))
        edited, parts = image, []
        for kind in kinds:
            edited, desc = edit(edited, kind, rng)
            parts.append(desc)
        out.append((edited, "+".join(kinds), ", ".join(parts)))
    return out


def pdq_hex(image: "Image.Image") -> tuple[str, int]:
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8)))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


# -- scoring ---------------------------------------------------------------------------------------


def pair_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(same cluster and same family, same cluster, same family) pair counts."""
    def pairs(counts: np.ndarray) -> int:
        counts = counts.astype(np.int64)
        return int((counts * (counts - 1) // 2).sum())

    _, pred_idx = np.unique(pred, return_inverse=True)
    _, truth_idx = np.unique(truth, return_inverse=True)
    cells = np.unique(pred_idx * (truth_idx.max() + 1) + truth_idx, return_counts=True)[1]
    return pairs(cells), pairs(np.bincount(pred_idx)), pairs(np.bincount(truth_idx))


def scores(tp: int, predicted: int, actual: int) -> dict:
    precision = tp / predicted if predicted else 1.0
    recall = tp / actual if actual else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp_pairs": tp, "predicted_pairs": predicted,
            "true_pairs": actual}


def online_labels(codes: np.ndarray, radius: int, window: int, min_cluster_size: int, seed: int) -> tuple[np.ndarray, dict]:
    n = codes.shape[0]
    ids = [str(i) for i in range(n)]
    clusterer = OnlineClusterer(n_bits=256, window_size=window, radius=radius, min_cluster_size=min_cluster_size,
                                new_centers_ratio=0.1, pending_capacity=window, max_iter=10, random_state=seed)
    labels = np.full(n, NO_CLUSTER, dtype=np.int64)
    results = []
    for w, start in enumerate(range(0, n, window)):
        results.append(clusterer.process(ids[start : start + window], codes[start : start + window], now=float(w)))
    results.append(clusterer.flush(now=float(len(results))))
    for result in results:
        final = result.is_final
        rows = np.flatnonzero(final)
        idx = np.array([int(result.ids[r]) for r in rows], dtype=np.int64)
        labels[idx] = result.cluster[rows]
    noise = labels == NO_CLUSTER
    info = {"n_clusters": int(clusterer.n_clusters_), "noise_fraction": float(noise.mean())}
    labels[noise] = -1 - np.flatnonzero(noise)  # every noise item is its own singleton
    return labels, info


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=12, help="edited copies per source image")
    parser.add_argument("--fashion", type=int, default=100, help="Fashion-MNIST source images")
    parser.add_argument("--max-tiles", type=int, default=6, help="tiles per scikit-image photo")
    parser.add_argument("--radii", nargs="+", type=int, default=[8, 16, 24, 31, 40, 48, 64])
    parser.add_argument("--window", type=int, default=1000, help="online clusterer window size")
    parser.add_argument("--min-cluster-size", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()

    print("sources ...", flush=True)
    sources = {"photos": photo_sources(args.max_tiles), "fashion": fashion_sources(args.fashion, args.seed)}
    items = []  # (set, family, kind, description, hex, quality)
    dropped = []
    fam = 0
    for set_name, images in sources.items():
        for name, image in images:
            _, quality = pdq_hex(image)
            if quality < 50:
                dropped.append(name)
                continue
            for edited, kind, desc in family(image, args.copies, rng):
                hex_, q = pdq_hex(edited)
                items.append((set_name, fam, name, kind, desc, hex_, q))
            fam += 1
    print(f"  {fam} families, {len(items)} images hashed; {len(dropped)} sources left out (PDQ quality < 50)",
          flush=True)
    codes = from_hex([it[5] for it in items])
    families = np.array([it[1] for it in items])
    sets = np.array([it[0] for it in items])
    kinds = np.array([it[3] for it in items])

    # How far each edit moves the hash (distance to the family's original).
    originals = {it[1]: i for i, it in enumerate(items) if it[3] == "original"}
    to_original = np.array([int(hamming_distances(codes[i : i + 1], codes[originals[families[i]] : originals[families[i]] + 1])[0, 0])
                            for i in range(len(items))])
    edit_rows = []
    for set_name in sources:
        for kind in sorted(set(kinds[sets == set_name]) - {"original"}, key=lambda k: (k.count("+"), k)):
            d = to_original[(sets == set_name) & (kinds == kind)]
            edit_rows.append({"set": set_name, "edit": kind, "n": int(d.size), "mean": float(d.mean()),
                              "median": float(np.median(d)), "p90": float(np.percentile(d, 90)), "max": int(d.max()),
                              "within_31": float((d <= 31).mean())})
    # Distances between different families (how close unrelated images come).
    full = hamming_distances(codes, codes)
    same = families[:, None] == families[None, :]
    upper = np.triu(np.ones_like(same), 1)
    between = full[upper & ~same]
    within = full[upper & same]
    spread = {"within_family": {"mean": float(within.mean()), "p99": float(np.percentile(within, 99))},
              "between_families": {"mean": float(between.mean()), "p001": float(np.percentile(between, 0.1)),
                                   "min": int(between.min())}}

    order = rng.permutation(len(items))  # a stream arrives in no particular order
    rows = []
    for subset in ("all", *sources):
        mask = np.ones(len(items), bool) if subset == "all" else sets == subset
        sel = order[mask[order]]
        sub_codes, sub_fam = np.ascontiguousarray(codes[sel]), families[sel]
        sub_full = full[np.ix_(sel, sel)]
        sub_upper = np.triu(np.ones(sub_full.shape, bool), 1)
        sub_same = sub_fam[:, None] == sub_fam[None, :]
        actual = int((sub_upper & sub_same).sum())
        for radius in args.radii:
            t0 = time.perf_counter()
            labels, info = online_labels(sub_codes, radius, args.window, args.min_cluster_size, args.seed)
            seconds = time.perf_counter() - t0
            online = scores(*pair_counts(labels, sub_fam))
            match = sub_upper & (sub_full <= radius)
            pairs = scores(int((match & sub_same).sum()), int(match.sum()), actual)
            rows.append({"subset": subset, "n_images": int(sel.size), "n_families": int(np.unique(sub_fam).size),
                         "radius": radius, "online": {**online, **info, "seconds": round(seconds, 3)},
                         "pairs": pairs})
            print(f"  {subset:8s} r={radius:3d}: online P {online['precision']:.3f} R {online['recall']:.3f}  "
                  f"({info['n_clusters']} clusters, noise {info['noise_fraction']:.1%}) | pairs P "
                  f"{pairs['precision']:.3f} R {pairs['recall']:.3f}", flush=True)

    meta = {"copies": args.copies, "window": args.window, "min_cluster_size": args.min_cluster_size,
            "new_centers_ratio": 0.1, "seed": args.seed, "n_families": fam, "n_images": len(items),
            "dropped_low_quality_sources": dropped, "seconds": round(time.perf_counter() - started, 1),
            "sources": {k: len(v) for k, v in sources.items()}}
    (args.out / "neardup.json").write_text(json.dumps({"meta": meta, "table": rows, "edits": edit_rows,
                                                       "distances": spread}, indent=1))
    md = markdown(rows, edit_rows, spread, meta)
    (args.out / "neardup.md").write_text(md + "\n")
    print(md)
    print(f"wrote {args.out / 'neardup.json'} and {args.out / 'neardup.md'} in {meta['seconds']} s")


def markdown(rows: list[dict], edit_rows: list[dict], spread: dict, meta: dict) -> str:
    out = [f"{meta['n_families']} families ({meta['sources']['photos']} scikit-image photo tiles, "
           f"{meta['sources']['fashion']} upscaled Fashion-MNIST images; "
           f"{len(meta['dropped_low_quality_sources'])} sources with PDQ quality < 50 left out), "
           f"each the original + {meta['copies']} edited copies: {meta['n_images']} PDQ hashes. "
           f"Online: OnlineClusterer(window={meta['window']}, new_centers_ratio={meta['new_centers_ratio']}, "
           f"min_cluster_size={meta['min_cluster_size']}, radius=r) over the shuffled stream, noise items as "
           "singletons. Pairs: every pair within r matches. Pairwise precision / recall / F1 of 'same family', in %.",
           "", "| subset | images | r | online P | online R | online F1 | clusters | noise | pairs P | pairs R | pairs F1 |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, p = r["online"], r["pairs"]
        out.append(f"| {r['subset']} | {r['n_images']} | {r['radius']} | {100 * o['precision']:.1f} | "
                   f"{100 * o['recall']:.1f} | {100 * o['f1']:.1f} | {o['n_clusters']} | {100 * o['noise_fraction']:.1f}% | "
                   f"{100 * p['precision']:.1f} | {100 * p['recall']:.1f} | {100 * p['f1']:.1f} |")
    out += ["", "Hamming distance of each edited copy to its original (bits of 256):", "",
            "| set | edit | copies | mean | median | p90 | max | ≤ 31 |", "|---|---|---|---|---|---|---|---|"]
    for e in edit_rows:
        out.append(f"| {e['set']} | {e['edit']} | {e['n']} | {e['mean']:.1f} | {e['median']:.0f} | {e['p90']:.0f} | "
                   f"{e['max']} | {100 * e['within_31']:.0f}% |")
    w, b = spread["within_family"], spread["between_families"]
    out += ["", f"All pairs: within a family mean {w['mean']:.1f} bits (p99 {w['p99']:.0f}); between families mean "
            f"{b['mean']:.1f} bits, 0.1st percentile {b['p001']:.0f}, minimum {b['min']}."]
    return "\n".join(out)


if __name__ == "__main__":
    main()
