"""Domain generalisation and adaptation methods that plug into the one trainer and the Segmenter.

* :mod:`~cardioseg.adaptation.harmonization`: histogram matching of test images to the training
  reference stored in the checkpoint fingerprint.
* :mod:`~cardioseg.adaptation.dann`: gradient reversal and a domain classifier on the U-Net
  bottleneck (an auxiliary training component).
* :mod:`~cardioseg.adaptation.finetune`: initialisation from a checkpoint, block freezing and
  k-subject selection.
* :mod:`~cardioseg.adaptation.tta`: test-time entropy minimisation (TENT).
"""

from cardioseg.adaptation.harmonization import HistogramReference, match_histogram
from cardioseg.adaptation.tta import ADAPTERS, Tent, build_adapter

__all__ = ["ADAPTERS", "HistogramReference", "Tent", "build_adapter", "match_histogram"]
