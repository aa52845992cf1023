"""DICOM cine input: find the short-axis cine in a study folder (or zip) and load it as 4D.

Array convention (used by every function here and by the DICOM SEG writer)::

    array[i, j, k, t]
        i: column index of the DICOM image (moves along ImageOrientationPatient[0:3], the row
           direction), spacing PixelSpacing[1]
        j: row index of the DICOM image (moves along ImageOrientationPatient[3:6], the column
           direction), spacing PixelSpacing[0]
        k: slice index, sorted by increasing position along the slice normal
           n = IOP[0:3] x IOP[3:6]
        t: cardiac phase, sorted by TriggerTime (fallbacks: InstanceNumber / temporal position
           index, then AcquisitionTime, then file order)

so the 2D DICOM pixel matrix of source image ``(k, t)`` (rows x columns) is ``array[:, :, k, t].T``.
The affine is a NIfTI RAS+ voxel-to-world matrix: DICOM patient (LPS) coordinates of pixel
``(i, j)`` of slice ``k`` are ``IPP_0 + i * dc * row_dir + j * dr * col_dir + k * dz * n``
(``dr, dc = PixelSpacing``, ``dz`` the median distance between sorted slice positions, ``IPP_0``
the ImagePositionPatient of slice 0) and RAS is LPS with the first two coordinates negated.

Patient identifiers are never logged nor put in error messages; PatientID is only compared (as a
hash) to refuse studies that mix patients.
"""

from __future__ import annotations

from cardioseg.io.dicom.archive import MAX_ZIP_MEMBERS, safe_member
from cardioseg.io.dicom.headers import CineMeta, SeriesInfo, SeriesList, quiet_pydicom
from cardioseg.io.dicom.loader import cine_to_nifti, load_cine, survey_study
from cardioseg.io.dicom.series import find_series, select_short_axis_cine

__all__ = [
    "MAX_ZIP_MEMBERS",
    "CineMeta",
    "SeriesInfo",
    "SeriesList",
    "cine_to_nifti",
    "find_series",
    "load_cine",
    "quiet_pydicom",
    "safe_member",
    "select_short_axis_cine",
    "survey_study",
]
