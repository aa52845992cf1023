"""cardioseg: cardiac cine MRI segmentation that generalizes across vendors.

Canonical labels inside the project: 0 background, 1 LV blood pool, 2 myocardium, 3 RV blood pool.

The Python API lives in the subpackages (imported on demand; see README.md, "Python API"):
``cardioseg.io`` (read_image, read_label, write_label), ``cardioseg.inference`` (Segmenter),
``cardioseg.evaluation`` (compute_metrics), ``cardioseg.clinical`` (compute_indices,
analyze_study), ``cardioseg.augmentation``, ``cardioseg.models`` (load_checkpoint),
``cardioseg.training`` and ``cardioseg.data`` (datasets, the synthetic phantom). Errors about
the user's input are :class:`CardiosegError`; wrong arguments are ``ValueError``.
"""

from cardioseg.errors import CardiosegError
from cardioseg.labels import DATASET_LABEL_MAPS, LABELS, STRUCTURES

__version__ = "0.1.0"

__all__ = ["DATASET_LABEL_MAPS", "LABELS", "STRUCTURES", "CardiosegError", "__version__"]
