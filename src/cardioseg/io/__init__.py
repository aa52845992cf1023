"""Image readers and writers that keep the native geometry."""

from cardioseg.io.nifti import (
    ImageProperties,
    atomic_folder,
    atomic_write,
    read_image,
    read_label,
    write_image,
    write_label,
)

__all__ = [
    "ImageProperties",
    "atomic_folder",
    "atomic_write",
    "read_image",
    "read_label",
    "write_image",
    "write_label",
]
