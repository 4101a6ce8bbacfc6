"""Reverse-process samplers for x0-predicting diffusion models.

All samplers share one signature (k-diffusion style)::

    sampler(model_fn, x_start, schedule, *, t_start, steps, generator=None, callback=None)

``model_fn(x_t, t)`` returns the model's estimate ``x0_hat`` of the clean image (petrecon's
prediction target, see :mod:`pet_recon.diffusion.schedule`); conditioning (neighbouring
slices, sinogram features, meta-information tokens) is closed over by the caller. ``x_start``
is ``x_{t_start}``: pure noise with ``t_start = T`` for an unconditional start, or the output
of :func:`~pet_recon.diffusion.schedule.resample` with ``t_start = N`` for MiG-DM's second
model. Samplers do not switch off autograd; wrap the call in ``torch.inference_mode()``
when no gradients are needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pet_recon.diffusion.schedule import NoiseSchedule, randn_like

#: ``model_fn(x_t, t) -> x0_hat``: ``x_t`` is ``(B, C, H, W)``, ``t`` a ``(B,)`` long tensor.
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerStep:
    """What a sampler passes to ``callback`` after each model evaluation.

    Attributes
    ----------
    index : int
        Step number, ``0..steps-1``.
    t : int
        Timestep of ``x_t``.
    t_next : int
        Timestep the step moves to (``0`` on the last step).
    x_t : torch.Tensor
        ``(B, C, H, W)`` sample at ``t`` that the model saw.
    x0_pred : torch.Tensor
        ``(B, C, H, W)`` model estimate ``x0_hat`` of the clean image, dtype of ``x_t``.
    """

    index: int
    t: int
    t_next: int
    x_t: torch.Tensor
    x0_pred: torch.Tensor


StepCallback = Callable[[SamplerStep], None]


def timesteps(t_start: int, steps: int) -> list[int]:
    """Evenly spaced integer timesteps from ``t_start`` down to 0.

    Parameters
    ----------
    t_start : int
        First timestep, ``1..T``.
    steps : int
        Number of model evaluations, ``1..t_start``.

    Returns
    -------
    list of int
        ``steps + 1`` strictly decreasing timesteps, first ``t_start``, last ``0``
        (``floor(t_start * k / steps)`` for ``k = steps..0``).
    """
    if t_start < 1:
        raise ValueError(f"t_start must be >= 1, got {t_start}")
    if not 1 <= steps <= t_start:
        raise ValueError(f"steps must be in 1..t_start={t_start}, got {steps}")
    return [t_start * k // steps for k in range(steps, -1, -1)]


def _predict(model_fn: ModelFn, x: torch.Tensor, t: int) -> torch.Tensor:
    """Call the model at integer step ``t``; the output is cast to ``x``'s dtype."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    return model_fn(x, t_batch).to(x.dtype)


def _check(schedule: NoiseSchedule, t_start: int) -> None:
    if t_start > schedule.num_steps:
        raise ValueError(f"t_start={t_start} exceeds the schedule's T={schedule.num_steps}")


def ddpm(model_fn: ModelFn, x_start: torch.Tensor, schedule: NoiseSchedule, *, t_start: int,
         steps: int, generator: torch.Generator | None = None,
         callback: StepCallback | None = None) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2), optionally strided.

    Each step from ``t`` to the next timestep ``s`` draws
    ``x_s ~ q(x_s | x_t, x_0 = x0_hat)``, the forward-process posterior (Eq. 6-7; for
    ``s < t - 1`` the strided posterior, i.e. DDIM with eta = 1), with the fixed "lower
    bound" variance ``beta_tilde``. ``steps = t_start`` is the original sampler.

    Parameters
    ----------
    model_fn : callable
        ``model_fn(x_t, t) -> x0_hat``, see :data:`ModelFn`.
    x_start : torch.Tensor
        ``(B, C, H, W)`` float ``x_{t_start}``.
    schedule : NoiseSchedule
        Schedule the model was trained with.
    t_start : int
        Timestep of ``x_start``, ``1..T``.
    steps : int
        Number of model evaluations, ``1..t_start``.
    generator : torch.Generator, optional
        Source of the ancestral noise.
    callback : callable, optional
        Called with a :class:`SamplerStep` after every model evaluation.

    Returns
    -------
    torch.Tensor
        ``x_0``, same shape, dtype and device as ``x_start``; on the last step the
        posterior collapses to the model's ``x0_hat``.
    """
    _check(schedule, t_start)
    seq = timesteps(t_start, steps)
    x = x_start
    for i, (t, s) in enumerate(zip(seq[:-1], seq[1:], strict=True)):
        x0_hat = _predict(model_fn, x, t)
        if callback is not None:
            callback(SamplerStep(i, t, s, x, x0_hat))
        # mu_tilde(x_t, x0_hat) and beta_tilde of q(x_s | x_t, x_0)
        mean, variance = schedule.posterior_mean_variance(x0_hat, x, t, s)
        x = mean + math.sqrt(variance) * randn_like(x, generator) if s > 0 else mean
    return x


def ddim(model_fn: ModelFn, x_start: torch.Tensor, schedule: NoiseSchedule, *, t_start: int,
         steps: int, generator: torch.Generator | None = None,
         callback: StepCallback | None = None) -> torch.Tensor:
    """Deterministic DDIM sampling (Song et al. 2021, arXiv:2010.02502, Eq. 12 with eta = 0).

    Each step from ``t`` to ``s`` computes ``eps_hat = (x_t - sqrt(alpha_bar_t) x0_hat) /
    sqrt(1 - alpha_bar_t)`` and ``x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s)
    eps_hat``. With ``s = 0`` the result is ``x0_hat`` itself.

    Parameters
    ----------
    model_fn : callable
        ``model_fn(x_t, t) -> x0_hat``, see :data:`ModelFn`.
    x_start : torch.Tensor
        ``(B, C, H, W)`` float ``x_{t_start}``.
    schedule : NoiseSchedule
        Schedule the model was trained with.
    t_start : int
        Timestep of ``x_start``, ``1..T``.
    steps : int
        Number of model evaluations, ``1..t_start``.
    generator : torch.Generator, optional
        Unused (the sampler is deterministic); accepted so all samplers share a signature.
    callback : callable, optional
        Called with a :class:`SamplerStep` after every model evaluation.

    Returns
    -------
    torch.Tensor
        ``x_0``, same shape, dtype and device as ``x_start``.
    """
    _check(schedule, t_start)
    seq = timesteps(t_start, steps)
    x = x_start
    for i, (t, s) in enumerate(zip(seq[:-1], seq[1:], strict=True)):
        x0_hat = _predict(model_fn, x, t)
        if callback is not None:
            callback(SamplerStep(i, t, s, x, x0_hat))
        eps_hat = schedule.predict_eps_from_x0(x, t, x0_hat)
        # Eq. 12 (eta = 0): x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s) eps_hat
        x = schedule.q_sample(x0_hat, s, eps_hat)
    return x
