"""DDPM noise schedule, forward process and the MiG-DM resampling step.

Notation follows Ho et al., "Denoising Diffusion Probabilistic Models" (NeurIPS 2020,
arXiv:2006.11239): ``beta_t`` is the variance added at step t, ``alpha_t = 1 - beta_t`` and
``alpha_bar_t = prod_{s<=t} alpha_s``. Timesteps are indexed exactly as in the paper,
``t = 0, 1, ..., T``: index 0 is the clean data (``beta_0 = 0``, ``alpha_bar_0 = 1`` by
convention), so ``x_0`` is the image and ``x_T`` is almost pure noise. Models are called
with ``t`` in ``1..T``.

Prediction target
-----------------
petrecon's diffusion models predict the clean image ``x_0`` ("x0-prediction"): training
minimises ``||f(x_t, t) - x_0||^2`` and samplers read the model output as ``x0_hat``. This
suits restoration, where the conditioning already determines most of the image and sampling
uses few steps from an intermediate ``t``: the model output is directly the restored
slice, the MiG-DM cascade hands SD1's ``x0_hat`` to SD2 (Sec. III.C), and MAP-style
refinements read the x0 trajectory. The noise estimate a sampler needs is derived from it
with :meth:`NoiseSchedule.predict_eps_from_x0`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: Schedule kinds understood by :meth:`NoiseSchedule.from_config`.
SCHEDULE_KINDS = ("linear", "cosine")
#: ``N``, the step SD1's output is re-noised to before SD2 (MiG-DM, Sec. III.C: 50 of
#: ``T = 1000``); :func:`resample`, ``reconstruct --resample-step``'s default.
RESAMPLE_STEP = 50


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise with the shape, dtype and device of ``x``.

    Parameters
    ----------
    x : torch.Tensor
        Template tensor, any shape.
    generator : torch.Generator or None
        Source of randomness. The noise is drawn on the generator's device and moved to
        ``x.device``, so a CPU generator gives the same noise on CPU and CUDA. ``None`` uses
        the global RNG of ``x.device``.

    Returns
    -------
    torch.Tensor
        Noise ``eps ~ N(0, I)``, same shape, dtype and device as ``x``.
    """
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)


class NoiseSchedule:
    """Variance schedule ``beta_1..beta_T`` of a DDPM and the closed forms built on it.

    Parameters
    ----------
    betas : torch.Tensor
        ``(T,)`` variances ``beta_1..beta_T``, each in ``(0, 1)``.
    config : dict, optional
        How the schedule was made (see :meth:`from_config`); stored with trained weights.

    Attributes
    ----------
    num_steps : int
        ``T``.
    betas, alphas, alpha_bar : torch.Tensor
        ``(T + 1,)`` float64 CPU tensors indexed by ``t = 0..T``: ``beta_t``,
        ``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s=1}^t alpha_s``, with
        ``beta_0 = 0`` and ``alpha_0 = alpha_bar_0 = 1``.
    config : dict
        JSON-ready description of the schedule.
    """

    def __init__(self, betas: torch.Tensor, config: dict[str, Any] | None = None) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
        if betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty sequence of values in (0, 1)")
        self.num_steps = int(betas.numel())
        # beta_t for t = 0..T (Ho et al. Sec. 2), beta_0 = 0 so that x_0 is the data.
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
        # alpha_t = 1 - beta_t and alpha_bar_t = prod_{s<=t} alpha_s (Ho et al. Eq. 4).
        self.alphas = 1.0 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.config = dict(config) if config is not None else {"kind": "custom"}

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> NoiseSchedule:
        """Linear schedule of Ho et al. 2020 (Sec. 4: ``beta_1 = 1e-4`` to ``beta_T = 0.02``).

        Parameters
        ----------
        num_steps : int
            ``T``.
        beta_start, beta_end : float
            ``beta_1`` and ``beta_T``.

        Returns
        -------
        NoiseSchedule
        """
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        return cls(betas, {"kind": "linear", "num_steps": num_steps,
                           "beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008,
               max_beta: float = 0.999) -> NoiseSchedule:
        """Cosine schedule of Nichol & Dhariwal 2021 (arXiv:2102.09672, Eq. 17).

        ``alpha_bar_t = f(t) / f(0)`` with ``f(t) = cos(((t / T + s) / (1 + s)) * pi / 2)^2``
        and ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` clipped to ``max_beta``.

        Parameters
        ----------
        num_steps : int
            ``T``.
        s : float
            Offset that keeps ``beta_t`` from being too small near ``t = 0``.
        max_beta : float
            Upper clip of ``beta_t`` (avoids the singularity at ``t = T``).

        Returns
        -------
        NoiseSchedule
        """
        t = torch.arange(num_steps + 1, dtype=torch.float64)
        f = torch.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        betas = (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
        return cls(betas, {"kind": "cosine", "num_steps": num_steps, "s": s,
                           "max_beta": max_beta})

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoiseSchedule:
        """Rebuild a schedule from its :attr:`config` (e.g. read from a weights file).

        Parameters
        ----------
        config : dict
            ``{"kind": "linear" | "cosine", **keyword arguments of that constructor}``.

        Returns
        -------
        NoiseSchedule
        """
        kwargs = dict(config)
        kind = kwargs.pop("kind", None)
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; expected one of {SCHEDULE_KINDS}")
        return cls.linear(**kwargs) if kind == "linear" else cls.cosine(**kwargs)

    def _coef(self, values: torch.Tensor, t: int | torch.Tensor,
              like: torch.Tensor) -> torch.Tensor:
        """``values[t]`` cast to ``like``'s dtype/device, shaped to broadcast over ``like``.

        ``t`` is an int or a ``(B,)`` integer tensor (one timestep per batch item).
        """
        if isinstance(t, int):
            return torch.tensor(float(values[t]), dtype=like.dtype, device=like.device)
        coef = values[t.detach().to("cpu", torch.long)].to(like.device, like.dtype)
        return coef.reshape(-1, *([1] * (like.dim() - 1)))

    def _check_t(self, t: int | torch.Tensor, first: int = 0) -> None:
        low, high = (t, t) if isinstance(t, int) else (int(t.min()), int(t.max()))
        if low < first or high > self.num_steps:
            raise ValueError(f"timestep out of range {first}..{self.num_steps}: {low}..{high}")

    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
        """Sample the forward process ``q(x_t | x_0)`` (Ho et al. Eq. 4).

        ``x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps``.

        Parameters
        ----------
        x0 : torch.Tensor
            ``(B, C, H, W)`` (any ``(B, ...)``) clean images ``x_0``, float.
        t : int or torch.Tensor
            Timestep in ``0..T``, or a ``(B,)`` integer tensor of timesteps.
        noise : torch.Tensor
            ``eps``, standard normal, same shape as ``x0``.

        Returns
        -------
        torch.Tensor
            ``x_t``, same shape, dtype and device as ``x0``.
        """
        self._check_t(t)
        abar = self._coef(self.alpha_bar, t, x0)  # alpha_bar_t
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: int | torch.Tensor,
                            eps: torch.Tensor) -> torch.Tensor:
        """Invert Eq. 4 for ``x_0`` given a noise estimate (Ho et al. Eq. 15).

        ``x0_hat = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)``.

        Parameters
        ----------
        x_t : torch.Tensor
            ``(B, ...)`` noisy images at step ``t``.
        t : int or torch.Tensor
            Timestep in ``0..T`` or ``(B,)`` timesteps.
        eps : torch.Tensor
            Noise estimate, same shape as ``x_t``.

        Returns
        -------
        torch.Tensor
            ``x0_hat``, same shape as ``x_t``.
        """
        self._check_t(t)
        abar = self._coef(self.alpha_bar, t, x_t)
        return (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: int | torch.Tensor,
                            x0: torch.Tensor) -> torch.Tensor:
        """Invert Eq. 4 for the noise given an estimate of ``x_0``.

        ``eps_hat = (x_t - sqrt(alpha_bar_t) * x0_hat) / sqrt(1 - alpha_bar_t)``; undefined
        at ``t = 0``.

        Parameters
        ----------
        x_t : torch.Tensor
            ``(B, ...)`` noisy images at step ``t``.
        t : int or torch.Tensor
            Timestep in ``1..T`` or ``(B,)`` timesteps.
        x0 : torch.Tensor
            Estimate of the clean image, same shape as ``x_t``.

        Returns
        -------
        torch.Tensor
            ``eps_hat``, same shape as ``x_t``.
        """
        self._check_t(t, first=1)  # the noise is undefined at t = 0
        abar = self._coef(self.alpha_bar, t, x_t)
        return (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt()

    def posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: int,
                                s: int | None = None) -> tuple[torch.Tensor, float]:
        """Mean and variance of the forward-process posterior ``q(x_s | x_t, x_0)``.

        For ``s = t - 1`` this is Ho et al. Eq. 6-7::

            mu_tilde_t  = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x_0
                          + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t
            beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t

        For any ``s < t`` the same formulas hold with ``alpha_t`` replaced by
        ``alpha_{t|s} = alpha_bar_t / alpha_bar_s`` and ``beta_t`` by
        ``beta_{t|s} = 1 - alpha_{t|s}`` (the strided posterior used by DDPM sampling with
        fewer steps; Song et al. 2021, Eq. 16 with eta = 1).

        Parameters
        ----------
        x0 : torch.Tensor
            ``(B, ...)`` clean image (or its estimate ``x0_hat``).
        x_t : torch.Tensor
            ``(B, ...)`` noisy image at step ``t``, same shape.
        t : int
            Current step, ``1..T``.
        s : int, optional
            Target step, ``0 <= s < t``; default ``t - 1``.

        Returns
        -------
        mean : torch.Tensor
            ``mu_tilde``, same shape and dtype as ``x_t``.
        variance : float
            ``beta_tilde`` (0 when ``s = 0``).
        """
        s = t - 1 if s is None else s
        if not 0 <= s < t <= self.num_steps:
            raise ValueError(f"need 0 <= s < t <= {self.num_steps}, got s={s}, t={t}")
        abar_t, abar_s = float(self.alpha_bar[t]), float(self.alpha_bar[s])
        alpha_ts = abar_t / abar_s  # alpha_{t|s}; equals alpha_t when s = t - 1
        beta_ts = 1.0 - alpha_ts  # beta_{t|s}; equals beta_t when s = t - 1
        coef_x0 = math.sqrt(abar_s) * beta_ts / (1.0 - abar_t)
        coef_xt = math.sqrt(alpha_ts) * (1.0 - abar_s) / (1.0 - abar_t)
        variance = (1.0 - abar_s) / (1.0 - abar_t) * beta_ts
        return coef_x0 * x0 + coef_xt * x_t, variance


def resample(x0_hat: torch.Tensor, n: int, schedule: NoiseSchedule,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None
             ) -> torch.Tensor:
    """MiG-DM resampling step: re-noise SD1's output to step ``N`` as SD2's start.

    Geng et al., arXiv:2512.22237, Sec. III.C: the image restored by the first diffusion
    model is diffused forward to timestep ``N`` and the second model denoises from there,
    ``x_N = sqrt(alpha_bar_N) * x0_hat_SD1 + sqrt(1 - alpha_bar_N) * eps`` (Eq. 4 of Ho et
    al. at ``t = N``). ``N = 0`` returns ``x0_hat`` unchanged; the paper uses ``N = 50`` of
    ``T = 1000``.

    Parameters
    ----------
    x0_hat : torch.Tensor
        ``(B, C, H, W)`` SD1 output ``x0_hat`` (normalised image units).
    n : int
        ``N``, in ``0..T``.
    schedule : NoiseSchedule
        The schedule SD2 was trained with.
    generator : torch.Generator, optional
        Source of the noise ``eps`` (see :func:`randn_like`).
    noise : torch.Tensor, optional
        ``eps`` itself, broadcastable to ``x0_hat`` (e.g. one plane shared by every slice);
        ``generator`` is then not used.

    Returns
    -------
    torch.Tensor
        ``x_N``, same shape, dtype and device as ``x0_hat``.
    """
    eps = randn_like(x0_hat, generator) if noise is None else noise.to(x0_hat).expand_as(x0_hat)
    return schedule.q_sample(x0_hat, n, eps)
