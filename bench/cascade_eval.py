"""Held-out evaluation of the MiG-DM cascade against the low-dose input and a tuned Gaussian.

Simulates test-split cases (seeds never used in training: ``seed % 10 == 9``), restores their
low-dose images with each method through the same code path as ``petrecon reconstruct``,
and prints a markdown table (medians over cases) plus a JSON file with every number.

    python bench/cascade_eval.py --cases 2 --drf 20 --out bench/results/cascade_eval.json

Metrics (see docs/metrics.md): PSNR in dB against the full-dose image inside the body mask
with the data range set to the full-dose SUV max in the mask; lesion SUVmax bias against the
full-dose image (mean over lesions); the change of mean SUV over the body against the
low-dose input; seconds per study.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pet_recon.io.metadata import SeriesMeta
from pet_recon.io.sinogram import write_sinogram
from pet_recon.metrics import body_mask, psnr
from pet_recon.physics.phantoms import LESION_BASE
from pet_recon.physics.simulate import SimulatedCase, series_meta, simulate_case
from pet_recon.pipeline import CascadeOptions, _restore_mig_dm, gaussian_filter

FWHM_GRID_MM = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
VARIANTS = {
    "mig-dm": {},
    "mig-dm, projected sinogram": {"sino": None},
    "mig-dm, no sinogram branch": {"use_sinogram": False},
    "mig-dm, blank prompt": {"use_prompt": False},
}


class _NullBar:
    def update(self, n: int) -> None:
        """tqdm-compatible no-op."""


def _suv(case: SimulatedCase, drf: int) -> np.ndarray:
    return case.images[drf] * case.suv_factor(drf)


def _scores(pred: np.ndarray, case: SimulatedCase, drf: int) -> dict[str, float]:
    fd = _suv(case, 1)
    ld = _suv(case, drf)
    spacing = (case.image.pixel_mm, case.image.pixel_mm, case.image.plane_mm)
    mask = body_mask(fd, spacing)
    biases = []
    for label in np.unique(case.phantom.labels):
        if label >= LESION_BASE:
            region = case.phantom.labels == label
            ref = float(fd[region].max())
            if ref > 0:
                biases.append((float(pred[region].max()) - ref) / ref)
    return {
        "psnr_db": psnr(pred, fd, mask),
        "lesion_suvmax_bias": float(np.mean(biases)) if biases else float("nan"),
        "mean_suv_change": float(pred[mask].mean() / ld[mask].mean() - 1.0),
    }


def _meta(case: SimulatedCase, drf: int) -> SeriesMeta:
    return series_meta(case, drf, "1.2.3", "1.2.3.4", series_number=1)


def tune_fwhm(cases: list[SimulatedCase], drf: int) -> float:
    """The Gaussian FWHM with the best median PSNR on validation cases."""
    best = max(FWHM_GRID_MM, key=lambda f: statistics.median(
        _scores(gaussian_filter(_suv(c, drf), _meta(c, drf), f), c, drf)["psnr_db"]
        for c in cases))
    return float(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["brain", "body"])
    parser.add_argument("--cases", type=int, default=2, help="test cases per family")
    parser.add_argument("--drf", type=int, default=20)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sd2-steps", type=int, default=5)
    parser.add_argument("--resample-step", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cascade_eval.json"))
    args = parser.parse_args()
    cpu = torch.device("cpu")
    results: dict[str, object] = {"drf": args.drf, "families": {}}
    rows = []
    tmp = tempfile.mkdtemp(prefix="petrecon-bench-")
    for family in args.families:
        val = [simulate_case(family, s, drfs=(args.drf,), device=cpu) for s in (8, 18)]
        fwhm = tune_fwhm(val, args.drf)
        per_method: dict[str, list[dict[str, float]]] = {}
        for seed in tqdm([9 + 10 * i for i in range(args.cases)], desc=family):
            case = simulate_case(family, seed, drfs=(args.drf,), device=cpu)
            meta = _meta(case, args.drf)
            ld = _suv(case, args.drf)
            outputs = {"low dose": (ld, 0.0)}
            t0 = time.perf_counter()
            outputs[f"Gaussian {fwhm:g} mm"] = (gaussian_filter(ld, meta, fwhm),
                                                time.perf_counter() - t0)
            sino = write_sinogram(Path(tmp) / f"{case.case_id}.hs", case.prompts[args.drf],
                                  case.sinogram, dtype="int16")
            for name, flags in VARIANTS.items():
                opts = CascadeOptions(drf=args.drf, steps=args.steps, sd2_steps=args.sd2_steps,
                                      resample_step=args.resample_step, weights=args.weights,
                                      device="cpu", **{"sino": sino, **flags})
                t0 = time.perf_counter()
                restored, _ = _restore_mig_dm(ld, meta, opts, [], _NullBar())
                outputs[name] = (restored, time.perf_counter() - t0)
            for name, (pred, seconds) in outputs.items():
                per_method.setdefault(name, []).append(
                    {**_scores(pred, case, args.drf), "seconds": seconds, "seed": seed})
        results["families"][family] = {"gaussian_fwhm_mm": fwhm, "methods": per_method}
        for name, scores in per_method.items():
            med = {k: statistics.median(s[k] for s in scores)
                   for k in ("psnr_db", "lesion_suvmax_bias", "mean_suv_change", "seconds")}
            rows.append((family, name, med))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nDRF {args.drf}, medians over {args.cases} test case(s) per family "
          f"(seeds 9, 19, ...; 128 x 128 x 64), {time.strftime('%Y-%m-%d')}\n")
    print("| family | method | PSNR (dB) | lesion SUVmax bias | mean SUV change | s/study |")
    print("| --- | --- | --- | --- | --- | --- |")
    for family, name, med in rows:
        print(f"| {family} | {name} | {med['psnr_db']:.2f} | "
              f"{100 * med['lesion_suvmax_bias']:+.1f} % | {100 * med['mean_suv_change']:+.2f} % "
              f"| {med['seconds']:.1f} |")


if __name__ == "__main__":
    main()
