"""Command-line interface (Typer). Each command validates its arguments and calls one API
function; problems with the user's input are reported in one line with exit status 2."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from pet_recon.errors import PetReconError

app = typer.Typer(
    name="petrecon",
    help="Low-dose PET restoration: DICOM in, SUV-consistent derived DICOM series out.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., object])

InPath = Annotated[
    Path,
    # Existence is checked by the reader, whose error is one line (click's is a usage box).
    typer.Option("--in", resolve_path=True,
                 help="Input folder (searched recursively) or zip file."),
]
SeriesUid = Annotated[
    str | None, typer.Option("--series-uid", help="SeriesInstanceUID when several PET series.")
]
Weight = Annotated[
    float | None,
    typer.Option("--weight", min=1.0, max=500.0, help="Patient weight in kg (overrides header)."),
]
Dose = Annotated[
    float | None,
    typer.Option("--dose", min=0.001, help="Injected activity in MBq (overrides header)."),
]
Drf = Annotated[
    float | None,
    typer.Option("--drf", min=1.0, help="Dose reduction factor of the input (20 = 1/20 dose)."),
]


def _user_errors(func: F) -> F:
    """Turn PetReconError into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except PetReconError as exc:
            typer.echo(f"petrecon: error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("petrecon: interrupted; nothing was written", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging(quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.WARNING
    if os.environ.get("PETRECON_DEBUG"):
        level = logging.DEBUG
    logging.basicConfig(level=level, format="petrecon: %(levelname)s: %(message)s",
                        stream=sys.stderr, force=True)


@app.command()
@_user_errors
def reconstruct(
    in_path: InPath,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder for the derived series.")],
    method: Annotated[str, typer.Option(help="mig-dm (the cascade) or gaussian.")] = "mig-dm",
    sino: Annotated[
        Path | None, typer.Option(help="Low-dose prompts sinogram (.hs Interfile, .mha, .nii).")
    ] = None,
    drf: Drf = None,
    steps: Annotated[int, typer.Option(min=1, max=1000, help="SD1 sampler steps.")] = 2,
    sd2_steps: Annotated[int, typer.Option(min=1, max=1000, help="SD2 sampler steps.")] = 5,
    resample_step: Annotated[
        int, typer.Option(min=0, max=1000, help="N: SD1's output is re-noised to step N.")
    ] = 50,
    sampler: Annotated[str, typer.Option(help="ddim or ddpm.")] = "ddim",
    seed: Annotated[int, typer.Option(min=0, help="Seed: same seed, same output.")] = 0,
    samples: Annotated[
        int, typer.Option(min=1, max=64, help="Average this many samples (K times slower).")
    ] = 1,
    mirror: Annotated[
        bool, typer.Option(help="Average with a left-right mirrored pass (2x slower, "
                                "slightly better; docs/benchmark.md).")
    ] = False,
    shared_noise: Annotated[
        bool, typer.Option("--shared-noise/--per-slice-noise",
                           help="One noise plane for all slices (coherent along z).")
    ] = True,
    progressive: Annotated[
        bool, typer.Option(help="Also write a 1/k-dose-equivalent series per dose anchor "
                                "(MAP-Diff), in OUT/progressive/drf-k/.")
    ] = False,
    anatomy: Annotated[
        Path | None, typer.Option(help="MR or CT series of the patient (folder, zip): MR- or "
                                       "CT-guided SD2 (M2Diff, docs/anatomy.md).")
    ] = None,
    register: Annotated[
        bool | None, typer.Option("--register/--no-register",
                                  help="Register the MR/CT to the PET rigidly (default: only "
                                       "when their frames of reference differ).")
    ] = None,
    anatomy_detail: Annotated[
        float, typer.Option(min=0.0, max=50.0,
                            help="With --anatomy: the MR/CT may change the PET-only restoration "
                                 "only in details finer than a Gaussian of this FWHM (mm); 0: "
                                 "no bound (docs/anatomy.md).")
    ] = 6.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, max=512, help="Slices at once.")] = 8,
    weights: Annotated[
        Path | None, typer.Option(help="Weights folder (default: shipped, $PETRECON_WEIGHTS).")
    ] = None,
    fwhm: Annotated[
        float, typer.Option("--fwhm", min=0.0, max=50.0, help="Gaussian FWHM in mm.")
    ] = 6.0,
    series_uid: SeriesUid = None,
    weight: Weight = None,
    dose: Dose = None,
    report: Annotated[Path | None, typer.Option(help="Write a JSON run report here.")] = None,
    preview: Annotated[
        Path | None, typer.Option(help="Write a PNG of MIPs before/after here.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar, errors only.")] = False,
) -> None:
    """Restore a low-dose PET series and write a derived DICOM series."""
    from pet_recon.pipeline import CascadeOptions
    from pet_recon.pipeline import reconstruct as run

    _setup_logging(quiet)
    if sampler not in ("ddim", "ddpm"):
        raise PetReconError(f"--sampler must be ddim or ddpm, got {sampler!r}")
    options = CascadeOptions(sino=sino, drf=drf, steps=steps, sd2_steps=sd2_steps,
                             resample_step=resample_step, sampler=sampler, seed=seed,
                             samples=samples, mirror=mirror, shared_noise=shared_noise,
                             device=device, batch_size=batch_size, weights=weights,
                             progressive=progressive, anatomy=anatomy, register=register,
                             anatomy_detail_fwhm_mm=anatomy_detail)
    result = run(
        in_path, out_dir, method=method, fwhm_mm=fwhm, series_uid=series_uid,
        overwrite=overwrite, report_path=report, preview_path=preview,
        weight_kg=weight, dose_mbq=dose, cascade=options, progress=not quiet,
    )
    if not quiet:
        out = result["output"]
        typer.echo(f"wrote {out['n_files']} files to {out['path']}", err=True)


@app.command("inspect-meta")
@_user_errors
def inspect_meta(
    in_path: InPath,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    drf: Drf = None,
    series_uid: SeriesUid = None,
    weight: Weight = None,
    dose: Dose = None,
) -> None:
    """Show the meta-information and the prompt the model will be given, per PET series."""
    from pet_recon.inspect import format_table
    from pet_recon.inspect import inspect_meta as run

    _setup_logging(quiet=as_json)
    reports = run(in_path, drf=drf, series_uid=series_uid, weight_kg=weight, dose_mbq=dose)
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
    else:
        typer.echo(format_table(reports))


@app.command()
@_user_errors
def evaluate(
    pred: Annotated[Path, typer.Option(
        "--pred", resolve_path=True,
        help="Prediction: DICOM PET series (folder, zip; SUVbw) or .mha/.nii volume (SUV).")],
    ref: Annotated[Path, typer.Option(
        "--ref", resolve_path=True, help="Reference (full dose), same forms and grid.")],
    truth: Annotated[Path | None, typer.Option(
        resolve_path=True, help="Simulator truth.mha (Bq/ml; case.json beside it gives SUV).")
    ] = None,
    labels: Annotated[Path | None, typer.Option(
        resolve_path=True, help="Label map on the same grid (simulator labels.mha).")] = None,
    pred_series_uid: Annotated[str | None, typer.Option(
        help="SeriesInstanceUID in --pred when it holds several (e.g. a --progressive run).")
    ] = None,
    ref_series_uid: Annotated[str | None, typer.Option(
        help="SeriesInstanceUID in --ref when it holds several.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    out_json: Annotated[Path | None, typer.Option(
        "--out-json", help="Also write the JSON report to this file.")] = None,
) -> None:
    """Compare a prediction with a reference: PSNR, SSIM, NRMSE, SUV per VOI, TBR, NEMA CR."""
    from pet_recon.evaluate import evaluate as run
    from pet_recon.evaluate import format_report

    _setup_logging(quiet=as_json)
    report = run(pred, ref, truth=truth, labels=labels, pred_series_uid=pred_series_uid,
                 ref_series_uid=ref_series_uid)
    text = json.dumps(report, indent=2)
    if out_json is not None:
        _write_text(out_json, text + "\n")
    typer.echo(text if as_json else format_report(report))


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so it appears only complete."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise PetReconError(f"{path}: cannot write ({exc.strerror})") from None



def _device(name: str) -> object:
    from pet_recon.pipeline import resolve_device

    return resolve_device(name)


Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]


@app.command()
@_user_errors
def simulate(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (one folder a case).")],
    phantom: Annotated[str, typer.Option(help="Phantom family: brain, body or nema.")],
    cases: Annotated[int, typer.Option(min=1, max=10000, help="Number of cases.")] = 1,
    drf: Annotated[
        list[int] | None, typer.Option(help="Dose reduction factor; repeat for several.")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the first case.")] = 0,
    slices: Annotated[int, typer.Option(min=1, max=512)] = 64,
    matrix: Annotated[int, typer.Option(min=32, max=512)] = 128,
    device: Device = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Simulate PET studies: DICOM at full and low dose, sinograms, truth, mu, CT, MR."""
    from pet_recon.physics.simulate import DEFAULT_DRFS, simulate_study

    _setup_logging(quiet)
    if phantom not in ("brain", "body", "nema"):
        raise PetReconError(f"--phantom must be brain, body or nema, got {phantom!r}")
    if any(k < 2 for k in drf or ()):
        raise PetReconError(f"--drf must be at least 2, got {drf}")
    report = simulate_study(
        out_dir, phantom=phantom, cases=cases, drfs=tuple(drf or DEFAULT_DRFS), seed=seed,
        slices=slices, matrix=matrix, overwrite=overwrite, device=_device(device),
        progress=not quiet,
    )
    if not quiet:
        for case in report["cases"]:
            typer.echo(f"{case['case']}: {case['total_s']:.1f} s", err=True)


@app.command("make-dataset")
@_user_errors
def make_dataset(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for train/val/test shards.")],
    phantom: Annotated[list[str], typer.Option(help="Phantom family; repeat for several.")],
    cases: Annotated[int, typer.Option(min=1, help="Seeds per family.")] = 10,
    drf: Annotated[list[int] | None, typer.Option(help="Dose reduction factor; repeat.")] = None,
    seed: Annotated[int, typer.Option(min=0, help="First case seed.")] = 0,
    split: Annotated[
        list[str] | None, typer.Option(help="Splits to write (default train and val).")
    ] = None,
    slices: Annotated[int, typer.Option(min=1, max=512)] = 64,
    matrix: Annotated[int, typer.Option(min=32, max=512)] = 128,
    device: Device = "cpu",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Simulate a training set as safetensors shards (split fixed by case seed)."""
    from pet_recon.dataset import SPLITS, write_dataset
    from pet_recon.physics.simulate import DEFAULT_DRFS

    _setup_logging(quiet)
    for name in phantom:
        if name not in ("brain", "body", "nema"):
            raise PetReconError(f"--phantom must be brain, body or nema, got {name!r}")
    for name in split or ():
        if name not in SPLITS:
            raise PetReconError(f"--split must be one of {', '.join(SPLITS)}, got {name!r}")
    if any(k < 2 for k in drf or ()):
        raise PetReconError(f"--drf must be at least 2, got {drf}")
    report = write_dataset(
        out_dir, families=tuple(phantom), cases=cases, seed=seed,
        drfs=tuple(drf or DEFAULT_DRFS), slices=slices, matrix=matrix,
        splits=tuple(split or ("train", "val")), device=_device(device), progress=not quiet,
    )
    typer.echo(json.dumps(report))


def main() -> None:
    """Console entry point: like ``app()``, but a usage error is one line too (exit 2)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="petrecon", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors; typer exports their base
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            code = 0
        else:
            where = f" ({ctx.command_path})" if ctx is not None else ""
            typer.echo(f"petrecon: error{where}: {exc.format_message()}", err=True)
            code = getattr(exc, "exit_code", 2)
    except typer.Abort:
        typer.echo("petrecon: interrupted; nothing was written", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


@app.command()
@_user_errors
def train(
    stage: Annotated[str, typer.Argument(help="mi-encoder, srm, sd1, sd2, unet or anatomy.")],
    data: Annotated[Path, typer.Option(help="Shards folder (petrecon make-dataset).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, weights).")],
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    lr: Annotated[float, typer.Option(min=0.0)] = 2e-4,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    frozen: Annotated[
        Path | None, typer.Option(help="Folder with earlier stages (srm / mi-encoder / sd2).")
    ] = None,
    trust_frozen: Annotated[
        bool, typer.Option(help="Use --frozen weights not listed in a manifest (own runs).")
    ] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the run's checkpoint.")] = True,
    device: Device = "auto",
    bf16: Annotated[bool, typer.Option(help="bf16 autocast.")] = True,
    anchor_loss: Annotated[
        bool, typer.Option(help="sd1/sd2: MAP-Diff intermediate-dose anchor loss.")
    ] = False,
    anchor_weight: Annotated[
        float, typer.Option(min=0.0, help="Coefficient of the anchor loss.")
    ] = 1.0,
    anchor_width: Annotated[
        float, typer.Option(min=0.1, help="Width in timesteps of the anchor weighting.")
    ] = 10.0,
    aux_weight: Annotated[
        float, typer.Option(min=0.0, help="anatomy: weight of the tissue segmentation loss.")
    ] = 0.1,
    family: Annotated[
        list[str] | None, typer.Option(help="anatomy: phantom family of the shards to use; "
                                            "repeat for several (default brain).")
    ] = None,
    mismatch: Annotated[
        float, typer.Option(min=0.0, max=1.0,
                            help="anatomy: probability of a mismatched training MR (no lesions, "
                                 "MR-only spheres; 0 for shards made before it existed).")
    ] = 0.5,
    modality: Annotated[
        list[str] | None, typer.Option(help="anatomy: anatomical modality with a branch of its "
                                            "own, mr or ct; repeat for both (default mr).")
    ] = None,
    lock_text: Annotated[
        bool, typer.Option(help="mi-encoder: keep the text tower of --frozen's mi-encoder "
                                "(SD2's tokens) and train a new image tower against it.")
    ] = False,
    init: Annotated[
        bool, typer.Option(help="sd1, sd2: start from --frozen's weights of the stage "
                                "(fine-tuning) instead of random ones.")
    ] = False,
    pure_noise_p: Annotated[
        float, typer.Option(min=0.0, max=1.0,
                            help="sd1: fraction of items trained at t = T (pure noise, the "
                                 "sampler's first step); the rest uniform on 1..T.")
    ] = 0.0,
    sd1_input_p: Annotated[
        float, typer.Option(min=0.0, max=1.0,
                            help="sd2: fraction of items whose x_t is --frozen's SD1 output "
                                 "re-noised to t <= 50 (what SD2 sees in reconstruct) instead "
                                 "of the full-dose slice.")
    ] = 0.0,
    lesion_weight: Annotated[
        float, typer.Option(min=0.0, help="sd1, sd2, anatomy: extra loss weight of lesion pixels "
                                          "(1 + W times the squared error; 0: plain MSE).")
    ] = 0.0,
    neighbours: Annotated[
        int, typer.Option(min=0, max=8, help="sd1, sd2, unet: low-dose planes on either side of "
                                             "the slice the network sees; with --init, a model "
                                             "trained with fewer is widened.")
    ] = 1,
) -> None:
    """Train one stage of the MiG-DM cascade (or the U-Net baseline) on simulated shards."""
    from pet_recon.training import STAGES, TrainOptions
    from pet_recon.training import train as run

    _setup_logging(quiet=False)
    if stage not in STAGES:
        raise PetReconError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    report = run(stage, TrainOptions(
        data=data, out=out_dir, steps=steps, device=_device(device), batch_size=batch_size,
        lr=lr, seed=seed, frozen=frozen, trust_frozen=trust_frozen, resume=resume, bf16=bf16,
        anchor_loss=anchor_loss, anchor_weight=anchor_weight, anchor_width=anchor_width,
        aux_weight=aux_weight, families=tuple(family or ("brain",)), mismatch=mismatch,
        modalities=tuple(modality or ("mr",)), lock_text=lock_text, init=init,
        pure_noise_p=pure_noise_p, sd1_input_p=sd1_input_p, lesion_weight=lesion_weight,
        neighbours=neighbours))
    typer.echo(json.dumps({k: report[k] for k in ("stage", "seconds", "weights", "metrics")}))


@app.command()
@_user_errors
def publish(
    data: Annotated[Path, typer.Option(help="Shards folder (validation split is used).")],
    runs: Annotated[
        Path | None, typer.Option(help="Folder with srm/, mi-encoder/, sd1/, sd2/ runs.")
    ] = None,
    weights: Annotated[Path, typer.Option(help="Weights folder to write.")] = Path("weights"),
    revalidate: Annotated[
        bool, typer.Option(help="Copy nothing: validate the weights folder's cascade again "
                                "and replace its manifest's cascade metrics.")
    ] = False,
    device: Device = "auto",
) -> None:
    """Copy trained weights into a weights folder and list them in its manifest."""
    from pet_recon import training

    if (runs is None) != revalidate:
        raise PetReconError("publish needs --runs, or --revalidate without --runs")
    _setup_logging(quiet=False)
    result = (training.revalidate(weights, data, _device(device)) if revalidate
              else training.publish(runs, weights, data, _device(device)))  # type: ignore[arg-type]
    typer.echo(json.dumps(result, indent=2))


@app.command()
@_user_errors
def bench(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for JSON, table and figures.")],
    smoke: Annotated[
        bool, typer.Option(help="Tiny run (brain, DRF 20, 8 planes, one ablation) for CI.")
    ] = False,
    family: Annotated[
        list[str] | None, typer.Option(help="brain, body, nema (repeatable; default all).")
    ] = None,
    drf: Annotated[
        list[int] | None, typer.Option(min=2, help="Dose reduction factors (default 4 10 20 50).")
    ] = None,
    cases: Annotated[int, typer.Option(min=1, max=20, help="Test cases per family.")] = 1,
    slices: Annotated[int, typer.Option(min=4, max=128, help="Planes per case.")] = 64,
    ablations: Annotated[bool, typer.Option(help="Run the cascade's ablations.")] = True,
    weights: Annotated[
        Path | None, typer.Option(help="Weights folder (default: shipped, $PETRECON_WEIGHTS).")
    ] = None,
    compare_weights: Annotated[
        Path | None, typer.Option(help="Second weights folder: its cascade is one more method "
                                       "named for its folder (e.g. the weights before a "
                                       "stage was re-trained).")
    ] = None,
    anatomy_study: Annotated[
        bool, typer.Option(help="Also run the anatomy study (issue #7): brain FDG and amyloid "
                                "cases without and with the MR, and the MR leak checks; "
                                "needs weights with the anatomy files.")
    ] = False,
    anatomy_only: Annotated[
        bool, typer.Option(help="Run only the anatomy study (at the --drf values).")
    ] = False,
    device: Device = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress messages.")] = False,
) -> None:
    """Benchmark every method on held-out simulated cases; print the table last."""
    from pet_recon.benchmark import ABLATIONS, SMOKE, BenchOptions, run_benchmark

    _setup_logging(quiet)
    # Each restoration's warnings (no sinogram in an ablation, the MR leak warning) are
    # the benchmark's design, said once in its docs, not once per run on stderr.
    logging.getLogger("pet_recon.pipeline").setLevel(logging.ERROR)
    opts = BenchOptions(out=out_dir, cases=cases, slices=slices, weights=weights,
                        compare_weights=compare_weights, device=device, overwrite=overwrite,
                        ablations=tuple(ABLATIONS) if ablations else (),
                        anatomy_study=anatomy_study or anatomy_only)
    if family:
        opts.families = tuple(family)
    if anatomy_only:
        if family:
            raise PetReconError("--anatomy-only runs no family; leave out --family")
        opts.families, opts.ablations = (), ()
    if drf:
        opts.drfs = tuple(drf)
    if smoke:
        opts = BenchOptions(out=out_dir, weights=weights, compare_weights=compare_weights,
                            device=device, overwrite=overwrite, **SMOKE)
    result = run_benchmark(opts, progress=None if quiet else
                           lambda text: typer.echo(f"petrecon bench: {text}", err=True))
    typer.echo(result["table"])
