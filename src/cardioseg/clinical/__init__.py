"""Clinical layer: indices (volumes, EF, mass), quality control, reports and DICOM SEG export.

``write_dicom_seg`` needs the ``highdicom`` package, imported only when it is called.
"""

from cardioseg.clinical.analysis import Study, analyze_study, load_study
from cardioseg.clinical.dicom_seg import write_dicom_seg
from cardioseg.clinical.indices import (
    NORMAL_RANGE_SOURCES,
    NORMAL_RANGES,
    UNITS,
    bsa_mosteller,
    compare_to_normal,
    compute_indices,
    detect_ed_es,
    volume_curve,
    volume_ml,
)
from cardioseg.clinical.qc import QCResult, assess_quality
from cardioseg.clinical.report import sanitize_meta, write_report

__all__ = [
    "NORMAL_RANGES",
    "NORMAL_RANGE_SOURCES",
    "QCResult",
    "Study",
    "UNITS",
    "analyze_study",
    "assess_quality",
    "bsa_mosteller",
    "compare_to_normal",
    "compute_indices",
    "detect_ed_es",
    "load_study",
    "sanitize_meta",
    "volume_curve",
    "volume_ml",
    "write_dicom_seg",
    "write_report",
]
