"""Diffusion machinery: DDPM noise schedule, MiG-DM resampling step and samplers.

Timesteps use the paper indexing ``t = 0..T`` (0 is clean data); models predict ``x_0``.
"""

from pet_recon.diffusion.samplers import ModelFn, SamplerStep, StepCallback, ddim, ddpm, timesteps
from pet_recon.diffusion.schedule import NoiseSchedule, randn_like, resample

__all__ = [
    "ModelFn",
    "NoiseSchedule",
    "SamplerStep",
    "StepCallback",
    "ddim",
    "ddpm",
    "randn_like",
    "resample",
    "timesteps",
]
