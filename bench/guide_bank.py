"""The nearest-normal guide's bank: size (greedy coreset tokens) and dimensions (principal axes) chosen
without test labels, on the held-out normal images only; and how many held-out images its threshold needs.

Every candidate (bank size x dims) is built as training builds the guide (aminet_edge.training.guide:
greedy coreset, PCA projection, float16 bank, threshold = the held-out tokens' quantile of the distance)
and compared with the reference guide (--reference tokens, every dimension) on the held-out tokens: the IoU
of the two masks (do they mask the same rare normal tokens?) and the masked share of a threshold fitted on
half the held-out images, measured on the other half (cross-fitted; target 1 - quantile). Chosen: the
candidate within --budget-mib (bank float16) with the highest IoU. --holdout-study k...: k held-out images
drawn at random (200 draws): the threshold fitted on their tokens and the share of the other held-out
images' tokens it masks. Needs no trained bundle: the backbone is the pretrained, frozen one training uses,
and the training split is re-derived as training derives it (bench/textures.py runs the same selection on
a trained bundle and prints the test metrics beside it).

Usage: python bench/guide_bank.py --data ../shared/data/magnetic_tile --preset cpu --sizes 65536 32768 23831
    --dims 0 128 96 64 --training-cache RUN_CACHE_DIR --coreset-order order.pt --holdout-study 3 5 10 20 40
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402

from aminet_edge.config import PRESETS  # noqa: E402
from aminet_edge.evaluation.knn_baseline import nearest_distance  # noqa: E402
from aminet_edge.training.guide import greedy_coreset, pca_projection, pooled_tokens  # noqa: E402


@dataclass
class GuideRun:
    """One guide candidate: bank rows x dims (dims = C: no projection), its threshold, and every held-out
    (and test, when given) token's distance to the bank (N, L) float32."""

    rows: int
    dims: int
    quantile: float
    threshold: float
    held_dist: torch.Tensor
    test_dist: torch.Tensor | None
    seconds: float

    @property
    def name(self) -> str:
        return f"nearest-normal guide q{self.quantile:g}, bank {self.rows:,} x {self.dims}"

    @property
    def mib(self) -> float:
        """The bank's float16 bytes, MiB (the projection, C x d float32, adds 0.04 MiB at 176 x 64)."""
        return self.rows * self.dims * 2 / 2**20


def nearest(tokens: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Distance of tokens (..., d) to their nearest bank row (M, d) -> (...) float32, searched in blocks."""
    return nearest_distance(tokens.reshape(-1, tokens.shape[-1]), bank).reshape(tokens.shape[:-1])


def coreset_order(fit_tokens: torch.Tensor, size: int, seed: int, path: str | None) -> torch.Tensor:
    """The first `size` picks of the product's greedy_coreset (a prefix of a longer run is the coreset of
    that size), kept in `path` (reused when it holds as many picks of as many tokens)."""
    file = Path(path) if path else None
    if file is not None and file.exists():
        kept = torch.load(file, weights_only=True)
        if kept["tokens"] == len(fit_tokens) and len(kept["order"]) >= size:
            return kept["order"][:size]
    t = time.perf_counter()
    order = greedy_coreset(fit_tokens, size, seed)
    print(f"greedy coreset of {size:,} of {len(fit_tokens):,} tokens: {time.perf_counter() - t:.0f} s", flush=True)
    if file is not None:
        torch.save({"tokens": len(fit_tokens), "order": order}, file)
    return order


def sweep_guides(fit_tokens: torch.Tensor, held: torch.Tensor, test: torch.Tensor | None, sizes: list[int],
                 dims: list[int], quantiles: list[float], seed: int, order_file: str | None,
                 only: set[tuple[int, int]] | None = None) -> list[GuideRun]:
    """Every (bank size, dims, quantile) guide as training builds it from training tokens (N, C), held-out
    tokens (N_h, L, C) and optionally test tokens (N_t, L, C): a greedy coreset of the training tokens
    (size 0: all of them), projected to `dims` principal axes (0: none), stored float16; threshold = the
    held-out tokens' quantile of the distance to it. only: the (size, dims) pairs to build, as given (None:
    every pair)."""
    n, c = fit_tokens.shape
    pairs = [(s, d) for d in dims for s in sizes if only is None or (s, d) in only]
    rows = sorted({s if 0 < s < n else n for s, _ in pairs}, reverse=True)
    need = max((r for r in rows if r < n), default=0)
    order = coreset_order(fit_tokens, need, seed, order_file) if need else None
    runs = []
    for d in dict.fromkeys(d for _, d in pairs):
        proj = pca_projection(fit_tokens, d) if 0 < d < c else None
        for r in sorted({s if 0 < s < n else n for s, e in pairs if e == d}, reverse=True):
            t = time.perf_counter()
            src = fit_tokens if r == n else fit_tokens[order[:r]]
            bank = (src if proj is None else src @ proj).half()
            h = nearest(held if proj is None else held @ proj, bank)
            te = None if test is None else nearest(test if proj is None else test @ proj, bank)
            for q in quantiles:
                thr = float(np.quantile(h.double().numpy(), q))
                runs.append(GuideRun(r, bank.shape[1], q, thr, h, te, time.perf_counter() - t))
                print(f"{runs[-1].name}: threshold {thr:.4g}, {runs[-1].seconds:.0f} s", flush=True)
    return runs


def label_free(run: GuideRun, ref: GuideRun) -> dict[str, float]:
    """Held-out-only criteria of a guide candidate against the reference guide: IoU of their masks on the
    held-out tokens, and the cross-fitted held-out masked share (threshold from the even held-out images,
    share on the odd ones, and vice versa, averaged)."""
    a, b = run.held_dist > run.threshold, ref.held_dist > ref.threshold
    iou = float((a & b).sum()) / max(float((a | b).sum()), 1.0)
    halves = run.held_dist[0::2], run.held_dist[1::2]
    shares = [float((other > float(np.quantile(fit.double().numpy(), run.quantile))).float().mean())
              for fit, other in (halves, halves[::-1])]
    return {"iou": iou, "crossfit_share": float(np.mean(shares))}


def reference_run(runs: list[GuideRun], reference: int) -> GuideRun:
    """The run of every dimension whose bank size is nearest `reference` (the larger on a tie), first quantile."""
    full = max(g.dims for g in runs)
    return min((g for g in runs if g.dims == full and g.quantile == runs[0].quantile),
               key=lambda g: (abs(g.rows - reference), -g.rows))


def selection(runs: list[GuideRun], reference: int, budget_mib: float,
              metrics: dict[str, str] | None = None) -> tuple[list[str], str | None]:
    """Table rows of the candidates (one quantile: the first) with the label-free criteria, and the name
    of the chosen one (within budget_mib, the highest held-out IoU, then the smaller bank). metrics:
    name -> preformatted test-metric cells printed beside (never used to choose)."""
    ref = reference_run(runs, reference)
    group = [g for g in runs if g.quantile == ref.quantile]
    crit = {g.name: label_free(g, ref) for g in group}
    fits = [g for g in group if g.mib <= budget_mib]
    chosen = max(fits, key=lambda g: (crit[g.name]["iou"], -g.mib)).name if fits else None
    extra = " image AUROC | pixel AUROC | AUPRO | mask recall |" if metrics else ""
    lines = [f"Guide bank, label-free selection (held-out normal images only; reference {ref.name}; budget "
             f"{budget_mib:g} MiB" + ("; test metrics beside, not used to choose" if metrics else "") + "):", "",
             "| bank tokens | dims | bank MiB | held-out IoU vs reference | cross-fit held-out share | build s |"
             + extra + " chosen |", "|---:|---:|---:|---:|---:|---:|" + ("---:|" * 4 if metrics else "") + "---|"]
    for g in group:
        cells = f" {metrics[g.name]} |" if metrics else ""
        tag = ("reference" if g is ref else "") + (" **chosen**" if g.name == chosen else "")
        lines.append(f"| {g.rows:,} | {g.dims} | {g.mib:.1f} | {crit[g.name]['iou']:.3f} | "
                     f"{crit[g.name]['crossfit_share']:.4f} | {g.seconds:.0f} |{cells} {tag} |")
    return lines, chosen


def holdout_study(run: GuideRun, ks: list[int], rec_means: np.ndarray | None = None,
                  guide_means: np.ndarray | None = None, repeats: int = 200) -> list[str]:
    """Table: for k held-out images drawn at random (seeded), the threshold fitted on their tokens
    (relative spread), the share of the other held-out images' tokens it masks (5 / 50 / 95 % over the
    draws) and, given each held-out image's mean reconstruction and guide-distance map (N,), the guide
    map's weight fitted on the k images (mean |w / w_all - 1|)."""
    rng = np.random.default_rng(0)
    dist = run.held_dist.double().numpy()
    n = len(dist)
    weighted = rec_means is not None and guide_means is not None
    lines = [f"Held-out images resampled ({repeats} draws each), {run.name}: threshold fitted on k images' tokens, "
             f"the share of the other held-out images' tokens it masks (target {1 - run.quantile:g})"
             + (", the guide map's weight fitted on them (mean |w / w_all - 1|)" if weighted else ""), "",
             "| k images | tokens | threshold std / mean | masked share of the others (5 / 50 / 95 %) |"
             + (" weight deviation |" if weighted else ""), "|---:|---:|---:|---|" + ("---:|" if weighted else "")]
    for k in ks:
        if k >= n:
            break
        thr, share, weight = [], [], []
        for _ in range(repeats):
            idx = rng.permutation(n)
            fit, rest = idx[:k], idx[k:]
            t = float(np.quantile(dist[fit], run.quantile))
            thr.append(t)
            share.append(float((dist[rest] > t).mean()))
            if weighted:
                weight.append(rec_means[fit].sum() / guide_means[fit].sum())  # type: ignore[index]
        thr_a, share_a = np.array(thr), np.array(share)
        lo, mid, hi = np.quantile(share_a, [0.05, 0.5, 0.95])
        cell = ""
        if weighted:
            full = rec_means.sum() / guide_means.sum()  # type: ignore[union-attr]
            cell = f" {np.abs(np.array(weight) / full - 1).mean():.3f} |"
        lines.append(f"| {k} | {k * dist.shape[1]:,} | {thr_a.std() / thr_a.mean():.3f} | {lo:.3f} / {mid:.3f} / "
                     f"{hi:.3f} |{cell}")
    return lines


def main() -> None:
    from aminet_edge.model.features import build_feature_extractor
    from aminet_edge.training.cache import build_feature_cache
    from aminet_edge.training.guide import image_tokens
    from aminet_edge.training.trainer import load_training_samples, split_holdout

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[65536, 32768, 23831, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[0, 128, 96, 64])
    parser.add_argument("--pairs", nargs="*", help="only these SIZE:DIMS candidates of the sizes x dims grid")
    parser.add_argument("--quantile", type=float, default=0.95)
    parser.add_argument("--reference", type=int, default=65536, help="bank size of the reference guide")
    parser.add_argument("--budget-mib", type=float, default=8.0)
    parser.add_argument("--holdout-study", type=int, nargs="*", default=[])
    parser.add_argument("--seed", type=int, default=0, help="training's seed (split and coreset)")
    parser.add_argument("--holdout-fraction", type=float, default=0.1)
    parser.add_argument("--training-cache", help="a features-*.npy of training's --cache-dir, read (never written) "
                        "instead of running the backbone on the training images")
    parser.add_argument("--held-cache", help="tensors file keeping the held-out tokens between runs")
    parser.add_argument("--coreset-order", help="tensors file keeping the greedy coreset's order between runs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model = PRESETS[args.preset]
    fit, held = split_holdout(load_training_samples([args.data], None, args.seed), args.holdout_fraction, args.seed)
    ext = build_feature_extractor(model.backbone, image_size=model.image_size).eval()
    if args.training_cache:
        feats = np.load(args.training_cache, mmap_mode="r")
        if feats.shape[:2] != (len(fit), ext.channels):
            raise SystemExit(f"{args.training_cache}: features {feats.shape} are not those of the {len(fit)} training "
                             f"images x {ext.channels} channels")
        batches = (torch.from_numpy(np.array(feats[i:i + 32], np.float32)) for i in range(0, len(feats), 32))
    else:
        batches = (build_feature_cache(ext, [s.path for s in fit[i:i + 32]], model.image_size, ext.mean, ext.std,
                                       progress=False) for i in range(0, len(fit), 32))
    fit_tokens = pooled_tokens(batches, model.patch_size)
    cache = Path(args.held_cache) if args.held_cache else None
    if cache is not None and cache.exists():
        held_tokens = torch.load(cache, weights_only=True)
    else:
        held_tokens = image_tokens(ext, [s.path for s in held], model, ext.mean, ext.std, torch.device("cpu"))
        if cache is not None:
            torch.save(held_tokens, cache)
    held_tokens = held_tokens.reshape(len(held), -1, held_tokens.shape[-1])
    print(f"features: {time.perf_counter() - t0:.0f} s, {len(fit)} training images ({len(fit_tokens):,} tokens), "
          f"{len(held)} held-out", flush=True)
    only = {tuple(int(v) for v in p.split(":")) for p in args.pairs} if args.pairs else None
    runs = sweep_guides(fit_tokens, held_tokens, None, args.sizes, args.dims, [args.quantile], args.seed,
                        args.coreset_order, only)  # type: ignore[arg-type]
    lines, chosen = selection(runs, args.reference, args.budget_mib)
    if args.holdout_study:
        lines += [""] + holdout_study(reference_run(runs, args.reference), args.holdout_study)
    append_result("guide_bank", f"data `{args.data}`, preset {args.preset}, {len(held)} held-out images, "
                  f"{time.perf_counter() - t0:.0f} s; chosen: {chosen}\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
