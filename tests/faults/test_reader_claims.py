"""Headers that claim more data than their file holds are refused before anything is allocated.

Each lying file is a few hundred bytes whose header claims 800 MB (2000 x 2000 x 100 int16):
less than the memory the reader may use, so only the check against the file (uncompressed)
or the decoding in pieces (compressed) can refuse it. The reads run in a child process limited
to 3 GiB of address space, which reports its own peak memory (ru_maxrss) before and after: a
reader that allocated the claim would add 800 MB. Memory is bounded here, not seconds (a timed
assertion would be flaky on a shared machine); the child's times are printed with ``-s``.
"""

from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys
import textwrap
import zlib

import nibabel as nib
import numpy as np
import pytest

CLAIM = (2000, 2000, 100)
DATA = b"\x01" * 600


def _nifti_bytes(shape=CLAIM, dtype=np.int16) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\0" * 4 + DATA


def _nrrd(encoding: str, payload: bytes) -> bytes:
    sizes = " ".join(str(s) for s in CLAIM)
    return (f"NRRD0004\ntype: short\ndimension: 3\nsizes: {sizes}\nencoding: {encoding}\n"
            "endian: little\n\n").encode() + payload


def _mha(extra: str, payload: bytes) -> bytes:
    sizes = " ".join(str(s) for s in CLAIM)
    return (f"ObjectType = Image\nNDims = 3\nDimSize = {sizes}\nElementType = MET_SHORT\n{extra}"
            "ElementDataFile = LOCAL\n").encode() + payload


LIARS = {
    "lie.nii": lambda: _nifti_bytes(),
    "lie.nii.gz": lambda: gzip.compress(_nifti_bytes()),
    "lie.nrrd": lambda: _nrrd("raw", DATA),
    "lie_gz.nrrd": lambda: _nrrd("gzip", gzip.compress(DATA)),
    "lie_bz2.nrrd": lambda: _nrrd("bzip2", bz2.compress(DATA)),
    "lie_txt.nrrd": lambda: _nrrd("ascii", b"1 " * 300),
    "lie.mha": lambda: _mha("", DATA),
    "lie_z.mha": lambda: _mha("CompressedData = True\n", zlib.compress(DATA)),
}

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    from napari_medlearn.imaging.io import read_volume
    import nibabel, SimpleITK                      # imported before the baseline is taken
    out = {"before_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "results": {}}
    for path in sys.argv[1:]:
        t = time.perf_counter()
        try:
            read_volume(path)
            res = "read"
        except ValueError as exc:
            res = "ValueError: " + str(exc)
        except BaseException as exc:
            res = type(exc).__name__ + ": " + str(exc)
        out["results"][path] = [res, time.perf_counter() - t]
    out["after_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out))
""")


def _read_in_child(paths) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, paths)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lying_headers_are_refused_in_bounded_memory(tmp_path):
    paths = []
    for name, make in LIARS.items():
        (tmp_path / name).write_bytes(make())
        paths.append(tmp_path / name)
    out = _read_in_child(paths)
    grown_mb = (out["after_kb"] - out["before_kb"]) / 1024
    for path, (res, seconds) in out["results"].items():
        print(f"{path.rsplit('/', 1)[-1]}: {seconds:.3f} s: {res}")
        assert res.startswith("ValueError: cannot read "), res
        assert "claims shape (2000, 2000, 100)" in res and "800.0 MB" in res, res
        assert "truncated or its header is damaged" in res, res
        assert "\n" not in res
    print(f"peak memory grew by {grown_mb:.0f} MB (child peak {out['after_kb'] / 1024:.0f} MB)")
    assert grown_mb < 200
    assert out["after_kb"] / 1024 < out["before_kb"] / 1024 + 200


def test_a_claim_beyond_the_memory_available_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.nii.gz"                  # 2000^3 int16 = 16 GB: more than a 3 GiB child has
    big.write_bytes(gzip.compress(_nifti_bytes(shape=(2000, 2000, 2000))))
    res, _ = _read_in_child([big])["results"][str(big)]
    assert res.startswith("ValueError: ") and "16.0 GB" in res and "more than this machine can hold" in res, res


@pytest.mark.parametrize("shape", [(64, 0, 20), (0, 5)])
def test_a_zero_size_dimension_names_the_shape(tmp_path, shape):
    from napari_medlearn.imaging.io import read_nifti

    path = tmp_path / "zero.nii"
    path.write_bytes(_nifti_bytes(shape=shape))
    with pytest.raises(ValueError, match=rf"zero-size dimension: shape \({shape[0]}, {shape[1]}"):
        read_nifti(path)


def test_a_truncated_nii_gz_is_refused_with_its_decoded_length(tmp_path):
    from napari_medlearn.imaging.io import read_nifti

    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(4000, dtype=np.float32).reshape(10, 20, 20), np.eye(4)), good)
    cut = tmp_path / "cut.nii.gz"
    blob = good.read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    assert read_nifti(good).data.shape == (20, 20, 10)
    with pytest.raises(ValueError, match=r"claims shape \(10, 20, 20\) float32 .* gzip stream decodes to \d+ bytes"):
        read_nifti(cut)


def test_a_truncated_raw_nrrd_and_detached_data_file_are_refused(tmp_path):
    import SimpleITK as sitk

    from napari_medlearn.imaging.io import read_itk_image

    img = sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    for name in ("ok.nrrd", "ok.nhdr", "ok.mha", "ok.mhd"):
        sitk.WriteImage(img, str(tmp_path / name), False)
        assert read_itk_image(tmp_path / name).data.sum() == np.arange(120).sum()
    blob = (tmp_path / "ok.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(blob[:-10])
    with pytest.raises(ValueError, match=r"claims shape \(6, 5, 4\) 16-bit signed integer .* but the file has"):
        read_itk_image(tmp_path / "cut.nrrd")
    raw = tmp_path / "ok.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"of ok\.raw, but the file has 100 bytes"):
        read_itk_image(tmp_path / "ok.nhdr")


@pytest.mark.parametrize("name", ["ext.nii", "ext.nii.gz"])
@pytest.mark.parametrize("klass", [nib.Nifti1Image, nib.Nifti2Image])
@pytest.mark.parametrize("order", ["<", ">"])
def test_honest_files_with_header_extensions_still_read(tmp_path, name, klass, order):
    from napari_medlearn.imaging.io import read_nifti

    data = np.arange(2 * 3 * 4, dtype=order + "i2").reshape(2, 3, 4)
    img = klass(data, np.diag([2.0, 3.0, 4.0, 1.0]), klass.header_class(endianness=order))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment longer than 540 bytes " * 40))
    nib.save(img, tmp_path / name)
    vol = read_nifti(tmp_path / name)
    np.testing.assert_array_equal(vol.data, data.T)
    assert len(vol.meta["nifti_header"].extensions) == 1
