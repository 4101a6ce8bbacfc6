"""Every training stage runs end to end on a tiny simulated set, and the cascade built from
the resulting weights restores slices (tiny models, CPU)."""

from __future__ import annotations

import json
import logging
import shutil
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from pet_recon.cascade import Cascade, inference_autocast, native_bf16, neighbour_stack
from pet_recon.errors import PetReconError
from pet_recon.meta.encoder import MetaEncoder, load_meta_encoder
from pet_recon.models.sinogram import project_image
from pet_recon.training import TrainOptions, retrieval_on_split, train

CPU = torch.device("cpu")


def test_train_writes_reports_and_checkpoints(runs: Path) -> None:
    for stage in ("srm", "mi-encoder", "sd1", "sd2"):
        report = json.loads((runs / stage / f"{stage}.json").read_text())
        assert report["stage"] == stage and report["seconds"] > 0
        assert (runs / stage / "checkpoint.safetensors").exists()
    srm = json.loads((runs / "srm" / "srm.json").read_text())["metrics"]
    assert srm["poisson_loss"] > 0 and srm["poisson_loss_low_dose"] > 0
    unet = json.loads((runs / "unet" / "unet.json").read_text())["metrics"]
    assert np.isfinite(unet["psnr_db_unet"]) and unet["val_slices"] > 0


def test_train_resume_continues_from_checkpoint(runs: Path) -> None:
    from pet_recon.training import checkpoint_seconds

    earlier = checkpoint_seconds(runs / "srm" / "checkpoint.safetensors")
    opts = TrainOptions(data=runs / "data", out=runs / "srm", steps=3, device=CPU,
                        batch_size=4, log_every=1, checkpoint_every=1)
    report = train("srm", opts)
    # Training time adds up over resumed runs (validation and set-up not counted).
    assert 0 < earlier < report["train_seconds"] < earlier + report["seconds"]
    from safetensors import safe_open

    with safe_open(str(runs / "srm" / "checkpoint.safetensors"), framework="pt") as f:
        assert f.metadata()["step"] == "3"


def test_train_sd1_without_frozen_srm_is_refused(runs: Path, tmp_path: Path) -> None:
    opts = TrainOptions(data=runs / "data", out=tmp_path, steps=1, device=CPU, frozen=None)
    with pytest.raises(PetReconError, match="--frozen"):
        train("sd1", opts)


def test_train_mi_encoder_lock_text_keeps_sd2_tokens(runs: Path, tmp_path: Path) -> None:
    from pet_recon.meta.encoder import load_meta_encoder
    from pet_recon.weights import sha256_file

    opts = TrainOptions(data=runs / "data", out=tmp_path, steps=3, device=CPU, batch_size=4,
                        log_every=1, frozen=runs / "weights", trust_frozen=True,
                        lock_text=True)
    report = train("mi-encoder", opts)
    base, tokenizer = load_meta_encoder(runs / "weights" / "mi-encoder.safetensors")
    path = Path(report["weights"])
    new, _ = load_meta_encoder(path, expected_sha256=sha256_file(path))
    old_text, new_text = base.text.state_dict(), new.text.state_dict()
    for name, tensor in old_text.items():
        if name.startswith("proj."):
            assert not torch.equal(tensor, new_text[name])  # the pooled head is trained
        else:
            assert torch.equal(tensor, new_text[name]), name
    ids, numeric, mask = tokenizer.encode_batch(["PET FDG, dose level 1/20 of full dose."])
    with torch.no_grad():
        assert torch.equal(base.text(ids, numeric, mask)[0], new.text(ids, numeric, mask)[0])
    assert new.config["image_scalars"] == 2 and new.config["in_channels"] == 3
    with pytest.raises(PetReconError, match="--frozen"):
        train("mi-encoder", replace(opts, out=tmp_path / "again", frozen=None))


def test_train_sd1_init_starts_from_frozen_weights(runs: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pet_recon.diffusion.schedule import NoiseSchedule
    from pet_recon.training import _train_command
    from pet_recon.weights import sha256_file

    seen: list[torch.Tensor] = []
    q_sample = NoiseSchedule.q_sample
    monkeypatch.setattr(NoiseSchedule, "q_sample",
                        lambda self, x0, t, noise: seen.append(t) or q_sample(self, x0, t, noise))
    opts = TrainOptions(data=runs / "data", out=tmp_path / "still", steps=1, device=CPU,
                        batch_size=4, patch=32, frozen=runs / "weights", trust_frozen=True,
                        init=True, pure_noise_p=1.0, lr=0.0)
    report = train("sd1", opts)
    assert torch.cat(seen).tolist() == [1000] * 4  # every item at t = T
    for name in ("sd1.safetensors", "sinogram-branch.safetensors"):
        frozen = load_file(runs / "weights" / name)
        for key, tensor in load_file(tmp_path / "still" / name).items():
            # lr 0: the frozen weights (up to the EMA's rounding)
            assert torch.allclose(tensor, frozen[key], rtol=1e-6, atol=1e-7), (name, key)
    assert "--init --pure-noise-p 1.0" in _train_command("sd1", report["options"])
    with safe_open(report["weights"], framework="pt") as f:  # provenance of the fine-tune
        init = json.loads(f.metadata()["extra"])["init_sha256"]
    assert init == {name: sha256_file(runs / "weights" / name)
                    for name in ("sd1.safetensors", "sinogram-branch.safetensors")}
    moved = load_file(train("sd1", replace(opts, out=tmp_path / "moved", lr=1e-2, steps=3,
                                           ema_decay=0.0))["weights"])
    frozen = load_file(runs / "weights" / "sd1.safetensors")
    assert max(float((moved[k] - frozen[k]).abs().max()) for k in frozen) > 1e-4
    with pytest.raises(PetReconError, match="--pure-noise-p is an option of sd1, not sd2"):
        train("sd2", replace(opts, out=tmp_path / "sd2"))
    with pytest.raises(PetReconError, match=r"--pure-noise-p must be in \[0, 1\]"):
        train("sd1", replace(opts, out=tmp_path / "bad", pure_noise_p=1.5))


def test_train_sd2_sd1_input_starts_from_sd1_outputs(runs: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pet_recon.diffusion.schedule import RESAMPLE_STEP, NoiseSchedule
    from pet_recon.training import _train_command
    from pet_recon.weights import sha256_file

    starts: list[tuple[torch.Tensor, torch.Tensor]] = []  # training's (per-item t)
    q_sample = NoiseSchedule.q_sample

    def recorded_q_sample(self: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor | int,
                          noise: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.Tensor):  # not the DDIM steps of SD1 (one int t)
            starts.append((x0.clone(), t))
        return q_sample(self, x0, t, noise)

    monkeypatch.setattr(NoiseSchedule, "q_sample", recorded_q_sample)
    outputs: list[tuple[torch.Tensor, int]] = []
    restore = Cascade.restore

    def recorded(self: Cascade, *args: object, **kwargs: object) -> torch.Tensor:
        out = restore(self, *args, **kwargs)
        outputs.append((out.clone(), kwargs["resample_step"]))  # type: ignore[arg-type]
        return out

    monkeypatch.setattr(Cascade, "restore", recorded)
    # 32 x 32 slices, 32 x 32 patches: the patch is the whole slice.
    opts = TrainOptions(data=runs / "data", out=tmp_path / "still", steps=1, device=CPU,
                        batch_size=4, patch=32, frozen=runs / "weights", trust_frozen=True,
                        init=True, sd1_input_p=1.0, lr=0.0)
    report = train("sd2", opts)
    (start, t), = starts
    (sd1, resample_step), = outputs
    assert resample_step == 0  # SD1 alone, as reconstruct runs it before re-noising
    assert torch.equal(start, sd1)  # every item's x_t re-noises SD1's output ...
    assert 1 <= int(t.min()) and int(t.max()) <= RESAMPLE_STEP  # ... to t <= N
    frozen = load_file(runs / "weights" / "sd2.safetensors")
    for key, tensor in load_file(report["weights"]).items():  # lr 0: the frozen SD2
        assert torch.allclose(tensor, frozen[key], rtol=1e-6, atol=1e-7), key
    with safe_open(report["weights"], framework="pt") as f:
        extra = json.loads(f.metadata()["extra"])
    assert extra["init_sha256"] == {"sd2.safetensors": sha256_file(runs / "weights" /
                                                                   "sd2.safetensors")}
    assert "--init --sd1-input-p 1.0" in _train_command("sd2", report["options"])
    starts.clear(), outputs.clear()
    train("sd2", replace(opts, out=tmp_path / "plain", sd1_input_p=0.0, init=False))
    assert not outputs and int(starts[0][1].max()) > RESAMPLE_STEP  # full dose, t up to 400
    for stage, change, message in (
            ("sd1", {"sd1_input_p": 0.5}, "--sd1-input-p is an option of sd2, not sd1"),
            ("sd2", {"sd1_input_p": 2.0}, r"--sd1-input-p must be in \[0, 1\]"),
            ("srm", {"init": True, "sd1_input_p": 0.0}, "--init is an option of sd1 and sd2"),
            ("sd2", {"frozen": tmp_path / "none"}, "none/sd1.safetensors: not found")):
        with pytest.raises(PetReconError, match=message):
            train(stage, replace(opts, out=tmp_path / "bad", **change))


def test_lesion_weights_mark_dilated_lesions() -> None:
    from pet_recon.physics.phantoms import LESION_BASE, Label
    from pet_recon.training import lesion_weights

    labels = torch.full((2, 8, 8), int(Label.LIVER))
    labels[0, 3, 4] = LESION_BASE + 1
    weights = lesion_weights(labels, 4.0)
    expected = torch.ones(2, 1, 8, 8)
    expected[0, 0, 2:5, 3:6] = 5.0  # the lesion pixel and its 8 neighbours
    assert weights.dtype == torch.float32 and torch.equal(weights, expected)


def test_train_sd2_lesion_weight_weights_the_squared_error(
        runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pet_recon.training as training

    losses: list[float] = []
    step = training._Run.step
    monkeypatch.setattr(training._Run, "step", lambda self, i, loss: losses.append(
        float(loss.detach())) or step(self, i, loss))
    seen: list[tuple[torch.Tensor, float]] = []
    monkeypatch.setattr(training, "lesion_weights", lambda labels, weight: seen.append(
        (labels, weight)) or torch.full((labels.shape[0], 1, *labels.shape[1:]), 3.0))
    opts = TrainOptions(data=runs / "data", out=tmp_path / "plain", steps=2, device=CPU,
                        batch_size=4, patch=32, frozen=runs / "weights", trust_frozen=True,
                        lr=0.0, bf16=False)
    train("sd2", opts)
    plain, losses[:] = list(losses), []
    report = train("sd2", replace(opts, out=tmp_path / "weighted", lesion_weight=2.5))
    # Same batches, noise and timesteps; every pixel weighted 3 (the stand-in map).
    assert losses == pytest.approx([3 * loss for loss in plain], rel=1e-5)
    labels, weight = seen[0]
    assert labels.shape == (4, 32, 32) and labels.dtype == torch.int64 and weight == 2.5
    assert "--lesion-weight 2.5" in training._train_command("sd2", report["options"])
    for stage, change, message in (
            ("srm", {"lesion_weight": 1.0}, "--lesion-weight is an option of sd1, sd2, anatomy"),
            ("sd2", {"lesion_weight": -1.0}, "--lesion-weight must be >= 0")):
        with pytest.raises(PetReconError, match=message):
            train(stage, replace(opts, out=tmp_path / "bad", **change))


class _Oracle(torch.nn.Module):
    """Embeds prompt ``i`` and image ``i`` of a batch on axis ``i`` (images shifted by
    ``shift``): retrieval is 1 without a shift and 0 with one."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift
        self.image = types.SimpleNamespace(scalars=2)  # the inputs it is given

    def forward(self, ids: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(ids.shape[0])
        return eye, torch.roll(eye, self.shift, dims=0)


def test_retrieval_on_split_known_answers(runs: Path) -> None:
    tokenizer = load_meta_encoder(runs / "weights" / "mi-encoder.safetensors")[1]
    for shift, expected in ((0, 1.0), (1, 0.0)):
        result = retrieval_on_split(_Oracle(shift), tokenizer, runs / "data", CPU, batches=2,
                                    batch_size=4)
        assert result == {"retrieval_top1": expected, "batches": 2, "batch_size": 4,
                          "chance": 0.25}
        volume = retrieval_on_split(_Oracle(shift), tokenizer, runs / "data", CPU, batches=2,
                                    batch_size=4, volume=True)
        assert volume == {**result, "retrieval_top1_volume": expected}
    too_few = retrieval_on_split(_Oracle(0), tokenizer, runs / "data", CPU, batch_size=32)
    assert too_few["batches"] == 0 and np.isnan(too_few["retrieval_top1"])


def test_retrieval_on_split_takes_one_or_two_scalar_towers(runs: Path) -> None:
    """Towers trained before the noise scalar (one scalar) are still measured."""
    base, tokenizer = load_meta_encoder(runs / "weights" / "mi-encoder.safetensors")
    assert base.image.scalars == 2
    for scalars in (1, 2):
        model = MetaEncoder(**{**base.config, "image_scalars": scalars})
        result = retrieval_on_split(model, tokenizer, runs / "data", CPU, batches=1,
                                    batch_size=4)
        assert 0.0 <= result["retrieval_top1"] <= 1.0


def test_train_command_lists_lr_frozen_and_lock_text() -> None:
    from pet_recon.training import _train_command

    options = {"steps": "6000", "batch_size": "32", "lr": "0.001", "frozen": "/runs/frozen",
               "trust_frozen": "True", "lock_text": "True"}
    assert _train_command("mi-encoder", options) == (
        "petrecon train mi-encoder --data DATA --out RUNS/mi-encoder --steps 6000 "
        "--batch-size 32 --lr 0.001 --frozen FROZEN --trust-frozen --lock-text")
    assert _train_command("srm", {"steps": "600", "batch_size": "8", "lr": "0.0002",
                                  "frozen": "None"}).endswith("--steps 600 --batch-size 8")


def test_cascade_restores_slices_deterministically(runs: Path) -> None:
    cascade = Cascade.load(runs / "weights", CPU)
    volume = torch.rand(3, 32, 32).numpy()
    low = torch.from_numpy(neighbour_stack(volume, cascade.neighbours))
    outs = [cascade.restore(low, None, "PET FDG.", steps=2, sd2_steps=2, resample_step=50,
                            generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert outs[0].shape == (3, 1, 32, 32)
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize(("avx512_bf16", "amx", "native"),
                         [(False, False, False), (True, False, True), (False, True, True)])
def test_native_bf16_cpu_follows_bf16_instructions(monkeypatch: pytest.MonkeyPatch,
                                                   avx512_bf16: bool, amx: bool,
                                                   native: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert native_bf16(cpu) is native and native_bf16(torch.device("cuda"))
    with inference_autocast(cpu):
        out = torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3))
    assert out.dtype == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("measured", [True, False])
def test_cascade_mirror_is_a_pass_on_mirrored_planes_with_mirrored_features(
        runs: Path, monkeypatch: pytest.MonkeyPatch, measured: bool) -> None:
    # The second pass is SD1 -> SD2 on the mirrored planes and noise, with the sinogram
    # branch's features of the (measured or projected) sinogram computed once and mirrored:
    # equal to the plain cascade on the mirrored planes with the unmirrored planes' sinogram
    # and a branch that mirrors its own output. The progressive estimates are averaged alike.
    cascade = Cascade.load(runs / "weights", CPU)
    c = cascade.neighbours
    low = torch.from_numpy(neighbour_stack(torch.rand(2, 32, 32).numpy(), c))
    sino = project_image(torch.rand(2, 1, 32, 32)) if measured else None
    noise = (torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32))
    kwargs = {"steps": 2, "sd2_steps": 2, "resample_step": 50, "anchor_steps": [18, 70]}
    anchors: dict[int, torch.Tensor] = {}
    out = cascade.restore(low, sino, "PET FDG.", noise=noise, mirror=True,
                          anchor_images=anchors, **kwargs)
    first_anchors: dict[int, torch.Tensor] = {}
    first = cascade.restore(low, sino, "PET FDG.", noise=noise, anchor_images=first_anchors,
                            **kwargs)
    assert not torch.allclose(out, first)
    branch = cascade.branch
    monkeypatch.setattr(cascade, "branch", lambda s: [f.flip(-1) for f in branch(s)])
    second_anchors: dict[int, torch.Tensor] = {}
    second = cascade.restore(
        low.flip(-1), project_image(low[:, c : c + 1]) if sino is None else sino, "PET FDG.",
        noise=(noise[0].flip(-1), noise[1].flip(-1)), anchor_images=second_anchors, **kwargs)
    torch.testing.assert_close(out, (first + second.flip(-1)) / 2)
    for t_k in (18, 70):
        torch.testing.assert_close(
            anchors[t_k], (first_anchors[t_k] + second_anchors[t_k].flip(-1)) / 2)


def test_cascade_mirror_runs_the_sinogram_branch_and_encoder_once(runs: Path) -> None:
    cascade = Cascade.load(runs / "weights", CPU)
    low = torch.from_numpy(neighbour_stack(torch.rand(2, 32, 32).numpy(), cascade.neighbours))
    calls: list[str] = []
    cascade.branch.register_forward_hook(lambda *_: calls.append("branch"))
    cascade.encoder.text.register_forward_hook(lambda *_: calls.append("text"))
    stages: list[str] = []
    cascade.restore(low, None, "PET FDG.", steps=2, sd2_steps=2, resample_step=50,
                    mirror=True, callback=lambda stage, _: stages.append(stage),
                    generator=torch.Generator().manual_seed(0))
    assert calls == ["branch", "text"]
    assert stages == ["sd1", "sd1", "sd2", "sd2"] * 2


def test_cascade_sd2_first_swaps_stage_order(runs: Path) -> None:
    cascade = Cascade.load(runs / "weights", CPU)
    low = torch.from_numpy(neighbour_stack(torch.rand(2, 32, 32).numpy(), cascade.neighbours))
    order: list[str] = []
    for sd2_first in (False, True):
        cascade.restore(low, None, "PET FDG.", steps=2, sd2_steps=2, resample_step=50,
                        sd2_first=sd2_first, callback=lambda stage, _: order.append(stage),
                        generator=torch.Generator().manual_seed(0))
    assert order == ["sd1", "sd1", "sd2", "sd2", "sd2", "sd2", "sd1", "sd1"]


def test_cascade_shared_noise_gives_equal_slices_for_equal_inputs(runs: Path) -> None:
    cascade = Cascade.load(runs / "weights", CPU)
    low = torch.from_numpy(neighbour_stack(np.ones((3, 32, 32), np.float32), 1))
    shared = (torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32))
    kwargs = {"steps": 2, "sd2_steps": 2, "resample_step": 50}
    out = cascade.restore(low, None, "PET FDG.", noise=shared, **kwargs)
    torch.testing.assert_close(out[0], out[2])
    independent = cascade.restore(low, None, "PET FDG.", **kwargs,
                                  generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(independent[0], independent[2])


def test_cascade_refuses_tampered_weights(runs: Path, tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    for path in (runs / "weights").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    sd2 = folder / "sd2.safetensors"
    data = bytearray(sd2.read_bytes())
    data[-1] ^= 0xFF
    sd2.write_bytes(bytes(data))
    with pytest.raises(PetReconError, match="sd2.safetensors"):
        Cascade.load(folder, CPU)


def test_reconstruct_mig_dm_end_to_end(runs: Path, tmp_path: Path) -> None:
    from pet_recon.io.series import read_series
    from pet_recon.physics.simulate import simulate_case, write_case
    from pet_recon.pipeline import CascadeOptions, reconstruct

    case = simulate_case("nema", 3, matrix=32, slices=3, drfs=(20,), device=CPU)
    write_case(case, tmp_path / "case")
    options = CascadeOptions(sino=tmp_path / "case" / "sino" / "ld_drf20.hs", drf=20, steps=2,
                             sd2_steps=2, weights=runs / "weights", device="cpu")
    reports = [
        reconstruct(tmp_path / "case" / "ld_drf20", tmp_path / f"out{i}", method="mig-dm",
                    cascade=options, progress=False)
        for i in range(2)
    ]
    params = reports[0]["parameters"]
    assert params["sinogram"].startswith("measured")
    assert set(params["weights_sha256"]) == {"srm", "branch", "sd1", "sd2", "mi_encoder"}
    assert {"sd1_s", "sd2_s", "sinogram_branch_s"} <= set(params["timings"])
    assert "1/20 of full dose (given)" in params["prompt"]
    out0, meta0 = read_series(tmp_path / "out0")
    out1, _ = read_series(tmp_path / "out1")
    np.testing.assert_array_equal(out0, out1)  # deterministic with the seed
    assert out0.shape == (3, 32, 32) and np.isfinite(out0).all()
    assert meta0.units == "BQML"
    # Averaging two samples: the report says so and the output differs from one sample.
    averaged = reconstruct(tmp_path / "case" / "ld_drf20", tmp_path / "avg", method="mig-dm",
                           cascade=replace(options, samples=2), progress=False)
    assert averaged["parameters"]["samples_averaged"] == 2
    assert "mean of 2 samples" in read_series(tmp_path / "avg")[1].headers[0].DerivationDescription
    assert not np.array_equal(read_series(tmp_path / "avg")[0], out0)
    # A mirrored second pass: said in the report and the derivation, and it changes the output.
    mirrored = reconstruct(tmp_path / "case" / "ld_drf20", tmp_path / "mir", method="mig-dm",
                           cascade=replace(options, mirror=True), progress=False)
    assert mirrored["parameters"]["mirrored_pass"] is True and params["mirrored_pass"] is False
    out_m, meta_m = read_series(tmp_path / "mir")
    assert "averaged with a mirrored pass" in meta_m.headers[0].DerivationDescription
    assert np.isfinite(out_m).all() and not np.array_equal(out_m, out0)


def test_publish_lists_weights_with_validation_metrics(runs: Path) -> None:
    from pet_recon.training import publish

    result = publish(runs, runs / "published", runs / "data", CPU)
    manifest = json.loads((runs / "published" / "manifest.json").read_text())
    assert {"srm.safetensors", "mi-encoder.safetensors", "sd1.safetensors", "sd2.safetensors",
            "sinogram-branch.safetensors"} <= set(manifest["models"])
    assert manifest["models"]["sd2.safetensors"]["training"]["steps"] == 2
    assert manifest["models"]["sd2.safetensors"]["training"]["data"] == str(runs / "data")
    assert "psnr_db_unet" in manifest["models"]["unet.safetensors"]["metrics"]
    assert result["validation"]["val_slices"] > 0
    assert "psnr_db_cascade" in result["validation"]
    Cascade.load(runs / "published", CPU)  # every hash verifies


def test_train_sd1_more_neighbours_widens_and_the_cascade_gives_each_its_planes(
        runs: Path, tmp_path: Path) -> None:
    from pet_recon.training import _train_command, publish

    weights = tmp_path / "weights"
    shutil.copytree(runs / "weights", weights)
    narrow = Cascade.load(weights, CPU)
    # lr 0: SD1 widened to 2 neighbour planes on either side, its outer kernels zero.
    opts = TrainOptions(data=runs / "data", out=tmp_path / "one" / "sd1", steps=1, device=CPU,
                        batch_size=4, patch=32, lr=0.0, frozen=weights, init=True, neighbours=2)
    report = train("sd1", opts)
    assert "--init --neighbours 2" in _train_command("sd1", report["options"])
    publish(tmp_path / "one", weights, runs / "data", CPU)
    wide = Cascade.load(weights, CPU)
    assert (wide.neighbours, wide.sd1_neighbours, wide.sd2_neighbours) == (2, 2, 1)
    volume = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    outer = volume[::-1].copy()  # other planes further out: the widened SD1 ignores them
    prompt = "Tracer: FDG."
    out_narrow = narrow.restore(torch.from_numpy(neighbour_stack(volume, 1)), None, prompt,
                                generator=torch.Generator().manual_seed(0))
    stack = neighbour_stack(volume, 2)
    stack[:, [0, 4]] = neighbour_stack(outer, 2)[:, [0, 4]]
    out_wide = wide.restore(torch.from_numpy(stack), None, prompt,
                            generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out_narrow, out_wide, atol=1e-5)
    # SD2 (one plane either side) trained from the wider SD1's outputs: each its own planes.
    sd2 = train("sd2", replace(opts, out=tmp_path / "sd2", neighbours=1, sd1_input_p=1.0))
    assert Path(sd2["weights"]).exists()
    with pytest.raises(PetReconError, match="not an SD1 to fine-tune with 0 neighbour planes"):
        train("sd1", replace(opts, out=tmp_path / "fewer", neighbours=0))
    with pytest.raises(PetReconError, match="--neighbours is an option of sd1, sd2 and unet, "
                                            "not anatomy"):
        train("anatomy", replace(opts, out=tmp_path / "anatomy", init=False))


def test_publish_one_retrained_stage_keeps_the_others(runs: Path, tmp_path: Path) -> None:
    from pet_recon.training import publish
    from pet_recon.weights import sha256_file

    weights = tmp_path / "weights"
    publish(runs, weights, runs / "data", CPU)
    before = json.loads((weights / "manifest.json").read_text())["models"]
    train("sd1", TrainOptions(data=runs / "data", out=tmp_path / "one" / "sd1", steps=3,
                              device=CPU, batch_size=4, patch=32, lr=1e-2, ema_decay=0.0,
                              frozen=weights, init=True))
    result = publish(tmp_path / "one", weights, runs / "data", CPU)
    after = json.loads((weights / "manifest.json").read_text())["models"]
    assert result["entries"] == ["sd1.safetensors", "sinogram-branch.safetensors"]
    assert "sd2.safetensors" in result["kept"] and "srm.safetensors" not in result["kept"]
    new_sd1 = sha256_file(tmp_path / "one" / "sd1" / "sd1.safetensors")
    assert after["sd1.safetensors"]["sha256"] == new_sd1 != before["sd1.safetensors"]["sha256"]
    assert "--init" in after["sd1.safetensors"]["training"]["command"]
    for name in ("sd2.safetensors", "srm.safetensors", "mi-encoder.safetensors"):
        assert after[name]["sha256"] == before[name]["sha256"]
    assert after["sd2.safetensors"]["metrics"] == result["validation"]
    assert "metrics_validated" in after["sd2.safetensors"]
    assert after["srm.safetensors"]["metrics"] == before["srm.safetensors"]["metrics"]
    Cascade.load(weights, CPU)  # every hash verifies
    with pytest.raises(PetReconError, match="srm.json: no training report"):
        publish(tmp_path / "one", tmp_path / "empty", runs / "data", CPU)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    with pytest.raises(PetReconError, match=r"broken/manifest.json: not valid JSON"):
        publish(tmp_path / "one", tmp_path / "broken", runs / "data", CPU)


def test_reconstruct_mig_dm_other_matrix_comes_back_on_input_grid(
        runs: Path, shared_data: Path, tmp_path: Path) -> None:
    """A 256 x 256, 4 mm series (the SUV DRO) goes to the 32 x 32 model grid of the tiny
    models and back: same geometry as the input, mean SUV over the body kept."""
    from pet_recon.io.series import read_series
    from pet_recon.pipeline import CascadeOptions, reconstruct

    source = shared_data / "suv_dro" / "DRO_0_0"
    options = CascadeOptions(drf=20, steps=2, sd2_steps=2, weights=runs / "weights",
                             device="cpu")
    report = reconstruct(source, tmp_path / "out", method="mig-dm", cascade=options,
                         progress=False)
    volume_in, meta_in = read_series(source)
    volume_out, meta_out = read_series(tmp_path / "out")
    assert volume_out.shape == volume_in.shape == (20, 256, 256)
    assert meta_out.geometry == meta_in.geometry
    assert report["parameters"]["model_grid"]["matrix"] == 32
    body_in = report["input"]["suv"]["suv_mean_body"]
    assert abs(report["output"]["suv"]["suv_mean_body"] / body_in - 1) < 0.02


def test_reconstruct_mig_dm_warns_when_mean_cannot_be_kept(
        runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from pet_recon.physics.simulate import simulate_case, write_case
    from pet_recon.pipeline import CascadeOptions, reconstruct

    caplog.set_level(logging.WARNING, logger="pet_recon.pipeline")  # whatever ran before
    restore = Cascade.restore
    monkeypatch.setattr(Cascade, "restore", lambda self, *args, **kwargs: -1.0 - restore(
        self, *args, **kwargs).abs())  # a broken model: negative everywhere
    case = simulate_case("nema", 3, matrix=32, slices=3, drfs=(20,), device=CPU)
    write_case(case, tmp_path / "case")
    options = CascadeOptions(drf=20, steps=2, sd2_steps=2, weights=runs / "weights",
                             device="cpu")
    report = reconstruct(tmp_path / "case" / "ld_drf20", tmp_path / "out", method="mig-dm",
                         cascade=options, progress=False)
    assert any("mean over the body is not positive" in w for w in report["warnings"])
    assert "mean over the body is not positive" in caplog.text  # stderr in the CLI
    assert "no sinogram given" in caplog.text


def test_reconstruct_mig_dm_rescale_is_not_biased_by_the_inputs_noise(
        runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At very low counts the input's own body mask is selected by its noise (the input's
    mean there is far above its mean over the real body). The rescale uses the restored
    volume's mask instead: a restoration that returns the full-dose image, at any scale,
    keeps the input's mean over the full-dose image's body."""
    from pet_recon.io.series import read_series
    from pet_recon.metrics import body_mask
    from pet_recon.physics.simulate import simulate_case, write_case
    from pet_recon.pipeline import CascadeOptions, reconstruct

    case = simulate_case("nema", 3, matrix=32, slices=3, drfs=(100,), device=CPU)
    write_case(case, tmp_path / "case")
    full = np.asarray(case.images[1], dtype=np.float32)
    monkeypatch.setattr(Cascade, "restore", lambda self, low, *args, **kwargs:
                        torch.from_numpy(0.3 * full[:, None]))  # the 32 x 32 model grid
    options = CascadeOptions(drf=100, weights=runs / "weights", device="cpu", batch_size=8)
    report = reconstruct(tmp_path / "case" / "ld_drf100", tmp_path / "out", method="mig-dm",
                         cascade=options, progress=False)
    low, meta = read_series(tmp_path / "case" / "ld_drf100")
    out, _ = read_series(tmp_path / "out")
    body, body_low = body_mask(full, meta.geometry.spacing), body_mask(low, meta.geometry.spacing)
    assert low[body_low].mean() / low[body].mean() > 1.2  # the input's mask is biased
    assert out[body].mean() / low[body].mean() == pytest.approx(1.0, abs=0.01)
    assert report["output"]["suv"]["suv_mean_body"] == pytest.approx(
        report["input"]["suv"]["suv_mean_body"], rel=1e-3)  # over the mask the rescale used


def test_cascade_anchor_estimates_leave_main_output_unchanged(runs: Path) -> None:
    """Progressive output: one SD2 estimate per anchor step, below and above N; an anchor on
    the sampler's grid is the sampler's own x0_hat there; the main output does not move."""
    cascade = Cascade.load(runs / "weights", CPU)
    low = torch.from_numpy(neighbour_stack(torch.rand(2, 32, 32).numpy(), cascade.neighbours))
    kwargs = {"steps": 2, "sd2_steps": 2, "resample_step": 50}
    plain = cascade.restore(low, None, "PET FDG.", **kwargs,
                            generator=torch.Generator().manual_seed(3))
    seen: dict[int, torch.Tensor] = {}
    images: dict[int, torch.Tensor] = {}
    out = cascade.restore(low, None, "PET FDG.", **kwargs, anchor_steps=[25, 18, 80],
                          anchor_images=images, generator=torch.Generator().manual_seed(3),
                          callback=lambda stage, info: seen.setdefault(info.t, info.x0_pred)
                          if stage == "sd2" else None)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    assert sorted(images) == [18, 25, 80]
    assert all(v.shape == (2, 1, 32, 32) and torch.isfinite(v).all() for v in images.values())
    torch.testing.assert_close(images[25], seen[25])  # SD2's grid from 50 in 2 steps: 50, 25
    assert not torch.allclose(images[18], images[25])


def test_cascade_anchor_steps_out_of_range_are_refused(runs: Path) -> None:
    cascade = Cascade.load(runs / "weights", CPU)
    low = torch.from_numpy(neighbour_stack(torch.rand(1, 32, 32).numpy(), cascade.neighbours))
    with pytest.raises(PetReconError, match="anchor timesteps must be in 1..400"):
        cascade.restore(low, None, "PET FDG.", steps=1, sd2_steps=1, anchor_steps=[500],
                        anchor_images={})
    with pytest.raises(PetReconError, match="needs SD2 after SD1"):
        cascade.restore(low, None, "PET FDG.", steps=1, resample_step=0, anchor_steps=[20],
                        anchor_images={})


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_reconstruct_progressive_writes_one_conformant_series_per_anchor(
        runs: Path, tmp_path: Path, dciodvfy_errors: Callable[[Path], list[str]]) -> None:
    from pet_recon.evaluate import evaluate
    from pet_recon.io.series import read_series
    from pet_recon.physics.simulate import simulate_case, write_case
    from pet_recon.pipeline import CascadeOptions, reconstruct

    cascade = Cascade.load(runs / "weights", CPU)
    assert sorted(cascade.anchors) == [4, 20]  # the tiny SD2 was trained with the anchor loss
    case = simulate_case("nema", 3, matrix=32, slices=3, drfs=(20,), device=CPU)
    write_case(case, tmp_path / "case")
    options = CascadeOptions(drf=20, steps=2, sd2_steps=2, weights=runs / "weights",
                             device="cpu", progressive=True)
    report = reconstruct(tmp_path / "case" / "ld_drf20", tmp_path / "out", method="mig-dm",
                         cascade=options, progress=False)
    (entry,) = report["progressive"]  # anchors 1 < k < 20: only k = 4
    assert entry["drf"] == 4 and entry["timestep"] == cascade.anchors[4]
    folder = tmp_path / "out" / "progressive" / "drf-4"
    assert entry["path"] == str(folder) and entry["n_files"] == 3
    anchor, meta = read_series(folder)
    with pytest.raises(PetReconError, match="2 PET series found; choose one with --series-uid"):
        read_series(tmp_path / "out")
    main_uid = pydicom.dcmread(tmp_path / "out" / "IM_0001.dcm").SeriesInstanceUID
    main, main_meta = read_series(tmp_path / "out", series_uid=main_uid)
    scores = evaluate(tmp_path / "out", folder, pred_series_uid=main_uid)  # main vs 1/4 dose
    assert np.isfinite(scores["image_quality"]["psnr_db"])
    assert anchor.shape == main.shape and not np.array_equal(anchor, main)
    assert meta.source.series_instance_uid != main_meta.source.series_instance_uid
    assert meta.source.series_number == main_meta.source.series_number + 1
    header = meta.headers[0]
    assert header.SeriesDescription == "petrecon mig-dm 1/4-dose equivalent"
    assert "MAP-Diff progressive output" in header.DerivationDescription
    body_in = report["input"]["suv"]["suv_mean_body"]
    assert abs(entry["suv"]["suv_mean_body"] / body_in - 1) < 0.02  # SUV-consistent
    assert dciodvfy_errors(folder) == []


def test_reconstruct_progressive_needs_anchors_and_dose_level(runs: Path, tmp_path: Path) -> None:
    from pet_recon.pipeline import CascadeOptions, _anchor_levels, reconstruct

    with pytest.raises(PetReconError, match="carry no dose anchors"):
        _anchor_levels({}, 20.0, tmp_path)
    with pytest.raises(PetReconError, match="needs the input's dose level; give --drf"):
        _anchor_levels({4: 18}, None, tmp_path)
    assert _anchor_levels({4: 18, 10: 33, 20: 50}, 20.0, tmp_path) == {4: 18, 10: 33}
    with pytest.raises(PetReconError, match="--progressive needs --method mig-dm"):
        reconstruct(tmp_path, tmp_path / "out", method="gaussian",
                    cascade=CascadeOptions(progressive=True), progress=False)
    with pytest.raises(PetReconError, match="--resample-step > 0"):
        reconstruct(tmp_path, tmp_path / "out", method="mig-dm",
                    cascade=CascadeOptions(progressive=True, resample_step=0), progress=False)
