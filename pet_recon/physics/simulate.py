"""Simulated PET studies: phantom -> expected counts -> Poisson prompts -> thinned dose
levels -> OSEM images, written as DICOM, Interfile and MetaImage.

Count model (``docs/simulation.md`` derives it and gives the sources of its constants)
--------------------------------------------------------------------------------------
For a case with true uptake map ``SUV(x)`` (g/ml), injected activity ``D`` (Bq), body weight
``W`` (g), uptake time ``t_u`` (s) and frame duration ``T`` (s) of a radionuclide with decay
constant ``lambda = ln 2 / T_half``:

- concentration at scan start: ``C0(x) = SUV(x) * D * exp(-lambda t_u) / W`` (Bq/ml);
- mean concentration over the frame: ``C0(x) * f`` with ``f = (1 - exp(-lambda T)) / (lambda T)``;
- expected true coincidences per bin: ``t = S T f * n * a * A(H C0)`` with the system
  sensitivity ``S`` (counts/s per Bq, NEMA NU 2 style), detector efficiencies ``n``,
  attenuation factors ``a = exp(-A mu)``, the projector ``A`` and resolution ``H``
  (:class:`pet_recon.physics.projector.SystemModel` with
  ``scale = count_scale(S, T) * f``);
- expected scatter and randoms: ``r = SF/(1-SF) * blur(t) + RF/(1-RF) * sum(t) * u`` (a wide
  tangential blur of the trues for scatter and a uniform distribution ``u`` over the bins
  that cross the body for randoms; both smooth);
- full-dose prompts ``y ~ Poisson(t + r)`` drawn once; dose level ``k`` is
  ``y_k ~ Binomial(y, 1/k)``, like list-mode subsampling, so all dose levels of a case are
  aligned.

Each sinogram is reconstructed with the same OSEM and corrections (``r / k`` as the
background of dose level ``k``), calibrated to Bq/ml and decay corrected to the scan start
(DICOM Decay Correction START). A low-dose series tells the truth about its dose: its
injected activity is ``D / k`` and its image is the concentration that dose gives.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

import pet_recon
from pet_recon.errors import PetReconError
from pet_recon.io.metadata import (
    AcquisitionInfo,
    PatientInfo,
    Radiopharmaceutical,
    SeriesMeta,
    SourceReference,
    VolumeGeometry,
)
from pet_recon.io.sinogram import write_sinogram
from pet_recon.io.writer import write_new_series
from pet_recon.physics.geometry import ImageGeometry, SinogramGeometry
from pet_recon.physics.osem import osem
from pet_recon.physics.phantoms import Phantom, make_phantom
from pet_recon.physics.projector import SystemModel, attenuation_factors, count_scale

#: Dose reduction factors simulated by default (``1/k`` of the full dose).
DEFAULT_DRFS: tuple[int, ...] = (2, 4, 10, 20, 50, 100)
F18_HALF_LIFE_S = 6586.2  # NNDC NuDat 3 (109.77 min)
F18_POSITRON_FRACTION = 0.9686  # DDEP / NNDC
PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"


@dataclass(frozen=True)
class Scanner:
    """A simulated PET scanner: resolution, sensitivity, scatter and randoms fractions.

    Sensitivities are total true-coincidence sensitivities in counts/s per kBq, near the
    published NEMA NU 2 values of each system (see ``docs/simulation.md``).
    """

    manufacturer: str
    model: str
    fwhm_mm: float
    sensitivity_cps_per_kbq: float
    scatter_fraction: float
    randoms_fraction: float


SCANNERS: tuple[Scanner, ...] = (
    Scanner("GE MEDICAL SYSTEMS", "Discovery MI", 4.5, 13.0, 0.40, 0.25),
    Scanner("SIEMENS", "Biograph Vision", 3.8, 16.0, 0.38, 0.22),
    Scanner("Philips", "Vereos", 4.2, 5.6, 0.36, 0.20),
)


@dataclass(frozen=True)
class Reconstruction:
    """OSEM protocol: iterations, subsets and Gaussian post-filter FWHM (mm)."""

    iterations: int
    subsets: int
    postfilter_mm: float

    def describe(self) -> str:
        """Reconstruction Method (0054,1103) text, e.g. ``"OSEM 4i16s 2.5mm"``."""
        return f"OSEM {self.iterations}i{self.subsets}s {self.postfilter_mm:g}mm"


#: Clinical-like OSEM protocols per family (non-TOF, resolution modelling in the system
#: model): brain images use more updates and a light filter, body images a 5 mm filter.
FAMILY_RECON: dict[str, Reconstruction] = {
    "brain": Reconstruction(4, 16, 2.5),
    "body": Reconstruction(3, 16, 5.0),
    "nema": Reconstruction(3, 16, 4.0),
}

#: Per-family grid defaults: pixel size and plane spacing in mm.
FAMILY_GRID: dict[str, tuple[float, float]] = {
    "brain": (2.0, 2.0),
    "body": (4.0, 3.0),
    "nema": (3.0, 3.0),
}


@dataclass(frozen=True)
class Protocol:
    """Acquisition of one simulated case (full dose)."""

    tracer: str
    injected_mbq: float
    uptake_s: float
    frame_s: float
    injection: datetime
    scanner: Scanner
    recon: Reconstruction
    weight_kg: float
    height_m: float
    sex: str
    age_years: float

    @property
    def scan_start(self) -> datetime:
        """Start of the acquisition."""
        return self.injection + timedelta(seconds=self.uptake_s)


@dataclass
class SimulatedCase:
    """Everything simulated for one case, all on one image grid.

    Images are float32 ``(planes, ny, nx)``; sinograms float32 ``(planes, views, bins)``.
    ``images[k]`` and ``prompts[k]`` are keyed by dose reduction factor (1 = full dose).
    """

    case_id: str
    family: str
    seed: int
    protocol: Protocol
    phantom: Phantom
    image: ImageGeometry
    sinogram: SinogramGeometry
    truth_bqml: np.ndarray
    attenuation: np.ndarray
    normalisation: np.ndarray
    background: np.ndarray
    calibration: float
    prompts: dict[int, np.ndarray] = field(default_factory=dict)
    images: dict[int, np.ndarray] = field(default_factory=dict)

    def suv_factor(self, drf: int) -> float:
        """Multiply the Bq/ml image of dose level ``drf`` by this to get SUVbw."""
        p = self.protocol
        decayed = p.injected_mbq * 1e6 / drf * _decay(p.uptake_s)
        return p.weight_kg * 1000.0 / decayed


def _decay(seconds: float) -> float:
    return math.exp(-math.log(2.0) * seconds / F18_HALF_LIFE_S)


def frame_decay_average(frame_s: float) -> float:
    """``f = (1 - exp(-lambda T)) / (lambda T)``: mean activity over a frame / at its start."""
    lam_t = math.log(2.0) * frame_s / F18_HALF_LIFE_S
    return -math.expm1(-lam_t) / lam_t


def calibration_scale(sinogram: SinogramGeometry, scanner: Scanner, frame_s: float) -> float:
    """``scale = S T f``: expected counts per (Bq/ml * mm) of line integral for a frame.

    ``S`` is the scanner's sensitivity (counts/s per Bq), ``T`` the frame duration and ``f``
    the decay average over the frame, so that a model with this scale maps the concentration
    at frame start (Bq/ml) to expected counts.
    """
    return count_scale(sinogram, scanner.sensitivity_cps_per_kbq / 1000.0,
                       frame_s) * frame_decay_average(frame_s)


def draw_protocol(family: str, phantom: Phantom, rng: np.random.Generator) -> Protocol:
    """Random but plausible acquisition: activity, uptake, frame, scanner.

    The full-dose count level varies over more than 10x across cases: activity per kg
    (2.5-5 MBq/kg for FDG), frame duration (60-300 s body, 300-900 s brain) and scanner
    sensitivity (5.6-16 cps/kBq) are drawn independently.
    """
    info = phantom.info
    weight = float(info.get("weight_kg") or rng.uniform(55, 95))
    height = float(info.get("height_m") or rng.uniform(1.55, 1.9))
    sex = str(info.get("sex") or rng.choice(["M", "F"]))
    age = float(info.get("age") or rng.integers(25, 86))
    tracer = str(info.get("tracer", "FDG"))
    amyloid = tracer.lower().startswith("amyloid")
    if amyloid:
        injected = rng.uniform(250, 400)  # florbetapir 370 MBq nominal
        uptake = rng.uniform(40, 60) * 60
        frame = rng.uniform(300, 900) if family == "brain" else rng.uniform(60, 300)
    else:
        injected = rng.uniform(2.5, 5.0) * weight
        uptake = rng.uniform(45, 75) * 60
        frame = rng.uniform(300, 900) if family == "brain" else rng.uniform(60, 300)
    injection = datetime(2025, 1, 6, 8, 0) + timedelta(
        days=int(rng.integers(0, 300)), minutes=int(rng.integers(0, 480)))
    return Protocol(
        tracer="Florbetapir" if amyloid else "FDG",
        injected_mbq=float(injected),
        uptake_s=float(uptake),
        frame_s=float(round(frame)),
        injection=injection,
        scanner=SCANNERS[int(rng.integers(0, len(SCANNERS)))],
        recon=FAMILY_RECON[family],
        weight_kg=round(weight, 1),
        height_m=round(height, 2),
        sex=sex,
        age_years=age,
    )


def _tangential_blur(t: torch.Tensor, fwhm_bins: float) -> torch.Tensor:
    sigma = fwhm_bins / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    radius = int(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=t.dtype, device=t.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    flat = t.reshape(-1, 1, t.shape[-1])
    out = torch.nn.functional.conv1d(flat, kernel, padding=radius)
    return out.reshape(t.shape)


def background_counts(trues: torch.Tensor, body_bins: torch.Tensor, scanner: Scanner,
                      bin_mm: float) -> torch.Tensor:
    """Expected scatter + randoms counts per bin (smooth), shape of ``trues``.

    Parameters
    ----------
    trues : torch.Tensor
        Expected true coincidences ``(planes, views, bins)``.
    body_bins : torch.Tensor
        1 where the line of response crosses the body (attenuation factor < 1), else 0.
    scanner : Scanner
        Gives the scatter fraction SF and randoms fraction RF of the prompts.
    bin_mm : float
        Tangential bin size; scatter is a 200 mm FWHM tangential blur of the trues.
    """
    sf, rf = scanner.scatter_fraction, scanner.randoms_fraction
    scatter = _tangential_blur(trues, 200.0 / bin_mm)
    scatter = scatter * (trues.sum(dim=(-2, -1), keepdim=True)
                         / scatter.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12))
    n_body = body_bins.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    randoms = trues.sum(dim=(-2, -1), keepdim=True) * body_bins / n_body
    # Fractions of the prompts: trues : scatter : randoms = (1 - SF - RF) : SF : RF.
    keep = 1.0 - sf - rf
    return (sf / keep) * scatter + (rf / keep) * randoms


def simulate_case(
    family: str,
    seed: int,
    *,
    matrix: int = 128,
    slices: int = 64,
    drfs: tuple[int, ...] = DEFAULT_DRFS,
    device: torch.device,
    phantom_kwargs: dict[str, object] | None = None,
) -> SimulatedCase:
    """Simulate one case at full dose and every dose level in ``drfs``.

    Parameters
    ----------
    family : {"brain", "body", "nema"}
        Phantom family.
    seed : int
        Case seed: anatomy, protocol and noise are all drawn from it.
    matrix, slices : int
        Image matrix (square) and number of planes.
    drfs : tuple of int
        Dose reduction factors (each > 1).
    device : torch.device
        Where the projector and OSEM run.
    phantom_kwargs : dict, optional
        Extra arguments of the phantom family (e.g. ``tracer``; brain cases draw the tracer
        from the seed when it is not given).

    Returns
    -------
    SimulatedCase
    """
    if family not in FAMILY_GRID:
        raise ValueError(f"unknown phantom family {family!r}; choose from {sorted(FAMILY_GRID)}")
    if any(k <= 1 for k in drfs):
        raise ValueError(f"dose reduction factors must be > 1, got {drfs}")
    pixel_mm, plane_mm = FAMILY_GRID[family]
    pixel_mm *= 128.0 / matrix  # the field of view stays the family's
    image = ImageGeometry(nx=matrix, ny=matrix, pixel_mm=pixel_mm, n_planes=slices,
                          plane_mm=plane_mm)
    sino = SinogramGeometry.for_image(image)
    rng = np.random.default_rng(seed)
    kwargs = dict(phantom_kwargs or {})
    if family == "brain" and "tracer" not in kwargs:
        # FDG in 60% of brain cases, amyloid-positive and -negative in 20% each.
        kwargs["tracer"] = str(np.random.default_rng([seed, 1]).choice(
            ["FDG", "FDG", "FDG", "amyloid+", "amyloid-"]))
    phantom = make_phantom(family, image, seed, **kwargs)
    protocol = draw_protocol(family, phantom, rng)
    scanner = protocol.scanner

    dtype = torch.float32
    # C0 = SUV * D * exp(-lambda t_u) / W  (Bq/ml at scan start)
    bq_per_suv = protocol.injected_mbq * 1e6 * _decay(protocol.uptake_s) / (
        protocol.weight_kg * 1000.0)
    truth = (phantom.activity.astype(np.float64) * bq_per_suv).astype(np.float32)
    mu = torch.from_numpy(phantom.mu).to(device=device, dtype=dtype)
    att = attenuation_factors(mu, image, sino)  # a, (planes, views, bins)
    norm = torch.from_numpy(
        rng.lognormal(0.0, 0.05, size=(sino.n_views, sino.n_bins)).astype(np.float32)
    ).to(device)  # n: detector efficiencies, ~5% spread
    calibration = calibration_scale(sino, scanner, protocol.frame_s)
    model = _system_model(image, sino, scanner, att, norm, calibration)
    x0 = torch.from_numpy(truth).to(device)
    trues = model.forward(x0)
    body_bins = (att < 0.999).to(dtype)
    background = background_counts(trues, body_bins, scanner, sino.bin_mm)

    gen = torch.Generator(device="cpu").manual_seed(seed)
    prompts = dose_levels(trues + background, drfs, gen)
    case = SimulatedCase(
        case_id=f"{family}-{seed:06d}", family=family, seed=seed, protocol=protocol,
        phantom=phantom, image=image, sinogram=sino, truth_bqml=truth,
        attenuation=att.cpu().numpy(), normalisation=norm.cpu().numpy(),
        background=background.cpu().numpy(), calibration=calibration,
        prompts={k: v.numpy() for k, v in prompts.items()},
    )
    case.images = reconstruct_levels(prompts, model, background, protocol.recon)
    return case


def _system_model(image: ImageGeometry, sino: SinogramGeometry, scanner: Scanner,
                  attenuation: torch.Tensor, normalisation: torch.Tensor,
                  calibration: float) -> SystemModel:
    """The scanner's system model ``P`` (without background), on the tensors' device."""
    return SystemModel(image, sino, device=attenuation.device, dtype=attenuation.dtype,
                       fwhm_mm=scanner.fwhm_mm, axial_fwhm_mm=scanner.fwhm_mm,
                       attenuation=attenuation, normalisation=normalisation,
                       scale=calibration)


def noise_free_image(case: SimulatedCase, device: torch.device) -> np.ndarray:
    """The full-dose image without Poisson noise: OSEM of the expected prompts.

    The expected full-dose prompts ``y_bar = P C0 + r`` (the mean of ``y_1``, ``docs/
    simulation.md``) are reconstructed with the case's OSEM protocol, as the dose levels are.
    The result is what a denoiser that removed all the noise and nothing else would give:
    the full-dose image's resolution, partial-volume losses and OSEM convergence, without its
    noise. The benchmark scores it against the (noisy) full-dose image to show how much of a
    metric is the reference's own noise.

    Parameters
    ----------
    case : SimulatedCase
        A simulated case.
    device : torch.device
        Where the projector and OSEM run.

    Returns
    -------
    np.ndarray
        float32 ``(planes, ny, nx)`` in Bq/ml at scan start, the unit of ``case.images[1]``.
    """
    att = torch.from_numpy(case.attenuation).to(device=device, dtype=torch.float32)
    norm = torch.from_numpy(case.normalisation).to(device=device, dtype=torch.float32)
    model = _system_model(case.image, case.sinogram, case.protocol.scanner, att, norm,
                          case.calibration)
    background = torch.from_numpy(case.background).to(device=device, dtype=torch.float32)
    expected = model.forward(torch.from_numpy(case.truth_bqml).to(device)) + background
    return reconstruct_levels({1: expected}, model, background, case.protocol.recon)[1]


def dose_levels(expected: torch.Tensor, drfs: tuple[int, ...],
                generator: torch.Generator) -> dict[int, torch.Tensor]:
    """Full-dose prompts drawn once, the dose levels thinned from them in nested subsets.

    ``y_1 ~ Poisson(y_bar)``; with the factors sorted, ``k_1 < k_2 < ...``, each level is
    thinned from the previous one, ``y_{k_i} ~ Binomial(y_{k_{i-1}}, k_{i-1} / k_i)``
    (``k_0 = 1``), so ``y_k ~ Poisson(y_bar / k)`` (thinning of a Poisson variable) and
    every count kept at 1/k dose is kept at each higher dose too: ``y_20 <= y_10 <= y_4``
    bin by bin, as when one list-mode acquisition is sub-sampled into ever shorter frames.
    An intermediate dose level therefore shares the low-dose input's counts, which is what
    the MAP-Diff anchors need (``docs/map-diff.md``).

    Parameters
    ----------
    expected : torch.Tensor
        Expected full-dose prompts ``y_bar`` (counts, >= 0), any shape; drawn on the CPU.
    drfs : tuple of int
        Dose reduction factors ``k > 1``.
    generator : torch.Generator
        CPU generator (the draw is reproducible for a seed).

    Returns
    -------
    dict
        ``{1: y_1, k: y_k, ...}``, float32 CPU tensors of integer counts.
    """
    full = torch.poisson(expected.detach().float().cpu(), generator=generator)
    levels = {1: full}
    previous = 1
    for k in sorted(set(drfs)):
        levels[k] = torch.binomial(levels[previous],
                                   torch.full_like(full, previous / k), generator=generator)
        previous = k
    return levels


def reconstruct_levels(prompts: dict[int, torch.Tensor], model: SystemModel,
                       background: torch.Tensor, recon: Reconstruction) -> dict[int, np.ndarray]:
    """OSEM of every dose level with the protocol's iterations, subsets and post-filter.

    Dose level ``k`` comes from injected activity ``D/k``: its image is the concentration
    ``C0/k`` and its background ``r/k``, so one system model (without background) serves
    every level, with the background batched.

    Returns
    -------
    dict
        ``{k: image}``, float32 ``(planes, ny, nx)`` in Bq/ml at scan start.
    """
    levels = sorted(prompts)
    device, dtype = model.device, model.dtype
    batch = torch.stack([prompts[k] for k in levels]).to(device=device, dtype=dtype)
    fraction = torch.tensor([1.0 / k for k in levels], device=device, dtype=dtype)
    batched = SystemModel(
        model.image, model.sinogram, device=device, dtype=dtype, fwhm_mm=model.fwhm_mm,
        axial_fwhm_mm=model.axial_fwhm_mm, attenuation=model.attenuation,
        normalisation=model.normalisation,
        background=background.to(device)[None] * fraction[:, None, None, None],
        scale=model.scale)
    images = osem(batch, batched, iterations=recon.iterations, subsets=recon.subsets,
                  postfilter_fwhm_mm=recon.postfilter_mm)
    return {k: images[i].cpu().numpy().astype(np.float32) for i, k in enumerate(levels)}


def series_meta(case: SimulatedCase, drf: int, study_uid: str, for_uid: str,
                series_number: int) -> SeriesMeta:
    """Typed DICOM metadata of dose level ``drf`` of a case (the writer builds the series).

    The grid is centred on the scanner axis, head-first supine, slices along +z; the
    injected activity is the full-dose activity divided by ``drf``; times follow the
    protocol; decay correction START with the frame's decay factor.
    """
    p = case.protocol
    image = case.image
    n = image.n_planes
    # Patient position HFS; axial slices ordered feet -> head along +z (LPS).
    origin_x = -(image.nx - 1) / 2.0 * image.pixel_mm
    origin_y = -(image.ny - 1) / 2.0 * image.pixel_mm
    origin_z = -(n - 1) / 2.0 * image.plane_mm
    geometry = VolumeGeometry(
        shape=(n, image.ny, image.nx),
        origin=(origin_x, origin_y, origin_z),
        spacing=(image.pixel_mm, image.pixel_mm, image.plane_mm),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    start = p.scan_start
    description = "PET full dose" if drf == 1 else f"PET 1/{drf} dose"
    return SeriesMeta(
        geometry=geometry,
        modality="PT",
        units="BQML",
        patient=PatientInfo(weight_kg=p.weight_kg, height_m=p.height_m, sex=p.sex,
                            age_years=p.age_years),
        radiopharmaceutical=Radiopharmaceutical(
            name=p.tracer, radionuclide="^18^Fluorine", half_life_s=F18_HALF_LIFE_S,
            total_dose_bq=p.injected_mbq * 1e6 / drf, start=p.injection,
            positron_fraction=F18_POSITRON_FRACTION),
        acquisition=AcquisitionInfo(
            manufacturer=p.scanner.manufacturer, model=p.scanner.model, units="BQML",
            decay_correction="START", series_datetime=start,
            acquisition_datetimes=(start,) * n, frame_duration_s=(p.frame_s,) * n,
            decay_factors=(1.0 / frame_decay_average(p.frame_s),) * n,
            reconstruction_method=p.recon.describe(),
            corrected_image=("NORM", "ATTN", "SCAT", "RAN", "DECY"),
            slice_thickness_mm=image.plane_mm,
        ),
        source=SourceReference(
            study_instance_uid=study_uid, series_instance_uid=generate_uid(),
            frame_of_reference_uid=for_uid, sop_class_uid=PET_SOP_CLASS,
            sop_instance_uids=(), series_number=series_number,
            series_description=description),
    )


def mr_series_meta(case: SimulatedCase, study_uid: str, series_number: int) -> SeriesMeta:
    """Typed DICOM metadata of the case's MR (:attr:`Phantom.mr`, arbitrary units) as an MR
    series of the same study.

    The grid and patient are the PET's (:func:`series_meta`). The MR is an examination of its
    own, an hour before the PET, with its own Frame of Reference UID: the phantom's MR is
    moved by a small rigid transform (``phantom.info["mr_misregistration"]``), so
    :func:`pet_recon.io.anatomy.prepare_anatomy` registers it to the PET by default.
    """
    pet = series_meta(case, 1, study_uid, generate_uid(), series_number)
    return replace(
        pet, modality="MR", units=None, radiopharmaceutical=Radiopharmaceutical(),
        acquisition=AcquisitionInfo(
            series_datetime=case.protocol.scan_start - timedelta(hours=1),
            slice_thickness_mm=case.image.plane_mm),
        source=replace(pet.source, sop_class_uid=MRImageStorage, modality="MR",
                       series_description="MR T1-weighted (simulated)"))


def ct_series_meta(case: SimulatedCase, study_uid: str, for_uid: str,
                   series_number: int) -> SeriesMeta:
    """Typed DICOM metadata of the case's CT (:attr:`Phantom.ct`, HU) as a CT series of the
    PET's study and frame of reference.

    The grid, patient and scanner are the PET's (:func:`series_meta`): the CT of a PET/CT
    acquisition, two minutes before the PET, exactly on the PET grid and in its Frame of
    Reference (``for_uid``), so :func:`pet_recon.io.anatomy.prepare_anatomy` does not
    register it by default.
    """
    pet = series_meta(case, 1, study_uid, for_uid, series_number)
    return replace(
        pet, modality="CT", units=None, radiopharmaceutical=Radiopharmaceutical(),
        acquisition=AcquisitionInfo(
            manufacturer=case.protocol.scanner.manufacturer, model=case.protocol.scanner.model,
            series_datetime=case.protocol.scan_start - timedelta(minutes=2),
            slice_thickness_mm=case.image.plane_mm),
        source=replace(pet.source, sop_class_uid=CTImageStorage, modality="CT",
                       series_description="CT (simulated)"))


def write_mr_series(case: SimulatedCase, out_dir: Path, study_uid: str, series_number: int,
                    volume: np.ndarray | None = None) -> list[Path]:
    """Write an MR of the case as a DICOM MR series (:func:`mr_series_meta`) into ``out_dir``.

    Parameters
    ----------
    case : SimulatedCase
        Gives the grid, the patient and the acquisition times.
    out_dir : Path
        Folder of the series (created).
    study_uid : str
        Study Instance UID (the PET's, for an MR of the same study).
    series_number : int
        Series Number of the MR.
    volume : np.ndarray, optional
        ``(planes, ny, nx)`` float32 MR in arbitrary units on the case's grid; default the
        phantom's MR (:attr:`Phantom.mr`), e.g. another rendering of it
        (:func:`pet_recon.physics.phantoms.brain`'s ``mr_lesions`` and ``mr_spheres``).

    Returns
    -------
    list of Path
        The files written.
    """
    meta = mr_series_meta(case, study_uid, series_number=series_number)
    return write_new_series(case.phantom.mr if volume is None else volume, meta, out_dir,
                            series_description=meta.source.series_description or "MR",
                            patient_id=case.case_id, patient_position="HFS",
                            image_type_extra="OTHER")


def write_ct_series(case: SimulatedCase, out_dir: Path, study_uid: str, for_uid: str,
                    series_number: int) -> list[Path]:
    """Write the case's CT as a DICOM CT series (:func:`ct_series_meta`) into ``out_dir``.

    Parameters
    ----------
    case : SimulatedCase
        Gives the CT (:attr:`Phantom.ct`, ``(planes, ny, nx)`` float32 HU, written as
        integer HU through Rescale Slope 1 and Intercept -1024), the grid, the patient and
        the acquisition times.
    out_dir : Path
        Folder of the series (created).
    study_uid, for_uid : str
        Study Instance UID and Frame of Reference UID (the PET's).
    series_number : int
        Series Number of the CT.

    Returns
    -------
    list of Path
        The files written.
    """
    meta = ct_series_meta(case, study_uid, for_uid, series_number=series_number)
    return write_new_series(case.phantom.ct, meta, out_dir,
                            series_description=meta.source.series_description or "CT",
                            patient_id=case.case_id, patient_position="HFS",
                            image_type_extra="AXIAL")


def _write_mha(path: Path, volume: np.ndarray, geometry: VolumeGeometry) -> None:
    sitk.WriteImage(geometry.to_sitk(volume), str(path), useCompression=True)


def write_case(case: SimulatedCase, out_dir: Path) -> dict[str, object]:
    """Write a simulated case into ``out_dir`` (which must be empty or absent).

    Layout: ``fd/`` and ``ld_drf<k>/`` DICOM PET series; ``mr/`` the MR as a DICOM MR
    series in its own frame of reference (:func:`mr_series_meta`); ``ct/`` the CT as a
    DICOM CT series in the PET's frame of reference (:func:`ct_series_meta`); ``sino/fd.hs`` and
    ``sino/ld_drf<k>.hs`` prompts (int16 counts when they fit, else float32) with
    ``sino/attenuation.hs``, ``sino/normalisation.hs`` and ``sino/background_fd.hs``
    (the background of dose level k is this divided by k); ``truth.mha`` (Bq/ml at full
    dose), ``mu.mha`` (1/cm), ``ct.mha`` (HU), ``mr.mha``, ``labels.mha``; ``case.json``
    (protocol, phantom info, SUV factors, calibration).

    Returns
    -------
    dict
        The content of ``case.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid, for_uid = generate_uid(), generate_uid()
    metas = {}
    for number, k in enumerate(sorted(case.images), start=1):
        meta = series_meta(case, k, study_uid, for_uid, series_number=number)
        name = "fd" if k == 1 else f"ld_drf{k}"
        write_new_series(case.images[k], meta, out_dir / name,
                         series_description=meta.source.series_description or name,
                         patient_id=case.case_id, patient_position="HFS")
        metas[k] = meta
    write_mr_series(case, out_dir / "mr", study_uid, series_number=len(metas) + 1)
    write_ct_series(case, out_dir / "ct", study_uid, for_uid, series_number=len(metas) + 2)
    geometry = metas[1].geometry
    sino_dir = out_dir / "sino"
    sino_dir.mkdir(exist_ok=True)
    calib = {"petrecon calibration (counts per Bq/ml*mm)": f"{case.calibration:.9g}"}
    for k, prompts in case.prompts.items():
        name = "fd" if k == 1 else f"ld_drf{k}"
        write_sinogram(sino_dir / f"{name}.hs", prompts, case.sinogram, extra={
            **calib, "petrecon dose reduction factor": str(k)},
            dtype="int16" if prompts.max() <= 32767 else "float32")
    write_sinogram(sino_dir / "attenuation.hs", case.attenuation, case.sinogram)
    write_sinogram(sino_dir / "normalisation.hs",
                   np.broadcast_to(case.normalisation, case.sinogram.shape).astype(np.float32),
                   case.sinogram)
    write_sinogram(sino_dir / "background_fd.hs", case.background, case.sinogram)
    _write_mha(out_dir / "truth.mha", case.truth_bqml, geometry)
    _write_mha(out_dir / "mu.mha", case.phantom.mu, geometry)
    _write_mha(out_dir / "ct.mha", case.phantom.ct, geometry)
    _write_mha(out_dir / "mr.mha", case.phantom.mr, geometry)
    _write_mha(out_dir / "labels.mha", case.phantom.labels, geometry)
    p = case.protocol
    record = {
        "case_id": case.case_id,
        "family": case.family,
        "seed": case.seed,
        "petrecon_version": pet_recon.__version__,
        "protocol": {**asdict(p), "injection": p.injection.isoformat()},
        "phantom": _jsonable(case.phantom.info),
        "drfs": sorted(k for k in case.images if k != 1),
        "suv_factor": {str(k): case.suv_factor(k) for k in sorted(case.images)},
        "calibration_counts_per_bqml_mm": case.calibration,
        "counts": {str(k): float(v.sum()) for k, v in sorted(case.prompts.items())},
        "image": asdict(case.image),
        "sinogram": asdict(case.sinogram),
    }
    (out_dir / "case.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def simulate_study(
    out_dir: Path,
    *,
    phantom: str,
    cases: int,
    drfs: tuple[int, ...],
    seed: int,
    slices: int = 64,
    matrix: int = 128,
    overwrite: bool = False,
    device: torch.device,
    progress: bool = True,
) -> dict[str, object]:
    """`petrecon simulate`: write ``cases`` simulated cases (seeds ``seed .. seed+cases-1``).

    Each case goes to ``out_dir/<family>-<seed>/`` (layout in :func:`write_case`); the whole
    output is staged in a temporary folder and moved into place when complete.

    Returns
    -------
    dict
        Report: per case its folder, counts per dose level and the time it took.
    """
    from tqdm import tqdm

    from pet_recon.output import staged_output

    if cases < 1:
        raise PetReconError(f"--cases must be at least 1, got {cases}")
    report: list[dict[str, object]] = []
    with staged_output(out_dir, overwrite) as staging:
        for i in tqdm(range(cases), desc="simulate", unit="case", disable=not progress):
            t0 = time.perf_counter()
            case = simulate_case(phantom, seed + i, matrix=matrix, slices=slices, drfs=drfs,
                                 device=device)
            t_sim = time.perf_counter() - t0
            record = write_case(case, staging / case.case_id)
            report.append({"case": case.case_id, "counts": record["counts"],
                           "simulate_s": t_sim, "total_s": time.perf_counter() - t0})
    return {"out": str(out_dir), "cases": report}
