"""A 1-epoch training smoke run, resume, config validation."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL, disc_labels, image_from_labels, write_nifti
from typer.testing import CliRunner

from cardioseg.cli.main import app
from cardioseg.errors import CardiosegError
from cardioseg.models import ModelConfig, build_model, load_checkpoint
from cardioseg.training.config import config_from_dict, load_config
from cardioseg.training.trainer import Trainer


def _dataset(root, n=4):
    for i in range(n):
        lab = disc_labels((56, 48, 4), center=(26 + i, 22 + i))
        write_nifti(root / f"case{i}.nii.gz", image_from_labels(lab, seed=i), None)
        write_nifti(root / f"case{i}_gt.nii.gz", lab)
    return root


def _config(tmp_path, **train):
    data = _dataset(tmp_path / "data")
    values = {
        "data": {
            "datasets": [{"path": str(data), "layout": "folder"}],
            "cache_dir": str(tmp_path / "cache"),
            "target_spacing": 1.0,
        },
        "model": dict(TINY_MODEL),
        "train": {
            "epochs": 1,
            "iterations_per_epoch": 2,
            "batch_size": 2,
            "patch_size": 32,
            "folds": 2,
            "fold": 0,
            "num_threads": 1,
            "warmup_epochs": 0,
            **train,
        },
        "output_dir": str(tmp_path / "run"),
    }
    return config_from_dict(values)


def test_one_epoch_then_resume(tmp_path):
    cfg = _config(tmp_path)
    res = Trainer(cfg, progress=False).run()
    out = tmp_path / "run"
    assert len(res["history"]) == 1
    assert (out / "best.pt").exists() and (out / "last.pt").exists()
    assert (out / "config.yaml").exists() and any((out / "tensorboard").iterdir())
    ck = load_checkpoint(out / "best.pt")
    assert ck["config"]["model"]["channels"] == [4, 8, 16]
    assert 0.0 <= ck["metrics"]["dice_mean"] <= 1.0
    cfg.train.epochs = 2
    res2 = Trainer(cfg, progress=False).run()
    assert [h["epoch"] for h in res2["history"]] == [1, 2]  # resumed, not restarted
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["loss"]) > 0 for r in rows)


def test_evaluate_warns_on_the_subjects_a_trained_model_saw(tmp_path):
    """The subject names a trained checkpoint lists are those ``evaluate --dataset`` gives the
    cases of the same folder: a fold-0 model evaluated on all four subjects warns that the two
    it was trained on are among them, and names them in run.json."""
    cfg = _config(tmp_path)
    Trainer(cfg, progress=False).run()
    trained = load_checkpoint(tmp_path / "run" / "best.pt")["fingerprint"]["train_subjects"]
    assert len(trained) == 2, trained  # 2 folds of 4 subjects
    args = ["evaluate", "--dataset", str(tmp_path / "data"), "-o", str(tmp_path / "ev")]
    res = CliRunner().invoke(app, [*args, "--model", str(tmp_path / "run" / "best.pt")])
    assert res.exit_code == 0, res.output
    assert "warning: 2 of 4 subjects were in the model's training data" in res.stderr
    run = json.loads((tmp_path / "ev" / "run.json").read_text())
    assert run["training_overlap"] == {"subjects": trained, "n": 2, "of": 4}


def test_resume_refuses_another_configuration(tmp_path):
    """An output folder holding a run resumes only with that run's configuration (where it is
    written, how long it trains and with how many threads aside): nothing is written before."""
    cfg = _config(tmp_path)
    Trainer(cfg, progress=False).run()
    out = tmp_path / "run"
    saved = (out / "config.yaml").read_text()
    lr = cfg.train.lr
    cfg.train.lr = lr * 10
    with pytest.raises(CardiosegError, match=r"another configuration \(train.lr: "):
        Trainer(cfg, progress=False).run()
    assert (out / "config.yaml").read_text() == saved
    cfg.train.lr, cfg.train.max_minutes, cfg.train.epochs = lr, 30.0, 2
    res = Trainer(cfg, progress=False).run()  # a time limit and more epochs: a resume
    assert [h["epoch"] for h in res["history"]] == [1, 2]


def test_a_second_run_on_the_same_output_folder_fails_at_once(tmp_path):
    """While a run holds its output folder, another one there stops with a one-line error before
    writing anything; once it is released, a run there trains, and resumes with the lock file."""
    from cardioseg.io.locking import LOCK_NAME, lock_folder

    cfg = _config(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    held = lock_folder(out, "held by the test")
    try:
        with pytest.raises(CardiosegError, match="in use by another cardioseg train") as err:
            Trainer(cfg, progress=False).run()
        assert "\n" not in str(err.value) and str(out) in str(err.value)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # nothing written
        cfg.save(tmp_path / "cfg.yaml")  # the command says it in one line
        res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "cfg.yaml")])
        lines = res.output.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error:"), lines
        assert "in use by another cardioseg train" in lines[0]
    finally:
        held.close()
    Trainer(cfg, progress=False).run()
    assert (out / LOCK_NAME).exists() and (out / "last.pt").exists()
    cfg.train.epochs = 2
    res = Trainer(cfg, progress=False).run()
    assert [h["epoch"] for h in res["history"]] == [1, 2]  # resumed, not refused


def test_only_rank_0_locks_and_writes_the_output_folder(tmp_path, monkeypatch):
    """Under torchrun the other ranks neither take the lock (rank 0 of the same run holds it)
    nor write anything to the output folder."""
    from cardioseg.io.locking import LOCK_NAME, lock_folder

    cfg = _config(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setenv("RANK", "1")  # WORLD_SIZE stays 1: no process group, rank 1's part
    with lock_folder(out, "held as rank 0 would"):
        res = Trainer(cfg, progress=False).run()
    assert len(res["history"]) == 1
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]


@pytest.mark.parametrize("data", ["missing", "empty"])
def test_a_failed_start_leaves_no_config_behind(tmp_path, data):
    """A run whose data cannot be found writes no config.yaml (which would look like a run)
    and removes the output folders it created; a folder that was there stays."""
    cfg = _config(tmp_path)
    (tmp_path / "empty").mkdir()
    cfg.data.datasets[0].path = str(tmp_path / data)
    cfg.output_dir = str(tmp_path / "runs" / "new")
    message = "dataset folder not found" if data == "missing" else "no folder cases found"
    with pytest.raises(CardiosegError, match=message):
        Trainer(cfg, progress=False).run()
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs" / "new").mkdir(parents=True)  # made by the user: kept, still empty
    with pytest.raises(CardiosegError, match=message):
        Trainer(cfg, progress=False).run()
    assert (tmp_path / "runs" / "new").is_dir()
    assert not (tmp_path / "runs" / "new" / "config.yaml").exists()


@pytest.mark.parametrize("init", ["missing", "other network"])
def test_a_wrong_init_checkpoint_is_refused_before_the_data_are_read(
    tmp_path, tiny_checkpoint, monkeypatch, init
):
    """A mistyped ``init_checkpoint`` or one of another network was found only after the data
    were read and prepared (minutes on a real dataset), and left a config.yaml behind."""
    import cardioseg.training.trainer as trainer_module

    cfg = _config(tmp_path)
    cfg.output_dir = str(tmp_path / "runs" / "ft")
    cfg.init_checkpoint = str(tmp_path / "nope.pt") if init == "missing" else str(tiny_checkpoint)
    if init == "other network":
        cfg.model = ModelConfig(channels=[8, 16, 32], strides=[2, 2], num_res_units=0)

    def no_data(*a, **k):
        raise AssertionError("the data were read before the checkpoint was checked")

    monkeypatch.setattr(trainer_module, "collect_records", no_data)
    message = "model checkpoint not found" if init == "missing" else "does not match"
    with pytest.raises(CardiosegError, match=message):
        Trainer(cfg, progress=False).run()
    assert not (tmp_path / "runs").exists()


def test_checking_the_init_checkpoint_draws_no_random_numbers(
    tmp_path, tiny_checkpoint, monkeypatch
):
    """The early check builds a network of its own: the run's network is still initialised
    from the random state it had before the check existed."""
    import cardioseg.training.trainer as trainer_module

    states: list[torch.Tensor] = []
    real_build = trainer_module.build_model

    def spy(model_cfg):
        states.append(torch.get_rng_state())
        return real_build(model_cfg)

    monkeypatch.setattr(trainer_module, "build_model", spy)
    cfg = _config(tmp_path, fold=-1, n_val_monitor=1)
    Trainer(cfg, progress=False).run()
    assert len(states) == 1
    cfg.init_checkpoint = str(tiny_checkpoint)
    cfg.output_dir = str(tmp_path / "run2")
    Trainer(cfg, progress=False).run()
    assert len(states) == 3  # the check's network, then the run's
    assert torch.equal(states[2], states[0])


def test_train_names_the_config_when_its_data_do_not_fit(tmp_path):
    """More folds than subjects was a raw ValueError ('k must be in [2, 4], got 5')."""
    cfg = _config(tmp_path, folds=5, fold=0)
    path = tmp_path / "cv.yaml"
    cfg.save(path)
    r = CliRunner().invoke(app, ["train", "-c", str(path), "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    line = r.output.strip().splitlines()[-1]
    assert line == f"error: {path}: train.folds 5 needs at least 5 subjects, the datasets have 4"


def test_weight_averaging_averages_epochs_and_resumes(tmp_path):
    cfg = _config(tmp_path, fold=-1, epochs=2, swa_start=1, swa_lr=0.01, lr=0.002)
    Trainer(cfg, progress=False).run()
    out = tmp_path / "run"
    after2 = torch.load(out / "last.pt", weights_only=False)
    assert int(after2["swa_state"]["n_averaged"]) == 1
    cfg.train.epochs = 3
    Trainer(cfg, progress=False).run()  # resumes the raw weights and the running average
    after3 = torch.load(out / "last.pt", weights_only=False)
    assert int(after3["swa_state"]["n_averaged"]) == 2
    final = load_checkpoint(out / "final.pt")["model_state"]
    w2, w3 = after2["model_state"], after3["model_state"]
    weights = [k for k, v in final.items() if v.is_floating_point()]
    assert any(not torch.equal(w2[k], w3[k]) for k in weights)
    for k in weights:  # the saved model is the mean of the weights after epochs 2 and 3
        torch.testing.assert_close(final[k], (w2[k] + w3[k]) / 2)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [float(r["lr"]) for r in rows[1:]] == pytest.approx([0.01, 0.01])
    assert json.loads((out / "summary.json").read_text())["weights_averaged"] == 2


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict({"train": {"epochz": 3}})
    with pytest.raises(ValueError, match=r"patch_size 50 must be a multiple of 16"):
        config_from_dict({"train": {"patch_size": 50}})
    small = {"channels": [4, 8, 16], "strides": [2, 2]}
    assert config_from_dict({"train": {"patch_size": 52}, "model": small}).train.patch_size == 52
    with pytest.raises(ValueError, match="swa_start"):
        config_from_dict({"train": {"epochs": 10, "swa_start": 10}})
    with pytest.raises(ValueError, match="swa_start"):
        config_from_dict({"train": {"epochs": 10, "swa_start": 2.5}})
    with pytest.raises(ValueError, match="swa_start"):
        config_from_dict({"train": {"swa_start": -1}})
    assert (
        config_from_dict({"train": {"epochs": 20, "swa_start": 0.75}}).train.swa_epochs_before == 15
    )
    assert config_from_dict({"train": {"epochs": 20, "swa_start": 4}}).train.swa_epochs_before == 4
    assert config_from_dict({"train": {"epochs": 1, "swa_start": 0.9}}).train.swa_epochs_before == 0
    with pytest.raises(ValueError, match="swa_lr"):
        config_from_dict({"train": {"swa_start": 1, "swa_lr": -1.0}})
    # values of the wrong type or out of range (they failed late, or were taken as true)
    for section, values, message in (
        ("train", {"lr": "fast"}, "'train.lr' must be a number, got 'fast'"),
        ("train", {"epochs": "3"}, "'train.epochs' must be a whole number"),
        ("train", {"batch_size": 2.5}, "'train.batch_size' must be a whole number"),
        ("inference", {"tta": "false"}, "'inference.tta' must be true or false"),
        ("train", {"epochs": 0}, "epochs must be >= 1"),
        ("train", {"batch_size": 0}, "batch_size must be >= 1"),
        ("train", {"lr": -1.0}, "lr and weight_decay must be >= 0"),
        ("train", {"fold": 5}, "train.fold must be -1 (all data) or 0..folds-1"),
        ("train", {"fold": 0, "folds": 1}, "with folds >= 2, got fold 0 of 1"),
        ("data", {"target_spacing": -1}, "data.target_spacing must be > 0 (mm), got -1"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            config_from_dict({section: values})
    assert config_from_dict({"train": {"amp": False, "lr": 1}}).train.amp == "false"
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  epochs: 2\n")
    for override, message in (
        ("output_dir.x=1", "'output_dir' must be text"),
        ("train.epochs.n=1", "'epochs' is not a section"),
        ("train.lr=[unclosed", "invalid value"),
    ):
        with pytest.raises(CardiosegError, match=re.escape(message)):
            load_config(good, [override])
    with pytest.raises(CardiosegError, match="is not a config file"):
        load_config(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(CardiosegError, match="YAML"):
        load_config(bad)
    with pytest.raises(CardiosegError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# every setting given on the command line\n")
    with pytest.raises(CardiosegError, match="empty.yaml: the config file is empty"):
        load_config(empty)
    assert load_config(empty, ["train.epochs=3"]).train.epochs == 3  # overrides: not empty


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"channels": 16}, "'model.channels' must be a list of whole numbers, got 16"),
        ({"channels": None}, "'model.channels' must be a list of whole numbers, got None"),
        ({"channels": [4, "a"]}, "'model.channels' must be a list of whole numbers, got [4, 'a']"),
        ({"channels": [4, 8.5]}, "'model.channels' must be a list of whole numbers"),
        ({"channels": [True, 8]}, "'model.channels' must be a list of whole numbers"),
        ({"channels": [4, -8], "strides": [2]}, "'model.channels' must be positive, got [4, -8]"),
        ({"strides": 2}, "'model.strides' must be a list of whole numbers, got 2"),
        ({"strides": [2, "x", 2, 2]}, "'model.strides' must be a list of whole numbers"),
        ({"strides": [2, 0, 2, 2]}, "'model.strides' must be positive, got [2, 0, 2, 2]"),
    ],
)
def test_model_channels_and_strides_are_lists_of_positive_whole_numbers(tmp_path, model, message):
    """A wrong list value is named (it failed as 'object of type int has no len()', a
    comparison of str and int, or trained a network of float channels on)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_dict({"model": model})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"model": model}))  # JSON is YAML
    res = CliRunner().invoke(app, ["train", "--config", str(cfg)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert res.output.startswith(f"error: {cfg}: {message}"), res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_model_config_validation():
    with pytest.raises(ValueError):
        ModelConfig(channels=[8, 16], strides=[2, 2])
    with pytest.raises(ValueError):
        ModelConfig(norm="group")
    net = build_model(ModelConfig(channels=[4, 8], strides=[2], num_res_units=0))
    assert net(torch.zeros(2, 1, 16, 16)).shape == (2, 4, 16, 16)


def test_amp_setting_validated_and_mapped():
    from cardioseg.training.trainer import autocast_dtype

    assert config_from_dict({"train": {"amp": False}}).train.amp == "false"  # YAML boolean
    assert config_from_dict({"train": {"amp": True}}).train.amp == "true"
    with pytest.raises(ValueError, match="amp must be one of"):
        config_from_dict({"train": {"amp": "fp8"}})
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None  # float32 on the CPU unless asked
    assert autocast_dtype("auto", gpu) is torch.float16
    assert autocast_dtype("false", gpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16


def test_bf16_training_updates_float32_weights(tmp_path):
    frozen = _config(tmp_path / "a", amp="bf16", fold=-1, lr=0.0, weight_decay=0.0)
    Trainer(frozen, progress=False).run()  # lr 0: the seeded initial weights, unchanged
    start = load_checkpoint(tmp_path / "a" / "run" / "final.pt")["model_state"]
    cfg = _config(tmp_path / "b", amp="bf16", fold=-1)
    res = Trainer(cfg, progress=False).run()
    assert len(res["history"]) == 1 and res["history"][0]["loss"] > 0
    state = load_checkpoint(tmp_path / "b" / "run" / "final.pt")["model_state"]
    weights = {k: v for k, v in state.items() if v.is_floating_point()}
    assert all(v.dtype == torch.float32 for v in weights.values())  # master weights stay fp32
    assert all(torch.isfinite(v).all() for v in weights.values())
    changed = [k for k, v in weights.items() if not torch.equal(v, start[k])]
    assert changed, "a bf16 training step left every weight unchanged"


def _stream_batches(sampler, aug, epoch, workers=2, n=5):
    from cardioseg.training.trainer import BatchStream

    stream = BatchStream(sampler, aug, 3, n, [7, 0, epoch])
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return list(loader)


def test_batch_stream_workers_are_seeded_per_epoch(tmp_path):
    import numpy as np

    from cardioseg.augmentation import build_augmentation
    from cardioseg.training.slices import PatchSampler, PreparedCase

    rng = np.random.default_rng(0)
    cases = [
        PreparedCase(
            None,  # type: ignore[arg-type]
            rng.random((3, 40, 40)).astype(np.float16),
            rng.integers(0, 4, (3, 40, 40)).astype(np.uint8),
            (20.0, 20.0),
            {},
        )
        for _ in range(2)
    ]
    sampler = PatchSampler(cases, 24, seed=0)
    aug = build_augmentation("strong", seed=0, orientation=False)
    first = _stream_batches(sampler, aug, epoch=0)
    assert len(first) == 5 and first[0][0].shape == (3, 1, 24, 24)
    again = _stream_batches(sampler, aug, epoch=0)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, again, strict=True)
    )
    other = _stream_batches(sampler, aug, epoch=1)
    assert not torch.equal(first[0][0], other[0][0])
    # the two workers draw different batches, not the same ones twice
    assert not torch.equal(first[0][0], first[1][0])


def test_training_with_worker_processes(tmp_path):
    cfg = _config(tmp_path, num_workers=2, iterations_per_epoch=3)
    res = Trainer(cfg, progress=False).run()
    assert len(res["history"]) == 1 and res["history"][0]["loss"] > 0
    with pytest.raises(ValueError, match="num_workers"):
        _config(tmp_path / "bad", num_workers=-1)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_training_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.train.epochs > 0 and cfg.data.datasets
    model = build_model(cfg.model)  # the network each config names can be built
    if cfg.init_checkpoint:  # and a fine-tuning config's start matches it
        from cardioseg.adaptation.finetune import load_init_weights

        load_init_weights(model, cfg.init_checkpoint)


def test_the_init_checkpoint_is_read_once(tmp_path, tiny_checkpoint, monkeypatch):
    """The early check's weights are the ones the run starts from: the file is read once."""
    import cardioseg.adaptation.finetune as finetune_module

    reads: list[str] = []
    real_load = finetune_module.load_checkpoint

    def spy(path, *args, **kwargs):
        reads.append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "load_checkpoint", spy)
    cfg = _config(tmp_path, fold=-1, n_val_monitor=1)
    cfg.init_checkpoint = str(tiny_checkpoint)
    Trainer(cfg, progress=False).run()
    assert reads == [str(tiny_checkpoint)]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"train": {"epoch": 3}}, "['epoch'] ('epoch': did you mean 'epochs'?)"),
        ({"train": {"device": "cuda"}}, "'device': no such setting, a CUDA GPU is used"),
        ({"trian": {}}, "['trian'] ('trian': did you mean 'train'?)"),
        (
            {"data": {"datasets": [{"path": "/nowhere", "layout": "acdcc"}]}},
            "dataset layout must be 'auto' or one of ['acdc', 'folder', 'mnms', 'mnms2', "
            "'mscmr'], got 'acdcc'",
        ),
    ],
)
def test_a_mistyped_key_or_layout_is_refused_with_a_hint_before_the_data(values, message):
    """A typo in a key said only 'unknown key(s)'; a mistyped layout was found only when the
    data were read (after the output folder was made)."""
    with pytest.raises(ValueError) as err:
        config_from_dict(values)
    assert message in str(err.value)


def test_a_dataset_error_names_the_config_and_the_setting(tmp_path):
    """A missing dataset folder was said as '/x: dataset folder not found', naming neither the
    config file nor which of its datasets."""
    cfg = _config(tmp_path)
    cfg.data.datasets[0].path = str(tmp_path / "missing")
    path = tmp_path / "c.yaml"
    cfg.save(path)
    r = CliRunner().invoke(app, ["train", "-c", str(path), "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    line = r.output.strip().splitlines()[-1]
    missing = tmp_path / "missing"
    assert line == f"error: {path}: data.datasets[0]: {missing}: dataset folder not found"


def test_a_patch_larger_than_every_image_is_refused(tmp_path):
    """A patch of 64 on images of 56 x 48 pixels trained on padding without a word."""
    cfg = _config(tmp_path, patch_size=64)
    with pytest.raises(
        CardiosegError,
        match=r"train.patch_size 64 is larger than every training "
        r"image \(the largest side is 56 pixels at data.target_spacing 1.0 mm\)",
    ):
        Trainer(cfg, progress=False).run()
    assert not (tmp_path / "run").exists()  # refused before config.yaml: nothing left
    cfg.train.patch_size = 56  # as large as the largest image: trains
    assert len(Trainer(cfg, progress=False).run()["history"]) == 1


def test_a_batch_too_large_for_the_memory_is_refused_before_the_data(tmp_path, monkeypatch):
    """A huge batch read all the data, then failed in the first step with a raw allocator
    error (or was killed by the system without a word)."""
    import cardioseg.training.trainer as trainer

    cfg = _config(tmp_path, batch_size=200_000)
    monkeypatch.setattr(trainer, "available_memory", lambda: 2**30)

    def no_data(*a, **k):
        raise AssertionError("the data were read")

    monkeypatch.setattr(trainer, "collect_records", no_data)
    with pytest.raises(CardiosegError) as err:
        Trainer(cfg, progress=False).run()
    need = trainer.step_memory_estimate(200_000, 32, [4, 8, 16], [2, 2], False)
    assert need > 2**30
    assert str(err.value) == (
        f"train.batch_size 200000 with train.patch_size 32 needs about {need / 2**30:.1f} GB "
        "for a training step, more than the 1.0 GB free on cpu; lower train.batch_size or "
        "train.patch_size"
    )
    assert not (tmp_path / "run").exists()
    # the shipped default recipe needs well under a GB: never refused on a usual machine
    assert trainer.step_memory_estimate(16, 160, [24, 48, 96, 192, 384], [2] * 4, True) < 2**29


def test_the_cache_keeps_apart_a_label_file_read_in_two_conventions(tmp_path):
    """The cache key left out the label convention: a folder read once with the wrong one kept
    serving those labels after the layout was corrected (LV and RV swapped in training)."""
    from cardioseg.data.datasets import CaseRecord
    from cardioseg.training.slices import load_prepared

    lab = disc_labels((40, 36, 3))
    img = write_nifti(tmp_path / "a.nii.gz", image_from_labels(lab))
    gt = write_nifti(tmp_path / "a_gt.nii.gz", lab)
    cache = tmp_path / "cache"
    as_canonical = CaseRecord("folder", "a", "ED", str(img), str(gt), "canonical", -1)
    as_acdc = CaseRecord("folder", "a", "ED", str(img), str(gt), "acdc", -1)
    first = load_prepared([as_canonical], 1.0, cache)[0].label
    second = load_prepared([as_acdc], 1.0, cache)[0].label
    assert (first == 1).sum() > 0 and (first == 3).sum() > 0
    assert ((second == 3) == (first == 1)).all() and ((second == 1) == (first == 3)).all()


def test_labels_in_the_swapped_convention_are_refused(tmp_path):
    """ACDC or MS-CMRSeg files (RV 1, LV 3) in a generic folder (read as LV 1, RV 3) trained a
    model with the ventricles swapped, without a word."""
    cfg = _config(tmp_path)
    for i in range(4):  # the same data with 1 and 3 exchanged, as ACDC files would hold them
        f = tmp_path / "data" / f"case{i}_gt.nii.gz"
        lab = disc_labels((56, 48, 4), center=(26 + i, 22 + i))
        write_nifti(f, np.choose(lab, [0, 3, 2, 1]).astype(np.uint8))
    with pytest.raises(
        CardiosegError,
        match=r"the labels look swapped: class 3 lies inside the "
        r"myocardium \(100% of its border touches it\) and class 1 beside it",
    ):
        Trainer(cfg, progress=False).run()
    assert not (tmp_path / "run").exists()


def test_an_epoch_trained_again_after_a_kill_is_one_row_of_metrics(tmp_path):
    """A run killed after writing an epoch's metrics row but before its last.pt trains that
    epoch again on resume: its row was then in metrics.csv twice."""
    cfg = _config(tmp_path, epochs=2)
    cfg.train.epochs = 1
    Trainer(cfg, progress=False).run()
    out = tmp_path / "run"
    with open(out / "metrics.csv", "a") as fh:  # epoch 2's row, written just before the kill
        fh.write("2,0.5,0.001,,,,,1.0\n")
    cfg.train.epochs = 2
    Trainer(cfg, progress=False).run()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["loss"]) != 0.5  # the row of the epoch trained again


def test_summary_has_no_best_dice_without_a_held_out_fold(tmp_path):
    """All-data training (fold -1) wrote 'best_val_dice': -1.0 in summary.json, read as a
    score."""
    cfg = _config(tmp_path, fold=-1, n_val_monitor=1)
    Trainer(cfg, progress=False).run()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_val_dice"] is None and summary["epochs_done"] == 1
    assert 0.0 <= summary["last"]["dice_mean"] <= 1.0  # the monitored score is still there
