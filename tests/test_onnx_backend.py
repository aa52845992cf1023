"""The ONNX Runtime backend: the same predictions as PyTorch, chosen only where it applies."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cardioseg.inference import Segmenter
from cardioseg.inference import segmenter as segmenter_module
from cardioseg.inference.onnx_backend import (
    OnnxExportError,
    _with_leaky_relu,
    export_network,
    onnxruntime_available,
)
from cardioseg.models import ModelConfig, build_model

pytestmark = pytest.mark.skipif(
    not onnxruntime_available(), reason="onnx/onnxruntime not installed (core dependencies)"
)


def _volume(seed: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0.3, 0.1, (56, 48, 4)).astype(np.float32)
    vol[18:38, 14:34] += 1.0  # a bright square: a prediction that is not all one class
    return vol


def test_prelu_becomes_the_same_leaky_relu():
    torch.manual_seed(1)
    net = build_model(ModelConfig(channels=[4, 8, 16], strides=[2, 2], num_res_units=1)).eval()
    prelus = [m for m in net.modules() if isinstance(m, torch.nn.PReLU)]
    assert prelus
    for k, m in enumerate(prelus):  # slopes unlike the initial 0.25, one above 1
        m.weight.data.fill_(0.1 + 0.5 * k)
    leaky = _with_leaky_relu(net)
    assert not any(isinstance(m, torch.nn.PReLU) for m in leaky.modules())
    assert any(isinstance(m, torch.nn.PReLU) for m in net.modules())  # the original is kept
    x = torch.randn(2, 1, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(leaky(x), net(x))


def test_export_matches_the_module_on_other_sizes():
    torch.manual_seed(2)
    net = build_model(ModelConfig(channels=[4, 8, 16], strides=[2, 2], num_res_units=1)).eval()
    onnx_net = export_network(net, check_size=16)
    x = torch.randn(3, 1, 40, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
    got = onnx_net(x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-4


class _OneConv(torch.nn.Module):
    """One convolution; the subclasses' forward passes use it in ways an export cannot keep."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)


class _NumpyNet(_OneConv):
    """A network the exporter cannot follow (its output is computed in numpy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.from_numpy(np.ascontiguousarray(y.detach().numpy()[..., ::-1]))


def test_an_export_that_disagrees_is_refused():
    with pytest.raises(OnnxExportError, match="differs from PyTorch|export failed"):
        export_network(_NumpyNet().eval(), check_size=16)


class _FixedBatchNet(_OneConv):
    """Reshapes with the traced batch size as a Python number: the export fixes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n, c, h, w = (int(v) for v in y.shape)
        return y.reshape(n, c, h * w).reshape(n, c, h, w)


class _FixedHeightNet(_OneConv):
    """Crops to the traced height as a Python number: the export fixes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y[:, :, : int(y.shape[2])]


@pytest.mark.parametrize("net", [_FixedBatchNet, _FixedHeightNet])
def test_an_export_that_fixed_a_size_is_refused(net):
    with pytest.raises(OnnxExportError):
        export_network(net().eval(), check_size=16)


def test_auto_runs_onnxruntime_with_the_same_predictions(tiny_checkpoint):
    vol = _volume()
    ref = Segmenter(tiny_checkpoint, backend="torch", precision="float32", device="cpu")
    seg = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    assert (ref.backend, seg.backend) == ("torch", "onnxruntime") and seg.backend_note is None
    lab_ref, p_ref = ref.predict_volume(vol, (1.5, 1.5, 8.0), True)
    lab, p = seg.predict_volume(vol, (1.5, 1.5, 8.0), True)
    assert np.abs(p - p_ref).max() < 1e-4
    assert np.array_equal(lab, lab_ref)
    frames = [vol, np.roll(vol, 3, axis=0)]  # the pipelined frames on ONNX Runtime too
    with seg.sharing_window(), ref.sharing_window():
        got = seg.predict_frames(iter(frames), (1.5, 1.5, 8.0))
        want = ref.predict_frames(iter(frames), (1.5, 1.5, 8.0))
    for (a, _, _), (b, _, _) in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_export_is_not_used_once_it_no_longer_applies(tiny_checkpoint):
    """An adapter or bfloat16 set after loading gets PyTorch, not the stale export."""
    from cardioseg.adaptation.tta import build_adapter

    seg = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    assert seg._networks[0] is not seg.models[0]  # the export
    seg.adapter = build_adapter("tent", steps=1)
    assert seg._networks[0] is seg.models[0]
    seg.adapter = None
    seg.precision = "bfloat16"
    assert seg._networks[0] is seg.models[0]


def test_onnxruntime_only_where_it_applies(tiny_checkpoint, monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        Segmenter(tiny_checkpoint, backend="tensorrt")
    with pytest.raises(ValueError, match="precision bfloat16"):
        Segmenter(tiny_checkpoint, backend="onnxruntime", precision="bfloat16")
    with pytest.raises(ValueError, match="adaptation tent"):
        Segmenter(tiny_checkpoint, backend="onnxruntime", adaptation="tent")
    tent = Segmenter(tiny_checkpoint, adaptation="tent")  # auto: PyTorch, which it adapts
    assert tent.backend == "torch" and "adaptation tent" in tent.backend_note
    bf16 = Segmenter(tiny_checkpoint, precision="bfloat16")
    assert bf16.backend == "torch" and "precision bfloat16" in bf16.backend_note
    monkeypatch.setattr(segmenter_module, "onnxruntime_available", lambda: False)
    missing = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    assert missing.backend == "torch" and "not installed" in missing.backend_note


def test_pytorch_by_choice_does_not_import_onnx(tiny_checkpoint):
    """``auto`` kept for PyTorch (here bfloat16) does not pay for importing onnx (~0.7 s of
    every ``cardioseg analyze`` on a CPU with native bfloat16)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cardioseg.inference import Segmenter\n"
        f"seg = Segmenter({str(tiny_checkpoint)!r}, precision='bfloat16')\n"
        "print(seg.backend, 'onnx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["torch", "False"]


def test_a_failed_export_keeps_pytorch_unless_asked(tiny_checkpoint, monkeypatch):
    def fail(model, *args, **kwargs):
        raise OnnxExportError("export failed: test")

    monkeypatch.setattr(segmenter_module, "export_network", fail)
    seg = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    assert seg.backend == "torch" and seg.backend_note == "export failed: test"
    labels, _ = seg.predict_volume(_volume(), (1.5, 1.5, 8.0))
    assert labels.shape == (56, 48, 4)
    with pytest.raises(ValueError, match="export failed: test"):
        Segmenter(tiny_checkpoint, backend="onnxruntime", precision="float32", device="cpu")


def test_replaced_modules_are_run_not_the_old_export(tiny_checkpoint):
    """Code that swaps the segmenter's modules (as tests and adapters do) gets them run."""
    seg = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    assert seg.backend == "onnxruntime"
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape))
            return torch.zeros(x.shape[0], 4, *x.shape[2:])

    seg.models = [Spy()]
    seg.predict_volume(_volume(), (1.5, 1.5, 8.0))
    assert calls


_FORKED_NET = None


def _use_and_drop_in_child(queue) -> None:
    """In a forked process: run the inherited network, then free it."""
    import gc

    global _FORKED_NET
    out = _FORKED_NET(torch.ones(1, 1, 32, 32))
    queue.put(tuple(out.shape))
    _FORKED_NET = None
    gc.collect()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_a_forked_process_runs_and_frees_an_inherited_network():
    """A process forked from one holding a network (a batch's workers) gets a session of its
    own; the inherited one, whose threads stayed in the parent, is neither run nor freed
    there (either blocked for ever before)."""
    import multiprocessing

    global _FORKED_NET
    torch.manual_seed(3)
    net = build_model(ModelConfig(channels=[4, 8], strides=[2], num_res_units=0)).eval()
    _FORKED_NET = export_network(net, num_threads=2, check_size=16)
    _FORKED_NET(torch.ones(2, 1, 32, 32))  # the parent's thread pool has worked
    time.sleep(0.5)  # ... and its threads have stopped spinning: they wait on the pool's lock
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_use_and_drop_in_child, args=(queue,))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    assert queue.get(timeout=5) == (1, 4, 32, 32)
    assert _FORKED_NET(torch.ones(1, 1, 32, 32)).shape == (1, 4, 32, 32)  # parent unaffected
    _FORKED_NET = None


# --- the cache of checked exports --------------------------------------------------------------


def _cache_files() -> list[str]:
    from cardioseg.inference.onnx_backend import export_cache_dir

    folder = export_cache_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_second_segmenter_runs_the_cached_export_without_building_the_network(
    tiny_checkpoint, monkeypatch
):
    first = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    assert first.export_source == "export"
    assert [n.rsplit(".", 1)[1] for n in _cache_files()] == ["json", "onnx"]

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(segmenter_module, "export_network", no_export)
    second = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    assert (second.backend, second.export_source) == ("onnxruntime", "cache")
    assert second._models is None  # nothing built: the cached export runs alone
    vol = _volume()
    lab_a, p_a = first.predict_volume(vol, (1.5, 1.5, 8.0), True)
    lab_b, p_b = second.predict_volume(vol, (1.5, 1.5, 8.0), True)
    np.testing.assert_array_equal(p_a, p_b)
    np.testing.assert_array_equal(lab_a, lab_b)
    # the modules built later (for an adapter) leave the export in use until they change
    assert second.model is second.models[0] and second.backend == "onnxruntime"
    second.precision = "bfloat16"
    assert second._networks[0] is second.models[0]


def test_a_cached_export_is_not_run_for_replaced_modules_or_another_checkpoint(
    tiny_checkpoint, tmp_path
):
    Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    seg = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    assert seg.export_source == "cache"
    seg.models = [torch.nn.Conv2d(1, 4, 1)]  # assigned before the networks were ever built
    assert seg.backend == "torch"
    other = tmp_path / "other.pt"  # other weights: another key, exported on its own
    ckpt = torch.load(tiny_checkpoint, weights_only=False)
    ckpt["model_state"] = {k: v + 0.01 for k, v in ckpt["model_state"].items()}
    torch.save(ckpt, other)
    seg_other = Segmenter(other, precision="float32", device="cpu")
    assert seg_other.export_source == "export" and len(_cache_files()) == 4


def test_a_damaged_cached_export_is_replaced(tiny_checkpoint):
    from cardioseg.inference.onnx_backend import export_cache_dir

    ref = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    (onnx_file,) = export_cache_dir().glob("*.onnx")
    data = bytearray(onnx_file.read_bytes())
    data[-100] ^= 0xFF  # a flipped byte in a weight: still a loadable model
    onnx_file.write_bytes(bytes(data))
    seg = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    assert seg.export_source == "export"  # the digest did not match: exported again
    vol = _volume()
    np.testing.assert_array_equal(
        seg.predict_volume(vol, (1.5, 1.5, 8.0))[0], ref.predict_volume(vol, (1.5, 1.5, 8.0))[0]
    )
    assert Segmenter(tiny_checkpoint, precision="float32", device="cpu").export_source == "cache"


def test_an_unwritable_cache_only_costs_the_export(tiny_checkpoint, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    for _ in range(2):
        seg = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
        assert (seg.backend, seg.export_source) == ("onnxruntime", "export")


def test_what_blocks_the_export_also_blocks_the_cache(tiny_checkpoint):
    Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    bf16 = Segmenter(tiny_checkpoint, precision="bfloat16")
    assert bf16.backend == "torch" and bf16.export_source is None
    torch_only = Segmenter(tiny_checkpoint, backend="torch", precision="float32", device="cpu")
    assert torch_only.backend == "torch" and torch_only.export_source is None


def test_the_cache_key_follows_the_checkpoint_and_the_recipe(
    tiny_checkpoint, tmp_path, monkeypatch
):
    from cardioseg.inference import onnx_backend
    from cardioseg.models.checkpoint import read_checkpoint

    copy = tmp_path / "copy.pt"
    copy.write_bytes(Path(tiny_checkpoint).read_bytes())
    key = onnx_backend.export_key(read_checkpoint(tiny_checkpoint)[1])
    assert onnx_backend.export_key(read_checkpoint(copy)[1]) == key  # the content, not the path
    monkeypatch.setattr(onnx_backend, "EXPORT_RECIPE", onnx_backend.EXPORT_RECIPE + 1)
    assert onnx_backend.export_key(read_checkpoint(copy)[1]) != key
    monkeypatch.undo()
    monkeypatch.setattr(onnx_backend, "_package_version", lambda name: "0.0")  # other packages
    assert onnx_backend.export_key(read_checkpoint(copy)[1]) != key


def test_loading_a_cached_model_imports_no_monai(tmp_path):
    """What the cache saves a new process: the network is never built, so MONAI (about 2 s
    to import) is not loaded by ``import cardioseg.inference`` nor by the segmenter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cardioseg.inference import Segmenter\n"
        "assert 'monai' not in sys.modules, 'imported by cardioseg.inference'\n"
        "seg = Segmenter(None, precision='float32', device='cpu')\n"
        "print(seg.export_source, 'monai' in sys.modules)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs == [["export", "True"], ["cache", "False"]]


def test_networks_first_built_inside_a_forward_pass_can_be_adapted(tiny_checkpoint):
    """A cached segmenter builds its PyTorch networks when first needed, which can be inside
    the heart-window probe's inference mode: they must still be trainable by an adapter."""
    from cardioseg.adaptation.tta import build_adapter

    Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    seg = Segmenter(tiny_checkpoint, precision="float32", device="cpu", roi=True)
    assert seg._models is None
    seg.adapter = build_adapter("tent", steps=1)
    labels, _ = seg.predict_volume(_volume(), (1.5, 1.5, 8.0))
    assert labels.shape == (56, 48, 4) and seg.backend == "torch"


def test_a_renamed_or_swapped_cache_pair_is_not_run(tiny_checkpoint, tmp_path):
    from cardioseg.inference.onnx_backend import export_cache_dir

    other = tmp_path / "other.pt"  # other weights: another key
    ckpt = torch.load(tiny_checkpoint, weights_only=False)
    ckpt["model_state"] = {k: v + 0.05 for k, v in ckpt["model_state"].items()}
    torch.save(ckpt, other)
    ref = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    Segmenter(other, precision="float32", device="cpu")
    folder = export_cache_dir()
    key_a, key_b = (seg._export_keys()[0] for seg in (ref, Segmenter(other, device="cpu")))
    for ext in ("onnx", "json"):  # the other model's files under this model's key
        (folder / f"{key_a}.{ext}").write_bytes((folder / f"{key_b}.{ext}").read_bytes())
    seg = Segmenter(tiny_checkpoint, precision="float32", device="cpu")
    assert seg.export_source == "export"  # the record names the other key: exported again
    vol = _volume()
    np.testing.assert_array_equal(
        seg.predict_volume(vol, (1.5, 1.5, 8.0), True)[1],
        ref.predict_volume(vol, (1.5, 1.5, 8.0), True)[1],
    )


def test_a_partly_cached_ensemble_is_exported_whole(tiny_checkpoint, tmp_path, monkeypatch):
    other = tmp_path / "other.pt"
    ckpt = torch.load(tiny_checkpoint, weights_only=False)
    ckpt["model_state"] = {k: v * 0.9 for k, v in ckpt["model_state"].items()}
    torch.save(ckpt, other)
    Segmenter(tiny_checkpoint, precision="float32", device="cpu")  # only the first is cached
    assert len(_cache_files()) == 2
    ensemble = Segmenter([tiny_checkpoint, other], precision="float32", device="cpu")
    assert (ensemble.backend, ensemble.export_source, ensemble.n_members) == (
        "onnxruntime",
        "export",
        2,
    )
    assert len(_cache_files()) == 4  # both members' exports are now kept
    torch_run = Segmenter(
        [tiny_checkpoint, other], backend="torch", precision="float32", device="cpu"
    )
    vol = _volume()
    p_onnx = ensemble.predict_volume(vol, (1.5, 1.5, 8.0), True)[1]
    p_torch = torch_run.predict_volume(vol, (1.5, 1.5, 8.0), True)[1]
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    monkeypatch.setattr(segmenter_module, "export_network", None)  # not called again
    cached = Segmenter([tiny_checkpoint, other], precision="float32", device="cpu")
    assert cached.export_source == "cache" and cached._models is None
    np.testing.assert_array_equal(cached.predict_volume(vol, (1.5, 1.5, 8.0), True)[1], p_onnx)


def test_a_relative_cache_home_is_ignored(monkeypatch, tmp_path):
    from cardioseg.inference.onnx_backend import export_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert export_cache_dir() == tmp_path / ".cache" / "cardioseg" / "onnx"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert export_cache_dir() == tmp_path / ".cache" / "cardioseg" / "onnx"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "abs"))
    assert export_cache_dir() == tmp_path / "abs" / "cardioseg" / "onnx"
