"""``cardioseg`` command line: small Typer commands over the Python API.

Errors about user input are printed as one line (``error: <file>: <problem>``) with exit code 1,
never as a traceback (set ``CARDIOSEG_DEBUG=1`` to see one).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

MODEL_HELP = (
    "Checkpoint path or packaged model name (default, contrast; ensemble = both averaged; "
    "v3 = the previous default)"
)

#: File name endings that ``segment -o`` does not take for a folder's name (it writes NIfTI only).
FILE_SUFFIXES = frozenset(
    {
        ".txt",
        ".csv",
        ".json",
        ".png",
        ".jpg",
        ".jpeg",
        ".nrrd",
        ".mha",
        ".mhd",
        ".dcm",
        ".npy",
        ".npz",
        ".zip",
        ".gz",
        ".h5",
        ".mat",
        ".pdf",
        ".html",
    }
)

#: ``--roi/--whole-image`` of the commands that run a model.
#: ``--seg-phases`` of analyze, analyze-batch and serve (checked against
#: ``cardioseg.options.SEG_PHASES`` in the command, before any work).
SegPhasesOption = Annotated[
    str,
    typer.Option(
        help="Phases of a DICOM cine to export as DICOM-SEG: ed-es (the reported phases) or "
        "all (every phase, as masks_cine.nii.gz)"
    ),
]

RoiOption = Annotated[
    bool | None,
    typer.Option(
        "--roi/--whole-image",
        help="Segment a heart-centred window (found on the middle slice) or the whole field "
        "of view; default: the model's (heart window for the packaged models)",
    ),
]


#: The usage-error class of the click that Typer runs on (Typer 0.29 vendors its own copy of
#: click, whose exceptions are not ``click``'s): the base of ``typer.BadParameter``.
_UsageError = next(k for k in typer.BadParameter.__mro__ if k.__name__ == "UsageError")


def _usage_error(exc: Any) -> None:
    """Say a command-line usage error (an unknown option, ``--threads x``, a missing argument)
    in one line, as every other error, instead of Typer's framed block; exit status 2."""
    from cardioseg.errors import one_line

    if type(exc).__name__ == "NoArgsIsHelpError":  # `cardioseg` alone: the help
        raise exc
    path = exc.ctx.command_path if exc.ctx is not None else "cardioseg"
    typer.echo(f"error: {one_line(exc.format_message())} (see: {path} --help)", err=True)
    raise typer.Exit(2)


class _Commands(typer.core.TyperGroup):
    """The command group: refuses an empty argument before any command runs and says usage
    errors in one line."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Refuse an empty argument (``-o "$OUT"`` with ``OUT`` unset): Typer reads ``""`` as
        the current folder, so ``segment ""`` segmented the files there and ``-o ""`` wrote
        into it. No option of cardioseg takes an empty value."""
        for i, arg in enumerate(args):
            if arg == "":
                before = args[i - 1] if i > 0 and args[i - 1].startswith("-") else ""
                where = f"{before} was given an empty value" if before else "an empty argument"
                typer.echo(f"error: {where} (an unset shell variable?)", err=True)
                ctx.exit(1)
        try:
            return super().parse_args(ctx, args)
        except _UsageError as exc:
            _usage_error(exc)
            raise  # not reached

    def invoke(self, ctx: Any) -> Any:
        """Run the command; its usage errors (raised while its arguments are parsed) are said
        in one line."""
        try:
            return super().invoke(ctx)
        except _UsageError as exc:
            _usage_error(exc)
            raise  # not reached


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Cardiac cine MRI segmentation (LV, MYO, RV) across vendors.",
)


def _version(value: bool) -> None:
    if value:
        from cardioseg import __version__

        typer.echo(f"cardioseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version"),
    ] = False,
) -> None:
    """Cardiac cine MRI segmentation (LV, MYO, RV) across vendors."""


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _check_at_least(option: str, value: int, low: int, note: str = "") -> None:
    """Refuse a count option below ``low`` (``--threads -2``), naming it."""
    from cardioseg.errors import CardiosegError

    if value < low:
        raise CardiosegError(None, f"{option} must be >= {low}{note}, got {value}")


def _check_choice(option: str, value: str | None, choices: tuple[str, ...]) -> None:
    """Refuse a value an option does not take (``--precision float16``), naming the option and
    the choices, before a model is loaded."""
    from cardioseg.errors import CardiosegError

    if value is not None and value not in choices:
        raise CardiosegError(None, f"{option} must be one of {', '.join(choices)}; got {value!r}")


def _check_output_folder(output: Path | None, what: str = "output") -> None:
    """Refuse an output folder that is a file, or lies under one, before any work (evaluate ran
    the model over the whole dataset, then stopped on 'cannot write or read here (File
    exists)')."""
    from cardioseg.errors import CardiosegError

    if output is None:
        return
    if output.exists() and not output.is_dir():
        raise CardiosegError(output, f"{what} exists and is not a folder")
    for parent in output.parents:  # a folder under a file: said before the work, not after it
        if parent.exists():
            if not parent.is_dir():
                raise CardiosegError(output, f"cannot make a folder here: {parent} is a file")
            break


def _check_predictions_folder(predictions: Path | None) -> None:
    """Refuse a ``--predictions`` folder that is not there (rather than every case missing)."""
    from cardioseg.errors import CardiosegError

    if predictions is not None and not predictions.is_dir():
        problem = "is not a folder" if predictions.exists() else "folder not found"
        raise CardiosegError(predictions, f"--predictions {problem}")


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn exceptions into one-line errors with a non-zero exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cardioseg.errors import CardiosegError

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except CardiosegError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except OSError as exc:  # an output path that cannot be used: name it and the problem
            where = exc.filename2 or exc.filename
            if where is None or exc.strerror is None:
                _fail(f"{type(exc).__name__}: {exc}".splitlines()[0])
            name = Path(str(where)).name
            if name.startswith(".") and ".tmp" in name:  # our temporary name: the real target
                where = Path(str(where)).parent
            _fail(str(CardiosegError(where, f"cannot write or read here ({exc.strerror})")))
        except Exception as exc:  # last resort: still one line
            if os.environ.get("CARDIOSEG_DEBUG"):
                raise
            _fail(f"{type(exc).__name__}: {exc}".splitlines()[0])

    return wrapper


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )


@app.command()
@friendly
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML training config")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a value, e.g. --set train.fold=2")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Train a model from a YAML config (resumes from OUTPUT_DIR/last.pt if present)."""
    _setup_logging(True)
    from cardioseg.errors import CardiosegError
    from cardioseg.training.config import load_config
    from cardioseg.training.trainer import Trainer

    cfg = load_config(config, overrides)
    try:
        result = Trainer(cfg, progress=progress).run()
    except CardiosegError as exc:  # a problem of the config's data or settings: name the file
        if exc.path is None:
            raise CardiosegError(config, exc.problem) from None
        raise
    typer.echo(f"done: {len(result['history'])} epochs, output in {cfg.output_dir}")


@app.command()
@friendly
def models(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Describe this checkpoint file (repeatable)"),
    ] = None,
) -> None:
    """List the packaged models (or describe checkpoints): network, training data, recipe."""
    from cardioseg.clinical.qc import calibration_for
    from cardioseg.models.checkpoint import (
        PACKAGED_ENSEMBLES,
        PACKAGED_MODELS,
        checkpoint_members,
        describe_checkpoint,
    )

    names = model or list(PACKAGED_MODELS)
    for name in names:
        d = describe_checkpoint(name)
        recipe = d["augmentation"] + "".join(f" + {e}" for e in d["extra_augmentation"])
        if d["init_checkpoint"]:
            recipe += f", fine-tuned from {Path(d['init_checkpoint']).name}"
        val = f"{d['val_dice']:.3f}" if d["val_dice"] is not None else "n/a"
        typer.echo(
            f"{name}: {Path(d['file']).name} ({d['size_mb']:.1f} MB), U-Net "
            f"{'-'.join(map(str, d['channels']))}, {d['parameters'] / 1e6:.2f} M parameters; "
            f"trained on {', '.join(d['datasets']) or '?'} ({d['n_train_volumes'] or '?'} "
            f"volumes at {d['target_spacing']} mm), {d['iterations']} iterations, {recipe}; "
            f"last monitored mean Dice {val} ({d['val_on']}); QC thresholds "
            + ("calibrated" if calibration_for([d["file"]]).calibrated else "not calibrated")
        )
    if not model:
        for name, members in PACKAGED_ENSEMBLES.items():
            cal = calibration_for(checkpoint_members(name))
            typer.echo(
                f"{name}: ensemble of {', '.join(members)} (softmax averaged); QC thresholds "
                + ("calibrated" if cal.calibrated else "not calibrated")
            )
        typer.echo("model cards: models/README.md")


@app.command()
@friendly
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Training checkpoint (final.pt / best.pt)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Inference checkpoint to write")],
    half: Annotated[bool, typer.Option(help="Store weights as float16")] = True,
    reference_config: Annotated[
        Path | None,
        typer.Option(
            help="Training config: add the histogram-harmonization reference of its training data "
            "when the checkpoint lacks it (checkpoints from before the generalization lab)"
        ),
    ] = None,
) -> None:
    """Write an inference-only (optionally float16) copy of a checkpoint, e.g. for shipping."""
    from cardioseg.errors import CardiosegError
    from cardioseg.models import export_checkpoint, load_checkpoint
    from cardioseg.models.checkpoint import resolve_checkpoint

    if output.resolve() == resolve_checkpoint(checkpoint).resolve():
        raise CardiosegError(output, "the export would replace its own input; name another -o")
    if output.is_dir():
        raise CardiosegError(output, "is a folder; name the checkpoint file to write")
    if output.suffix.lower() not in (".pt", ".pth"):
        raise CardiosegError(output, "an exported checkpoint is a .pt file")

    fingerprint = None
    if reference_config is not None:
        from cardioseg.training.config import load_config

        cfg = load_config(reference_config)  # checked even where the checkpoint has a reference
        fingerprint = dict(load_checkpoint(checkpoint).get("fingerprint", {}))
        if "intensity_reference" not in fingerprint:
            from cardioseg.adaptation.harmonization import HistogramReference
            from cardioseg.training.slices import load_prepared
            from cardioseg.training.trainer import collect_records, split_records

            train, _ = split_records(collect_records(cfg), cfg)
            cases = load_prepared(
                train,
                cfg.data.target_spacing,
                cfg.data.cache_dir,
                canonical_handedness=cfg.data.canonical_handedness,
            )
            fingerprint["intensity_reference"] = HistogramReference.from_volumes(
                [c.image for c in cases]
            ).to_dict()
    path = export_checkpoint(checkpoint, output, half=half, fingerprint=fingerprint)
    typer.echo(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


def _expand_inputs(inputs: list[Path]) -> list[Path]:
    from cardioseg.errors import CardiosegError
    from cardioseg.io.nifti import is_nifti

    files: list[Path] = []
    for p in inputs:
        if not p.exists():  # a mistyped input: said before any other is segmented
            raise CardiosegError(p, "file not found")
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if is_nifti(f) and "_gt" not in f.name)
            if not found:
                raise CardiosegError(p, "folder contains no NIfTI images")
            files += found
        else:
            files.append(p)
    return files


@app.command()
@friendly
def segment(
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI volumes (3D or 4D cine) or folders")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file or folder")],
    model: Annotated[
        list[Path] | None,
        typer.Option(help=MODEL_HELP + "; repeat to average an ensemble"),
    ] = None,
    tta: Annotated[
        bool, typer.Option(help="Test-time augmentation (flips, or small rotations)")
    ] = False,
    postprocess: Annotated[
        bool, typer.Option(help="Largest components, RV only beside myocardium, hole filling")
    ] = True,
    threads: Annotated[int, typer.Option(help="CPU threads (0 = torch default)")] = 0,
    adapt: Annotated[
        str | None,
        typer.Option(help="Test-time adaptation: none or tent (default: the checkpoint's setting)"),
    ] = None,
    harmonize: Annotated[
        str | None,
        typer.Option(help="Intensity harmonisation: none or histogram (default: checkpoint's)"),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="Network precision: float32, bfloat16 (faster on CPUs with native bfloat16) "
            "or auto (bfloat16 where native); default: the model's"
        ),
    ] = None,
    roi: RoiOption = None,
) -> None:
    """Segment volumes; labels (1 LV, 2 MYO, 3 RV) are written in the input's native geometry."""
    from cardioseg.errors import CardiosegError
    from cardioseg.inference import Segmenter
    from cardioseg.io.nifti import is_nifti
    from cardioseg.training.config import ADAPTATIONS, HARMONIZATIONS, PRECISIONS

    _check_at_least("--threads", threads, 0, " (0: torch's default)")
    _check_choice("--adapt", adapt, ADAPTATIONS)
    _check_choice("--harmonize", harmonize, HARMONIZATIONS)
    _check_choice("--precision", precision, PRECISIONS)
    files = _expand_inputs(inputs)
    if not is_nifti(output) and (
        output.is_file() or (not output.exists() and output.suffix.lower() in FILE_SUFFIXES)
    ):
        raise CardiosegError(
            output, "not a NIfTI file name: -o takes a .nii/.nii.gz file or a folder"
        )
    single = len(files) == 1 and is_nifti(output) and not output.is_dir()
    if not single and is_nifti(output):
        raise CardiosegError(output, "several inputs need an output folder, not a file name")
    dests = [output if single else output / f.name for f in files]
    sources = {f.resolve() for f in files}
    for dest in dests:
        if dest.resolve() in sources:
            raise CardiosegError(dest, "the output would replace an input image; name another -o")
    clash = {d for d in dests if dests.count(d) > 1}
    if clash:
        raise CardiosegError(
            sorted(clash)[0],
            "several inputs have the same file name: segment them into separate -o folders",
        )
    seg = Segmenter(
        model or None,
        tta=tta or None,
        postprocess=postprocess,
        num_threads=threads or None,
        adaptation=adapt,
        harmonization=harmonize,
        precision=precision,
        roi=roi,
    )
    failures = 0
    for f, dest in zip(files, dests, strict=True):
        try:
            res = seg.segment_file(f, dest)
            typer.echo(f"{f} -> {dest} ({res.timings['predict_s']:.2f} s)")
        except CardiosegError as exc:
            failures += 1
            typer.echo(f"error: {exc}", err=True)
    if failures:
        raise typer.Exit(1)


@app.command()
@friendly
def evaluate(
    prediction: Annotated[
        Path | None, typer.Argument(help="Prediction label map (pair mode)")
    ] = None,
    reference: Annotated[
        Path | None, typer.Argument(help="Reference label map (pair mode)")
    ] = None,
    dataset: Annotated[Path | None, typer.Option(help="Dataset folder (dataset mode)")] = None,
    layout: Annotated[str, typer.Option(help="acdc, mnms, mnms2, mscmr, folder or auto")] = "auto",
    predictions: Annotated[
        Path | None,
        typer.Option(help="Folder of predictions named like the images; omit to run the model"),
    ] = None,
    model: Annotated[
        list[Path] | None,
        typer.Option(help="Checkpoint for dataset mode; repeat to average an ensemble"),
    ] = None,
    reference_labels: Annotated[
        str, typer.Option(help="Label convention of the reference in pair mode")
    ] = "canonical",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output folder")] = None,
    tta: Annotated[
        bool, typer.Option(help="Test-time augmentation (flips or small rotations, as trained)")
    ] = False,
    roi: RoiOption = None,
    progress: Annotated[
        bool, typer.Option(help="Show a progress bar over the cases (dataset mode, terminal)")
    ] = True,
) -> None:
    """Dice, Jaccard, precision, recall, HD, HD95, ASSD (3D, spacing-aware) per structure."""
    import json
    import math

    from cardioseg.errors import CardiosegError
    from cardioseg.evaluation.metrics import compute_metrics
    from cardioseg.io.nifti import affines_match, atomic_write, read_geometry, read_label

    _check_output_folder(output)
    # options of the other mode were silently ignored (PREDICTION REFERENCE with --dataset ran
    # the model over the dataset; --model with --predictions scored the predictions)
    if dataset is not None and (prediction is not None or reference is not None):
        raise CardiosegError(dataset, "give PREDICTION REFERENCE or --dataset, not both")
    if predictions is not None and model:
        raise CardiosegError(predictions, "give --predictions or --model, not both")
    if dataset is None:
        if prediction is None or reference is None:
            raise CardiosegError(None, "give PREDICTION REFERENCE, or --dataset DIR")
        if predictions is not None or model:
            raise CardiosegError(
                None, "--predictions and --model are options of --dataset mode, not of a pair"
            )
        props = read_geometry(reference)  # an empty reference is a valid label map
        if len(props.shape) != 3:
            raise CardiosegError(
                reference, f"expected a 3D label map, got {len(props.shape)}D shape {props.shape}"
            )
        ref = read_label(reference, reference_labels, reference=props)
        pred_props = read_geometry(prediction)
        if pred_props.shape != props.shape:
            raise CardiosegError(
                prediction,
                f"prediction shape {pred_props.shape} does not match the reference's {props.shape}",
            )
        if not affines_match(pred_props.affine, props.affine):
            raise CardiosegError(prediction, "prediction affine does not match the reference's")
        pred = read_label(prediction, "canonical")  # its shape and affine checked above
        metrics = compute_metrics(pred, ref, props.spacing)
        # a structure in one mask only has no surface distance (nan): null, as JSON has no NaN
        metrics = {k: v if math.isfinite(v) else None for k, v in metrics.items()}
        text = json.dumps(metrics, indent=2, allow_nan=False)
        if output:
            output.mkdir(parents=True, exist_ok=True)
            with atomic_write(output / "metrics.json") as tmp:
                tmp.write_text(text)
        typer.echo(text)
        return
    import csv

    from cardioseg.data.datasets import discover
    from cardioseg.evaluation.runner import (
        evaluate_records,
        overlap_warning,
        run_record,
        summary_notes,
        write_run_record,
    )

    _check_predictions_folder(predictions)
    records = [r for r in discover(dataset, layout) if r.label]
    if not records:  # before a model is loaded (it said 'no case could be evaluated (0 skipped)')
        raise CardiosegError(dataset, "no case with a reference label found")
    predict = seg = None
    if predictions is None:
        from cardioseg.inference import Segmenter

        seg = Segmenter(model or None, tta=tta or None, roi=roi)
        predict = lambda v, p: seg.predict(v, p).labels  # noqa: E731
    skipped: list[tuple[str, str]] = []
    acc = evaluate_records(
        records,
        predict=predict,
        pred_dir=predictions,
        skipped=skipped,
        progress=progress and sys.stderr.isatty(),  # no bar in logs and pipes
    )
    if not len(acc):
        raise CardiosegError(dataset, f"no case could be evaluated ({len(skipped)} skipped)")
    record = run_record(dataset, layout, acc, skipped, segmenter=seg, pred_dir=predictions)
    out = output or Path("evaluation")
    (out / "run.json").unlink(missing_ok=True)  # written last: there once the others are
    acc.to_csv(out / "metrics.csv")
    by = ["phase", "vendor", "centre", "group"]
    acc.to_markdown(out / "summary.md", by=by, notes=summary_notes(record))
    typer.echo((out / "summary.md").read_text())
    (out / "skipped.csv").unlink(missing_ok=True)  # an earlier run's list is not this one's
    if skipped:
        with atomic_write(out / "skipped.csv") as tmp:
            with tmp.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["case_id", "error"])
                writer.writerows(skipped)
        for case_id, message in skipped:
            typer.echo(f"skipped {case_id}: {message}", err=True)
        typer.echo(f"{len(skipped)} case(s) skipped, listed in {out / 'skipped.csv'}", err=True)
    write_run_record(out / "run.json", record)
    warning = overlap_warning(record)
    if warning:
        typer.echo(warning, err=True)


@app.command()
@friendly
def index(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder")],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV file")] = Path("index.csv"),
    layout: Annotated[str, typer.Option(help="acdc, mnms, mnms2, mscmr, folder or auto")] = "auto",
) -> None:
    """Write the dataset index (one row per case: subject, phase, vendor, spacing, paths...)."""
    from cardioseg.data.datasets import discover
    from cardioseg.data.index import write_index
    from cardioseg.errors import CardiosegError
    from cardioseg.io.nifti import is_nifti

    if is_nifti(output):  # `-o` naming an image of the dataset replaced it with the CSV
        raise CardiosegError(output, "a NIfTI file name: -o takes the CSV file to write")
    records = discover(dataset, layout)
    write_index(records, output)
    typer.echo(f"{len(records)} cases -> {output}")


@app.command()
@friendly
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder")] = Path(
        "cardioseg-demo"
    ),
    data: Annotated[Path | None, typer.Option(help="Run on a real dataset folder instead")] = None,
    seed: Annotated[int, typer.Option(help="Phantom seed")] = 0,
    max_cases: Annotated[int, typer.Option(help="At most this many cases with --data")] = 6,
    model: Annotated[Path | None, typer.Option(help=MODEL_HELP)] = None,
) -> None:
    """Segment a synthetic study (or --data DIR), evaluate it, write masks, metrics, overlays."""
    from cardioseg.demo import run_demo

    _check_at_least("--max-cases", max_cases, 1)
    _check_at_least("--seed", seed, 0)  # numpy's 'expected non-negative integer' named nothing
    summary = run_demo(output, data=data, seed=seed, max_cases=max_cases, model=model)
    typer.echo(summary)


@app.command()
@friendly
def analyze(
    study: Annotated[
        Path | None,
        typer.Argument(
            help="DICOM folder, zip of one, 4D cine NIfTI, or a folder holding a 4D cine or "
            "an *_ED / *_ES pair of NIfTI files (ACDC: Info.cfg names the frames), or a zip of it"
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder")] = Path(
        "cardioseg-analysis"
    ),
    ed: Annotated[Path | None, typer.Option(help="ED volume (3D NIfTI), with --es")] = None,
    es: Annotated[Path | None, typer.Option(help="ES volume (3D NIfTI), with --ed")] = None,
    height: Annotated[float | None, typer.Option(help="Height in cm (for BSA indexing)")] = None,
    weight: Annotated[float | None, typer.Option(help="Weight in kg (for BSA indexing)")] = None,
    sex: Annotated[
        str | None,
        typer.Option(
            help="M or F: compare the indices with that sex's normal ranges (default: the "
            "DICOM PatientSex; sex-pooled ranges when unknown)"
        ),
    ] = None,
    heart_rate: Annotated[
        float | None,
        typer.Option(
            help="Heart rate (/min) during the scan, for the cardiac output (default: the "
            "DICOM HeartRate or R-R interval)"
        ),
    ] = None,
    ed_frame: Annotated[int | None, typer.Option(help="Force the ED frame index")] = None,
    es_frame: Annotated[int | None, typer.Option(help="Force the ES frame index")] = None,
    model: Annotated[Path | None, typer.Option(help=MODEL_HELP)] = None,
    pdf: Annotated[bool, typer.Option(help="Also write report.pdf")] = True,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            help="Take a slice out of ED or ES: PHASE:SLICE (all structures), PHASE:SLICE:LV "
            "(LV and myocardium) or PHASE:SLICE:RV; slice = index in the masks and in the "
            "report's slice table; repeatable"
        ),
    ] = None,
    roi: RoiOption = None,
    label: Annotated[
        str | None,
        typer.Option(
            help="Text shown at the top of the report to identify the study (e.g. a "
            "pseudonym or the study number); nothing of the DICOM patient module is copied "
            "into reports"
        ),
    ] = None,
    seg_phases: SegPhasesOption = "ed-es",
) -> None:
    """Clinical analysis: volumes, EF, LV mass, QC verdict, masks, DICOM-SEG and reports."""
    from cardioseg.clinical.analysis import analyze_study
    from cardioseg.inference import Segmenter
    from cardioseg.options import SEG_PHASES

    _check_choice("--seg-phases", seg_phases, SEG_PHASES)
    report = analyze_study(
        output,
        study=study,
        ed=ed,
        es=es,
        segmenter=Segmenter(model, roi=roi),
        height_cm=height,
        weight_kg=weight,
        ed_frame=ed_frame,
        es_frame=es_frame,
        write_pdf=pdf,
        exclude=exclude or (),
        sex=sex,
        heart_rate_bpm=heart_rate,
        label=label,
        seg_phases=seg_phases,
    )
    qc = report.get("qc", {})

    def shown(key: str) -> str:  # one decimal, as reported clinically (report.json keeps more)
        value = report.get(key)
        return "n/a" if value is None else f"{float(value):.1f}"

    typer.echo(
        f"LVEF {shown('lv_ef_pct')} %  LVEDV {shown('lv_edv_ml')} mL  "
        f"RVEF {shown('rv_ef_pct')} %  LV mass {shown('lv_mass_g')} g  "
        + (
            "ED/ES pair"
            if (report.get("meta") or {}).get("source_kind") == "pair"
            else f"ED {report.get('ed_frame')} ES {report.get('es_frame')}"
        )
        + f"  QC {qc.get('status')}"
    )
    for reason in qc.get("reasons", []):
        typer.echo(f"  - {reason}")
    sugg = report.get("diagnosis_suggestion")
    if sugg:
        from cardioseg.clinical.report import suggestion_line

        typer.echo(suggestion_line(sugg))
    from cardioseg.clinical.qc import slices_to_check

    check = slices_to_check(qc)
    if check:
        typer.echo(f"check first (unstable outlines): {', '.join(check)}")
    if report.get("excluded_slices"):
        typer.echo(f"excluded by the reader: {', '.join(report['excluded_slices'])}")
    typer.echo(f"report: {output / 'report.html'}")


@app.command()
@friendly
def series(
    study: Annotated[Path, typer.Argument(help="DICOM folder, zip of one, or a DICOM file")],
) -> None:
    """List a DICOM study's series and which one analyze would use, and why (no pixels read)."""
    from cardioseg.errors import CardiosegError, one_line
    from cardioseg.io.dicom import survey_study

    found, chosen, problem = survey_study(study)
    if not found:  # nothing to list: one error line naming the folder, not an empty table
        raise CardiosegError(study, problem)
    typer.echo(
        f"{'':2}{'number':>6}  {'description':<28} {'slices x phases':>15}  {'plane':<10} verdict"
    )
    for s in found:
        mark = "->" if s is chosen else ""
        number = "merged" if s.merged_from else str(s.series_number or "")
        desc = one_line(s.description) or "(no description)"
        if s.merged_from:
            desc = f"{len(s.merged_from)} series: {desc}"
        elif s.part:
            desc = f"{desc} [orientation {s.part[0]}/{s.part[1]}]"
        size = f"{s.n_positions} x {s.n_phases}"
        typer.echo(
            f"{mark:2}{number:>6}  {desc[:28]:<28} {size:>15}  {s.plane or '?':<10} {s.reason}"
        )
    if chosen is None:
        typer.echo(f"no short-axis cine: {problem}")
        raise typer.Exit(1)
    for note in chosen._header.get("selection_notes", []):
        typer.echo(f"note: {note}")


@app.command("analyze-batch")
@friendly
def analyze_batch(
    studies: Annotated[
        Path, typer.Argument(help="Folder of studies (DICOM or NIfTI folders, zips, 4D NIfTI)")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder")] = Path(
        "cardioseg-batch"
    ),
    workers: Annotated[
        int,
        typer.Option(
            help="Parallel worker processes (one per core is fastest; each holds a model, "
            "about 1 GB)"
        ),
    ] = 1,
    model: Annotated[Path | None, typer.Option(help=MODEL_HELP)] = None,
    ray: Annotated[
        str | None, typer.Option("--ray", help="Ray cluster address ('local' starts one here)")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
    exclusions: Annotated[
        Path | None,
        typer.Option(
            help="CSV with columns study,exclude: the reader's slice exclusions per study "
            "(e.g. 'ES:8 ES:9:LV'); studies whose exclusions changed are analysed again"
        ),
    ] = None,
    roi: RoiOption = None,
    pdf: Annotated[
        bool, typer.Option(help="Also write each report.pdf (--no-pdf: faster, HTML kept)")
    ] = True,
    seg_phases: SegPhasesOption = "ed-es",
) -> None:
    """Analyse many studies; one CSV row per study. Resumable: finished studies are skipped,
    unless another model analysed them (one table, one model). Exit status: 0 when every study
    is done, 2 when the batch ran to its end but some studies failed (their errors are in
    results.csv), 1 when the batch could not run."""
    import csv
    import signal

    from cardioseg.clinical.batch import read_exclusions, run_batch
    from cardioseg.options import SEG_PHASES

    _check_at_least("--workers", workers, 1)
    _check_choice("--seg-phases", seg_phases, SEG_PHASES)
    _check_output_folder(output)

    def stop(_signum: int, _frame: Any) -> None:  # a workflow manager's stop, as Ctrl-C: the
        raise KeyboardInterrupt  # queue is dropped, results.csv written, the workers end

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        table = run_batch(
            studies,
            output,
            workers=workers,
            model=str(model) if model else None,
            ray_address=ray,
            progress=progress,
            exclusions=read_exclusions(exclusions) if exclusions else None,
            roi=roi,
            write_pdf=pdf,
            seg_phases=seg_phases,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    failed = [r for r in rows if r["status"] != "done"]
    typer.echo(f"{len(rows) - len(failed)} done, {len(failed)} failed -> {table}")
    for r in failed:
        typer.echo(f"  failed: {r['study']}: {r['error']}")
    if failed:  # a pipeline can tell a complete batch from one to look at
        raise typer.Exit(2)


@app.command()
@friendly
def agreement(
    dataset: Annotated[Path, typer.Option(help="Dataset folder with ED/ES reference labels")],
    predictions: Annotated[
        Path | None,
        typer.Option(help="Folder of predictions named like the images; omit to run the model"),
    ] = None,
    layout: Annotated[str, typer.Option(help="acdc, mnms, mnms2, folder or auto")] = "auto",
    model: Annotated[Path | None, typer.Option(help=MODEL_HELP)] = None,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("agreement"),
    prediction_labels: Annotated[
        str,
        typer.Option(
            help="Label convention of --predictions: canonical (cardioseg: 1 LV, 2 MYO, 3 RV), "
            "acdc (1 RV, 2 MYO, 3 LV), mnms, ..."
        ),
    ] = "canonical",
    roi: RoiOption = None,
    tta: Annotated[
        bool,
        typer.Option(
            help="Test-time augmentation, as `analyze` segments its ED and ES frames (the "
            "indices it reports)"
        ),
    ] = False,
    analyzed: Annotated[
        Path | None,
        typer.Option(
            help="Output folder of `analyze-batch` over the dataset: compare the indices its "
            "reports give (exactly what `analyze` tells the reader) instead of running the model"
        ),
    ] = None,
) -> None:
    """Clinical indices from predictions vs. reference: Bland–Altman, r, MAE, plots."""
    from cardioseg.data.datasets import discover
    from cardioseg.errors import CardiosegError
    from cardioseg.evaluation.agreement import paired_indices, write_agreement

    _check_output_folder(output)
    from cardioseg.labels import DATASET_LABEL_MAPS

    if prediction_labels not in DATASET_LABEL_MAPS:  # before the dataset is read or a model run
        raise CardiosegError(
            None,
            f"unknown --prediction-labels {prediction_labels!r} "
            f"(one of {', '.join(sorted(DATASET_LABEL_MAPS))})",
        )
    if analyzed is not None and predictions is not None:
        raise CardiosegError(analyzed, "give --analyzed or --predictions, not both")
    if model is not None and (predictions is not None or analyzed is not None):
        # the model was silently left unused: its indices were not the ones compared
        given = "--predictions" if predictions is not None else "--analyzed"
        raise CardiosegError(predictions or analyzed, f"give {given} or --model, not both")
    if analyzed is not None and not analyzed.is_dir():
        raise CardiosegError(analyzed, "not a folder of analyze-batch results")
    _check_predictions_folder(predictions)
    records = discover(dataset, layout)
    from cardioseg.data.datasets import ed_es_pairs

    if not ed_es_pairs(records):  # e.g. MS-CMRSeg LGE: one phase per subject
        raise CardiosegError(
            dataset, "no subject with labelled ED and ES volumes (the indices need both phases)"
        )
    predict = None
    if predictions is None and analyzed is None:
        from cardioseg.inference import Segmenter

        seg = Segmenter(model, roi=roi, tta=tta)
        predict = lambda v, p: seg.predict(v, p).labels  # noqa: E731
    missing: list[str] = []
    rows = paired_indices(
        records,
        predict=predict,
        pred_dir=predictions,
        analyzed_dir=analyzed,
        pred_labels=prediction_labels,
        missing=missing,
    )
    if not rows:
        raise CardiosegError(analyzed or dataset, "no subject with both predictions and labels")
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        typer.echo(f"warning: {len(missing)} subject(s) without predictions left out: {shown}")
    md = write_agreement(rows, output, title=f"Agreement on {dataset.name}")
    typer.echo(md.read_text())


@app.command()
@friendly
def serve(
    host: Annotated[str, typer.Option(help="Address; not loopback = token required")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Database and files (default $CARDIOSEG_DATA_DIR or ./cardioseg-data)"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="Access token (default $CARDIOSEG_TOKEN; generated when not loopback)"),
    ] = None,
    model: Annotated[Path | None, typer.Option(help=MODEL_HELP)] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Upload size limit in MB")] = 2048,
    pdf: Annotated[bool, typer.Option(help="Also write report.pdf")] = True,
    seg_phases: SegPhasesOption = "ed-es",
) -> None:
    """Web app: upload studies in a browser, view masks, indices, QC, reports (see docs)."""
    import math

    from cardioseg.app import AppConfig
    from cardioseg.app import serve as run_server
    from cardioseg.app.config import TOKEN_ENV, default_data_dir
    from cardioseg.errors import CardiosegError
    from cardioseg.options import SEG_PHASES

    _check_choice("--seg-phases", seg_phases, SEG_PHASES)

    # the settings are checked here, naming the option (a port out of range stopped uvicorn
    # with a traceback; a short token or a tiny limit gave AppConfig's ValueError)
    if not 1 <= port <= 65535:
        raise CardiosegError(None, f"--port must lie between 1 and 65535, got {port}")
    if not math.isfinite(max_upload_mb):  # nan or inf: a ValueError/OverflowError not naming it
        raise CardiosegError(None, f"--max-upload-mb must be a finite number, got {max_upload_mb}")
    if max_upload_mb * 1024**2 < 1024:
        raise CardiosegError(None, f"--max-upload-mb must be at least 0.001, got {max_upload_mb:g}")
    given = token if token is not None else os.environ.get(TOKEN_ENV) or None
    if given is not None and len(given) < 8:
        source = "--token" if token is not None else f"${TOKEN_ENV}"
        raise CardiosegError(None, f"{source}: the access token must have at least 8 characters")
    data_dir = data_dir or default_data_dir()
    _check_output_folder(data_dir, "data folder")
    run_server(
        AppConfig(
            data_dir=data_dir,
            host=host,
            port=port,
            token=token,
            checkpoint=model,
            write_pdf=pdf,
            seg_phases=seg_phases,
            max_upload_bytes=int(max_upload_mb * 1024**2),
        )
    )


@app.command()
@friendly
def explore(
    datasets: Annotated[list[Path], typer.Argument(help="Dataset folders")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder")],
    layout: Annotated[str, typer.Option(help="acdc, mnms, mnms2, mscmr, folder or auto")] = "auto",
    by: Annotated[str, typer.Option(help="Domain key(s), e.g. vendor")] = "dataset+vendor",
    max_cases: Annotated[int, typer.Option(help="Volumes read per domain")] = 40,
) -> None:
    """Explore datasets: cases, geometry, intensities, montages, GIFs, domain separability."""
    from cardioseg.exploration import explore_datasets

    _check_at_least("--max-cases", max_cases, 1)
    _check_output_folder(output)
    typer.echo(f"report: {explore_datasets(datasets, output, layout, by, max_cases)}")


@app.command()
@friendly
def benchmark(
    protocol: Annotated[Path, typer.Argument(help="Protocol YAML (see configs/protocols)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (resumable)")],
    profile: Annotated[
        str, typer.Option(help="quick (2 CPU cores), full (GPU) or smoke (end-to-end check)")
    ] = "quick",
    dry_run: Annotated[bool, typer.Option(help="Only check the protocol, list the runs")] = False,
    reevaluate: Annotated[
        bool,
        typer.Option(help="Evaluate finished runs again with the current inference code"),
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Run only this method (repeatable) and what it needs; the report covers every "
            "finished run",
        ),
    ] = None,
    report_only: Annotated[
        bool, typer.Option(help="Run nothing; write the report from the finished runs")
    ] = False,
    experiment: Annotated[
        list[str] | None,
        typer.Option(
            "--experiment",
            help="Run only this experiment of the matrix (repeatable, e.g. lodo-Siemens); "
            "combines with --only",
        ),
    ] = None,
    roi: RoiOption = None,
) -> None:
    """Run a generalisation protocol: train/test matrix, metrics, Wilcoxon tests, report."""
    _setup_logging(True)
    from cardioseg.benchmark import run_benchmark

    _check_output_folder(output)
    result = run_benchmark(
        protocol,
        output,
        profile=profile,
        dry_run=dry_run,
        reevaluate=reevaluate,
        only=only,
        report_only=report_only,
        experiments=experiment,
        roi=roi,
    )
    for key, status in result.status.items():
        typer.echo(f"{status:8s} {key} {result.errors.get(key, '')}".rstrip())
    if result.report:
        typer.echo(f"report: {result.report}")
    if result.failed:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
