"""Training data: simulated cases as safetensors shards, and a streaming slice loader.

One shard per case, ``<root>/<split>/<case_id>.safetensors``, holds aligned volumes
(``(planes, ny, nx)`` images in SUV g/ml as float16; ``(planes, views, bins)`` sinograms):

- ``truth``, ``fd``, ``ld_drf<k>`` (SUV images), ``mu`` (1/cm), ``ct`` (HU), ``mr`` (a.u.),
  ``labels``; brain cases also ``mr_mismatch`` (a.u.), the MR re-rendered without the
  lesions and with MR-only spheres (:func:`~pet_recon.physics.phantoms.mismatched_mr`);
- ``sino_fd``, ``sino_ld_drf<k>`` (prompts, int32 counts), ``attenuation``,
  ``normalisation``, ``background_fd`` (float32; background of level k = background_fd/k);

and in its metadata (``json`` key) the case record: per dose level the meta-information
record and rendered prompt, the SUV factors, the calibration and (brain) the MR-only
spheres of ``mr_mismatch``.

The split is fixed by the case seed (:func:`split_of`), so a seed is in the same split
whichever command wrote it: ``seed % 10 == 8`` validation, ``== 9`` test, else training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from pet_recon.meta.prompt import build_record, render_prompt
from pet_recon.models.anatomy import MODALITIES, normalise_ct, normalise_mr
from pet_recon.models.intensity import reference_value
from pet_recon.physics.phantoms import mismatched_mr, rigid_move
from pet_recon.physics.simulate import SimulatedCase, series_meta

SPLITS = ("train", "val", "test")
#: CT misregistration of :class:`SliceStream` (per case): rotations N(0, 1 deg) about each
#: axis clipped to +-2 deg, translations N(0, 1.5 mm) along each axis clipped to +-3 mm.
CT_ROTATION_SD_DEG, CT_ROTATION_MAX_DEG = 1.0, 2.0
CT_SHIFT_SD_MM, CT_SHIFT_MAX_MM = 1.5, 3.0


def split_of(seed: int) -> str:
    """The split of a case seed: ``val`` if seed % 10 == 8, ``test`` if 9, else ``train``."""
    return {8: "val", 9: "test"}.get(seed % 10, "train")


def case_prompts(case: SimulatedCase) -> dict[int, dict[str, object]]:
    """Meta-information record and prompt of each dose level of a case (1 = full dose)."""
    out: dict[int, dict[str, object]] = {}
    for k in sorted(case.images):
        meta = series_meta(case, k, "1.2.3", "1.2.3.4", series_number=k)
        record = build_record(meta, drf=float(k))
        out[k] = {"record": record.to_dict(), "prompt": render_prompt(record)}
    return out


def write_shard(case: SimulatedCase, root: Path) -> Path:
    """Write one case as ``root/<split>/<case_id>.safetensors`` and return its path."""
    split = split_of(case.seed)
    path = root / split / f"{case.case_id}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {
        "truth": case.truth_bqml * case.suv_factor(1),
        "mu": case.phantom.mu,
        "ct": case.phantom.ct,
        "mr": case.phantom.mr,
        "labels": case.phantom.labels.astype(np.int16),
        "attenuation": case.attenuation,
        "normalisation": np.broadcast_to(case.normalisation, case.sinogram.shape),
        "background_fd": case.background,
    }
    for k, image in case.images.items():
        name = "fd" if k == 1 else f"ld_drf{k}"
        tensors[name] = image * case.suv_factor(k)
        tensors[f"sino_{name}"] = case.prompts[k].astype(np.int32)
    spheres: list[dict[str, object]] = []
    if case.family == "brain":
        tensors["mr_mismatch"], drawn = mismatched_mr(case.phantom)
        spheres = [{"centre_mm": list(m.centre_mm), "diameter_mm": m.diameter_mm,
                    "tissue": m.tissue} for m in drawn]
    for name in ("truth", "mu", "ct", "mr", "mr_mismatch",
                 *(n for n in tensors if n == "fd" or n.startswith("ld_"))):
        if name not in tensors:
            continue
        tensors[name] = tensors[name].astype(np.float16)
    for name in ("attenuation", "normalisation", "background_fd"):
        tensors[name] = np.ascontiguousarray(tensors[name], dtype=np.float32)
    record = {
        "case_id": case.case_id,
        "family": case.family,
        "seed": case.seed,
        "split": split,
        "drfs": sorted(k for k in case.images if k != 1),
        "levels": {str(k): v for k, v in case_prompts(case).items()},
        "suv_factor": {str(k): case.suv_factor(k) for k in sorted(case.images)},
        "calibration": case.calibration,
        "pixel_mm": case.image.pixel_mm,
        "plane_mm": case.image.plane_mm,
        "bin_mm": case.sinogram.bin_mm,
        "mr_mismatch_spheres": spheres,
    }
    tmp = path.with_name(f"{path.name}.partial")  # not matched by the loaders' *.safetensors
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
              metadata={"json": json.dumps(record)})
    tmp.replace(path)
    return path


def read_record(path: Path) -> dict[str, object]:
    """The case record stored in a shard's metadata."""
    with safe_open(str(path), framework="np") as f:
        return json.loads(f.metadata()["json"])


class SliceStream(torch.utils.data.IterableDataset):
    """Stream training slices from the shards of one split.

    Each item is a dict of tensors for one plane of one case at one dose level:
    ``ld`` ``(2 * neighbours + 1, ny, nx)`` low-dose SUV with neighbouring planes as
    channels (edges repeat), ``fd`` and ``truth`` ``(1, ny, nx)``, ``mu`` and ``mr``
    ``(1, ny, nx)``, ``sino_ld`` and ``sino_fd`` ``(1, views, bins)`` prompts scaled to the
    full-dose level (``sino_ld * k``), ``drf`` (float), ``ref`` (the case's intensity
    reference at that dose level, :func:`pet_recon.models.intensity.reference_value`, SUV),
    plus ``prompt`` (str) and ``case_id``; with ``with_levels`` also ``levels``; with
    ``with_anatomy`` also ``anatomy``, ``labels`` and ``modality``; with ``with_labels``
    also ``labels``.

    Parameters
    ----------
    root : Path
        Folder with ``train/``, ``val/``, ``test/`` shard folders.
    split : {"train", "val", "test"}
    families : tuple of str, optional
        Phantom families to read (shards named ``<family>-<seed>.safetensors``, e.g.
        ``("brain",)``); default every shard of the split.
    drfs : tuple of int, optional
        Dose levels to draw from (default: every level in each shard).
    neighbours : int
        Planes on each side given as extra channels.
    seed : int
        Shuffling seed; the order differs per epoch (``set_epoch``) and per worker.
    shuffle : bool
        Shuffle shards and planes.
    cases_in_flight : int
        With ``shuffle``, items of this many cases are pooled and shuffled together, so a
        batch mixes cases (and prompts).
    with_levels : bool
        Add ``levels``: ``{k: (1, ny, nx)}`` the item's plane at every low-dose level ``k``
        of its case (all the shard's levels, whatever ``drfs``), SUV, float16 views of the
        shard's volumes (no copy; convert with ``.float()``). The MAP-Diff anchor images
        (:mod:`pet_recon.diffusion.anchors`). Off by default: items and the shuffling
        order are the same with it on or off.
    with_anatomy : bool
        Add the anatomical input of the anatomy-guided SD2 (:mod:`pet_recon.models.anatomy`):
        ``modality`` (str, ``"MR"`` or ``"CT"``), ``anatomy`` ``(2 * neighbours + 1, ny,
        nx)`` float32, the MR planes (neighbours as for ``ld``) divided by the case's
        :func:`~pet_recon.models.anatomy.normalise_mr` scale or the CT planes mapped by
        :func:`~pet_recon.models.anatomy.normalise_ct`, and ``labels`` ``(ny, nx)`` int64,
        the phantom label ids of the plane. Shards without ``labels`` or a volume of
        ``modalities`` (``mr``, ``ct``) are skipped. Off by default: items and the
        shuffling order are the same with it on or off.
    with_labels : bool
        Add ``labels`` (as with ``with_anatomy``) without the anatomical input; shards
        without ``labels`` are skipped. Items and order are the same with it on or off.
    mismatch : float
        With ``with_anatomy``: the probability that a case's MR ``anatomy`` comes from its
        ``mr_mismatch`` volume (the MR without the lesions and with MR-only spheres) instead
        of ``mr``, drawn once per case and pass from its own generator, so items and order
        are the same for any value. Shards without ``mr_mismatch`` are skipped when > 0 and
        MR is among ``modalities``.
    modalities : tuple of str
        With ``with_anatomy``: the anatomical modalities (:data:`~pet_recon.models.anatomy.
        MODALITIES`). Each case, per pass, uses one of them, drawn uniformly from the case's
        own generator, after the ``mismatch`` draw and a small rigid transform
        (:func:`ct_misregistration`) that moves the case's CT: items and order are the same
        for any ``modalities`` (MR items exactly as before CT existed, a case's CT the same
        whether MR is drawn from too), and the branch learns from imperfectly aligned CT.
    """

    def __init__(self, root: Path, split: str, *, families: tuple[str, ...] | None = None,
                 drfs: tuple[int, ...] | None = None, neighbours: int = 1, seed: int = 0,
                 shuffle: bool = True, cases_in_flight: int = 8, with_levels: bool = False,
                 with_anatomy: bool = False, with_labels: bool = False, mismatch: float = 0.0,
                 modalities: tuple[str, ...] = ("MR",)) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0.0 <= mismatch <= 1.0:
            raise ValueError(f"mismatch must be a probability, got {mismatch}")
        if not modalities or not set(modalities) <= set(MODALITIES):
            raise ValueError(f"modalities must be among {MODALITIES}, got {modalities}")
        needed = {"labels"} if with_labels else set()
        if with_anatomy:
            needed = {"labels", *(m.lower() for m in modalities)}
            if mismatch > 0 and "MR" in modalities:
                needed.add("mr_mismatch")
        patterns = [f"{family}-*.safetensors" for family in families] if families else [
            "*.safetensors"]
        folder = Path(root) / split
        self.files = sorted({p for pattern in patterns for p in folder.glob(pattern)
                             if not p.name.startswith(".")  # skip partial writes
                             and _holds(p, needed)})
        if not self.files:
            raise FileNotFoundError(
                f"{folder}: no shards ({', '.join(patterns)}"
                + (f", with {' and '.join(sorted(needed))})" if needed else ")"))
        self.drfs, self.neighbours = drfs, neighbours
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.cases_in_flight = max(1, cases_in_flight) if shuffle else 1
        self.with_levels = with_levels
        self.with_anatomy, self.mismatch = with_anatomy, mismatch
        self.with_labels = with_labels or with_anatomy
        self.modalities = tuple(dict.fromkeys(modalities))

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffling order for the next pass."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, object]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(self.seed * 1_000_003 + self.epoch * 101 + worker)
        files = self.files[worker::n_workers]
        if self.shuffle:
            files = rng.sample(files, len(files))
        for start in range(0, len(files), self.cases_in_flight):
            pool = [item for path in files[start : start + self.cases_in_flight]
                    for item in self._case_items(path, rng)]
            if self.shuffle:
                rng.shuffle(pool)
            yield from pool

    def _case_items(self, path: Path, rng: random.Random) -> Iterator[dict[str, object]]:
        record = read_record(path)
        drfs = [k for k in record["drfs"] if self.drfs is None or k in self.drfs]
        if not drfs:
            return
        with safe_open(str(path), framework="pt") as f:
            fixed = {name: f.get_tensor(name) for name in ("fd", "truth", "mu", "mr", "sino_fd")}
            levels = {k: (f.get_tensor(f"ld_drf{k}"), f.get_tensor(f"sino_ld_drf{k}"))
                      for k in drfs}
            every_level = ({k: levels[k][0] if k in levels else f.get_tensor(f"ld_drf{k}")
                            for k in record["drfs"]} if self.with_levels else {})
            labels = f.get_tensor("labels") if self.with_labels else None
        spacing = (record["pixel_mm"], record["pixel_mm"], record["plane_mm"])
        refs = {k: reference_value(levels[k][0].float().numpy(), spacing) for k in drfs}
        if self.with_anatomy:
            modality, anatomy = self._anatomy(path, record, spacing)
        planes = list(range(fixed["fd"].shape[0]))
        if self.shuffle:
            rng.shuffle(planes)
        last = len(planes) - 1
        for p in planes:
            k = rng.choice(drfs) if self.shuffle else drfs[p % len(drfs)]
            ld, sino = levels[k]
            idx = [min(max(p + d, 0), last) for d in range(-self.neighbours, self.neighbours + 1)]
            item: dict[str, object] = {
                "ld": ld[idx].float(),
                "fd": fixed["fd"][p : p + 1].float(),
                "truth": fixed["truth"][p : p + 1].float(),
                "mu": fixed["mu"][p : p + 1].float(),
                "mr": fixed["mr"][p : p + 1].float(),
                "sino_ld": sino[p : p + 1].float() * k,
                "sino_fd": fixed["sino_fd"][p : p + 1].float(),
                "drf": float(k),
                "ref": refs[k],
                "prompt": record["levels"][str(k)]["prompt"],
                "case_id": record["case_id"],
                "pixel_mm": float(record["pixel_mm"]),
            }
            if self.with_levels:
                item["levels"] = {k: volume[p : p + 1] for k, volume in every_level.items()}
            if self.with_labels:
                item["labels"] = labels[p].long()
            if self.with_anatomy:
                item["anatomy"] = anatomy[idx]
                item["modality"] = modality
            yield item

    def _anatomy(self, path: Path, record: dict[str, object],
                 spacing: tuple[float, float, float]) -> tuple[str, torch.Tensor]:
        """The modality a case uses in this pass and its normalised volume
        ``(planes, ny, nx)`` float32, both from the case's own generator."""
        draws = random.Random(f"{self.seed}-{self.epoch}-{record['case_id']}")
        mismatched = draws.random() < self.mismatch
        rotation, shift = ct_misregistration(draws)
        modality = draws.choice(self.modalities)
        with safe_open(str(path), framework="np") as f:
            if modality == "MR":
                volume, _ = normalise_mr(
                    f.get_tensor("mr_mismatch" if mismatched else "mr").astype(np.float32),
                    spacing)
            else:
                volume = normalise_ct(rigid_move(f.get_tensor("ct").astype(np.float32),
                                                 spacing[::-1], rotation, shift))
        return modality, torch.from_numpy(volume)


def ct_misregistration(draws: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """A random small rigid PET/CT misregistration for :func:`~pet_recon.physics.phantoms.
    rigid_move`.

    Parameters
    ----------
    draws : random.Random
        The case's generator (six Gaussian draws: three angles, then three shifts).

    Returns
    -------
    rotation_deg : np.ndarray
        ``(3,)`` float64 angles about x, y, z, N(0, :data:`CT_ROTATION_SD_DEG`) clipped to
        +-:data:`CT_ROTATION_MAX_DEG` degrees.
    translation_mm : np.ndarray
        ``(3,)`` float64 shifts along x, y, z, N(0, :data:`CT_SHIFT_SD_MM`) clipped to
        +-:data:`CT_SHIFT_MAX_MM` mm.
    """
    rotation = [draws.gauss(0.0, CT_ROTATION_SD_DEG) for _ in range(3)]
    shift = [draws.gauss(0.0, CT_SHIFT_SD_MM) for _ in range(3)]
    return (np.clip(rotation, -CT_ROTATION_MAX_DEG, CT_ROTATION_MAX_DEG),
            np.clip(shift, -CT_SHIFT_MAX_MM, CT_SHIFT_MAX_MM))


def _holds(path: Path, names: set[str]) -> bool:
    """Whether a shard holds every volume in ``names``."""
    if not names:
        return True
    with safe_open(str(path), framework="np") as f:
        return names <= set(f.keys())


def write_dataset(
    out_dir: Path,
    *,
    families: tuple[str, ...],
    cases: int,
    seed: int,
    drfs: tuple[int, ...],
    slices: int = 64,
    matrix: int = 128,
    splits: tuple[str, ...] = ("train", "val"),
    device: torch.device,
    progress: bool = True,
) -> dict[str, object]:
    """`petrecon make-dataset`: simulate cases and write them as shards.

    Seeds ``seed .. seed + cases - 1`` are simulated for every family; a seed whose split
    (:func:`split_of`) is not in ``splits`` is skipped, so test seeds stay unseen by training
    unless asked for. Shards are written one by one (a shard is complete or absent), so an
    interrupted run can be resumed: existing shards are kept.

    Returns
    -------
    dict
        Shards written and skipped per split.
    """
    from tqdm import tqdm

    from pet_recon.physics.simulate import simulate_case

    counts = {s: 0 for s in SPLITS}
    jobs = [(f, s) for s in range(seed, seed + cases) for f in families if split_of(s) in splits]
    for family, case_seed in tqdm(jobs, desc="dataset", unit="case", disable=not progress):
        target = Path(out_dir) / split_of(case_seed) / f"{family}-{case_seed:06d}.safetensors"
        if not target.exists():
            case = simulate_case(family, case_seed, matrix=matrix, slices=slices, drfs=drfs,
                                 device=device)
            write_shard(case, Path(out_dir))
        counts[split_of(case_seed)] += 1
    return {"out": str(out_dir), "shards": counts}
