"""Image readers and writers that keep the native geometry."""

from cardioseg.io.nifti import (
    DATASET_LABEL_MAPS,
    ImageProperties,
    atomic_folder,
    atomic_write,
    read_image,
    read_label,
    write_image,
    write_label,
)

__all__ = [
    "DATASET_LABEL_MAPS",
    "ImageProperties",
    "atomic_folder",
    "atomic_write",
    "read_image",
    "read_label",
    "write_image",
    "write_label",
]
