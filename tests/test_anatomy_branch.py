"""Anatomy-guided SD2 (M2Diff, issue #7): the MR and CT branches and their fusion, ``petrecon
train anatomy``, ``Cascade.restore(anatomy=...)``, ``reconstruct --anatomy`` and the MR and CT
DICOM of the simulator (tiny models, CPU)."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from safetensors import safe_open
from safetensors.numpy import load_file
from typer.testing import CliRunner

from pet_recon.cascade import ANATOMY_BRANCH_FILES, ANATOMY_FILES, Cascade, neighbour_stack
from pet_recon.dataset import SliceStream, ct_misregistration, read_record
from pet_recon.errors import PetReconError
from pet_recon.models.anatomy import (
    TISSUE_CLASSES,
    AnatomyBranch,
    bound_to_detail,
    gaussian_blur,
    normalise_ct,
    normalise_mr,
    route_by_modality,
    tissue_classes,
)
from pet_recon.models.sinogram import crop_stage_features
from pet_recon.models.unet import UNet
from pet_recon.physics.phantoms import LESION_BASE, Label, rigid_move
from pet_recon.training import TrainOptions, train
from pet_recon.weights import load_model, save_model, sha256_file

CPU = torch.device("cpu")
TINY = {"base_channels": 8, "channel_mults": (1, 2, 2, 2), "attention_levels": (2, 3),
        "groups": 4}

pytestmark = pytest.mark.usefixtures("one_thread")


def _options(runs: Path, out: Path, **kwargs: object) -> TrainOptions:
    kwargs.setdefault("mismatch", 0.0)  # the tiny set has no brain shards (no mr_mismatch)
    return TrainOptions(data=runs / "data", out=out, steps=2, device=CPU, batch_size=4,
                        patch=32, log_every=1, checkpoint_every=1, frozen=runs / "weights",
                        trust_frozen=True, **kwargs)


def _extra(path: Path) -> dict[str, object]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["extra"])


@pytest.fixture(scope="module")
def brain_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny simulated brain study written by ``write_case`` (PET, sinograms, MR DICOM)."""
    from pet_recon.physics.simulate import simulate_case, write_case

    case = simulate_case("brain", 5, matrix=32, slices=4, drfs=(20,), device=CPU)
    out = tmp_path_factory.mktemp("brain") / "case"
    write_case(case, out)
    return out


# ----------------------------------------------------------------------------- branch


@pytest.mark.parametrize("neighbours", [0, 1, 2])
def test_anatomy_branch_outputs_match_unet_stage_contract(neighbours: int) -> None:
    unet = UNet(4, 1, **TINY)
    branch = AnatomyBranch(unet.stage_channels, neighbours=neighbours, channels=(8, 8, 16, 16),
                           groups=4)
    mr = torch.randn(2, 2 * neighbours + 1, 32, 48)
    encoded = branch.encode(mr)
    assert [tuple(f.shape) for f in branch(mr)] == [(2, *s) for s in unet.stage_shapes(32, 48)]
    assert [tuple(f.shape) for f in encoded] == [(2, 8, 32, 48), (2, 8, 16, 24),
                                                 (2, 16, 8, 12), (2, 16, 4, 6)]
    assert branch.segment(encoded).shape == (2, len(TISSUE_CLASSES), 32, 48)


def test_gaussian_blur_keeps_constants_and_spreads_a_point_by_sigma() -> None:
    flat = torch.full((2, 1, 24, 20), 3.0)
    assert torch.allclose(gaussian_blur(flat, (2.0, 1.5)), flat, atol=1e-6)
    point = torch.zeros(1, 1, 41, 41)
    point[0, 0, 20, 20] = 1.0
    spread = gaussian_blur(point, (2.0, 3.0))[0, 0]
    assert float(spread.sum()) == pytest.approx(1.0, abs=1e-5)
    x = torch.arange(41, dtype=torch.float32) - 20
    assert float((spread.sum(1) * x**2).sum()).__pow__(0.5) == pytest.approx(2.0, rel=0.02)
    assert float((spread.sum(0) * x**2).sum()).__pow__(0.5) == pytest.approx(3.0, rel=0.02)
    assert torch.equal(gaussian_blur(point, (0.0, 0.0)), point)


def test_bound_to_detail_removes_a_wide_change_and_keeps_a_fine_one() -> None:
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    disc = ((yy - 48) ** 2 + (xx - 48) ** 2 <= 18**2).float()  # a 36-pixel MR-only structure
    stripes = torch.where((xx.long() // 2) % 2 == 0, 1.0, -1.0)  # a 4-pixel-period detail
    pet_only = torch.full((1, 1, 96, 96), 5.0)
    wide = bound_to_detail(pet_only - 0.5 * disc, pet_only, (2.0, 2.0)) - pet_only
    inner = (yy - 48) ** 2 + (xx - 48) ** 2 <= 12**2
    assert float(wide[0, 0][inner].abs().max()) < 0.005  # was -0.5 everywhere inside
    fine = bound_to_detail(pet_only + 0.1 * stripes, pet_only, (2.0, 2.0)) - pet_only
    centre = (slice(16, 80), slice(16, 80))
    assert torch.allclose(fine[0, 0][centre], 0.1 * stripes[centre], atol=0.005)
    assert torch.equal(bound_to_detail(pet_only, pet_only, (2.0, 2.0)), pet_only)


def test_anatomy_branch_default_is_small_and_config_round_trips(tmp_path: Path) -> None:
    branch = AnatomyBranch((32, 64, 64, 64))
    assert sum(p.numel() for p in branch.parameters()) < 100_000
    assert branch.config == {"stage_channels": [32, 64, 64, 64], "neighbours": 1,
                             "channels": [16, 32, 32, 32], "n_classes": 5, "groups": 8}
    path = save_model(branch, tmp_path / "branch.safetensors")
    loaded, _ = load_model(path, registry={"AnatomyBranch": AnatomyBranch},
                           expected_sha256=sha256_file(path), device=CPU)
    assert loaded.config == branch.config


def test_anatomy_branch_mismatched_stages_refused() -> None:
    with pytest.raises(ValueError, match="one entry per stage"):
        AnatomyBranch((32, 64), channels=(16, 32, 32))
    with pytest.raises(ValueError, match="1 to 4 stages"):
        AnatomyBranch((8, 8, 8, 8, 8), channels=(8, 8, 8, 8, 8))


def test_anatomy_branch_zero_init_fusion_equals_pet_only_unet() -> None:
    torch.manual_seed(0)
    unet = UNet(4, 1, context_dim=16, **TINY)
    with torch.no_grad():  # every weight non-zero, so that the stages matter
        for p in unet.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    unet.eval()
    branch = AnatomyBranch(unet.stage_channels, channels=(8, 8, 16, 16), groups=4)
    x, t = torch.randn(2, 4, 32, 32), torch.tensor([5, 300])
    context, mask = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    mr = torch.rand(2, 3, 32, 32)
    plain = unet(x, t, context=context, context_mask=mask)
    fused = unet(x, t, context=context, context_mask=mask, stage_features=branch(mr))
    assert torch.equal(plain, fused)
    with torch.no_grad():
        branch.fusion[2].weight.fill_(0.05)
    moved = unet(x, t, context=context, context_mask=mask, stage_features=branch(mr))
    assert not torch.allclose(plain, moved)


def test_tissue_classes_maps_phantom_labels() -> None:
    labels = torch.tensor([Label.BACKGROUND, Label.CSF, Label.GREY_MATTER, Label.DEEP_GREY,
                           Label.CEREBELLUM, Label.WHITE_MATTER, Label.SKULL, Label.LIVER,
                           LESION_BASE, LESION_BASE + 7], dtype=torch.int16)
    assert tissue_classes(labels).tolist() == [0, 1, 2, 2, 2, 3, 4, 4, 4, 4]
    assert TISSUE_CLASSES[4] == "other"


def test_normalise_mr_divides_by_head_percentile_and_is_scale_free() -> None:
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:16, :64, :64]
    head = (x - 32) ** 2 + (y - 32) ** 2 < 24**2
    volume = np.where(head, rng.uniform(0.2, 1.0, head.shape), 0.01).astype(np.float32)
    normalised, scale = normalise_mr(volume, (2.0, 2.0, 2.0))
    assert scale == pytest.approx(np.percentile(volume[head], 99.0), rel=0.01)
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised, volume / scale, rtol=1e-6)
    scaled, scale_3 = normalise_mr(3.0 * volume, (2.0, 2.0, 2.0))
    np.testing.assert_allclose(scaled, normalised, rtol=1e-5)
    assert scale_3 == pytest.approx(3.0 * scale, rel=1e-5)
    with pytest.raises(ValueError, match="no signal"):
        normalise_mr(np.zeros((4, 8, 8), np.float32), (1.0, 1.0, 1.0))


def test_normalise_ct_maps_hu_linearly_and_clips() -> None:
    hu = np.array([[-2000.0, -1000.0, -500.0], [0.0, 1000.0, 3000.0]], np.float16)
    out = normalise_ct(hu)
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.5], [1.0, 2.0, 3.0]])


def test_route_by_modality_mixed_batch_equals_per_item_branches() -> None:
    torch.manual_seed(0)
    unet = UNet(4, 1, **TINY)
    branches = {m: AnatomyBranch(unet.stage_channels, channels=(8, 8, 16, 16), groups=4)
                for m in ("MR", "CT")}
    with torch.no_grad():  # non-zero fusion, so that the branches differ in their output
        for branch in branches.values():
            for conv in branch.fusion:
                conv.weight.normal_()
    anatomy = torch.rand(5, 3, 32, 32)
    modalities = ["CT", "MR", "MR", "CT", "MR"]
    calls: list[tuple[str, list[int]]] = []

    def output(modality: str, index: torch.Tensor) -> list[torch.Tensor]:
        calls.append((modality, index.tolist()))
        encoded = branches[modality].encode(anatomy[index])
        return branches[modality].fuse(crop_stage_features(encoded, 8, 0, 16))

    routed = route_by_modality(modalities, output)
    assert calls == [("CT", [0, 3]), ("MR", [1, 2, 4])]
    for i, modality in enumerate(modalities):
        alone = branches[modality].fuse(crop_stage_features(
            branches[modality].encode(anatomy[i : i + 1]), 8, 0, 16))
        for whole, one in zip(routed, alone, strict=True):
            torch.testing.assert_close(whole[i : i + 1], one, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- data


def test_slice_stream_with_anatomy_adds_mr_planes_and_labels(runs: Path) -> None:
    plain = list(SliceStream(runs / "data", "train", families=("body",), seed=2))
    with_mr = list(SliceStream(runs / "data", "train", families=("body",), seed=2,
                               with_anatomy=True))
    assert len(plain) == len(with_mr) > 0
    assert {item["case_id"].split("-")[0] for item in with_mr} == {"body"}
    for a, b in zip(plain, with_mr, strict=True):
        assert set(b) - set(a) == {"anatomy", "labels", "modality"}
        assert b["modality"] == "MR"
        torch.testing.assert_close(a["ld"], b["ld"])
        assert b["anatomy"].shape == (3, 32, 32) and b["anatomy"].dtype == torch.float32
        assert b["labels"].shape == (32, 32) and b["labels"].dtype == torch.int64
        # The centre plane is the item's MR plane divided by one scale per case.
        ratio = a["mr"][0] / b["anatomy"][1]
        assert torch.allclose(ratio[a["mr"][0] > 0.1], ratio[a["mr"][0] > 0.1].median())
    with pytest.raises(FileNotFoundError, match="brain-\\*.safetensors"):
        SliceStream(runs / "data", "train", families=("brain",))


def test_ct_misregistration_within_bounds() -> None:
    draws = random.Random(0)
    rotations, shifts = zip(*(ct_misregistration(draws) for _ in range(4000)), strict=True)
    rotation, shift = np.array(rotations), np.array(shifts)
    assert rotation.shape == shift.shape == (4000, 3)
    assert np.abs(rotation).max() <= 2.0 and np.abs(shift).max() <= 3.0
    assert np.abs(rotation).max() == 2.0 and np.abs(shift).max() == 3.0  # clipped tails
    assert np.std(rotation) == pytest.approx(0.96, abs=0.05)  # N(0, 1) clipped at 2 sd
    assert np.std(shift) == pytest.approx(1.44, abs=0.07)  # N(0, 1.5) clipped at 2 sd


def test_slice_stream_ct_items_tagged_normalised_misregistered_in_order(runs: Path) -> None:
    kwargs = {"families": ("body",), "seed": 2, "with_anatomy": True}
    mr = list(SliceStream(runs / "data", "train", **kwargs))
    ct = list(SliceStream(runs / "data", "train", **kwargs, modalities=("CT",)))
    mixed = list(SliceStream(runs / "data", "train", **kwargs, modalities=("MR", "CT")))
    assert len(mr) == len(ct) == len(mixed) > 0
    for a, b, c in zip(mr, ct, mixed, strict=True):  # same items, same order
        assert (a["case_id"], a["drf"]) == (b["case_id"], b["drf"]) == (c["case_id"], c["drf"])
        torch.testing.assert_close(a["ld"], c["ld"])
        assert b["modality"] == "CT" and c["modality"] in ("MR", "CT")
        torch.testing.assert_close(c["anatomy"], (b if c["modality"] == "CT" else a)["anatomy"])
    # Each case's CT: normalised, moved by its own draw from the case's generator.
    for case_id in {item["case_id"] for item in ct}:
        path = runs / "data" / "train" / f"{case_id}.safetensors"
        record = read_record(path)
        draws = random.Random(f"2-0-{case_id}")
        draws.random()  # the mismatch draw comes first, the modality's after the CT's move
        rotation, shift = ct_misregistration(draws)
        assert np.abs(rotation).max() <= 2.0 and np.abs(shift).max() <= 3.0
        volume = load_file(str(path))["ct"].astype(np.float32)
        moved = normalise_ct(rigid_move(volume, (record["plane_mm"], record["pixel_mm"],
                                                 record["pixel_mm"]), rotation, shift))
        assert not np.allclose(moved, normalise_ct(volume), atol=0.05)
        for item in (item for item in ct if item["case_id"] == case_id):
            centre = item["anatomy"][1].numpy()
            assert 0.0 <= centre.min() and centre.max() <= 3.0
            assert any(np.allclose(centre, plane, atol=1e-6) for plane in moved)


# ----------------------------------------------------------------------------- training


def test_train_anatomy_writes_unet_and_branches_with_metadata(runs: Path,
                                                                guided: Path) -> None:
    out = guided / "anatomy"
    report = json.loads((out / "anatomy.json").read_text())
    assert report["stage"] == "anatomy" and report["weights"] == str(
        out / "sd2-anatomy.safetensors")
    assert report["options"]["aux_weight"] == "0.1"
    unet_extra = _extra(out / "sd2-anatomy.safetensors")
    assert _extra(out / "anatomy-branch.safetensors") == unet_extra
    assert _extra(out / "anatomy-branch-ct.safetensors") == unet_extra
    assert unet_extra["max_t"] == 400 and unet_extra["neighbours"] == 1
    assert unet_extra["prediction"] == "x0" and unet_extra["schedule"]["num_steps"] == 1000
    anatomy = unet_extra["anatomy"]
    assert anatomy["aux_weight"] == 0.1 and anatomy["modalities"] == ["MR", "CT"]
    assert "modality" not in anatomy and anatomy["mismatch"] == 0.0
    assert anatomy["ct_normalisation"] == {"function": "pet_recon.models.anatomy.normalise_ct",
                                           "offset_hu": 1000.0, "scale_hu": 1000.0,
                                           "clip": [0.0, 3.0]}
    assert anatomy["ct_misregistration"]["translation_max_mm"] == 3.0
    assert anatomy["tissue_classes"] == list(TISSUE_CLASSES)
    assert anatomy["label_to_tissue"]["CEREBELLUM"] == 2
    assert anatomy["mr_normalisation"]["percentile"] == 99.0
    assert anatomy["families"] == ["body"]
    assert anatomy["initialised_from"] == {
        "file": "sd2.safetensors", "sha256": sha256_file(runs / "weights" / "sd2.safetensors")}
    registry = {"UNet": UNet, "AnatomyBranch": AnatomyBranch}
    unet, _ = load_model(out / "sd2-anatomy.safetensors", registry=registry,
                         expected_sha256=sha256_file(out / "sd2-anatomy.safetensors"), device=CPU)
    sd2, _ = load_model(runs / "weights" / "sd2.safetensors", registry=registry, device=CPU)
    assert unet.config == sd2.config
    for name in ("anatomy-branch.safetensors", "anatomy-branch-ct.safetensors"):
        branch, _ = load_model(out / name, registry=registry,
                               expected_sha256=sha256_file(out / name), device=CPU)
        assert branch.config["stage_channels"] == list(unet.stage_channels)


def test_train_anatomy_mr_only_writes_two_files_and_unknown_modality_refused(
        runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "mr"
    train("anatomy", replace(_options(runs, out, families=("body",)), steps=1))
    assert not (out / "anatomy-branch-ct.safetensors").exists()
    assert _extra(out / "anatomy-branch.safetensors")["anatomy"]["modalities"] == ["MR"]
    with pytest.raises(PetReconError, match="^--modality must be among mr, ct, got pet$"):
        train("anatomy", _options(runs, tmp_path / "x", families=("body",),
                                  modalities=("pet",)))


def test_train_anatomy_resumes_from_checkpoint(runs: Path, guided: Path, tmp_path: Path) -> None:
    out = tmp_path / "anatomy"
    shutil.copytree(guided / "anatomy", out)
    train("anatomy", replace(_options(runs, out, families=("body",), aux_weight=0.5,
                                      modalities=("MR", "CT")), steps=3))
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        assert f.metadata()["step"] == "3"
    assert any(key.startswith("model.branch_ct.") for key in load_file(
        str(out / "checkpoint.safetensors")))
    for name in ("anatomy-branch.safetensors", "anatomy-branch-ct.safetensors"):
        assert _extra(out / name)["anatomy"]["aux_weight"] == 0.5


def test_train_anatomy_without_brain_shards_or_sd2_is_refused(runs: Path,
                                                               tmp_path: Path) -> None:
    with pytest.raises(PetReconError, match="no shards \\(brain-\\*.safetensors, with labels"):
        train("anatomy", _options(runs, tmp_path / "a"))
    with pytest.raises(PetReconError, match="body-\\*.safetensors, with labels and mr and "
                                            "mr_mismatch"):
        train("anatomy", _options(runs, tmp_path / "a", families=("body",), mismatch=0.5))
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    shutil.copyfile(runs / "weights" / "mi-encoder.safetensors",
                    frozen / "mi-encoder.safetensors")
    with pytest.raises(PetReconError, match="sd2.safetensors: not found"):
        train("anatomy", replace(_options(runs, tmp_path / "b", families=("body",)),
                                 frozen=frozen))


def test_publish_lists_anatomy_weights(guided: Path, runs: Path) -> None:
    from pet_recon.training import publish

    result = publish(guided, guided / "published", runs / "data", CPU)
    manifest = json.loads((guided / "published" / "manifest.json").read_text())["models"]
    for name in (*ANATOMY_FILES.values(), ANATOMY_BRANCH_FILES["CT"]):
        assert manifest[name]["training"]["command"].startswith("petrecon train anatomy")
        assert manifest[name]["training"]["command"].endswith(
            "--modality mr --modality ct --mismatch 0.0")
        assert {"psnr_db_cascade_anatomy", "psnr_db_cascade_anatomy_ct"} <= set(
            manifest[name]["metrics"])
    assert np.isfinite(result["validation"]["psnr_db_cascade_anatomy"])
    assert np.isfinite(result["validation"]["psnr_db_cascade_anatomy_ct"])
    assert "unet.safetensors" not in manifest  # optional, and not in these runs
    assert Cascade.load(guided / "published", CPU).anatomy is not None


def test_publish_revalidate_replaces_only_cascade_metrics(guided: Path, runs: Path,
                                                          tmp_path: Path) -> None:
    from pet_recon.cli import app

    folder = tmp_path / "w"
    shutil.copytree(guided / "weights", folder)
    path = folder / "manifest.json"
    before = json.loads(path.read_text())["models"]
    for entry in before.values():
        entry["metrics"] = {"stale": 1.0}
    path.write_text(json.dumps({"format": 1, "models": before}))
    result = CliRunner().invoke(app, ["publish", "--revalidate", "--weights", str(folder),
                                      "--data", str(runs / "data"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    after = json.loads(path.read_text())["models"]
    assert set(after) == set(before)
    for name, entry in after.items():
        unchanged = {k: v for k, v in entry.items() if k not in ("metrics", "metrics_validated")}
        assert unchanged == {k: v for k, v in before[name].items() if k != "metrics"}
        if name in ("srm.safetensors", "mi-encoder.safetensors", "unet.safetensors"):
            assert entry["metrics"] == {"stale": 1.0} and "metrics_validated" not in entry
        else:
            assert np.isfinite(entry["metrics"]["psnr_db_cascade_anatomy"])
            assert entry["metrics_validated"]["git_commit"]
    assert Cascade.load(folder, CPU).anatomy is not None  # hashes still verify
    refused = CliRunner().invoke(app, ["publish", "--weights", str(folder),
                                       "--data", str(runs / "data")])
    assert refused.exit_code == 2 and "needs --runs, or --revalidate" in refused.output


# ----------------------------------------------------------------------------- cascade


def _inputs(cascade: Cascade) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(4)
    low = neighbour_stack(rng.random((2, 32, 32), dtype=np.float32), cascade.neighbours)
    mr = neighbour_stack(rng.random((2, 32, 32), dtype=np.float32), cascade.neighbours)
    return torch.from_numpy(low), torch.from_numpy(mr)


def test_cascade_restore_without_anatomy_unchanged_by_anatomy_weights(runs: Path,
                                                                      guided: Path) -> None:
    pet_only = Cascade.load(runs / "weights", CPU)
    cascade = Cascade.load(guided / "weights", CPU)
    assert pet_only.anatomy is None and cascade.anatomy is not None
    assert cascade.anatomy.branches == {}  # loaded when a run asks for one
    assert cascade.anatomy.available == ["MR", "CT"]
    assert cascade.hashes == pet_only.hashes
    low, _ = _inputs(cascade)
    kwargs = {"steps": 2, "sd2_steps": 2, "resample_step": 50}
    before = pet_only.restore(low, None, "PET FDG.", **kwargs,
                              generator=torch.Generator().manual_seed(1))
    after = cascade.restore(low, None, "PET FDG.", **kwargs,
                            generator=torch.Generator().manual_seed(1))
    assert torch.equal(before, after)


def test_cascade_restore_with_anatomy_uses_guided_sd2(guided: Path) -> None:
    cascade = Cascade.load(guided / "weights", CPU)
    low, mr = _inputs(cascade)
    kwargs = {"steps": 2, "sd2_steps": 2, "resample_step": 50}
    plain = cascade.restore(low, None, "PET FDG.", **kwargs,
                            generator=torch.Generator().manual_seed(2))
    timings: dict[str, float] = {}
    stages: list[str] = []
    out = cascade.restore(low, None, "PET FDG.", **kwargs, anatomy=mr, timings=timings,
                          callback=lambda stage, _: stages.append(stage),
                          generator=torch.Generator().manual_seed(2))
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    assert "anatomy_branch_s" in timings and stages == ["sd1", "sd1", "sd2", "sd2"]
    assert cascade.anatomy is not None and list(cascade.anatomy.branches) == ["MR"]
    # The guided U-Net with zero fusion is SD2: swapping SD2's U-Net in gives the plain output.
    cascade.anatomy.unet = cascade.sd2
    with torch.no_grad():
        for modality in ("MR", "CT"):
            for conv in cascade.anatomy.branch(modality).fusion:
                conv.weight.zero_()
                conv.bias.zero_()
    for modality in ("MR", "CT"):
        zero = cascade.restore(low, None, "PET FDG.", **kwargs, anatomy=mr, modality=modality,
                               generator=torch.Generator().manual_seed(2))
        assert torch.equal(zero, plain)
    with torch.no_grad():
        cascade.anatomy.branch("CT").fusion[0].weight.fill_(0.1)
    ct = cascade.restore(low, None, "PET FDG.", **kwargs, anatomy=mr, modality="CT",
                         generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(ct, plain)  # the CT branch's features, not the MR's
    assert torch.equal(cascade.restore(low, None, "PET FDG.", **kwargs, anatomy=mr,
                                       generator=torch.Generator().manual_seed(2)), plain)


def test_cascade_anchor_estimates_with_anatomy_leave_main_output_unchanged(
        guided: Path) -> None:
    cascade = Cascade.load(guided / "weights", CPU)
    low, mr = _inputs(cascade)
    kwargs = {"steps": 2, "sd2_steps": 2, "resample_step": 50, "anatomy": mr}
    main = cascade.restore(low, None, "PET FDG.", **kwargs,
                           generator=torch.Generator().manual_seed(3))
    images: dict[int, torch.Tensor] = {}
    out = cascade.restore(low, None, "PET FDG.", **kwargs, anchor_steps=[18, 80],
                          anchor_images=images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, main)
    assert sorted(images) == [18, 80]
    assert all(v.shape == (2, 1, 32, 32) and torch.isfinite(v).all() for v in images.values())


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_cascade_restore_anatomy_bound_is_guided_detail_on_pet_only(guided: Path,
                                                                    sampler: str) -> None:
    cascade = Cascade.load(guided / "weights", CPU)
    low, mr = _inputs(cascade)
    kwargs = {"steps": 2, "sd2_steps": 2, "resample_step": 50, "sampler": sampler}

    def run(**extra: object) -> torch.Tensor:
        return cascade.restore(low, None, "PET FDG.", **kwargs, **extra,
                               generator=torch.Generator().manual_seed(5))

    pet_only, guided_out = run(), run(anatomy=mr)
    assert not torch.allclose(pet_only, guided_out)
    bounded = run(anatomy=mr, anatomy_sigma_px=(1.5, 2.0))
    expected = bound_to_detail(guided_out, pet_only, (1.5, 2.0))
    assert torch.allclose(bounded, expected, atol=1e-5)
    assert not torch.allclose(bounded, guided_out) and not torch.allclose(bounded, pet_only)
    per_item = run(anatomy=mr, anatomy_sigma_px=[(1.5, 2.0), (1.5, 2.0)])
    assert torch.allclose(per_item, bounded, atol=1e-6)


def test_cascade_restore_anatomy_bound_anchors_from_pet_only_sd2(guided: Path) -> None:
    cascade = Cascade.load(guided / "weights", CPU)
    low, mr = _inputs(cascade)
    kwargs = {"steps": 2, "sd2_steps": 2, "resample_step": 50, "anchor_steps": [18, 80]}
    pet_images: dict[int, torch.Tensor] = {}
    cascade.restore(low, None, "PET FDG.", **kwargs, anchor_images=pet_images,
                    generator=torch.Generator().manual_seed(6))
    bounded_images: dict[int, torch.Tensor] = {}
    cascade.restore(low, None, "PET FDG.", **kwargs, anchor_images=bounded_images, anatomy=mr,
                    anatomy_sigma_px=(2.0, 2.0), generator=torch.Generator().manual_seed(6))
    assert sorted(bounded_images) == [18, 80]
    for t_k in (18, 80):
        assert torch.allclose(bounded_images[t_k], pet_images[t_k], atol=1e-6)


def test_cascade_restore_anatomy_errors(runs: Path, guided: Path, tmp_path: Path) -> None:
    pet_only = Cascade.load(runs / "weights", CPU)
    low, mr = _inputs(pet_only)
    with pytest.raises(PetReconError, match="no anatomy-guided SD2 \\(sd2-anatomy"):
        pet_only.restore(low, None, "PET FDG.", steps=1, sd2_steps=1, anatomy=mr)
    cascade = Cascade.load(guided / "weights", CPU)
    with pytest.raises(PetReconError, match="do not match the low-dose planes"):
        cascade.restore(low, None, "PET FDG.", steps=1, sd2_steps=1, anatomy=mr[:, :1])
    with pytest.raises(PetReconError, match="anatomy bound needs SD2 after SD1"):
        cascade.restore(low, None, "PET FDG.", steps=1, sd2_steps=1, anatomy=mr,
                        anatomy_sigma_px=(1.0, 1.0), sd2_first=True)
    folder = tmp_path / "w"
    shutil.copytree(guided / "weights", folder)
    (folder / "anatomy-branch-ct.safetensors").unlink()
    without_ct = Cascade.load(folder, CPU)
    assert without_ct.anatomy is not None and without_ct.anatomy.available == ["MR"]
    without_ct.restore(low, None, "PET FDG.", steps=1, sd2_steps=1, anatomy=mr)  # MR works
    with pytest.raises(PetReconError, match=f"^{folder / 'anatomy-branch-ct.safetensors'}: "
                                            "not found; "):
        without_ct.restore(low, None, "PET FDG.", steps=1, sd2_steps=1, anatomy=mr,
                           modality="CT")
    (folder / "anatomy-branch.safetensors").unlink()
    with pytest.raises(PetReconError, match="sd2-anatomy.safetensors without "
                                            "anatomy-branch.safetensors or "
                                            "anatomy-branch-ct.safetensors"):
        Cascade.load(folder, CPU)


def test_cascade_weights_trained_before_ct_load_and_refuse_ct(guided: Path,
                                                              tmp_path: Path) -> None:
    from pet_recon.weights import update_manifest

    folder = tmp_path / "w"
    shutil.copytree(guided / "weights", folder)
    (folder / "anatomy-branch-ct.safetensors").unlink()
    path = folder / "sd2-anatomy.safetensors"
    unet, extra = load_model(path, registry={"UNet": UNet}, device=CPU)
    anatomy = {k: v for k, v in extra["anatomy"].items() if k != "modalities"}
    save_model(unet, path, extra=extra | {"anatomy": anatomy | {"modality": "MR"}})
    update_manifest(path, name="anatomy", config={}, training={}, metrics={})
    cascade = Cascade.load(folder, CPU)
    assert cascade.anatomy is not None and cascade.anatomy.modalities == ["MR"]
    assert set(cascade.anatomy.hashes("MR")) == set(ANATOMY_FILES.values())
    with pytest.raises(PetReconError, match="anatomy-branch-ct.safetensors: not found; the "
                                            "anatomy-guided SD2 of these weights was trained "
                                            "with MR only \\(petrecon train anatomy "
                                            "--modality ct adds its branch\\)$"):
        cascade.anatomy.branch("CT")


# ----------------------------------------------------------------------------- reconstruct


@pytest.mark.parametrize("name", ["mr", "ct"])
def test_simulated_anatomy_series_of_pet_study_conforms(
        name: str, brain_case: Path, dciodvfy_errors: Callable[[Path], list[str]]) -> None:
    """The MR in its own frame of reference (registered by default), the CT in the PET's."""
    from pet_recon.io.anatomy import read_anatomy
    from pet_recon.io.series import read_series

    volume, meta = read_anatomy(brain_case / name)
    _, pet_meta = read_series(brain_case / "ld_drf20")
    header = pydicom.dcmread(sorted((brain_case / name).iterdir())[0])
    assert header.Modality == name.upper() and header.PatientPosition == "HFS"
    assert meta.geometry == pet_meta.geometry and volume.shape == (4, 32, 32)
    assert meta.source.study_instance_uid == pet_meta.source.study_instance_uid
    same_frame = meta.source.frame_of_reference_uid == pet_meta.source.frame_of_reference_uid
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(brain_case / f"{name}.mha")))
    if name == "mr":
        assert header.SOPClassUID == pydicom.uid.MRImageStorage and not same_frame
        assert header.ScanningSequence == "RM"
        np.testing.assert_allclose(volume, written, atol=1e-4 * float(written.max()))
    else:
        assert header.SOPClassUID == pydicom.uid.CTImageStorage and same_frame
        assert list(header.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert (header.RescaleSlope, header.RescaleIntercept, header.RescaleType) == (
            1, -1024, "HU")
        assert header.PixelRepresentation == 0
        np.testing.assert_allclose(volume, np.maximum(np.rint(written), -1024.0), atol=1e-3)
    assert dciodvfy_errors(brain_case / name) == []


def test_reconstruct_with_anatomy_end_to_end(guided: Path, brain_case: Path,
                                             tmp_path: Path) -> None:
    from pet_recon.io.series import read_series
    from pet_recon.pipeline import (
        MR_BOUNDED_WARNING,
        MR_LEAK_WARNING,
        CascadeOptions,
        reconstruct,
    )

    options = CascadeOptions(anatomy=brain_case / "mr", drf=20, steps=2, sd2_steps=2,
                             weights=guided / "weights", device="cpu")
    report = reconstruct(brain_case / "ld_drf20", tmp_path / "out", method="mig-dm",
                         cascade=options, report_path=tmp_path / "run.json", progress=False)
    entry = report["parameters"]["anatomy"]
    assert entry["modality"] == "MR" and entry["folder"] == str(brain_case / "mr")
    assert entry["registered"] and entry["registration_reason"] == "frames of reference differ"
    assert set(entry["registration"]) >= {"translation_mm", "rotation_deg", "converged"}
    assert entry["coverage"] > 0.5 and entry["normalisation"]["scale"] > 0
    assert entry["weights_sha256"] == {
        name: sha256_file(guided / "weights" / name) for name in ANATOMY_FILES.values()}
    assert entry["normalisation"]["percentile"] == 99.0
    pixel_mm = report["parameters"]["model_grid"]["pixel_mm"]
    sigma_mm = options.anatomy_detail_fwhm_mm / (2 * np.sqrt(2 * np.log(2)))
    assert entry["detail_bound"]["fwhm_mm"] == options.anatomy_detail_fwhm_mm > 0
    assert entry["detail_bound"]["sigma_px"] == pytest.approx(
        [sigma_mm / pixel_mm[1], sigma_mm / pixel_mm[0]])
    assert "anatomy_s" in report["parameters"]["timings"]
    assert MR_BOUNDED_WARNING.format(fwhm=options.anatomy_detail_fwhm_mm) in report["warnings"]
    assert MR_LEAK_WARNING not in report["warnings"]
    assert json.loads((tmp_path / "run.json").read_text())["parameters"]["anatomy"] == entry
    volume, meta = read_series(tmp_path / "out")
    assert volume.shape == (4, 32, 32) and np.isfinite(volume).all()
    assert "MR-guided SD2 (M2Diff)" in meta.headers[0].DerivationDescription
    unregistered = reconstruct(brain_case / "ld_drf20", tmp_path / "out2", method="mig-dm",
                               cascade=replace(options, register=False,
                                               anatomy_detail_fwhm_mm=0.0), progress=False)
    entry = unregistered["parameters"]["anatomy"]
    assert not entry["registered"] and entry["registration_reason"] == "registration disabled"
    assert entry["detail_bound"] is None and MR_LEAK_WARNING in unregistered["warnings"]
    assert any("registration is disabled" in w for w in unregistered["warnings"])


def test_reconstruct_with_ct_end_to_end(guided: Path, brain_case: Path, tmp_path: Path) -> None:
    from pet_recon.io.series import read_series
    from pet_recon.pipeline import CT_LEAK_WARNING, MR_LEAK_WARNING, CascadeOptions, reconstruct

    options = CascadeOptions(anatomy=brain_case / "ct", drf=20, steps=2, sd2_steps=2,
                             weights=guided / "weights", device="cpu")
    report = reconstruct(brain_case / "ld_drf20", tmp_path / "out", method="mig-dm",
                         cascade=options, progress=False)
    entry = report["parameters"]["anatomy"]
    assert entry["modality"] == "CT" and entry["folder"] == str(brain_case / "ct")
    assert not entry["registered"] and entry["registration"] is None
    assert entry["registration_reason"] == "same frame of reference"
    assert entry["outside_value"] <= -1000.0 and entry["coverage"] == pytest.approx(1.0)
    assert entry["normalisation"] == {"offset_hu": 1000.0, "scale_hu": 1000.0,
                                      "clip": [0.0, 3.0]}
    assert entry["weights_sha256"] == {
        name: sha256_file(guided / "weights" / name)
        for name in ("sd2-anatomy.safetensors", "anatomy-branch-ct.safetensors")}
    assert CT_LEAK_WARNING in report["warnings"] and MR_LEAK_WARNING not in report["warnings"]
    volume, meta = read_series(tmp_path / "out")
    assert volume.shape == (4, 32, 32) and np.isfinite(volume).all()
    assert "CT-guided SD2 (M2Diff)" in meta.headers[0].DerivationDescription


def test_reconstruct_anatomy_errors(runs: Path, guided: Path, brain_case: Path,
                                    tmp_path: Path) -> None:
    from pet_recon.cli import app
    from pet_recon.pipeline import CascadeOptions, reconstruct

    options = CascadeOptions(anatomy=brain_case / "mr", drf=20, steps=1, sd2_steps=1,
                             weights=runs / "weights", device="cpu")
    with pytest.raises(PetReconError, match="--anatomy needs --method mig-dm"):
        reconstruct(brain_case / "ld_drf20", tmp_path / "g", method="gaussian",
                    cascade=options, progress=False)
    with pytest.raises(PetReconError, match=f"^{runs / 'weights'}: --anatomy needs the "
                                            "anatomy-guided SD2"):
        reconstruct(brain_case / "ld_drf20", tmp_path / "m", method="mig-dm",
                    cascade=options, progress=False)
    assert not (tmp_path / "m").exists()
    mr_only = tmp_path / "mr-only"
    shutil.copytree(guided / "weights", mr_only)
    (mr_only / "anatomy-branch-ct.safetensors").unlink()
    missing = mr_only / "anatomy-branch-ct.safetensors"
    with pytest.raises(PetReconError, match=f"^{missing}: not found; "):
        reconstruct(brain_case / "ld_drf20", tmp_path / "ct", method="mig-dm",
                    cascade=replace(options, anatomy=brain_case / "ct", weights=mr_only),
                    progress=False)
    assert not (tmp_path / "ct").exists()
    result = CliRunner().invoke(app, [
        "reconstruct", "--in", str(brain_case / "ld_drf20"), "--out", str(tmp_path / "ct"),
        "--anatomy", str(brain_case / "ct"), "--weights", str(mr_only), "--device", "cpu",
        "--drf", "20", "--steps", "1", "--sd2-steps", "1", "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"petrecon: error: {missing}: not found; the anatomy-guided SD2 of these weights was "
        "trained with MR, CT, but this branch is not in the folder"]
    result = CliRunner().invoke(app, [
        "reconstruct", "--in", str(brain_case / "ld_drf20"), "--out", str(tmp_path / "c"),
        "--method", "gaussian", "--anatomy", str(brain_case / "mr")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "petrecon: error: --anatomy needs --method mig-dm"]
