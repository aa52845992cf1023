"""I/O geometry round trips and bad-input handling."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import disc_labels, image_from_labels, oblique_affine, write_nifti

from cardioseg.errors import CardiosegError
from cardioseg.io import read_image, read_label, write_label


@pytest.mark.parametrize("flip", [(1, 1, 1), (-1, 1, -1), (1, -1, 1)])
def test_round_trip_keeps_geometry(tmp_path, flip):
    lab = disc_labels()
    aff = oblique_affine(flip=flip)
    src = write_nifti(tmp_path / "img.nii.gz", image_from_labels(lab), aff)
    img, props = read_image(src)
    assert img.shape == lab.shape
    np.testing.assert_allclose(props.spacing, (1.3, 1.3, 8.0), rtol=1e-5)
    out = write_label(tmp_path / "out" / "seg.nii.gz", lab, props)
    back = nib.load(str(out))
    assert back.shape == lab.shape
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)
    assert back.header.get_xyzt_units()[0] == "mm"
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(aff)
    np.testing.assert_array_equal(np.asarray(back.dataobj), lab)
    assert not list((tmp_path / "out").glob(".*tmp*")), "temporary file left behind"


def test_4d_image_is_read(tmp_path):
    arr = np.random.default_rng(0).random((10, 12, 3, 5)).astype(np.float32)
    img, props = read_image(write_nifti(tmp_path / "cine.nii.gz", arr))
    assert img.shape == (10, 12, 3, 5) and props.shape == (10, 12, 3, 5)


def _expect(path, match, fn=read_image, **kw):
    with pytest.raises(CardiosegError, match=match) as info:
        fn(path, **kw)
    assert str(path) in str(info.value)


def test_bad_inputs(tmp_path):
    _expect(tmp_path / "missing.nii.gz", "not found")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    _expect(txt, "not a NIfTI")
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"this is not gzip")
    _expect(fake, "cannot read|corrupt")
    good = write_nifti(tmp_path / "good.nii.gz", np.ones((20, 20, 4), np.float32))
    raw = gzip.decompress(good.read_bytes())
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    _expect(trunc, "truncated|corrupt|cannot read")
    _expect(write_nifti(tmp_path / "flat.nii.gz", np.ones((20, 20), np.float32)), "3D or 4D")
    _expect(write_nifti(tmp_path / "five.nii.gz", np.ones((4, 4, 4, 2, 2), np.float32)), "3D or 4D")
    nan = np.ones((8, 8, 3), np.float32)
    nan[1, 1, 1] = np.nan
    _expect(write_nifti(tmp_path / "nan.nii.gz", nan), "NaN")
    _expect(write_nifti(tmp_path / "zero.nii.gz", np.zeros((8, 8, 3), np.float32)), "all zeros")
    img = nib.Nifti1Image(np.ones((8, 8, 3), np.float32), None)
    img.header["pixdim"][1:4] = [1.0, -2.0, 5.0]
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    nib.save(img, str(tmp_path / "sp.nii.gz"))
    _expect(tmp_path / "sp.nii.gz", "spacing")
    cplx = (np.ones((8, 8, 3)) + 1j).astype(np.complex64)
    _expect(write_nifti(tmp_path / "complex.nii.gz", cplx), "complex-valued")
    rgb = nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)).header
    rgb["datatype"] = 2304  # RGBA32: structured voxels, not grayscale (nibabel will not write it)
    (tmp_path / "rgba.nii").write_bytes(rgb.binaryblock + bytes(4) + bytes(8 * 8 * 3 * 4))
    _expect(tmp_path / "rgba.nii", "unsupported voxel type")
    tiny = write_nifti(
        tmp_path / "tiny_sp.nii.gz", np.ones((8, 8, 3), np.float32), np.diag([1e-7, 1e-7, 1e-7, 1])
    )
    _expect(tiny, r"spacing \(1e-07, 1e-07, 1e-07\) mm is too small")
    # a header announcing 90 billion voxels: refused, not a MemoryError without a file name
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((30000, 30000, 100))
    raw = hdr.binaryblock + bytes(4) + np.ones(100, np.float32).tobytes()
    (tmp_path / "huge.nii").write_bytes(raw)
    _expect(tmp_path / "huge.nii", r"too large to load \(shape \(30000, 30000, 100\), 360\.0 GB")
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(raw))
    _expect(tmp_path / "huge.nii.gz", r"too large to load .* at most 16 GB")
    hdr.set_data_shape((64, 64, 8))  # within the limit but longer than the file
    (tmp_path / "short.nii").write_bytes(hdr.binaryblock + bytes(4) + bytes(400))
    _expect(tmp_path / "short.nii", r"truncated image data \(the header announces shape")


def test_label_checks(tmp_path):
    lab = disc_labels()
    aff = oblique_affine()
    _, props = read_image(write_nifti(tmp_path / "img.nii.gz", image_from_labels(lab), aff))
    ok = write_nifti(tmp_path / "ok.nii.gz", lab, aff)
    assert read_label(ok, "canonical", reference=props).max() == 3
    _expect(
        write_nifti(tmp_path / "shape.nii.gz", lab[:-1], aff),
        "shape",
        fn=read_label,
        reference=props,
    )
    _expect(
        write_nifti(tmp_path / "aff.nii.gz", lab, oblique_affine(origin=(0, 0, 0))),
        "affine",
        fn=read_label,
        reference=props,
    )
    bad = lab.copy()
    bad[0, 0, 0] = 7
    _expect(write_nifti(tmp_path / "unk.nii.gz", bad, aff), "unknown label", fn=read_label)
