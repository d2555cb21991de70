"""A fuzz test of the readers over mutated real files, bounded in time and memory.

Seeds (which must read as they are) are nibabel's own test images (NIfTI-1 and -2, gzipped or
not, one given a header extension), NRRD and MetaImage files written by SimpleITK from one of
them, and small DICOM series built from pydicom's MR_small (little and big endian) and CT_small.
Each of 150 inputs gets one seeded mutation: random byte flips, a truncation, or a
header field set to a hostile value (NIfTI dims, datatype, vox_offset, pixdim, scaling, qform and
sform; DICOM Rows, Columns, BitsAllocated, NumberOfFrames, geometry and rescale tags, in one file
of a series or in all). Every input must either read or raise what the CLI turns into one line
(ValueError and its subclasses, FileNotFoundError): never MemoryError, RecursionError,
struct.error, OverflowError, IndexError, ZeroDivisionError, another exception, a crash or a hang;
and what reads has a geometry (a finite, invertible affine), never a NaN one read in silence.

The reads run in a child process limited to 3 GiB of address space and 20 s per input, the
whole run to 180 s; the child prints one line per input as it starts it, so a crash names it.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

# a longer hunt: MEDLEARN_FUZZ_CASES=2000 MEDLEARN_FUZZ_SEED=7 pytest tests/faults/test_fuzz_readers.py
N_CASES = int(os.environ.get("MEDLEARN_FUZZ_CASES", 150))
SEED = int(os.environ.get("MEDLEARN_FUZZ_SEED", 41))

CHILD = textwrap.dedent("""
    import json, resource, signal, sys, warnings
    import numpy as np
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    warnings.simplefilter("ignore")
    from pathlib import Path
    from napari_medlearn._io_plugin import read_layers
    from napari_medlearn.imaging.io import read_volume

    class Hang(BaseException):
        pass

    def alarm(*_):
        raise Hang("no answer within 20 s")

    signal.signal(signal.SIGALRM, alarm)
    for path in sys.argv[1:]:
        print(json.dumps({"start": path}), flush=True)
        outcome = "read"
        for reader in (read_volume, read_layers):
            signal.alarm(20)
            try:
                result = reader(path)
                if reader is read_volume:
                    for v in (result if isinstance(result, list) else [result]):
                        a = np.asarray(v.affine, dtype=float)
                        if v.data.size == 0 or not np.isfinite(a).all() or abs(np.linalg.det(a[:3, :3])) < 1e-20:
                            raise AssertionError(f"read without valid geometry: shape {v.data.shape}, "
                                                 f"affine {a[:3].round(3).tolist()}")
            except (ValueError, FileNotFoundError) as exc:
                outcome = "refused: " + type(exc).__name__ + ": " + " ".join(str(exc).split())[:300]
            except BaseException as exc:
                import traceback
                tb = traceback.extract_tb(exc.__traceback__)[-1]
                outcome = (f"BAD {reader.__name__}: {type(exc).__name__}: {str(exc)[:200]} "
                           f"at {Path(tb.filename).name}:{tb.lineno}")
                signal.alarm(0)
                break
            finally:
                signal.alarm(0)
        print(json.dumps({"done": path, "outcome": outcome}), flush=True)
""")


# ----------------------------------------------------------------------------------------
# seeds
# ----------------------------------------------------------------------------------------
def _nibabel_data() -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data"


def _dicom_series(src: str, folder: Path, n: int = 3) -> Path:
    """n copies of one pydicom test file as a series: positions along the normal, new UIDs."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    ds = pydicom.dcmread(get_testdata_file(src))
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
    series = generate_uid()
    for k in range(n):
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp + 2.5 * k * normal]
        ds.save_as(folder / f"IM{k + 1:04d}.dcm")
    return folder


def _seeds(root: Path) -> list[Path]:
    import SimpleITK as sitk

    data = _nibabel_data()
    seeds = []
    for name in ("example4d.nii.gz", "anatomical.nii", "functional.nii", "example_nifti2.nii.gz",
                 "standard.nii.gz"):
        shutil.copy(data / name, root / name)
        seeds.append(root / name)
    import nibabel as nib

    ext = nib.load(data / "anatomical.nii")          # with a header extension up to vox_offset
    ext.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment " * 80))
    nib.save(ext, root / "anat_ext.nii.gz")
    seeds.append(root / "anat_ext.nii.gz")
    nii = sitk.ReadImage(str(data / "anatomical.nii"))
    img = sitk.GetImageFromArray(sitk.GetArrayFromImage(nii))   # its geometry, without NIfTI's metadata
    img.CopyInformation(nii)
    for name, compress in (("anat.nrrd", False), ("anat_gz.nrrd", True), ("anat.mha", False),
                           ("anat_z.mha", True)):
        sitk.WriteImage(img, str(root / name), compress)
        seeds.append(root / name)
    seeds.append(_dicom_series("MR_small.dcm", root / "mr_series"))
    seeds.append(_dicom_series("CT_small.dcm", root / "ct_series"))
    seeds.append(_dicom_series("MR_small_bigendian.dcm", root / "mr_big_endian_series"))
    return seeds


# ----------------------------------------------------------------------------------------
# mutations
# ----------------------------------------------------------------------------------------
HOSTILE_INTS = [0, -1, 1, 2, 7, 8, 255, 32767, -32768, 65535, 2**31 - 1, -(2**31)]
HOSTILE_FLOATS = [0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf")]
NIFTI_DTYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 7, 3]


def _flip(blob: bytes, rng: random.Random) -> bytes:
    b = bytearray(blob)
    top = min(len(b), 600) if rng.random() < 0.6 else len(b)   # headers first, more often
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(top)
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _truncate(blob: bytes, rng: random.Random) -> bytes:
    return blob[: rng.choice([0, 1, 100, 131, 132, 200, 347, 348, 352, 400, rng.randrange(len(blob))])]


def _nifti_field(hdr: bytes, rng: random.Random) -> bytes:
    """One hostile header field of a NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header."""
    n2 = struct.unpack("<i", hdr[:4])[0] == 540 or struct.unpack(">i", hdr[:4])[0] == 540
    end = "<" if struct.unpack("<i", hdr[:4])[0] in (348, 540) else ">"
    b = bytearray(hdr)
    # (offset, format) of fields in NIfTI-1 / NIfTI-2 (nifti1.h, nifti2.h)
    dims, dim_fmt = (16, "q") if n2 else (40, "h")
    dtype_at = 12 if n2 else 70
    pixdim, pix_fmt = (104, "d") if n2 else (76, "f")
    vox, vox_fmt = (168, "q") if n2 else (108, "f")
    slope, sl_fmt = (176, "d") if n2 else (112, "f")
    quatern, srow = ((352, 400) if n2 else (256, 280))
    fl = "d" if n2 else "f"
    kind = rng.choice(["dim0", "dim", "datatype", "vox_offset", "pixdim", "slope", "quatern", "srow",
                       "codes"])
    if kind == "dim0":
        struct.pack_into(end + dim_fmt, b, dims, rng.choice([-1, 0, 1, 5, 7, 8, 100]))
    elif kind == "dim":
        struct.pack_into(end + dim_fmt, b, dims + struct.calcsize(dim_fmt) * rng.randint(1, 7),
                         rng.choice([0, -1, 1, 30000, -30000]))
    elif kind == "datatype":
        struct.pack_into(end + "h", b, dtype_at, rng.choice(NIFTI_DTYPES))
    elif kind == "vox_offset":
        value = rng.choice([0, -352, 1, 351, 10**9, 2**40]) if n2 else rng.choice(
            [0.0, -1.0, 1.0, 351.0, 1e9, 1e30, float("nan"), float("inf")])
        struct.pack_into(end + vox_fmt, b, vox, value)
    elif kind == "pixdim":
        struct.pack_into(end + pix_fmt, b, pixdim + struct.calcsize(pix_fmt) * rng.randint(0, 7),
                         rng.choice(HOSTILE_FLOATS))
    elif kind == "slope":
        struct.pack_into(end + sl_fmt, b, slope + struct.calcsize(sl_fmt) * rng.randint(0, 1),
                         rng.choice(HOSTILE_FLOATS))
    elif kind == "quatern":
        struct.pack_into(end + fl, b, quatern + struct.calcsize(fl) * rng.randint(0, 5), rng.choice(HOSTILE_FLOATS))
    elif kind == "srow":
        struct.pack_into(end + fl, b, srow + struct.calcsize(fl) * rng.randint(0, 11), rng.choice(HOSTILE_FLOATS))
    else:
        codes = (344, 348) if n2 else (252, 254)
        struct.pack_into(end + ("i" if n2 else "h"), b, rng.choice(codes), rng.choice([-1, 0, 1, 2, 5, 300]))
    return bytes(b)


def _mutate_file(path: Path, out: Path, rng: random.Random) -> str:
    blob = path.read_bytes()
    gz = path.name.endswith(".gz")
    raw = gzip.decompress(blob) if gz else blob
    is_nifti = ".nii" in path.name
    kind = rng.choice(["flip", "truncate", "field", "field"] if is_nifti else ["flip", "truncate"])
    if kind == "field":
        raw = _nifti_field(raw, rng)
    elif kind == "flip" and gz and rng.random() < 0.5:
        out.write_bytes(_flip(blob, rng))           # flips in the compressed stream itself
        return "flip (compressed)"
    elif kind == "flip":
        raw = _flip(raw, rng)
    else:
        blob_cut = _truncate(blob, rng)             # cut the stored file, compressed or not
        out.write_bytes(blob_cut)
        return "truncate"
    out.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return kind


def _dicom_value(keyword: str, rng: random.Random):
    if keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                   "SamplesPerPixel"):
        return rng.choice([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 32, 64, 128, 255, 4096, 65535])
    if keyword == "NumberOfFrames":
        return rng.choice(["0", "-1", "2", "1000", "1e9", "nan", "x"])
    if keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        n = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}[keyword]
        choice = rng.choice(["zeros", "nan", "inf", "short", "text", "huge"])
        return {"zeros": ["0"] * n, "nan": ["nan"] * n, "inf": ["inf"] * n, "short": ["1"],
                "text": ["a"] * n, "huge": ["1e308"] * n}[choice]
    return rng.choice(["0", "-1", "nan", "inf", "1e308", "x", ""])


DICOM_KEYWORDS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                  "SamplesPerPixel", "NumberOfFrames", "ImagePositionPatient", "ImageOrientationPatient",
                  "PixelSpacing", "RescaleSlope", "RescaleIntercept", "InstanceNumber", "TriggerTime",
                  "SliceThickness", "ImagesInAcquisition", "CardiacNumberOfImages"]


def _mutate_series(folder: Path, out: Path, rng: random.Random) -> str:
    import pydicom

    shutil.copytree(folder, out)
    files = sorted(out.iterdir())
    kind = rng.choice(["flip", "truncate", "field", "field", "field"])
    targets = files if (kind == "field" and rng.random() < 0.3) else [rng.choice(files)]
    keyword = rng.choice(DICOM_KEYWORDS)
    for f in targets:
        if kind == "flip":
            f.write_bytes(_flip(f.read_bytes(), rng))
        elif kind == "truncate":
            f.write_bytes(_truncate(f.read_bytes(), rng))
        else:
            ds = pydicom.dcmread(f)
            value = _dicom_value(keyword, rng)
            try:
                setattr(ds, keyword, value)
            except (ValueError, TypeError, OverflowError):
                continue
            with __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore")
                try:
                    ds.save_as(f)
                except (ValueError, TypeError, OverflowError, struct.error):
                    continue                    # pydicom will not write that value at all
    return f"{kind} {keyword if kind == 'field' else ''} in {len(targets)} file(s)".replace("  ", " ")


def _cases(root: Path) -> list[tuple[Path, str]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # pydicom warns of every hostile value it is given
        return _make_cases(root)


def _make_cases(root: Path) -> list[tuple[Path, str]]:
    seed_dir = root / "seeds"
    seed_dir.mkdir()
    seeds = _seeds(seed_dir)
    rng = random.Random(SEED)
    cases = []
    for i in range(N_CASES):
        seed = seeds[i % len(seeds)]
        name = f"case{i:03d}_{seed.name}"
        out = root / name
        what = _mutate_series(seed, out, rng) if seed.is_dir() else _mutate_file(seed, out, rng)
        cases.append((out, f"{seed.name}: {what}"))
    return [(seed, "unmutated seed") for seed in seeds] + cases


def test_mutated_real_files_read_or_are_refused_in_one_line(tmp_path):
    cases = _cases(tmp_path)
    what = {str(p): w for p, w in cases}
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", CHILD, *what], capture_output=True, text=True,
                          timeout=180, env=env)
    started, outcomes = None, {}
    for line in proc.stdout.splitlines():
        rec = json.loads(line)
        if "start" in rec:
            started = rec["start"]
        else:
            outcomes[rec["done"]] = rec["outcome"]
    assert proc.returncode == 0, (f"the child died ({proc.returncode}) reading {started} "
                                  f"({what.get(started)}): {proc.stderr[-1500:]}")
    bad = [f"{Path(p).name} ({what[p]}): {o}" for p, o in outcomes.items() if o.startswith("BAD")]
    read = sum(o == "read" for o in outcomes.values())
    print(f"{len(outcomes)} inputs: {read} read, {len(outcomes) - read - len(bad)} refused, {len(bad)} bad")
    assert len(outcomes) == len(cases)
    assert not bad, "\n".join(bad)
    unread = [p for p, w in what.items() if w == "unmutated seed" and outcomes[p] != "read"]
    assert not unread, [outcomes[p] for p in unread]
    assert 10 < read < N_CASES - 10             # the mutations neither all fail nor all pass
