"""The benchmark: protocol validation (bad input refused before training), a tiny end-to-end
protocol on synthetic vendors (resumable), seeded splits, leave-one-domain-out expansion."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import (
    QUICK_TRAIN,
    REPO,
    SHARED,
    TINY_MODEL,
    disc_labels,
    image_from_labels,
    write_nifti,
)
from typer.testing import CliRunner

from cardioseg.benchmark import load_protocol, plan, run_benchmark
from cardioseg.cli.main import app
from cardioseg.data.synthetic import PhantomConfig, make_phantom, write_phantom
from cardioseg.errors import CardiosegError

runner = CliRunner()

QUICK = {
    "seeds": [0],
    "config": {"model": dict(TINY_MODEL), "train": dict(QUICK_TRAIN)},
}


@pytest.fixture(scope="module")
def vendors(tmp_path_factory) -> Path:
    """Two synthetic vendors (folder layout), 3 subjects each, ED + ES."""
    root = tmp_path_factory.mktemp("vendors")
    for vendor, seeds in (("siemens", (0, 1, 2)), ("ge", (10, 11, 12))):
        for s in seeds:
            cfg = PhantomConfig(seed=s, shape=(64, 64), spacing=3.0, n_slices=4, vendor=vendor)
            write_phantom(make_phantom(cfg), root / vendor, name=f"{vendor}{s}")
    return root


def _protocol(tmp_path: Path, vendors: Path, **changes) -> Path:
    values = {
        "name": "tiny",
        "datasets": {
            "src": {"path": str(vendors / "siemens"), "layout": "folder", "domain": "Siemens"},
            "tgt": {"path": str(vendors / "ge"), "layout": "folder", "domain": "GE"},
        },
        "splits": {"tgt": {"seed": 1, "parts": {"pool": 1, "test": "rest"}}},
        "seeds": [0],
        "baseline": "baseline",
        "base": {"data": {"target_spacing": 3.0, "cache_dir": str(tmp_path / "cache")}},
        "profiles": {"quick": QUICK},
        "methods": [
            "baseline",
            {"name": "tent", "model_from": "baseline", "config": {"inference": {"tent_steps": 2}}},
        ],
        "experiments": [
            {
                "name": "s2g",
                "sources": ["src"],
                "targets": [{"dataset": "tgt", "split": "test"}],
                "adaptation_pool": [{"dataset": "tgt", "split": "pool"}],
            }
        ],
    }
    values.update(changes)
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def test_tiny_protocol_end_to_end_and_resume(tmp_path, vendors):
    proto = _protocol(tmp_path, vendors)
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "box_gone.png").write_bytes(b"an experiment of an earlier report")
    res = run_benchmark(proto, out, profile="quick")
    assert res.status == {"s2g/baseline/seed0": "done", "s2g/tent/seed0": "done"}, res.errors
    report = (out / "report.md").read_text()
    assert "Summary per target domain" in report and "Wilcoxon" in report
    assert "| GE | tent |" in report and "box_s2g.png" in report
    assert (out / "figures" / "box_s2g.png").stat().st_size > 0
    assert not (out / "figures" / "box_gone.png").exists()
    rows = list(csv.DictReader(open(out / "per_case_metrics.csv")))
    assert {r["method"] for r in rows} == {"baseline", "tent"}
    assert len(rows) == 2 * 2 * 2  # methods x 2 test subjects x ED/ES
    assert {"LV_dice", "MYO_hd95", "RV_hd95", "phase", "domain"} <= set(rows[0])
    assert {r["phase"] for r in rows} == {"ED", "ES"}
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert {(s["domain"], s["method"]) for s in summary} == {("GE", "baseline"), ("GE", "tent")}
    tests = list(csv.DictReader(open(out / "wilcoxon.csv")))
    assert {t["reference"] for t in tests} == {"baseline"}
    base = out / "runs" / "s2g" / "baseline" / "seed0"
    assert (base / "done.json").exists() and (base / "train" / "final.pt").exists()
    assert not (base / "train" / "last.pt").exists()
    info = json.loads((out / "runs" / "s2g" / "tent" / "seed0" / "run.json").read_text())
    assert info["model"] == "reused from s2g/baseline/seed0"
    trained = json.loads((base / "run.json").read_text())["config"]["output_dir"]
    assert Path(trained) == base / "train" and (Path(trained) / "final.pt").exists()
    ev = info["evaluation"]  # how the metrics were made, as resolved
    assert ev["model"]["roi"] in (True, False) and ev["model"]["tta"] is False
    assert ev["model"]["backend"] in ("torch", "onnxruntime") and ev["cardioseg_version"]
    assert "final.pt (sha256 " in ev["model"]["description"]
    assert "## How the runs were evaluated" in report and "compare them with care" not in report
    assert "adaptation tent" in report  # the methods' own settings are listed
    assert not list(out.rglob("*.partial"))
    stamp = (base / "run.json").stat().st_mtime_ns

    # second invocation (CLI): everything is skipped, nothing retrained
    r = runner.invoke(app, ["benchmark", str(proto), "-o", str(out), "--profile", "quick"])
    assert r.exit_code == 0, r.output
    assert r.output.count("skipped") == 2
    assert (base / "run.json").stat().st_mtime_ns == stamp

    # an interrupted run (no done marker) is redone; finished ones stay skipped
    tent = out / "runs" / "s2g" / "tent" / "seed0"
    (tent / "done.json").unlink()
    tent.rename(tent.with_name("seed0.partial"))
    # --report-only first: nothing runs, the report covers the finished run only
    r = runner.invoke(app, ["benchmark", str(proto), "-o", str(out), "--report-only"])
    assert r.exit_code == 0, r.output
    assert "skipped  s2g/baseline/seed0" in r.output and "not run  s2g/tent/seed0" in r.output
    assert tent.with_name("seed0.partial").exists() and not tent.exists()
    report = (out / "report.md").read_text()
    assert "| GE | baseline |" in report and "| GE | tent |" not in report
    res = run_benchmark(proto, out, profile="quick")
    assert res.status == {"s2g/baseline/seed0": "skipped", "s2g/tent/seed0": "done"}
    assert (base / "run.json").stat().st_mtime_ns == stamp

    # --reevaluate: finished runs are evaluated again (new metrics file), never re-trained
    model_stamp = (base / "train" / "final.pt").stat().st_mtime_ns
    old_info = json.loads((base / "run.json").read_text())
    del old_info["evaluation"]  # as a run finished before runs recorded it
    (base / "run.json").write_text(json.dumps(old_info))
    run_benchmark(proto, out, profile="quick", report_only=True)
    report = (out / "report.md").read_text()
    assert "differ in record: compare them with care" in report and "not recorded" in report
    (base / "metrics.csv").write_text("stale\n")
    r = runner.invoke(
        app, ["benchmark", str(proto), "-o", str(out), "--profile", "quick", "--reevaluate"]
    )
    assert r.exit_code == 0, r.output
    assert r.output.count("re-evaluated") == 2
    assert (base / "train" / "final.pt").stat().st_mtime_ns == model_stamp
    again = list(csv.DictReader(open(base / "metrics.csv")))
    assert len(again) == 4 and {r["method"] for r in again} == {"baseline"}
    assert "evaluated again" in (out / "report.md").read_text()
    assert "evaluation" in json.loads((base / "run.json").read_text())  # the new record
    assert "compare them with care" not in (out / "report.md").read_text()
    tent_info = json.loads((tent / "run.json").read_text())
    tent_info["evaluation"]["cardioseg_version"] = "0.0.1"  # evaluated by older code
    tent_info["evaluation"]["model"]["roi"] = not tent_info["evaluation"]["model"]["roi"]
    (tent / "run.json").write_text(json.dumps(tent_info))
    run_benchmark(proto, out, profile="quick", report_only=True)
    report = (out / "report.md").read_text()
    assert "differ in cardioseg version, heart window: compare them with care" in report

    # --only: one method and what it needs; the other finished runs stay as they are
    stamps = {
        m: (out / "runs" / "s2g" / m / "seed0" / "metrics.csv").stat().st_mtime_ns
        for m in ("baseline", "tent")
    }
    res = run_benchmark(proto, out, profile="quick", reevaluate=True, only=["baseline"])
    assert res.status == {"s2g/baseline/seed0": "re-evaluated", "s2g/tent/seed0": "skipped"}
    tent_metrics = out / "runs" / "s2g" / "tent" / "seed0" / "metrics.csv"
    assert tent_metrics.stat().st_mtime_ns == stamps["tent"]
    shutil.rmtree(tent)
    res = run_benchmark(proto, out, profile="quick", only=["baseline"])
    assert res.status == {"s2g/baseline/seed0": "skipped", "s2g/tent/seed0": "not run"}
    assert "1 not run" in (out / "report.md").read_text()
    rows = list(csv.DictReader(open(out / "per_case_metrics.csv")))
    assert {r["method"] for r in rows} == {"baseline"}
    # a method's dependency is run with it
    shutil.rmtree(base)
    res = run_benchmark(proto, out, profile="quick", only=["tent"])
    assert res.status == {"s2g/baseline/seed0": "done", "s2g/tent/seed0": "done"}
    r = runner.invoke(app, ["benchmark", str(proto), "-o", str(out), "--only", "magic"])
    assert r.exit_code != 0 and "unknown method 'magic'" in r.output
    # the finished runs were trained with the quick profile: a plan with other training
    # settings (another profile, an edited protocol) is refused, never mixed into the table
    longer = {**QUICK["config"], "train": {**QUICK["config"]["train"], "epochs": 2}}
    _protocol(tmp_path, vendors, profiles={"quick": {**QUICK, "config": longer}})
    with pytest.raises(CardiosegError, match=r"trained with another configuration .*train\.epochs"):
        run_benchmark(proto, out, profile="quick", dry_run=True)
    r = runner.invoke(app, ["benchmark", str(proto), "-o", str(out)])
    assert r.exit_code != 0 and "give another output folder" in r.output


BAD = {
    "missing dataset": (
        {
            "datasets": {
                "src": {"path": "/nonexistent/data", "layout": "folder"},
                "tgt": {"path": "GE", "layout": "folder"},
            }
        },
        "not found",
    ),
    "unknown method": ({"methods": ["baseline", "magic"]}, "unknown method 'magic'"),
    "unknown dataset name": (
        {"experiments": [{"name": "e", "sources": ["src"], "targets": ["nowhere"]}]},
        "unknown dataset 'nowhere'",
    ),
    "overlapping train/test": (
        {"experiments": [{"name": "e", "sources": ["src"], "targets": ["src"]}]},
        "overlap",
    ),
    "pool holds test subjects": (
        {
            "experiments": [
                {
                    "name": "e",
                    "sources": ["src"],
                    "targets": ["tgt"],
                    "adaptation_pool": [{"dataset": "tgt", "split": "pool"}],
                }
            ]
        },
        "adaptation pool contains test subjects",
    ),
    "invalid method config": (
        {
            "methods": [
                "baseline",
                {"name": "odd", "base": "strong", "config": {"train": {"augmentation": "medium"}}},
            ]
        },
        "method 'odd': invalid config",
    ),
    "patch the network cannot halve": (
        {
            "methods": [
                "baseline",
                {"name": "odd", "base": "baseline", "config": {"train": {"patch_size": 50}}},
            ]
        },
        "method 'odd': invalid config: train.patch_size 50 must be a multiple of 4",
    ),
    "missing dependency": (
        {"methods": ["baseline", "tent"]},
        "needs method 'strong'",
    ),
    "unknown profile key": ({"profiles": {"quick": {"epochs": 3}}}, "unknown key"),
    "missing checkpoint": (
        {"methods": ["baseline", {"name": "pre", "checkpoint": "/nonexistent/model.pt"}]},
        "method 'pre': checkpoint /nonexistent/model.pt not found",
    ),
    "ensemble checkpoint": (
        {"methods": ["baseline", {"name": "pre", "checkpoint": "ensemble"}]},
        "checkpoint ensemble is an ensemble; name one model",
    ),
    "checkpoint and init_from": (
        {
            "methods": [
                "baseline",
                {"name": "pre", "checkpoint": "default", "init_from": "baseline"},
            ]
        },
        "evaluated as is",
    ),
    "experiment name escaping -o": (
        {"experiments": [{"name": "../../esc", "sources": ["src"], "targets": ["tgt"]}]},
        "is not a plain folder name",
    ),
    "dann without pool": (
        {
            "methods": ["baseline", "dann"],
            "experiments": [{"name": "e", "sources": ["src"], "targets": ["tgt"]}],
        },
        "needs an adaptation_pool",
    ),
    # a misspelt filter attribute kept the excluded cases (here: tested the training subjects)
    "unknown filter attribute": (
        {
            "experiments": [
                {
                    "name": "e",
                    "sources": ["src"],
                    "targets": [{"dataset": "tgt", "exclude": {"subjct": ["ge10"]}}],
                }
            ]
        },
        "e.targets: exclude names unknown case attribute 'subjct'",
    ),
    "filter value not a list": (
        {
            "datasets": {
                "src": {"path": "siemens", "layout": "folder", "include": {"vendor": "siemens"}},
                "tgt": {"path": "ge", "layout": "folder"},
            }
        },
        r"dataset 'src': include.vendor must be a list, e.g. \[siemens\]",
    ),
    "sources not a list": (
        {"experiments": [{"name": "e", "sources": "src", "targets": ["tgt"]}]},
        r"experiment 'e': sources must be a list, e.g. \[src\]",
    ),
    "leave_one_out key misspelt": (
        {"experiments": [{"name": "l", "leave_one_out": {"datasets": ["src"], "key": "vendr"}}]},
        "leave_one_out key 'vendr'",
    ),
    "epochs_scale not a number": (
        {"methods": ["baseline", {"name": "b2", "base": "baseline", "epochs_scale": "half"}]},
        "method 'b2': epochs_scale must be a number > 0, got 'half'",
    ),
    "adaptation_pool as text": (
        {"methods": ["baseline", {"name": "b2", "base": "baseline", "adaptation_pool": "false"}]},
        "method 'b2': adaptation_pool must be true or false",
    ),
    "compare_to not a name": (
        {"methods": ["baseline", {"name": "b2", "base": "baseline", "compare_to": 3}]},
        "method 'b2': compare_to must be a method name",
    ),
    "max_subjects_per_target not a number": (
        {"profiles": {"quick": {**QUICK, "max_subjects_per_target": "two"}}},
        "profile quick: max_subjects_per_target must be a whole number",
    ),
    "profile seeds not a list": (
        {"profiles": {"quick": {**QUICK, "seeds": "0"}}},
        "profile quick: seeds must be a non-empty list of integers",
    ),
    "base not a mapping": ({"base": ["data"]}, "base must be a mapping"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_protocol_validation_refuses_bad_input(tmp_path, vendors, case):
    changes, message = BAD[case]
    proto = _protocol(tmp_path, vendors, **changes)
    out = tmp_path / "out"
    with pytest.raises(CardiosegError, match=message):
        run_benchmark(proto, out, profile="quick")
    assert not (out / "runs").exists()  # refused before any training
    r = runner.invoke(app, ["benchmark", str(proto), "-o", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("error:")


def test_checkpoint_method_is_evaluated_as_is_and_can_be_fine_tuned(tmp_path, vendors):
    first = tmp_path / "first"
    run_benchmark(_protocol(tmp_path, vendors, methods=["baseline"]), first, profile="quick")
    model = first / "runs" / "s2g" / "baseline" / "seed0" / "train" / "final.pt"
    methods = [
        {"name": "pre", "checkpoint": str(model)},
        {"name": "ft", "base": "baseline", "init_from": "pre"},
    ]
    out = tmp_path / "second"
    proto = _protocol(tmp_path, vendors, methods=methods, baseline="pre")
    res = run_benchmark(proto, out, profile="quick")
    assert res.status == {"s2g/pre/seed0": "done", "s2g/ft/seed0": "done"}, res.errors
    pre = out / "runs" / "s2g" / "pre" / "seed0"
    info = json.loads((pre / "run.json").read_text())
    assert info["model"] == f"checkpoint {model.resolve()}" and info["train_s"] == 0.0
    assert (pre / "train" / "final.pt").read_bytes() == model.read_bytes()

    def dice(path: Path) -> list[str]:
        return [r["mean_dice"] for r in csv.DictReader(open(path / "metrics.csv"))]

    # the same model on the same test cases: identical metrics to the run that trained it
    assert dice(pre) == dice(first / "runs" / "s2g" / "baseline" / "seed0")
    ft = json.loads((out / "runs" / "s2g" / "ft" / "seed0" / "run.json").read_text())
    assert ft["init_from"] == "s2g/pre/seed0" and ft["model"] == "trained"
    assert ft["config"]["init_checkpoint"].endswith("pre/seed0/train/final.pt")
    # trained from that checkpoint (not a copy of it); timing-free, train_s rounds to 0.0 on a
    # fast machine
    from cardioseg.models import load_checkpoint

    start = load_checkpoint(pre / "train" / "final.pt")["model_state"]
    tuned = load_checkpoint(out / "runs" / "s2g" / "ft" / "seed0" / "train" / "final.pt")
    assert any(not torch.equal(tuned["model_state"][k], v) for k, v in start.items())
    assert "checkpoint `final.pt`, not trained" in (out / "report.md").read_text()


def test_fine_tuning_with_the_sources_replayed(tmp_path, vendors):
    """``train_on: sources+finetune_pool``: all source subjects plus k labelled pool subjects."""
    mix = {
        "name": "mix",
        "base": "baseline",
        "train_on": "sources+finetune_pool",
        "config": {"finetune": {"k_subjects": 1}, "data": {"sampling": "balanced"}},
    }
    exp = {
        "name": "e",
        "sources": ["src"],
        "targets": [{"dataset": "tgt", "split": "test"}],
        "finetune_pool": [{"dataset": "tgt", "split": "pool"}],
    }
    proto = _protocol(tmp_path, vendors, methods=["baseline", mix], experiments=[exp])
    runs = {r.method: r for r in plan(load_protocol(proto), "quick", tmp_path / "out")}
    assert [d["role"] for d in runs["mix"].config["data"]["datasets"]] == [
        "source",
        "target_labeled",
    ]
    assert [d["role"] for d in runs["baseline"].config["data"]["datasets"]] == ["source"]
    res = run_benchmark(proto, tmp_path / "out", profile="quick", only=["mix"])
    assert res.status["e/mix/seed0"] == "done", res.errors
    from cardioseg.models import load_checkpoint

    ck = load_checkpoint(tmp_path / "out" / "runs" / "e" / "mix" / "seed0" / "train" / "final.pt")
    subjects = ck["fingerprint"]["train_subjects"]
    assert len(subjects) == 4  # the 3 source subjects and the 1 pool subject
    assert sum("ge" in s for s in subjects) == 1
    too_many = {**mix, "config": {"finetune": {"k_subjects": 2}}}
    bad = _protocol(tmp_path, vendors, methods=["baseline", too_many], experiments=[exp])
    with pytest.raises(CardiosegError, match="k_subjects=2, only 1 available"):
        plan(load_protocol(bad), "quick", tmp_path / "out2")


def test_weight_averaging_method_follows_the_profile_epochs(tmp_path, vendors):
    from cardioseg.benchmark.protocol import load_protocol, plan
    from cardioseg.training.config import config_from_dict

    quick = {**QUICK, "config": {**QUICK["config"], "train": {**QUICK["config"]["train"]}}}
    quick["config"]["train"]["epochs"] = 8
    proto = _protocol(tmp_path, vendors, methods=["baseline", "upright-swa"])
    values = yaml.safe_load(proto.read_text())
    values["profiles"] = {"quick": quick}
    proto.write_text(yaml.safe_dump(values, sort_keys=False))
    runs = {r.method: r for r in plan(load_protocol(proto), "quick", tmp_path / "out")}
    train = config_from_dict(runs["upright-swa"].config).train
    assert (train.epochs, train.swa_epochs_before, train.swa_lr) == (8, 6, 5e-4)
    assert not train.orientation_augmentation
    assert config_from_dict(runs["baseline"].config).train.swa_start == 0


def test_moved_output_folder_keeps_its_finished_runs(tmp_path, vendors):
    """The preprocessing cache defaults to ``<out>/cache``: a moved (or copied) output folder is
    another cache folder, not another training configuration."""
    base = {"data": {"target_spacing": 3.0}}  # no cache_dir: the default under the folder
    proto = _protocol(tmp_path, vendors, base=base, methods=["baseline"])
    first = tmp_path / "first"
    res = run_benchmark(proto, first, profile="quick")
    assert res.status == {"s2g/baseline/seed0": "done"}, res.errors
    moved = tmp_path / "moved"
    first.rename(moved)
    res = run_benchmark(proto, moved, profile="quick")
    assert res.status == {"s2g/baseline/seed0": "skipped"}
    assert "| GE | baseline |" in (moved / "report.md").read_text()


def test_finished_runs_on_other_test_cases_are_not_mixed_in(tmp_path, vendors):
    """Edited targets: the finished runs were evaluated on another test set; they are refused
    (one line, nothing written) until evaluated again, never tabled next to new runs."""
    proto = _protocol(tmp_path, vendors, methods=["baseline"])
    out = tmp_path / "out"
    run_benchmark(proto, out, profile="quick")
    report = (out / "report.md").read_text()
    fewer = [{"dataset": "tgt", "split": "test", "exclude": {"subject": ["ge12"]}}]
    experiments = [{"name": "s2g", "sources": ["src"], "targets": fewer}]
    _protocol(tmp_path, vendors, methods=["baseline", "spatial"], experiments=experiments)
    with pytest.raises(CardiosegError, match=r"evaluated on other test cases .*ge12"):
        run_benchmark(proto, out, profile="quick")
    r = runner.invoke(app, ["benchmark", str(proto), "-o", str(out), "--report-only"])
    assert r.exit_code == 1 and "Traceback" not in r.output and "--reevaluate" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert (out / "report.md").read_text() == report
    assert not (out / "runs" / "s2g" / "spatial").exists()
    res = run_benchmark(proto, out, profile="quick", reevaluate=True, only=["baseline"])
    assert res.status == {"s2g/baseline/seed0": "re-evaluated", "s2g/spatial/seed0": "not run"}
    rows = list(csv.DictReader(open(out / "per_case_metrics.csv")))
    assert rows and not any("/ge12/" in r["case_id"] for r in rows)


def test_cli_refuses_missing_protocol(tmp_path):
    r = runner.invoke(app, ["benchmark", str(tmp_path / "none.yaml"), "-o", str(tmp_path)])
    assert r.exit_code == 1 and "protocol file not found" in r.output


def test_splits_are_seeded_and_disjoint(tmp_path, vendors):
    proto = load_protocol(_protocol(tmp_path, vendors))
    pool = proto.split_subjects("tgt", "pool")
    test = proto.split_subjects("tgt", "test")
    assert len(pool) == 1 and len(test) == 2 and not set(pool) & set(test)
    assert load_protocol(proto.path).split_subjects("tgt", "pool") == pool
    runs = plan(proto, "quick", tmp_path / "o")
    specs = runs[0].config["data"]["datasets"]
    assert specs[0]["role"] == "source" and specs[0]["domain"] == "Siemens"


def _mnms_like(root: Path) -> Path:
    """M&Ms layout: <ID>/<ID>_sa_{ED,ES}[_gt].nii.gz and a vendor CSV."""
    vendors = {
        "AAA1": ("A", "Siemens", "1"),
        "AAA2": ("A", "Siemens", "1"),
        "BBB1": ("B", "Philips", "2"),
        "BBB2": ("B", "Philips", "2"),
        "CCC1": ("C", "GE", "4"),
    }
    for i, sid in enumerate(vendors):
        for phase in ("ED", "ES"):
            lab = disc_labels((40, 36, 4), center=(20 + i, 18))
            write_nifti(root / sid / f"{sid}_sa_{phase}.nii.gz", image_from_labels(lab, seed=i))
            write_nifti(root / sid / f"{sid}_sa_{phase}_gt.nii.gz", lab)
    with open(root / "mnms_info.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["External code", "Vendor", "VendorName", "Centre"])
        for sid, (code, name, centre) in vendors.items():
            w.writerow([sid, code, name, centre])
    return root


def _lodo_protocol(tmp_path: Path) -> Path:
    """A leave-one-vendor-out protocol (strong, balanced) over a three-vendor M&Ms-like set."""
    data = _mnms_like(tmp_path / "mnms")
    values = {
        "datasets": {"mnms": {"path": str(data), "layout": "mnms"}},
        "domain_key": "vendor",
        "methods": ["strong", "balanced"],
        "baseline": "strong",
        "profiles": {"quick": QUICK},
        "experiments": [{"name": "lodo", "leave_one_out": {"datasets": ["mnms"], "key": "vendor"}}],
    }
    path = tmp_path / "lodo.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_leave_one_domain_out_expands_per_vendor(tmp_path):
    proto = load_protocol(_lodo_protocol(tmp_path))
    runs = plan(proto, "quick", tmp_path / "out")
    assert sorted({r.experiment for r in runs}) == ["lodo-GE", "lodo-Philips", "lodo-Siemens"]
    for r in runs:
        held_out = r.experiment.split("-", 1)[1]
        (src,) = r.config["data"]["datasets"]
        assert src["exclude"] == {"vendor": [held_out]}
        assert all(t.include == {"vendor": [held_out]} for t in r.targets)
        sources = {x.subject for x in proto.records(proto_ref(src))}
        targets = {x.subject for t in r.targets for x in proto.records(t)}
        assert sources and targets and not sources & targets
    balanced = next(r for r in runs if r.method == "balanced")
    assert balanced.config["data"]["sampling"] == "balanced"
    assert balanced.config["data"]["domain_key"] == "vendor"


def test_experiment_filter_selects_one_held_out_domain(tmp_path):
    from cardioseg.benchmark.runner import _selected_runs

    path = _lodo_protocol(tmp_path)
    proto = load_protocol(path)
    runs = plan(proto, "quick", tmp_path / "out")
    keys = _selected_runs(proto, runs, None, ["lodo-Siemens"])
    assert keys == {"lodo-Siemens/strong/seed0", "lodo-Siemens/balanced/seed0"}
    assert _selected_runs(proto, runs, ["balanced"], ["lodo-GE"]) == {"lodo-GE/balanced/seed0"}
    # a dry run lists what would run and trains nothing
    dry = run_benchmark(path, tmp_path / "dry", dry_run=True, experiments=["lodo-Siemens"])
    assert {k for k, v in dry.status.items() if v == "planned"} == keys
    assert {v for k, v in dry.status.items() if k not in keys} == {"not run"}
    assert not (tmp_path / "dry" / "runs").exists()
    # a misspelt experiment is refused before anything runs, naming the valid ones
    out = tmp_path / "out2"
    result = runner.invoke(
        app, ["benchmark", str(path), "-o", str(out), "--experiment", "lodo-Canon"]
    )
    assert result.exit_code != 0
    assert "unknown experiment 'lodo-Canon'" in result.output and "lodo-Siemens" in result.output
    assert not (out / "runs").exists()


def proto_ref(spec):
    from cardioseg.benchmark.protocol import Ref

    return Ref("mnms", include=spec["include"], exclude=spec["exclude"])


PROTOCOLS = sorted(p.name for p in (REPO / "configs" / "protocols").glob("*.yaml"))


@pytest.mark.parametrize("name", PROTOCOLS)
def test_shipped_protocols_validate_on_real_data(name, tmp_path, monkeypatch):
    if not SHARED.exists():
        pytest.skip(f"real data not available: {SHARED} is absent (needs ../shared/data)")
    monkeypatch.chdir(REPO)
    proto = load_protocol(REPO / "configs" / "protocols" / name)
    for profile in ("quick", "full"):
        runs = plan(proto, profile, tmp_path)
        assert runs and all(r.config["data"]["datasets"] for r in runs)
    keys = [r.key for r in runs]
    for r in runs:  # dependencies come first
        assert not r.depends_on or keys.index(r.depends_on) < keys.index(r.key)


def test_protocol_checkpoint_file_wins_over_packaged_name(tmp_path):
    """As everywhere else, a file of a packaged model's name (beside the protocol) is used."""
    from cardioseg.benchmark.protocol import _checkpoint_path
    from cardioseg.models import resolve_checkpoint

    proto = tmp_path / "protocol.yaml"
    packaged = _checkpoint_path("default", proto, "pre")
    assert packaged == str(resolve_checkpoint("default").resolve())
    (tmp_path / "default").write_bytes(b"a local checkpoint file")
    (tmp_path / "ensemble").write_bytes(b"another one")
    assert _checkpoint_path("default", proto, "pre") == str((tmp_path / "default").resolve())
    assert _checkpoint_path("ensemble", proto, "pre") == str((tmp_path / "ensemble").resolve())
    with pytest.raises(CardiosegError, match="is an ensemble"):
        _checkpoint_path("ensemble", tmp_path / "elsewhere" / "p.yaml", "pre")


def _spy_segmenter(monkeypatch) -> list[dict]:
    """Replace the Segmenter the lab evaluates with by one that records its options (returned,
    one dict per Segmenter built) and predicts background everywhere."""
    import cardioseg.inference as inference

    seen: list[dict] = []

    class Spy:
        def __init__(self, checkpoint, **kwargs):
            seen.append(kwargs)

        def predict(self, volume, properties):
            return SimpleNamespace(labels=np.zeros(volume.shape, dtype=np.uint8))

    monkeypatch.setattr(inference, "Segmenter", Spy)
    return seen


@pytest.mark.parametrize("roi", [False, True, None])
def test_evaluation_follows_the_methods_heart_window_setting(tmp_path, vendors, monkeypatch, roi):
    """A method's ``inference.roi`` reaches the Segmenter that evaluates it (``None``: the
    model's own setting), so whole-image lab results stay reproducible."""
    from cardioseg.benchmark.runner import evaluate_run

    inf = {} if roi is None else {"roi": roi}
    proto_path = _protocol(
        tmp_path, vendors, methods=["baseline", {"name": "w", "config": {"inference": inf}}]
    )
    proto = load_protocol(proto_path)
    run = {r.method: r for r in plan(proto, "quick", tmp_path / "out")}["w"]
    seen = _spy_segmenter(monkeypatch)
    rows = evaluate_run(proto, run, tmp_path / "unused.pt")
    assert [o["roi"] for o in seen] == [roi]
    assert len(rows) == 2 * 2 and all(r["method"] == "w" for r in rows)  # 2 subjects x ED/ES


def test_benchmark_whole_image_flag_overrides_every_method(tmp_path, vendors, monkeypatch):
    """``cardioseg benchmark --whole-image`` evaluates every method on the whole image."""
    seen = _spy_segmenter(monkeypatch)
    proto = _protocol(tmp_path, vendors)
    args = ["benchmark", str(proto), "-o", str(tmp_path / "out"), "--whole-image"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert [o["roi"] for o in seen] == [False, False]  # baseline and tent


def _rows(method: str, seed: int, values: list[float], subjects: list[str]) -> list[dict]:
    """Per-case rows as ``collect_rows`` makes them (ED of each subject, one domain)."""
    return [
        {
            "experiment": "e",
            "domain": "GE",
            "method": method,
            "seed": seed,
            "case_id": f"tgt/{s}/ED",
            "mean_dice": float(v),
        }
        for s, v in zip(subjects, values, strict=True)
    ]


def _two_methods() -> SimpleNamespace:
    from cardioseg.benchmark.protocol import MethodDef

    return SimpleNamespace(
        methods={"baseline": MethodDef("baseline"), "x": MethodDef("x")}, baseline="baseline"
    )


def test_paired_tests_compare_on_the_seeds_both_methods_have():
    """A method with one seed (its other run failed or has not run) is compared with the
    reference on that seed, not with the reference's mean over more seeds."""
    from cardioseg.benchmark.report import paired_tests

    subjects = [f"s{i}" for i in range(6)]
    base0 = np.array([0.80, 0.82, 0.78, 0.85, 0.81, 0.79])
    own = base0 + [0.01, -0.01, 0.02, -0.02, 0.03, -0.03]  # no effect on seed 0
    rows = (
        _rows("baseline", 0, list(base0), subjects)
        + _rows("baseline", 1, list(base0 - 0.1), subjects)  # a much worse second seed
        + _rows("x", 0, list(own), subjects)
    )
    (t,) = [t for t in paired_tests(rows, _two_methods()) if t["metric"] == "mean_dice"]
    assert t["n"] == 6 and abs(t["median_diff"]) < 1e-9  # was +0.05 against both seeds
    assert t["p_value"] > 0.5  # was 0.031


def test_paired_tests_pair_subjects_not_their_volumes():
    """ED and ES of one subject are not independent: the test has one pair per subject (its
    volumes averaged), so one subject per domain gives no p-value and two volumes of each of
    five subjects give n = 5, not 10."""
    from cardioseg.benchmark.report import paired_tests

    subjects = [f"s{i}" for i in range(5)]
    rows = []
    for phase, shift in (("ED", 0.0), ("ES", -0.05)):
        base = [0.80 + shift] * 5
        own = [b + d for b, d in zip(base, [0.02, 0.01, 0.03, -0.01, 0.04], strict=True)]
        for method, values in (("baseline", base), ("x", own)):
            rows += [
                {**r, "case_id": r["case_id"].replace("/ED", f"/{phase}")}
                for r in _rows(method, 0, values, subjects)
            ]
    (t,) = [t for t in paired_tests(rows, _two_methods()) if t["metric"] == "mean_dice"]
    assert t["n"] == 5 and t["p_value"] == pytest.approx(0.1875)  # by volume: n 10, p 0.021
    one = [r for r in rows if "/s0/" in r["case_id"]]  # one subject: ED and ES
    (t,) = [t for t in paired_tests(one, _two_methods()) if t["metric"] == "mean_dice"]
    assert t["n"] == 1 and np.isnan(t["p_value"])  # by volume: n 2, p 0.5


def test_paired_cases_script_pairs_subjects(tmp_path):
    """``benchmarks/paired_cases.py`` averages a subject's ED and ES differences: 3 subjects
    are 3 pairs (p = 0.25 at best), not 6 (p = 0.03), unless ``--unit case`` is asked for."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    header = "case_id,phase,mean_dice,LV_dice,MYO_dice,RV_dice\n"
    ref, other = [header], [header]
    for k, subject in enumerate(("p1", "p2", "p3")):
        for phase in ("ED", "ES"):
            base = 0.8 + 0.01 * k + (0.02 if phase == "ED" else 0.0)
            ref.append(f"ds/{subject}/{phase},{phase},{base},{base},{base},{base}\n")
            gain = 0.01 * (k + 1) + (0.005 if phase == "ES" else 0.0)
            other.append(f"ds/{subject}/{phase},{phase},{base + gain},{base},{base},{base}\n")
    (tmp_path / "ref.csv").write_text("".join(ref))
    (tmp_path / "other.csv").write_text("".join(other))

    def all_row(*extra: str) -> list[str]:
        cmd = [sys.executable, str(root / "benchmarks" / "paired_cases.py"), "ref.csv"]
        cmd += ["other.csv", "-o", "out.md", "--by", *extra]
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
        text = (tmp_path / "out.md").read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith("| all | mean_dice |"))
        return [c.strip() for c in line.strip("|").split("|")]

    row = all_row()
    assert row[2] == "3" and row[6] == "3 of 3" and float(row[7]) == pytest.approx(0.25)
    assert float(row[5]) == pytest.approx(0.0225)  # subject p2: mean of +0.020 and +0.025
    row = all_row("--unit", "case")
    assert row[2] == "6" and float(row[7]) == pytest.approx(0.03125, rel=0.05)
    # one table with a method column, its case ids prefixed by the method (as
    # segmentation_benchmark.py writes them): --methods picks the two
    both = ["method,case_id,phase,mean_dice,LV_dice,MYO_dice,RV_dice\n"]
    for name, lines in (("a", ref[1:]), ("b", other[1:])):
        both += [f"{name},{name}:{line}" for line in lines]
    (tmp_path / "ref.csv").write_text("".join(both))
    (tmp_path / "other.csv").write_text("".join(both))
    row = all_row("--methods", "a", "b")
    assert row[2] == "3" and float(row[5]) == pytest.approx(0.0225)


def test_summary_counts_the_cases_left_out_of_hd95():
    """A case where only one mask has a structure has no HD95; the summary says how many, so
    that a method missing the RV on a case does not look better for it."""
    from cardioseg.benchmark.report import summarize

    subjects = ["s0", "s1", "s2", "s3"]
    rows = []
    for seed in (0, 1):
        for method, rv in (("baseline", [5.0, 6.0, 7.0, 30.0]), ("x", [5.0, 6.0, 7.0, np.nan])):
            for r, hd in zip(_rows(method, seed, [0.8] * 4, subjects), rv, strict=True):
                rows.append({**r, "LV_hd95": 3.0, "MYO_hd95": 4.0, "RV_hd95": hd})
    by = {s["method"]: s for s in summarize(rows)}
    assert by["x"]["RV_hd95_mean"] == pytest.approx(6.0)
    assert by["x"]["RV_hd95_mean"] < by["baseline"]["RV_hd95_mean"]  # it misses the worst case
    assert by["x"]["RV_hd95_missing"] == 1 and by["baseline"]["RV_hd95_missing"] == 0
    assert by["x"]["LV_hd95_missing"] == 0


def test_summary_case_count_is_the_seeds_mean_rounded_half_up():
    """Seeds with 3 and 4 cases (a run that failed on one): 4 cases, not 3 (rounded down)."""
    from cardioseg.benchmark.report import summarize

    rows = _rows("m", 0, [0.8] * 3, ["s0", "s1", "s2"]) + _rows(
        "m", 1, [0.8] * 4, ["s0", "s1", "s2", "s3"]
    )
    assert summarize(rows)[0]["n_cases"] == 4


def test_an_unreadable_checkpoint_method_is_named_as_given(tmp_path, vendors):
    """A protocol's ``checkpoint:`` file that is not a checkpoint fails its run with an error
    naming that file, not its copy in the run's temporary folder."""
    junk = tmp_path / "not_a_model.pt"
    junk.write_bytes(b"junk")
    proto = _protocol(
        tmp_path, vendors, methods=[{"name": "pre", "checkpoint": str(junk)}], baseline="pre"
    )
    res = run_benchmark(proto, tmp_path / "out", profile="quick")
    assert res.status == {"s2g/pre/seed0": "failed"}
    (message,) = res.errors.values()
    assert "not_a_model.pt" in message and ".partial" not in message, message


def test_a_checkpoint_method_is_evaluated_once_for_all_seeds(
    tmp_path, vendors, tiny_checkpoint, monkeypatch
):
    """A checkpoint evaluated as is is the same model under every seed: the first seed is
    evaluated, the others take its rows, with their own seed and a record of where from."""
    import cardioseg.benchmark.runner as runner_module

    calls: list[str] = []
    real = runner_module.evaluate_run

    def spy(proto, run, *args, **kwargs):
        calls.append(run.key)
        return real(proto, run, *args, **kwargs)

    monkeypatch.setattr(runner_module, "evaluate_run", spy)
    proto = _protocol(
        tmp_path,
        vendors,
        methods=[{"name": "pre", "checkpoint": str(tiny_checkpoint)}],
        baseline="pre",
        profiles={"quick": {**QUICK, "seeds": [0, 1]}},
    )
    out = tmp_path / "out"
    res = run_benchmark(proto, out, profile="quick")
    assert res.status == {"s2g/pre/seed0": "done", "s2g/pre/seed1": "done"}, res.errors
    assert calls == ["s2g/pre/seed0"]
    runs = out / "runs" / "s2g" / "pre"
    a = list(csv.DictReader(open(runs / "seed0" / "metrics.csv")))
    b = list(csv.DictReader(open(runs / "seed1" / "metrics.csv")))
    assert [r["seed"] for r in a] == ["0"] * len(a) and [r["seed"] for r in b] == ["1"] * len(b)
    assert [{**r, "seed": "1"} for r in a] == b
    info = json.loads((runs / "seed1" / "run.json").read_text())
    assert info["evaluation"]["copied_from"] == "s2g/pre/seed0"
    # --reevaluate evaluates the checkpoint once again, not once per seed
    calls.clear()
    res = run_benchmark(proto, out, profile="quick", reevaluate=True)
    assert set(res.status.values()) == {"re-evaluated"} and calls == ["s2g/pre/seed0"]


def test_a_run_stopped_during_its_evaluation_is_not_trained_again(tmp_path, vendors, monkeypatch):
    import cardioseg.benchmark.runner as runner_module
    from cardioseg.training.trainer import Trainer

    proto = _protocol(tmp_path, vendors, methods=["baseline"])
    out = tmp_path / "out"
    real = runner_module.evaluate_run

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "evaluate_run", stop)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(proto, out, profile="quick")
    partial = out / "runs" / "s2g" / "baseline" / "seed0.partial"
    model = (partial / "train" / "final.pt").read_bytes()
    trained: list[int] = []
    real_run = Trainer.run
    monkeypatch.setattr(runner_module, "evaluate_run", real)
    monkeypatch.setattr(Trainer, "run", lambda self: trained.append(1) or real_run(self))
    res = run_benchmark(proto, out, profile="quick")
    assert res.status == {"s2g/baseline/seed0": "done"}, res.errors
    assert trained == []
    final = out / "runs" / "s2g" / "baseline" / "seed0"
    assert (final / "train" / "final.pt").read_bytes() == model
    summary = json.loads((final / "train" / "summary.json").read_text())
    info = json.loads((final / "run.json").read_text())
    assert info["train_s"] == round(summary["train_time_s"], 1)

    # a training of another configuration in the working folder is not taken for this one
    (final / "done.json").unlink()
    final.rename(partial)
    cfg = yaml.safe_load((partial / "train" / "config.yaml").read_text())
    cfg["train"]["lr"] = cfg["train"]["lr"] * 2
    (partial / "train" / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = run_benchmark(proto, out, profile="quick")
    assert res.status == {"s2g/baseline/seed0": "done"}, res.errors
    assert trained == [1]


def test_cli_says_a_protocol_folder_is_a_folder(tmp_path):
    """A folder given as the protocol is not said to be missing."""
    r = runner.invoke(app, ["benchmark", str(tmp_path), "-o", str(tmp_path / "out")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip() == f"error: {tmp_path}: is a folder, not a protocol file"
    assert not (tmp_path / "out").exists()


def test_wilcoxon_drops_zero_differences_two_sided_by_hand():
    """Differences 0, +0.01, +0.02, -0.005, +0.03: the zero is left out (Wilcoxon's method),
    ranks of the other four are 2, 3, 1 (negative), 4: W- = 1, W+ = 9. Exact null of n = 4:
    2 of 16 sign patterns have W- <= 1, so the two-sided p is 2 * 2/16 = 0.25."""
    from cardioseg.benchmark.report import compare_paired

    t = compare_paired([0.0, 0.01, 0.02, -0.005, 0.03])
    assert t["n"] == 5 and t["n_better"] == 3
    assert t["statistic"] == pytest.approx(1.0) and t["p_value"] == pytest.approx(0.25)


def test_box_plots_are_paper_ready(tmp_path):
    """The box plots come as a PNG of at least 150 dpi and a PDF; an earlier report's figures
    of an experiment now gone are removed, PDF included."""
    from PIL import Image

    from cardioseg.benchmark.report import box_plots

    subjects = [f"s{i}" for i in range(4)]
    rows = _rows("baseline", 0, [0.8, 0.82, 0.78, 0.85], subjects)
    rows += _rows("x", 0, [0.81, 0.84, 0.77, 0.88], subjects)
    fig_dir = tmp_path / "figures"
    fig_dir.mkdir()
    (fig_dir / "box_gone.pdf").write_bytes(b"an experiment of an earlier report")
    paths = box_plots(rows, _two_methods(), fig_dir)
    with Image.open(paths["e"]) as im:
        assert min(im.info["dpi"]) >= 150, im.info
    assert (fig_dir / "box_e.pdf").read_bytes().startswith(b"%PDF")
    assert not (fig_dir / "box_gone.pdf").exists()
