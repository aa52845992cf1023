"""Generalisation-lab methods: MRI artefact and appearance augmentation, MixStyle, gradient
reversal and DANN, fine-tuning, histogram matching, TENT, balanced sampling, config sections."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICK_TRAIN, TINY_MODEL, disc_labels, image_from_labels, write_nifti
from typer.testing import CliRunner

from cardioseg.adaptation.dann import GradientReversal, ganin_lambda, grad_reverse
from cardioseg.adaptation.finetune import freeze, select_subjects, snapshot
from cardioseg.adaptation.harmonization import HistogramReference, match_histogram
from cardioseg.adaptation.tta import Tent, build_adapter
from cardioseg.augmentation import (
    RandomAnisotropy,
    RandomConvolution,
    RandomGhosting,
    RandomGibbs,
    RandomIntensityCurve,
    RandomMotion,
    RandomSpike,
    baseline_augmentation,
    build_augmentation,
)
from cardioseg.data.datasets import CaseRecord
from cardioseg.errors import CardiosegError
from cardioseg.inference import Segmenter
from cardioseg.models import ModelConfig, build_model, load_checkpoint, save_checkpoint
from cardioseg.models.unet_parts import unet_parts
from cardioseg.preprocessing.pipeline import Preprocessor
from cardioseg.training.config import TrainingConfig, config_from_dict, load_config
from cardioseg.training.slices import PatchSampler, PreparedCase
from cardioseg.training.trainer import Trainer, collect_records


def _batch(n=3, s=40):
    g = torch.Generator().manual_seed(0)
    lab = torch.zeros(n, s, s, dtype=torch.long)
    lab[:, 8:26, 10:24] = 1
    lab[:, 12:20, 14:20] = 2
    lab[:, 26:34, 4:12] = 3
    img = lab.float()[:, None] * 0.3 + 0.05 * torch.rand(n, 1, s, s, generator=g)
    return img, lab


NEW = [
    RandomGhosting(p=1),
    RandomMotion(p=1),
    RandomSpike(p=1),
    RandomGibbs(p=1),
    RandomAnisotropy(p=1),
    RandomIntensityCurve(p=1),
    RandomConvolution(p=1),
]


@pytest.mark.parametrize("t", NEW, ids=lambda t: type(t).__name__)
def test_new_augmentations_keep_labels_and_are_seeded(t):
    img, lab = _batch()
    a_img, a_lab = t(img, lab, generator=torch.Generator().manual_seed(3))
    b_img, b_lab = t(img, lab, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a_img, b_img)
    assert a_img.shape == img.shape and torch.isfinite(a_img).all()
    assert torch.equal(a_lab, lab) and torch.equal(b_lab, lab)  # appearance only
    assert not torch.allclose(a_img, img)
    # the random twin records per-sample parameters; the deterministic twin replays them
    det = t.sample(3, torch.Generator().manual_seed(4))
    assert det.params and all(v.shape[0] in (1, 3) for v in det.params.values())
    assert torch.equal(det(img, lab)[0], det(img, lab)[0])
    # p = 0 is the identity
    x, y = type(t)(p=0.0)(img, lab, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(x, img, atol=1e-5) and torch.equal(y, lab)


def test_augmentation_presets():
    names = [type(t).__name__ for t in build_augmentation("spatial").transforms]
    assert names == ["RandomOrientation", "RandomAffine", "RandomElasticDeformation"]
    strong = [type(t).__name__ for t in baseline_augmentation(0, "strong").transforms]
    assert len(strong) == 9 and strong[:3] == names  # unchanged default pipeline
    extra = build_augmentation("none", ["mri_artefacts", {"name": "randconv", "p": 0.2}])
    kinds = [type(t).__name__ for t in extra.transforms]
    assert "RandomGhosting" in kinds and kinds[-1] == "RandomConvolution"
    assert extra.transforms[-1].p == 0.2
    with pytest.raises(ValueError, match="unknown extra augmentation"):
        build_augmentation("strong", ["fancy"])
    with pytest.raises(ValueError):
        build_augmentation("medium")
    upright = [type(t).__name__ for t in build_augmentation("strong", orientation=False).transforms]
    assert "RandomOrientation" not in upright and len(upright) == len(strong) - 1
    img, lab = _batch()
    out, out_lab = extra(img, lab)
    assert out.shape == img.shape and torch.equal(out_lab, lab)


def test_mixstyle_is_a_training_only_hook():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**TINY_MODEL))
    mixed = build_model(ModelConfig(**TINY_MODEL, mixstyle_layers=[0, 1], mixstyle_p=1.0))
    assert plain.state_dict().keys() == mixed.state_dict().keys()
    mixed.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 32, 32)
    plain.eval(), mixed.eval()
    assert torch.allclose(plain(x), mixed(x))
    mixed.train(), plain.train()
    assert not torch.allclose(plain(x), mixed(x))
    with pytest.raises(ValueError, match="mixstyle_layers"):
        ModelConfig(**TINY_MODEL, mixstyle_layers=[5])


def test_gradient_reversal_flips_gradients_and_lambda_schedule():
    x = torch.randn(5, requires_grad=True)
    w = torch.randn(5)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)  # identity forward
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.7 * w)
    x.grad = None
    (GradientReversal(2.0)(x) * w).sum().backward()
    assert torch.allclose(x.grad, -2.0 * w)
    assert ganin_lambda(0.0) == 0.0
    assert math.isclose(ganin_lambda(0.5), 2 / (1 + math.exp(-5)) - 1)
    assert math.isclose(ganin_lambda(1.0), 2 / (1 + math.exp(-10)) - 1)
    values = [ganin_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and 0.999 < values[-1] < 1.0
    assert ganin_lambda(3.0) == ganin_lambda(1.0)  # clamped


# -- training with the new components -------------------------------------------------------------


def _folder(root, n, offset=0, bad_labels=False):
    for i in range(n):
        lab = disc_labels((48, 44, 4), center=(22 + i, 21 + i))
        write_nifti(root / f"s{offset + i}.nii.gz", image_from_labels(lab, seed=offset + i))
        gt = np.zeros((5, 5, 2), np.uint8) if bad_labels else lab
        write_nifti(root / f"s{offset + i}_gt.nii.gz", gt)
    return root


def _cfg(tmp_path, name="run", **sections):
    values = {
        "data": {
            "datasets": [{"path": str(_folder(tmp_path / "src", 3)), "layout": "folder"}],
            "cache_dir": str(tmp_path / "cache"),
            "target_spacing": 1.0,
        },
        "model": dict(TINY_MODEL),
        "train": dict(QUICK_TRAIN),
        "output_dir": str(tmp_path / name),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return config_from_dict(values)


def test_dann_training_step_computes_domain_loss(tmp_path):
    # target labels are deliberately unreadable: target_unlabeled data must never read them
    tgt = _folder(tmp_path / "tgt", 2, offset=10, bad_labels=True)
    cfg = _cfg(tmp_path, dann={"enabled": True, "target_batch_size": 2})
    cfg.data.datasets.append(
        config_from_dict(
            {
                "data": {
                    "datasets": [{"path": str(tgt), "layout": "folder", "role": "target_unlabeled"}]
                }
            }
        ).data.datasets[0]
    )
    res = Trainer(cfg, progress=False).run()
    row = res["history"][-1]
    assert row["dann_loss"] > 0 and 0 <= row["dann_acc"] <= 1
    assert 0 <= row["dann_lambda"] < 1
    header = next(csv.reader(open(tmp_path / "run" / "metrics.csv")))
    assert "dann_loss" in header
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert "classifier" in ck["components"][0]
    assert len(ck["fingerprint"]["intensity_reference"]["values"]) == 101
    # without a target pool, DANN is refused with a clear message
    cfg2 = _cfg(tmp_path, name="run2", dann={"enabled": True})
    with pytest.raises(CardiosegError, match="target_unlabeled"):
        Trainer(cfg2, progress=False).run()


def test_dann_adversary_cannot_win_by_scaling_features():
    """Behind gradient reversal the encoder maximises the domain loss. The classifier standardises
    its input, so the loss does not depend on the features' scale and its gradient has no
    component along the features: the reversed gradient cannot inflate them (an earlier version
    let the domain loss reach thousands on ACDC → LGE)."""
    from cardioseg.adaptation.dann import DomainClassifier

    torch.manual_seed(0)
    clf = DomainClassifier(16, hidden=8)
    feats = torch.randn(8, 16, 4, 4, requires_grad=True)
    domain = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    loss = torch.nn.functional.cross_entropy(clf(feats), domain)
    (grad,) = torch.autograd.grad(loss, feats)
    radial = (grad * feats).flatten(1).sum(1) / feats.flatten(1).norm(dim=1)
    assert radial.abs().max() < 1e-5 * grad.flatten(1).norm(dim=1).max() + 1e-8
    big = torch.nn.functional.cross_entropy(clf(1000 * feats.detach()), domain)
    assert float(big) == pytest.approx(float(loss), abs=1e-4)


def test_freeze_leaves_frozen_parameters_unchanged():
    torch.manual_seed(0)
    net = build_model(ModelConfig(**TINY_MODEL))
    parts = unet_parts(net)
    before = snapshot(net)
    params = freeze(net, "decoder", 1)
    assert {id(p) for p in params} == {id(p) for p in parts.decoder[-1].parameters()}
    opt = torch.optim.SGD(params, lr=0.5)
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 4, (2, 32, 32))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    after = snapshot(net)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(not torch.equal(before[n], after[n]) for n in trainable)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainable)
    enc = freeze(net, "encoder", 1)
    assert {id(p) for p in enc} == {id(p) for p in parts.encoder[0].parameters()}
    assert len(freeze(net, "all")) == len(list(net.parameters()))


def test_select_subjects_is_seeded_and_nested():
    recs = [CaseRecord("d", f"s{i}", ph, f"s{i}{ph}") for i in range(6) for ph in ("ED", "ES")]
    one = {r.subject for r in select_subjects(recs, 1, seed=3)}
    two = {r.subject for r in select_subjects(recs, 2, seed=3)}
    assert len(one) == 1 and len(two) == 2 and one <= two
    assert len(select_subjects(recs, 2, seed=3)) == 4  # both phases of each subject
    with pytest.raises(CardiosegError, match="k_subjects"):
        select_subjects(recs, 7)


def test_finetune_run_from_checkpoint(tmp_path):
    first = _cfg(tmp_path, name="pre")
    Trainer(first, progress=False).run()
    init = tmp_path / "pre" / "final.pt"
    cfg = _cfg(
        tmp_path,
        name="ft",
        init_checkpoint=str(init),
        finetune={"trainable": "decoder", "n_blocks": 1, "k_subjects": 1, "seed": 0},
    )
    Trainer(cfg, progress=False).run()
    ck = load_checkpoint(tmp_path / "ft" / "final.pt")
    assert len(ck["fingerprint"]["train_subjects"]) == 1
    start = load_checkpoint(init)["model_state"]
    net = build_model(ModelConfig(**TINY_MODEL))
    last = {id(p) for p in unet_parts(net).decoder[-1].parameters()}
    names = {n for n, p in net.named_parameters() if id(p) in last}
    for name, value in ck["model_state"].items():
        if name in names:
            assert not torch.equal(value, start[name]), name
        else:
            assert torch.equal(value, start[name]), name
    bad = _cfg(
        tmp_path, name="bad", init_checkpoint=str(init), model={"channels": [4, 8], "strides": [2]}
    )
    with pytest.raises(CardiosegError, match="does not match"):
        Trainer(bad, progress=False).run()


def test_k_subjects_drawn_from_the_labelled_target_only(tmp_path):
    src = {"path": str(_folder(tmp_path / "src", 3)), "layout": "folder"}
    tgt = {"path": str(_folder(tmp_path / "tgt", 4, offset=10)), "layout": "folder"}
    datasets = [src, {**tgt, "role": "target_labeled"}]
    cfg = _cfg(tmp_path, data={"datasets": datasets}, finetune={"k_subjects": 2, "seed": 1})
    recs = collect_records(cfg)
    by_root = {}
    for r in recs:
        by_root.setdefault(Path(r.image).parent.name, set()).add(r.subject)
    assert len(by_root["src"]) == 3 and len(by_root["tgt"]) == 2  # every source subject kept
    again = {r.subject for r in collect_records(cfg) if "tgt" in r.image}
    assert again == by_root["tgt"]  # seeded
    # without a target_labeled dataset, k_subjects draws among the sources (plain fine-tuning)
    plain = _cfg(tmp_path, data={"datasets": [src]}, finetune={"k_subjects": 2, "seed": 1})
    assert len({r.subject for r in collect_records(plain)}) == 2
    # a target_labeled dataset is training data, never an unlabelled pool
    assert collect_records(cfg, "target_unlabeled") == []


# -- test-time methods ----------------------------------------------------------------------------


def test_histogram_matching_maps_to_reference_quantiles():
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, size=(30, 30, 6)).astype(np.float32)
    ref = HistogramReference.from_volumes([a])
    for b in (3.0 * a + 5.0, a**2, np.exp(a / 4)):
        m = match_histogram(b, ref)
        q = np.percentile(m, ref.levels)
        assert np.allclose(q, ref.values, atol=0.02 * np.ptp(ref.values))
        assert m.shape == b.shape and m.dtype == np.float32
    assert np.all(match_histogram(np.zeros((4, 4)), ref) == np.median(ref.values))
    assert HistogramReference.from_dict(ref.to_dict()) == ref


def test_preprocessor_and_segmenter_harmonization(tmp_path, tiny_checkpoint):
    vol = image_from_labels(disc_labels((40, 36, 4)))
    ref = HistogramReference.from_volumes([np.linspace(-1, 3, 1000) ** 3]).to_dict()
    x0, _ = Preprocessor(1.5).forward(vol, (1.5, 1.5, 8.0))
    x1, _ = Preprocessor(1.5, histogram_reference=ref).forward(vol, (1.5, 1.5, 8.0))
    assert x0.shape == x1.shape and not torch.allclose(x0, x1)
    with pytest.raises(CardiosegError, match="intensity reference"):
        Segmenter(tiny_checkpoint, harmonization="histogram")
    ck = load_checkpoint(tiny_checkpoint)
    ck["fingerprint"] = {"intensity_reference": ref}
    save_checkpoint(tmp_path / "ref.pt", ck)
    seg = Segmenter(tmp_path / "ref.pt", harmonization="histogram", device="cpu")
    labels, _ = seg.predict_volume(vol, (1.5, 1.5, 8.0))
    assert labels.shape == vol.shape


def test_tent_adapts_only_norm_parameters_and_restores():
    torch.manual_seed(0)
    net = build_model(ModelConfig(channels=[4, 8], strides=[2], num_res_units=0, norm="batch"))
    net.eval()
    before = snapshot(net)
    x = torch.randn(4, 1, 24, 24)
    tent = Tent(steps=3, lr=0.05)
    with tent.adapted(net, x):
        inside = snapshot(net)
        changed = {n for n in before if not torch.equal(before[n], inside[n])}
        y = net(x)
    assert changed and all(".N." in n for n in changed)  # only BatchNorm affine parameters
    assert len(tent.losses) == 3 and y.shape == (4, 4, 24, 24)
    after = snapshot(net)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not net.training and all(p.requires_grad for p in net.parameters())


def test_tent_on_instance_norm_model_adds_identity_affine(tiny_checkpoint):
    torch.manual_seed(0)
    net = build_model(ModelConfig(**TINY_MODEL)).eval()
    before = snapshot(net)
    x = torch.randn(3, 1, 32, 32)
    ref = net(x).detach()
    with Tent(steps=4, lr=0.1).adapted(net, x):
        assert all(torch.equal(before[n], p) for n, p in net.named_parameters())
        adapted = net(x).detach()
    assert not torch.allclose(ref, adapted)
    assert torch.allclose(net(x), ref)  # hooks removed, model restored
    vol = image_from_labels(disc_labels((40, 36, 4)))
    seg = Segmenter(tiny_checkpoint, adaptation="tent", adaptation_options={"steps": 2})
    labels, _ = seg.predict_volume(vol, (1.5, 1.5, 8.0))
    assert labels.shape == vol.shape
    assert build_adapter("none") is None
    with pytest.raises(ValueError, match="unknown test-time adaptation"):
        build_adapter("magic")


def test_segment_cli_adapt(tmp_path, tiny_checkpoint):
    from cardioseg.cli.main import app

    img = write_nifti(tmp_path / "a.nii.gz", image_from_labels(disc_labels((48, 44, 4))))
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "segment",
            str(img),
            "-o",
            str(tmp_path / "a_seg.nii.gz"),
            "--model",
            str(tiny_checkpoint),
            "--adapt",
            "tent",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a_seg.nii.gz").exists()
    res = runner.invoke(
        app,
        [
            "segment",
            str(img),
            "-o",
            str(tmp_path / "b.nii.gz"),
            "--model",
            str(tiny_checkpoint),
            "--adapt",
            "magic",
        ],
    )
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


# -- sampling and config --------------------------------------------------------------------------


def test_balanced_sampler_draws_domains_equally():
    def case(n_slices, cx):
        img = np.zeros((n_slices, 40, 40), np.float16)
        img[:, :, :] = cx
        return PreparedCase(
            CaseRecord("d", f"s{cx}", "ED", ""),
            img,
            np.zeros((n_slices, 40, 40), np.uint8),
            (20.0, 20.0),
            {},
        )

    cases = [case(2, 0), case(8, 1), case(8, 2), case(8, 3)]
    sampler = PatchSampler(cases, 16, seed=0, domains=["A", "B", "B", "B"])
    x, _ = sampler.sample(4000)
    frac_a = float((x[:, 0, 8, 8] == 0).float().mean())
    assert 0.45 < frac_a < 0.55  # 2 of 26 slices, but half of the draws
    uniform = PatchSampler(cases, 16, seed=0)
    x, _ = uniform.sample(4000)
    assert float((x[:, 0, 8, 8] == 0).float().mean()) < 0.15


def test_config_sections_defaults_and_validation(tmp_path):
    cfg = load_config("configs/acdc_default.yaml")
    assert not cfg.dann.enabled and cfg.finetune.trainable == "all" and not cfg.init_checkpoint
    assert cfg.inference.harmonization == "none" and cfg.data.sampling == "uniform"
    assert cfg.train.extra_augmentation == [] and cfg.model.mixstyle_layers == []
    assert TrainingConfig().to_dict()["dann"]["enabled"] is False
    ok = config_from_dict(
        {
            "train": {"augmentation": "spatial"},
            "data": {"sampling": "balanced", "domain_key": "vendor"},
        }
    )
    assert ok.train.augmentation == "spatial"
    bad = [
        {"train": {"augmentation": "medium"}},
        {"train": {"extra_augmentation": ["fancy"]}},
        {"data": {"datasets": [{"path": "x", "role": "target"}]}},
        {"data": {"datasets": [{"path": "x", "include": {"colour": ["red"]}}]}},
        {"data": {"sampling": "weighted"}},
        {"data": {"domain_key": "scanner"}},
        {"finetune": {"trainable": "middle"}},
        {"inference": {"adaptation": "magic"}},
        {"dann": {"weight": -1}},
        {"dann": {"enabled": True, "lambda": 2}},
    ]
    for values in bad:
        with pytest.raises(ValueError):
            config_from_dict(values)
    p = tmp_path / "c.yaml"
    p.write_text("train: {augmentation: medium}\n")
    with pytest.raises(CardiosegError, match="augmentation"):
        load_config(p)
