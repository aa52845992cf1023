"""Run a segmentation network with ONNX Runtime on the CPU.

The network is exported from its PyTorch module when the :class:`~cardioseg.inference.Segmenter`
first loads it (in memory; nothing is downloaded), checked against the PyTorch module on small
deterministic inputs, and then run by ONNX Runtime, whose CPU kernels (blocked-layout
convolutions, fused normalisation and activation) are faster than PyTorch's eager float32 path
on CPUs without native bfloat16. Where the export or the check fails, the segmenter keeps
PyTorch (:func:`export_network` raises :class:`OnnxExportError`).

An export that passed its check is kept in a cache folder (:func:`export_cache_dir`), keyed by
the checkpoint file's SHA-256 digest, the export recipe and the versions of the packages that
built and run it. A later process loading the same checkpoint runs the cached export at once:
it neither exports again nor builds the PyTorch network (nor imports MONAI, which takes about
2 s), which shortens every ``cardioseg analyze`` after the first by 2-4 s on 2 cores. The
cache holds model weights only, derived from the local checkpoint; where the folder cannot be
written the export is simply made again each time.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import warnings
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Network backends of :class:`~cardioseg.inference.Segmenter`.
BACKENDS = ("auto", "torch", "onnxruntime")

#: ONNX operator set of the export (supported by every onnxruntime >= 1.14).
OPSET = 17

#: Largest absolute difference between the exported and the PyTorch logits on the check input
#: (float32 kernels differ in summation order, by about 1e-5 on the packaged models).
CHECK_TOLERANCE = 1e-3


#: The axes of the exported input and output left free: slices, height and width.
FREE_AXES = {0: "batch", 2: "height", 3: "width"}

#: Version of the export recipe (graph changes such as the PReLU rewrite, the opset, the free
#: axes, the check): part of the cache key, raised whenever the recipe changes so that an
#: older cached export is never reused.
EXPORT_RECIPE = 1

#: The packages whose versions are part of the cache key: what builds the network from the
#: checkpoint (torch, monai), exports it (torch, onnx) and runs it (onnxruntime).
KEY_PACKAGES = ("torch", "monai", "onnx", "onnxruntime")


class OnnxExportError(RuntimeError):
    """The network could not be exported, or its export disagrees with the PyTorch module."""


def onnxruntime_available() -> bool:
    """Whether the packages the ONNX Runtime backend needs (``onnx`` to export,
    ``onnxruntime`` to run) can be imported.

    Example:
        >>> isinstance(onnxruntime_available(), bool)
        True
    """
    return _importable("onnx") and _importable("onnxruntime")


def _importable(name: str) -> bool:
    """Whether a package imports (a cached export needs only ``onnxruntime``)."""
    try:
        __import__(name)
    except Exception:  # not installed, or a broken installation (a library that fails to load)
        return False
    return True


class OnnxNetwork:
    """An exported network run by ONNX Runtime; called like the module it came from.

    Args:
        model_bytes: The serialised ONNX model (input ``image``, ``(N, C, H, W)`` float32 with
            free ``N``, ``H`` and ``W``; output ``logits``).
        num_threads: ONNX Runtime intra-op threads (``None``: PyTorch's current setting).

    Example:
        >>> from cardioseg.models.factory import ModelConfig, build_model
        >>> net = build_model(ModelConfig(channels=(4, 8), strides=(2,))).eval()
        >>> onnx_net = export_network(net, check_size=16)
        >>> onnx_net(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 4, 32, 32])
    """

    def __init__(self, model_bytes: bytes, num_threads: int | None = None):
        #: The serialised model (what :func:`store_export` writes).
        self.model_bytes = model_bytes
        self._threads = int(num_threads or torch.get_num_threads())
        self.session = self._new_session()
        self._input = self.session.get_inputs()[0].name
        _LIVE.add(self)

    def _new_session(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no notes on the console
        return ort.InferenceSession(self.model_bytes, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits for a ``(N, C, H, W)`` batch (as a CPU tensor)."""
        if self.session is None:  # set aside in a forked process: a session of its own
            self.session = self._new_session()
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self._input: array})[0])


#: The networks of this process (weakly held), for the fork handler below.
_LIVE: weakref.WeakSet[OnnxNetwork] = weakref.WeakSet()
#: Sessions a forked process inherited: never run nor freed there. Their thread pool's
#: threads exist only in the parent, so running one blocks, and so does destroying one
#: (found with a batch that forks its workers from a process holding a segmenter).
_INHERITED: list[Any] = []


def _after_fork_in_child() -> None:
    """Set the inherited sessions aside; each network makes a new one when first called."""
    for network in list(_LIVE):
        if network.session is not None:
            _INHERITED.append(network.session)
            network.session = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def export_network(
    model: torch.nn.Module, num_threads: int | None = None, check_size: int = 64
) -> OnnxNetwork:
    """Export a 2D segmentation network to ONNX and check it against the module.

    The check runs both on seeded random inputs of other batch sizes and shapes than the
    export's example (1 slice of ``check_size`` x 2 ``check_size`` pixels, 3 slices of
    2 ``check_size`` x ``check_size``), so that an export that fixed the batch size or an
    image side fails here, and requires their logits to agree within
    :data:`CHECK_TOLERANCE`.

    Args:
        model: The network, in evaluation mode, on the CPU.
        num_threads: ONNX Runtime threads (``None``: PyTorch's setting).
        check_size: Side of the check input; a multiple of the network's total stride.

    Raises:
        OnnxExportError: When the packages are missing, the export fails or the check
            fails or disagrees.
    """
    if not onnxruntime_available():
        raise OnnxExportError("the onnx and onnxruntime packages are not installed")
    try:
        in_channels = _in_channels(model)
        buffer = io.BytesIO()
        example = torch.zeros(2, in_channels, check_size, check_size)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes
            torch.onnx.export(
                _with_leaky_relu(model),
                (example,),
                buffer,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={n: FREE_AXES for n in ("image", "logits")},
                opset_version=OPSET,
                dynamo=False,
            )
        network = OnnxNetwork(buffer.getvalue(), num_threads)
        generator = torch.Generator().manual_seed(0)
        checks = ((1, check_size, 2 * check_size), (3, 2 * check_size, check_size))
        for n, h, w in checks:
            x = torch.randn(n, in_channels, h, w, generator=generator)
            with torch.inference_mode():
                expected = model(x).float()
            got = network(x)
            if got.shape != expected.shape:
                raise OnnxExportError(
                    f"exported network gives {tuple(got.shape)} for {tuple(x.shape)}, "
                    f"not {tuple(expected.shape)}"
                )
            diff = float((got - expected).abs().max())
            if not diff <= CHECK_TOLERANCE:
                raise OnnxExportError(f"exported network differs from PyTorch by {diff:.2g}")
    except OnnxExportError:
        raise
    except Exception as exc:  # any failure of the exporter, the runtime or the check
        raise OnnxExportError(f"export failed: {type(exc).__name__}: {exc}") from exc
    return network


def _with_leaky_relu(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose single-parameter PReLUs are LeakyReLUs of the same slope: the
    same function (``x`` where ``x >= 0``, else slope × ``x``), which ONNX Runtime computes
    much faster than a broadcast PRelu (the MONAI UNet's activation)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.PReLU) and child.weight.numel() == 1:
                setattr(parent, name, torch.nn.LeakyReLU(float(child.weight.detach())))
    return model


def _in_channels(model: torch.nn.Module) -> int:
    """Input channels of the network's first convolution (1 for the packaged models)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            return int(module.in_channels)
    raise OnnxExportError("the network has no 2D convolution")


# --- the cache of checked exports ----------------------------------------------------------------


def export_cache_dir() -> Path:
    """The folder of cached exports: ``$XDG_CACHE_HOME/cardioseg/onnx``, by default
    ``~/.cache/cardioseg/onnx`` (the platform convention that pip and matplotlib follow too).
    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG Base Directory specification asks (it
    would put the cache wherever the command happens to run). Deleting the folder is always
    safe: the exports are made again when needed.

    Example:
        >>> export_cache_dir().parts[-2:]
        ('cardioseg', 'onnx')
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cardioseg" / "onnx"


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def _code_digest() -> str:
    """SHA-256 of the cardioseg sources that build and export a network (the model factory,
    MixStyle, this module): an edited or upgraded cardioseg never reuses an older export."""
    here = Path(__file__).resolve().parents[1]
    files = [here / "models" / "factory.py", here / "models" / "mixstyle.py", Path(__file__)]
    h = hashlib.sha256()
    for f in files:
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"missing")
    return h.hexdigest()


def _packages() -> dict[str, str]:
    """The installed versions of :data:`KEY_PACKAGES` (from their metadata, not imported)."""
    return {p: _package_version(p) for p in KEY_PACKAGES}


def export_key(checkpoint_sha256: str) -> str:
    """The cache key of the export of the checkpoint whose content has this SHA-256 (as
    :func:`~cardioseg.models.checkpoint.read_checkpoint` gives it): that digest, the
    :data:`EXPORT_RECIPE` and :data:`OPSET`, the versions of :data:`KEY_PACKAGES` and a digest
    of cardioseg's network-building and export code.

    Example:
        >>> export_key("0" * 64) == export_key("0" * 64) != export_key("1" * 64)
        True
    """
    parts = [checkpoint_sha256, EXPORT_RECIPE, OPSET, _packages()]
    parts.append(_code_digest())  # the code that builds and exports the network
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def load_cached_export(key: str, num_threads: int | None = None) -> OnnxNetwork | None:
    """The cached export of ``key``, or ``None`` where there is none, it is incomplete, its
    record was stored under another key (a renamed or swapped pair of files), its bytes do not
    match the digest recorded when it was stored (a damaged file), or ONNX Runtime cannot load
    it.

    The record and digest guard against accidents, not against someone who can write the
    cache folder: such a person could also write a matching record (as they could replace the
    installed package itself)."""
    folder = export_cache_dir()
    try:
        record = json.loads((folder / f"{key}.json").read_text())
        if record.get("key") != key:
            return None
        data = (folder / f"{key}.onnx").read_bytes()
        if record.get("sha256") != hashlib.sha256(data).hexdigest():
            return None
        if not _importable("onnxruntime"):
            return None
        return OnnxNetwork(data, num_threads)
    except Exception:  # missing, unreadable, damaged, or refused by the runtime
        return None


def store_export(key: str, network: OnnxNetwork, source: str | Path) -> bool:
    """Keep a checked export under ``key`` (the model, then a record naming its key,
    checkpoint, recipe, package versions and the model's SHA-256, each written atomically);
    ``False``, without an error, where the cache folder cannot be written."""
    from cardioseg.io.nifti import atomic_write

    data = network.model_bytes
    record = {
        "key": key,
        "checkpoint": str(source),
        "recipe": EXPORT_RECIPE,
        "opset": OPSET,
        "packages": _packages(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    folder = export_cache_dir()
    try:
        with atomic_write(folder / f"{key}.onnx") as tmp:
            tmp.write_bytes(data)
        with atomic_write(folder / f"{key}.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2))
    except OSError:
        return False
    return True
