"""`petrecon bench`: the held-out benchmark of the restoration methods.

Every case is simulated on the fly from a fixed seed that training never used (test seeds
``9, 19, ...``; the baselines' parameters are tuned on validation seeds ``8, 18, ...``; see
:mod:`pet_recon.dataset` for the split). Each method restores the same low-dose volumes and
is scored against the full-dose image of the same case with :mod:`pet_recon.metrics`
(definitions in ``docs/metrics.md``):

- low-dose input;
- Gaussian filter, FWHM tuned on validation (per family and dose level);
- non-local means (scikit-image, 2D per plane), ``h`` tuned on validation likewise;
- supervised U-Net regression (``weights/unet.safetensors``, ``petrecon train unet``);
- single-stage conditional diffusion: SD1 alone without the sinogram branch;
- the MiG-DM cascade, with the measured sinogram and with the projected one.

Ablations of the cascade run at one dose level; speed is measured per stage with the
cascade's ratio to its compute floor (FLOPs counted by :class:`torch.utils.flop_counter`
over a matrix-product rate measured in the same run, in the precision the cascade computes
in: bf16 where native, else fp32). With ``anatomy_study`` the anatomy study of
:mod:`pet_recon.benchmark_anatomy` runs too (issue #7: the cascade without
and with an MR on brain cases, and two leak checks). The output folder gets
``benchmark.json`` (every number), ``table.md`` (the table printed last) and PNG figures.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pet_recon.cascade import Cascade
from pet_recon.errors import PetReconError
from pet_recon.io.metadata import SeriesMeta
from pet_recon.io.resample import resample_volume
from pet_recon.io.sinogram import write_sinogram
from pet_recon.metrics import (
    NemaSphere,
    body_mask,
    nema_contrast_recovery,
    nrmse,
    psnr,
    psnr_udpet,
    ssim,
    voi_bias,
    voi_stats,
    z_consistency,
)
from pet_recon.output import check_output_dir, staged_output
from pet_recon.physics.phantoms import LESION_BASE, Label
from pet_recon.physics.simulate import (
    SimulatedCase,
    noise_free_image,
    series_meta,
    simulate_case,
)
from pet_recon.pipeline import (
    AnchorVolume,
    CascadeOptions,
    _restore_mig_dm,
    gaussian_filter,
    model_grid,
    resolve_device,
)

log = logging.getLogger(__name__)

FWHM_GRID_MM = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 18.0, 22.0)
#: Non-local means ``h`` as a fraction of the low-dose volume's mean SUV in the body.
NLM_H_GRID = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
FAMILIES = ("brain", "body", "nema")
DRFS = (4, 10, 20, 50)
#: Cascade variants of the ablation study: name -> changes to the default options.
ABLATIONS: dict[str, dict[str, Any]] = {
    "no sinogram branch": {"use_sinogram": False},
    "blank prompt": {"use_prompt": False},
    "shuffled prompt": {"prompt": "shuffled"},
    "SD2 before SD1": {"sd2_first": True},
    "N = 5": {"resample_step": 5},
    "N = 150": {"resample_step": 150},
    "N = 400": {"resample_step": 400},
    "SD1 1 step": {"steps": 1},
    "SD1 5 steps": {"steps": 5},
    "SD1 10 steps": {"steps": 10},
    "mean of 4 samples": {"samples": 4},
    "noise drawn per plane": {"shared_noise": False},
}
METRICS = ("psnr_db", "psnr_udpet_db", "ssim", "nrmse", "lesion_suvmax_bias",
           "lesion_suvmax_bias_noise_free", "lesion_suvpeak_bias", "mean_suv_change",
           "z_consistency", "seconds")


@dataclass
class BenchOptions:
    """What the benchmark runs.

    Attributes
    ----------
    out : Path
        Output folder (written into a temporary sibling, moved into place when complete).
    families, drfs : tuple
        Phantom families and dose reduction factors of the test set (no family: only the
        anatomy study).
    cases : int
        Test cases per family (seeds ``9 + 10 i``); validation uses ``cases`` seeds
        ``8 + 10 i`` for tuning.
    slices : int
        Planes per simulated case (128 x 128 matrix).
    ablation_drf : int
        Dose level of the ablation study (on the brain and body families in ``families``).
    ablations : tuple of str
        Names from :data:`ABLATIONS` to run.
    weights : Path or None
        Weights folder (default: shipped).
    compare_weights : Path or None
        A second weights folder (for example the weights before a stage was re-trained):
        adds its cascade as one more method, "MiG-DM cascade (<folder name>)".
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    figures : bool
        Write the PNG figures.
    overwrite : bool
        Replace an existing output folder.
    anatomy_study : bool
        Also run the anatomy study (:mod:`pet_recon.benchmark_anatomy`: brain FDG and
        amyloid cases at every DRF of ``drfs``, the cascade without and with the MR, and the
        two leak checks); needs weights with the anatomy-guided SD2.
    """

    out: Path
    families: tuple[str, ...] = FAMILIES
    drfs: tuple[int, ...] = DRFS
    cases: int = 1
    slices: int = 64
    ablation_drf: int = 20
    ablations: tuple[str, ...] = tuple(ABLATIONS)
    weights: Path | None = None
    compare_weights: Path | None = None
    device: str = "cpu"
    figures: bool = True
    overwrite: bool = False
    anatomy_study: bool = False
    cascade: CascadeOptions = field(default_factory=lambda: CascadeOptions(device="cpu"))


SMOKE = {"families": ("brain",), "drfs": (20,), "cases": 1, "slices": 8,
         "ablations": ("no sinogram branch",), "figures": True}


class _NullBar:
    def update(self, n: int = 1) -> None:
        """tqdm-compatible no-op."""


# ----------------------------------------------------------------------------- cases


@dataclass
class _Case:
    """A simulated case with its DICOM metadata and low-dose sinogram files per level."""

    sim: SimulatedCase
    metas: dict[int, SeriesMeta]
    sinos: dict[int, Path]
    device: torch.device

    @property
    def spacing(self) -> tuple[float, float, float]:
        g = self.sim.image
        return (g.pixel_mm, g.pixel_mm, g.plane_mm)

    def suv(self, drf: int) -> np.ndarray:
        """``(Z, Y, X)`` float32 SUVbw image of dose level ``drf`` (1: full dose)."""
        return (self.sim.images[drf] * self.sim.suv_factor(drf)).astype(np.float32)

    def truth(self) -> np.ndarray:
        return (self.sim.truth_bqml * self.sim.suv_factor(1)).astype(np.float32)

    @cached_property
    def noise_free(self) -> np.ndarray:
        """``(Z, Y, X)`` float32 SUV full-dose image without noise (:func:`noise_free_image`);
        computed when a test case is scored, not for the validation cases."""
        return (noise_free_image(self.sim, self.device) * self.sim.suv_factor(1)
                ).astype(np.float32)

    @cached_property
    def body(self) -> np.ndarray:
        """Body mask of the full-dose image (every method is scored inside it)."""
        return body_mask(self.suv(1), self.spacing)

    @cached_property
    def lesions(self) -> np.ndarray:
        """The label map with every label but the lesions' set to 0."""
        labels = self.sim.phantom.labels
        return np.where(labels >= LESION_BASE, labels, 0)

    @cached_property
    def reference_stats(self) -> dict[int, dict[str, float]]:
        """:func:`~pet_recon.metrics.voi_stats` of the full-dose image's lesions."""
        return voi_stats(self.suv(1), self.lesions, self.spacing)

    @cached_property
    def noise_free_stats(self) -> dict[int, dict[str, float]]:
        """:func:`~pet_recon.metrics.voi_stats` of the noise-free full-dose image's lesions."""
        return voi_stats(self.noise_free, self.lesions, self.spacing)


def _make_case(family: str, seed: int, drfs: tuple[int, ...], slices: int,
               device: torch.device, tmp: Path,
               phantom_kwargs: dict[str, object] | None = None) -> _Case:
    """Simulate a case (``phantom_kwargs`` as :func:`simulate_case`'s) and write its low-dose
    sinograms into ``tmp``."""
    sim = simulate_case(family, seed, slices=slices, drfs=drfs, device=device,
                        phantom_kwargs=phantom_kwargs)
    metas = {k: series_meta(sim, k, "1.2.3", "1.2.3.4", series_number=1) for k in drfs}
    sinos = {k: write_sinogram(tmp / f"{sim.case_id}_drf{k}.hs", sim.prompts[k], sim.sinogram,
                               dtype="int16") for k in drfs}
    return _Case(sim, metas, sinos, device)


# ----------------------------------------------------------------------------- scores


def score(pred: np.ndarray, case: _Case, drf: int) -> dict[str, Any]:
    """Every metric of ``pred`` (SUV) against the full-dose image of ``case``; per-lesion
    biases (with diameters) and, for NEMA cases, contrast recovery per sphere.

    The lesion SUVmax bias is given twice: against the (noisy) full-dose image, and against
    the noise-free full-dose image (``case.noise_free``), whose lesion maxima the reference's
    own noise does not move."""
    fd, ld, mask = case.suv(1), case.suv(drf), case.body
    pred_stats = voi_stats(pred, case.lesions, case.spacing)
    vs_full = voi_bias(pred_stats, case.reference_stats)
    vs_free = voi_bias(pred_stats, case.noise_free_stats) if vs_full else {}
    info = {d["label"]: d for d in case.sim.phantom.info.get("lesions", [])}
    lesions = [
        {"label": int(k), "diameter_mm": info.get(k, {}).get("diameter_mm"),
         "suv_max_bias": bias["suv_max"], "suv_peak_bias": bias["suv_peak"],
         "suv_max_bias_noise_free": vs_free[k]["suv_max"]}
        for k, bias in vs_full.items()]

    def mean(key: str) -> float:
        return float(np.mean([d[key] for d in lesions])) if lesions else float("nan")

    range_suv = float(fd[mask].max())
    extra: dict[str, Any] = {"lesions": lesions}
    if case.sim.family == "nema":
        extra["nema"] = _nema_recovery(pred, case)
    return extra | {
        "psnr_db": psnr(pred, fd, mask),
        "psnr_udpet_db": psnr_udpet(pred, fd),
        "ssim": ssim(pred, fd, mask=mask, data_range=range_suv, mode="2d"),
        "nrmse": nrmse(pred, fd, mask),
        "lesion_suvmax_bias": mean("suv_max_bias"),
        "lesion_suvmax_bias_noise_free": mean("suv_max_bias_noise_free"),
        "lesion_suvpeak_bias": mean("suv_peak_bias"),
        "mean_suv_change": float(pred[mask].mean() / ld[mask].mean() - 1.0),
        "z_consistency": z_consistency(pred, mask),
    }


def _nema_recovery(volume: np.ndarray, case: _Case) -> dict[str, Any]:
    """NEMA NU 2 contrast recovery and background variability (%) per sphere diameter."""
    info = case.sim.phantom.info
    g = case.sim.image
    centre = np.array([(g.nx - 1) / 2, (g.ny - 1) / 2, (g.n_planes - 1) / 2])
    spheres = [NemaSphere(d["label"], float(d["diameter_mm"]), tuple(
        centre + np.asarray(d["centre_mm"]) / np.asarray(case.spacing)))
        for d in info["lesions"]]
    background = case.sim.phantom.labels == int(Label.PHANTOM_FILL)
    try:
        result = nema_contrast_recovery(volume, case.sim.phantom.labels, spheres, background,
                                        float(info["ratio"]), case.spacing)
    except ValueError as exc:
        return {"skipped": str(exc)}
    return {f"{r['diameter_mm']:g} mm": {"cr_pct": r["contrast_recovery_pct"],
                                         "bv_pct": r["background_variability_pct"]}
            for r in result.values()}


# ----------------------------------------------------------------------------- methods


def nl_means(volume: np.ndarray, h_fraction: float, spacing: tuple[float, float, float]
             ) -> np.ndarray:
    """Non-local means per plane (scikit-image, patch 5, search distance 6, fast mode) with
    ``h = h_fraction x`` the volume's mean inside its body mask; returns the same shape."""
    from skimage.restoration import denoise_nl_means

    mask = body_mask(volume, spacing)
    h = h_fraction * float(volume[mask].mean()) if mask.any() else h_fraction
    return np.stack([denoise_nl_means(plane, patch_size=5, patch_distance=6, h=h,
                                      fast_mode=True) for plane in volume]).astype(np.float32)


class _UNetBaseline:
    """The supervised U-Net regression on the cascade's model grid and intensity scale."""

    def __init__(self, folder: Path | None, device: torch.device) -> None:
        from pet_recon.models.unet import UNet
        from pet_recon.weights import load_model, weights_dir

        path = (Path(folder) if folder is not None else weights_dir()) / "unet.safetensors"
        if not path.exists():
            raise PetReconError(f"{path}: not found (train it with petrecon train unet)")
        self.model, extra = load_model(path, registry={"UNet": UNet}, device=device)
        self.neighbours = int(extra["neighbours"])
        self.device = device

    @torch.no_grad()
    def __call__(self, volume: np.ndarray, meta: SeriesMeta, matrix: int = 128) -> np.ndarray:
        from pet_recon.cascade import inference_autocast, neighbour_stack
        from pet_recon.models.intensity import reference_value

        grid = model_grid(meta, matrix)
        low = resample_volume(volume, meta.geometry, grid)
        ref = reference_value(low, grid.spacing)
        stacked = torch.from_numpy(neighbour_stack(low / ref, self.neighbours))
        out = np.empty_like(low)
        for start in range(0, low.shape[0], 8):
            x = stacked[start:start + 8].to(self.device)
            with inference_autocast(self.device):
                out[start:start + 8] = self.model(x, None).float()[:, 0].cpu().numpy() * ref
        return resample_volume(out, grid, meta.geometry)


def _tune(cases: list[_Case], drf: int, grid: tuple[float, ...],
          method: Callable[[np.ndarray, _Case, float], np.ndarray]) -> float:
    """The grid value with the best median PSNR on the validation cases."""
    def median_psnr(value: float) -> float:
        return statistics.median(psnr(method(c.suv(drf), c, value), c.suv(1), c.body)
                                 for c in cases)
    return float(max(grid, key=median_psnr))


def _gauss(volume: np.ndarray, case: _Case, fwhm: float) -> np.ndarray:
    return gaussian_filter(volume, next(iter(case.metas.values())), fwhm)


def _nlm(volume: np.ndarray, case: _Case, h: float) -> np.ndarray:
    return nl_means(volume, h, case.spacing)


# ----------------------------------------------------------------------------- speed


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int = 1024,
                repeats: int = 5) -> float:
    """Measured matrix-product rate in ``dtype`` in FLOP/s (median of ``repeats``; 2 n^3 a
    product)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2.0 * size**3 / statistics.median(times[1:])


def cascade_flops_per_slice(opts: CascadeOptions, weights: Path | None,
                            device: torch.device) -> dict[str, float]:
    """Network FLOPs of restoring one slice on the model grid, counted by torch's flop
    counter: SD1 with the sinogram branch, SD2, and their total."""
    from torch.utils.flop_counter import FlopCounterMode

    cascade = Cascade.load(weights, device)
    matrix = int(cascade.branch.config["image_size"])
    low = torch.rand(1, 2 * cascade.neighbours + 1, matrix, matrix)
    counts: dict[str, float] = {}
    for name, kwargs in (("sd1_and_branch", {"resample_step": 0}),
                         ("whole", {"resample_step": opts.resample_step})):
        with FlopCounterMode(display=False) as counter:
            cascade.restore(low, None, "PET FDG.", steps=opts.steps, sd2_steps=opts.sd2_steps,
                            generator=torch.Generator().manual_seed(0), **kwargs)
        counts[name] = float(counter.get_total_flops())
    return {"sd1_and_branch": counts["sd1_and_branch"],
            "sd2": counts["whole"] - counts["sd1_and_branch"], "total": counts["whole"]}


# ----------------------------------------------------------------------------- runner


def _median(rows: list[dict[str, Any]], key: str) -> float:
    """Median of ``key`` over ``rows``, ignoring None and NaN (NaN when nothing is left)."""
    values = [r[key] for r in rows if r[key] is not None and np.isfinite(r[key])]
    return float(statistics.median(values)) if values else float("nan")


def run_benchmark(opts: BenchOptions, progress: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
    """Run the benchmark; write ``benchmark.json``, ``table.md`` and figures into
    ``opts.out``; return the results (the JSON's content) with the table as ``"table"``."""
    for family in opts.families:
        if family not in FAMILIES:
            raise PetReconError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    unknown = [a for a in opts.ablations if a not in ABLATIONS]
    if unknown:
        raise PetReconError(f"unknown ablation {unknown[0]!r}; choose from "
                            f"{', '.join(ABLATIONS)}")
    if not opts.families and not opts.anatomy_study:
        raise PetReconError("nothing to run: no family and no anatomy study")
    check_output_dir(opts.out, opts.overwrite)
    say = progress or (lambda _: None)
    device = resolve_device(opts.device)
    if opts.anatomy_study:
        from pet_recon.benchmark_anatomy import check_anatomy_weights, run_anatomy_study

        check_anatomy_weights(opts.weights, device)
    cascade_opts = replace(opts.cascade, weights=opts.weights, device=str(device))
    anchors = {folder: Cascade.load(folder, device).anchors
               for folder in (opts.weights, opts.compare_weights)}
    compare = None
    if opts.compare_weights is not None:
        compare = (f"MiG-DM cascade ({opts.compare_weights.name})",
                   replace(cascade_opts, weights=opts.compare_weights))
    # Progressive outputs from the first weights that carry anchors; their dose levels are
    # simulated too, to score each anchor's output against the real image of its level.
    progressive = next(((folder, a) for folder, a in anchors.items() if a), None)
    levels = set(progressive[1]) if progressive else set()
    drfs = tuple(sorted(set(opts.drfs) | {opts.ablation_drf}
                        | {k for k in levels if 1 < k < max(opts.drfs)}))
    started = time.strftime("%Y-%m-%d %H:%M")
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "date": started, "machine": _machine(device), "options": _jsonable(asdict(opts)),
        "test_seeds": [9 + 10 * i for i in range(opts.cases)],
        "validation_seeds": [8 + 10 * i for i in range(opts.cases)],
        "tuned": {}, "cases": {}, "ablations": {}, "progressive": {}, "speed": {},
    }
    examples: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="petrecon-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for family in opts.families:
            unet = _UNetBaseline(opts.weights, device)
            say(f"{family}: validation cases")
            val = [_make_case(family, 8 + 10 * i, drfs, opts.slices, device, tmp)
                   for i in range(opts.cases)]
            tuned = {str(k): {"gaussian_fwhm_mm": _tune(val, k, FWHM_GRID_MM, _gauss),
                              "nlm_h_fraction": _tune(val, k, NLM_H_GRID, _nlm)}
                     for k in opts.drfs}
            results["tuned"][family] = tuned
            tests = [_make_case(family, 9 + 10 * i, drfs, opts.slices, device, tmp)
                     for i in range(opts.cases)]
            if family == "nema":
                results["nema_full_dose"] = _nema_recovery(tests[0].suv(1), tests[0])
            for case in tests:
                for k in opts.drfs:
                    say(f"{family} seed {case.sim.seed} DRF {k}: methods")
                    outputs, anchor_volumes = _methods(
                        case, k, tuned[str(k)], unet, cascade_opts, compare,
                        progressive[0] if progressive else None)
                    if anchor_volumes:
                        results["progressive"].setdefault(family, {}).setdefault(
                            str(k), []).append(_progressive_scores(
                                anchor_volumes, outputs[_PROGRESSIVE_SOURCE][0], case, k))
                    rows = results["cases"].setdefault(family, {}).setdefault(str(k), {})
                    outputs.pop(_PROGRESSIVE_SOURCE, None)
                    for name, (volume, seconds, _) in outputs.items():
                        rows.setdefault(name, []).append(
                            {**score(volume, case, k), "seconds": seconds,
                             "seed": case.sim.seed})
                    if k == opts.ablation_drf and case is tests[0]:
                        examples[family] = {"truth": case.truth(), "full dose": case.suv(1)} | {
                            name: v for name, (v, _, _) in outputs.items()}
                        examples[family]["labels"] = case.sim.phantom.labels
                        speed_info = outputs["MiG-DM cascade"][2]
                        results["speed"].setdefault("cascade_timings", {})[family] = speed_info
                        results["speed"].setdefault("methods", {})[family] = {
                            name: seconds for name, (_, seconds, _) in outputs.items()}
            if family in ("brain", "body") and opts.ablations:
                results["ablations"][family] = _ablations(tests, opts, cascade_opts)
        if opts.families:
            say("speed: FLOPs and matrix-product rate")
            results["speed"] |= _speed(results, opts, cascade_opts, device)
        if opts.anatomy_study:
            results["anatomy"] = run_anatomy_study(opts, cascade_opts, device, tmp, say)
    results["seconds"] = time.perf_counter() - t_start
    table = render_table(results)
    results["table"] = table
    with staged_output(opts.out, opts.overwrite) as stage:
        (stage / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
        (stage / "table.md").write_text(table)
        if opts.figures:
            from pet_recon.benchmark_figures import drf_curves, image_grid

            for family, images in examples.items():
                image_grid(images, family, opts.ablation_drf, stage / f"images_{family}.png")
            if results["cases"]:
                drf_curves(results, stage / "drf_curves.png")
    return results


#: The method whose run also gives the progressive outputs (the main output is unchanged
#: by them, :meth:`pet_recon.cascade.Cascade.restore`).
_PROGRESSIVE_SOURCE = "progressive source"


#: The row of the full-dose image without its Poisson noise: what removing all the noise and
#: nothing else would score against the noisy full-dose reference.
NOISE_FREE = "full dose, noise-free"


def _methods(case: _Case, drf: int, tuned: dict[str, float], unet: _UNetBaseline,
             cascade_opts: CascadeOptions, compare: tuple[str, CascadeOptions] | None,
             progressive_weights: Path | None
             ) -> tuple[dict[str, tuple[np.ndarray, float, dict[str, Any]]], list[AnchorVolume]]:
    """Every method on one case and dose level: name -> (SUV volume, seconds, details),
    and the progressive outputs of the cascade run with ``progressive_weights`` (its
    outputs also under the key :data:`_PROGRESSIVE_SOURCE`)."""
    ld, meta = case.suv(drf), case.metas[drf]
    base = replace(cascade_opts, drf=drf, sino=case.sinos[drf])

    def cascade(opts: CascadeOptions, anchors: bool = False
                ) -> tuple[np.ndarray, dict[str, Any], list[AnchorVolume]]:
        progressive = (anchors and progressive_weights is not None
                       and opts.weights == progressive_weights)
        return _restore_mig_dm(ld, meta, replace(opts, progressive=progressive), [],
                               _NullBar(), case.sinos[drf])[:3]

    runs: dict[str, Callable[[], tuple[np.ndarray, dict[str, Any], list[AnchorVolume]]]] = {
        "low dose": lambda: (ld, {}, []),
        NOISE_FREE: lambda: (case.noise_free, {}, []),
        "Gaussian (tuned)": lambda: (gaussian_filter(ld, meta, tuned["gaussian_fwhm_mm"]), {},
                                     []),
        "non-local means (tuned)": lambda: (nl_means(ld, tuned["nlm_h_fraction"],
                                                     case.spacing), {}, []),
        "U-Net regression": lambda: (unet(ld, meta), {}, []),
        "SD1 alone, no sinogram": lambda: cascade(
            replace(base, resample_step=0, use_sinogram=False)),
        "MiG-DM, projected sinogram": lambda: cascade(replace(base, sino=None)),
        "MiG-DM cascade": lambda: cascade(base, anchors=True),
    }
    if compare is not None:
        runs[compare[0]] = lambda: cascade(replace(compare[1], drf=drf, sino=case.sinos[drf]),
                                           anchors=True)
    outputs, anchors = {}, []
    for name, run in runs.items():
        t0 = time.perf_counter()
        volume, details, found = run()
        outputs[name] = (volume, time.perf_counter() - t0, details)
        if found and name in ("MiG-DM cascade", *(compare[:1] if compare else ())):
            anchors, outputs[_PROGRESSIVE_SOURCE] = found, outputs[name]
    return outputs, anchors


def _progressive_scores(anchors: list[AnchorVolume], final: np.ndarray, case: _Case,
                        drf: int) -> dict[str, Any]:
    """PSNR (body mask, range = full-dose SUVmax as in :func:`score`) of each progressive
    output against the simulated image of its own dose level, the input, and full dose; and,
    for comparison, of the input and of the final output against that dose level."""
    fd, ld, mask = case.suv(1), case.suv(drf), case.body
    peak = float(fd[mask].max())
    rows = {}
    for anchor in anchors:
        level = case.suv(anchor.drf)
        rows[str(anchor.drf)] = {
            "timestep": anchor.timestep,
            "psnr_vs_level_db": psnr(anchor.volume, level, mask, peak),
            "psnr_vs_input_db": psnr(anchor.volume, ld, mask, peak),
            "psnr_vs_full_dose_db": psnr(anchor.volume, fd, mask, peak),
            "input_psnr_vs_level_db": psnr(ld, level, mask, peak),
            "final_psnr_vs_level_db": psnr(final, level, mask, peak),
        }
    return {"seed": case.sim.seed, "anchors": rows}


def _ablations(tests: list[_Case], opts: BenchOptions, cascade_opts: CascadeOptions
               ) -> dict[str, list[dict[str, float]]]:
    """Cascade variants at ``opts.ablation_drf``; the shuffled prompt is another family's."""
    from pet_recon.meta.prompt import build_record, render_prompt

    k = opts.ablation_drf
    rows: dict[str, list[dict[str, float]]] = {}
    for case in tests:
        other = "body" if case.sim.family != "body" else "brain"
        stranger = simulate_case(other, 9, slices=1, drfs=(k,), device=torch.device("cpu"))
        shuffled = render_prompt(build_record(series_meta(stranger, k, "1.2", "1.2.3", 1),
                                              drf=k))
        base = replace(cascade_opts, drf=k, sino=case.sinos[k])
        for name in opts.ablations:
            changes = dict(ABLATIONS[name])
            if changes.get("prompt") == "shuffled":
                changes["prompt"] = shuffled
            t0 = time.perf_counter()
            volume, *_ = _restore_mig_dm(case.suv(k), case.metas[k],
                                         replace(base, **changes), [], _NullBar(),
                                         case.sinos[k])
            rows.setdefault(name, []).append({**score(volume, case, k),
                                              "seconds": time.perf_counter() - t0,
                                              "seed": case.sim.seed})
    return rows


def _speed(results: dict[str, Any], opts: BenchOptions, cascade_opts: CascadeOptions,
           device: torch.device) -> dict[str, Any]:
    from pet_recon.cascade import native_bf16

    flops = cascade_flops_per_slice(cascade_opts, opts.weights, device)
    precision = "bf16" if native_bf16(device) else "fp32"  # what the cascade computes in
    rate = matmul_rate(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    per_family = results["speed"].get("cascade_timings", {})
    network_s = [sum(t["timings"].get(s, 0.0) for s in ("sinogram_branch_s", "sd1_s", "sd2_s"))
                 for t in per_family.values()]
    per_slice = statistics.median(network_s) / opts.slices if network_s else float("nan")
    floor = flops["total"] / rate
    return {"flops_per_slice": flops, "precision": precision, "matmul_flops_per_s": rate,
            "compute_floor_s_per_slice": floor, "network_s_per_slice": per_slice,
            "ratio_to_floor": per_slice / floor}


def _machine(device: torch.device) -> dict[str, Any]:
    import os

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor(),
                            "cpu_count": os.cpu_count(), "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ----------------------------------------------------------------------------- table


#: Columns of :func:`_row`, after its leading ones.
SCORE_COLUMNS = ("PSNR (dB)", "SSIM", "NRMSE", "lesion SUVmax bias",
                 "lesion SUVmax bias vs noise-free", "lesion SUVpeak bias", "mean SUV change",
                 "z-consistency", "s/study")


def table_header(*columns: str) -> list[str]:
    """The two header lines of a markdown table with these columns."""
    return ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]


def render_table(results: dict[str, Any]) -> str:
    """The markdown report: methods by family and DRF, ablations, speed (medians), and the
    anatomy study when it ran."""
    lines = [f"petrecon benchmark, {results['date']}, {results['machine']['platform']}, "
             f"device {results['machine']['device']}; test seeds "
             f"{', '.join(map(str, results['test_seeds']))}; medians over cases."]
    if results["cases"]:
        lines += ["", *table_header("family", "DRF", "method", *SCORE_COLUMNS)]
    for family, by_drf in results["cases"].items():
        for drf, methods in by_drf.items():
            for name, rows in methods.items():
                lines.append(_row([family, drf, name], rows))
    if results["ablations"]:
        drf = results["options"]["ablation_drf"]
        lines += ["", f"Ablations of the cascade at DRF {drf} (reference: the 'MiG-DM cascade' "
                  "row above).", "", *table_header("family", "variant", *SCORE_COLUMNS)]
        for family, variants in results["ablations"].items():
            for name, rows in variants.items():
                lines.append(_row([family, name], rows))
    if results.get("progressive"):
        lines += ["", "MAP-Diff progressive outputs (`reconstruct --progressive`): PSNR (dB, body "
                  "mask, range = full-dose SUVmax) of each 1/k-dose-equivalent output against "
                  "the simulated 1/k-dose image, the input and full dose; then the input's and "
                  "the final output's PSNR against that 1/k-dose image.", "",
                  *table_header("family", "input DRF", "anchor", "t_k", "vs 1/k dose",
                                "vs input", "vs full dose", "input vs 1/k dose",
                                "final vs 1/k dose")]
        for family, by_drf in results["progressive"].items():
            for drf, cases in by_drf.items():
                for k in cases[0]["anchors"]:
                    rows = [c["anchors"][k] for c in cases]
                    m = {key: _median(rows, key) for key in rows[0]}
                    lines.append(
                        f"| {family} | {drf} | 1/{k} | {m['timestep']:.0f} | "
                        f"{m['psnr_vs_level_db']:.2f} | {m['psnr_vs_input_db']:.2f} | "
                        f"{m['psnr_vs_full_dose_db']:.2f} | {m['input_psnr_vs_level_db']:.2f} | "
                        f"{m['final_psnr_vs_level_db']:.2f} |")
    nema = results["cases"].get("nema", {})
    if nema:
        lines += ["", "NEMA IEC phantom: contrast recovery CR (background variability BV) in % "
                  "per sphere, NEMA NU 2 (`docs/metrics.md`); full dose for comparison.", ""]
        for drf, methods in nema.items():
            first = next(iter(methods.values()))[0].get("nema", {})
            if "skipped" in first:
                continue
            spheres = list(first)
            lines += table_header(f"DRF {drf}", *spheres)
            full = results.get("nema_full_dose", {})
            if full and "skipped" not in full:
                lines.append("| full dose | " + " | ".join(
                    f"{full[d]['cr_pct']:.0f} ({full[d]['bv_pct']:.1f})" for d in spheres) + " |")
            for name, rows in methods.items():
                values = rows[0]["nema"]
                lines.append(f"| {name} | " + " | ".join(
                    f"{values[d]['cr_pct']:.0f} ({values[d]['bv_pct']:.1f})" for d in spheres)
                    + " |")
    speed = results["speed"]
    if "flops_per_slice" in speed:
        slices = results["options"]["slices"]
        lines += ["", f"Speed at DRF {results['options']['ablation_drf']} ({slices} planes of "
                  "128 x 128, one case):", "",
                  *table_header("family", "method or cascade stage", "s/study", "s/slice")]
        for family, methods in speed.get("methods", {}).items():
            for name, seconds in methods.items():
                lines.append(f"| {family} | {name} | {seconds:.2f} | {seconds / slices:.3f} |")
            timings = speed["cascade_timings"][family]["timings"]
            for stage, seconds in timings.items():
                lines.append(f"| {family} | cascade stage: {stage.removesuffix('_s')} | "
                             f"{seconds:.2f} | {seconds / slices:.3f} |")
        flops = speed["flops_per_slice"]
        lines += ["", f"Cascade network FLOPs per slice: {flops['total'] / 1e9:.1f} G "
                  f"(SD1 + sinogram branch {flops['sd1_and_branch'] / 1e9:.1f} G, SD2 "
                  f"{flops['sd2'] / 1e9:.1f} G); {speed['precision']} matrix products (the "
                  f"cascade's precision here): {speed['matmul_flops_per_s'] / 1e9:.1f} "
                  f"GFLOP/s; compute floor "
                  f"{speed['compute_floor_s_per_slice']:.3f} s/slice; measured "
                  f"{speed['network_s_per_slice']:.3f} s/slice in the networks: "
                  f"{speed['ratio_to_floor']:.1f} x the floor."]
    if results.get("anatomy"):
        from pet_recon.benchmark_anatomy import anatomy_table

        lines += anatomy_table(results["anatomy"])
    return "\n".join(lines) + "\n"


def _row(head: list[str], rows: list[dict[str, float]]) -> str:
    m = {k: _median(rows, k) for k in METRICS}
    return ("| " + " | ".join(str(h) for h in head) + f" | {m['psnr_db']:.2f} | "
            f"{m['ssim']:.3f} | {m['nrmse']:.3f} | {100 * m['lesion_suvmax_bias']:+.1f} % | "
            f"{100 * m['lesion_suvmax_bias_noise_free']:+.1f} % | "
            f"{100 * m['lesion_suvpeak_bias']:+.1f} % | {100 * m['mean_suv_change']:+.2f} % | "
            f"{m['z_consistency']:.2f} | {m['seconds']:.1f} |")
