"""The MiG-DM cascade at inference: SRM -> SinoA/CDSM -> SD1 -> resample -> SD2.

Geng et al., "Meta-information Guided Cross-domain Synergistic Diffusion Model for Low-dose
PET Reconstruction", arXiv:2512.22237, Sec. III.C:

1. the sinogram restoration module (SRM) restores the low-dose sinogram of each plane;
2. the Sinogram Adapter and Cross-Domain Synergistic Mapper turn it into image-space
   features ``F_s`` added to SD1's last four encoder stages;
3. SD1 samples the full-dose image from pure noise (``x_T``), conditioned on the low-dose
   slice and ``F_s``;
4. resample: SD1's output ``x_hat`` is re-noised to step ``N``,
   ``x_N = sqrt(abar_N) x_hat + sqrt(1 - abar_N) eps`` (Ho et al. 2020, Eq. 4);
5. SD2 denoises ``x_N`` to ``x_0``, conditioned on the low-dose slice and cross-attending
   to the meta-information tokens of the prompt.

Optionally (MAP-Diff progressive output, ``docs/map-diff.md``) SD2's estimate of the clean
image at each dose anchor's timestep ``t_k`` is returned as well.

With an MR or a CT of the slices (M2Diff, Pain et al., arXiv:2603.09075;
``docs/anatomy.md``) and weights that hold the anatomy-guided SD2 (``sd2-anatomy.safetensors``
and that modality's branch, ``anatomy-branch.safetensors`` for MR,
``anatomy-branch-ct.safetensors`` for CT: :data:`ANATOMY_BRANCH_FILES`), step 5 is done by
that U-Net instead, with the branch's features
(:class:`~pet_recon.models.anatomy.AnatomyBranch`) added to its guided encoder stages.

Intensities are in the space of :mod:`pet_recon.models.intensity` (``x = SUV / ref``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pet_recon.diffusion.anchors import ANCHORS_KEY, anchors_from_metadata
from pet_recon.diffusion.samplers import SamplerStep, ddim, ddpm
from pet_recon.diffusion.schedule import RESAMPLE_STEP, NoiseSchedule, randn_like, resample
from pet_recon.errors import PetReconError
from pet_recon.meta.encoder import MetaEncoder, load_meta_encoder
from pet_recon.meta.tokenizer import Tokenizer
from pet_recon.models.anatomy import AnatomyBranch, bound_to_detail
from pet_recon.models.sinogram import (
    SinogramBranch,
    SinogramRestoration,
    normalise_sinogram,
    project_image,
)
from pet_recon.models.unet import UNet
from pet_recon.weights import load_model, sha256_file, weights_dir

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddim": ddim, "ddpm": ddpm}
WEIGHT_FILES = {
    "srm": "srm.safetensors",
    "branch": "sinogram-branch.safetensors",
    "sd1": "sd1.safetensors",
    "sd2": "sd2.safetensors",
    "mi_encoder": "mi-encoder.safetensors",
}
#: Branch of each anatomical modality of the anatomy-guided SD2 (one U-Net shared by all).
ANATOMY_BRANCH_FILES = {"MR": "anatomy-branch.safetensors",
                        "CT": "anatomy-branch-ct.safetensors"}
#: The MR-guided SD2's files (``petrecon train anatomy``): the shared U-Net, the MR branch.
ANATOMY_FILES = {"unet": "sd2-anatomy.safetensors", "branch": ANATOMY_BRANCH_FILES["MR"]}


@dataclass
class AnatomyGuidance:
    """The anatomy-guided SD2: a U-Net like SD2 and the modality branches that feed it.

    Branches are loaded (and verified against the folder's manifest) when first asked for
    (:meth:`branch`), so a run loads only the one of its anatomy's modality.

    Attributes
    ----------
    unet : UNet
        SD2's U-Net fine-tuned with the branches' ``stage_features``.
    folder : Path
        The weights folder.
    neighbours : int
        The neighbour planes on either side this U-Net and its branches were trained with.
    device : torch.device
    unet_sha256 : str
        SHA-256 of ``sd2-anatomy.safetensors``.
    extra : dict
        The training record ``extra["anatomy"]`` of the U-Net's weights: ``modalities``
        (``modality`` in weights from before CT), ``mr_normalisation``,
        ``ct_normalisation``, ``aux_weight``, ``tissue_classes``, ...
    branches : dict
        ``{modality: (AnatomyBranch, SHA-256)}`` loaded so far.
    """

    unet: UNet
    folder: Path
    neighbours: int
    device: torch.device
    unet_sha256: str
    extra: dict[str, Any]
    branches: dict[str, tuple[AnatomyBranch, str]] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        """The modalities the U-Net was trained with (``["MR"]`` for weights from before CT)."""
        return list(self.extra.get("modalities", [self.extra.get("modality", "MR")]))

    @property
    def available(self) -> list[str]:
        """The trained modalities whose branch file is in the folder."""
        return [m for m in self.modalities if (self.folder / ANATOMY_BRANCH_FILES[m]).exists()]

    def branch(self, modality: str) -> AnatomyBranch:
        """The verified branch of ``modality`` (``"MR"`` or ``"CT"``), loaded once.

        Raises
        ------
        PetReconError
            In one line: the weights were not trained with that modality or lack its file,
            the file fails verification, or it was trained with other neighbour planes.
        """
        if modality not in self.branches:
            path = self.folder / ANATOMY_BRANCH_FILES[modality]
            trained = ", ".join(self.modalities)
            if modality not in self.modalities:
                raise PetReconError(
                    f"{path}: not found; the anatomy-guided SD2 of these weights was trained "
                    f"with {trained} only (petrecon train anatomy --modality "
                    f"{modality.lower()} adds its branch)")
            if not path.exists():
                raise PetReconError(f"{path}: not found; the anatomy-guided SD2 of these "
                                    f"weights was trained with {trained}, but this branch "
                                    "is not in the folder")
            branch, _ = load_model(path, registry={"AnatomyBranch": AnatomyBranch},
                                   device=self.device)
            if branch.config["neighbours"] != self.neighbours:
                raise PetReconError(f"{path}: trained with {branch.config['neighbours']} "
                                    f"neighbour planes, the anatomy-guided SD2 with "
                                    f"{self.neighbours}")
            self.branches[modality] = (branch, sha256_file(path))  # type: ignore[assignment]
        return self.branches[modality][0]

    def hashes(self, modality: str) -> dict[str, str]:
        """``{file name: SHA-256}`` of the two files a run with ``modality`` uses."""
        self.branch(modality)
        return {ANATOMY_FILES["unet"]: self.unet_sha256,
                ANATOMY_BRANCH_FILES[modality]: self.branches[modality][1]}


@dataclass
class Cascade:
    """The trained models of the cascade, on one device, in eval mode."""

    srm: SinogramRestoration
    branch: SinogramBranch
    sd1: UNet
    sd2: UNet
    encoder: MetaEncoder
    tokenizer: Tokenizer
    schedule: NoiseSchedule
    #: Neighbour planes on either side of each slice that ``restore`` takes: the most any
    #: of its networks sees (each is given its own, centred).
    neighbours: int
    device: torch.device
    hashes: dict[str, str] = field(default_factory=dict)
    #: Neighbour planes SD1 and the PET-only SD2 were trained with (their weights' ``extra``).
    sd1_neighbours: int = 1
    sd2_neighbours: int = 1
    #: MAP-Diff dose anchors ``{k: t_k}`` SD2 was trained with (empty without the anchor loss).
    anchors: dict[int, int] = field(default_factory=dict)
    #: Largest timestep SD2 was trained on.
    sd2_max_t: int = 400
    #: The anatomy-guided SD2, when the weights folder holds it.
    anatomy: AnatomyGuidance | None = None

    @classmethod
    def load(cls, folder: Path | None, device: torch.device) -> Cascade:
        """Load and verify (SHA-256 against ``manifest.json``) the cascade's weights.

        The anatomy-guided SD2's U-Net (``sd2-anatomy.safetensors``) is loaded, and verified
        in the same way, when the folder holds it and a branch
        (:data:`ANATOMY_BRANCH_FILES`); the branches are loaded when a run asks for one
        (:meth:`AnatomyGuidance.branch`). The PET-only SD2 is kept beside it.

        Parameters
        ----------
        folder : Path or None
            Weights folder; default :func:`pet_recon.weights.weights_dir` (the shipped
            weights, or ``$PETRECON_WEIGHTS``).
        device : torch.device
        """
        folder = Path(folder) if folder is not None else weights_dir()
        paths = {role: folder / name for role, name in WEIGHT_FILES.items()}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise PetReconError(f"{folder}: weights missing: {', '.join(missing)}")
        registry: dict[str, Any] = {"SinogramRestoration": SinogramRestoration,
                                    "SinogramBranch": SinogramBranch, "UNet": UNet,
                                    "AnatomyBranch": AnatomyBranch}
        srm, _ = load_model(paths["srm"], registry=registry, device=device)
        branch, _ = load_model(paths["branch"], registry=registry, device=device)
        sd1, extra = load_model(paths["sd1"], registry=registry, device=device)
        sd2, sd2_extra = load_model(paths["sd2"], registry=registry, device=device)
        encoder, tokenizer = load_meta_encoder(paths["mi_encoder"], device=device)
        anatomy = _load_anatomy(folder, registry, device)
        planes = [int(extra["neighbours"]), int(sd2_extra["neighbours"])]
        return cls(srm=srm, branch=branch, sd1=sd1, sd2=sd2, encoder=encoder,  # type: ignore[arg-type]
                   tokenizer=tokenizer, schedule=NoiseSchedule.from_config(extra["schedule"]),
                   neighbours=max(planes + ([anatomy.neighbours] if anatomy else [])),
                   device=device, hashes={role: sha256_file(p) for role, p in paths.items()},
                   sd1_neighbours=planes[0], sd2_neighbours=planes[1],
                   anchors=anchors_from_metadata(sd2_extra.get(ANCHORS_KEY, {})),
                   sd2_max_t=int(sd2_extra.get("max_t", 400)), anatomy=anatomy)

    def _autocast(self) -> torch.autocast:
        """bf16 autocast where the device computes bf16 natively (:func:`native_bf16`)."""
        return inference_autocast(self.device)

    @torch.no_grad()
    def restore(
        self,
        low_dose: torch.Tensor,
        sinograms: torch.Tensor | None,
        prompt: str | Sequence[str],
        *,
        steps: int = 2,
        sd2_steps: int = 5,
        resample_step: int = RESAMPLE_STEP,
        sampler: str = "ddim",
        generator: torch.Generator | None = None,
        use_sinogram: bool = True,
        use_prompt: bool = True,
        sd2_first: bool = False,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        anchor_steps: Sequence[int] = (),
        anchor_images: dict[int, torch.Tensor] | None = None,
        anatomy: torch.Tensor | None = None,
        modality: str = "MR",
        anatomy_sigma_px: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
        callback: Callable[[str, Any], None] | None = None,
        timings: dict[str, float] | None = None,
        mirror: bool = False,
    ) -> torch.Tensor:
        """Restore a batch of slices.

        Parameters
        ----------
        low_dose : torch.Tensor
            ``(B, 2 * neighbours + 1, H, W)`` low-dose planes in model intensity (centre
            plane in the middle channel), ``H`` and ``W`` multiples of 8.
        sinograms : torch.Tensor or None
            ``(B, 1, views, bins)`` prompts of the centre planes on the projector grid of an
            ``H x H`` image (:func:`pet_recon.models.sinogram.project_image` layout); None:
            the projection of the low-dose image is used instead.
        prompt : str or sequence of str
            The meta-information prompt (:func:`pet_recon.meta.prompt.render_prompt`), one
            for the whole batch or one per slice.
        steps, sd2_steps : int
            Sampler steps of SD1 (from ``T``) and SD2 (from ``resample_step``).
        resample_step : int
            ``N``: SD1's output is re-noised to this step (0 skips SD2).
        sampler : {"ddim", "ddpm"}
        generator : torch.Generator, optional
            For the initial noise, the resampling noise and DDPM; makes runs reproducible.
        use_sinogram, use_prompt : bool
            Ablations: zero the sinogram features; blank the prompt (all tokens masked).
        sd2_first : bool
            Ablation: swap the stages' order (SD2 samples from ``T``, its output is re-noised
            to ``N`` and SD1 finishes); SD2 was trained on ``t <= 400`` only.
        noise : tuple of torch.Tensor, optional
            ``(x_T, eps_N)``: the initial noise and the resampling noise, each broadcastable
            to ``(B, 1, H, W)`` (one plane shared by all slices keeps the sampling noise
            coherent along z); None draws both per slice from ``generator``. DDPM's
            per-step noise is always drawn per slice.
        anchor_steps : sequence of int
            MAP-Diff progressive output: timesteps ``t_k`` (``1..400``, SD2's training range)
            at which SD2's estimate ``x0_hat`` of the clean image is put into
            ``anchor_images[t_k]``, ``(B, 1, H, W)``. For ``t_k < N`` the state ``x_{t_k}``
            is the DDIM move (Song et al. 2021, Eq. 12, eta = 0) to ``t_k`` from the sampler
            step whose interval ``[t, t_next)`` holds ``t_k``; for ``t_k >= N`` it is SD1's
            output re-noised to ``t_k`` with the resampling noise. Each costs one more SD2
            evaluation; the main output is unchanged (same draws, same trajectory).
        anchor_images : dict, optional
            Filled with ``{t_k: x0_hat}``; required when ``anchor_steps`` is given.
        anatomy : torch.Tensor, optional
            ``(B, 2 * neighbours + 1, H, W)`` MR or CT planes of the same slices on the same
            grid, normalised by :func:`~pet_recon.models.anatomy.normalise_mr` or
            :func:`~pet_recon.models.anatomy.normalise_ct` (centre plane in the middle
            channel). SD2's role (and its progressive estimates) is then played by the
            anatomy-guided SD2 with the features of ``modality``'s branch; None: exactly the
            PET-only cascade. Needs weights with ``sd2-anatomy.safetensors`` and that
            modality's branch (:data:`ANATOMY_BRANCH_FILES`).
        modality : {"MR", "CT"}
            The modality of ``anatomy``.
        anatomy_sigma_px : tuple of float, optional
            With ``anatomy``: the guard against anatomy leaking into function
            (:func:`~pet_recon.models.anatomy.bound_to_detail`). The PET-only SD2 restores
            the same resampled state with the same noise too, and the guided output keeps
            only the change finer than a Gaussian of this standard deviation (pixels along
            rows and columns; one pair, or one per slice); the progressive estimates are
            then the PET-only SD2's (the SD2 trained with the dose anchors). None: the
            guided output as it is. Costs one more SD2 pass.
        callback : callable, optional
            ``callback(stage, step_info)`` after every sampler step (``stage`` is "sd1" or
            "sd2").
        timings : dict, optional
            Seconds spent per stage are added to ``sinogram_branch_s``, ``sd1_s``, ``sd2_s``
            (and ``anatomy_branch_s`` with ``anatomy``).
        mirror : bool
            Test-time self-ensemble: also restore the left-right mirrored planes (the
            sinogram branch's image-space features, the anatomy planes and the noise mirrored
            with them) and return the mean of the two restorations, mirrored back (the
            progressive estimates likewise). The sinogram branch and the prompt encoder
            run once (their features are mirrored); the second pass costs one more SD1 ->
            SD2 trajectory. ``docs/benchmark.md``, "Mirrored second pass", has what it gains.

        Returns
        -------
        torch.Tensor
            ``(B, 1, H, W)`` restored centre planes in model intensity.
        """
        if sampler not in SAMPLERS:
            raise PetReconError(f"unknown sampler {sampler!r}; choose {', '.join(SAMPLERS)}")
        if not 0 <= resample_step <= self.schedule.num_steps:
            raise PetReconError(f"--resample-step must be in 0..{self.schedule.num_steps}")
        if anchor_steps and (anchor_images is None or sd2_first or resample_step == 0):
            raise PetReconError("progressive output needs SD2 after SD1 (resample step > 0) "
                                "and an anchor_images dict")
        if any(not 1 <= t_k <= self.sd2_max_t for t_k in anchor_steps):
            raise PetReconError(f"anchor timesteps must be in 1..{self.sd2_max_t} (SD2's "
                                f"training range), got {sorted(anchor_steps)}")
        if anatomy is not None and self.anatomy is None:
            raise PetReconError("anatomy given, but the weights hold no anatomy-guided SD2 ("
                                f"{ANATOMY_FILES['unet']} and a branch; petrecon train "
                                "anatomy)")
        if anatomy is not None and tuple(anatomy.shape) != tuple(low_dose.shape):
            raise PetReconError(f"anatomy planes {tuple(anatomy.shape)} do not match the "
                                f"low-dose planes {tuple(low_dose.shape)}")
        bounded = anatomy is not None and anatomy_sigma_px is not None
        if bounded and sd2_first:
            raise PetReconError("the anatomy bound needs SD2 after SD1 (not with sd2_first)")
        sample = SAMPLERS[sampler]
        clock = _Clock(timings)
        c = self.neighbours

        def planes(x: torch.Tensor, n: int) -> torch.Tensor:
            """The centre plane of ``x`` with ``n`` neighbours on either side."""
            return x[:, c - n : c + n + 1]

        # The conditioning shared by both orientations: the sinogram branch's image-space
        # features F_s (Sec. III.C, steps 1-2) and the prompt's meta-information tokens.
        x_cond = low_dose.to(self.device, torch.float32)
        features = None
        if use_sinogram:
            sino = sinograms if sinograms is not None else project_image(
                x_cond[:, c : c + 1])
            s, _ = normalise_sinogram(sino.to(self.device, torch.float32))
            with self._autocast():
                features = self.branch(self.srm(s))
        clock.lap("sinogram_branch_s")
        prompts = [prompt] * x_cond.shape[0] if isinstance(prompt, str) else list(prompt)
        ids, numeric, mask = (t.to(self.device) for t in self.tokenizer.encode_batch(prompts))
        tokens, _ = self.encoder.text(ids, numeric, mask)
        if not use_prompt:
            mask = torch.zeros_like(mask)

        def trajectory(x_cond: torch.Tensor, features: list[torch.Tensor] | None,
                       noise: tuple[torch.Tensor, torch.Tensor] | None,
                       anatomy: torch.Tensor | None,
                       anchor_images: dict[int, torch.Tensor] | None) -> torch.Tensor:
            """SD1 from x_T -> resample to N -> SD2 (steps 3-5) for one orientation."""
            sd2, anatomy_features = self.sd2, None
            sd2_cond = pet_cond = planes(x_cond, self.sd2_neighbours)
            if anatomy is not None and self.anatomy is not None:
                sd2, n = self.anatomy.unet, self.anatomy.neighbours
                sd2_cond = planes(x_cond, n)
                with self._autocast():
                    anatomy_features = self.anatomy.branch(modality)(
                        planes(anatomy, n).to(self.device, torch.float32))
                clock.lap("anatomy_branch_s")
            sd1_cond = planes(x_cond, self.sd1_neighbours)

            def sd1_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                with self._autocast():
                    return self.sd1(torch.cat([x_t, sd1_cond], 1), t,
                                    stage_features=features).float()

            def sd2_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                with self._autocast():
                    return sd2(torch.cat([x_t, sd2_cond], 1), t, context=tokens,
                               context_mask=mask, stage_features=anatomy_features).float()

            def pet_only_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                with self._autocast():
                    return self.sd2(torch.cat([x_t, pet_cond], 1), t, context=tokens,
                                    context_mask=mask).float()

            (first, first_fn), (second, second_fn) = (("sd1", sd1_fn), ("sd2", sd2_fn))[
                :: -1 if sd2_first else 1]
            x_T = (randn_like(x_cond[:, :1], generator) if noise is None
                   else noise[0].to(x_cond).expand_as(x_cond[:, :1]))
            x = sample(first_fn, x_T, self.schedule, t_start=self.schedule.num_steps,
                       steps=steps, generator=generator,
                       callback=None if callback is None else lambda i: callback(first, i))
            clock.lap(f"{first}_s")
            if resample_step == 0:
                return x
            # eps of the resampling step, drawn as resample() would draw it
            eps_n = randn_like(x, generator) if noise is None else noise[1].to(x).expand_as(x)
            x_n = resample(x, resample_step, self.schedule, noise=eps_n)
            # The progressive estimates come from the SD2 whose trajectory gives the output,
            # or, with the anatomy bound, from the PET-only SD2 (trained with the anchors).
            anchor_fn = pet_only_fn if bounded else second_fn
            pending = sorted(anchor_steps)
            for t_k in [t_k for t_k in pending if t_k >= resample_step]:
                # MAP-Diff anchor at or above N: SD1's output re-noised to t_k (same eps)
                anchor_images[t_k] = _at(  # type: ignore[index]
                    anchor_fn, self.schedule.q_sample(x, t_k, eps_n), t_k)
            pending = [t_k for t_k in pending if t_k < resample_step]

            def anchors(info: SamplerStep) -> None:
                for t_k in [t_k for t_k in pending if info.t >= t_k > info.t_next]:
                    if t_k == info.t:
                        anchor_images[t_k] = info.x0_pred  # type: ignore[index]
                        continue
                    # DDIM move from x_t to x_{t_k} (Song et al. Eq. 12, eta = 0), then x0_hat
                    eps_hat = self.schedule.predict_eps_from_x0(info.x_t, info.t, info.x0_pred)
                    x_k = self.schedule.q_sample(info.x0_pred, t_k, eps_hat)
                    anchor_images[t_k] = _at(anchor_fn, x_k, t_k)  # type: ignore[index]

            def on_step(info: SamplerStep) -> None:
                if not bounded:
                    anchors(info)
                if callback is not None:
                    callback(second, info)

            n_steps = min(sd2_steps, resample_step)
            x_pet = None
            if bounded:
                # The PET-only SD2 from the same x_N; DDPM's draws repeated for the guided pass.
                state = None if generator is None else generator.get_state()
                x_pet = sample(pet_only_fn, x_n, self.schedule, t_start=resample_step,
                               steps=n_steps, generator=generator,
                               callback=anchors if pending else None)
                if state is not None:
                    generator.set_state(state)
            x = sample(second_fn, x_n, self.schedule, t_start=resample_step, steps=n_steps,
                       generator=generator,
                       callback=on_step if (pending or callback is not None) else None)
            if x_pet is not None:
                x = bound_to_detail(x, x_pet, anatomy_sigma_px)  # type: ignore[arg-type]
            clock.lap(f"{second}_s")
            return x

        x = trajectory(x_cond, features, noise, anatomy, anchor_images)
        if not mirror:
            return x

        def flip(t: torch.Tensor) -> torch.Tensor:
            return t.flip(-1)  # left-right: columns reversed

        # The mirrored pass: mirrored planes, noise and anatomy; the features and tokens
        # computed above, the image-space features mirrored with the planes.
        mirrored_anchors: dict[int, torch.Tensor] | None = (
            None if anchor_images is None else {})
        x_m = trajectory(flip(x_cond), None if features is None else [flip(f) for f in features],
                         None if noise is None else (flip(noise[0]), flip(noise[1])),
                         None if anatomy is None else flip(anatomy), mirrored_anchors)
        for t_k, image in (mirrored_anchors or {}).items():
            anchor_images[t_k] = (anchor_images[t_k] + flip(image)) / 2  # type: ignore[index]
        return (x + flip(x_m)) / 2


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA, or a CPU with AVX512-BF16 or AMX.

    Elsewhere PyTorch emulates bf16 and autocast slows the networks down instead of
    speeding them up (on an AVX-512 CPU without either: a 64-channel 3x3 convolution 2.7x
    slower than in fp32, where a CPU with AMX runs it about 2x faster; ``docs/benchmark.md``).
    """
    if device.type == "cuda":
        return True
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def inference_autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast (as in training) where :func:`native_bf16`, else a disabled one (fp32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=native_bf16(device))


def _load_anatomy(folder: Path, registry: dict[str, Any], device: torch.device
                  ) -> AnatomyGuidance | None:
    """The anatomy-guided SD2's U-Net of a weights folder (verified), None when the folder
    has neither it nor a branch; its branches are loaded on demand.

    Raises
    ------
    PetReconError
        The U-Net is there without any branch or a branch without the U-Net, or the U-Net
        fails verification.
    """
    unet_path = folder / ANATOMY_FILES["unet"]
    branches = [name for name in ANATOMY_BRANCH_FILES.values() if (folder / name).exists()]
    if not unet_path.exists() and not branches:
        return None
    if not unet_path.exists() or not branches:
        present, missing = ((branches[0], unet_path.name) if branches else
                            (unet_path.name, " or ".join(ANATOMY_BRANCH_FILES.values())))
        raise PetReconError(f"{folder}: {present} without {missing} (the anatomy-guided SD2 "
                            "needs its U-Net and a branch)")
    unet, extra = load_model(unet_path, registry=registry, device=device)
    return AnatomyGuidance(unet=unet, folder=folder,  # type: ignore[arg-type]
                           neighbours=int(extra["neighbours"]),
                           device=device, unet_sha256=sha256_file(unet_path),
                           extra=dict(extra.get("anatomy", {})))


def _at(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_t: torch.Tensor,
        t: int) -> torch.Tensor:
    """``model_fn`` at the integer step ``t`` for every item of the batch."""
    return model_fn(x_t, torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device))


class _Clock:
    """Adds the seconds since the last lap to ``timings[name]`` (when timings is given)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings, self.last = timings, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now


def neighbour_stack(volume: np.ndarray, neighbours: int) -> np.ndarray:
    """``(Z, H, W)`` -> ``(Z, 2n+1, H, W)``: each plane with its neighbours (edges repeat)."""
    z = volume.shape[0]
    idx = np.clip(np.arange(z)[:, None] + np.arange(-neighbours, neighbours + 1)[None], 0, z - 1)
    return volume[idx]

