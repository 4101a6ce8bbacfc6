"""`petrecon reconstruct`: read a low-dose PET series, restore it, write a derived series.

This module holds the one API function the CLI calls, :func:`reconstruct`. It reads the
input with the series reader, runs the chosen method, writes the derived series through the
writer into a temporary folder that is moved into place only when complete, and returns a
JSON-ready report.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

import pet_recon
from pet_recon.errors import PetReconError, warn
from pet_recon.io.metadata import SeriesMeta, VolumeGeometry
from pet_recon.io.resample import resample_volume
from pet_recon.io.series import read_series
from pet_recon.io.suv import SuvUnavailable, suv_scale
from pet_recon.io.writer import write_derived_series
from pet_recon.meta.prompt import build_record, render_prompt, uptake_warning
from pet_recon.metrics import body_mask
from pet_recon.models.intensity import reference_value
from pet_recon.output import check_output_dir, staged_output
from pet_recon.physics.geometry import SinogramGeometry

if TYPE_CHECKING:
    import torch

    from pet_recon.cascade import Cascade

log = logging.getLogger(__name__)


FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def gaussian_filter(volume: np.ndarray, meta: SeriesMeta, fwhm_mm: float) -> np.ndarray:
    """Isotropic 3D Gaussian post-filter in physical units.

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` float32 volume.
    meta : SeriesMeta
        Gives the voxel spacing in mm.
    fwhm_mm : float
        Full width at half maximum in mm (0 returns a copy).

    Returns
    -------
    np.ndarray
        Filtered volume, same shape, float32. The kernel is normalised, so total activity
        is preserved away from the volume's edges.
    """
    if fwhm_mm < 0:
        raise PetReconError(f"--fwhm must be >= 0 mm, got {fwhm_mm}")
    if fwhm_mm == 0:
        return volume.astype(np.float32, copy=True)
    image = meta.geometry.to_sitk(volume.astype(np.float32))
    sigma = fwhm_mm * FWHM_TO_SIGMA
    smoothed = sitk.DiscreteGaussian(image, variance=sigma * sigma, maximumKernelWidth=128,
                                     useImageSpacing=True)
    return sitk.GetArrayFromImage(smoothed).astype(np.float32)


#: Default of ``--anatomy-detail``: FWHM (mm) of the Gaussian above whose scale the MR or CT
#: may not change the PET-only restoration (chosen on a validation case, ``docs/anatomy.md``).
ANATOMY_DETAIL_FWHM_MM = 6.0


def detail_sigma_px(fwhm_mm: float, pixel_mm: tuple[float, float]) -> tuple[float, float]:
    """Standard deviation in pixels (rows, columns) of the anatomy bound's Gaussian.

    Parameters
    ----------
    fwhm_mm : float
        ``--anatomy-detail``: the Gaussian's FWHM in mm.
    pixel_mm : tuple of float
        Pixel spacing ``(x, y)`` in mm (columns, rows), as in ``VolumeGeometry.spacing``.
    """
    sigma_mm = fwhm_mm * FWHM_TO_SIGMA
    return sigma_mm / pixel_mm[1], sigma_mm / pixel_mm[0]


@dataclass
class CascadeOptions:
    """Options of ``--method mig-dm`` (see ``petrecon reconstruct --help``).

    Attributes
    ----------
    sino : Path or None
        Low-dose prompts sinogram (``.hs`` Interfile, or MetaImage/NIfTI), plane ``i`` being
        slice ``i`` of the series in ascending slice-normal order. Without it the low-dose
        image is projected with petrecon's projector instead (said in the report).
    drf : float or None
        Dose reduction factor for the prompt (else estimated from the injected activity).
    steps, sd2_steps : int
        Sampler steps of SD1 and SD2. SD1's default of 2 was chosen on validation cases
        (``docs/benchmark.md``, "SD1 steps"): better PSNR than 5 or 10 in a fraction of
        SD1's time, with the same lesion SUVmax bias.
    resample_step : int
        ``N`` of the resampling step between SD1 and SD2.
    sampler : str
        ``ddim`` or ``ddpm``.
    seed : int
        Seed of every random draw: the same seed gives the same output.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    batch_size : int
        Slices restored at once.
    weights : Path or None
        Weights folder (default: the shipped weights or ``$PETRECON_WEIGHTS``).
    samples : int
        Restore the volume this many times (different noise draws) and average: lowers
        the sampling noise at ``samples`` times the cost.
    mirror : bool
        Also restore the left-right mirrored volume and average the two (test-time
        self-ensemble, :meth:`pet_recon.cascade.Cascade.restore`): twice the networks'
        time for a small PSNR gain (``docs/benchmark.md``, "Mirrored second pass").
    shared_noise : bool
        Draw the initial and the resampling noise once per volume (one plane for every
        slice) instead of per slice, so that the sampling noise does not change from slice
        to slice. The default: per-slice noise gives slice-to-slice discontinuities (the
        benchmark's z-consistency metric and its cost in PSNR are in ``docs/benchmark.md``).
    use_sinogram, use_prompt, sd2_first : bool
        Ablations: no sinogram branch; blank prompt; SD2 before SD1.
    prompt : str or None
        Ablation: this prompt instead of the one built from the series' DICOM tags.
    preserve_mean : bool
        Scale the restored volume so that its mean inside the body equals the low-dose
        input's: the mean over a whole body is measured with almost no noise even at low
        dose, so the restoration must not change it (the factor is reported). The body is
        the mask (:func:`pet_recon.metrics.body_mask`) of the restored volume, not of the
        input: at low counts the input's mask is selected by the input's own noise, which
        biases its mean high (``docs/benchmark.md``, "Mean-preserving rescale").
    progressive : bool
        MAP-Diff progressive output: also restore, for every dose anchor ``k`` of the SD2
        weights between full dose and the input's dose (``1 < k < DRF``), SD2's estimate at
        the anchor's timestep ``t_k`` (``docs/map-diff.md``), written as one more derived
        series per anchor.
    anatomy : Path or None
        Folder, zip or file with an MR or CT series of the patient (``docs/anatomy.md``):
        brought onto the PET grid (:func:`pet_recon.io.anatomy.prepare_anatomy`), then onto
        the model's grid like the PET, normalised
        (:func:`pet_recon.models.anatomy.normalise_mr` or
        :func:`~pet_recon.models.anatomy.normalise_ct`) and given to the anatomy-guided SD2
        (M2Diff) with that modality's branch, which then replaces SD2. Needs weights with
        ``sd2-anatomy.safetensors`` and the modality's branch (``petrecon train anatomy``).
    register : bool or None
        With ``anatomy``: rigid registration of the MR or CT to the PET; None (default) only
        when their frames of reference differ, True always, False never.
    anatomy_detail_fwhm_mm : float
        With ``anatomy``: the MR or CT may change the PET-only restoration only in details
        finer than a Gaussian of this FWHM (mm, in plane); coarser, the PET-only SD2's output
        is kept (:func:`pet_recon.models.anatomy.bound_to_detail`, ``docs/anatomy.md``). 0
        turns the bound off (the guided SD2's output as it is).
    """

    sino: Path | None = None
    drf: float | None = None
    steps: int = 2
    sd2_steps: int = 5
    resample_step: int = 50
    sampler: str = "ddim"
    seed: int = 0
    device: str = "auto"
    batch_size: int = 8
    weights: Path | None = None
    samples: int = 1
    mirror: bool = False
    shared_noise: bool = True
    use_sinogram: bool = True
    use_prompt: bool = True
    sd2_first: bool = False
    prompt: str | None = None
    preserve_mean: bool = True
    progressive: bool = False
    anatomy: Path | None = None
    register: bool | None = None
    anatomy_detail_fwhm_mm: float = ANATOMY_DETAIL_FWHM_MM


@dataclass
class AnchorVolume:
    """One progressive output: SD2's estimate at a dose anchor, on the input grid.

    Attributes
    ----------
    drf : int
        The anchor's dose reduction factor ``k`` (the image is ``1/k``-dose equivalent).
    timestep : int
        ``t_k``, the anchor's calibrated diffusion timestep.
    volume : np.ndarray
        ``(slices, rows, columns)`` float32, in the unit of the restored volume.
    mean_preserving_factor : float
        Factor applied so that its mean over the body equals the input's.
    """

    drf: int
    timestep: int
    volume: np.ndarray
    mean_preserving_factor: float


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``; an error if CUDA is missing."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PetReconError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise PetReconError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def model_grid(meta: SeriesMeta, matrix: int) -> VolumeGeometry:
    """The model's grid for a series: ``matrix x matrix`` over the same in-plane field of
    view and the same slices (pixels of ``field of view / matrix`` mm)."""
    g = meta.geometry
    d = np.asarray(g.direction, dtype=float).reshape(3, 3)
    fov_x, fov_y = g.shape[2] * g.spacing[0], g.shape[1] * g.spacing[1]
    new_x, new_y = fov_x / matrix, fov_y / matrix
    # Keep the outer edge of the field of view: shift the first centre by half a pixel change.
    origin = (np.asarray(g.origin) + d[:, 0] * (new_x - g.spacing[0]) / 2
              + d[:, 1] * (new_y - g.spacing[1]) / 2)
    return VolumeGeometry(shape=(g.shape[0], matrix, matrix),
                          origin=tuple(float(v) for v in origin),
                          spacing=(new_x, new_y, g.spacing[2]), direction=g.direction)


def _model_sinograms(path: Path, n_slices: int, grid: VolumeGeometry,
                     target: SinogramGeometry) -> np.ndarray:
    """The user's sinogram on the model's sinogram grid, ``(planes, views, bins)``."""
    import torch

    from pet_recon.io.sinogram import read_sinogram
    from pet_recon.models.sinogram import resample_sinogram

    data, geometry, _ = read_sinogram(path)
    if geometry.n_planes != n_slices:
        raise PetReconError(f"{path}: {geometry.n_planes} sinogram planes for a series of "
                            f"{n_slices} slices")
    if abs(geometry.plane_mm - grid.spacing[2]) > 0.05 * grid.spacing[2]:
        raise PetReconError(f"{path}: plane spacing {geometry.plane_mm:g} mm differs from the "
                            f"series' slice spacing {grid.spacing[2]:g} mm")
    in_model_units = SinogramGeometry(  # the model grid is in pixels: bins in pixels too
        geometry.n_views, geometry.n_bins, geometry.bin_mm / grid.spacing[0],
        view_offset_deg=geometry.view_offset_deg)
    resampled = resample_sinogram(torch.from_numpy(data), in_model_units, target)
    return resampled.numpy()


def _anchor_levels(anchors: dict[int, int], drf: float | None, path: Path) -> dict[int, int]:
    """The anchors ``{k: t_k}`` of a ``--progressive`` run: those with ``1 < k < drf``."""
    if not anchors:
        raise PetReconError("--progressive: the SD2 weights carry no dose anchors (trained "
                            "without --anchor-loss)")
    if drf is None:
        raise PetReconError(f"{path}: --progressive needs the input's dose level; give --drf")
    return {k: t for k, t in sorted(anchors.items()) if 1 < k < drf}


#: Said in every MR-guided run without the anatomy bound (``--anatomy-detail 0``): the
#: benchmark's second leak check fails without it.
MR_LEAK_WARNING = ("anatomy: MR guidance is experimental: in the benchmark's leak check, "
                   "structures seen only on the MR changed the restored uptake there "
                   "(docs/benchmark.md, anatomy study); do not read uptake where MR and PET "
                   "disagree")
#: Said instead of :data:`MR_LEAK_WARNING` when the anatomy bound is on (``{fwhm}`` in mm).
MR_BOUNDED_WARNING = ("anatomy: MR guidance changes only details finer than {fwhm:g} mm FWHM "
                      "(--anatomy-detail); an MR-only structure smaller than that can still "
                      "change the restored uptake there (docs/anatomy.md); do not read uptake "
                      "where MR and PET disagree")
#: Said in every CT-guided run's warnings: the leak checks have been run with MR only.
CT_LEAK_WARNING = ("anatomy: CT guidance is experimental: the benchmark's leak checks were "
                   "run with MR only; do not read uptake where CT and PET disagree")


def _anatomy_planes(opts: CascadeOptions, cascade: Cascade, volume: np.ndarray,
                    meta: SeriesMeta, grid: VolumeGeometry, warnings: list[str]
                    ) -> tuple[np.ndarray, dict[str, object]]:
    """The MR or CT of ``opts.anatomy`` as the anatomy-guided SD2's input, its report entry.

    The series is read, registered when needed and resampled onto the PET grid
    (:func:`~pet_recon.io.anatomy.prepare_anatomy`, with the PET ``volume`` on ``meta``'s grid
    as the fixed image), moved to the model's ``grid`` by the same resampling as the PET,
    normalised (:func:`~pet_recon.models.anatomy.normalise_mr` for MR,
    :func:`~pet_recon.models.anatomy.normalise_ct` for CT) and neighbour-stacked. Only the
    branch of its modality is loaded (:meth:`~pet_recon.cascade.AnatomyGuidance.branch`).

    Returns
    -------
    planes : np.ndarray
        ``(slices, 2 * neighbours + 1, matrix, matrix)`` float32 normalised MR or CT.
    entry : dict
        ``prepare_anatomy``'s report (``modality``: ``MR`` or ``CT``), the normalisation
        (MR: ``scale`` in MR units and ``percentile``; CT: the fixed map) and the anatomy
        weights used (``weights_sha256``: file name -> SHA-256 of the U-Net and the branch).
    """
    from pet_recon.cascade import ANATOMY_FILES, neighbour_stack
    from pet_recon.io.anatomy import prepare_anatomy
    from pet_recon.models.anatomy import (
        CT_OFFSET_HU,
        CT_RANGE,
        CT_SCALE_HU,
        MR_PERCENTILE,
        normalise_ct,
        normalise_mr,
    )
    from pet_recon.weights import weights_dir

    if cascade.anatomy is None:
        raise PetReconError(f"{opts.weights or weights_dir()}: --anatomy needs the anatomy-guided "
                            f"SD2 ({' and '.join(ANATOMY_FILES.values())}; petrecon train "
                            "anatomy), which these weights do not have")
    anatomy, report = prepare_anatomy(opts.anatomy, volume, meta, register=opts.register)
    modality = str(report["modality"])
    hashes = cascade.anatomy.hashes(modality)  # loads and verifies the branch, or refuses
    warnings.extend(f"anatomy: {text}" for text in report["warnings"])  # logged by the reader
    if modality == "CT":
        warn(warnings, CT_LEAK_WARNING, log)
    elif opts.anatomy_detail_fwhm_mm > 0:
        warn(warnings, MR_BOUNDED_WARNING.format(fwhm=opts.anatomy_detail_fwhm_mm), log)
    else:
        warn(warnings, MR_LEAK_WARNING, log)
    on_grid = resample_volume(anatomy, meta.geometry, grid, default=report["outside_value"])
    if modality == "CT":
        normalised = normalise_ct(on_grid)
        normalisation: dict[str, object] = {"offset_hu": CT_OFFSET_HU, "scale_hu": CT_SCALE_HU,
                                            "clip": list(CT_RANGE)}
    else:
        try:
            normalised, scale = normalise_mr(on_grid, grid.spacing)
        except ValueError as exc:
            raise PetReconError(f"{opts.anatomy}: {exc}") from None
        normalisation = {"scale": scale, "percentile": MR_PERCENTILE}
    entry = {**report, "normalisation": normalisation, "weights_sha256": hashes}
    return neighbour_stack(normalised, cascade.neighbours), entry


def _body_rescale(restored: np.ndarray, reference: np.ndarray, body: np.ndarray) -> float:
    """Scale ``restored`` in place to the mean of ``reference`` over ``body``; the factor."""
    if not body.any() or float(restored[body].mean()) <= 0:
        return 1.0
    factor = float(reference[body].mean()) / float(restored[body].mean())
    restored *= factor
    return factor


def _restore_mig_dm(volume_suv: np.ndarray, meta: SeriesMeta, opts: CascadeOptions,
                    warnings: list[str], bar: tqdm, path: Path
                    ) -> tuple[np.ndarray, dict[str, object], list[AnchorVolume], np.ndarray]:
    """Run the cascade on a volume in SUV (or any linear unit); returns the same unit,
    the report's details, the progressive outputs (empty unless ``opts.progressive``) and
    the body mask of the mean-preserving rescale (of the restored volume, input grid)."""
    import torch

    from pet_recon.cascade import Cascade, native_bf16, neighbour_stack
    from pet_recon.diffusion.schedule import randn_like

    device = resolve_device(opts.device)
    t0 = time.perf_counter()
    cascade = Cascade.load(opts.weights, device)
    timings = {"load_weights_s": time.perf_counter() - t0}
    matrix = int(cascade.branch.config["image_size"])
    grid = model_grid(meta, matrix)
    t0 = time.perf_counter()
    low = resample_volume(volume_suv, meta.geometry, grid)
    ref = reference_value(low, grid.spacing)
    sino_grid = SinogramGeometry(n_views=int(cascade.branch.config["n_views"]),
                                 n_bins=int(cascade.branch.config["n_bins"]), bin_mm=1.0)
    sinograms = None
    if opts.sino is not None:
        sinograms = _model_sinograms(opts.sino, meta.geometry.shape[0], grid, sino_grid)
        source = f"measured ({opts.sino})"
    else:
        source = "projected from the low-dose image (no --sino given)"
        warn(warnings, "no sinogram given: the sinogram branch uses the projection of the "
                       "low-dose image", log)
    record = build_record(meta, drf=opts.drf)
    prompt = opts.prompt if opts.prompt is not None else render_prompt(record)
    levels: dict[int, int] = {}
    if opts.progressive:
        drf = 1.0 / record.dose_fraction if record.dose_fraction else None
        levels = _anchor_levels(cascade.anchors, drf, path)
        if not levels:
            warn(warnings, f"--progressive: no dose anchor lies between full dose and the "
                           f"input's dose (anchors {sorted(cascade.anchors)}, input DRF "
                           f"{drf:g}); no progressive series written", log)
    if (problem := uptake_warning(meta)) is not None:
        warn(warnings, problem, log)
    timings["prepare_s"] = time.perf_counter() - t0
    anatomy, anatomy_entry = None, None
    if opts.anatomy is not None:
        t0 = time.perf_counter()
        anatomy, anatomy_entry = _anatomy_planes(opts, cascade, volume_suv, meta, grid, warnings)
        timings["anatomy_s"] = time.perf_counter() - t0

    sigma_px = None
    if anatomy_entry is not None and opts.anatomy_detail_fwhm_mm > 0:
        sigma_px = detail_sigma_px(opts.anatomy_detail_fwhm_mm, grid.spacing[:2])
    if anatomy_entry is not None:
        anatomy_entry["detail_bound"] = None if sigma_px is None else {
            "fwhm_mm": opts.anatomy_detail_fwhm_mm, "sigma_px": list(sigma_px)}
    stacked = neighbour_stack(low / ref, cascade.neighbours)
    generator = torch.Generator().manual_seed(opts.seed)
    out = np.zeros_like(low)
    anchor_out = {k: np.zeros_like(low) for k in levels}
    stage_s: dict[str, float] = {}
    for _ in range(opts.samples):
        noise = None
        if opts.shared_noise:
            plane = torch.empty(1, 1, *low.shape[1:])
            noise = (randn_like(plane, generator), randn_like(plane, generator))
        for start in range(0, low.shape[0], opts.batch_size):
            stop = min(start + opts.batch_size, low.shape[0])
            sino = None if sinograms is None else torch.from_numpy(sinograms[start:stop, None])
            anchor_images: dict[int, torch.Tensor] = {}
            planes = None if anatomy is None else torch.from_numpy(anatomy[start:stop])
            restored = cascade.restore(
                torch.from_numpy(stacked[start:stop]), sino, prompt, steps=opts.steps,
                sd2_steps=opts.sd2_steps, resample_step=opts.resample_step,
                sampler=opts.sampler, generator=generator, use_sinogram=opts.use_sinogram,
                use_prompt=opts.use_prompt, sd2_first=opts.sd2_first, noise=noise,
                anchor_steps=sorted(set(levels.values())), anchor_images=anchor_images,
                anatomy=planes, modality=str((anatomy_entry or {}).get("modality", "MR")),
                anatomy_sigma_px=sigma_px, mirror=opts.mirror,
                timings=stage_s)
            out[start:stop] += restored[:, 0].float().cpu().numpy() * (ref / opts.samples)
            for k, t_k in levels.items():
                anchor_out[k][start:stop] += (anchor_images[t_k][:, 0].float().cpu().numpy()
                                              * (ref / opts.samples))
            bar.update(stop - start)
    timings |= stage_s
    t0 = time.perf_counter()
    back = resample_volume(out, grid, meta.geometry)
    timings["resample_back_s"] = time.perf_counter() - t0
    # The mean-preserving rescale is on the input grid, where the report measures the mean,
    # inside the body mask of the restored volume: at low counts a mask drawn on the input is
    # selected by the input's own noise, and its mean there is biased high.
    body = body_mask(back, meta.geometry.spacing)
    rescale = _body_rescale(back, volume_suv, body) if opts.preserve_mean else 1.0
    if opts.preserve_mean and (not body.any() or float(back[body].mean()) <= 0):
        warn(warnings, f"{path}: the restored mean over the body is not positive, so the "
                       "output could not be rescaled to the input's mean SUV; check the "
                       "weights", log)
    anchors = []
    for k, t_k in levels.items():
        volume_k = resample_volume(anchor_out[k], grid, meta.geometry)
        factor = _body_rescale(volume_k, volume_suv, body) if opts.preserve_mean else 1.0
        anchors.append(AnchorVolume(k, t_k, volume_k, factor))
    info: dict[str, object] = {
        "device": str(device),
        "precision": "bf16 autocast" if native_bf16(device) else "fp32",
        "weights_sha256": cascade.hashes,
        "model_grid": {"matrix": matrix, "pixel_mm": list(grid.spacing[:2])},
        "intensity_reference": ref,
        "mean_preserving_factor": rescale,
        "sinogram": source,
        "prompt": prompt,
        "sampler": opts.sampler,
        "steps": {"sd1": opts.steps, "sd2": min(opts.sd2_steps, opts.resample_step)},
        "resample_step": opts.resample_step,
        "seed": opts.seed,
        "samples_averaged": opts.samples,
        "mirrored_pass": opts.mirror,
        "noise": "shared across slices" if opts.shared_noise else "per slice",
        "ablations": {"sinogram_branch": opts.use_sinogram, "prompt": opts.use_prompt,
                      "sd2_first": opts.sd2_first, "prompt_replaced": opts.prompt is not None},
        "timings": timings,
    }
    if anatomy_entry is not None:
        info["anatomy"] = anatomy_entry
    if opts.progressive:
        info["progressive"] = {"anchors": {str(k): t for k, t in sorted(cascade.anchors.items())},
                               "written": {str(k): t for k, t in levels.items()}}
    return back, info, anchors, body


METHODS = ("mig-dm", "gaussian")


def _derivation(method: str, fwhm_mm: float, cascade: CascadeOptions,
                modality: str | None) -> str:
    """The derived series' Derivation Description; ``modality`` of the anatomy or None."""
    text = f"petrecon {pet_recon.__version__}: low-dose PET restoration, method {method}"
    if method == "gaussian":
        return text + f", 3D Gaussian FWHM {fwhm_mm:g} mm"
    sd2 = f"{modality}-guided SD2 (M2Diff)" if modality is not None else "SD2"
    return (text + f" (SRM, sinogram adapter, SD1 {cascade.steps} {cascade.sampler} steps, "
            f"resample to step {cascade.resample_step}, {sd2} {cascade.sd2_steps} steps, "
            f"seed {cascade.seed}"
            + (f", mean of {cascade.samples} samples" if cascade.samples > 1 else "")
            + (", averaged with a mirrored pass" if cascade.mirror else "") + ")")


def _write_anchor(anchor: AnchorVolume, index: int, meta: SeriesMeta, staging: Path,
                  out_dir: Path, cascade: CascadeOptions, modality: str | None
                  ) -> dict[str, object]:
    """Write one progressive output as ``progressive/drf-<k>/`` of the output folder."""
    folder = Path("progressive") / f"drf-{anchor.drf}"
    files = write_derived_series(
        anchor.volume, meta, staging / folder,
        series_description=f"petrecon mig-dm 1/{anchor.drf}-dose equivalent",
        derivation_description=(
            _derivation("mig-dm", 0.0, cascade, modality)
            + f"; MAP-Diff progressive output: 1/{anchor.drf}-dose equivalent, SD2's estimate "
            f"at the dose anchor's timestep {anchor.timestep}"),
        series_number=(meta.source.series_number or 0) + 1000 + index,
    )
    return {"drf": anchor.drf, "label": f"1/{anchor.drf}-dose equivalent",
            "timestep": anchor.timestep, "path": str(out_dir / folder), "n_files": len(files),
            "mean_preserving_factor": anchor.mean_preserving_factor}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import pydicom

    try:  # from the installed metadata: importing torch takes longer than a gaussian run
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    return {
        "petrecon": pet_recon.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch_version,
        "pydicom": pydicom.__version__,
        "SimpleITK": sitk.Version_VersionString(),
    }


def _suv_stats(volume: np.ndarray, factors: np.ndarray, body: np.ndarray) -> dict[str, float]:
    """SUV max of the volume and mean SUV inside the body mask (of the output)."""
    suv = volume * factors[:, None, None]
    return {"suv_max": float(suv.max()),
            "suv_mean_body": float(suv[body].mean()) if body.any() else float("nan")}


def _check_file_output(path: Path | None, overwrite: bool, what: str) -> None:
    """Fail before anything is written when ``path`` exists or cannot be written later."""
    if path is None:
        return
    if path.is_dir():
        raise PetReconError(f"{path}: {what} path is a folder")
    if path.exists() and not overwrite:
        raise PetReconError(f"{path}: {what} exists (use --overwrite)")
    if not path.parent.is_dir():
        raise PetReconError(f"{path}: cannot write {what}: {path.parent} is not an existing folder")


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".partial-{path.name}")  # keeps the suffix
    try:
        write(tmp)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PetReconError(f"{path}: cannot write ({exc.strerror})") from None


def reconstruct(
    in_path: Path,
    out_dir: Path,
    *,
    method: str = "gaussian",
    fwhm_mm: float = 6.0,
    series_uid: str | None = None,
    overwrite: bool = False,
    report_path: Path | None = None,
    preview_path: Path | None = None,
    weight_kg: float | None = None,
    dose_mbq: float | None = None,
    cascade: CascadeOptions | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Restore a low-dose PET series and write it as a derived DICOM series.

    Parameters
    ----------
    in_path : Path
        Folder (searched recursively) or zip file with the low-dose PET series.
    out_dir : Path
        Folder for the derived series; must not exist or be empty unless ``overwrite``.
    method : {"mig-dm", "gaussian"}
        Restoration method. ``mig-dm``: the MiG-DM cascade (:mod:`pet_recon.cascade`) with
        the shipped weights; ``gaussian``: 3D Gaussian post-filter of ``fwhm_mm``.
    fwhm_mm : float
        FWHM of the Gaussian filter in mm.
    series_uid : str, optional
        SeriesInstanceUID to use when the input holds several PET series.
    overwrite : bool
        Replace existing outputs (only once the new ones are complete).
    report_path, preview_path : Path, optional
        Where to write the JSON run report and the PNG preview.
    weight_kg, dose_mbq : float, optional
        Override patient weight and injected activity for SUV.
    cascade : CascadeOptions, optional
        Options of ``mig-dm`` (defaults when None).
    progress : bool
        Show a tqdm progress bar on stderr.

    Returns
    -------
    dict
        The run report (also written to ``report_path`` when given).
    """
    if method not in METHODS:
        raise PetReconError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    cascade = cascade or CascadeOptions()
    if cascade.progressive and method != "mig-dm":
        raise PetReconError("--progressive needs --method mig-dm")
    if cascade.anatomy is not None and method != "mig-dm":
        raise PetReconError("--anatomy needs --method mig-dm")
    if cascade.progressive and (cascade.resample_step == 0 or cascade.sd2_first):
        raise PetReconError("--progressive needs SD2 to finish after SD1 (--resample-step > 0)")
    if method == "mig-dm" and cascade.sino is not None and not cascade.sino.exists():
        raise PetReconError(f"{cascade.sino}: sinogram file not found")
    check_output_dir(out_dir, overwrite)
    _check_file_output(report_path, overwrite, "report")
    _check_file_output(preview_path, overwrite, "preview")

    timings: dict[str, float] = {}
    # The input is read (and so checked) before the progress bar starts, so that a problem
    # with it is reported on one line of its own.
    t0 = time.perf_counter()
    volume, meta = read_series(in_path, series_uid=series_uid)
    timings["read_s"] = time.perf_counter() - t0

    warnings = list(meta.warnings)
    try:
        scale = suv_scale(meta, weight_kg=weight_kg, dose_mbq=dose_mbq)
        factors: np.ndarray | None = np.asarray(scale.factors, dtype=np.float64)
        suv_type: str | None = scale.suv_type
    except SuvUnavailable as exc:
        factors, suv_type = None, None
        warn(warnings, f"SUV not available: {exc}", log)

    n_slices = meta.geometry.shape[0]
    details: dict[str, object] = {}
    anchors: list[AnchorVolume] = []
    body: np.ndarray | None = None  # the mig-dm rescale's; else the output's, below
    passes = cascade.samples if method == "mig-dm" else 1
    with tqdm(total=n_slices * passes + 1, desc="petrecon", unit="slice",
              disable=not progress) as bar:
        t0 = time.perf_counter()
        bar.set_postfix_str(method)
        if method == "gaussian":
            restored = gaussian_filter(volume, meta, fwhm_mm)
            bar.update(n_slices)
        else:  # mig-dm updates the bar once per slice and sample
            per_slice = factors[:, None, None] if factors is not None else 1.0
            restored_suv, details, anchors, body = _restore_mig_dm(
                volume * per_slice, meta, cascade, warnings, bar, in_path)
            restored = (restored_suv / per_slice).astype(np.float32)
            for anchor in anchors:
                anchor.volume = (anchor.volume / per_slice).astype(np.float32)
        timings["restore_s"] = time.perf_counter() - t0
        anatomy = details.get("anatomy")
        modality = str(anatomy["modality"]) if isinstance(anatomy, dict) else None

        t0 = time.perf_counter()
        bar.set_postfix_str("writing")
        description = f"petrecon {method}" + (f" {fwhm_mm:g}mm" if method == "gaussian" else "")
        with staged_output(out_dir, overwrite) as staging:
            files = write_derived_series(
                restored,
                meta,
                staging,
                series_description=description[:64],
                derivation_description=_derivation(method, fwhm_mm, cascade, modality),
            )
            progressive = [_write_anchor(anchor, i, meta, staging, out_dir, cascade, modality)
                           for i, anchor in enumerate(anchors, start=1)]
        timings["write_s"] = time.perf_counter() - t0
        bar.update()

    if preview_path is not None:
        from pet_recon.preview import write_preview  # matplotlib: imported only when needed

        first = float(factors[0]) if factors is not None else None
        _write_atomic(preview_path, lambda p: write_preview(
            volume, restored, p, suv_factor=first, spacing=meta.geometry.spacing,
            units=meta.units))

    if body is None:
        body = body_mask(restored, meta.geometry.spacing)
    report: dict[str, object] = {
        "versions": _versions(),
        "method": method,
        "parameters": {"fwhm_mm": fwhm_mm} if method == "gaussian" else details,
        "input": {
            "path": str(in_path),
            "series_instance_uid": meta.source.series_instance_uid,
            "n_slices": meta.geometry.shape[0],
            "matrix": list(meta.geometry.shape[1:]),
            "units": meta.units,
            "suv_type": suv_type,
            **({"suv": _suv_stats(volume, factors, body)} if factors is not None else {}),
        },
        "output": {
            "path": str(out_dir),
            "n_files": len(files),
            **({"suv": _suv_stats(restored, factors, body)} if factors is not None else {}),
        },
        **({"progressive": [
            entry | ({"suv": _suv_stats(anchor.volume, factors, body)}
                     if factors is not None else {})
            for entry, anchor in zip(progressive, anchors, strict=True)]}
           if cascade.progressive and method == "mig-dm" else {}),
        "timings": timings,
        "warnings": warnings,
    }
    if report_path is not None:
        _write_atomic(report_path, lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))
    return report
