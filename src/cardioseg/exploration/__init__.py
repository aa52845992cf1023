"""Dataset exploration: composition, geometry, intensities, montages, animations, separability."""

from cardioseg.exploration.explore import explore_datasets

__all__ = ["explore_datasets"]
