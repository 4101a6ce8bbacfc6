"""Make docs/figures/simulation.png: one simulated case of each phantom family.

Rows: brain (FDG), body, NEMA. Columns: truth, DRF 1, 4, 20, 100 (one SUV scale per row),
T1-like MR and mu-map, all of the central plane. Run from the repository root:

    python docs/figures/simulation_figure.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pet_recon.physics.simulate import simulate_case

OUT = Path(__file__).with_name("simulation.png")
CASES = (("brain", 3, {"tracer": "FDG"}), ("body", 11, {}), ("nema", 1, {}))
DRFS = (4, 20, 100)


def main() -> None:
    fig = Figure(figsize=(14, 6.4), dpi=100)
    FigureCanvasAgg(fig)
    columns = ["truth", "full dose", *(f"1/{k} dose" for k in DRFS), "MR (T1-like)", "mu-map"]
    axes = fig.subplots(len(CASES), len(columns))
    for row, (family, seed, kwargs) in enumerate(CASES):
        case = simulate_case(family, seed, drfs=DRFS, device=torch.device("cpu"),
                             phantom_kwargs=kwargs)
        p = case.image.n_planes // 2
        if family == "nema":  # the plane through the sphere centres
            p = int(np.argmax((case.phantom.labels >= 100).sum(axis=(1, 2))))
        suv = [case.truth_bqml[p] * case.suv_factor(1)]
        suv += [case.images[k][p] * case.suv_factor(k) for k in (1, *DRFS)]
        vmax = float(np.percentile(suv[0], 99.8)) * 1.2
        panels = [(s, "gray_r", 0.0, vmax) for s in suv]
        panels.append((case.phantom.mr[p], "gray", 0.0, float(case.phantom.mr[p].max())))
        panels.append((case.phantom.mu[p], "gray", 0.0, 0.17))
        for col, (img, cmap, lo, hi) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=10)
        counts = case.prompts[1].sum() / case.image.n_planes
        axes[row, 0].set_ylabel(
            f"{family} ({case.protocol.tracer})\nSUV 0-{vmax:.1f}\n"
            f"{counts / 1e6:.2f} M counts/plane", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
