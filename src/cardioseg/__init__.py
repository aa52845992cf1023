"""cardioseg: cardiac cine MRI segmentation that generalizes across vendors.

Canonical labels inside the project: 0 background, 1 LV blood pool, 2 myocardium, 3 RV blood pool.
"""

from cardioseg.labels import LABELS, STRUCTURES

__version__ = "0.1.0"

__all__ = ["LABELS", "STRUCTURES", "__version__"]
