"""Training shards and the streaming slice loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pet_recon.dataset import SliceStream, read_record, split_of, write_dataset
from pet_recon.models.anatomy import normalise_mr
from pet_recon.physics.phantoms import MR_SPHERE_INTENSITY

CPU = torch.device("cpu")


def test_split_of_is_fixed_by_seed() -> None:
    assert [split_of(s) for s in (0, 7, 8, 9, 18, 19)] == [
        "train", "train", "val", "test", "val", "test"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_dataset(root, families=("nema",), cases=2, seed=8, drfs=(4, 20), slices=6,
                  matrix=32, splits=("train", "val", "test"), device=CPU, progress=False)
    return root


def test_write_dataset_splits_by_seed(shards: Path) -> None:
    assert [p.name for p in (shards / "val").iterdir()] == ["nema-000008.safetensors"]
    assert [p.name for p in (shards / "test").iterdir()] == ["nema-000009.safetensors"]
    record = read_record(shards / "val" / "nema-000008.safetensors")
    assert record["drfs"] == [4, 20]
    assert "1/20 of full dose (given)" in record["levels"]["20"]["prompt"]


def test_write_dataset_skips_test_seeds_by_default(tmp_path: Path) -> None:
    report = write_dataset(tmp_path, families=("nema",), cases=2, seed=8, drfs=(4,),
                           slices=4, matrix=32, device=CPU, progress=False)
    assert report["shards"] == {"train": 0, "val": 1, "test": 0}
    assert not (tmp_path / "test").exists()


def test_slice_stream_yields_aligned_slices_with_neighbours(shards: Path) -> None:
    items = list(SliceStream(shards, "val", neighbours=1, shuffle=False))
    assert all(0.5 < item["ref"] < 10 for item in items)
    assert len(items) == 6
    item = items[0]
    assert item["ld"].shape == (3, 32, 32) and item["fd"].shape == (1, 32, 32)
    assert item["sino_ld"].shape[0] == 1 and item["sino_ld"].shape == item["sino_fd"].shape
    assert item["drf"] in (4.0, 20.0) and item["case_id"] == "nema-000008"
    # The low-dose sinogram is thinned from the full-dose one: scaled by k it has the same
    # expected total.
    ratio = float(item["sino_ld"].sum() / item["sino_fd"].sum())
    assert ratio == pytest.approx(1.0, rel=0.25)
    # SUV images: the fill region of the NEMA phantom has SUV about 1.
    assert 0.3 < float(np.median(item["truth"][item["truth"] > 0.5])) < 1.5


def test_slice_stream_missing_split_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no shards"):
        SliceStream(tmp_path, "train")


@pytest.fixture(scope="module")
def brain_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("brain-shards")
    write_dataset(root, families=("brain",), cases=1, seed=8, drfs=(20,), slices=6,
                  matrix=32, device=CPU, progress=False)
    return root


def test_write_shard_brain_holds_ct_and_mismatched_mr(brain_shards: Path) -> None:
    path = brain_shards / "val" / "brain-000008.safetensors"
    with safe_open(str(path), framework="np") as f:
        ct, mr, mismatch = (f.get_tensor(n) for n in ("ct", "mr", "mr_mismatch"))
    assert ct.shape == mr.shape == mismatch.shape == (6, 32, 32)
    assert ct.min() < -900 and ct.max() > 300  # air and skull in HU
    spheres = read_record(path)["mr_mismatch_spheres"]
    assert all(s["tissue"] in MR_SPHERE_INTENSITY for s in spheres)
    assert not np.array_equal(mr, mismatch)


@pytest.mark.parametrize(("mismatch", "source"), [(0.0, "mr"), (1.0, "mr_mismatch")])
def test_slice_stream_mismatch_picks_the_anatomy(brain_shards: Path, mismatch: float,
                                                 source: str) -> None:
    path = brain_shards / "val" / "brain-000008.safetensors"
    record = read_record(path)
    with safe_open(str(path), framework="np") as f:
        volume = f.get_tensor(source).astype(np.float32)
    expected, _ = normalise_mr(volume, (record["pixel_mm"], record["pixel_mm"],
                                        record["plane_mm"]))
    items = list(SliceStream(brain_shards, "val", shuffle=False, with_anatomy=True,
                             mismatch=mismatch))
    assert np.allclose(items[2]["anatomy"].numpy(), expected[1:4])
    plain = list(SliceStream(brain_shards, "val", shuffle=False))
    assert [float(i["ld"].sum()) for i in items] == [float(i["ld"].sum()) for i in plain]


def test_slice_stream_mismatch_needs_mismatched_shards(shards: Path) -> None:
    with pytest.raises(FileNotFoundError, match="with labels and mr and mr_mismatch"):
        SliceStream(shards, "val", with_anatomy=True, mismatch=0.5)
    with pytest.raises(ValueError, match="mismatch must be a probability"):
        SliceStream(shards, "val", with_anatomy=True, mismatch=1.5)
