"""The ONNX Runtime backend: the same predictions as PyTorch, chosen only where it applies."""

from __future__ import annotations

import os
import time

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
