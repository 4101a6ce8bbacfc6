"""MAP-Diff anchors: degradation-matched timesteps, the timestep-weighted anchor loss, the
dose levels SliceStream gives for them and ``TrainOptions.anchor_loss`` in SD1/SD2."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pet_recon import training
from pet_recon.dataset import SliceStream
from pet_recon.diffusion.anchors import (
    anchor_loss,
    anchor_weight,
    calibrate_anchor_steps,
    calibrate_from_data,
    degradation_statistic,
    matching_step,
    noise_to_signal,
    stack_anchors,
)
from pet_recon.diffusion.schedule import NoiseSchedule
from pet_recon.training import TrainOptions, train

CPU = torch.device("cpu")


def _linear_ratio() -> np.ndarray:
    """``(1 - alpha_bar_t) / alpha_bar_t`` for t = 0..1000 of Ho et al.'s linear schedule,
    computed here independently of NoiseSchedule."""
    betas = np.concatenate([[0.0], np.linspace(1e-4, 0.02, 1000)])
    alpha_bar = np.cumprod(1.0 - betas)
    return (1.0 - alpha_bar) / alpha_bar


def _pairs_with_variance(variance: float, n: int, generator: torch.Generator
                         ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Full-dose-like images plus Gaussian noise whose sample variance is exactly
    ``variance``."""
    pairs = []
    for _ in range(n):
        full = torch.rand(64, 64, generator=generator, dtype=torch.float64)
        noise = torch.randn(64, 64, generator=generator, dtype=torch.float64)
        noise = (noise - noise.mean()) / noise.std(unbiased=False) * math.sqrt(variance)
        pairs.append((full + noise, full))
    return pairs


# ----------------------------------------------------------------------------- matching


def test_noise_to_signal_equals_linear_schedule_closed_form() -> None:
    ratio = noise_to_signal(NoiseSchedule.linear())
    assert ratio.shape == (1001,) and float(ratio[0]) == 0.0
    np.testing.assert_allclose(ratio.numpy(), _linear_ratio(), rtol=1e-10)
    assert bool((ratio[1:] > ratio[:-1]).all())


@pytest.mark.parametrize("t", [1, 37, 180, 640, 1000])
def test_matching_step_returns_step_of_its_own_ratio(t: int) -> None:
    assert matching_step(float(_linear_ratio()[t]), NoiseSchedule.linear()) == t


def test_matching_step_picks_nearest_ratio_between_steps() -> None:
    ratio = _linear_ratio()
    just_above_40 = ratio[40] + 0.4 * (ratio[41] - ratio[40])
    just_below_41 = ratio[40] + 0.6 * (ratio[41] - ratio[40])
    schedule = NoiseSchedule.linear()
    assert matching_step(just_above_40, schedule) == 40
    assert matching_step(just_below_41, schedule) == 41
    assert matching_step(0.0, schedule) == 1
    with pytest.raises(ValueError, match="variance"):
        matching_step(-1.0, schedule)


def test_degradation_statistic_uses_only_masked_pixels() -> None:
    full = torch.zeros(4, 4)
    low = torch.zeros(4, 4)
    low[:2] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # inside: variance 1
    low[2:] = 100.0  # outside the mask
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2] = True
    assert degradation_statistic(low, full, mask) == pytest.approx(1.0)
    assert degradation_statistic(low, full) > 1000.0  # whole image: the outliers count
    # A constant offset (a bias) is not a variance.
    assert degradation_statistic(full + 0.3, full) == pytest.approx(0.0, abs=1e-12)


def test_calibrate_anchor_steps_recovers_known_noise_levels() -> None:
    ratio = _linear_ratio()
    generator = torch.Generator().manual_seed(0)
    pairs = {4: _pairs_with_variance(float(ratio[40]), 5, generator),
             20: _pairs_with_variance(float(ratio[120]), 5, generator)}
    assert calibrate_anchor_steps(pairs, NoiseSchedule.linear()) == {4: 40, 20: 120}


def test_calibrate_anchor_steps_lower_dose_gives_larger_step() -> None:
    generator = torch.Generator().manual_seed(1)
    pairs = {}
    for drf, sigma in ((4, 0.05), (10, 0.1), (20, 0.2), (50, 0.4)):
        pairs[drf] = [(full + sigma * torch.randn(64, 64, generator=generator), full)
                      for full in torch.rand(3, 64, 64, generator=generator)]
    steps = calibrate_anchor_steps(pairs, NoiseSchedule.linear())
    assert list(steps) == [4, 10, 20, 50]
    assert steps[4] < steps[10] < steps[20] < steps[50]
    # Each is the step nearest the drawn sigma^2 (sample variances are within 5 %).
    ratio = _linear_ratio()
    for drf, sigma in ((4, 0.05), (10, 0.1), (20, 0.2), (50, 0.4)):
        assert 0.9 * sigma**2 < ratio[steps[drf]] < 1.1 * sigma**2


def test_calibrate_anchor_steps_applies_masks() -> None:
    generator = torch.Generator().manual_seed(2)
    (low, full), = _pairs_with_variance(float(_linear_ratio()[60]), 1, generator)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:, :32] = True
    low = low.clone()
    low[:, 32:] += 50.0 * torch.randn(64, 32, generator=generator, dtype=torch.float64)
    masked = calibrate_anchor_steps({4: [(low, full)]}, NoiseSchedule.linear(),
                                    masks_by_drf={4: [mask]})
    unmasked = calibrate_anchor_steps({4: [(low, full)]}, NoiseSchedule.linear())
    assert abs(masked[4] - 60) <= 2 and unmasked[4] > 400


# ----------------------------------------------------------------------------- weighting


def test_anchor_weight_is_one_at_anchor_and_decays_away() -> None:
    t = torch.arange(0, 401)
    w = anchor_weight(t, 200, width=10.0)
    assert w.shape == (401,) and w.dtype == torch.float32
    assert float(w[200]) == 1.0
    # Strictly decreasing away from t_k (within 5 widths; beyond, float32 reaches 0).
    assert bool((w[151:201] > w[150:200]).all()) and bool((w[201:251] < w[200:250]).all())
    assert bool((w[1:201] >= w[:200]).all()) and bool((w[201:] <= w[200:400]).all())
    torch.testing.assert_close(w[190], torch.tensor(math.exp(-0.5)))
    torch.testing.assert_close(w[:200].flip(0), w[201:])  # symmetric about t_k
    assert float(w[250]) < 1e-5 and float(w[0]) == 0.0  # 5 and 20 widths away


def test_anchor_weight_broadcasts_items_against_anchors() -> None:
    t = torch.tensor([10, 50, 90])
    t_k = torch.tensor([[10, 50], [10, 50], [10, 50]])
    w = anchor_weight(t[:, None], t_k, width=20.0)
    assert w.shape == (3, 2)
    torch.testing.assert_close(w[0], torch.tensor([1.0, math.exp(-2.0)]))
    torch.testing.assert_close(w[1, 1], torch.tensor(1.0))
    with pytest.raises(ValueError, match="width"):
        anchor_weight(t, 10, width=0.0)


def test_anchor_loss_zero_when_prediction_equals_anchor() -> None:
    anchor = torch.rand(2, 1, 1, 8, 8)
    pred = anchor[:, 0].clone().requires_grad_(True)
    padding = torch.full((2, 1, 1, 8, 8), 7.0)  # ignored: DRF 0
    images = torch.cat([anchor, padding], 1)
    drfs = torch.tensor([[4, 0], [4, 0]])
    loss = anchor_loss(pred, images, drfs, torch.tensor([30, 31]), {4: 30}, width=10.0)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert pred.grad is not None and float(pred.grad.abs().max()) == 0.0


def test_anchor_loss_weights_each_item_by_its_timestep() -> None:
    images = torch.zeros(3, 2, 1, 4, 4)
    pred = torch.ones(3, 1, 4, 4)  # squared error 1 against every anchor
    drfs = torch.tensor([[4, 10], [4, 0], [0, 0]])
    t = torch.tensor([30, 40, 30])
    loss = anchor_loss(pred, images, drfs, t, {4: 30, 10: 60}, width=10.0)
    # item 0: w(30; 30) + w(30; 60); item 1: w(40; 30); item 2: no anchor.
    expected = (1.0 + math.exp(-4.5) + math.exp(-0.5) + 0.0) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    far = anchor_loss(pred, images, drfs, torch.tensor([900, 900, 900]), {4: 30, 10: 60},
                      width=10.0)
    assert float(far) == 0.0
    empty = anchor_loss(pred, images[:, :0], drfs[:, :0], t, {4: 30}, width=10.0)
    assert float(empty) == 0.0
    with pytest.raises(ValueError, match="DRF \\[10\\]"):
        anchor_loss(pred, images, drfs, t, {4: 30}, width=10.0)


def test_stack_anchors_takes_levels_between_input_and_full_dose() -> None:
    case = {k: torch.full((1, 4, 4), float(k), dtype=torch.float16) for k in (4, 10, 20, 50)}
    images, drfs = stack_anchors([case, case, case], [50.0, 10.0, 4.0], {4: 20, 10: 35, 20: 50})
    assert images.shape == (3, 3, 1, 4, 4) and images.dtype == torch.float32
    assert drfs.tolist() == [[4, 10, 20], [4, 0, 0], [0, 0, 0]]
    assert float(images[0, 2].mean()) == 20.0 and float(images[1, 1].abs().max()) == 0.0
    none, no_drfs = stack_anchors([case], [4.0], {4: 20})
    assert none.shape == (1, 0, 1, 4, 4) and no_drfs.shape == (1, 0)


# ----------------------------------------------------------------------------- data


def test_slice_stream_levels_hold_every_level_of_the_slice(runs: Path) -> None:
    plain = list(SliceStream(runs / "data", "train", seed=3))
    with_levels = list(SliceStream(runs / "data", "train", seed=3, with_levels=True))
    assert len(plain) == len(with_levels) > 0
    for a, b in zip(plain, with_levels, strict=True):
        assert set(b) - set(a) == {"levels"} and "levels" not in a
        for key in ("ld", "fd"):
            torch.testing.assert_close(a[key], b[key])
        assert a["drf"] == b["drf"] and a["case_id"] == b["case_id"]
        assert sorted(b["levels"]) == [4, 20]
        assert b["levels"][4].shape == b["fd"].shape
        # The level of the input is its centre plane.
        torch.testing.assert_close(b["levels"][int(b["drf"])].float(), b["ld"][1:2])
    # Restricted to one input level, the other level is still given as an anchor.
    only_20 = next(iter(SliceStream(runs / "data", "train", drfs=(20,), with_levels=True)))
    assert only_20["drf"] == 20.0 and sorted(only_20["levels"]) == [4, 20]


def test_stack_anchors_on_tiny_set_gives_drf4_for_drf20_inputs(runs: Path) -> None:
    items = list(SliceStream(runs / "data", "train", seed=0, with_levels=True))
    drfs = [item["drf"] for item in items]
    assert {4.0, 20.0} <= set(drfs)
    images, anchor_drfs = stack_anchors([item["levels"] for item in items], drfs,
                                        {4: 24, 20: 60})
    assert images.shape == (len(items), 1, 1, 32, 32)
    for i, item in enumerate(items):
        assert anchor_drfs[i].tolist() == ([4] if item["drf"] == 20.0 else [0])
        if item["drf"] == 20.0:
            torch.testing.assert_close(images[i, 0], item["levels"][4].float())


def test_calibrate_from_data_lower_dose_gives_larger_step(runs: Path) -> None:
    schedule = NoiseSchedule.linear()
    result = calibrate_from_data(runs / "data", None, schedule, slices=64)
    assert sorted(result) == [4, 20]
    for value in result.values():
        assert value["variance"] > 0 and value["slices"] > 0 and value["cases"] > 0
        assert value["t"] == matching_step(value["variance"], schedule)
        assert value["t_q25"] <= value["t"] <= value["t_q75"]
    assert result[20]["t"] > result[4]["t"]
    assert result[20]["variance"] > 2 * result[4]["variance"]
    assert calibrate_from_data(runs / "data", [20], schedule, slices=2)[20]["slices"] == 2


def test_calibrate_from_data_missing_level_is_an_error(runs: Path) -> None:
    from pet_recon.errors import PetReconError

    with pytest.raises(PetReconError, match="DRF \\[7\\]"):
        calibrate_from_data(runs / "data", [4, 7], NoiseSchedule.linear())


# ----------------------------------------------------------------------------- training


def _extra(path: Path) -> dict[str, object]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["extra"])


def _checkpoint_metadata(folder: Path) -> dict[str, str]:
    with safe_open(str(folder / "checkpoint.safetensors"), framework="pt") as f:
        return f.metadata()


def _options(runs: Path, out: Path, **kwargs: object) -> TrainOptions:
    return TrainOptions(data=runs / "data", out=out, steps=2, device=CPU, batch_size=4,
                        patch=32, log_every=1, checkpoint_every=1, frozen=runs / "weights",
                        trust_frozen=True, **kwargs)


@pytest.mark.parametrize("stage", ["sd1", "sd2"])
def test_train_with_anchor_loss_stores_calibrated_anchors(runs: Path, tmp_path: Path,
                                                          stage: str) -> None:
    report = train(stage, _options(runs, tmp_path, anchor_loss=True))
    expected = calibrate_from_data(runs / "data", None, NoiseSchedule.linear())
    anchors = {str(k): v["t"] for k, v in expected.items()}
    extra = _extra(tmp_path / f"{stage}.safetensors")
    assert extra["anchors"] == anchors and report["anchors"] == anchors
    assert extra["anchors"]["20"] > extra["anchors"]["4"]
    assert extra["anchor_loss"]["weight"] == 1.0 and extra["anchor_loss"]["width"] == 10.0
    assert extra["anchor_loss"]["calibration"]["4"]["variance"] > 0
    assert json.loads(_checkpoint_metadata(tmp_path)["anchors"]) == anchors


def test_train_resume_reads_anchors_from_checkpoint(runs: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    opts = _options(runs, tmp_path, anchor_loss=True)
    train("sd1", opts)
    first = _extra(tmp_path / "sd1.safetensors")["anchors"]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a resumed run must not recalibrate")

    monkeypatch.setattr(training, "calibrate_from_data", refuse)
    train("sd1", replace(opts, steps=3))
    assert _checkpoint_metadata(tmp_path)["step"] == "3"
    assert _extra(tmp_path / "sd1.safetensors")["anchors"] == first


def test_train_without_anchor_loss_saves_no_anchors(runs: Path) -> None:
    # The session fixture trains SD1 without the anchor loss (and SD2 with it).
    extra = _extra(runs / "sd1" / "sd1.safetensors")
    assert "anchors" not in extra and "anchor_loss" not in extra
    assert extra["prediction"] == "x0"
    assert set(_checkpoint_metadata(runs / "sd1")) == {"step", "param_groups", "train_seconds"}
    assert "anchors" not in json.loads((runs / "sd1" / "sd1.json").read_text())
    assert set(_extra(runs / "sd2" / "sd2.safetensors")["anchors"]) == {"4", "20"}


def test_train_anchor_loss_only_changes_the_loss(runs: Path, tmp_path: Path) -> None:
    """With lambda = 0 the anchor path leaves training exactly as with the option off
    (same data order, same random draws, same weights); with lambda = 1 it changes them."""

    def weights(out: Path, **kwargs: object) -> dict[str, torch.Tensor]:
        train("sd1", _options(runs, out, **kwargs))
        with safe_open(str(out / "sd1.safetensors"), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    off = weights(tmp_path / "off")
    zero = weights(tmp_path / "zero", anchor_loss=True, anchor_weight=0.0, anchor_width=1e4)
    one = weights(tmp_path / "one", anchor_loss=True, anchor_weight=1.0, anchor_width=1e4)
    assert off.keys() == zero.keys() == one.keys()
    assert all(torch.equal(off[k], zero[k]) for k in off)
    assert any(not torch.equal(off[k], one[k]) for k in off)
