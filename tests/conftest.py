"""Shared fixtures: the public test data in ../shared/data (override with PETRECON_TEST_DATA)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

_DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SHARED_DATA = Path(os.environ.get("PETRECON_TEST_DATA", _DEFAULT_DATA)).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the public test files; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public test data not found at {SHARED_DATA} (set PETRECON_TEST_DATA)")
    return SHARED_DATA


def _dciodvfy_errors(folder: Path) -> list[str]:
    """dciodvfy's error lines over every file of a DICOM series folder (none when dciodvfy
    is not installed)."""
    if shutil.which("dciodvfy") is None:
        return []
    errors = []
    for path in sorted(folder.iterdir()):
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                               check=False)
        errors += [line for line in (check.stdout + check.stderr).splitlines()
                   if line.startswith("Error")]
    return errors


@pytest.fixture(scope="session")
def dciodvfy_errors() -> Callable[[Path], list[str]]:
    """``dciodvfy_errors(folder)``: dciodvfy's error lines over a series (dicom3tools; an
    empty list when it is not installed)."""
    return _dciodvfy_errors


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models are faster so than on contended shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every training stage run for 2 steps on a tiny simulated set (32 x 32, 3 planes);
    ``weights/`` holds the resulting cascade and U-Net with manifest entries. SD2 is trained
    with the MAP-Diff anchor loss, so its weights carry dose anchors for DRF 4 and 20."""
    from pet_recon.cascade import WEIGHT_FILES
    from pet_recon.dataset import write_dataset
    from pet_recon.training import TrainOptions, train
    from pet_recon.weights import update_manifest

    cpu = torch.device("cpu")
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    # Seeds 0-1 train, 8 val: 2 families x 3 DRFs give enough distinct prompts for batch 4.
    for seed in (0, 1, 8):
        write_dataset(data, families=("nema", "body"), cases=1, seed=seed, drfs=(4, 20),
                      slices=3, matrix=32, device=cpu, progress=False)
    weights = root / "weights"
    weights.mkdir()
    # Two steps leave the models random; seed 2 (initial weights and data order of every
    # stage) gives a cascade whose restored body mean is positive, which the mean-SUV
    # checks of the reconstruction tests need (a non-positive mean cannot be rescaled).
    for stage in ("srm", "mi-encoder", "sd1", "sd2", "unet"):
        opts = TrainOptions(data=data, out=root / stage, steps=2, device=cpu, batch_size=4,
                            patch=32, log_every=1, checkpoint_every=1, frozen=weights,
                            trust_frozen=True, anchor_loss=stage == "sd2", seed=2)
        report = train(stage, opts)
        assert Path(report["weights"]).exists()
        for name in (*WEIGHT_FILES.values(), "unet.safetensors"):
            produced = root / stage / name
            if produced.exists():
                target = weights / name
                target.write_bytes(produced.read_bytes())
                update_manifest(target, name=stage, config={}, training={"steps": 2},
                                metrics=report["metrics"])
    return root


@pytest.fixture(scope="session")
def guided(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's runs plus ``anatomy/`` (the anatomy stage with MR and CT branches, 2
    steps on the tiny set's body shards; it has no brain shards) and ``weights/``: the
    session's weights with the three anatomy files (``runs / "weights"`` stays without
    them)."""
    import shutil

    from pet_recon.cascade import ANATOMY_BRANCH_FILES, ANATOMY_FILES
    from pet_recon.training import TrainOptions, train
    from pet_recon.weights import update_manifest

    root = tmp_path_factory.mktemp("guided")
    for stage in ("srm", "mi-encoder", "sd1", "sd2"):
        shutil.copytree(runs / stage, root / stage)
    train("anatomy", TrainOptions(data=runs / "data", out=root / "anatomy", steps=2,
                                  device=torch.device("cpu"), batch_size=4, patch=32,
                                  log_every=1, checkpoint_every=1, frozen=runs / "weights",
                                  trust_frozen=True, families=("body",), mismatch=0.0,
                                  modalities=("MR", "CT")))
    shutil.copytree(runs / "weights", root / "weights")
    for name in (ANATOMY_FILES["unet"], *ANATOMY_BRANCH_FILES.values()):
        shutil.copyfile(root / "anatomy" / name, root / "weights" / name)
        update_manifest(root / "weights" / name, name="anatomy", config={},
                        training={"steps": 2}, metrics={})
    return root
