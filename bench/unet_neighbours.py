"""Side experiment: does more axial context (7 planes instead of 3) help lesion contrast?

The shipped U-Net baseline (``weights/unet.safetensors``, 3 planes) is fine-tuned twice the
same way on ``DATA`` (the standard data of docs/training.md): with its 3 planes, and with 7
(``conv_in`` widened, the 4 new planes' kernels zero, so it starts as the shipped model).
Then both, and the shipped model, are scored on the 8 validation cases (seeds 8-38 of brain
and body, DRF 20): PSNR against full dose in the body mask, each lesion's SUVmax against the
noise-free full-dose image. docs/benchmark.md, "More planes of context", has the result.

    python bench/unet_neighbours.py train 1 1000 DATA OUT/ft1   # one core each, side by side
    python bench/unet_neighbours.py train 3 1000 DATA OUT/ft3
    python bench/unet_neighbours.py eval weights/unet.safetensors OUT/ft1/unet.safetensors \
        OUT/ft3/unet.safetensors
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import pet_recon.training as T
from pet_recon import benchmark as B
from pet_recon.cascade import neighbour_stack
from pet_recon.metrics import psnr, voi_stats
from pet_recon.models.intensity import reference_value
from pet_recon.models.unet import UNet
from pet_recon.weights import load_model, sha256_file, weights_dir

CPU = torch.device("cpu")


def load(path: Path) -> tuple[UNet, int]:
    model, extra = load_model(path, registry={"UNet": UNet}, expected_sha256=sha256_file(path),
                              device=CPU)
    return model.eval(), int(extra["neighbours"])


def train(n: int, steps: int, data: Path, out: Path) -> None:
    model, trained = load(weights_dir() / "unet.safetensors")
    T.widen_input_planes(model.train(), trained, n)  # the shipped planes in the middle
    opts = T.TrainOptions(data=data, out=out, steps=steps, device=CPU, batch_size=8, bf16=False,
                          log_every=100, lr=1e-4, ema_decay=0.99)
    print(T.fit_unet(model, n, opts))


def evaluate(paths: list[Path]) -> None:
    models = {str(p): load(p) for p in paths}
    rows = []
    for family in ("brain", "body"):
        for seed in (8, 18, 28, 38):
            case = B._make_case(family, seed, (20,), 64, CPU, Path(tempfile.mkdtemp()))
            low, ref = case.suv(20), reference_value(case.suv(20), case.spacing)
            size = {d["label"]: d["diameter_mm"] for d in case.sim.phantom.info["lesions"]}
            for name, (model, n) in models.items():
                x = torch.from_numpy(neighbour_stack(low / ref, n))
                with torch.no_grad():
                    out = np.concatenate([model(x[i:i + 8], None)[:, 0].numpy()
                                          for i in range(0, len(x), 8)]) * ref
                got = voi_stats(out, case.lesions, case.spacing)
                free = case.noise_free_stats
                rows.append((family, name, psnr(out, case.suv(1), case.body),
                             [(size[k], got[k]["suv_max"] / free[k]["suv_max"] - 1) for k in free]))
                print(family, seed, name, f"{rows[-1][2]:.2f} dB", flush=True)
    print("| family | model | PSNR (dB), mean of 4 cases | lesion SUVmax bias vs noise-free "
          "(lesions) | < 10 mm |")
    print("| --- | --- | --- | --- | --- |")
    for family in ("brain", "body"):
        for name in models:
            mine = [r for r in rows if r[0] == family and r[1] == name]
            lesions = [b for r in mine for b in r[3]]
            small = [b for d, b in lesions if d < 10]
            print(f"| {family} | {name} | {np.mean([r[2] for r in mine]):.2f} | "
                  f"{100 * np.mean([b for _, b in lesions]):+.1f} % ({len(lesions)}) | "
                  f"{100 * np.mean(small):+.1f} % ({len(small)}) |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "train":
        train(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
    else:
        evaluate([Path(p) for p in sys.argv[2:]])
