"""The CLI through Typer's runner: segment, evaluate, index, bad input (one line, exit != 0)."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest
from conftest import disc_labels, image_from_labels, oblique_affine, write_nifti
from typer.testing import CliRunner

from cardioseg.cli.main import app

runner = CliRunner()


def _run(args):
    return runner.invoke(app, [str(a) for a in args])


def test_segment_single_and_many(tmp_path, tiny_checkpoint):
    lab = disc_labels((50, 44, 5))
    aff = oblique_affine(spacing=(1.4, 1.4, 9.0))
    a = write_nifti(tmp_path / "a.nii.gz", image_from_labels(lab), aff)
    b = write_nifti(tmp_path / "in" / "b.nii.gz", image_from_labels(lab, seed=2), aff)
    cine = np.stack([image_from_labels(lab, seed=t) for t in range(3)], -1)
    c = write_nifti(tmp_path / "in" / "c_cine.nii.gz", cine, aff)
    res = _run(["segment", a, "-o", tmp_path / "a_seg.nii.gz", "--model", tiny_checkpoint])
    assert res.exit_code == 0, res.output
    out = nib.load(str(tmp_path / "a_seg.nii.gz"))
    assert out.shape == lab.shape and np.allclose(out.affine, aff, atol=1e-5)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 3}
    res = _run(["segment", tmp_path / "in", "-o", tmp_path / "out", "--model", tiny_checkpoint])
    assert res.exit_code == 0, res.output
    assert nib.load(str(tmp_path / "out" / b.name)).shape == lab.shape
    assert nib.load(str(tmp_path / "out" / c.name)).shape == cine.shape
    # --model repeated: an ensemble (of the same model twice here: the same labels)
    args = ["segment", a, "-o", tmp_path / "ens.nii.gz", "--model", tiny_checkpoint]
    res = _run([*args, "--model", tiny_checkpoint])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(
        np.asarray(nib.load(str(tmp_path / "ens.nii.gz")).dataobj), np.asarray(out.dataobj)
    )


@pytest.mark.parametrize("flag", ["--roi", "--whole-image"])
def test_segment_in_a_heart_window_or_the_whole_image(tmp_path, flag):
    """Both inference modes of the shipped model, chosen on the command line, segment a
    phantom written with a known affine (Dice >= 0.80 per structure)."""
    from cardioseg.data.synthetic import PhantomConfig, make_phantom
    from cardioseg.evaluation.metrics import compute_metrics

    ph = make_phantom(PhantomConfig(seed=5, vendor="philips"))
    img = write_nifti(tmp_path / "ph.nii.gz", ph.images["ED"], np.diag([*ph.spacing, 1.0]))
    res = _run(["segment", img, "-o", tmp_path / "seg.nii.gz", flag])
    assert res.exit_code == 0, res.output
    pred = np.asarray(nib.load(str(tmp_path / "seg.nii.gz")).dataobj)
    m = compute_metrics(pred, ph.labels["ED"], ph.spacing)
    assert min(m["LV_dice"], m["MYO_dice"], m["RV_dice"]) >= 0.80, m


def test_evaluate_pair(tmp_path):
    lab = disc_labels()
    ref = write_nifti(tmp_path / "ref.nii.gz", lab, oblique_affine())
    pred = write_nifti(tmp_path / "pred.nii.gz", lab, oblique_affine())
    res = _run(["evaluate", pred, ref, "-o", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["LV_dice"] == pytest.approx(1.0) and m["MYO_hd95"] == pytest.approx(0.0)


def test_evaluate_dataset_with_predictions(tmp_path):
    lab = disc_labels()
    for i in range(2):
        write_nifti(tmp_path / "ds" / f"c{i}.nii.gz", image_from_labels(lab, seed=i))
        write_nifti(tmp_path / "ds" / f"c{i}_gt.nii.gz", lab)
        write_nifti(tmp_path / "pred" / f"c{i}.nii.gz", lab)
    res = _run(
        [
            "evaluate",
            "--dataset",
            tmp_path / "ds",
            "--predictions",
            tmp_path / "pred",
            "-o",
            tmp_path / "ev",
        ]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ev" / "metrics.csv").exists()
    assert "LV" in (tmp_path / "ev" / "summary.md").read_text()
    res = _run(["index", tmp_path / "ds", "-o", tmp_path / "idx.csv"])
    assert res.exit_code == 0 and "2 cases" in res.output


def test_evaluate_dataset_records_how_its_results_were_made(tmp_path, monkeypatch):
    """Dataset mode writes run.json (version, time, command, dataset, predictions, counts) and
    heads summary.md with where the predictions came from."""
    import cardioseg

    lab = disc_labels()
    for i in range(3):
        write_nifti(tmp_path / "ds" / f"c{i}.nii.gz", image_from_labels(lab, seed=i))
        aff = oblique_affine() if i == 1 else np.eye(4)  # c1: a label that does not fit
        write_nifti(tmp_path / "ds" / f"c{i}_gt.nii.gz", lab, aff)
        write_nifti(tmp_path / "pred" / f"c{i}.nii.gz", lab)
    args = ["evaluate", "--dataset", tmp_path / "ds", "--predictions", tmp_path / "pred"]
    args += ["-o", tmp_path / "ev"]
    typed = ["cardioseg", *map(str, args[:-1]), "my out"]  # what the shell passed
    monkeypatch.setattr("sys.argv", typed)
    res = _run([*args[:-1], tmp_path / "my out"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "my out"
    run = json.loads((out / "run.json").read_text())
    assert run["cardioseg_version"] == cardioseg.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["created_utc"])
    assert run["command"] == " ".join(typed[:-1]) + " 'my out'"  # as typed, quoted to re-run
    assert run["dataset"] == {"folder": str((tmp_path / "ds").resolve()), "layout": "folder"}
    assert run["predictions"] == str((tmp_path / "pred").resolve()) and run["model"] is None
    assert run["cases"] == {"evaluated": 2, "skipped": 1, "subjects": 2}
    assert run["training_overlap"] is None  # who made the predictions is not known
    head = (out / "summary.md").read_text().split("## Overall")[0]
    assert f"Predictions: `{tmp_path / 'pred'}`" in head and cardioseg.__version__ in head
    assert "cases:" not in res.output  # no progress bar where stderr is not a terminal


def _checkpoint_trained_on(tiny_checkpoint, path, records):
    """The tiny checkpoint, its fingerprint listing ``records``' subjects as the trainer does."""
    import torch

    from cardioseg.models import save_checkpoint
    from cardioseg.training.trainer import train_subjects

    ck = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    ck["fingerprint"] = {"train_subjects": train_subjects(records)}
    return save_checkpoint(path, ck)


def test_evaluate_dataset_with_a_model_records_it_and_warns_of_its_training_subjects(
    tmp_path, tiny_checkpoint
):
    """A model run records the checkpoints (with digests) and the inference settings; where
    the cases are subjects the model (any member of an ensemble) was trained on, it warns on
    stderr and lists them in run.json and summary.md."""
    from cardioseg.data.datasets import discover

    lab = disc_labels()
    for i in range(3):
        write_nifti(tmp_path / "ds" / f"c{i}_ED.nii.gz", image_from_labels(lab, seed=i))
        write_nifti(tmp_path / "ds" / f"c{i}_ED_gt.nii.gz", lab)
    records = {r.subject: r for r in discover(tmp_path / "ds")}
    a = _checkpoint_trained_on(tiny_checkpoint, tmp_path / "a.pt", [records["c0"]])
    b = _checkpoint_trained_on(tiny_checkpoint, tmp_path / "b.pt", [records["c2"]])
    args = ["evaluate", "--dataset", tmp_path / "ds", "-o", tmp_path / "ev", "--whole-image"]
    res = _run([*args, "--model", a, "--model", b])
    assert res.exit_code == 0, res.output
    warning = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, res.stderr
    assert "2 of 3 subjects" in warning[0] and "not a held-out evaluation" in warning[0]
    run = json.loads((tmp_path / "ev" / "run.json").read_text())
    assert run["training_overlap"] == {"subjects": ["folder/c0", "folder/c2"], "n": 2, "of": 3}
    model = run["model"]
    assert model["checkpoints"] == [str(a.resolve()), str(b.resolve())]
    assert re.fullmatch(
        r"a\.pt \(sha256 [0-9a-f]{12}\) \+ b\.pt \(sha256 [0-9a-f]{12}\)", model["description"]
    ), model
    assert model["roi"] is False and model["tta"] is False
    assert model["precision"] in ("float32", "bfloat16")
    assert model["backend"] in ("torch", "onnxruntime")
    assert model["harmonization"] == "none" and model["adaptation"] == "none"
    assert run["predictions"] is None and run["cases"]["evaluated"] == 3
    head = (tmp_path / "ev" / "summary.md").read_text().split("## Overall")[0]
    assert "a.pt (sha256" in head and "heart window off" in head and "TTA off" in head
    assert model["backend"] in head and "2 of 3 subjects" in head
    # a model that lists none of them: no warning, an empty overlap
    c = _checkpoint_trained_on(tiny_checkpoint, tmp_path / "c.pt", [])
    res = _run([*args, "--model", c, "--tta"])
    assert res.exit_code == 0 and "warning:" not in res.stderr, res.stderr
    run = json.loads((tmp_path / "ev" / "run.json").read_text())
    assert run["training_overlap"] == {"subjects": [], "n": 0, "of": 3}
    assert run["model"]["tta"] is True
    # a checkpoint that does not say what it was trained on: unknown, not "none"
    res = _run([*args, "--model", tiny_checkpoint])
    assert res.exit_code == 0 and "warning:" not in res.stderr, res.stderr
    assert json.loads((tmp_path / "ev" / "run.json").read_text())["training_overlap"] is None


def test_evaluate_dataset_skips_an_unusable_case(tmp_path):
    """A case whose label does not fit its image is reported and skipped; the others count."""
    lab = disc_labels()
    for i in range(3):
        write_nifti(tmp_path / "ds" / f"c{i}.nii.gz", image_from_labels(lab, seed=i))
        aff = oblique_affine() if i == 1 else np.eye(4)
        write_nifti(tmp_path / "ds" / f"c{i}_gt.nii.gz", lab, aff)
        write_nifti(tmp_path / "pred" / f"c{i}.nii.gz", lab)
    args = ["evaluate", "--dataset", tmp_path / "ds", "--predictions", tmp_path / "pred"]
    res = _run([*args, "-o", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "ev" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and not any("c1" in r for r in rows)
    skipped = (tmp_path / "ev" / "skipped.csv").read_text()
    assert "c1" in skipped and "affine" in skipped
    assert "1 case(s) skipped" in res.output
    # nothing usable at all: a one-line error, no output folder
    for i in (0, 2):
        (tmp_path / "pred" / f"c{i}.nii.gz").unlink()
    res = _run([*args, "-o", tmp_path / "ev2"])
    _one_line_error(res, "no case could be evaluated")
    assert not (tmp_path / "ev2").exists()
    # all fixed and run again into the first folder: no stale list of skipped cases
    write_nifti(tmp_path / "ds" / "c1_gt.nii.gz", lab, np.eye(4))
    for i in (0, 2):
        write_nifti(tmp_path / "pred" / f"c{i}.nii.gz", lab)
    assert _run([*args, "-o", tmp_path / "ev"]).exit_code == 0
    assert not (tmp_path / "ev" / "skipped.csv").exists()


def test_evaluate_dataset_skips_predictions_off_the_reference_grid_or_short_of_frames(tmp_path):
    """A prediction in another geometry than its reference label (same shape, other affine),
    or one without the cine frame the reference is, is listed in skipped.csv with the reason
    instead of being scored."""
    lab = disc_labels()
    for i in range(2):  # c1's prediction: the same voxels on another grid
        write_nifti(tmp_path / "ds" / f"c{i}.nii.gz", image_from_labels(lab, seed=i))
        write_nifti(tmp_path / "ds" / f"c{i}_gt.nii.gz", lab)
        write_nifti(tmp_path / "pred" / f"c{i}.nii.gz", lab, oblique_affine() if i else None)
    args = ["evaluate", "--dataset", tmp_path / "ds", "--predictions", tmp_path / "pred"]
    res = _run([*args, "-o", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "ev" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and not any("c1" in r for r in rows)
    skipped = (tmp_path / "ev" / "skipped.csv").read_text()
    assert "c1.nii.gz: prediction affine does not match the reference label's" in skipped
    # M&Ms cines (ED frame 0, ES frame 3): a prediction of 2 frames, a 3D prediction
    cine = np.stack([lab] * 4, -1)
    (tmp_path / "mnms").mkdir()
    (tmp_path / "mnms" / "info.csv").write_text("External code,ED,ES\nA,0,3\nB,0,3\n")
    for s in ("A", "B"):
        write_nifti(tmp_path / "mnms" / s / f"{s}_sa.nii.gz", image_from_labels(cine))
        write_nifti(tmp_path / "mnms" / s / f"{s}_sa_gt.nii.gz", cine)
    write_nifti(tmp_path / "pred4d" / "A_sa.nii.gz", cine[..., :2])
    write_nifti(tmp_path / "pred4d" / "B_sa.nii.gz", lab)
    args = ["evaluate", "--dataset", tmp_path / "mnms", "--predictions", tmp_path / "pred4d"]
    res = _run([*args, "-o", tmp_path / "ev4d"])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "ev4d" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and "mnms/A/ED" in rows[1], rows  # A's ED (frame 0) is there
    skipped = (tmp_path / "ev4d" / "skipped.csv").read_text().splitlines()[1:]
    assert len(skipped) == 3, skipped
    assert "mnms/A/ES" in skipped[0] and "2 frame(s), the reference is frame 3" in skipped[0]
    assert all("B_sa.nii.gz: prediction has 1 frame(s)" in line for line in skipped[1:])


@pytest.mark.parametrize(
    ("info", "needle"),
    [
        (b"Group: NOR\nHeight: 170\n", "no ED line"),
        (b"ED: 1\nGroup: NOR\n", "no ES line"),
        (b"ED: one\nES: 12\n", "ED must be a frame number (from 1), got 'one'"),
        (b"ED: 1\nES: 12.5\n", "ES must be a frame number (from 1), got '12.5'"),
        (b"ED: 1\nES: 12\nGroup: \xff\xfeNOR\n", "not a text file (not UTF-8)"),
    ],
)
def test_a_malformed_acdc_info_cfg_is_named(tmp_path, info, needle):
    """An ACDC Info.cfg without ED/ES frame numbers, or not text, is named in one line (the
    patient was silently left out, or the command stopped on a ValueError/UnicodeDecodeError
    without the file)."""
    lab = disc_labels()
    for pid in ("patient001", "patient002"):
        d = tmp_path / "acdc" / pid
        for frame in (1, 12):
            write_nifti(d / f"{pid}_frame{frame:02d}.nii.gz", image_from_labels(lab))
            write_nifti(d / f"{pid}_frame{frame:02d}_gt.nii.gz", lab)
        (d / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: NOR\n")
    (tmp_path / "acdc" / "patient002" / "Info.cfg").write_bytes(info)
    res = _run(["index", tmp_path / "acdc", "-o", tmp_path / "index.csv"])
    _one_line_error(res, str(tmp_path / "acdc" / "patient002" / "Info.cfg"), needle)
    assert not (tmp_path / "index.csv").exists()
    res = _run(["evaluate", "--dataset", tmp_path / "acdc", "--predictions", tmp_path / "acdc"])
    _one_line_error(res, "patient002/Info.cfg", needle)


@pytest.mark.parametrize("command", ["evaluate", "agreement"])
def test_a_missing_predictions_folder_is_named(tmp_path, command):
    """--predictions naming no folder is said in one line (evaluate skipped every case as
    'file not found', agreement said 'no subject with both predictions and labels')."""
    lab = disc_labels()
    for ph in ("ED", "ES"):
        write_nifti(tmp_path / "ds" / f"c0_{ph}.nii.gz", image_from_labels(lab))
        write_nifti(tmp_path / "ds" / f"c0_{ph}_gt.nii.gz", lab)
    (tmp_path / "afile").write_text("x")
    for where, problem in (("nope", "--predictions folder not found"), ("afile", "not a folder")):
        args = [command, "--dataset", tmp_path / "ds", "--predictions", tmp_path / where]
        res = _run([*args, "-o", tmp_path / "out"])
        _one_line_error(res, str(tmp_path / where), problem)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["segment", "IMG", "--threads", "-2"],
            "--threads must be >= 0 (0: torch's default), got -2",
        ),
        (["demo", "--data", "DS", "--max-cases", "-1"], "--max-cases must be >= 1, got -1"),
        (["explore", "DS", "--max-cases", "-3"], "--max-cases must be >= 1, got -3"),
        (["analyze-batch", "DS", "--workers", "-1"], "--workers must be >= 1, got -1"),
    ],
)
def test_negative_counts_are_refused(tmp_path, tiny_checkpoint, args, message):
    """A negative count is refused in one line before anything runs or is written (segment
    stopped on torch's 'set_num_threads expects a positive integer'; demo evaluated 0 cases,
    explore read none, analyze-batch ran with one worker)."""
    lab = disc_labels()
    img = write_nifti(tmp_path / "ds" / "c0.nii.gz", image_from_labels(lab))
    write_nifti(tmp_path / "ds" / "c0_gt.nii.gz", lab)
    args = [{"IMG": img, "DS": tmp_path / "ds"}.get(a, a) for a in args]
    res = _run(
        [*args, "-o", tmp_path / "out", *(["--model", tiny_checkpoint] * (args[0] != "explore"))]
    )
    _one_line_error(res, message)
    assert not (tmp_path / "out").exists()


def _one_line_error(res, name, needle=""):
    assert res.exit_code != 0
    text = res.output.strip()
    assert "Traceback" not in text
    assert text.startswith("error:") and name in text and needle in text, text
    assert len(text.splitlines()) == 1, text


#: What the message of a refused input says, where it is worth checking.
NEEDLES = {"blank": "image is blank (every voxel is 7)", "tiny_fov": "field of view"}


def _output_folder_args(tmp_path, command: str, target, checkpoint) -> list:
    """Arguments of ``command`` writing its output folder at ``target``, over a one-case
    dataset written under ``tmp_path / "ds"``."""
    lab = disc_labels()
    for ph in ("ED", "ES"):
        write_nifti(tmp_path / "ds" / f"c0_{ph}.nii.gz", image_from_labels(lab))
        write_nifti(tmp_path / "ds" / f"c0_{ph}_gt.nii.gz", lab)
    ds = tmp_path / "ds"
    return {
        "evaluate": ["--dataset", ds, "--model", checkpoint, "-o", target],
        "agreement": ["--dataset", ds, "--model", checkpoint, "-o", target],
        "explore": [ds, "-o", target],
        "analyze-batch": [ds, "--model", checkpoint, "-o", target],
        "benchmark": [tmp_path / "protocol.yaml", "-o", target],
        "serve": ["--data-dir", target, "--model", checkpoint],
    }[command]


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "text",
        "corrupt",
        "2d",
        "5d",
        "nan",
        "zeros",
        "blank",
        "complex",
        "tiny_fov",
        "metres",
    ],
)
def test_segment_bad_input(tmp_path, tiny_checkpoint, kind):
    def noise(shape):
        return np.random.default_rng(0).random(shape).astype(np.float32)

    p = tmp_path / f"{kind}.nii.gz"
    if kind == "text":
        p = tmp_path / "notes.txt"
        p.write_text("x")
    elif kind == "corrupt":
        p.write_bytes(b"\x1f\x8b garbage")
    elif kind == "2d":
        write_nifti(p, np.ones((10, 10), np.float32))
    elif kind == "5d":
        write_nifti(p, np.ones((4, 4, 4, 2, 2), np.float32))
    elif kind == "nan":
        write_nifti(p, np.full((8, 8, 3), np.nan, np.float32))
    elif kind == "zeros":
        write_nifti(p, np.zeros((8, 8, 3), np.float32))
    elif kind == "complex":
        write_nifti(p, np.ones((40, 40, 3), np.complex64))
    elif kind == "blank":
        write_nifti(p, np.full((40, 40, 3), 7.0, np.float32))
    elif kind == "tiny_fov":  # 6 x 6 mm: no heart fits (the network would fail on it)
        write_nifti(p, noise((4, 4, 2)), np.diag([1.5, 1.5, 8.0, 1.0]))
    elif kind == "metres":  # spacing in metres read as millimetres: a 64-km image
        write_nifti(p, noise((40, 40, 3)), np.diag([1600.0, 1600.0, 8000.0, 1.0]))
    out = tmp_path / "out" / "seg.nii.gz"
    res = _run(["segment", p, "-o", out, "--model", tiny_checkpoint])
    _one_line_error(res, p.name, NEEDLES.get(kind, ""))
    assert not out.exists() and not list(tmp_path.glob("out/.*"))


def test_evaluate_bad_label(tmp_path):
    lab = disc_labels()
    ref = write_nifti(tmp_path / "ref.nii.gz", lab, oblique_affine())
    bad = lab.copy()
    bad[0, 0, 0] = 9
    pred = write_nifti(tmp_path / "pred.nii.gz", bad, oblique_affine())
    _one_line_error(_run(["evaluate", pred, ref]), "pred.nii.gz")
    small = write_nifti(tmp_path / "small.nii.gz", lab[:-2], oblique_affine())
    _one_line_error(_run(["evaluate", small, ref]), "small.nii.gz", "the reference's (48, 40, 6)")
    flat = write_nifti(tmp_path / "flat.nii.gz", lab[..., 0])  # a 2D prediction
    _one_line_error(_run(["evaluate", flat, ref]), "flat.nii.gz", "prediction shape (48, 40)")
    moved = write_nifti(tmp_path / "moved.nii.gz", lab, oblique_affine(spacing=(2.0, 2.0, 9.0)))
    _one_line_error(_run(["evaluate", moved, ref]), "moved.nii.gz", "prediction affine")


def test_evaluate_an_image_given_as_the_prediction_is_named_in_a_short_line(tmp_path):
    """An image (hundreds of grey values) in place of a label map: the message lists a few of
    its values and suggests the mix-up (it printed every value, thousands of characters)."""
    lab = disc_labels()
    ref = write_nifti(tmp_path / "ref.nii.gz", lab, oblique_affine())
    img = np.round(image_from_labels(lab, scale=500.0))
    pred = write_nifti(tmp_path / "img.nii.gz", img, oblique_affine())
    res = _run(["evaluate", pred, ref])
    _one_line_error(res, "img.nii.gz", "an image rather than a label map?")
    assert ", ...]" in res.output and len(res.output) < 300, res.output


@pytest.mark.parametrize("shape", [(48, 40), (48, 40, 6, 2, 2)])
def test_evaluate_pair_refuses_a_label_map_that_is_not_3d(tmp_path, shape):
    lab = np.zeros(shape, np.uint8)
    lab[10:20, 10:20] = 1
    ref = write_nifti(tmp_path / "ref.nii.gz", lab)
    res = _run(["evaluate", ref, ref, "-o", tmp_path / "ev"])
    _one_line_error(res, "ref.nii.gz", f"expected a 3D label map, got {len(shape)}D shape")
    assert not (tmp_path / "ev").exists()


def test_evaluate_pair_writes_undefined_metrics_as_null(tmp_path):
    """A structure in the reference only has no precision and no surface distance: null in
    metrics.json (strict JSON has no NaN), and the other values as computed."""
    lab = disc_labels()
    ref = write_nifti(tmp_path / "ref.nii.gz", lab)
    pred = write_nifti(tmp_path / "pred.nii.gz", np.where(lab == 3, 0, lab).astype(np.uint8))
    res = _run(["evaluate", pred, ref, "-o", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "ev" / "metrics.json").read_text()
    assert "NaN" not in text and "NaN" not in res.output
    m = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert m["RV_hd95"] is None and m["RV_precision"] is None and m["RV_dice"] == 0.0
    assert m["LV_dice"] == pytest.approx(1.0) and m["LV_hd95"] == pytest.approx(0.0)


def test_bad_model_and_config(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("nope")
    img = write_nifti(tmp_path / "i.nii.gz", image_from_labels(disc_labels()))
    _one_line_error(_run(["segment", img, "-o", tmp_path / "o.nii.gz", "--model", junk]), "junk.pt")
    _one_line_error(_run(["train", "--config", tmp_path / "none.yaml"]), "none.yaml")
    for text in ("", "# settings to come\n"):  # empty: named (was 'no labelled training cases')
        (tmp_path / "empty.yaml").write_text(text)
        res = _run(["train", "--config", tmp_path / "empty.yaml"])
        _one_line_error(res, "empty.yaml", "the config file is empty")
    # a file that is not a mapping (a README given by mistake; a list): said for what it is
    # (was "'config' must be a mapping"; with an override, a TypeError)
    for text in ("Some notes.\n", "- a\n- b\n"):
        (tmp_path / "notes.yaml").write_text(text)
        for extra in ([], ["--set", "seed=1"]):
            res = _run(["train", "--config", tmp_path / "notes.yaml", *extra])
            _one_line_error(res, "notes.yaml", "not a training config (a YAML mapping")


@pytest.mark.parametrize("command", ["train", "benchmark"])
def test_a_config_or_protocol_that_is_not_utf8_is_named(tmp_path, command):
    """A training config or benchmark protocol saved in another encoding (Latin-1 here) is
    named in one line (was a UnicodeDecodeError without the file)."""
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("# réglages\ntrain:\n  epochs: 2\n".encode("latin-1"))
    args = ["train", "--config", bad] if command == "train" else ["benchmark", bad]
    res = _run([*args, "-o", tmp_path / "out"] if command == "benchmark" else args)
    _one_line_error(res, "latin1.yaml", "not a text file (not UTF-8)")
    assert not (tmp_path / "out").exists()


def test_version_and_models(tmp_path, tiny_checkpoint):
    from cardioseg import __version__
    from cardioseg.models.checkpoint import PACKAGED_MODELS, describe_checkpoint

    res = _run(["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"cardioseg {__version__}"
    # every packaged model and ensemble is listed with its network and training data
    res = _run(["models"])
    assert res.exit_code == 0, res.output
    for name in (*PACKAGED_MODELS, "ensemble"):
        assert f"{name}: " in res.output
    assert "24-48-96-192-384" in res.output and "trained on acdc" in res.output
    # whose QC thresholds were calibrated for it (v3 has none of its own)
    lines = {line.split(":")[0]: line for line in res.output.splitlines()}
    for name in ("default", "contrast", "ensemble"):
        assert lines[name].endswith("QC thresholds calibrated")
    assert lines["v3"].endswith("QC thresholds not calibrated")
    # a checkpoint file: its own network (4-8-16, 2 levels of 2x2 convolutions) and parameters
    info = describe_checkpoint(tiny_checkpoint)
    assert info["channels"] == [4, 8, 16] and 0 < info["parameters"] < 20_000
    assert info["val_dice"] is None and info["val_on"] == "training subjects"
    # sizes in MB (10^6 bytes), as `export` prints them (`models` printed MiB as "MB")
    assert info["size_mb"] == round(tiny_checkpoint.stat().st_size / 1e6, 2)
    res = _run(["models", "--model", tiny_checkpoint])
    assert res.exit_code == 0 and "U-Net 4-8-16" in res.output and "n/a" in res.output
    assert "QC thresholds not calibrated" in res.output
    # a missing file: one line naming it, exit != 0
    res = _run(["models", "--model", tmp_path / "nope.pt"])
    assert res.exit_code != 0 and "nope.pt" in res.output and "Traceback" not in res.output


def test_segment_never_writes_over_an_input(tmp_path, tiny_checkpoint):
    lab = disc_labels((50, 44, 5))
    aff = oblique_affine(spacing=(1.4, 1.4, 9.0))
    a = write_nifti(tmp_path / "in" / "img.nii.gz", image_from_labels(lab), aff)
    b = write_nifti(tmp_path / "other" / "img.nii.gz", image_from_labels(lab, seed=2), aff)
    before = a.read_bytes()
    base = ["--model", tiny_checkpoint]
    _one_line_error(_run(["segment", a, "-o", a, *base]), "would replace an input")
    _one_line_error(_run(["segment", tmp_path / "in", "-o", tmp_path / "in", *base]), "img.nii.gz")
    _one_line_error(_run(["segment", a, b, "-o", tmp_path / "out", *base]), "same file name")
    assert a.read_bytes() == before and not (tmp_path / "out").exists()


def test_error_naming_a_file_with_a_line_break_stays_one_line(tmp_path, tiny_checkpoint):
    odd = tmp_path / "scan\nseries 2.nii.gz"  # a legal file name on Linux
    odd.write_bytes(b"not an image")
    res = _run(["segment", odd, "-o", tmp_path / "out", "--model", tiny_checkpoint])
    _one_line_error(res, "scan series 2.nii.gz")


def test_negative_pixdim_gives_one_line_on_the_real_stderr(tmp_path, tiny_checkpoint):
    """nibabel writes its own header fixes to stderr: the user must see only our one line."""
    import subprocess
    import sys

    img = nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 5)).astype(np.float32), None)
    img.header["pixdim"][1:4] = [-1.5, 1.5, 8.0]
    path = tmp_path / "neg.nii.gz"
    nib.save(img, str(path))
    code = "from cardioseg.cli.main import main; main()"
    args = ["segment", str(path), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_checkpoint)]
    res = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert res.returncode != 0
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert len(lines) == 1 and "zero or negative voxel spacing" in lines[0], lines


def test_evaluate_empty_masks_unknown_conventions_and_outputs(tmp_path):
    lab = disc_labels()
    ref = write_nifti(tmp_path / "ref.nii.gz", lab, oblique_affine())
    empty = write_nifti(tmp_path / "empty.nii.gz", np.zeros_like(lab), oblique_affine())
    for pred, truth in ((empty, ref), (ref, empty)):  # an empty mask either side is a result
        res = _run(["evaluate", pred, truth])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["LV_dice"] == 0.0
    res = _run(["evaluate", ref, ref, "--reference-labels", "foo"])
    _one_line_error(res, "unknown label convention 'foo'", "acdc")
    (tmp_path / "afile").write_text("x")
    res = _run(["evaluate", ref, ref, "-o", tmp_path / "afile"])
    _one_line_error(res, "afile", "output exists and is not a folder")


def test_export_never_replaces_its_input(tmp_path, tiny_checkpoint):
    import shutil

    ckpt = shutil.copy(tiny_checkpoint, tmp_path / "last.pt")
    before = (tmp_path / "last.pt").read_bytes()
    _one_line_error(_run(["export", ckpt, "-o", ckpt]), "would replace its own input")
    _one_line_error(_run(["export", ckpt, "-o", tmp_path]), "is a folder")
    _one_line_error(_run(["export", ckpt, "-o", tmp_path / "x.nii.gz"]), "a .pt file")
    assert (tmp_path / "last.pt").read_bytes() == before
    res = _run(["export", ckpt, "-o", tmp_path / "small.pt"])
    assert res.exit_code == 0, res.output


def test_export_always_checks_its_reference_config(tmp_path, tiny_checkpoint):
    """--reference-config is read and checked also for a checkpoint that already has its
    intensity reference (a missing or broken file was silently ignored there)."""
    import torch

    from cardioseg.models import save_checkpoint

    ck = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    ck["fingerprint"] = {"intensity_reference": {"values": [0.0, 1.0]}}
    ckpt = save_checkpoint(tmp_path / "with_ref.pt", ck)
    out = tmp_path / "small.pt"
    (tmp_path / "bad.yaml").write_text("train:\n  epochz: 3\n")
    for name, problem in (("missing.yaml", "config file not found"), ("bad.yaml", "unknown key")):
        res = _run(["export", ckpt, "-o", out, "--reference-config", tmp_path / name])
        _one_line_error(res, name, problem)
        assert not out.exists()
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  epochs: 3\n")
    res = _run(["export", ckpt, "-o", out, "--reference-config", good])
    assert res.exit_code == 0, res.output
    kept = torch.load(out, map_location="cpu", weights_only=False)["fingerprint"]
    assert kept["intensity_reference"] == {"values": [0.0, 1.0]}  # the checkpoint's own


@pytest.mark.parametrize(
    ("option", "value"), [("--precision", "float16"), ("--adapt", "bn"), ("--harmonize", "zscore")]
)
def test_segment_refuses_an_unknown_choice_naming_the_option(tmp_path, option, value):
    """A value the option does not take is refused in one line naming the option and the choices,
    before a model is loaded (it used to come back as 'ValueError: precision must be ...')."""
    img = write_nifti(tmp_path / "img.nii.gz", image_from_labels(disc_labels()))
    res = _run(["segment", img, "-o", tmp_path / "seg.nii.gz", option, value])
    _one_line_error(res, option, "must be one of")
    assert value in res.output and "ValueError" not in res.output
    assert not (tmp_path / "seg.nii.gz").exists()


@pytest.mark.parametrize("name", ["seg.txt", "seg.nrrd", "existing_file"])
def test_segment_output_that_is_not_a_nifti_file_name_is_refused(tmp_path, tiny_checkpoint, name):
    """``-o seg.txt`` made a folder called seg.txt; an existing file that is not NIfTI failed
    later on a path it could not create."""
    img = write_nifti(tmp_path / "img.nii.gz", image_from_labels(disc_labels()))
    out = tmp_path / name
    if name == "existing_file":
        out.write_text("keep")
    res = _run(["segment", img, "-o", out, "--model", tiny_checkpoint])
    _one_line_error(res, name, "not a NIfTI file name")
    assert not out.is_dir() and (name != "existing_file" or out.read_text() == "keep")
    # a folder name with a dot is still a folder
    res = _run(["segment", img, "-o", tmp_path / "results.v2", "--model", tiny_checkpoint])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "results.v2" / "img.nii.gz").is_file()


@pytest.mark.parametrize(
    "command", ["evaluate", "agreement", "explore", "analyze-batch", "benchmark", "serve"]
)
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(
    tmp_path, tiny_checkpoint, command, monkeypatch
):
    """-o (serve: --data-dir) naming a file is refused in one line, before the model runs
    (evaluate and agreement segmented the whole dataset, then stopped on 'cannot write or read
    here (File exists)'); the file is left as it was."""
    import cardioseg.inference

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cardioseg.inference, "Segmenter", no_model)
    target = tmp_path / "afile"
    target.write_text("keep")
    args = _output_folder_args(tmp_path, command, target, tiny_checkpoint)
    what = "data folder" if command == "serve" else "output"
    _one_line_error(_run([command, *args]), str(target), f"{what} exists and is not a folder")
    assert target.read_text() == "keep"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "--port must lie between 1 and 65535, got 99999"),
        (["--port", "0"], "--port must lie between 1 and 65535, got 0"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be at least 0.001, got 0"),
        (["--token", "short"], "--token: the access token must have at least 8 characters"),
        ([], "$CARDIOSEG_TOKEN: the access token must have at least 8 characters"),
    ],
)
def test_serve_refuses_bad_settings_naming_the_option(tmp_path, monkeypatch, args, message):
    """A port out of range (uvicorn stopped with a traceback), a tiny upload limit or a short
    token (AppConfig's 'ValueError: max_upload_bytes ...') are refused in one line that names
    the option, before the server starts or its data folder is made."""
    import cardioseg.app

    def no_server(*a, **k):
        raise AssertionError("the server was started")

    monkeypatch.setattr(cardioseg.app, "serve", no_server)
    monkeypatch.setenv("CARDIOSEG_TOKEN", "short")
    _one_line_error(_run(["serve", "--data-dir", tmp_path / "data", *args]), message)
    assert not (tmp_path / "data").exists()


def test_an_exclusions_folder_is_not_said_to_be_missing(tmp_path):
    from cardioseg.clinical.batch import read_exclusions
    from cardioseg.errors import CardiosegError

    with pytest.raises(CardiosegError, match="exclusions is not a file"):
        read_exclusions(tmp_path)
    with pytest.raises(CardiosegError, match="exclusions file not found"):
        read_exclusions(tmp_path / "nope.csv")


def test_agreement_on_a_dataset_without_ed_es_pairs_says_so(tmp_path, monkeypatch):
    """A dataset of single-phase volumes (as MS-CMRSeg LGE) is refused for what it lacks,
    before the model is loaded (it said 'no subject with both predictions and labels' after
    segmenting every volume)."""
    import cardioseg.inference

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cardioseg.inference, "Segmenter", no_model)
    lab = disc_labels()
    write_nifti(tmp_path / "ds" / "c0.nii.gz", image_from_labels(lab))
    write_nifti(tmp_path / "ds" / "c0_gt.nii.gz", lab)
    res = _run(["agreement", "--dataset", tmp_path / "ds", "-o", tmp_path / "out"])
    _one_line_error(res, "ds", "no subject with labelled ED and ES volumes")
    assert not (tmp_path / "out").exists()
    # an unknown --prediction-labels is said before the dataset is read or the model loaded
    res = _run(["agreement", "--dataset", tmp_path / "nope", "--prediction-labels", "foo"])
    _one_line_error(res, "unknown --prediction-labels 'foo'")


def test_index_refuses_an_output_that_is_an_image_of_the_dataset(tmp_path):
    """``index DS -o DS/img.nii.gz`` replaced the image with the CSV; a file given as the
    dataset is said to be a file (it was 'dataset folder not found')."""
    lab = disc_labels()
    img = write_nifti(tmp_path / "ds" / "c0.nii.gz", image_from_labels(lab))
    write_nifti(tmp_path / "ds" / "c0_gt.nii.gz", lab)
    before = img.read_bytes()
    res = _run(["index", tmp_path / "ds", "-o", img])
    _one_line_error(res, "c0.nii.gz", "-o takes the CSV file to write")
    assert img.read_bytes() == before
    res = _run(["index", img, "-o", tmp_path / "index.csv"])
    _one_line_error(res, "c0.nii.gz", "is a file, not a dataset folder")
    assert not (tmp_path / "index.csv").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["PRED", "REF", "--dataset", "DS"], "give PREDICTION REFERENCE or --dataset, not both"),
        (["--dataset", "DS", "--predictions", "PREDS", "--model", "CKPT"], "--model, not both"),
        (["PRED", "REF", "--predictions", "PREDS"], "options of --dataset mode, not of a pair"),
        (["PRED", "REF", "--model", "CKPT"], "options of --dataset mode, not of a pair"),
    ],
)
def test_evaluate_refuses_options_of_both_modes(
    tmp_path, tiny_checkpoint, monkeypatch, args, needle
):
    """Options of the other mode were silently ignored: a pair with --dataset ran the model over
    the dataset; --model with --predictions, or either with a pair, was left unused."""
    import cardioseg.inference

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cardioseg.inference, "Segmenter", no_model)
    lab = disc_labels()
    write_nifti(tmp_path / "ds" / "c0.nii.gz", image_from_labels(lab))
    ref = write_nifti(tmp_path / "ds" / "c0_gt.nii.gz", lab)
    write_nifti(tmp_path / "pred" / "c0.nii.gz", lab)
    names = {"PRED": ref, "REF": ref, "DS": tmp_path / "ds", "PREDS": tmp_path / "pred"}
    names["CKPT"] = tiny_checkpoint
    res = _run(["evaluate", *[names.get(a, a) for a in args], "-o", tmp_path / "ev"])
    _one_line_error(res, needle)
    assert not (tmp_path / "ev").exists()


def test_evaluate_a_dataset_without_labels_is_said_before_the_model_is_loaded(
    tmp_path, monkeypatch
):
    import cardioseg.inference

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cardioseg.inference, "Segmenter", no_model)
    write_nifti(tmp_path / "ds" / "c0.nii.gz", image_from_labels(disc_labels()))
    res = _run(["evaluate", "--dataset", tmp_path / "ds", "-o", tmp_path / "ev"])
    _one_line_error(res, str(tmp_path / "ds"), "no case with a reference label found")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("given", ["--predictions", "--analyzed"])
def test_agreement_refuses_a_model_with_predictions_or_analyzed(
    tmp_path, tiny_checkpoint, monkeypatch, given
):
    """--model next to --predictions (or --analyzed) was silently left unused."""
    import cardioseg.inference

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cardioseg.inference, "Segmenter", no_model)
    lab = disc_labels()
    for ph in ("ED", "ES"):
        write_nifti(tmp_path / "ds" / f"c0_{ph}.nii.gz", image_from_labels(lab))
        write_nifti(tmp_path / "ds" / f"c0_{ph}_gt.nii.gz", lab)
        write_nifti(tmp_path / "pred" / f"c0_{ph}.nii.gz", lab)
    args = ["agreement", "--dataset", tmp_path / "ds", given, tmp_path / "pred"]
    res = _run([*args, "--model", tiny_checkpoint, "-o", tmp_path / "out"])
    _one_line_error(res, str(tmp_path / "pred"), f"give {given} or --model, not both")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command", ["evaluate", "agreement", "explore", "analyze-batch", "benchmark", "serve"]
)
def test_an_output_folder_under_a_file_is_refused_before_any_work(
    tmp_path, tiny_checkpoint, command, monkeypatch
):
    """-o (serve: --data-dir) inside a file: said before the model runs (evaluate and agreement
    segmented the whole dataset, then stopped on '.../run.json: cannot write or read here')."""
    import cardioseg.app
    import cardioseg.inference

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded or the server started")

    monkeypatch.setattr(cardioseg.inference, "Segmenter", no_model)
    monkeypatch.setattr(cardioseg.app, "serve", no_model)
    (tmp_path / "afile").write_text("keep")
    target = tmp_path / "afile" / "sub" / "out"
    args = _output_folder_args(tmp_path, command, target, tiny_checkpoint)
    needle = f"cannot make a folder here: {tmp_path / 'afile'} is a file"
    _one_line_error(_run([command, *args]), str(target), needle)
    assert (tmp_path / "afile").read_text() == "keep"


@pytest.mark.parametrize("model", ["bogus", "junk.pt"])
def test_analyze_batch_with_an_unusable_model_leaves_no_output_folder(tmp_path, model):
    """A missing or unreadable --model was found only by the analysis, after the output folder,
    an empty results.csv and a lock file were made."""
    write_nifti(tmp_path / "studies" / "s0.nii.gz", np.ones((8, 8, 3, 2), np.float32))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    name = str(tmp_path / model) if model == "junk.pt" else model
    res = _run(
        ["analyze-batch", tmp_path / "studies", "-o", tmp_path / "out", "--model", name]
        + ["--no-progress"]
    )
    _one_line_error(res, name, "not found" if model == "bogus" else "cannot read model checkpoint")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--max-upload-mb", "nan"], "--max-upload-mb must be a finite number, got nan"),
        (["serve", "--max-upload-mb", "inf"], "--max-upload-mb must be a finite number, got inf"),
        (["demo", "--seed", "-1"], "--seed must be >= 0, got -1"),
    ],
)
def test_unusable_numbers_are_refused_naming_the_option(tmp_path, monkeypatch, args, message):
    """nan/inf upload limits stopped on 'ValueError: cannot convert float NaN to integer' or an
    OverflowError, a negative demo seed on numpy's 'expected non-negative integer'."""
    import cardioseg.app

    def no_server(*a, **k):
        raise AssertionError("the server was started")

    monkeypatch.setattr(cardioseg.app, "serve", no_server)
    where = ["--data-dir", tmp_path / "out"] if args[0] == "serve" else ["-o", tmp_path / "out"]
    _one_line_error(_run([*args, *where]), message)
    assert not (tmp_path / "out").exists()


def test_segment_checks_that_every_input_is_there_before_segmenting(tmp_path, tiny_checkpoint):
    """A mistyped input among several was found after the others were segmented (their
    outputs written, then 'file not found' and exit 1): now nothing is written."""
    a = write_nifti(tmp_path / "a.nii.gz", image_from_labels(disc_labels()))
    res = _run(
        ["segment", a, tmp_path / "nope.nii.gz", "-o", tmp_path / "out", "--model", tiny_checkpoint]
    )
    _one_line_error(res, "nope.nii.gz", "file not found")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["segment", "", "-o", "out.nii.gz"], "an empty argument"),
        (["segment", "a.nii.gz", "-o", ""], "-o was given an empty value"),
        (["analyze", "study", "--model", ""], "--model was given an empty value"),
    ],
)
def test_an_empty_argument_is_refused_before_any_command_runs(tmp_path, monkeypatch, args, needle):
    """Typer reads "" as the current folder: ``segment ""`` segmented the NIfTI files there and
    ``-o ""`` wrote into it. An empty argument (an unset shell variable) is refused."""
    monkeypatch.chdir(tmp_path)
    write_nifti(tmp_path / "here.nii.gz", np.zeros((8, 8, 2), np.float32))
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and needle in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.nii.gz"]  # nothing written


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["segment", "x.nii.gz", "-o", "y.nii.gz", "--threads", "x"], "'--threads'"),
        (["segmnt"], "No such command 'segmnt'"),
        (["analyze", "--bogus"], "No such option: --bogus"),
        (["segment"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line(args, needle):
    """A mistyped command, option or value is said in one line, as every other error (Typer
    drew a framed block over several lines), with exit status 2 and where to look."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    text = res.output.strip()
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error: ") and needle in text and "--help)" in text


def test_no_arguments_still_show_the_help():
    res = runner.invoke(app, [])
    assert "Usage:" in res.output and "analyze" in res.output
