"""The anatomy study of ``petrecon bench --anatomy-study`` (issue #7, M2Diff).

Does an MR (or a CT) of the patient help the cascade, and does the MR leak into the PET?
Brain cases of the test seeds (``9 + 10 i``) are simulated for each tracer of
:data:`TRACERS` (FDG with its hypometabolic cortical regions; amyloid-positive). At every dose
level the cascade restores the same low-dose volume five times (:data:`RUNS`): PET only; with
the case's MR; with the MR rendered without the lesions; with the MR holding synthetic
structures the PET does not have; and with the MR again under the next seed, as a noise
reference; and, when the weights hold the CT branch, a sixth time with the case's CT
(:data:`CT_RUNS`). Every MR is written as a DICOM MR series in its own frame of reference,
so each run registers it to the PET (the default of ``reconstruct --anatomy``); the CT, in
the PET's frame of reference (a PET/CT), is not registered. Scores, against the full-dose
image:

- the benchmark's :func:`~pet_recon.benchmark.score` (PSNR, SSIM, lesion SUVmax bias, ...);
- FDG: the mean SUV bias in each hypometabolic region's grey matter
  (:func:`hypometabolic_vois`), and in the grey matter away from every region: MR guidance
  must not fill in a hypometabolism that the MR cannot show;
- leak check 1, a lesion in the PET but not in the MR: each lesion's SUVmax bias PET only,
  with the MR (where the lesion is dark) and with the lesion-free MR;
- leak check 2, a structure in the MR without uptake: the change of the output's mean SUV in
  each synthetic structure (:func:`place_structures`) and of its contrast to a shell around it
  between the runs with and without the structures in the MR, next to the same change for
  the full-dose image (0: it has no MR) and between two runs with the plain MR and different
  seeds (the sampling noise).

The variant MRs are exact: :func:`pet_recon.physics.phantoms.brain` renders the case's
phantom again from its seed with ``mr_lesions=False`` or ``mr_spheres``, so the PET, the
misregistration, the MR bias field and the MR noise are the same and the MR differs only at
the lesions or the structures. ``docs/benchmark.md`` ("Anatomy study") describes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from pet_recon.benchmark import (
    BenchOptions,
    _Case,
    _make_case,
    _median,
    _NullBar,
    score,
    table_header,
)
from pet_recon.cascade import ANATOMY_FILES, Cascade
from pet_recon.errors import PetReconError
from pet_recon.physics.phantoms import LESION_BASE, Label, MrSphere, Phantom, make_phantom
from pet_recon.physics.simulate import write_ct_series, write_mr_series
from pet_recon.pipeline import CascadeOptions, _restore_mig_dm

#: Brain tracers of the study (``simulate_case``'s ``phantom_kwargs["tracer"]``).
TRACERS = ("FDG", "amyloid+")
PET_ONLY = "PET only"
WITH_MR = "with MR"
LESIONS_REMOVED = "with MR, lesions removed"
STRUCTURES_ADDED = "with MR, structures added"
NOISE_REFERENCE = "with MR, next seed"
WITH_CT = "with CT"
#: The cascade runs of a case and dose level: name -> (anatomy series or None, seed offset).
RUNS: dict[str, tuple[str | None, int]] = {
    PET_ONLY: (None, 0),
    WITH_MR: ("mr", 0),
    LESIONS_REMOVED: ("mr-without-lesions", 0),
    STRUCTURES_ADDED: ("mr-with-structures", 0),
    NOISE_REFERENCE: ("mr", 1),
}
#: Added to :data:`RUNS` when the weights hold the CT branch (:func:`study_runs`).
CT_RUNS: dict[str, tuple[str | None, int]] = {WITH_CT: ("ct", 0)}
#: MR tissue of the synthetic structures of leak check 2, one structure each: dark like CSF
#: (a cyst: no uptake) or grey-matter-like (hot on FDG), in white matter.
STRUCTURE_TISSUES = ("csf", "grey matter", "csf")
#: Diameter range of a structure, mm (drawn uniformly; smaller when no room is found).
STRUCTURE_DIAMETERS_MM = (12.0, 20.0)
#: Structures of the case of seed ``s`` are placed by ``np.random.default_rng([7, s])``.
STRUCTURE_SEED = 7
#: White matter kept around a structure, and the gap to lesions and other structures, mm.
STRUCTURE_MARGIN_MM = 2.0
#: The shell of a structure of radius ``r``: voxel centres ``r + 2`` to ``r + 6`` mm away.
SHELL_MM = (2.0, 6.0)
#: A hypometabolic region's VOI: its grey matter within this fraction of its radius.
HYPOMETABOLIC_FRACTION = 0.5
#: Grey matter farther than this many radii from every region is the normal cortex.
NORMAL_CORTEX_RADII = 2.0


def check_anatomy_weights(weights: Path | None, device: torch.device) -> None:
    """Refuse, in one line, a weights folder without the anatomy-guided SD2.

    Raises
    ------
    PetReconError
        Naming the folder and :data:`~pet_recon.cascade.ANATOMY_FILES`.
    """
    from pet_recon.weights import weights_dir

    if Cascade.load(weights, device).anatomy is None:
        raise PetReconError(f"{weights or weights_dir()}: --anatomy-study needs the "
                            f"anatomy-guided SD2 ({' and '.join(ANATOMY_FILES.values())}; "
                            "petrecon train anatomy), which these weights do not have")


def study_runs(weights: Path | None, device: torch.device) -> dict[str, tuple[str | None, int]]:
    """:data:`RUNS`, plus :data:`CT_RUNS` when the weights hold the CT branch."""
    anatomy = Cascade.load(weights, device).anatomy
    return RUNS | (CT_RUNS if anatomy is not None and "CT" in anatomy.available else {})


# ----------------------------------------------------------------------------- VOIs


def _grid_mm(phantom: Phantom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates (mm about the grid centre), broadcastable ``z, y, x``."""
    g = phantom.geometry
    return g.z_mm()[:, None, None], g.y_mm()[None, :, None], g.x_mm()[None, None, :]


def _distance_mm(phantom: Phantom, centre: tuple[float, float, float]) -> np.ndarray:
    """``(planes, ny, nx)`` distance in mm of every voxel centre to ``centre`` (x, y, z)."""
    z, y, x = _grid_mm(phantom)
    return np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)


def place_structures(phantom: Phantom, seed: int) -> list[MrSphere]:
    """Spheres for leak check 2 in white matter of the phantom, one per
    :data:`STRUCTURE_TISSUES`.

    A structure of radius ``r`` is centred on a voxel of white matter at least ``r +``
    :data:`STRUCTURE_MARGIN_MM` deep (the slab's ends count as outside), at least ``r + R +``
    the margin from the centre of each lesion (``R``: half its diameter) and of each
    hypometabolic region (``R``: its radius), and its surface is at least the shell's outer
    distance (:data:`SHELL_MM`) from another structure's, so that no shell holds a structure.
    Diameters are drawn from :data:`STRUCTURE_DIAMETERS_MM` and shrunk by 2 mm while no position
    is left; the position is a random allowed voxel centre. Random draws come from
    ``np.random.default_rng([STRUCTURE_SEED, seed])``.

    Returns
    -------
    list of MrSphere
        Fewer than :data:`STRUCTURE_TISSUES` when no room is left even at the smallest
        diameter.
    """
    g = phantom.geometry
    rng = np.random.default_rng([STRUCTURE_SEED, seed])
    white = np.pad(phantom.labels == Label.WHITE_MATTER, ((1, 1), (0, 0), (0, 0)))
    depth = ndimage.distance_transform_edt(white, sampling=(g.plane_mm, g.pixel_mm,
                                                            g.pixel_mm))[1:-1]
    keep_out = [(d["centre_mm"], d["diameter_mm"] / 2 + STRUCTURE_MARGIN_MM)
                for d in phantom.info.get("lesions", [])]
    keep_out += [(d["centre_mm"], d["radius_mm"] + STRUCTURE_MARGIN_MM)
                 for d in phantom.info.get("hypometabolic", [])]
    axes = (g.z_mm(), g.y_mm(), g.x_mm())
    structures: list[MrSphere] = []
    for tissue in STRUCTURE_TISSUES:
        diameter = float(rng.uniform(*STRUCTURE_DIAMETERS_MM))
        while True:
            radius = diameter / 2
            index = np.argwhere(depth >= radius + STRUCTURE_MARGIN_MM)
            points = np.stack([axes[2][index[:, 2]], axes[1][index[:, 1]],
                               axes[0][index[:, 0]]], axis=1)  # (n, 3) x, y, z in mm
            allowed = np.ones(len(points), bool)
            for centre, reach in keep_out:
                allowed &= np.linalg.norm(points - centre, axis=1) >= radius + reach
            for other in structures:
                allowed &= (np.linalg.norm(points - other.centre_mm, axis=1)
                            >= radius + SHELL_MM[1] + other.diameter_mm / 2)
            if allowed.any() or diameter <= STRUCTURE_DIAMETERS_MM[0]:
                break
            diameter = max(STRUCTURE_DIAMETERS_MM[0], diameter - 2.0)
        if not allowed.any():
            break
        point = points[rng.choice(np.flatnonzero(allowed))]
        structures.append(MrSphere((float(point[0]), float(point[1]), float(point[2])),
                                   diameter, tissue))
    return structures


def structure_vois(phantom: Phantom, structures: list[MrSphere]) -> np.ndarray:
    """Label map of the structures and their shells on the phantom's grid.

    Structure ``i`` is label ``2 i + 1`` (voxel centres within its radius), its shell label
    ``2 i + 2`` (voxel centres :data:`SHELL_MM` beyond its radius, without lesion voxels and
    without another structure's voxels).

    Returns
    -------
    np.ndarray
        ``(planes, ny, nx)`` int32.
    """
    labels = np.zeros(phantom.geometry.shape, np.int32)
    inside = np.zeros(phantom.geometry.shape, bool)
    for i, structure in enumerate(structures):
        distance = _distance_mm(phantom, structure.centre_mm)
        radius = structure.diameter_mm / 2
        shell = (distance > radius + SHELL_MM[0]) & (distance <= radius + SHELL_MM[1])
        labels[shell & (labels == 0)] = 2 * i + 2
        labels[distance <= radius] = 2 * i + 1
        inside |= distance <= radius
    labels[(labels % 2 == 0) & (inside | (phantom.labels >= LESION_BASE))] = 0
    return labels


def hypometabolic_vois(phantom: Phantom) -> np.ndarray:
    """Label map of the FDG hypometabolic regions' grey matter and of the normal cortex.

    Region ``i`` of ``phantom.info["hypometabolic"]`` is label ``i + 1``: the voxels labelled
    ``GREY_MATTER`` whose centres lie within :data:`HYPOMETABOLIC_FRACTION` of its radius of
    its centre, where its uptake reduction is 98-100 % of the full one (the reduction is
    ``reduction / (1 + (d / radius)^6)`` at distance ``d``). Label ``n + 1`` (``n``
    regions) is the normal cortex: ``GREY_MATTER`` farther than :data:`NORMAL_CORTEX_RADII`
    radii from every region (the reduction below 1/65 of the full one there).

    Returns
    -------
    np.ndarray
        ``(planes, ny, nx)`` int32; all zero for a phantom without regions.
    """
    regions = phantom.info.get("hypometabolic", [])
    labels = np.zeros(phantom.geometry.shape, np.int32)
    if not regions:
        return labels
    grey = phantom.labels == Label.GREY_MATTER
    normal = grey.copy()
    for i, region in enumerate(regions):
        distance = _distance_mm(phantom, region["centre_mm"])
        labels[grey & (distance <= HYPOMETABOLIC_FRACTION * region["radius_mm"])] = i + 1
        normal &= distance > NORMAL_CORTEX_RADII * region["radius_mm"]
    labels[normal] = len(regions) + 1
    return labels


def _voi_means(volume: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Mean of ``volume`` over labels ``1 .. count`` (NaN for an empty label), ``(count,)``."""
    flat = labels.ravel()
    sums = np.bincount(flat, weights=volume.ravel().astype(np.float64), minlength=count + 1)
    voxels = np.bincount(flat, minlength=count + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / voxels)[1:count + 1]


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# ----------------------------------------------------------------------------- cases


@dataclass
class _Study:
    """A brain case of the study with its MR variants and its CT written as DICOM series
    (``series``: ``mr``, ``mr-without-lesions``, ``mr-with-structures``, ``ct``)."""

    case: _Case
    series: dict[str, Path]
    structures: list[MrSphere]
    structure_labels: np.ndarray
    hypometabolic_labels: np.ndarray

    def describe(self) -> dict[str, Any]:
        """The case's JSON entry: seed, tracer, lesions, regions, structures, MR motion."""
        info = self.case.sim.phantom.info
        n = len(info["hypometabolic"])
        voxels = np.bincount(self.hypometabolic_labels.ravel(), minlength=n + 2)
        return {
            "seed": self.case.sim.seed, "tracer": info["tracer"],
            "lesions": [{k: d[k] for k in ("label", "centre_mm", "diameter_mm", "host")}
                        for d in info["lesions"]],
            "hypometabolic": [region | {"voi_voxels": int(voxels[i + 1])}
                              for i, region in enumerate(info["hypometabolic"])],
            "normal_cortex_voxels": int(voxels[n + 1]) if n else 0,
            "structures": [{"tissue": s.tissue, "diameter_mm": s.diameter_mm,
                            "centre_mm": list(s.centre_mm)} for s in self.structures],
            "mr_misregistration": info["mr_misregistration"],
        }


def _study(tracer: str, seed: int, opts: BenchOptions, device: torch.device, tmp: Path
           ) -> _Study:
    """Simulate the case, render its MR variants, write the three MR series and the CT series
    into ``tmp``."""
    tmp.mkdir(parents=True)
    case = _make_case("brain", seed, opts.drfs, opts.slices, device, tmp,
                      phantom_kwargs={"tracer": tracer})
    sim = case.sim
    structures = place_structures(sim.phantom, seed)
    volumes = {
        "mr": sim.phantom.mr,
        "mr-without-lesions": make_phantom("brain", sim.image, seed, tracer=tracer,
                                           mr_lesions=False).mr,
        "mr-with-structures": make_phantom("brain", sim.image, seed, tracer=tracer,
                                           mr_spheres=structures).mr,
    }
    pet = next(iter(case.metas.values())).source
    series = {}
    for number, (name, volume) in enumerate(volumes.items(), start=100):
        series[name] = tmp / name
        write_mr_series(sim, series[name], pet.study_instance_uid, number, volume)
    series["ct"] = tmp / "ct"
    write_ct_series(sim, series["ct"], pet.study_instance_uid, str(pet.frame_of_reference_uid),
                    100 + len(volumes))
    return _Study(case, series, structures, structure_vois(sim.phantom, structures),
                  hypometabolic_vois(sim.phantom))


def _restore(study: _Study, drf: int, cascade_opts: CascadeOptions,
             runs: dict[str, tuple[str | None, int]]
             ) -> dict[str, tuple[np.ndarray, float, dict[str, Any]]]:
    """Every run of ``runs``: name -> (SUV volume, seconds, the cascade's details)."""
    case = study.case
    base = replace(cascade_opts, drf=drf, sino=case.sinos[drf])
    outputs = {}
    for name, (variant, seed_offset) in runs.items():
        opts = replace(base, anatomy=None if variant is None else study.series[variant],
                       seed=base.seed + seed_offset)
        t0 = time.perf_counter()
        volume, details, *_ = _restore_mig_dm(case.suv(drf), case.metas[drf], opts, [],
                                              _NullBar(), case.sinos[drf])
        outputs[name] = (volume, time.perf_counter() - t0, details)
    return outputs


# ----------------------------------------------------------------------------- scores


def _hypometabolic_scores(volume: np.ndarray, study: _Study) -> dict[str, Any]:
    """Mean SUV bias against full dose in each region's VOI, their mean, and the normal
    cortex's (None without regions or voxels)."""
    regions = study.case.sim.phantom.info["hypometabolic"]
    n = len(regions)
    if n == 0:
        return {"hypometabolic_mean_bias": None, "normal_cortex_mean_bias": None,
                "hypometabolic": []}
    bias = (_voi_means(volume, study.hypometabolic_labels, n + 1)
            / _voi_means(study.case.suv(1), study.hypometabolic_labels, n + 1) - 1.0)
    per_region = [_finite(b) for b in bias[:n]]
    found = [b for b in per_region if b is not None]
    return {"hypometabolic_mean_bias": float(np.mean(found)) if found else None,
            "normal_cortex_mean_bias": _finite(bias[n]),
            "hypometabolic": [{"centre_mm": list(r["centre_mm"]), "mean_bias": b}
                              for r, b in zip(regions, per_region, strict=True)]}


def _lesion_leak(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Leak check 1: each lesion's SUVmax bias PET only, with the MR and with the lesion-free
    MR, and the difference lesion-free MR minus PET only; the same for the means."""
    names = (PET_ONLY, WITH_MR, LESIONS_REMOVED)
    per_run = {name: {d["label"]: d for d in rows[name]["lesions"]} for name in names}
    lesions = []
    for label, entry in per_run[PET_ONLY].items():
        bias = {name: per_run[name][label]["suv_max_bias"] for name in names}
        lesions.append({"label": label, "diameter_mm": entry["diameter_mm"],
                        "suv_max_bias": bias,
                        "difference": bias[LESIONS_REMOVED] - bias[PET_ONLY]})
    mean = {name: rows[name]["lesion_suvmax_bias"] for name in names}
    return {"lesions": lesions, "mean_suv_max_bias": mean,
            "mean_difference": mean[LESIONS_REMOVED] - mean[PET_ONLY]}


def _structure_leak(outputs: dict[str, np.ndarray], study: _Study) -> list[dict[str, Any]]:
    """Leak check 2, per structure: mean SUV and contrast to its shell (%) of the full-dose
    image and of the runs with MR, and their changes: structures added minus plain MR (the
    leak), full dose (0: no MR), next seed minus plain MR (the sampling noise)."""
    n = len(study.structures)

    def measure(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        means = _voi_means(volume, study.structure_labels, 2 * n)
        return means[0::2], 100.0 * (means[0::2] / means[1::2] - 1.0)

    measured = {"full dose": measure(study.case.suv(1))} | {
        name: measure(outputs[name]) for name in (WITH_MR, STRUCTURES_ADDED, NOISE_REFERENCE)}
    plain_mean, plain_contrast = measured[WITH_MR]
    changes = {"full dose": (np.zeros(n), np.zeros(n))} | {
        key: (100.0 * (measured[name][0] / plain_mean - 1.0), measured[name][1] - plain_contrast)
        for key, name in (("MR structure", STRUCTURES_ADDED),
                          ("noise reference", NOISE_REFERENCE))}
    voxels = np.bincount(study.structure_labels.ravel(), minlength=2 * n + 1)
    return [{
        "tissue": structure.tissue, "diameter_mm": structure.diameter_mm,
        "centre_mm": list(structure.centre_mm), "voxels": int(voxels[2 * i + 1]),
        "shell_voxels": int(voxels[2 * i + 2]),
        "suv_mean": {name: _finite(mean[i]) for name, (mean, _) in measured.items()},
        "contrast_pct": {name: _finite(contrast[i]) for name, (_, contrast) in measured.items()},
        "mean_change_pct": {key: _finite(mean[i]) for key, (mean, _) in changes.items()},
        "contrast_change_pp": {key: _finite(contrast[i]) for key, (_, contrast) in changes.items()},
    } for i, structure in enumerate(study.structures)]


def run_anatomy_study(opts: BenchOptions, cascade_opts: CascadeOptions, device: torch.device,
                      tmp: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Run the study on ``opts.cases`` cases per tracer at every DRF of ``opts.drfs``.

    Parameters
    ----------
    opts : BenchOptions
        Gives ``cases``, ``slices`` (128 x 128 planes of 2 mm) and ``drfs``.
    cascade_opts : CascadeOptions
        The benchmark's cascade options (weights with the anatomy-guided SD2, device, seed).
    device : torch.device
        Where the simulation runs (and the weights are inspected for the CT branch).
    tmp : Path
        Temporary folder for sinograms and MR and CT series.
    say : callable
        Progress messages.

    Returns
    -------
    dict
        The JSON's ``"anatomy"``: ``tracers``, ``drfs``, ``test_seeds``, ``studies`` (per
        tracer, each case's lesions, regions, structures and MR misregistration), ``cases``
        (tracer -> DRF -> run name, :data:`RUNS` and, with the CT branch, :data:`CT_RUNS`
        -> one row per case: :func:`~pet_recon.benchmark.score`'s metrics,
        ``hypometabolic_mean_bias``, ``normal_cortex_mean_bias``, ``seconds``, ``seed`` and,
        with an anatomy, the ``registration`` found, None for the CT), ``leak_lesions`` and
        ``leak_structures`` (tracer -> DRF -> one entry per case; MR only).
    """
    seeds = [9 + 10 * i for i in range(opts.cases)]
    runs = study_runs(cascade_opts.weights, device)
    result: dict[str, Any] = {"tracers": list(TRACERS), "drfs": list(opts.drfs),
                              "test_seeds": seeds, "runs": list(runs), "studies": {},
                              "cases": {}, "leak_lesions": {}, "leak_structures": {}}
    for t, tracer in enumerate(TRACERS):
        for seed in seeds:
            say(f"anatomy study: brain {tracer} seed {seed}: simulation, MR and CT series")
            study = _study(tracer, seed, opts, device, tmp / f"anatomy-{t}-{seed}")
            result["studies"].setdefault(tracer, []).append(study.describe())
            for k in opts.drfs:
                say(f"anatomy study: brain {tracer} seed {seed} DRF {k}: cascade without and "
                    f"with {' and '.join(['MR', 'CT'][:1 + (WITH_CT in runs)])}")
                outputs = _restore(study, k, cascade_opts, runs)
                rows = {}
                for name, (volume, seconds, details) in outputs.items():
                    anatomy = details.get("anatomy")
                    rows[name] = {**score(volume, study.case, k),
                                  **_hypometabolic_scores(volume, study),
                                  "seconds": seconds, "seed": seed}
                    if isinstance(anatomy, dict):
                        rows[name]["registration"] = anatomy["registration"]
                    result["cases"].setdefault(tracer, {}).setdefault(str(k), {}).setdefault(
                        name, []).append(rows[name])
                entry = {"seed": seed}
                result["leak_lesions"].setdefault(tracer, {}).setdefault(str(k), []).append(
                    entry | _lesion_leak(rows))
                result["leak_structures"].setdefault(tracer, {}).setdefault(str(k), []).append(
                    entry | {"structures": _structure_leak(
                        {name: volume for name, (volume, _, _) in outputs.items()}, study)})
    return result


# ----------------------------------------------------------------------------- table


def _pct(value: float | None, digits: int = 1, unit: str = " %") -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:+.{digits}f}{unit}"


def anatomy_table(anatomy: dict[str, Any]) -> list[str]:
    """Markdown lines of the study: methods by tracer and DRF (medians over cases), then one
    table per leak check (every case)."""
    lines = ["", "Anatomy study (issue #7, M2Diff): brain cases, the cascade without and with "
             "the MR (and the CT, when the weights have its branch; `docs/benchmark.md`, "
             "`docs/anatomy.md`); hypometabolic bias: mean SUV in the FDG "
             "hypometabolic regions' grey matter against full dose (normal cortex: the grey "
             "matter away from them).", "",
             *table_header("tracer", "DRF", "method", "PSNR (dB)", "SSIM", "lesion SUVmax bias",
                           "hypometabolic mean bias", "normal cortex mean bias", "s/study")]
    for tracer, by_drf in anatomy["cases"].items():
        for drf, runs in by_drf.items():
            for name in (n for n in (PET_ONLY, WITH_MR, WITH_CT) if n in runs):
                m = {key: _median(runs[name], key) for key in (
                    "psnr_db", "ssim", "lesion_suvmax_bias", "hypometabolic_mean_bias",
                    "normal_cortex_mean_bias", "seconds")}
                lines.append(
                    f"| {tracer} | {drf} | {name} | {m['psnr_db']:.2f} | {m['ssim']:.3f} | "
                    f"{_pct(100 * m['lesion_suvmax_bias'])} | "
                    f"{_pct(100 * m['hypometabolic_mean_bias'])} | "
                    f"{_pct(100 * m['normal_cortex_mean_bias'])} | {m['seconds']:.1f} |")
    lines += ["", "Leak check 1, a lesion in the PET but not in the MR: lesion SUVmax bias "
              "against full dose without MR, with the MR (the lesion dark on it) and with the "
              "MR rendered without lesions; last column: lesion-free MR minus PET only.", "",
              *table_header("tracer", "DRF", "seed", "lesion", PET_ONLY, WITH_MR,
                            LESIONS_REMOVED, "difference")]
    for tracer, by_drf in anatomy["leak_lesions"].items():
        for drf, cases in by_drf.items():
            for case in cases:
                head = f"| {tracer} | {drf} | {case['seed']} |"
                for lesion in case["lesions"]:
                    bias = lesion["suv_max_bias"]
                    lines.append(f"{head} {lesion['label']} ({lesion['diameter_mm']:.1f} mm) | "
                                 + " | ".join(_pct(100 * bias[n]) for n in bias)
                                 + f" | {_pct(100 * lesion['difference'], unit=' pp')} |")
                mean = case["mean_suv_max_bias"]
                lines.append(f"{head} mean | " + " | ".join(_pct(100 * mean[n]) for n in mean)
                             + f" | {_pct(100 * case['mean_difference'], unit=' pp')} |")
    lines += ["", "Leak check 2, structures in the MR without uptake (spheres in white matter, "
              "the PET unchanged): change of the mean SUV inside each structure (%) and of its "
              "contrast to a 2-6 mm shell (percentage points) between the runs with and "
              "without the structures in the MR; full dose: 0 (no MR); noise reference: the "
              "plain-MR run with the next seed against the plain-MR run.", "",
              *table_header("tracer", "DRF", "seed", "structure",
                            "full-dose SUVmean (contrast)", "mean: full dose",
                            "mean: MR structure", "mean: noise ref.", "contrast: full dose",
                            "contrast: MR structure", "contrast: noise ref.")]
    for tracer, by_drf in anatomy["leak_structures"].items():
        for drf, cases in by_drf.items():
            for case in cases:
                for s in case["structures"]:
                    full_mean = s["suv_mean"]["full dose"]
                    lines.append(
                        f"| {tracer} | {drf} | {case['seed']} | {s['tissue']}, "
                        f"{s['diameter_mm']:.0f} mm | "
                        + ("–" if full_mean is None else f"{full_mean:.2f}")
                        + f" ({_pct(s['contrast_pct']['full dose'])}) | "
                        + " | ".join(_pct(v, 2) for v in s["mean_change_pct"].values()) + " | "
                        + " | ".join(_pct(v, 2, " pp") for v in s["contrast_change_pp"].values())
                        + " |")
    return lines
