"""Choices of the clinical analysis that the API, the CLI and the web app's settings share.

Kept apart from :mod:`cardioseg.clinical` (whose package import loads the QC, the reports and
NumPy/SciPy, several seconds): the CLI checks an option and :class:`~cardioseg.app.AppConfig`
its settings before any of that is needed.
"""

from __future__ import annotations

from cardioseg.errors import CardiosegError

#: Which phases of a DICOM cine ``analyze`` exports as DICOM-SEG: ``"ed-es"`` (the two reported
#: phases, the default) or ``"all"`` (every phase, as ``masks_cine.nii.gz`` holds them).
SEG_PHASES = ("ed-es", "all")


def check_seg_phases(value: str) -> None:
    """Refuse a ``seg_phases`` that is not one of :data:`SEG_PHASES` (one line, no file).

    Example:
        >>> check_seg_phases("all")
        >>> check_seg_phases("ES")
        Traceback (most recent call last):
        ...
        cardioseg.errors.CardiosegError: seg_phases must be one of ed-es, all, got 'ES'
    """
    if value not in SEG_PHASES:
        raise CardiosegError(
            None, f"seg_phases must be one of {', '.join(SEG_PHASES)}, got {value!r}"
        )
