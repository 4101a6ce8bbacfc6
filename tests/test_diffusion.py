"""Noise schedule, forward process, resampling and samplers against closed forms."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from pet_recon.diffusion import (
    ModelFn,
    NoiseSchedule,
    SamplerStep,
    ddim,
    ddpm,
    resample,
    timesteps,
)

Sampler = Callable[..., torch.Tensor]
SCHEDULES = {"linear": NoiseSchedule.linear(), "cosine": NoiseSchedule.cosine()}
MU, SD = 0.3, 0.5  # Gaussian data distribution N(MU, SD^2) per pixel


def _gaussian_denoiser(schedule: NoiseSchedule) -> ModelFn:
    """Optimal x0-predictor for x0 ~ N(MU, SD^2): E[x0 | x_t], closed form.

    With x_t = a x0 + b eps: E[x0 | x_t] = MU + a SD^2 / (a^2 SD^2 + b^2) (x_t - a MU).
    """

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = schedule.alpha_bar[t].to(x.dtype).reshape(-1, 1, 1, 1)
        a, b2 = abar.sqrt(), 1.0 - abar
        return MU + a * SD**2 / (a * a * SD**2 + b2) * (x - a * MU)

    return model_fn


def _gaussian_start(schedule: NoiseSchedule, t: int, seed: int) -> torch.Tensor:
    """Exact samples of q(x_t) for x0 ~ N(MU, SD^2), shape (4, 1, 64, 64), float64."""
    g = torch.Generator().manual_seed(seed)
    x0 = MU + SD * torch.randn(4, 1, 64, 64, generator=g, dtype=torch.float64)
    return resample(x0, t, schedule, g)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_is_monotone_and_indexed_from_clean_data(name: str) -> None:
    s = SCHEDULES[name]
    assert s.num_steps == 1000 and s.alpha_bar.shape == (1001,)
    assert s.betas[0] == 0 and s.alpha_bar[0] == 1
    assert bool((s.betas[1:] > 0).all() and (s.betas < 1).all())
    assert bool((s.alpha_bar[1:] < s.alpha_bar[:-1]).all())
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - s.betas, 0))
    assert float(s.alpha_bar[-1]) < 1e-4


def test_linear_and_cosine_match_their_definitions() -> None:
    lin = SCHEDULES["linear"]
    assert float(lin.betas[1]) == pytest.approx(1e-4) and float(lin.betas[-1]) == 0.02
    assert bool((lin.betas[2:] > lin.betas[1:-1]).all())
    cos = SCHEDULES["cosine"]
    t = torch.tensor([1, 250, 500, 750], dtype=torch.float64)
    f = torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    f0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert torch.allclose(cos.alpha_bar[t.long()], f / f0, rtol=1e-10)
    assert float(cos.betas.max()) <= 0.999


def test_from_config_round_trip() -> None:
    for s in SCHEDULES.values():
        assert torch.equal(NoiseSchedule.from_config(s.config).betas, s.betas)
    with pytest.raises(ValueError, match="unknown schedule kind"):
        NoiseSchedule.from_config({"kind": "sigmoid"})


def test_q_sample_statistics() -> None:
    s = SCHEDULES["linear"]
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((8, 1, 64, 64), 0.7)
    for t in (1, 50, 500, 1000):
        xt = s.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        abar = float(s.alpha_bar[t])
        assert float(xt.mean()) == pytest.approx(math.sqrt(abar) * 0.7, abs=0.01)
        assert float(xt.std()) == pytest.approx(math.sqrt(1 - abar), rel=0.02, abs=1e-3)


def test_q_sample_per_item_timesteps_and_inverses() -> None:
    s = SCHEDULES["cosine"]
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 400, 999])
    xt = s.q_sample(x0, t, eps)
    for i in range(3):
        assert torch.allclose(xt[i : i + 1], s.q_sample(x0[i : i + 1], int(t[i]), eps[i : i + 1]))
    assert torch.allclose(s.predict_x0_from_eps(xt, t, eps), x0)
    assert torch.allclose(s.predict_eps_from_x0(xt, t, x0), eps)
    with pytest.raises(ValueError, match="out of range"):
        s.q_sample(x0, 1001, eps)
    with pytest.raises(ValueError, match="out of range 1"):
        s.predict_eps_from_x0(xt, 0, x0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_posterior_matches_ho_eq7_and_is_consistent(name: str) -> None:
    s = SCHEDULES[name]
    one = torch.ones(1, dtype=torch.float64)
    for t in (1, 2, 10, 500, 1000):
        _, var = s.posterior_mean_variance(one, one, t)
        abar_t, abar_prev, beta = (float(s.alpha_bar[t]), float(s.alpha_bar[t - 1]),
                                   float(s.betas[t]))
        assert var == pytest.approx((1 - abar_prev) / (1 - abar_t) * beta, rel=1e-12, abs=1e-15)
    # Marginalising x_t ~ q(x_t | x0) out of q(x_s | x_t, x0) must give q(x_s | x0):
    # with x_t = a_t x0 + b_t eps and mean = c0 x0 + c1 x_t, c0 + c1 a_t = a_s and
    # c1^2 b_t^2 + var = b_s^2.
    for t, s_ in ((1, 0), (2, 1), (50, 0), (500, 499), (1000, 100), (300, 150)):
        c0 = float(s.posterior_mean_variance(one, 0 * one, t, s_)[0])
        c1, var = s.posterior_mean_variance(0 * one, one, t, s_)
        c1 = float(c1)
        a_t, a_s = math.sqrt(float(s.alpha_bar[t])), math.sqrt(float(s.alpha_bar[s_]))
        assert c0 + c1 * a_t == pytest.approx(a_s, abs=1e-12)
        assert c1**2 * (1 - a_t**2) + var == pytest.approx(1 - a_s**2, abs=1e-12)
    with pytest.raises(ValueError, match="need 0 <= s < t"):
        s.posterior_mean_variance(one, one, 5, 5)


def test_resample_at_zero_returns_x0_and_is_reproducible() -> None:
    s = SCHEDULES["linear"]
    x0 = torch.randn(2, 1, 8, 8)
    assert torch.equal(resample(x0, 0, s, torch.Generator().manual_seed(0)), x0)
    a = resample(x0, 50, s, torch.Generator().manual_seed(3))
    b = resample(x0, 50, s, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x0)
    resid = (a - math.sqrt(float(s.alpha_bar[50])) * x0) / math.sqrt(1 - float(s.alpha_bar[50]))
    assert float(resid.std()) == pytest.approx(1.0, rel=0.15)


def test_timesteps_are_strided_down_to_zero() -> None:
    assert timesteps(1000, 1) == [1000, 0]
    assert timesteps(50, 5) == [50, 40, 30, 20, 10, 0]
    assert timesteps(3, 3) == [3, 2, 1, 0]
    seq = timesteps(1000, 7)
    assert seq[0] == 1000 and seq[-1] == 0 and len(seq) == 8
    assert all(a > b for a, b in zip(seq, seq[1:], strict=False))
    with pytest.raises(ValueError, match="steps must be in"):
        timesteps(10, 11)


@pytest.mark.parametrize("sampler", [ddim, ddpm])
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_delta_oracle_is_recovered_exactly(sampler: Sampler, steps: int) -> None:
    s = SCHEDULES["linear"]
    target = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8).repeat(2, 1, 1, 1)

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return target.to(x.dtype)

    g = torch.Generator().manual_seed(4)
    x_start = torch.randn(target.shape, generator=g)
    out = sampler(oracle, x_start, s, t_start=1000, steps=steps, generator=g)
    assert torch.allclose(out, target, atol=1e-5)
    start = resample(target, 50, s, g)
    out = sampler(oracle, start, s, t_start=50, steps=min(steps, 50), generator=g)
    assert torch.allclose(out, target, atol=1e-5)


@pytest.mark.parametrize("name", SCHEDULES)
def test_gaussian_data_full_ddpm_and_ddim_match_distribution(name: str) -> None:
    s = SCHEDULES[name]
    model_fn = _gaussian_denoiser(s)
    x_start = _gaussian_start(s, 1000, seed=5)
    g = torch.Generator().manual_seed(6)
    for sampler, steps in ((ddpm, 1000), (ddim, 100)):
        out = sampler(model_fn, x_start, s, t_start=1000, steps=steps, generator=g)
        assert float(out.mean()) == pytest.approx(MU, abs=0.015), sampler.__name__
        assert float(out.std()) == pytest.approx(SD, abs=0.02), sampler.__name__


@pytest.mark.parametrize("sampler", [ddim, ddpm])
def test_gaussian_data_from_resampled_start(sampler: Sampler) -> None:
    s = SCHEDULES["linear"]
    x_start = _gaussian_start(s, 50, seed=7)
    out = sampler(_gaussian_denoiser(s), x_start, s, t_start=50, steps=10,
                  generator=torch.Generator().manual_seed(8))
    assert float(out.mean()) == pytest.approx(MU, abs=0.015)
    assert float(out.std()) == pytest.approx(SD, abs=0.015)


def test_ddpm_is_reproducible_and_ddim_deterministic() -> None:
    s = SCHEDULES["linear"]
    x = torch.randn(1, 1, 8, 8)
    fn = _gaussian_denoiser(s)

    def run(sampler: Sampler, seed: int) -> torch.Tensor:
        return sampler(fn, x, s, t_start=100, steps=10,
                       generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(ddpm, 1), run(ddpm, 1)) and not torch.equal(run(ddpm, 1), run(ddpm, 2))
    assert torch.equal(run(ddim, 1), run(ddim, 2))


@pytest.mark.parametrize("sampler", [ddim, ddpm])
def test_callback_records_x0_trajectory(sampler: Sampler) -> None:
    s = SCHEDULES["linear"]
    seen: list[SamplerStep] = []
    x = torch.randn(2, 1, 8, 8)
    out = sampler(_gaussian_denoiser(s), x, s, t_start=50, steps=5, callback=seen.append)
    assert [(st.index, st.t, st.t_next) for st in seen] == [
        (0, 50, 40), (1, 40, 30), (2, 30, 20), (3, 20, 10), (4, 10, 0)]
    assert torch.equal(seen[0].x_t, x)
    assert all(st.x0_pred.shape == x.shape for st in seen)
    assert torch.allclose(out, seen[-1].x0_pred, atol=1e-6)
    with pytest.raises(ValueError, match="exceeds the schedule"):
        sampler(_gaussian_denoiser(s), x, s, t_start=1001, steps=5)
