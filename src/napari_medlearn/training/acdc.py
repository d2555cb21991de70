"""The ACDC cardiac cine data set: loading, label mapping and a stratified patient split.

O. Bernard et al., "Deep Learning Techniques for Automatic MRI Cardiac Multi-structures
Segmentation and Diagnosis: Is the Problem Solved?", IEEE TMI 37(11):2514-2525, 2018.

ACDC labels are 1 RV cavity, 2 myocardium, 3 LV cavity; this plugin's are 1 LV cavity,
2 myocardium, 3 RV cavity, so :data:`ACDC_TO_PLUGIN` swaps 1 and 3 on load. Each training
patient has an end-diastolic and an end-systolic frame with expert labels.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ACDC_CITATION = (
    "O. Bernard et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-structures "
    "Segmentation and Diagnosis: Is the Problem Solved?, IEEE TMI 37(11):2514-2525, 2018, "
    "doi:10.1109/TMI.2018.2837502"
)
ACDC_GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
#: ACDC label value -> plugin label value
ACDC_TO_PLUGIN = np.array([0, 3, 2, 1], dtype=np.uint8)


def find_acdc_root(root: str | os.PathLike | None = None) -> Path:
    """The ACDC ``training`` folder: ``root``, ``$MEDLEARN_ACDC``, or ``../shared/data/acdc``.

    ``../shared`` is looked for beside the current directory and beside the source checkout.
    """
    candidates = []
    if root is not None:
        candidates.append(Path(root))
    if os.environ.get("MEDLEARN_ACDC"):
        candidates.append(Path(os.environ["MEDLEARN_ACDC"]))
    repo = Path(__file__).resolve().parents[3]
    candidates += [Path.cwd().parent / "shared/data/acdc", repo.parent / "shared/data/acdc"]
    for c in candidates:
        for d in (c / "training", c):
            if d.is_dir() and any(d.glob("patient*/Info.cfg")):
                return d
    raise FileNotFoundError(
        "ACDC data not found: pass --data, or set MEDLEARN_ACDC to the folder holding patientNNN/"
    )


@dataclass(frozen=True, eq=False)
class ACDCPatient:
    """One patient's ED and ES frames ``(z, y, x)`` with plugin-order labels."""

    name: str
    group: str
    ed_image: np.ndarray
    ed_labels: np.ndarray
    es_image: np.ndarray
    es_labels: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray

    def cine(self) -> tuple[np.ndarray, np.ndarray]:
        """ED and ES stacked as a two-frame ``(2, z, y, x)`` cine, with labels."""
        return (np.stack([self.ed_image, self.es_image]), np.stack([self.ed_labels, self.es_labels]))


def read_info(folder: Path) -> dict[str, str]:
    info = {}
    for line in (folder / "Info.cfg").read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info


def list_patients(root: Path) -> list[tuple[str, str]]:
    """``(name, group)`` of every patient folder, sorted by name."""
    out = []
    for d in sorted(root.glob("patient*")):
        if (d / "Info.cfg").exists():
            out.append((d.name, read_info(d)["Group"]))
    return out


def load_patient(root: Path, name: str) -> ACDCPatient:
    from ..imaging.io import read_nifti

    d = root / name
    info = read_info(d)
    ed, es = int(info["ED"]), int(info["ES"])
    frames = {}
    for key, f in (("ed", ed), ("es", es)):
        with warnings.catch_warnings():   # the public copies' sforms say 1 mm; the reader repairs it
            warnings.simplefilter("ignore", UserWarning)
            img = read_nifti(d / f"{name}_frame{f:02d}.nii.gz")
            lab = read_nifti(d / f"{name}_frame{f:02d}_gt.nii.gz")
        if img.data.shape != lab.data.shape:
            raise ValueError(f"{name} frame {f}: image {img.data.shape} and labels {lab.data.shape} differ")
        frames[key] = (img, ACDC_TO_PLUGIN[np.asarray(lab.data).astype(np.int64)])
    img = frames["ed"][0]
    return ACDCPatient(
        name=name, group=info["Group"],
        ed_image=np.asarray(frames["ed"][0].data, np.float32), ed_labels=frames["ed"][1],
        es_image=np.asarray(frames["es"][0].data, np.float32), es_labels=frames["es"][1],
        spacing=tuple(float(s) for s in img.spacing), affine=img.affine,
    )


def stratified_split(patients: list[tuple[str, str]], n_val_per_group: int = 4,
                     seed: int = 0) -> tuple[list[str], list[str]]:
    """Patient-level split: ``n_val_per_group`` validation patients drawn from each group."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for g in sorted({g for _, g in patients}):
        names = sorted(n for n, gg in patients if gg == g)
        pick = set(rng.choice(len(names), size=min(n_val_per_group, len(names)), replace=False).tolist())
        for i, n in enumerate(names):
            (val if i in pick else train).append(n)
    return sorted(train), sorted(val)
