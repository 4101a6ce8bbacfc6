"""MAP-Diff dose anchors: degradation-matched anchor timesteps and the anchor loss.

MAP-Diff (Jing et al., "MAP-Diff: Multi-Anchor Guided Diffusion for Progressive 3D
Whole-Body Low-Dose PET Denoising", arXiv:2603.02012) uses the intermediate dose levels of
a multi-dose study as anchors of the reverse trajectory: each anchor dose level ``k`` is
given a timestep ``t_k`` by *degradation matching* between the diffusion's forward
corruption and the real low-dose/full-dose pairs, and a *timestep-weighted anchor loss*
pulls the model towards the level-``k`` image at timesteps near ``t_k``. The summary the
project works from gives no formulas; the statistic and the weighting below are petrecon's
own, chosen and justified in ``docs/map-diff.md``.

Degradation matching
--------------------
Divided by ``sqrt(alpha_bar_t)``, the forward process (Ho et al. 2020, Eq. 4) reads
``x_t / sqrt(alpha_bar_t) = x_0 + sqrt((1 - alpha_bar_t) / alpha_bar_t) * eps``: the clean
image plus white noise of variance ``r_t = (1 - alpha_bar_t) / alpha_bar_t`` (the
noise-to-signal ratio of step ``t``). Dose level ``k`` of a case is its full-dose image plus
the degradation ``x_k - x_fd``. In the networks' intensity space (``x = SUV / ref``,
:mod:`pet_recon.models.intensity`, ``ref`` of the input dose level as in training) the
statistic is the per-slice variance ``sigma_k^2 = Var[x_k - x_fd]`` inside the body, its
median over training slices is taken, and the anchor timestep is
``t_k = argmin_{t in 1..T} |r_t - sigma_k^2|``.

Anchor loss
-----------
``L_anchor = 1/B sum_b sum_{k in A_b} w(t_b; t_k) * mean_pixels (x0_hat_b - x_k,b)^2`` with
the Gaussian timestep weight ``w(t; t_k) = exp(-(t - t_k)^2 / (2 width^2))`` and ``A_b`` the
anchor levels of item ``b``: the calibrated dose levels strictly between its input's DRF
``d_b`` and full dose (``1 < k < d_b``) that its case has. Training adds
``lambda * L_anchor`` to the usual ``||x0_hat - x_0||^2``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from pet_recon.diffusion.schedule import NoiseSchedule
from pet_recon.errors import PetReconError

#: Key of the calibrated anchors ``{"k": t_k}`` in the weights' ``extra`` metadata and
#: in training checkpoints.
ANCHORS_KEY = "anchors"

#: Default width (timesteps) of the Gaussian anchor weight: about half the inter-quartile
#: range of the per-slice matched steps of the lower anchors on the training data (7 and 14
#: steps for DRF 4 and 10) and below the spacing of neighbouring anchors (15 to 31 steps);
#: ``docs/map-diff.md``.
DEFAULT_WIDTH = 10.0
#: Default coefficient ``lambda`` of the anchor loss: at ``t = t_k`` the anchor counts as
#: much as the full-dose target.
DEFAULT_WEIGHT = 1.0
#: Default number of training slices per dose level used for calibration.
CALIBRATION_SLICES = 64
#: A slice enters the calibration only with at least this many body pixels.
MIN_BODY_PIXELS = 64


def noise_to_signal(schedule: NoiseSchedule) -> torch.Tensor:
    """Noise-to-signal ratio of every step: ``r_t = (1 - alpha_bar_t) / alpha_bar_t``.

    ``x_t / sqrt(alpha_bar_t) = x_0 + sqrt(r_t) * eps`` (Ho et al. 2020, Eq. 4 divided by
    ``sqrt(alpha_bar_t)``), so ``r_t`` is the variance, in units of the clean image squared,
    of the white noise that step ``t`` adds to ``x_0``.

    Parameters
    ----------
    schedule : NoiseSchedule
        The diffusion's schedule.

    Returns
    -------
    torch.Tensor
        ``(T + 1,)`` float64 CPU tensor indexed by ``t = 0..T``, ``r_0 = 0``, increasing.
    """
    abar = schedule.alpha_bar  # alpha_bar_t, t = 0..T
    return (1.0 - abar) / abar


def matching_step(variance: float, schedule: NoiseSchedule) -> int:
    """The step whose forward corruption has the given variance (degradation matching).

    Parameters
    ----------
    variance : float
        ``sigma_k^2``, the degradation variance in intensity units squared, ``>= 0``.
    schedule : NoiseSchedule
        The diffusion's schedule.

    Returns
    -------
    int
        ``t_k = argmin_{t in 1..T} |r_t - sigma_k^2|`` (the smaller ``t`` on a tie).
    """
    if not math.isfinite(variance) or variance < 0:
        raise ValueError(f"variance must be finite and >= 0, got {variance}")
    r = noise_to_signal(schedule)[1:]  # r_t for t = 1..T
    return int(torch.argmin((r - variance).abs())) + 1


def degradation_statistic(low: torch.Tensor, full: torch.Tensor,
                          mask: torch.Tensor | None = None) -> float:
    """Variance of the degradation ``x_k - x_fd`` of one low-dose image (MAP-Diff matching).

    Parameters
    ----------
    low : torch.Tensor
        ``(..., H, W)`` low-dose image ``x_k`` in the networks' intensity space
        (``SUV / ref``), float.
    full : torch.Tensor
        Full-dose image ``x_fd``, same shape and space.
    mask : torch.Tensor, optional
        Boolean mask of the pixels to use (the body), same shape; default every pixel.

    Returns
    -------
    float
        ``sigma_k^2 = Var[x_k - x_fd]`` over the mask (population variance about the mean,
        float64), in intensity units squared.
    """
    if low.shape != full.shape:
        raise ValueError(f"low {tuple(low.shape)} and full {tuple(full.shape)} differ")
    diff = low.detach().to(torch.float64) - full.detach().to(torch.float64)  # x_k - x_fd
    if mask is not None:
        if mask.shape != diff.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match {tuple(diff.shape)}")
        diff = diff[mask.to(torch.bool)]
    if diff.numel() == 0:
        raise ValueError("no pixels to compute the degradation statistic on")
    return float(diff.var(unbiased=False))


def _statistics(pairs_by_drf: Mapping[int, Sequence[tuple[torch.Tensor, torch.Tensor]]],
                masks_by_drf: Mapping[int, Sequence[torch.Tensor | None]] | None
                ) -> dict[int, np.ndarray]:
    """Per DRF the ``(N,)`` float64 array of per-pair statistics ``sigma^2``."""
    out: dict[int, np.ndarray] = {}
    for drf, pairs in pairs_by_drf.items():
        if not pairs:
            raise ValueError(f"no pairs for DRF {drf}")
        masks = masks_by_drf[drf] if masks_by_drf is not None else [None] * len(pairs)
        if len(masks) != len(pairs):
            raise ValueError(f"DRF {drf}: {len(pairs)} pairs but {len(masks)} masks")
        out[int(drf)] = np.array([degradation_statistic(low, full, mask)
                                  for (low, full), mask in zip(pairs, masks, strict=True)])
    return out


def calibrate_anchor_steps(
    pairs_by_drf: Mapping[int, Sequence[tuple[torch.Tensor, torch.Tensor]]],
    schedule: NoiseSchedule,
    *,
    masks_by_drf: Mapping[int, Sequence[torch.Tensor | None]] | None = None,
) -> dict[int, int]:
    """Anchor timestep of every dose level by degradation matching (MAP-Diff).

    Parameters
    ----------
    pairs_by_drf : mapping
        ``{k: [(x_k, x_fd), ...]}``: per dose reduction factor ``k``, pairs of low-dose and
        full-dose images ``(..., H, W)`` in intensity space (``SUV / ref``).
    schedule : NoiseSchedule
        The diffusion's schedule.
    masks_by_drf : mapping, optional
        ``{k: [mask or None, ...]}`` aligned with ``pairs_by_drf`` (boolean, image shape).

    Returns
    -------
    dict
        ``{k: t_k}``: the step ``t`` in ``1..T`` whose noise-to-signal ratio
        ``(1 - alpha_bar_t) / alpha_bar_t`` is nearest the median over pairs of
        :func:`degradation_statistic`.
    """
    stats = _statistics(pairs_by_drf, masks_by_drf)
    return {drf: matching_step(float(np.median(values)), schedule)
            for drf, values in sorted(stats.items())}


def _read_case(path: Path, drfs: Sequence[int] | None
               ) -> tuple[dict[str, object], np.ndarray, dict[int, np.ndarray]]:
    """A shard's record, full-dose volume and low-dose volumes (SUV, float32)."""
    from pet_recon.dataset import read_record

    record = read_record(path)
    levels = [k for k in record["drfs"] if drfs is None or k in drfs]
    with safe_open(str(path), framework="np") as f:
        full = f.get_tensor("fd").astype(np.float32)
        low = {k: f.get_tensor(f"ld_drf{k}").astype(np.float32) for k in levels}
    return record, full, low


def calibrate_from_data(data: Path, drfs: Sequence[int] | None, schedule: NoiseSchedule, *,
                        slices: int = CALIBRATION_SLICES, split: str = "train", seed: int = 0,
                        pattern: str = "*.safetensors") -> dict[int, dict[str, float]]:
    """Calibrate the anchor timesteps on the shards of a data set (``make-dataset`` output).

    Cases are visited in a shuffled order (``seed``); from each, ``ceil(slices / cases)``
    planes with at least :data:`MIN_BODY_PIXELS` body pixels are drawn, the same planes for
    every dose level, until ``slices`` per level are collected. Each plane gives
    ``sigma_k^2 = Var[(ld_k - fd) / ref_k]`` inside the body mask of the full-dose volume
    (:func:`pet_recon.metrics.body_mask`), with ``ref_k`` the case's intensity reference at
    level ``k`` (:func:`pet_recon.models.intensity.reference_value`, as
    :class:`~pet_recon.dataset.SliceStream` gives training).

    Parameters
    ----------
    data : Path
        Folder with ``<split>/*.safetensors`` shards.
    drfs : sequence of int or None
        Dose reduction factors to calibrate; ``None``: every level in the shards.
    schedule : NoiseSchedule
        The diffusion's schedule.
    slices : int
        Planes per dose level (fewer when the split has fewer).
    split : str
        Shard folder to read.
    seed : int
        Order of the cases and choice of planes.
    pattern : str
        Glob of the shard names (e.g. ``"body-*.safetensors"`` for one family).

    Returns
    -------
    dict
        Per DRF ``k``: ``{"t": t_k, "variance": median sigma_k^2, "variance_q25",
        "variance_q75", "t_q25", "t_q75" (steps matched to those quartiles),
        "noise_to_signal": r_{t_k}, "slices": number of planes, "cases": number of cases}``.

    Raises
    ------
    PetReconError
        No shards, or no usable plane for a requested DRF.
    """
    from pet_recon.metrics import body_mask
    from pet_recon.models.intensity import reference_value

    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    files = sorted(p for p in (Path(data) / split).glob(pattern) if not p.name.startswith("."))
    if not files:
        raise PetReconError(f"{Path(data) / split}: no shards ({pattern})")
    rng = random.Random(seed)
    files = rng.sample(files, len(files))
    per_case = math.ceil(slices / len(files))
    pairs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    masks: dict[int, list[torch.Tensor | None]] = {}
    cases: dict[int, int] = {}
    for path in files:
        record, full, low = _read_case(path, drfs)
        wanted = [k for k in low if len(pairs.get(k, [])) < slices]
        if not wanted:
            continue
        spacing = (record["pixel_mm"], record["pixel_mm"], record["plane_mm"])
        body = body_mask(full, spacing)
        usable = [p for p in range(full.shape[0]) if body[p].sum() >= MIN_BODY_PIXELS]
        planes = sorted(rng.sample(usable, min(per_case, len(usable))))
        for k in wanted:
            ref = reference_value(low[k], spacing)  # ref_k, as SliceStream gives training
            take = planes[: slices - len(pairs.get(k, []))]
            for p in take:
                # x_k = ld_k / ref_k and x_fd = fd / ref_k: the intensity space of training.
                pairs.setdefault(k, []).append((torch.from_numpy(low[k][p] / ref),
                                                torch.from_numpy(full[p] / ref)))
                masks.setdefault(k, []).append(torch.from_numpy(body[p]))
            cases[k] = cases.get(k, 0) + bool(take)
    missing = [k for k in (drfs or []) if k not in pairs]
    if missing or not pairs:
        raise PetReconError(f"{Path(data) / split}: no usable planes for DRF "
                            f"{missing or 'any'}")
    stats = _statistics(pairs, masks)
    r = noise_to_signal(schedule)
    out: dict[int, dict[str, float]] = {}
    for k, values in sorted(stats.items()):
        q25, median, q75 = (float(v) for v in np.percentile(values, [25, 50, 75]))
        t_k = matching_step(median, schedule)
        out[k] = {"t": t_k, "variance": median, "variance_q25": q25, "variance_q75": q75,
                  "t_q25": matching_step(q25, schedule), "t_q75": matching_step(q75, schedule),
                  "noise_to_signal": float(r[t_k]), "slices": len(values), "cases": cases[k]}
    return out


def anchor_weight(t: torch.Tensor, t_k: torch.Tensor | int, width: float) -> torch.Tensor:
    """Gaussian timestep weight of an anchor: ``w(t; t_k) = exp(-(t - t_k)^2 / (2 width^2))``.

    1 at ``t = t_k``, ``exp(-1/2)`` one ``width`` away, below ``1.2e-4`` beyond four.

    Parameters
    ----------
    t : torch.Tensor
        Timesteps, any shape (e.g. ``(B,)`` or ``(B, 1)``), integer or float.
    t_k : torch.Tensor or int
        Anchor timestep(s), broadcastable against ``t`` (e.g. ``(B, K)``).
    width : float
        Standard deviation of the Gaussian, in timesteps, ``> 0``.

    Returns
    -------
    torch.Tensor
        float32 weights in ``(0, 1]``, the broadcast shape of ``t`` and ``t_k``, on ``t``'s
        device.
    """
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    t_k = torch.as_tensor(t_k, device=t.device)
    distance = t.to(torch.float32) - t_k.to(torch.float32)  # t - t_k
    return torch.exp(-0.5 * (distance / width) ** 2)


def stack_anchors(levels: Sequence[Mapping[int, torch.Tensor]], input_drfs: Sequence[float],
                  anchors: Mapping[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather each batch item's anchor images: its case's calibrated levels ``1 < k < d``.

    Parameters
    ----------
    levels : sequence of mapping
        Per item ``{k: (C, H, W)}``, the item's plane at every dose level ``k`` of its case
        (``SliceStream(..., with_levels=True)``'s ``levels``), any float dtype.
    input_drfs : sequence of float
        Per item the DRF ``d`` of its low-dose input.
    anchors : mapping
        ``{k: t_k}`` calibrated anchor timesteps; levels without one are not anchors.

    Returns
    -------
    images : torch.Tensor
        ``(B, K, C, H, W)`` float32 anchor images in the units of ``levels`` (SUV for
        SliceStream), ``K`` the largest number of anchors of an item (0 when none has any),
        sorted by increasing ``k``, zero-padded.
    drfs : torch.Tensor
        ``(B, K)`` int64 DRF of each anchor, 0 for padding.
    """
    if len(levels) != len(input_drfs):
        raise ValueError(f"{len(levels)} items of levels but {len(input_drfs)} input DRFs")
    chosen = [sorted(k for k in item if k in anchors and 1 < k < float(d))
              for item, d in zip(levels, input_drfs, strict=True)]
    template = next(iter(levels[0].values()))
    count = max((len(ks) for ks in chosen), default=0)
    images = torch.zeros((len(levels), count, *template.shape), dtype=torch.float32)
    drfs = torch.zeros((len(levels), count), dtype=torch.int64)
    for b, ks in enumerate(chosen):
        for j, k in enumerate(ks):
            images[b, j] = levels[b][k].float()
            drfs[b, j] = k
    return images, drfs


def anchor_loss(x0_pred: torch.Tensor, anchor_images: torch.Tensor, anchor_drfs: torch.Tensor,
                t: torch.Tensor, anchors: Mapping[int, int], width: float) -> torch.Tensor:
    """Timestep-weighted anchor loss (MAP-Diff): pull ``x0_hat`` to the anchors near ``t_k``.

    ``L_anchor = 1/B sum_b sum_k w(t_b; t_{k_bj}) * mean_pixels (x0_hat_b - x_{k_bj,b})^2``
    over the non-padding anchors ``j`` of item ``b``, with ``w`` from :func:`anchor_weight`.

    Parameters
    ----------
    x0_pred : torch.Tensor
        ``(B, C, H, W)`` the model's estimate ``x0_hat`` (intensity space), float.
    anchor_images : torch.Tensor
        ``(B, K, C, H, W)`` anchor images ``x_k`` in the same space (:func:`stack_anchors`
        divided by ``ref``).
    anchor_drfs : torch.Tensor
        ``(B, K)`` integer DRF ``k`` of each anchor, 0 for padding.
    t : torch.Tensor
        ``(B,)`` timesteps of the items.
    anchors : mapping
        ``{k: t_k}`` calibrated anchor timesteps; every non-zero ``anchor_drfs`` entry must
        be a key.
    width : float
        Width of the Gaussian weight, in timesteps.

    Returns
    -------
    torch.Tensor
        Scalar float32 loss, differentiable in ``x0_pred``; 0 when ``K = 0`` or every
        anchor is padding.
    """
    if (anchor_images.shape[:2] != anchor_drfs.shape
            or anchor_images.shape[2:] != x0_pred.shape[1:]):
        raise ValueError(f"anchor images {tuple(anchor_images.shape)}, DRFs "
                         f"{tuple(anchor_drfs.shape)} and prediction {tuple(x0_pred.shape)} "
                         "do not fit")
    unknown = {int(k) for k in anchor_drfs.unique().tolist()} - set(anchors) - {0}
    if unknown:
        raise ValueError(f"no calibrated anchor timestep for DRF {sorted(unknown)}")
    # t_k of each anchor (0 for padding, masked out below).
    lookup = {0: 0, **{int(k): int(v) for k, v in anchors.items()}}
    steps = torch.tensor([[lookup[int(k)] for k in row] for row in anchor_drfs.tolist()],
                         dtype=torch.float32, device=x0_pred.device).reshape(anchor_drfs.shape)
    valid = (anchor_drfs != 0).to(x0_pred.device)
    weights = anchor_weight(t.to(x0_pred.device)[:, None], steps, width) * valid  # w(t_b; t_k)
    # mean over pixels of (x0_hat_b - x_k,b)^2, per item and anchor: (B, K).
    error = (x0_pred.float()[:, None] - anchor_images.to(x0_pred.device).float()) ** 2
    per_anchor = error.flatten(2).mean(2)
    return (weights * per_anchor).sum(1).mean()


def anchors_metadata(anchors: Mapping[int, int]) -> dict[str, int]:
    """``{k: t_k}`` as JSON-ready ``{"k": t_k}`` (weights ``extra`` and checkpoints)."""
    return {str(k): int(v) for k, v in sorted(anchors.items())}


def anchors_from_metadata(value: str | Mapping[str, int]) -> dict[int, int]:
    """Inverse of :func:`anchors_metadata`; also takes its JSON dump."""
    mapping = json.loads(value) if isinstance(value, str) else value
    return {int(k): int(v) for k, v in mapping.items()}
