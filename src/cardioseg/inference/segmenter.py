"""The :class:`Segmenter`: a loaded model plus self-contained pre/post-processing."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cardioseg.adaptation.tta import build_adapter
from cardioseg.errors import CardiosegError
from cardioseg.inference.onnx_backend import (
    BACKENDS,
    OnnxExportError,
    OnnxNetwork,
    export_key,
    export_network,
    load_cached_export,
    onnxruntime_available,
    store_export,
)
from cardioseg.inference.postprocess import postprocess as _postprocess
from cardioseg.io.nifti import ImageProperties, read_image, write_label
from cardioseg.models.checkpoint import checkpoint_members, model_description, read_checkpoint
from cardioseg.models.factory import ModelConfig, build_model
from cardioseg.preprocessing.geometry import channel_argmax, check_inplane_geometry
from cardioseg.preprocessing.pipeline import Preprocessor, PreprocessState
from cardioseg.training.config import HARMONIZATIONS, PRECISIONS

#: In-plane rotations (degrees) of the test-time augmentation for models trained upright.
TTA_ROTATIONS_DEG = (-10.0, 10.0, 5.0)

#: Margin (pixels at the model's spacing) added on every side of the heart found on the probe
#: slice, to make the window of ``roi`` inference (40 mm at 1.25 mm per pixel).
ROI_MARGIN = 32

#: Fewest foreground pixels on the probe slice for ``roi`` inference to trust its location.
ROI_MIN_FOREGROUND = 64

#: Connected components of the window's prediction smaller than this share of the largest one
#: are fragments (post-processing removes them); only larger ones trigger the whole-image
#: fallback when they reach the window's edge.
ROI_COMPONENT_SHARE = 0.1


def _rotation_grids(x: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling grids rotating a ``(N, C, H, W)`` batch by ``degrees`` and back (physical
    rotation about the image centre, correct for non-square images)."""
    n, _, h, w = x.shape
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    # normalised coordinates scale differently along H and W: rotate in pixel units
    ar = w / h
    mats = []
    for sign in (1.0, -1.0):
        m = torch.tensor(
            [[c, -sign * s / ar, 0.0], [sign * s * ar, c, 0.0]], dtype=x.dtype, device=x.device
        )
        mats.append(F.affine_grid(m.expand(n, 2, 3), [n, 1, h, w], align_corners=False))
    return mats[0], mats[1]


def _preprocessing(config: dict) -> tuple:
    """The config values that define a model's input (ensemble members must agree): target
    spacing, handedness and the padding multiple (the product of the network's strides)."""
    data = config.get("data") or {}
    return (
        float(data.get("target_spacing", 0)),
        bool(data.get("canonical_handedness", True)),
        ModelConfig(**config["model"]).stride_product,
    )


def _window(lo: int, hi: int, n: int, min_size: int, multiple: int) -> tuple[int, int]:
    """Start and end of a window over ``[lo, hi]`` plus ``ROI_MARGIN`` on each side, at least
    ``min_size`` and a multiple of ``multiple`` long, shifted to lie inside ``[0, n)`` (the
    whole axis where it would not fit)."""
    side = max(min_size, hi - lo + 1 + 2 * ROI_MARGIN)
    side = -(-side // multiple) * multiple
    if side >= n:
        return 0, n
    start = min(max(round((lo + hi + 1 - side) / 2), 0), n - side)
    return start, start + side


def _heart_mask(labels: torch.Tensor) -> np.ndarray:
    """Foreground of ``(N, h, w)`` labels without small fragments: the connected components
    (across slices) of at least ``ROI_COMPONENT_SHARE`` of the largest one's size."""
    from scipy import ndimage

    components, n = ndimage.label(labels.numpy() > 0)
    if n == 0:
        return components > 0
    sizes = np.bincount(components.ravel())[1:]
    return np.isin(components, np.flatnonzero(sizes >= ROI_COMPONENT_SHARE * sizes.max()) + 1)


def _normalised_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy over the class axis (1) of ``(N, C, ...)`` probabilities, divided by log C."""
    return -(p * torch.log(p.clamp_min(1e-8))).sum(1) / math.log(p.shape[1])


def _inner_edges(
    heart: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]
) -> tuple[bool, bool, bool, bool]:
    """Which edges (top, bottom, left, right) of the window ``box`` an ``(N, h, w)`` mask seen
    in it touches, counting only edges that lie inside the image of ``size``."""
    y0, y1, x0, x1 = box
    return (
        y0 > 0 and bool(heart[:, 0, :].any()),
        y1 < size[0] and bool(heart[:, -1, :].any()),
        x0 > 0 and bool(heart[:, :, 0].any()),
        x1 < size[1] and bool(heart[:, :, -1].any()),
    )


@dataclass
class Segmentation:
    """Result for one file: canonical labels in native geometry (3D, or 4D with time last).

    Attributes:
        labels: ``uint8`` labels (0 background, 1 LV, 2 MYO, 3 RV) in the input's shape.
        properties: The input's geometry (:class:`~cardioseg.io.ImageProperties`): write the
            labels with :func:`~cardioseg.io.write_label` to keep its affine.
        probabilities: Softmax maps, where asked for (``None`` from :meth:`Segmenter.predict`).
        timings: Seconds per step (``predict_s``).
    """

    labels: np.ndarray
    properties: ImageProperties
    probabilities: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


#: Precision of checkpoints whose config does not name one (all packaged models): bfloat16 where
#: the device has native bfloat16 kernels. On the packaged models it changed mean Dice by at most
#: 0.003 (M&Ms, LGE) and cut the time per volume by a third (``docs/benchmarks.md``).
DEFAULT_PRECISION = "auto"

#: Whether checkpoints whose config does not say segment a heart-centred window (``roi``; all
#: packaged models). With the v4-recipe CV folds it raised mean Dice on the held-out ACDC
#: volumes (0.903 -> 0.907, 160 volumes, p = 1e-5), and with the shipped v4 on M&Ms (0.876 ->
#: 0.890) and LGE (0.690 -> 0.738), while taking less time per volume (``docs/benchmarks.md``).
DEFAULT_ROI = True


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` has native (fast) bfloat16 kernels for the network's convolutions.

    Example:
        >>> isinstance(native_bfloat16(torch.device("cpu")), bool)
        True
    """
    try:
        if device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # a build without the check
        return False


def _check_input(volume: np.ndarray, spacing: Sequence[float], name: str = "volume") -> None:
    """Refuse, with a clear :class:`ValueError`, what the network cannot segment: a volume that
    is not a 3D ``numpy`` array of finite values, or a spacing that is not three positive
    millimetre sizes."""
    if not isinstance(volume, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(volume).__name__}")
    if volume.ndim != 3:
        raise ValueError(
            f"expected a 3D {name} (x, y, z), got shape {volume.shape}"
            + (" (a 4D cine: use Segmenter.predict)" if volume.ndim == 4 else "")
        )
    if spacing is None or isinstance(spacing, (str, bytes)) or not hasattr(spacing, "__len__"):
        raise ValueError(
            f"spacing must be the voxel size in mm of the three axes, got {spacing!r} "
            "(read_image gives it as properties.spacing)"
        )
    try:
        sp = [float(v) for v in spacing]
    except (TypeError, ValueError):
        sp = []
    if len(sp) != 3 or not all(np.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"spacing must be three positive numbers (mm), got {tuple(spacing)}")
    if not np.isfinite(volume).all():
        raise ValueError(f"{name} holds NaN or infinite values")


class Segmenter:
    """Segment short-axis cine MRI volumes into LV (1), MYO (2) and RV (3).

    Args:
        checkpoint: Path of a cardioseg checkpoint or name of a packaged model (``default``,
            ``contrast``); ``None`` uses the shipped default model. A sequence of paths, or the
            name of a packaged ensemble (``ensemble``), makes an ensemble: the softmax outputs
            of the models are averaged (e.g. the five models of a cross-validation). They must
            share the preprocessing (target spacing, handedness, the network's total stride);
            their networks may differ otherwise (e.g. in width). The first one's config and
            fingerprint are used. Test-time adaptation (``tent``) is not
            available for ensembles.
        tta: Test-time augmentation. Averages predictions over the three in-plane flips when
            the model was trained with random turns/flips (``train.orientation_augmentation``),
            otherwise over small in-plane rotations (±10°), which stay inside what such a model
            has seen; the spread of these predictions feeds the QC uncertainty. ``None`` uses the
            checkpoint config's ``inference.tta`` (default off).
        postprocess: Keep the largest component per structure, drop the RV on slices without
            myocardium and fill holes (:func:`cardioseg.inference.postprocess.postprocess`).
        num_threads: Torch CPU threads (``None`` keeps the current setting).
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: Slices per forward pass.
        harmonization: ``histogram`` matches each volume's intensities to the training
            reference stored in the checkpoint; ``none`` disables it; ``None`` uses the
            checkpoint config's ``inference.harmonization`` (default none).
        adaptation: ``tent`` adapts the normalisation parameters to each volume by entropy
            minimisation before predicting it (see :mod:`cardioseg.adaptation.tta`); ``none``
            disables it; ``None`` uses the checkpoint config's ``inference.adaptation``.
        adaptation_options: Keyword arguments of the adapter (e.g. ``{"steps": 10}``).
        precision: ``float32``, ``bfloat16`` (the network's forward pass runs under bfloat16
            autocast; probabilities are still computed in float32) or ``auto`` (bfloat16 where
            the device has native bfloat16 kernels: a CPU with AVX-512 BF16 or AMX, a GPU that
            supports it; float32 elsewhere, where emulated bfloat16 would be slower). ``None``
            uses the checkpoint config's ``inference.precision``, else ``DEFAULT_PRECISION``.
        roi: Segment a heart-centred window instead of the whole field of view: the middle
            slice is segmented first, and every slice is then segmented in a window around the
            heart found there (the bounding box plus ``ROI_MARGIN`` pixels on each side, at
            least the training patch size, the scale the network was trained on). Where the
            predicted heart reaches an edge of the window inside the image, the window is grown
            once (around the heart, and to the image's border on the sides it crossed); where
            it still does, or the middle slice shows no heart, the whole field of view is
            segmented (:attr:`roi_counts` counts each outcome). The frames of one cine share a
            window (:meth:`sharing_window`). ``None`` uses the checkpoint config's
            ``inference.roi``, else ``DEFAULT_ROI``.
        backend: What runs the network: ``torch``, ``onnxruntime`` (the network is exported
            to ONNX when first loaded, or taken from the cache of checked exports, and run
            by ONNX Runtime: CPU and float32 only, without test-time adaptation; see
            :mod:`cardioseg.inference.onnx_backend`) or ``auto``
            (ONNX Runtime where those hold and it is installed, else PyTorch; an export that
            fails or disagrees with PyTorch also leaves PyTorch). :attr:`backend` says which
            one runs.

    Example:
        >>> seg = Segmenter()  # doctest: +SKIP
        >>> res = seg.segment_file("case_ED.nii.gz", "case_ED_seg.nii.gz")  # doctest: +SKIP
    """

    def __init__(
        self,
        checkpoint: str | Path | Sequence[str | Path] | None = None,
        tta: bool | None = None,
        postprocess: bool = True,
        num_threads: int | None = None,
        device: str = "auto",
        batch_size: int = 32,
        harmonization: str | None = None,
        adaptation: str | None = None,
        adaptation_options: dict | None = None,
        precision: str | None = None,
        roi: bool | None = None,
        backend: str = "auto",
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        paths = checkpoint_members(checkpoint)
        if not paths:  # an empty sequence
            raise ValueError("checkpoint: give a path, a sequence of paths or None")
        loaded = [read_checkpoint(p) for p in paths]
        ckpts = [ckpt for ckpt, _ in loaded]
        #: SHA-256 of each member's checkpoint, of the very bytes loaded (the export cache's
        #: key: a file replaced since cannot get this model's export).
        self._digests = [digest for _, digest in loaded]
        #: The checkpoint files of the model (several for an ensemble).
        self.checkpoint_paths = list(paths)
        ckpt = ckpts[0]
        cfg = ckpt["config"]
        for path, other in zip(paths[1:], ckpts[1:], strict=True):
            o = other["config"]
            if _preprocessing(o) != _preprocessing(cfg):
                raise CardiosegError(
                    path, f"ensemble member differs from {paths[0]} in preprocessing"
                )
        self.model_config = ModelConfig(**cfg["model"])
        self.fingerprint = ckpt.get("fingerprint", {})
        inference = cfg.get("inference") or {}
        self.harmonization = harmonization or inference.get("harmonization", "none")
        if self.harmonization not in HARMONIZATIONS:
            raise ValueError(f"harmonization must be 'none' or 'histogram', got {harmonization!r}")
        reference = None
        if self.harmonization == "histogram":
            reference = self.fingerprint.get("intensity_reference")
            if not reference:
                raise CardiosegError(
                    checkpoint, "checkpoint has no intensity reference for histogram matching"
                )
        self.preprocessor = Preprocessor(
            target_spacing=float(cfg["data"]["target_spacing"]),
            pad_multiple=self.model_config.stride_product,
            histogram_reference=reference,
            canonical_handedness=bool(cfg["data"].get("canonical_handedness", True)),
        )
        self.adaptation = adaptation or inference.get("adaptation", "none")
        options = dict(adaptation_options or {})
        if self.adaptation == "tent" and adaptation is None:
            options.setdefault("steps", int(inference.get("tent_steps", 10)))
            options.setdefault("lr", float(inference.get("tent_lr", 1e-3)))
        if self.adaptation != "none" and len(ckpts) > 1:
            raise ValueError("test-time adaptation is not available for an ensemble of models")
        self.adapter = build_adapter(self.adaptation, **options)
        self.metadata = {k: ckpt.get(k) for k in ("metrics", "fingerprint", "format")}
        prints = [c.get("fingerprint") or {} for c in ckpts]
        listed = [f["train_subjects"] or [] for f in prints if "train_subjects" in f]
        #: The ``dataset/subject`` names the model was trained on (for an ensemble, those of
        #: every member that lists them), from the checkpoints' fingerprints; ``None`` when no
        #: checkpoint lists them.
        self.train_subjects: list[str] | None = (
            sorted({str(s) for names in listed for s in names}) if listed else None
        )
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
            ) from None
        requested = precision or inference.get("precision", DEFAULT_PRECISION)
        if requested not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
        if requested == "auto":
            requested = "bfloat16" if native_bfloat16(self.device) else "float32"
        #: The precision the network runs in (``auto`` resolved for this device).
        self.precision = requested
        if num_threads:
            torch.set_num_threads(num_threads)
        #: Each member's network configuration and float32 weights (the networks are built
        #: from them on first use: see :attr:`models`).
        self._members = [
            (
                ModelConfig(**member["config"]["model"]),
                {k: v.float() for k, v in member["model_state"].items()},
            )
            for member in ckpts
        ]
        self._models: list[torch.nn.Module] | None = None
        #: Why ``auto`` kept PyTorch (``None`` when it did not, or was not asked).
        self.backend_note: str | None = None
        #: Where the exported networks came from: ``"cache"`` (a checked export of an earlier
        #: run, :func:`~cardioseg.inference.onnx_backend.load_cached_export`), ``"export"``
        #: (exported and checked now), or ``None`` (PyTorch runs the networks).
        self.export_source: str | None = None
        #: The exported networks and the modules they came from (``onnxruntime`` backend;
        #: ``None`` for the modules of a cached export, which were never built).
        self._exported: tuple[list[torch.nn.Module] | None, list[OnnxNetwork]] | None = None
        self._use_backend(backend)
        if self.export_source != "cache":
            self.models  # noqa: B018 - built now, as PyTorch or the export needs them
        self.tta = bool(inference.get("tta", False)) if tta is None else tta
        if roi is None:
            roi = inference.get("roi")
        self.roi = DEFAULT_ROI if roi is None else bool(roi)
        #: Side (pixels) of the smallest ``roi`` window: the patch size the model trained on.
        self.roi_size = int((cfg.get("train") or {}).get("patch_size", 160))
        #: How often ``roi`` inference used a window, the whole image (no heart on the middle
        #: slice) or fell back to the whole image (a prediction reached the window's edge).
        self.roi_counts = {"window": 0, "full": 0, "fallback": 0}
        self._study_window: dict[tuple[int, int], tuple[int, int, int, int]] | None = None
        self.do_postprocess, self.batch_size = postprocess, batch_size
        #: Whether the model (every member of an ensemble) has seen flipped images in training
        #: (checkpoints written before the option existed always used turns/flips).
        self.flip_invariant = all(
            bool((c["config"].get("train") or {}).get("orientation_augmentation", True))
            for c in ckpts
        )

    @property
    def models(self) -> list[torch.nn.Module]:
        """The PyTorch networks (one per ensemble member), built from the checkpoints on first
        use: a segmenter whose exported networks came from the cache never needs them (nor
        MONAI, which builds them). Assigning other modules makes them run (with PyTorch)."""
        if self._models is None:
            built = []
            with torch.inference_mode(False):  # also when first needed inside a forward pass:
                for config, state in self._members:  # parameters an adapter can train
                    model = build_model(config)
                    model.load_state_dict(state)
                    built.append(model.to(self.device).eval())
            self._models = built
            self._members = []  # the weights now live in the networks only
            if self._exported is not None and self._exported[0] is None:
                self._exported = (list(built), self._exported[1])  # the cached exports' modules
        return self._models

    @models.setter
    def models(self, modules: Sequence[torch.nn.Module]) -> None:
        self._models = list(modules)

    @property
    def model(self) -> torch.nn.Module:
        """The (first) network; test-time adaptation works on it."""
        return self.models[0]

    @property
    def n_members(self) -> int:
        """How many networks the model averages (1, or an ensemble's members)."""
        return len(self._models) if self._models is not None else len(self._members)

    def _export_blockers(self) -> list[str]:
        """Why the exported networks cannot run this segmenter's forward pass (none: they
        can): a GPU, bfloat16, or an adapter, which changes the PyTorch modules."""
        return [
            reason
            for reason, blocks in (
                (f"device {self.device.type}", self.device.type != "cpu"),
                (f"precision {self.precision}", self.precision != "float32"),
                (f"adaptation {self.adaptation}", self.adapter is not None),
            )
            if blocks
        ]

    def _use_backend(self, backend: str) -> None:
        """Run the networks with ``backend`` (see the class's ``backend``)."""
        if backend == "torch":
            return
        blockers = self._export_blockers()
        if blockers and backend == "auto":  # PyTorch runs it: no need to import onnx (0.7 s)
            self.backend_note = ", ".join(blockers)
            return
        keys = [] if blockers else self._export_keys()
        cached = [load_cached_export(k) for k in keys]
        if cached and all(n is not None for n in cached):
            self._exported, self.export_source = (None, cached), "cache"
            return
        if not onnxruntime_available():
            blockers.append("onnx/onnxruntime not installed")
        if blockers:
            if backend == "onnxruntime":
                raise ValueError(f"backend onnxruntime is not available: {', '.join(blockers)}")
            self.backend_note = ", ".join(blockers)
            return
        side = 4 * self.model_config.stride_product  # the check's input: a size the net takes
        try:
            networks = [export_network(m, check_size=side) for m in self.models]
        except OnnxExportError as exc:
            if backend == "onnxruntime":
                raise ValueError(f"backend onnxruntime: {exc}") from exc
            self.backend_note = str(exc)
            return
        self._exported, self.export_source = (list(self.models), networks), "export"
        for key, network, path in zip(keys, networks, self.checkpoint_paths, strict=False):
            store_export(key, network, path)

    def _export_keys(self) -> list[str]:
        """The cache keys of the members' exports."""
        return [export_key(d) for d in self._digests]

    def _exports(self) -> list[OnnxNetwork] | None:
        """The exported networks where they still apply (:attr:`models` holds the modules
        exported, and no blocker was set since: an adapter, bfloat16, a GPU), else ``None``.
        Weights changed in place after loading are not noticed: reload the segmenter."""
        if self._exported is None or self._export_blockers():
            return None
        modules, networks = self._exported
        if modules is None:  # a cached export: applies while no other modules were assigned
            return list(networks) if self._models is None else None
        same = len(modules) == len(self._models or []) and all(
            a is b for a, b in zip(modules, self._models or [], strict=True)
        )
        return list(networks) if same else None

    @property
    def backend(self) -> str:
        """What runs the network now: ``onnxruntime`` or ``torch`` (see ``backend``)."""
        return "torch" if self._exports() is None else "onnxruntime"

    @property
    def _networks(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """What computes each member's logits: its export (:meth:`_exports`), else the
        module."""
        return self._exports() or list(self.models)

    def _tta_views(self, xb: torch.Tensor) -> list[tuple[torch.Tensor, Callable]]:
        """Augmented copies of a batch with the function mapping their outputs back."""
        if self.flip_invariant:
            return [
                (torch.flip(xb, dims), lambda p, dims=dims: p.flip(dims))
                for dims in ((-1,), (-2,), (-2, -1))
            ]
        views = []
        for deg in TTA_ROTATIONS_DEG:
            fwd, back = _rotation_grids(xb, deg)
            views.append(
                (
                    F.grid_sample(xb, fwd, align_corners=False, padding_mode="border"),
                    lambda p, back=back: F.grid_sample(
                        p, back, align_corners=False, padding_mode="border"
                    ),
                )
            )
        return views

    def _logits(
        self, model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """The network's float32 logits, computed under bfloat16 autocast if asked."""
        bf16 = self.precision == "bfloat16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x).float()

    @torch.inference_mode()
    def _forward(
        self,
        x: torch.Tensor,
        box: tuple[int, int, int, int] | None = None,
        member_entropy: bool = False,
    ) -> torch.Tensor:
        """Softmax probabilities for a ``(N, 1, H, W)`` stack (in a heart window if ``roi``:
        ``box``, else the one :meth:`_window_for` finds); with ``member_entropy``, followed by
        one channel: see :meth:`_probabilities`."""

        def probabilities(stack: torch.Tensor) -> torch.Tensor:
            return self._probabilities(stack, member_entropy=member_entropy)

        if not self.roi:
            return probabilities(x)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if box is None:
            box = self._window_for(x)
            if box is None:
                self.roi_counts["full"] += 1
                return probabilities(x)
        for _ in range(2):  # the window, then once a window grown to the heart it cut
            y0, y1, x0, x1 = box
            p = probabilities(x[..., y0:y1, x0:x1])
            heart = _heart_mask(channel_argmax(p[:, :-1] if member_entropy else p))
            crossed = _inner_edges(heart, box, size)
            if not any(crossed):
                self.roi_counts["window"] += 1
                if self._study_window is not None:
                    self._study_window[size] = box
                out = torch.zeros((x.shape[0], p.shape[1], *size), dtype=p.dtype)
                out[:, 0] = 1.0  # background (and no member entropy) outside the window
                out[..., y0:y1, x0:x1] = p
                return out
            box = self._window_around(heart, box, size, open_edges=crossed)
            if box is None:
                break
        self.roi_counts["fallback"] += 1
        return probabilities(x)

    @cached_property
    def description(self) -> str:
        """The model's checkpoint files with short SHA-256 digests, for the record of which
        model produced a result (:func:`~cardioseg.models.checkpoint.model_description`; read
        once per segmenter, not per study)."""
        return model_description(self.checkpoint_paths)

    @contextmanager
    def sharing_window(self) -> Iterator[None]:
        """Within this block, the volumes predicted (the frames of one cine study) share one
        heart window: it is found on the first and re-used, and grown if a later frame's heart
        reaches its edge, instead of probing every frame's middle slice.

        Example:
            >>> seg = Segmenter()  # doctest: +SKIP
            >>> with seg.sharing_window():  # doctest: +SKIP
            ...     labels = [seg.predict_volume(cine[..., t], spacing)[0] for t in range(25)]
        """
        before = self._study_window
        self._study_window = {}
        try:
            yield
        finally:
            self._study_window = before

    def _window_around(
        self,
        heart: np.ndarray,
        offset: tuple[int, int, int, int],
        size: tuple[int, int],
        open_edges: tuple[bool, bool, bool, bool] = (False, False, False, False),
    ) -> tuple[int, int, int, int] | None:
        """The window around a heart mask of ``(N, h, w)`` seen in the window ``offset`` of an
        image of ``size``, reaching the image's border on the ``open_edges`` (top, bottom, left,
        right: where the heart left the window it was seen in); ``None`` if that is the whole
        image."""
        _, ys, xs = np.nonzero(heart)
        stride = self.model_config.stride_product
        lo_y, hi_y = int(ys.min()) + offset[0], int(ys.max()) + offset[0]
        lo_x, hi_x = int(xs.min()) + offset[2], int(xs.max()) + offset[2]
        top, bottom, left, right = open_edges
        y0, y1 = _window(
            0 if top else lo_y, size[0] - 1 if bottom else hi_y, size[0], self.roi_size, stride
        )
        x0, x1 = _window(
            0 if left else lo_x, size[1] - 1 if right else hi_x, size[1], self.roi_size, stride
        )
        if (y0, y1, x0, x1) == (0, size[0], 0, size[1]):
            return None
        return y0, y1, x0, x1

    @torch.inference_mode()
    def _window_for(self, x: torch.Tensor) -> tuple[int, int, int, int] | None:
        """The window of a stack: the study's (:meth:`sharing_window`), else a new one."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if self._study_window is not None and size in self._study_window:
            return self._study_window[size]
        return self._heart_window(x)

    def _heart_window(self, x: torch.Tensor) -> tuple[int, int, int, int] | None:
        """``(y0, y1, x0, x1)`` of the heart window of a ``(N, 1, H, W)`` stack, found on its
        middle slice; ``None`` where that slice shows too little heart or the window would be
        the whole image."""
        fg = _heart_mask(channel_argmax(self._probabilities(x[x.shape[0] // 2 :][:1])))
        if int(fg.sum()) < ROI_MIN_FOREGROUND:
            return None
        return self._window_around(fg, (0, 0, 0, 0), (int(x.shape[-2]), int(x.shape[-1])))

    def _probabilities(self, x: torch.Tensor, member_entropy: bool = False) -> torch.Tensor:
        """Softmax probabilities of the model (or ensemble, with TTA if set) for a stack.

        With ``member_entropy``, one more channel follows the classes: the mean over the
        averaged predictions (models x TTA views) of their own normalised entropy, from which
        :meth:`predict_volume` computes their disagreement.
        """
        outs = []
        for i in range(0, x.shape[0], self.batch_size):
            xb = x[i : i + self.batch_size].to(self.device)
            views = self._tta_views(xb) if self.tta else []
            p, h = torch.zeros(()), torch.zeros(())
            for model in self._networks:
                members = [torch.softmax(self._logits(model, xb), 1)]
                members += [back(torch.softmax(self._logits(model, v), 1)) for v, back in views]
                for q in members:
                    p = p + q
                    if member_entropy:
                        h = h + _normalised_entropy(q)
            n = self.n_members * (1 + len(views))
            p = p / n
            if member_entropy:
                p = torch.cat([p, (h / n).unsqueeze(1)], 1)
            outs.append(p.cpu())
        return torch.cat(outs)

    def predict_volume(
        self,
        volume: np.ndarray,
        spacing: tuple[float, float, float],
        return_probabilities: bool = False,
        affine: np.ndarray | None = None,
        return_disagreement: bool = False,
    ) -> (
        tuple[np.ndarray, np.ndarray | None]
        | tuple[np.ndarray, np.ndarray | None, np.ndarray | None]
    ):
        """Segment one 3D volume given its voxel spacing; returns native-grid labels.

        Give the volume's ``affine`` (as read, RAS+) so that stacks stored as mirror images of
        the canonical short-axis view are segmented in that view (see
        :func:`~cardioseg.preprocessing.geometry.is_mirrored_view`).

        Returns ``(labels, probabilities)`` (``None`` unless ``return_probabilities``; shape
        ``(C, *labels.shape)``); with ``return_disagreement`` a third item: the
        disagreement of the averaged predictions (TTA views x ensemble members) per voxel, in
        the shape of the labels, or ``None`` where only one prediction is made (no TTA, one
        model). It is their mutual information, the normalised entropy of the average minus
        the mean of their own normalised entropies (0..1; 0 where they all agree), the part
        of the uncertainty that comes from the model rather than from the image, which grows
        on images unlike the training data.

        Raises:
            ValueError: ``volume`` is not a 3D array of finite values, or ``spacing`` is not
                three positive numbers.
            CardiosegError: The in-plane field of view cannot hold a heart.

        Example:
            >>> seg = Segmenter()  # doctest: +SKIP
            >>> out = seg.predict_volume(img, props.spacing, affine=props.affine)  # doctest: +SKIP
            >>> labels = out[0]  # doctest: +SKIP
        """
        _check_input(volume, spacing)
        x, state = self.preprocessor.forward(volume, spacing, affine)
        spread = self._spread(return_disagreement)
        out = self._outputs(self._network_pass(x, spread), state, spread, return_probabilities)
        return out if return_disagreement else out[:2]

    def _spread(self, return_disagreement: bool) -> bool:
        """Whether the disagreement can be computed as asked: several predictions are made
        (TTA views or ensemble members)."""
        return return_disagreement and (self.tta or self.n_members > 1)

    def _network_pass(self, x: torch.Tensor, spread: bool) -> torch.Tensor:
        """:meth:`_forward` of a preprocessed stack, adapting the network first if set."""
        if self.adapter is None:
            return self._forward(x, member_entropy=spread)
        box = self._window_for(x) if self.roi else None  # adapt to what the network will see
        seen = x if box is None else x[..., box[0] : box[1], box[2] : box[3]]
        with self.adapter.adapted(self.model, seen.to(self.device)):
            return self._forward(x, box, member_entropy=spread)

    def _outputs(
        self,
        probs: torch.Tensor,
        state: PreprocessState,
        spread: bool,
        return_probabilities: bool,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(labels, probabilities, disagreement)`` on the native grid from the network's
        probabilities (followed by the members' entropy where ``spread``)."""
        disagreement = None
        if spread:
            probs, member = probs[:, :-1], probs[:, -1:]
            mi = (_normalised_entropy(probs).unsqueeze(1) - member).clamp_min(0.0)
            native_mi = self.preprocessor.inverse_probabilities(mi, state)[:, 0]
            disagreement = np.moveaxis(native_mi.numpy(), 0, state.axis)
        p = None
        if return_probabilities:  # mapped back once, for the labels and the output
            native = self.preprocessor.inverse_probabilities(probs.float(), state)
            labels = self.preprocessor.native_labels(native, state)
            p = np.moveaxis(native.permute(1, 0, 2, 3).numpy(), 1, state.axis + 1)
        else:
            labels = self.preprocessor.inverse_labels(probs, state)
        if self.do_postprocess:
            labels = _postprocess(labels, state.axis)
        return labels, p, disagreement

    def predict_frames(
        self,
        volumes: Iterable[np.ndarray],
        spacing: tuple[float, float, float],
        affine: np.ndarray | None = None,
        *,
        return_probabilities: bool = False,
        return_disagreement: bool = False,
    ) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
        """:meth:`predict_volume` of several volumes of one geometry (the frames of a cine):
        for each, ``(labels, probabilities, disagreement)`` as it gives them (the last two
        ``None`` unless asked).

        While the network segments one volume, a second thread maps the previous one's
        prediction back to the native grid and post-processes it (ONNX Runtime and PyTorch
        release the GIL while they compute), which hides most of that work on a multi-core
        CPU. Call it within :meth:`sharing_window` for the frames to share one heart window,
        as :meth:`predict` does.

        Example:
            >>> seg = Segmenter()  # doctest: +SKIP
            >>> with seg.sharing_window():  # doctest: +SKIP
            ...     out = seg.predict_frames((cine[..., t] for t in range(25)), spacing)
            >>> labels = [lab for lab, _, _ in out]  # doctest: +SKIP
        """
        spread = self._spread(return_disagreement)
        pool = ThreadPoolExecutor(1, thread_name_prefix="cardioseg-labels")
        results: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        pending: Future | None = None
        try:
            for volume in volumes:
                _check_input(volume, spacing, "frame")
                x, state = self.preprocessor.forward(volume, spacing, affine)
                probs = self._network_pass(x, spread)  # the adapter, if any, works here
                if pending is not None:  # one volume in flight: memory stays that of two
                    results.append(pending.result())
                pending = pool.submit(self._outputs, probs, state, spread, return_probabilities)
            if pending is not None:
                results.append(pending.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    def predict(self, image: np.ndarray, properties: ImageProperties) -> Segmentation:
        """Segment a 3D volume or every frame of a 4D cine (time last).

        Args:
            image: The array as :func:`~cardioseg.io.read_image` reads it.
            properties: Its geometry (:class:`~cardioseg.io.ImageProperties`; for an array
                from elsewhere ``ImageProperties(affine, spacing, image.shape)``).

        Returns:
            :class:`Segmentation`: ``labels`` in the shape of ``image``.

        Raises:
            ValueError: ``properties`` is not an ImageProperties or its shape is not the
                image's, or the image is not 3D/4D finite values.
            CardiosegError: The in-plane field of view cannot hold a heart.

        Example:
            >>> from cardioseg.io import read_image
            >>> image, props = read_image("case_ED.nii.gz")  # doctest: +SKIP
            >>> labels = Segmenter().predict(image, props).labels  # doctest: +SKIP
        """
        t0 = time.perf_counter()
        if not isinstance(properties, ImageProperties):
            raise ValueError(
                "properties must be an ImageProperties (read_image returns it; for an array from "
                f"elsewhere: ImageProperties(affine, spacing, image.shape)), got "
                f"{type(properties).__name__}"
            )
        image = np.asarray(image)
        if properties.shape and tuple(properties.shape)[:3] != tuple(image.shape)[:3]:
            raise ValueError(
                f"image shape {image.shape} does not match properties.shape {properties.shape}"
            )
        check_inplane_geometry(image.shape, properties.spacing, properties.path or None)
        if image.ndim == 3:
            labels, _ = self.predict_volume(image, properties.spacing, affine=properties.affine)
        elif image.ndim == 4:
            with self.sharing_window():
                frames = (image[..., t] for t in range(image.shape[-1]))
                out = self.predict_frames(frames, properties.spacing, properties.affine)
                labels = np.stack([lab for lab, _, _ in out], axis=-1)
        else:
            raise CardiosegError(properties.path, f"expected 3D or 4D image, got {image.ndim}D")
        return Segmentation(labels, properties, timings={"predict_s": time.perf_counter() - t0})

    def segment_file(
        self, input_path: str | Path, output_path: str | Path | None = None
    ) -> Segmentation:
        """Read a NIfTI file, segment it and (optionally) write the label map atomically."""
        image, props = read_image(input_path)
        result = self.predict(image, props)
        if output_path is not None:
            write_label(output_path, result.labels, props)
        return result
