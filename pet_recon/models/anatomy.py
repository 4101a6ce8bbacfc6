"""MR and CT branches of the anatomy-guided SD2: M2Diff-style fusion (Pain et al.,
arXiv:2603.09075).

M2Diff restores low-dose PET with the help of an MR of the same patient: the MR and the PET
are processed by separate, modality-specific branches whose features are fused at several
scales (hierarchical feature fusion), and the network is trained on more than one task.
petrecon's realisation on top of the MiG-DM cascade (``docs/anatomy.md``), extended to CT
with one more modality-specific branch feeding the same U-Net:

- :class:`AnatomyBranch`: a small convolutional encoder of its own over the MR (or CT) plane
  and its neighbours (the same ``n`` as the PET planes), one per modality of
  :data:`MODALITIES`, giving one feature map per guided encoder
  stage of SD2's U-Net (:class:`~pet_recon.models.unet.UNet`, ``stage_features``: the
  mechanism SD1's sinogram branch uses), each through a 1x1 convolution that starts at zero,
  so at initialisation the fused U-Net is exactly the PET-only one it is fine-tuned from.
- An auxiliary head segments the tissue classes of :data:`TISSUE_CLASSES` from the branch's
  finest features; its cross-entropy, weighted, is added to the diffusion loss (the
  multi-task objective).
- :func:`normalise_mr` and :func:`normalise_ct`: the intensity normalisations, the same in
  training and inference.
- :func:`route_by_modality`: a batch that mixes MR and CT items sends each item through its
  own modality's branch.
- :func:`bound_to_detail`: the guard against anatomy leaking into function. The guided
  U-Net's output may differ from the PET-only SD2's only in details finer than a Gaussian;
  at coarser scales (the mean uptake of a region) the PET-only restoration rules.

The tissue classes and the weight of the auxiliary loss are petrecon's choices: the summary
of the paper does not give them. Classes from the simulator's labels
(:class:`~pet_recon.physics.phantoms.Label`), :data:`LABEL_TO_TISSUE`:

=====  ============  ==============================================================
class  name          phantom labels
=====  ============  ==============================================================
0      background    BACKGROUND
1      csf           CSF (ventricles, sulcal and subarachnoid CSF, spinal canal)
2      grey matter   GREY_MATTER, DEEP_GREY, CEREBELLUM (cerebellar cortex)
3      white matter  WHITE_MATTER (cerebral and cerebellar white matter, brainstem)
4      other         every other label: soft tissue, fat, skull, bone, organs, lesions
=====  ============  ==============================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from pet_recon.metrics import body_mask
from pet_recon.models.unet import GUIDED_STAGES, ResBlock, _zero
from pet_recon.physics.phantoms import Label
from pet_recon.weights import register_config

#: Names of the auxiliary segmentation's classes; the index is the class id.
TISSUE_CLASSES = ("background", "csf", "grey matter", "white matter", "other")
#: Class of the labels that :data:`LABEL_TO_TISSUE` does not list (including lesions).
OTHER_TISSUE = TISSUE_CLASSES.index("other")
#: Phantom label id -> tissue class id; every other label is :data:`OTHER_TISSUE`.
LABEL_TO_TISSUE: dict[int, int] = {
    Label.BACKGROUND: 0,
    Label.CSF: 1,
    Label.GREY_MATTER: 2,
    Label.DEEP_GREY: 2,
    Label.CEREBELLUM: 2,
    Label.WHITE_MATTER: 3,
}
#: The MR is divided by this percentile of its values inside the head.
MR_PERCENTILE = 99.0
#: Anatomical modalities, each with a branch of its own (M2Diff's modality-specific
#: branches): the simulator's T1-weighted-like MR and its CT.
MODALITIES = ("MR", "CT")
#: :func:`normalise_ct`: ``(HU + CT_OFFSET_HU) / CT_SCALE_HU`` clipped to ``CT_RANGE``.
CT_OFFSET_HU = 1000.0
CT_SCALE_HU = 1000.0
CT_RANGE = (0.0, 3.0)


def tissue_classes(labels: torch.Tensor) -> torch.Tensor:
    """Map phantom label ids to tissue classes (:data:`LABEL_TO_TISSUE`).

    Parameters
    ----------
    labels : torch.Tensor
        Integer label ids of any shape (e.g. ``(B, H, W)`` int16 from the shards), lesion ids
        ``>= LESION_BASE`` included.

    Returns
    -------
    torch.Tensor
        int64 class ids in ``0 .. len(TISSUE_CLASSES) - 1``, same shape and device.
    """
    labels = labels.long()
    table = torch.full((max(LABEL_TO_TISSUE) + 1,), OTHER_TISSUE, dtype=torch.long,
                       device=labels.device)
    for label, tissue in LABEL_TO_TISSUE.items():
        table[label] = tissue
    inside = (labels >= 0) & (labels < table.numel())
    return torch.where(inside, table[labels.clamp(0, table.numel() - 1)], OTHER_TISSUE)


def normalise_mr(volume: np.ndarray, spacing: tuple[float, float, float]
                 ) -> tuple[np.ndarray, float]:
    """Divide an MR volume by the :data:`MR_PERCENTILE` th percentile of its head voxels.

    MR intensities are in arbitrary units that change from scanner to scanner and with the
    receive-coil gain, so the branch sees the MR relative to a robust high value of the
    same volume: the 99th percentile inside the head (:func:`pet_recon.metrics.body_mask`
    of the MR: above 10 % of the 99th percentile of the volume smoothed with an 8 mm FWHM
    Gaussian), which ignores a few bright outliers (vessels, fat, noise). White matter then
    lies near 0.7-0.9, grey matter near 0.45-0.6, CSF near 0.2 and air near 0 (the
    simulator's MR). Training applies it to each case's volume on the PET grid, inference to
    the MR on the model's grid (:mod:`pet_recon.pipeline`).

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` MR, float, arbitrary units.
    spacing : tuple of float
        ``(x, y, z)`` voxel spacing in mm.

    Returns
    -------
    normalised : np.ndarray
        float32, same shape: ``volume / scale`` (dimensionless).
    scale : float
        The divisor, in the MR's units.

    Raises
    ------
    ValueError
        The volume has no positive signal inside a head mask.
    """
    data = np.asarray(volume, dtype=np.float32)
    head = body_mask(data, spacing)
    scale = float(np.percentile(data[head], MR_PERCENTILE)) if head.any() else 0.0
    if not scale > 0:
        raise ValueError("the MR has no signal to normalise (no positive values in the head)")
    return data / np.float32(scale), scale


def normalise_ct(volume_hu: np.ndarray) -> np.ndarray:
    """Map a CT from Hounsfield units to the CT branch's input by a fixed linear map.

    ``(HU + 1000) / 1000`` clipped to ``[0, 3]``: air 0, water 1, dense bone about 2, metal
    and contrast at most 3. HU are calibrated on every scanner, so unlike
    :func:`normalise_mr` no statistics of the case are used; training and inference apply
    the same map.

    Parameters
    ----------
    volume_hu : np.ndarray
        CT of any shape (e.g. ``(slices, rows, columns)``), float, HU.

    Returns
    -------
    np.ndarray
        float32, same shape, dimensionless.
    """
    data = (np.asarray(volume_hu, dtype=np.float32) + np.float32(CT_OFFSET_HU)) / np.float32(
        CT_SCALE_HU)
    return np.clip(data, *CT_RANGE)


def route_by_modality(modalities: Sequence[str],
                      branch_output: Callable[[str, torch.Tensor], list[torch.Tensor]]
                      ) -> list[torch.Tensor]:
    """Send each modality's items of a batch through its own branch; outputs in batch order.

    Parameters
    ----------
    modalities : sequence of str
        The modality of each item of the batch (``B`` entries, from :data:`MODALITIES`).
    branch_output : callable
        ``branch_output(modality, index)`` with ``index`` the ``(b,)`` int64 positions of
        that modality's items; returns a list of tensors ``(b, ...)`` (e.g. stage features
        of :meth:`AnatomyBranch.fuse`), the same shapes but for ``b`` whatever the modality.

    Returns
    -------
    list of torch.Tensor
        ``(B, ...)`` per entry of the lists, item ``i``'s rows from its modality's call.
    """
    out: list[torch.Tensor] = []
    for modality in dict.fromkeys(modalities):
        index = torch.tensor([i for i, m in enumerate(modalities) if m == modality])
        part = branch_output(modality, index)
        if not out:
            out = [x.new_zeros((len(modalities), *x.shape[1:])) for x in part]
        for whole, x in zip(out, part, strict=True):
            whole[index.to(x.device)] = x
    return out


class AnatomyBranch(nn.Module):
    """Modality-specific (MR or CT) encoder whose features are fused into SD2's encoder stages.

    A 3x3 stem over the ``2 * neighbours + 1`` MR or CT planes, then one level per guided U-Net
    stage: a stride-2 3x3 convolution (from the second level on) and a residual block
    (:class:`~pet_recon.models.unet.ResBlock`, no time embedding). Level ``i`` is at
    ``1 / 2**i`` of the slice, like stage ``i`` of :meth:`UNet.stage_shapes
    <pet_recon.models.unet.UNet.stage_shapes>` for a U-Net of at most four levels, and like
    the sinogram branch's outputs (:class:`~pet_recon.models.sinogram.SinogramBranch`). Each
    level's features go through their own 1x1 convolution to the stage's channel count,
    zero at initialisation: hierarchical fusion by addition at every guided scale (M2Diff)
    that leaves the PET-only U-Net unchanged until trained. The segmentation head (GroupNorm,
    SiLU, 1x1 conv) reads the finest level.

    Parameters
    ----------
    stage_channels : sequence of int
        Channels of each guided U-Net stage, shallowest first (``UNet.stage_channels``).
    neighbours : int
        MR or CT planes on each side of the centre plane given as channels (the PET's ``n``).
    channels : sequence of int
        Channels of the branch's own levels, one per stage.
    n_classes : int
        Classes of the auxiliary segmentation (``len(TISSUE_CLASSES)``).
    groups : int
        GroupNorm groups; must divide every entry of ``channels``.

    Notes
    -----
    Defaults with ``stage_channels=(32, 64, 64, 64)`` (the shipped U-Nets): 85 k parameters.
    """

    @register_config
    def __init__(self, stage_channels: Sequence[int], neighbours: int = 1,
                 channels: Sequence[int] = (16, 32, 32, 32),
                 n_classes: int = len(TISSUE_CLASSES), groups: int = 8) -> None:
        super().__init__()
        if not 1 <= len(stage_channels) <= GUIDED_STAGES:
            raise ValueError(f"1 to {GUIDED_STAGES} stages, got {tuple(stage_channels)}")
        if len(channels) != len(stage_channels):
            raise ValueError(f"channels {tuple(channels)} must have one entry per stage "
                             f"{tuple(stage_channels)}")
        self.stage_channels = tuple(stage_channels)
        self.stem = nn.Conv2d(2 * neighbours + 1, channels[0], 3, padding=1)
        self.downsamples = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1)
                                         for c in channels[:-1])
        self.blocks = nn.ModuleList(ResBlock(c_in, c, None, 0.0, groups)
                                    for c_in, c in zip((channels[0], *channels[:-1]), channels,
                                                       strict=True))
        self.fusion = nn.ModuleList(_zero(nn.Conv2d(c, s, 1))
                                    for c, s in zip(channels, stage_channels, strict=True))
        self.segmentation = nn.Sequential(nn.GroupNorm(groups, channels[0]), nn.SiLU(),
                                          nn.Conv2d(channels[0], n_classes, 1))

    def encode(self, anatomy: torch.Tensor) -> list[torch.Tensor]:
        """The branch's own features at every level.

        Parameters
        ----------
        anatomy : torch.Tensor
            ``(B, 2 * neighbours + 1, H, W)`` MR or CT planes normalised by
            :func:`normalise_mr` or :func:`normalise_ct` (centre plane in the middle
            channel); ``H`` and ``W`` divisible by
            ``2 ** (stages - 1)``.

        Returns
        -------
        list of torch.Tensor
            ``(B, channels[i], H / 2**i, W / 2**i)`` per level, shallowest first.
        """
        h = self.stem(anatomy)
        encoded = []
        for level, block in enumerate(self.blocks):
            if level:
                h = self.downsamples[level - 1](h)
            h = block(h, None)
            encoded.append(h)
        return encoded

    def fuse(self, encoded: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Project encoded levels (whole slices or crops of them) to the U-Net's stages.

        Parameters
        ----------
        encoded : sequence of torch.Tensor
            :meth:`encode`'s output, or windows of it cut by
            :func:`~pet_recon.models.sinogram.crop_stage_features` (1x1 convolutions commute
            with cropping).

        Returns
        -------
        list of torch.Tensor
            ``(B, stage_channels[i], h_i, w_i)`` per stage, the ``stage_features`` of
            :meth:`UNet.forward <pet_recon.models.unet.UNet.forward>`; zero at
            initialisation.
        """
        return [conv(h) for conv, h in zip(self.fusion, encoded, strict=True)]

    def segment(self, encoded: Sequence[torch.Tensor]) -> torch.Tensor:
        """Auxiliary tissue segmentation logits from the finest level.

        Parameters
        ----------
        encoded : sequence of torch.Tensor
            :meth:`encode`'s output.

        Returns
        -------
        torch.Tensor
            ``(B, n_classes, H, W)`` logits of :data:`TISSUE_CLASSES`.
        """
        return self.segmentation(encoded[0])

    def forward(self, anatomy: torch.Tensor) -> list[torch.Tensor]:
        """Stage features of a batch of normalised MR or CT planes (see :meth:`encode`).

        Returns
        -------
        list of torch.Tensor
            ``(B, stage_channels[i], H / 2**i, W / 2**i)`` per stage, shallowest first: the
            output contract of :class:`~pet_recon.models.sinogram.SinogramBranch`.
        """
        return self.fuse(self.encode(anatomy))


def gaussian_blur(image: torch.Tensor, sigma_px: tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian blur of each plane, edges replicated.

    Parameters
    ----------
    image : torch.Tensor
        ``(B, C, H, W)`` float.
    sigma_px : tuple of float
        Standard deviation along rows (``H``) and columns (``W``) in pixels; 0 leaves that
        axis alone. The kernel is cut at 4 standard deviations and normalised to sum 1.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device.
    """
    b, c, h, w = image.shape
    out = image.reshape(b * c, 1, h, w)
    for axis, sigma in ((2, sigma_px[0]), (3, sigma_px[1])):
        if sigma <= 0:
            continue
        radius = max(1, int(np.ceil(4.0 * sigma)))
        x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = (kernel / kernel.sum()).reshape((1, 1, -1, 1) if axis == 2 else (1, 1, 1, -1))
        pad = (0, 0, radius, radius) if axis == 2 else (radius, radius, 0, 0)
        out = nn.functional.conv2d(nn.functional.pad(out, pad, mode="replicate"), kernel)
    return out.reshape(b, c, h, w)


def bound_to_detail(guided: torch.Tensor, pet_only: torch.Tensor,
                    sigma_px: tuple[float, float] | Sequence[tuple[float, float]]
                    ) -> torch.Tensor:
    """Keep the anatomy's effect on the restoration to details finer than a Gaussian.

    With ``d = guided - pet_only``, the change that the MR (or CT) made to the PET-only SD2's
    output from the same resampled state and noise, the result is
    ``pet_only + d - G * d``: the guided output's fine scales on the PET-only output's coarse
    ones (``G * pet_only + (guided - G * guided)``). An MR may sharpen what the PET shows
    (grey-white boundaries, the cortex's partial volume), but the mean uptake over a region
    wider than the Gaussian, which the PET measures itself, is the PET-only restoration's:
    a structure seen only on the MR cannot shift it. This is petrecon's guard of issue #7's
    second leak check (``docs/anatomy.md``, "Bounded guidance"); the summary of the M2Diff
    paper (Pain et al., arXiv:2603.09075) does not describe one.

    Parameters
    ----------
    guided, pet_only : torch.Tensor
        ``(B, 1, H, W)`` outputs of the anatomy-guided and the PET-only SD2, model intensity.
    sigma_px : tuple of float, or a sequence of them
        Standard deviation of ``G`` along rows and columns, in pixels: one pair for the
        batch, or one per item (slices of different pixel sizes).

    Returns
    -------
    torch.Tensor
        ``(B, 1, H, W)``, model intensity.
    """
    change = guided - pet_only
    if isinstance(sigma_px[0], (int, float)):
        return guided - gaussian_blur(change, sigma_px)  # type: ignore[arg-type]
    return guided - torch.cat([gaussian_blur(change[i : i + 1], tuple(s))
                               for i, s in enumerate(sigma_px)])  # type: ignore[arg-type]

