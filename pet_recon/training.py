"""`petrecon train`: the four trainable stages of the MiG-DM cascade.

Stages (Geng et al., arXiv:2512.22237, Sec. III; training order of its "critical path"):

- ``mi-encoder``: the meta-information encoder, CLIP-style on (prompt, low-dose slice)
  pairs (symmetric InfoNCE, learned temperature; Radford et al. 2021).
- ``srm``: the sinogram restoration module, low-dose -> full-dose prompts, Poisson loss.
- ``sd1``: the diffusion U-Net conditioned on the low-dose slice (neighbours as channels)
  with the sinogram branch (SinoA + CDSM, trained with it) added to its last four encoder
  stages; the SRM is frozen.
- ``sd2``: the diffusion U-Net conditioned on the low-dose slice that cross-attends to the
  frozen meta-information encoder's prompt tokens; trained on timesteps up to
  :data:`SD2_MAX_T` because it only ever starts from SD1's output re-noised to step N.
- ``anatomy``: the anatomy-guided SD2 (M2Diff, Pain et al., arXiv:2603.09075;
  :mod:`pet_recon.models.anatomy`): SD2's U-Net, initialised from the trained
  ``sd2.safetensors``, fine-tuned like SD2 together with one branch per anatomical modality
  (MR, and CT with ``modalities``) whose features are added to its guided encoder stages,
  plus ``aux_weight`` times the cross-entropy of each branch's tissue segmentation
  (multi-task); on the shards of ``families`` (brain).
- ``unet``: not part of the cascade; the supervised baseline of the benchmark, the same
  U-Net without timestep or noisy input, regressing the full-dose slice from the low-dose
  planes with the same loss, patches and optimiser.

Both diffusion models predict the clean image ``x0`` (see :mod:`pet_recon.diffusion`) in the
intensity space of :mod:`pet_recon.models.intensity`, with the loss ``||f(x_t, t) - x0||^2``
on random 64 x 64 patches. Every stage: AdamW, linear warm-up then cosine decay, gradient
clipping, an exponential moving average (EMA) of the weights (the EMA is what is saved),
bf16 autocast (CPU and CUDA), checkpoints every ``checkpoint_every`` steps that
``resume=True`` continues from, and a validation metric at the end. The device is an
argument: the same code runs on CPU and CUDA.

With ``anchor_loss`` (off by default), SD1 and SD2 add MAP-Diff's timestep-weighted anchor
loss (Jing et al., arXiv:2603.02012; :mod:`pet_recon.diffusion.anchors`): the anchor
timesteps are calibrated on the training data by degradation matching, the intermediate
dose levels of each item's case supervise ``x0_hat`` near them, and the calibrated
timesteps are saved with the weights (``extra["anchors"]``) and in the checkpoint.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from pet_recon.cascade import ANATOMY_BRANCH_FILES, ANATOMY_FILES
from pet_recon.dataset import (
    CT_ROTATION_MAX_DEG,
    CT_ROTATION_SD_DEG,
    CT_SHIFT_MAX_MM,
    CT_SHIFT_SD_MM,
    SliceStream,
    read_record,
)
from pet_recon.diffusion.anchors import (
    ANCHORS_KEY,
    DEFAULT_WEIGHT,
    DEFAULT_WIDTH,
    anchor_loss,
    anchors_from_metadata,
    anchors_metadata,
    calibrate_from_data,
    stack_anchors,
)
from pet_recon.diffusion.schedule import RESAMPLE_STEP, NoiseSchedule
from pet_recon.errors import PetReconError
from pet_recon.meta.encoder import (
    MetaEncoder,
    clip_loss,
    image_inputs,
    load_meta_encoder,
    retrieval_top1,
    save_meta_encoder,
)
from pet_recon.meta.tokenizer import Tokenizer
from pet_recon.metrics import body_mask, noise_sigma
from pet_recon.models.anatomy import (
    CT_OFFSET_HU,
    CT_RANGE,
    CT_SCALE_HU,
    LABEL_TO_TISSUE,
    MODALITIES,
    MR_PERCENTILE,
    OTHER_TISSUE,
    TISSUE_CLASSES,
    AnatomyBranch,
    route_by_modality,
    tissue_classes,
)
from pet_recon.models.intensity import reference_value
from pet_recon.models.sinogram import (
    SinogramBranch,
    SinogramRestoration,
    crop_stage_features,
    normalise_sinogram,
    poisson_loss,
    project_image,
)
from pet_recon.models.unet import UNet
from pet_recon.physics.phantoms import LESION_BASE, Label
from pet_recon.weights import load_model, save_model, sha256_file

log = logging.getLogger(__name__)

STAGES = ("mi-encoder", "srm", "sd1", "sd2", "unet", "anatomy")
#: SD2 is trained on timesteps 1..SD2_MAX_T (it starts from step N <= 400).
SD2_MAX_T = 400
#: Probability that SD1 sees the projection of the low-dose image instead of the measured
#: sinogram, so that it also works when a site cannot export sinograms.
PROJECTED_SINOGRAM_P = 0.3
#: Probability that SD2 sees a blank prompt (all tokens masked), so it works without one.
BLANK_PROMPT_P = 0.1
NEIGHBOURS = 1


@dataclass
class TrainOptions:
    """Options shared by every stage.

    Attributes
    ----------
    data : Path
        Folder of shards (``train/``, ``val/``) written by ``petrecon make-dataset``.
    out : Path
        Run folder: ``checkpoint.safetensors``, the final ``<stage>.safetensors`` (EMA
        weights) and ``<stage>.json`` (report).
    steps : int
        Optimiser steps.
    device : torch.device
    batch_size, lr, seed, patch : training hyper-parameters (patch in pixels).
    ema_decay : float
    checkpoint_every, log_every : int
    bf16 : bool
        bf16 autocast for the forward pass.
    frozen : Path or None
        Folder with the earlier stages' weights (``srm.safetensors`` for SD1,
        ``mi-encoder.safetensors`` for SD2), verified against its ``manifest.json`` unless
        ``trust_frozen`` (a run folder of one's own, not yet in a manifest).
    resume : bool
        Continue from ``out/checkpoint.safetensors`` when it exists.
    anchor_loss : bool
        SD1/SD2 only: add MAP-Diff's timestep-weighted anchor loss
        (:mod:`pet_recon.diffusion.anchors`, ``docs/map-diff.md``). The anchor timesteps
        ``t_k`` are calibrated on the training data at the start (or read from the
        checkpoint when resuming) and stored in the weights' ``extra["anchors"]``
        (``{"<drf>": t_k}``). Off: training is exactly as without the option.
    anchor_weight : float
        ``lambda``, the coefficient of the anchor loss (default 1: at ``t = t_k`` an anchor
        counts as much as the full-dose target).
    anchor_width : float
        Width in timesteps of the Gaussian weight ``exp(-(t - t_k)^2 / (2 width^2))``.
    aux_weight : float
        ``anatomy`` only: weight of the auxiliary tissue segmentation's cross-entropy added
        to the diffusion loss (petrecon's choice, ``docs/anatomy.md``).
    families : tuple of str
        ``anatomy`` only: phantom families whose shards are used (shard names
        ``<family>-<seed>.safetensors``, shards with ``mr`` and ``labels``).
    mismatch : float
        ``anatomy`` only: probability that a training case's MR is its mismatched MR (no
        lesions, MR-only spheres; :func:`~pet_recon.physics.phantoms.mismatched_mr`), so
        that the branch learns not to copy anatomy into the PET (``docs/anatomy.md``).
    modalities : tuple of str
        ``anatomy`` only: the anatomical modalities (:data:`~pet_recon.models.anatomy.
        MODALITIES`), one branch each; with several, each training case uses one of them per
        pass (:class:`~pet_recon.dataset.SliceStream`).
    lock_text : bool
        ``mi-encoder`` only: keep the text tower of ``frozen/mi-encoder.safetensors`` and
        train a new image tower against it (:func:`_train_mi_encoder`).
    init : bool
        ``sd1`` and ``sd2``: start from ``--frozen``'s weights of the stage (fine-tuning)
        instead of random ones: ``sd1.safetensors`` and ``sinogram-branch.safetensors``, or
        ``sd2.safetensors``.
    pure_noise_p : float
        ``sd1`` only: probability that an item's timestep is ``T`` (``x_T`` is pure noise
        up to ``sqrt(alpha_bar_T)``, so ``x0_hat`` is the regression of the full-dose slice
        on the conditions alone: what the sampler's first step returns); otherwise ``t`` is
        uniform on ``1..T``. 0 (default): uniform, as in DDPM.
    sd1_input_p : float
        ``sd2`` only: probability that an item's ``x_t`` is SD1's output re-noised instead
        of the full-dose slice, at ``t`` uniform on ``1..N`` (``N`` =
        :data:`~pet_recon.diffusion.schedule.RESAMPLE_STEP`): the states ``reconstruct``'s
        default sampler gives SD2. SD1's output is that of ``reconstruct`` (the verified
        cascade of ``--frozen``, 2 DDIM steps, the item's measured sinogram) on the whole
        slice, cropped like the target; the target stays the full-dose slice. 0 (default):
        SD2 sees only re-noised full-dose slices.
    lesion_weight : float
        Diffusion stages: the squared error of a pixel in a lesion (phantom label
        ``>= LESION_BASE``, dilated by one pixel for the point-spread function) counts
        ``1 + lesion_weight`` times (:func:`lesion_weights`). Petrecon's choice, not the
        papers': lesions cover well under 1 % of the pixels, so a plain MSE barely sees their
        contrast. 0 (default): the plain MSE, and the shards need no ``labels``.
    neighbours : int
        ``sd1``, ``sd2`` and ``unet``: low-dose planes on either side of the slice the
        network sees (``2 * neighbours + 1`` planes; default :data:`NEIGHBOURS`). With
        ``init``, a ``--frozen`` file trained with fewer planes has its input convolution
        widened (:func:`widen_input_planes`), so fine-tuning starts from that model.
    """

    data: Path
    out: Path
    steps: int
    device: torch.device
    batch_size: int = 8
    lr: float = 2e-4
    seed: int = 0
    patch: int = 64
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    log_every: int = 100
    bf16: bool = True
    frozen: Path | None = None
    trust_frozen: bool = False
    resume: bool = True
    anchor_loss: bool = False
    anchor_weight: float = DEFAULT_WEIGHT
    anchor_width: float = DEFAULT_WIDTH
    aux_weight: float = 0.1
    families: tuple[str, ...] = ("brain",)
    mismatch: float = 0.5
    modalities: tuple[str, ...] = ("MR",)
    lock_text: bool = False
    init: bool = False
    pure_noise_p: float = 0.0
    sd1_input_p: float = 0.0
    lesion_weight: float = 0.0
    neighbours: int = NEIGHBOURS


def widen_input_planes(unet: UNet, trained: int, neighbours: int) -> None:
    """Give a conditional U-Net trained with ``trained`` low-dose neighbour planes on
    either side ``neighbours >= trained`` of them, in place, without changing its output.

    The input is ``cat([x_t, planes])`` (diffusion stages) or the planes alone (the U-Net
    baseline): the trained planes' kernels move to the middle of the wider stack and the
    new outer planes get zero kernels, so the widened model computes what it computed
    before until fine-tuning changes them.
    """
    if neighbours == trained:
        return
    if neighbours < trained:
        raise PetReconError(f"cannot narrow a model trained with {trained} neighbour planes "
                            f"to {neighbours}")
    old = unet.conv_in
    lead = old.in_channels - (2 * trained + 1)  # x_t of the diffusion stages, or none
    new = nn.Conv2d(lead + 2 * neighbours + 1, old.out_channels, old.kernel_size,
                    padding=old.padding).to(old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        shift = neighbours - trained
        new.weight[:, :lead] = old.weight[:, :lead]
        new.weight[:, lead + shift : lead + shift + 2 * trained + 1] = old.weight[:, lead:]
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.config["in_channels"] = new.in_channels


class EMA:
    """Exponential moving average of a model's floating-point state (Polyak averaging)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``shadow = decay * shadow + (1 - decay) * current``."""
        for (_, shadow), (_, current) in zip(self.model.state_dict().items(),
                                             model.state_dict().items(), strict=True):
            if shadow.dtype.is_floating_point:
                shadow.lerp_(current.detach(), 1.0 - self.decay)
            else:
                shadow.copy_(current)


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _lr_factor(step: int, total: int, warmup: int = 200) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _save_checkpoint(path: Path, step: int, module: nn.Module, ema: EMA,
                     optimizer: torch.optim.Optimizer,
                     metadata: dict[str, str] | None = None) -> None:
    """Model, EMA and optimiser state as safetensors (no pickle), step in the metadata
    (plus ``metadata``, e.g. the calibrated anchors, when given)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in module.state_dict().items()}
    tensors |= {f"ema.{k}": v.detach().cpu().contiguous()
                for k, v in ema.model.state_dict().items()}
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"opt.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tmp = path.with_name(f".partial-{path.name}")
    save_file(tensors, str(tmp), metadata={"step": str(step),
                                           "param_groups": json.dumps(state["param_groups"]),
                                           **(metadata or {})})
    tmp.replace(path)


#: Checkpoint metadata key: training seconds so far, summed over resumed runs.
SECONDS_KEY = "train_seconds"


def checkpoint_seconds(path: Path) -> float:
    """Training seconds recorded in a checkpoint, summed over the runs that wrote it (0 for
    checkpoints written before they were recorded)."""
    with safe_open(str(path), framework="pt") as f:
        return float(f.metadata().get(SECONDS_KEY, 0.0))


def _load_checkpoint(path: Path, module: nn.Module, ema: EMA,
                     optimizer: torch.optim.Optimizer) -> int:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state,
                               "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"])


def _batches(stream: SliceStream, batch_size: int) -> Iterator[dict[str, Any]]:
    """Endless batches: tensors stacked, scalars as tensors, strings as lists."""
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        items: list[dict[str, Any]] = []
        for item in stream:
            items.append(item)
            if len(items) == batch_size:
                yield _collate(items)
                items = []
        epoch += 1


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    for key, value in items[0].items():
        values = [item[key] for item in items]
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(value, float):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[key] = values
    return batch


def lesion_weights(labels: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel weights of the diffusion loss with ``--lesion-weight``.

    Parameters
    ----------
    labels : torch.Tensor
        ``(B, H, W)`` int64 phantom label ids (:class:`~pet_recon.physics.phantoms.Label`;
        lesions ``>= LESION_BASE``).
    weight : float
        Extra weight of a lesion pixel.

    Returns
    -------
    torch.Tensor
        ``(B, 1, H, W)`` float32: ``1 + weight`` on the lesions dilated by one pixel (3 x 3),
        1 elsewhere.
    """
    lesion = (labels >= LESION_BASE).float()[:, None]
    return 1.0 + weight * nn.functional.max_pool2d(lesion, 3, stride=1, padding=1)


def _crop_offsets(size: int, patch: int, rng: random.Random) -> tuple[int, int]:
    """Random top-left corner, a multiple of 8 so the U-Net stages stay aligned."""
    span = (size - patch) // 8
    return 8 * rng.randint(0, span), 8 * rng.randint(0, span)


class _Run:
    """What every stage shares: model, optimiser, EMA, checkpoints, the step loop."""

    def __init__(self, stage: str, module: nn.Module, opts: TrainOptions) -> None:
        self.stage, self.module, self.opts = stage, module.to(opts.device), opts
        opts.out.mkdir(parents=True, exist_ok=True)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=1e-4)
        self.ema = EMA(self.module, opts.ema_decay)
        self.checkpoint = opts.out / "checkpoint.safetensors"
        self.start = 0
        #: Training seconds of earlier runs that this one continues (checkpoint metadata).
        self.earlier_seconds = 0.0
        if opts.resume and self.checkpoint.exists():
            self.start = _load_checkpoint(self.checkpoint, self.module, self.ema, self.optimizer)
            self.earlier_seconds = checkpoint_seconds(self.checkpoint)
            log.warning("%s: resumed at step %d", stage, self.start)
        self.t0 = time.perf_counter()
        self.losses: list[float] = []
        #: Extra string metadata written into every checkpoint (the calibrated anchors).
        self.checkpoint_metadata: dict[str, str] = {}

    def step(self, step: int, loss: torch.Tensor) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.opts.lr * _lr_factor(step, self.opts.steps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.ema.update(self.module)
        self.losses.append(float(loss.detach()))
        if (step + 1) % self.opts.log_every == 0:
            recent = self.losses[-self.opts.log_every:]
            log.warning("%s step %d/%d loss %.5f", self.stage, step + 1, self.opts.steps,
                        sum(recent) / len(recent))
        if (step + 1) % self.opts.checkpoint_every == 0 or step + 1 == self.opts.steps:
            seconds = self.earlier_seconds + time.perf_counter() - self.t0
            _save_checkpoint(self.checkpoint, step + 1, self.module, self.ema, self.optimizer,
                             self.checkpoint_metadata | {SECONDS_KEY: repr(seconds)})


def _frozen_path(opts: TrainOptions, name: str) -> Path:
    if opts.frozen is None:
        raise PetReconError(f"training this stage needs --frozen DIR with {name}")
    path = opts.frozen / name
    if not path.exists():
        raise PetReconError(f"{path}: not found (train that stage first)")
    return path


def _trusted_hash(path: Path, opts: TrainOptions) -> str | None:
    return sha256_file(path) if opts.trust_frozen else None


def load_srm(path: Path, device: torch.device, expected_sha256: str | None = None
             ) -> SinogramRestoration:
    """Load a verified SRM, frozen, in eval mode."""
    model, _ = load_model(path, registry={"SinogramRestoration": SinogramRestoration},
                          expected_sha256=expected_sha256, device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model  # type: ignore[return-value]


# ----------------------------------------------------------------------------- stages


#: The image tower trained by ``mi-encoder``: the slice and its neighbours, the reference
#: concentration and the volume's relative noise as scalars
#: (:func:`~pet_recon.meta.encoder.image_inputs`), a narrow CNN (a wider one memorises the
#: 64 training phantoms) and an MLP head.
MI_IMAGE_TOWER = {"in_channels": 2 * NEIGHBOURS + 1, "image_width": 16, "image_scalars": 2,
                  "image_head_hidden": 256}


def _train_mi_encoder(opts: TrainOptions) -> dict[str, Any]:
    """CLIP training of both towers, or with ``lock_text`` of the image tower only.

    ``lock_text`` keeps the text tower of ``frozen/mi-encoder.safetensors`` (whose tokens
    SD2 was trained on) and trains a new image tower, the text tower's pooled projection
    and the temperature: the tokens stay bit for bit what they were, so SD2 is unaffected.
    This is LiT's locked-tower tuning (Zhai et al. 2022, arXiv:2111.07991) with the text
    tower locked instead of the image tower.
    """
    pairs = _PromptVolumes.read(opts.data, "train")
    if opts.lock_text:
        path = _frozen_path(opts, "mi-encoder.safetensors")
        base, tokenizer = load_meta_encoder(path, expected_sha256=_trusted_hash(path, opts))
        model = MetaEncoder(**{**base.config, **MI_IMAGE_TOWER})
        model.text.load_state_dict(base.text.state_dict())
        for name, param in model.text.named_parameters():
            param.requires_grad_(name.startswith("proj."))
    else:
        tokenizer = Tokenizer()
        model = MetaEncoder(tokenizer.vocab_size, **MI_IMAGE_TOWER)
    run = _Run("mi-encoder", model, opts)
    rng = random.Random(opts.seed * 1_000_003 + run.start)
    for step in range(run.start, opts.steps):
        prompts, images, scalars = pairs.batch(rng, opts.batch_size, augment=True,
                                               scalars=model.image.scalars)
        ids, numeric, mask = (t.to(opts.device) for t in tokenizer.encode_batch(prompts))
        with _autocast(opts.device, opts.bf16):
            text_emb, image_emb = run.module(ids, numeric, mask, images.to(opts.device),
                                             scalars.to(opts.device))
            loss = clip_loss(text_emb.float(), image_emb.float(), run.module.scale())
        run.step(step, loss)
    path = save_meta_encoder(opts.out / "mi-encoder.safetensors", run.ema.model, tokenizer)
    metrics = retrieval_on_split(run.ema.model, tokenizer, opts.data, opts.device)
    return {"weights": str(path), "metrics": metrics}


@dataclass
class _PromptVolumes:
    """Every (prompt, low-dose volume) pair of a split, in memory (float16).

    ``volumes[i]`` is the ``(slices, ny, nx)`` SUV volume of prompt ``prompts[i]`` (one
    case at one dose level), ``refs[i]`` its reference value (SUV), ``bqml_per_suv[i]``
    its Bq/ml per SUV and ``noises[i]`` its noise SD inside the body
    (:func:`~pet_recon.metrics.noise_sigma`, SUV).
    """

    prompts: list[str]
    volumes: list[torch.Tensor]
    refs: list[float]
    bqml_per_suv: list[float]
    noises: list[float]

    @classmethod
    def read(cls, root: Path, split: str) -> _PromptVolumes:
        files = sorted((Path(root) / split).glob("*.safetensors"))
        files = [f for f in files if not f.name.startswith(".")]
        if not files:
            raise PetReconError(f"{Path(root) / split}: no shards")
        pairs = cls([], [], [], [], [])
        for path in files:
            record = read_record(path)
            spacing = (record["pixel_mm"], record["pixel_mm"], record["plane_mm"])
            with safe_open(str(path), framework="pt") as f:
                for k in record["drfs"]:
                    volume = f.get_tensor(f"ld_drf{k}")
                    array = volume.float().numpy()
                    pairs.prompts.append(record["levels"][str(k)]["prompt"])
                    pairs.volumes.append(volume.half())
                    mask = body_mask(array, spacing)  # once for both statistics
                    pairs.refs.append(reference_value(array, spacing, mask))
                    pairs.bqml_per_suv.append(1.0 / record["suv_factor"][str(k)])
                    pairs.noises.append(noise_sigma(array, mask) if mask.any() else 1.0)
        return pairs

    @functools.cached_property
    def distinct(self) -> list[int]:
        """Index of the first volume of every distinct prompt, in reading order."""
        first: dict[str, int] = {}
        for i, prompt in enumerate(self.prompts):
            first.setdefault(prompt, i)
        return list(first.values())

    def inputs(self, indices: list[int], planes: list[int], rng: random.Random | None = None,
               scalars: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tower inputs of slice ``planes[j]`` (with its neighbours) of volume
        ``indices[j]``; with ``rng``, each slice randomly flipped and turned by 90 degree
        steps (the prompt does not depend on orientation). ``scalars``: 1 (the reference
        concentration, the towers trained before the noise scalar) or 2 (and the noise)."""
        stacks = []
        for i, p in zip(indices, planes, strict=True):
            last = self.volumes[i].shape[0] - 1
            stack = self.volumes[i][[min(max(p + d, 0), last)
                                     for d in range(-NEIGHBOURS, NEIGHBOURS + 1)]].float()
            if rng is not None:
                if rng.random() < 0.5:
                    stack = stack.flip(-1)
                stack = torch.rot90(stack, rng.randrange(4), (-2, -1))
            stacks.append(stack)
        noise = torch.tensor([self.noises[i] for i in indices]) if scalars == 2 else None
        return image_inputs(torch.stack(stacks), torch.tensor([self.refs[i] for i in indices]),
                            torch.tensor([self.bqml_per_suv[i] for i in indices]), noise)

    def batch(self, rng: random.Random, size: int, augment: bool, scalars: int = 2
              ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """``size`` random pairs with different prompts (contrastive pairs must be unique),
        one random slice each."""
        distinct = self.distinct
        if len(distinct) < size:
            raise PetReconError(f"{len(distinct)} distinct prompts in the training data, fewer "
                                f"than the batch size {size}; lower --batch-size")
        indices = rng.sample(distinct, size)
        planes = [rng.randrange(self.volumes[i].shape[0]) for i in indices]
        images, values = self.inputs(indices, planes, rng if augment else None, scalars)
        return [self.prompts[i] for i in indices], images, values


@torch.no_grad()
def retrieval_on_split(model: MetaEncoder, tokenizer: Tokenizer, data: Path,
                       device: torch.device, batches: int = 8, batch_size: int = 32,
                       volume: bool = False) -> dict[str, float]:
    """Top-1 prompt-to-image retrieval on held-out batches of 32 distinct prompts.

    The first 32 distinct prompts of ``data``'s validation split (every case at every dose
    level of the standard data: 8 cases x 4 levels); batch ``j`` pairs each with a random
    slice of its volume (fixed generator), so every batch has the same 32 prompts and new
    images. The training's validation uses 8 batches; ``docs/meta-information.md`` also
    quotes 32 batches on a second held-out set (load a file with
    :func:`~pet_recon.meta.encoder.load_meta_encoder` and call this on that set's folder).

    Parameters
    ----------
    model : MetaEncoder
        The encoder (any module with its call signature).
    tokenizer : Tokenizer
        Its tokenizer.
    data : Path
        Dataset folder (``petrecon make-dataset``) whose ``val/`` shards are used.
    device : torch.device
        Where the model runs.
    batches, batch_size : int
        Number of batches and prompts per batch.
    volume : bool
        Also ``retrieval_top1_volume``: each prompt against the mean of its volume's
        L2-normalised slice embeddings (every slice, the same prompts), one retrieval.

    Returns
    -------
    dict
        ``retrieval_top1`` (fraction, mean over the batches), ``batches``, ``batch_size``,
        ``chance`` (and ``retrieval_top1_volume``); NaN and ``distinct_prompts`` when the
        split has fewer distinct prompts than ``batch_size``.
    """
    model.eval()
    scalars = model.image.scalars
    pairs = _PromptVolumes.read(data, "val")
    indices = pairs.distinct[:batch_size]
    if len(indices) < batch_size:
        return {"retrieval_top1": float("nan"), "batches": 0, "batch_size": batch_size,
                "distinct_prompts": len(indices)}
    ids, numeric, mask = (t.to(device) for t in
                          tokenizer.encode_batch([pairs.prompts[i] for i in indices]))
    rng = random.Random(1)
    scores = []
    for _ in range(batches):
        planes = [rng.randrange(pairs.volumes[i].shape[0]) for i in indices]
        images, values = pairs.inputs(indices, planes, scalars=scalars)
        text_emb, image_emb = model(ids, numeric, mask, images.to(device),
                                    values.to(device))
        scores.append(retrieval_top1(text_emb.float(), image_emb.float()))
    result = {"retrieval_top1": float(np.mean(scores)), "batches": batches,
              "batch_size": batch_size, "chance": 1.0 / batch_size}
    if volume:
        planes = min(pairs.volumes[i].shape[0] for i in indices)
        mean_emb = 0.0
        for p in range(planes):
            images, values = pairs.inputs(indices, [p] * len(indices), scalars=scalars)
            text_emb, image_emb = model(ids, numeric, mask, images.to(device),
                                        values.to(device))
            mean_emb = mean_emb + F.normalize(image_emb.float(), dim=-1) / planes
        result["retrieval_top1_volume"] = retrieval_top1(text_emb.float(), mean_emb)
    return result


def _train_srm(opts: TrainOptions) -> dict[str, Any]:
    model = SinogramRestoration()
    run = _Run("srm", model, opts)
    stream = SliceStream(opts.data, "train", neighbours=0, seed=opts.seed)
    batches = _batches(stream, opts.batch_size)
    for step in range(run.start, opts.steps):
        batch = next(batches)
        s_ld, scale = normalise_sinogram(batch["sino_ld"].to(opts.device))
        with _autocast(opts.device, opts.bf16):
            pred = run.module(s_ld)
        loss = poisson_loss(pred.float(), batch["sino_fd"].to(opts.device), scale)
        run.step(step, loss)
    path = save_model(run.ema.model, opts.out / "srm.safetensors")
    return {"weights": str(path), "metrics": _validate_srm(run.ema.model, opts)}


@torch.no_grad()
def _validate_srm(model: nn.Module, opts: TrainOptions, batches: int = 16) -> dict[str, float]:
    """Poisson loss of the SRM vs the unrestored (rescaled) low-dose sinogram on val."""
    model.eval()
    stream = SliceStream(opts.data, "val", neighbours=0, seed=1)
    restored, identity = [], []
    for _, batch in zip(range(batches), _batches(stream, opts.batch_size), strict=False):
        s_ld, scale = normalise_sinogram(batch["sino_ld"].to(opts.device))
        target = batch["sino_fd"].to(opts.device)
        restored.append(float(poisson_loss(model(s_ld).float(), target, scale)))
        identity.append(float(poisson_loss(s_ld.clamp_min(1e-3), target, scale)))
    return {"poisson_loss": float(np.mean(restored)),
            "poisson_loss_low_dose": float(np.mean(identity)), "batches": len(restored)}


class GuidedUNet(nn.Module):
    """A U-Net trained together with the branch that gives its ``stage_features``: SD1 with
    its sinogram branch (SinoA + CDSM)."""

    def __init__(self, unet: UNet, branch: nn.Module) -> None:
        super().__init__()
        self.unet, self.branch = unet, branch


#: Attribute of each modality's branch in :class:`AnatomyGuidedUNet` (checkpoint keys
#: ``<attribute>.*``; the MR branch's are those of the runs from before CT).
BRANCH_MODULES = {"MR": "branch", "CT": "branch_ct"}


class AnatomyGuidedUNet(nn.Module):
    """The anatomy-guided SD2's U-Net trained with one :class:`AnatomyBranch` per modality."""

    def __init__(self, unet: UNet, branches: dict[str, AnatomyBranch]) -> None:
        super().__init__()
        self.unet = unet
        for modality, branch in branches.items():
            self.add_module(BRANCH_MODULES[modality], branch)
        self.modalities = tuple(branches)

    def branch_of(self, modality: str) -> AnatomyBranch:
        """The branch of ``modality`` (``"MR"`` or ``"CT"``)."""
        return getattr(self, BRANCH_MODULES[modality])


def _sd_unet(context_dim: int | None, neighbours: int) -> UNet:
    return UNet(in_channels=1 + 2 * neighbours + 1, out_channels=1, context_dim=context_dim)


def _sinogram_input(batch: dict[str, Any], srm: SinogramRestoration, device: torch.device,
                    rng: random.Random) -> torch.Tensor:
    """Restored, normalised sinograms ``(B, 1, views, bins)``; some replaced by the
    projection of the low-dose image (the fallback used when no sinogram is given)."""
    sino = batch["sino_ld"].to(device)
    c = batch["ld"].shape[1] // 2  # the slice itself, in the middle of its planes
    ld = batch["ld"][:, c : c + 1].to(device)
    use_projection = [rng.random() < PROJECTED_SINOGRAM_P for _ in range(sino.shape[0])]
    if any(use_projection):
        projected = project_image(ld, n_views=sino.shape[-2], n_bins=sino.shape[-1])
        mask = torch.tensor(use_projection, device=device)[:, None, None, None]
        sino = torch.where(mask, projected, sino)
    s, _ = normalise_sinogram(sino)
    with torch.no_grad():
        return srm(s)


#: Checkpoint metadata key of the whole anchor calibration
#: (:func:`pet_recon.diffusion.anchors.calibrate_from_data`, JSON); the anchors
#: ``{"<drf>": t_k}`` themselves are under ``ANCHORS_KEY``.
ANCHOR_CALIBRATION_KEY = "anchor_calibration"


def _anchor_calibration(run: _Run, schedule: NoiseSchedule, opts: TrainOptions
                        ) -> tuple[dict[int, int], dict[str, Any]]:
    """MAP-Diff anchor timesteps of a diffusion stage and their calibration record.

    Read from the checkpoint a resumed run continues from when it holds them, else
    calibrated on the training split by degradation matching over every dose level of the
    data (:func:`pet_recon.diffusion.anchors.calibrate_from_data`, seed 0: a property of
    the data, not of the run). Either way they are put into the run's checkpoint metadata.

    Returns
    -------
    anchors : dict
        ``{k: t_k}``.
    calibration : dict
        ``{"<k>": {"t", "variance", ...}}`` (empty when the checkpoint held only anchors).
    """
    stored: dict[str, str] = {}
    if run.start > 0:
        with safe_open(str(run.checkpoint), framework="pt") as f:
            stored = f.metadata()
    if ANCHORS_KEY in stored:
        anchors = anchors_from_metadata(stored[ANCHORS_KEY])
        calibration = json.loads(stored.get(ANCHOR_CALIBRATION_KEY, "{}"))
        log.warning("%s: anchor timesteps from the checkpoint %s", run.stage, anchors)
    else:
        measured = calibrate_from_data(opts.data, None, schedule)
        anchors = {k: int(v["t"]) for k, v in measured.items()}
        calibration = {str(k): v for k, v in measured.items()}
        log.warning("%s: calibrated anchor timesteps %s", run.stage, anchors)
    run.checkpoint_metadata[ANCHORS_KEY] = json.dumps(anchors_metadata(anchors))
    run.checkpoint_metadata[ANCHOR_CALIBRATION_KEY] = json.dumps(calibration, sort_keys=True)
    return anchors, calibration


#: ``predict(module, batch, x, t, oy, ox)`` of a diffusion stage (see :class:`_Diffusion`).
Predict = Callable[[Any, dict[str, Any], torch.Tensor, torch.Tensor, int, int],
                   tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class _Diffusion:
    """What tells the diffusion stages (SD1, SD2, the anatomy-guided SD2) apart in
    :func:`_train_sd`.

    Attributes
    ----------
    module : nn.Module
        The trained module (its EMA is saved).
    predict : Predict
        Called under autocast with the trained module, the batch, the U-Net input
        ``x = cat([x_t, low-dose planes])`` ``(B, 2 + 2 * NEIGHBOURS, patch, patch)`` of the
        patch whose top-left corner is ``(oy, ox)`` in the slice, and the timesteps ``t``
        ``(B,)``; returns ``x0_hat`` ``(B, 1, patch, patch)`` and the stage's weighted
        auxiliary loss (a scalar, or None).
    save : callable
        ``save(ema_module, extra)`` writes the weights files with the metadata ``extra``
        and returns the main one.
    extra : dict
        Stage-specific metadata added to the weights' ``extra``.
    """

    module: nn.Module
    predict: Predict
    save: Callable[[Any, dict[str, Any]], Path]
    extra: dict[str, Any] = field(default_factory=dict)


def _sd1(opts: TrainOptions, first: dict[str, Any], rng: random.Random) -> _Diffusion:
    """SD1 and its sinogram branch, guided by the frozen SRM's restored sinogram."""
    srm_path = _frozen_path(opts, "srm.safetensors")
    srm = load_srm(srm_path, opts.device, _trusted_hash(srm_path, opts))
    extra: dict[str, Any] = {}
    if opts.init:
        unet, branch, extra["init_sha256"] = _frozen_sd1(opts)
    else:
        unet = _sd_unet(None, opts.neighbours)
        branch = SinogramBranch(stage_channels=unet.stage_channels,
                                image_size=first["ld"].shape[-1],
                                n_views=first["sino_ld"].shape[-2],
                                n_bins=first["sino_ld"].shape[-1])

    def predict(module: GuidedUNet, batch: dict[str, Any], x: torch.Tensor, t: torch.Tensor,
                oy: int, ox: int) -> tuple[torch.Tensor, None]:
        features = module.branch(_sinogram_input(batch, srm, opts.device, rng))
        features = crop_stage_features(features, oy, ox, opts.patch)
        return module.unet(x, t, stage_features=features), None

    def save(module: GuidedUNet, extra: dict[str, Any]) -> Path:
        path = save_model(module.unet, opts.out / "sd1.safetensors", extra=extra)
        save_model(module.branch, opts.out / "sinogram-branch.safetensors")
        return path

    return _Diffusion(GuidedUNet(unet, branch), predict, save, extra)


def _frozen_sd1(opts: TrainOptions) -> tuple[UNet, SinogramBranch, dict[str, str]]:
    """``--frozen``'s SD1 U-Net and sinogram branch (verified), trainable, to fine-tune,
    and their SHA-256 by file name (recorded in the fine-tuned SD1's metadata)."""
    modules, hashes = [], {}
    for name, cls in (("sd1.safetensors", UNet), ("sinogram-branch.safetensors", SinogramBranch)):
        path = _frozen_path(opts, name)
        hashes[name] = sha256_file(path)
        module, extra = load_model(path, registry={cls.__name__: cls}, device=opts.device,
                                   expected_sha256=hashes[name] if opts.trust_frozen else None)
        if cls is UNet:
            _widen_frozen(module, extra, path, opts.neighbours, "SD1")  # type: ignore[arg-type]
        modules.append(module.train())
    return modules[0], modules[1], hashes


def _frozen_meta_encoder(opts: TrainOptions) -> tuple[MetaEncoder, Tokenizer]:
    """The frozen meta-information encoder of ``--frozen`` and its tokenizer."""
    encoder_path = _frozen_path(opts, "mi-encoder.safetensors")
    encoder, tokenizer = load_meta_encoder(
        encoder_path, device=opts.device, expected_sha256=_trusted_hash(encoder_path, opts))
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder, tokenizer


def _frozen_sd2(opts: TrainOptions) -> tuple[UNet, str]:
    """``--frozen``'s SD2 U-Net (verified), trainable, and its SHA-256."""
    path = _frozen_path(opts, "sd2.safetensors")
    sha256 = sha256_file(path)
    unet, extra = load_model(path, registry={"UNet": UNet}, device=opts.device,
                             expected_sha256=sha256 if opts.trust_frozen else None)
    if extra.get("max_t") != SD2_MAX_T:
        raise PetReconError(f"{path}: not an SD2 of this cascade (max_t "
                            f"{extra.get('max_t')}; expected {SD2_MAX_T})")
    _widen_frozen(unet, extra, path, opts.neighbours, "SD2")  # type: ignore[arg-type]
    return unet.train(), sha256


def _widen_frozen(unet: UNet, extra: dict[str, Any], path: Path, neighbours: int,
                  role: str) -> None:
    """Widen a ``--frozen`` U-Net to ``neighbours`` planes (:func:`widen_input_planes`);
    one-line error for a file that is no such stage or has more planes."""
    trained = extra.get("neighbours")
    if not isinstance(trained, int) or trained > neighbours:
        raise PetReconError(f"{path}: not an {role} to fine-tune with {neighbours} neighbour "
                            f"planes (trained with {trained})")
    widen_input_planes(unet, trained, neighbours)


def _sd2(opts: TrainOptions, first: dict[str, Any], rng: random.Random) -> _Diffusion:
    """SD2, cross-attending to the frozen encoder's prompt tokens (blank at random); with
    ``init``, fine-tuned from ``--frozen``'s SD2."""
    encoder, tokenizer = _frozen_meta_encoder(opts)
    extra: dict[str, Any] = {}
    if opts.init:
        unet, sha256 = _frozen_sd2(opts)
        extra["init_sha256"] = {"sd2.safetensors": sha256}
    else:
        unet = _sd_unet(encoder.config["width"], opts.neighbours)

    def predict(module: UNet, batch: dict[str, Any], x: torch.Tensor, t: torch.Tensor,
                oy: int, ox: int) -> tuple[torch.Tensor, None]:
        context, mask = _prompt_tokens(encoder, tokenizer, batch["prompt"], opts.device, rng,
                                       BLANK_PROMPT_P)
        return module(x, t, context=context, context_mask=mask), None

    def save(module: UNet, extra: dict[str, Any]) -> Path:
        return save_model(module, opts.out / "sd2.safetensors", extra=extra)

    return _Diffusion(unet, predict, save, extra)


def _sd2_anatomy(opts: TrainOptions, first: dict[str, Any], rng: random.Random) -> _Diffusion:
    """The anatomy-guided SD2 (M2Diff): SD2's U-Net, initialised from ``--frozen``'s
    ``sd2.safetensors``, trained with a new :class:`AnatomyBranch` whose features are added
    to its guided encoder stages, plus ``aux_weight`` times the cross-entropy of the
    branch's tissue segmentation (whole slice) against the phantom's labels; one branch per
    modality of ``opts.modalities``, each item's anatomy through its own modality's branch."""
    encoder, tokenizer = _frozen_meta_encoder(opts)
    unet, sd2_sha256 = _frozen_sd2(opts)
    modalities = _modalities(opts)
    branches = {m: AnatomyBranch(unet.stage_channels, neighbours=NEIGHBOURS) for m in modalities}

    def predict(module: AnatomyGuidedUNet, batch: dict[str, Any], x: torch.Tensor,
                t: torch.Tensor, oy: int, ox: int) -> tuple[torch.Tensor, torch.Tensor]:
        context, mask = _prompt_tokens(encoder, tokenizer, batch["prompt"], opts.device, rng,
                                       BLANK_PROMPT_P)
        features, segmentation = _routed_features(module, batch, oy, ox, opts)
        pred = module.unet(x, t, context=context, context_mask=mask, stage_features=features)
        return pred, opts.aux_weight * segmentation

    def save(module: AnatomyGuidedUNet, extra: dict[str, Any]) -> Path:
        path = save_model(module.unet, opts.out / ANATOMY_FILES["unet"], extra=extra)
        for modality in modalities:
            save_model(module.branch_of(modality), opts.out / ANATOMY_BRANCH_FILES[modality],
                       extra=extra)
        return path

    extra = {"anatomy": {
        "modalities": list(modalities),
        "families": list(opts.families),
        "mr_normalisation": {"function": "pet_recon.models.anatomy.normalise_mr",
                             "percentile": MR_PERCENTILE,
                             "region": "pet_recon.metrics.body_mask of the MR"},
        "ct_normalisation": {"function": "pet_recon.models.anatomy.normalise_ct",
                             "offset_hu": CT_OFFSET_HU, "scale_hu": CT_SCALE_HU,
                             "clip": list(CT_RANGE)},
        "ct_misregistration": {"rotation_sd_deg": CT_ROTATION_SD_DEG,
                               "rotation_max_deg": CT_ROTATION_MAX_DEG,
                               "translation_sd_mm": CT_SHIFT_SD_MM,
                               "translation_max_mm": CT_SHIFT_MAX_MM},
        "aux_weight": opts.aux_weight,
        "mismatch": opts.mismatch,
        "tissue_classes": list(TISSUE_CLASSES),
        "label_to_tissue": {Label(k).name: v for k, v in LABEL_TO_TISSUE.items()},
        "other_labels": TISSUE_CLASSES[OTHER_TISSUE],
        "initialised_from": {"file": "sd2.safetensors", "sha256": sd2_sha256},
    }}
    return _Diffusion(AnatomyGuidedUNet(unet, branches), predict, save, extra)


def _modalities(opts: TrainOptions) -> tuple[str, ...]:
    """``opts.modalities`` upper-cased, without repeats, in the order of
    :data:`~pet_recon.models.anatomy.MODALITIES`; a one-line error for another name."""
    asked = {m.upper() for m in opts.modalities}
    if not asked or not asked <= set(MODALITIES):
        raise PetReconError(f"--modality must be among {', '.join(m.lower() for m in MODALITIES)}"
                            f", got {', '.join(opts.modalities) or 'none'}")
    return tuple(m for m in MODALITIES if m in asked)


def _routed_features(module: AnatomyGuidedUNet, batch: dict[str, Any], oy: int, ox: int,
                     opts: TrainOptions) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Stage features of a batch's anatomy, each item through its modality's branch.

    Parameters
    ----------
    module : AnatomyGuidedUNet
    batch : dict
        ``anatomy`` ``(B, 2 * NEIGHBOURS + 1, H, W)`` normalised planes, ``labels``
        ``(B, H, W)`` phantom label ids and ``modality`` (``B`` strings).
    oy, ox : int
        Top-left corner of the ``opts.patch`` window the features are cut to.
    opts : TrainOptions

    Returns
    -------
    features : list of torch.Tensor
        ``(B, stage_channels[i], patch / 2**i, patch / 2**i)`` per guided stage.
    segmentation : torch.Tensor
        Scalar: the tissue segmentation's cross-entropy, mean over every pixel of the batch
        (each item scored by its own branch's segmentation head).
    """
    anatomy = batch["anatomy"].to(opts.device)
    classes = tissue_classes(batch["labels"].to(opts.device))
    losses: list[torch.Tensor] = []

    def branch_output(modality: str, index: torch.Tensor) -> list[torch.Tensor]:
        branch = module.branch_of(modality)
        index = index.to(opts.device)
        encoded = branch.encode(anatomy[index])
        losses.append(nn.functional.cross_entropy(branch.segment(encoded).float(),
                                                  classes[index], reduction="sum"))
        return branch.fuse(crop_stage_features(encoded, oy, ox, opts.patch))

    features = route_by_modality(batch["modality"], branch_output)
    return features, torch.stack(losses).sum() / classes.numel()


#: The diffusion stages of :func:`_train_sd`.
DIFFUSION_STAGES = {"sd1": _sd1, "sd2": _sd2, "anatomy": _sd2_anatomy}


class _Sd1Outputs:
    """SD1's outputs as ``reconstruct`` computes them, for SD2's ``sd1_input_p`` items: the
    verified cascade of ``--frozen`` (:class:`~pet_recon.cascade.Cascade`, its own CPU
    generator seeded with ``opts.seed``), SD1 alone (2 DDIM steps, resample step 0) on the
    whole slices with their measured sinograms."""

    def __init__(self, opts: TrainOptions) -> None:
        from pet_recon.cascade import Cascade

        _frozen_path(opts, "sd1.safetensors")  # --frozen given, with an SD1
        self.cascade = Cascade.load(opts.frozen, opts.device)
        self.generator = torch.Generator().manual_seed(opts.seed)

    def __call__(self, batch: dict[str, Any], ld: torch.Tensor, chosen: torch.Tensor
                 ) -> torch.Tensor:
        """``(B, 1, H, W)`` SD1 outputs (model intensity) of the ``chosen`` items ``(B,)``
        bool; zeros for the others (not computed)."""
        out = torch.zeros_like(ld[:, :1])
        index = chosen.nonzero()[:, 0]
        c, n = ld.shape[1] // 2, self.cascade.neighbours  # the cascade's planes, centred
        if len(index):
            out[index] = self.cascade.restore(
                ld[index, c - n : c + n + 1], batch["sino_ld"][index.cpu()],
                [batch["prompt"][i] for i in index.tolist()], resample_step=0,
                generator=self.generator)
        return out


def _train_sd(stage: str, opts: TrainOptions) -> dict[str, Any]:
    """Train a diffusion stage (:data:`DIFFUSION_STAGES`): x0-prediction on random patches,
    SD1 on t in 1..T (with ``pure_noise_p`` of the items at T), SD2 and the anatomy-guided
    SD2 on t in 1..:data:`SD2_MAX_T` (SD2 with ``sd1_input_p`` of the items SD1's output
    re-noised to t in 1..N)."""
    schedule = NoiseSchedule.linear()
    rng = random.Random(opts.seed)
    torch.manual_seed(opts.seed)
    anatomy = stage == "anatomy"
    neighbours = NEIGHBOURS if anatomy else opts.neighbours  # the planes the network sees
    sd1 = _Sd1Outputs(opts) if opts.sd1_input_p > 0 else None
    # The stream's planes: SD1's for the items started from its output, if SD1 sees more.
    planes = max(neighbours, sd1.cascade.neighbours) if sd1 is not None else neighbours
    try:
        stream = SliceStream(opts.data, "train", neighbours=planes, seed=opts.seed,
                             with_levels=opts.anchor_loss, with_labels=opts.lesion_weight > 0,
                             families=opts.families if anatomy else None, with_anatomy=anatomy,
                             mismatch=opts.mismatch if anatomy else 0.0,
                             modalities=_modalities(opts) if anatomy else ("MR",))
    except FileNotFoundError as exc:
        raise PetReconError(str(exc)) from None
    batches = _batches(stream, opts.batch_size)
    first = next(batches)
    size = first["ld"].shape[-1]
    diffusion = DIFFUSION_STAGES[stage](opts, first, rng)
    max_t = schedule.num_steps if stage == "sd1" else SD2_MAX_T
    run = _Run(stage, diffusion.module, opts)
    if opts.anchor_loss:
        anchors, calibration = _anchor_calibration(run, schedule, opts)
    batch = first
    for step in range(run.start, opts.steps):
        if step > run.start:
            batch = next(batches)
        ref = batch["ref"].to(opts.device)[:, None, None, None]
        ld = batch["ld"].to(opts.device) / ref
        fd = batch["fd"].to(opts.device) / ref
        oy, ox = _crop_offsets(size, opts.patch, rng)
        window = (slice(None), slice(None), slice(oy, oy + opts.patch), slice(ox, ox + opts.patch))
        x0 = fd[window]
        cond = ld[:, planes - neighbours : planes + neighbours + 1][window]
        t = torch.randint(1, max_t + 1, (x0.shape[0],), device=opts.device)
        if opts.pure_noise_p > 0:
            # t = T for a fraction of the items: the regime of the sampler's first step.
            pure = torch.rand(t.shape, device=opts.device) < opts.pure_noise_p
            t = torch.where(pure, torch.full_like(t, max_t), t)
        start = x0  # what is re-noised to x_t
        if sd1 is not None:
            # MiG-DM Sec. III.C: SD2 starts from SD1's output x0_hat_SD1 re-noised to N
            chosen = torch.rand(t.shape, device=opts.device) < opts.sd1_input_p
            start = torch.where(chosen[:, None, None, None], sd1(batch, ld, chosen)[window], x0)
            t = torch.where(chosen, torch.randint_like(t, 1, RESAMPLE_STEP + 1), t)
        x_t = schedule.q_sample(start, t, torch.randn_like(x0))
        with _autocast(opts.device, opts.bf16):
            pred, auxiliary = diffusion.predict(run.module, batch, torch.cat([x_t, cond], 1), t,
                                                oy, ox)
        squared_error = (pred.float() - x0) ** 2
        if opts.lesion_weight > 0:  # the map of the whole slice, so the dilation sees past the crop
            squared_error = squared_error * lesion_weights(
                batch["labels"].to(opts.device), opts.lesion_weight)[window]
        loss = squared_error.mean()
        if auxiliary is not None:
            loss = loss + auxiliary
        if opts.anchor_loss:
            # MAP-Diff: + lambda * L_anchor; the anchors x_k of item b are its case's levels
            # 1 < k < d_b, in the intensity space of x0 (SUV / ref) and cropped like it.
            images, drfs = stack_anchors(batch["levels"], batch["drf"].tolist(), anchors)
            images = images[..., oy : oy + opts.patch, ox : ox + opts.patch].to(opts.device)
            loss = loss + opts.anchor_weight * anchor_loss(
                pred.float(), images / ref[:, None], drfs, t, anchors, opts.anchor_width)
        run.step(step, loss)
    extra = {"schedule": schedule.config, "prediction": "x0", "neighbours": neighbours,
             "max_t": max_t, **diffusion.extra}
    if opts.anchor_loss:
        extra[ANCHORS_KEY] = anchors_metadata(anchors)
        extra["anchor_loss"] = {"weight": opts.anchor_weight, "width": opts.anchor_width,
                                "calibration": calibration}
    path = diffusion.save(run.ema.model, extra)
    if opts.anchor_loss:
        return {"weights": str(path), "metrics": {}, "anchors": anchors_metadata(anchors)}
    return {"weights": str(path), "metrics": {}}


def _train_unet(opts: TrainOptions) -> dict[str, Any]:
    torch.manual_seed(opts.seed)
    model = UNet(in_channels=1 + 2 * opts.neighbours, out_channels=1, time_embedding=False)
    return fit_unet(model, opts.neighbours, opts)


def fit_unet(model: UNet, neighbours: int, opts: TrainOptions) -> dict[str, Any]:
    """Train a U-Net regression (no timestep) from low-dose planes to the full-dose slice.

    The loop of ``petrecon train unet`` (MSE on ``opts.patch`` crops in the ``SUV / ref``
    scale, AdamW, EMA, checkpoints), for any starting ``model`` whose input is the slice
    with ``neighbours`` planes on either side (``1 + 2 * neighbours`` channels):
    ``bench/unet_neighbours.py`` starts it from the shipped weights with more planes.

    Returns
    -------
    dict
        ``weights`` (``opts.out / "unet.safetensors"``, the EMA model, ``neighbours`` in its
        metadata) and ``metrics`` (:func:`_validate_unet`).
    """
    rng = random.Random(opts.seed)
    stream = SliceStream(opts.data, "train", neighbours=neighbours, seed=opts.seed)
    batches = _batches(stream, opts.batch_size)
    run = _Run("unet", model, opts)
    for step in range(run.start, opts.steps):
        batch = next(batches)
        ref = batch["ref"].to(opts.device)[:, None, None, None]
        ld = batch["ld"].to(opts.device) / ref
        fd = batch["fd"].to(opts.device) / ref
        oy, ox = _crop_offsets(ld.shape[-1], opts.patch, rng)
        window = (slice(None), slice(None), slice(oy, oy + opts.patch), slice(ox, ox + opts.patch))
        with _autocast(opts.device, opts.bf16):
            pred = run.module(ld[window], None)
        loss = nn.functional.mse_loss(pred.float(), fd[window])
        run.step(step, loss)
    path = opts.out / "unet.safetensors"
    save_model(run.ema.model, path, extra={"neighbours": neighbours})
    return {"weights": str(path), "metrics": _validate_unet(run.ema.model, neighbours, opts)}


@torch.no_grad()
def _validate_unet(model: nn.Module, neighbours: int, opts: TrainOptions, slices: int = 32
                   ) -> dict[str, float]:
    """Median PSNR (dB, whole slice, range = full-dose max) of the low-dose input and the
    U-Net on ``slices`` validation slices (the slices :func:`validate_cascade` uses)."""
    from pet_recon.metrics import psnr

    model.eval()
    stream = SliceStream(opts.data, "val", neighbours=neighbours, seed=0, cases_in_flight=16)
    items = [item for _, item in zip(range(slices), stream, strict=False)]
    low, out = [], []
    for item in items:
        ld = item["ld"][None].to(opts.device) / item["ref"]
        with _autocast(opts.device, opts.bf16):
            pred = model(ld, None).float()[0, 0].cpu().numpy() * item["ref"]
        fd = item["fd"][0].numpy()
        low.append(psnr(item["ld"][neighbours].numpy(), fd))
        out.append(psnr(pred, fd))
    return {"psnr_db_low_dose": float(np.median(low)), "psnr_db_unet": float(np.median(out)),
            "val_slices": len(items)}


def _prompt_tokens(encoder: MetaEncoder, tokenizer: Tokenizer, prompts: list[str],
                   device: torch.device, rng: random.Random | None, blank_p: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen text-encoder tokens ``(B, L, D)`` and mask ``(B, L)``; blanked at random."""
    ids, numeric, mask = (t.to(device) for t in tokenizer.encode_batch(prompts))
    with torch.no_grad():
        tokens, _ = encoder.text(ids, numeric, mask)
    if rng is not None and blank_p > 0:
        keep = torch.tensor([rng.random() >= blank_p for _ in prompts], device=device)
        mask = mask & keep[:, None]
    return tokens, mask


def train(stage: str, opts: TrainOptions) -> dict[str, Any]:
    """Train one stage; write its EMA weights and a JSON report into ``opts.out``.

    Returns
    -------
    dict
        The report: stage, options, seconds (this run's wall time), the stage's weights
        and validation metrics, and ``train_seconds``: training time summed over every
        run that continued the checkpoint (what ``publish`` records).
    """
    if stage not in STAGES:
        raise PetReconError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if stage not in ("sd1", "sd2") and opts.init:
        raise PetReconError(f"--init is an option of sd1 and sd2, not {stage}")
    if stage not in DIFFUSION_STAGES and opts.lesion_weight > 0:
        raise PetReconError(f"--lesion-weight is an option of {', '.join(DIFFUSION_STAGES)}, "
                            f"not {stage}")
    if opts.lesion_weight < 0:
        raise PetReconError(f"--lesion-weight must be >= 0, got {opts.lesion_weight}")
    if stage not in ("sd1", "sd2", "unet") and opts.neighbours != NEIGHBOURS:
        raise PetReconError(f"--neighbours is an option of sd1, sd2 and unet, not {stage}")
    if opts.neighbours < 0:
        raise PetReconError(f"--neighbours must be >= 0, got {opts.neighbours}")
    for name, value, owner in (("pure-noise-p", opts.pure_noise_p, "sd1"),
                               ("sd1-input-p", opts.sd1_input_p, "sd2")):
        if stage != owner and value > 0:
            raise PetReconError(f"--{name} is an option of {owner}, not {stage}")
        if not 0 <= value <= 1:
            raise PetReconError(f"--{name} must be in [0, 1], got {value}")
    if not (Path(opts.data) / "train").is_dir():
        raise PetReconError(f"{opts.data}: no train/ shards (run petrecon make-dataset)")
    t0 = time.perf_counter()
    torch.manual_seed(opts.seed)  # initial weights: one stage's do not depend on another's
    trainers = {"mi-encoder": _train_mi_encoder, "srm": _train_srm,
                **{name: lambda o, name=name: _train_sd(name, o) for name in DIFFUSION_STAGES},
                "unet": _train_unet}
    result = trainers[stage](opts)
    report = {
        "stage": stage,
        "options": {k: str(v) for k, v in asdict(opts).items()},
        "seconds": time.perf_counter() - t0,
        **result,
    }
    checkpoint = opts.out / "checkpoint.safetensors"
    if checkpoint.exists():  # training time over every resumed run, validation excluded
        report["train_seconds"] = checkpoint_seconds(checkpoint)
    (opts.out / f"{stage}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


@torch.no_grad()
def validate_cascade(folder: Path, data: Path, device: torch.device, *, slices: int = 32,
                     steps: int = 2, sd2_steps: int = 5, resample_step: int = RESAMPLE_STEP,
                     seed: int = 0) -> dict[str, float]:
    """PSNR (dB, against full dose, whole slice, range = full-dose max) of the low-dose
    input, SD1 alone and the whole cascade on ``slices`` validation slices, with the
    weights in ``folder`` (verified against its manifest); when the folder holds the
    anatomy-guided SD2, also of the cascade with it for each modality it was trained with and
    has the branch of (``psnr_db_cascade_anatomy`` with the slices' MR,
    ``psnr_db_cascade_anatomy_ct`` with their CT, moved as in training by
    :class:`~pet_recon.dataset.SliceStream`; each its own generator seeded with ``seed``;
    bounded to detail as by ``reconstruct``'s default ``--anatomy-detail``)."""
    from pet_recon.cascade import Cascade
    from pet_recon.metrics import psnr
    from pet_recon.pipeline import ANATOMY_DETAIL_FWHM_MM, detail_sigma_px

    cascade = Cascade.load(folder, device)
    modalities = cascade.anatomy.available if cascade.anatomy is not None else []

    def val_items(**kwargs: Any) -> list[dict[str, Any]]:
        stream = SliceStream(data, "val", neighbours=cascade.neighbours, seed=seed,
                             cases_in_flight=16, **kwargs)
        return [item for _, item in zip(range(slices), stream, strict=False)]

    items = val_items()
    anatomy = {m: [item["anatomy"] for item in val_items(with_anatomy=True, modalities=(m,))]
               for m in modalities}  # the same slices in the same order, with their anatomy
    names = {m: "cascade_anatomy" + ("" if m == "MR" else f"_{m.lower()}") for m in modalities}
    scores: dict[str, list[float]] = {"low_dose": [], "sd1": [], "cascade": [],
                                      **{names[m]: [] for m in modalities}}
    generator = torch.Generator().manual_seed(seed)
    generators = {m: torch.Generator().manual_seed(seed) for m in modalities}
    for start in range(0, len(items), 8):
        batch = _collate(items[start:start + 8])
        ref = batch["ref"][:, None, None, None]
        low = batch["ld"] / ref
        sigma_px = [detail_sigma_px(ANATOMY_DETAIL_FWHM_MM, (float(mm), float(mm)))
                    for mm in batch["pixel_mm"]]  # reconstruct's default bound
        passes = [("sd1", 0, None, "MR", generator),
                  ("cascade", resample_step, None, "MR", generator)]
        passes += [(names[m], resample_step, torch.stack(anatomy[m][start:start + 8]), m,
                    generators[m]) for m in modalities]
        for name, n, planes, modality, gen in passes:
            out = cascade.restore(low, batch["sino_ld"], batch["prompt"],
                                  steps=steps, sd2_steps=sd2_steps, resample_step=n,
                                  generator=gen, anatomy=planes, modality=modality,
                                  anatomy_sigma_px=sigma_px) * ref.to(device)
            for i in range(out.shape[0]):
                fd = batch["fd"][i, 0].numpy()
                scores[name].append(psnr(out[i, 0].float().cpu().numpy(), fd))
        for i in range(low.shape[0]):
            c = cascade.neighbours
            scores["low_dose"].append(psnr(batch["ld"][i, c].numpy(), batch["fd"][i, 0].numpy()))
    return {f"psnr_db_{k}": float(np.median(v)) for k, v in scores.items()} | {
        "val_slices": len(items), "steps": steps, "sd2_steps": sd2_steps,
        "resample_step": resample_step}


PUBLISHED = {"srm": ("srm.safetensors",), "mi-encoder": ("mi-encoder.safetensors",),
             "sd1": ("sd1.safetensors", "sinogram-branch.safetensors"),
             "sd2": ("sd2.safetensors",), "unet": ("unet.safetensors",),
             "anatomy": tuple(ANATOMY_FILES.values())}
#: Files published with a stage when its run holds them: the CT branch of an anatomy run
#: trained with ``--modality ct``.
OPTIONAL_FILES = {"anatomy": (ANATOMY_BRANCH_FILES["CT"],)}
#: Published when their runs exist: the benchmark's supervised baseline (not a cascade
#: stage) and the anatomy-guided SD2 (used only with an MR).
OPTIONAL_STAGES = ("unet", "anatomy")


def _train_command(stage: str, options: dict[str, str]) -> str:
    """The ``petrecon train`` command of a run, from its report's options (strings)."""
    flags = [f"--steps {options['steps']}", f"--batch-size {options['batch_size']}"]
    if float(options.get("lr", TrainOptions.lr)) != TrainOptions.lr:
        flags.append(f"--lr {options['lr']}")
    if options.get("frozen", "None") != "None":
        flags.append("--frozen FROZEN" + (" --trust-frozen"
                                          if options.get("trust_frozen") == "True" else ""))
    if options.get("lock_text") == "True":
        flags.append("--lock-text")
    if options.get("init") == "True":
        flags.append("--init")
    if float(options.get("pure_noise_p", 0.0)) > 0:
        flags.append(f"--pure-noise-p {options['pure_noise_p']}")
    if float(options.get("sd1_input_p", 0.0)) > 0:
        flags.append(f"--sd1-input-p {options['sd1_input_p']}")
    if float(options.get("lesion_weight", 0.0)) > 0:
        flags.append(f"--lesion-weight {options['lesion_weight']}")
    if options.get("anchor_loss") == "True":
        flags.append("--anchor-loss")
    if int(options.get("neighbours", NEIGHBOURS)) != NEIGHBOURS and stage != "anatomy":
        flags.append(f"--neighbours {options['neighbours']}")
    if stage == "anatomy":
        modalities = ast.literal_eval(options.get("modalities", "('MR',)"))
        flags += [f"--modality {m.lower()}" for m in modalities]
        flags.append(f"--mismatch {options.get('mismatch', '0.0')}")
    return f"petrecon train {stage} --data DATA --out RUNS/{stage} {' '.join(flags)}"


def revalidate(weights: Path, data: Path, device: torch.device) -> dict[str, Any]:
    """Validate a published weights folder again and replace its cascade metrics.

    For when the way the cascade runs changes and its weights do not (for example the
    anatomy bound of ``reconstruct``): :func:`validate_cascade` on the data's validation
    split, written as the ``metrics`` of every cascade file of ``manifest.json`` (all but
    ``srm``, ``mi-encoder`` and the ``unet`` baseline, whose metrics are their own training
    runs'), with ``metrics_validated`` (``git_commit``, ``git_dirty``, ``petrecon_version``,
    ``created``). Files, hashes, configs and training records are left as they are.

    Returns
    -------
    dict
        ``weights``, ``validation`` (the metrics) and ``entries`` (the files updated).
    """
    from pet_recon.weights import MANIFEST

    manifest_path = weights / MANIFEST
    if not manifest_path.is_file():
        raise PetReconError(f"{manifest_path}: not found (publish the weights first)")
    metrics = validate_cascade(weights, data, device)
    updated = _record_cascade_metrics(weights, metrics, skip=set())
    return {"weights": str(weights), "validation": metrics, "entries": updated}


def _record_cascade_metrics(weights: Path, metrics: dict[str, float], skip: set[str]
                            ) -> list[str]:
    """Write ``metrics`` as the ``metrics`` of every cascade file of the folder's manifest
    but those in ``skip`` (all but ``srm``, ``mi-encoder`` and the ``unet`` baseline, whose
    metrics are their own training runs'), with ``metrics_validated`` (``git_commit``,
    ``git_dirty``, ``petrecon_version``, ``created``); returns the files updated."""
    from datetime import UTC, datetime

    import pet_recon
    from pet_recon.weights import MANIFEST, _git_state, _write_atomic, read_manifest

    manifest = read_manifest(weights)
    own = {name for stage in ("srm", "mi-encoder", "unet") for name in PUBLISHED[stage]}
    stamp = {**_git_state(), "petrecon_version": pet_recon.__version__,
             "created": datetime.now(UTC).isoformat(timespec="seconds")}
    updated = []
    for name, entry in sorted(manifest["models"].items()):
        if name not in own and name not in skip:
            entry["metrics"], entry["metrics_validated"] = dict(metrics), stamp
            updated.append(name)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    _write_atomic(weights / MANIFEST, lambda tmp: tmp.write_text(text))
    return updated


def publish(runs: Path, weights: Path, data: Path, device: torch.device) -> dict[str, Any]:
    """Copy the weights of the four runs ``runs/<stage>/`` (and of the ``unet`` baseline
    and the ``anatomy``-guided SD2, with its CT branch when trained with CT, where they were
    trained) into ``weights`` and list them in its ``manifest.json`` (SHA-256, config,
    training report, validation metrics).

    A cascade stage without a run is kept from ``weights`` when its manifest lists that
    stage's files (publishing one re-trained stage into a published folder). The cascade is
    then validated on the data's validation split with the folder's weights; its PSNRs are
    recorded for SD1, the sinogram branch, SD2 and the anatomy-guided SD2 (with MR and, when
    it has the CT branch, with CT), kept cascade files included (as by :func:`revalidate`).

    Returns
    -------
    dict
        ``weights``, ``validation`` (the metrics), ``entries`` (the files published) and
        ``kept`` (the files kept whose metrics were replaced).
    """
    import shutil

    from pet_recon.weights import read_manifest, update_manifest

    weights.mkdir(parents=True, exist_ok=True)
    listed = read_manifest(weights)["models"]
    reports, published = {}, {}
    for stage, names in PUBLISHED.items():
        report_path = runs / stage / f"{stage}.json"
        if not report_path.exists() and (stage in OPTIONAL_STAGES
                                         or all(name in listed for name in names)):
            continue
        if not report_path.exists():
            raise PetReconError(f"{report_path}: no training report (train {stage} first, "
                                f"or publish into a weights folder that lists "
                                f"{', '.join(names)})")
        reports[stage] = json.loads(report_path.read_text())
        published[stage] = (*names, *(name for name in OPTIONAL_FILES.get(stage, ())
                                      if (runs / stage / name).exists()))
        for name in published[stage]:
            shutil.copyfile(runs / stage / name, weights / name)
            # A provisional entry so that the cascade can be loaded for validation.
            update_manifest(weights / name, name=name.removesuffix(".safetensors"),
                            config={}, training={}, metrics={})
    cascade_metrics = validate_cascade(weights, data, device)
    entries = {}
    for stage, report in reports.items():
        names = published[stage]
        metrics = report["metrics"] if stage in ("srm", "mi-encoder", "unet") else cascade_metrics
        training = {"data": report["options"]["data"], "steps": int(report["options"]["steps"]),
                    "batch_size": int(report["options"]["batch_size"]),
                    "seconds": round(report.get("train_seconds", report["seconds"]), 1),
                    "command": _train_command(stage, report["options"])}
        for name in names:
            with safe_open(str(weights / name), framework="pt") as f:
                config = json.loads(f.metadata()["config"])
            entries[name] = update_manifest(weights / name, name=name.removesuffix(
                ".safetensors"), config=config, training=training, metrics=metrics)
    kept = _record_cascade_metrics(weights, cascade_metrics, skip=set(entries))
    return {"weights": str(weights), "validation": cascade_metrics, "entries": list(entries),
            "kept": kept}
