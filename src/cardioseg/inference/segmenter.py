"""The :class:`Segmenter`: a loaded model plus self-contained pre/post-processing."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cardioseg.adaptation.tta import build_adapter
from cardioseg.errors import CardiosegError
from cardioseg.inference.postprocess import postprocess as _postprocess
from cardioseg.io.nifti import ImageProperties, read_image, write_label
from cardioseg.models.checkpoint import checkpoint_members, load_checkpoint
from cardioseg.models.factory import ModelConfig, build_model
from cardioseg.preprocessing.pipeline import Preprocessor
from cardioseg.training.config import PRECISIONS

#: In-plane rotations (degrees) of the test-time augmentation for models trained upright.
TTA_ROTATIONS_DEG = (-10.0, 10.0, 5.0)


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


@dataclass
class Segmentation:
    """Result for one file: canonical labels in native geometry (3D, or 4D with time last)."""

    labels: np.ndarray
    properties: ImageProperties
    probabilities: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


#: Precision of checkpoints whose config does not name one (all packaged models): bfloat16 where
#: the device has native bfloat16 kernels. On the packaged models it changed mean Dice by at most
#: 0.003 (M&Ms, LGE) and cut the time per volume by a third (``docs/benchmarks.md``).
DEFAULT_PRECISION = "auto"


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
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        paths = checkpoint_members(checkpoint)
        if not paths:  # an empty sequence
            raise ValueError("checkpoint: give a path, a sequence of paths or None")
        ckpts = [load_checkpoint(p) for p in paths]
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
        if self.harmonization not in ("none", "histogram"):
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
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        requested = precision or inference.get("precision", DEFAULT_PRECISION)
        if requested not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
        if requested == "auto":
            requested = "bfloat16" if native_bfloat16(self.device) else "float32"
        #: The precision the network runs in (``auto`` resolved for this device).
        self.precision = requested
        if num_threads:
            torch.set_num_threads(num_threads)
        self.models = []
        for member in ckpts:  # members may differ in width, not in input (checked above)
            model = build_model(ModelConfig(**member["config"]["model"]))
            model.load_state_dict({k: v.float() for k, v in member["model_state"].items()})
            self.models.append(model.to(self.device).eval())
        #: The (first) network; test-time adaptation works on it.
        self.model = self.models[0]
        self.tta = bool(inference.get("tta", False)) if tta is None else tta
        self.do_postprocess, self.batch_size = postprocess, batch_size
        #: Whether the model (every member of an ensemble) has seen flipped images in training
        #: (checkpoints written before the option existed always used turns/flips).
        self.flip_invariant = all(
            bool((c["config"].get("train") or {}).get("orientation_augmentation", True))
            for c in ckpts
        )

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

    def _logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The network's float32 logits, computed under bfloat16 autocast if asked."""
        bf16 = self.precision == "bfloat16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x).float()

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities for a ``(N, 1, H, W)`` stack."""
        outs = []
        for i in range(0, x.shape[0], self.batch_size):
            xb = x[i : i + self.batch_size].to(self.device)
            views = self._tta_views(xb) if self.tta else []
            p = torch.zeros(())
            for model in self.models:
                p = p + torch.softmax(self._logits(model, xb), 1)
                for view, back in views:
                    p += back(torch.softmax(self._logits(model, view), 1))
            outs.append((p / (len(self.models) * (1 + len(views)))).cpu())
        return torch.cat(outs)

    def predict_volume(
        self,
        volume: np.ndarray,
        spacing: tuple[float, float, float],
        return_probabilities: bool = False,
        affine: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Segment one 3D volume given its voxel spacing; returns native-grid labels.

        Give the volume's ``affine`` (as read, RAS+) so that stacks stored as mirror images of
        the canonical short-axis view are segmented in that view (see
        :func:`~cardioseg.preprocessing.geometry.is_mirrored_view`).
        """
        x, state = self.preprocessor.forward(volume, spacing, affine)
        if self.adapter is not None:
            with self.adapter.adapted(self.model, x.to(self.device)):
                probs = self._forward(x)
        else:
            probs = self._forward(x)
        labels = self.preprocessor.inverse_labels(probs, state)
        if self.do_postprocess:
            labels = _postprocess(labels, state.axis)
        p = None
        if return_probabilities:
            native = self.preprocessor.inverse_probabilities(probs, state)
            p = np.moveaxis(native.permute(1, 0, 2, 3).numpy(), 1, state.axis + 1)
        return labels, p

    def predict(self, image: np.ndarray, properties: ImageProperties) -> Segmentation:
        """Segment a 3D volume or every frame of a 4D cine (time last)."""
        t0 = time.perf_counter()
        if image.ndim == 3:
            labels, _ = self.predict_volume(image, properties.spacing, affine=properties.affine)
        elif image.ndim == 4:
            labels = np.stack(
                [
                    self.predict_volume(
                        image[..., t], properties.spacing, affine=properties.affine
                    )[0]
                    for t in range(image.shape[-1])
                ],
                axis=-1,
            )
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
