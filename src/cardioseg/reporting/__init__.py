"""Figures and human-readable outputs."""

from cardioseg.reporting.overlays import overlay_montage

__all__ = ["overlay_montage"]
