"""``medlearn``: the plugin's jobs without a screen.

Every sub-command calls :mod:`napari_medlearn.methods` (the same code the widgets run). Bad
input ends with exit status 2 and one line on stderr; outputs go into ``--out`` and are never
written over unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence


class CLIError(Exception):
    """An error to report as one line and exit status 2."""


def _out_dir(path: str, names: Sequence[str], overwrite: bool) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise CLIError(f"{out / clash[0]} already exists (use --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _progress_printer(label: str):
    def show(done: int, total: int, message: str = "") -> None:
        print(f"\r{label}: {done}/{total} {message}".ljust(60), end="" if done < total else "\n",
              file=sys.stderr, flush=True)
    return show


def _read_single_volume(path: str):
    from .imaging.io import read_volume

    p = Path(path)
    if not p.exists():
        raise CLIError(f"{path}: no such file or directory")
    vol = read_volume(p)
    if isinstance(vol, list):
        if len(vol) != 1:
            names = ", ".join(str(v.meta.get("series", i)) for i, v in enumerate(vol))
            raise CLIError(f"{path} holds {len(vol)} series ({names}); give a folder with one")
        vol = vol[0]
    return vol


def write_cardiac_outputs(out: Path, vol, result, source: str) -> dict[str, Path]:
    """labels.nii.gz (input geometry), measures.csv and measures.json for one case."""
    from .imaging.io import write_nifti
    from .methods.report import measures_row, write_measures_csv

    labels_vol = vol.with_data(result.labels)
    paths = {"labels": out / "labels.nii.gz", "csv": out / "measures.csv", "json": out / "measures.json"}
    write_nifti(labels_vol, paths["labels"], overwrite=True)
    row = measures_row(result.measures, result.qc, result.model_name, result.model_sha256, source)
    write_measures_csv([row], paths["csv"])
    from .zoo import write_json_atomic

    write_json_atomic({"source": source, "model": result.model_name, "model_sha256": result.model_sha256,
                       "ED_frame": result.ed, "ES_frame": result.es, "qc": result.qc,
                       "measures": result.measures}, paths["json"])
    return paths


def cmd_segment_heart(args: argparse.Namespace) -> int:
    from .methods import segment_heart

    out = _out_dir(args.out, ("labels.nii.gz", "measures.csv", "measures.json"), args.overwrite)
    vol = _read_single_volume(args.input)
    if len(vol.spatial_axes) != 3:
        raise CLIError(f"{args.input}: a {vol.data.ndim}-D image; cardiac segmentation needs a short-axis stack or cine")
    res = segment_heart(vol.data, vol.spacing, model=args.model, device=args.device,
                        progress=None if args.quiet else _progress_printer("segment-heart"))
    paths = write_cardiac_outputs(out, vol, res, str(args.input))
    m = res.measures
    print(f"LVEDV {m['LVEDV_mL']:.1f} mL  LVESV {m['LVESV_mL']:.1f} mL  LVEF {m['LVEF_pct']:.1f} %  "
          f"LVM {m['LVM_g']:.1f} g  RVEDV {m['RVEDV_mL']:.1f} mL  RVEF {m['RVEF_pct']:.1f} %")
    for f in res.qc:
        print(f"QC: {f['reason']}")
    print(f"wrote {paths['labels']}, {paths['csv']}, {paths['json']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.presets import PRESETS, run_preset

    if args.preset not in PRESETS:
        raise CLIError(f"preset {args.preset!r} not supported; known: {', '.join(sorted(PRESETS))}")
    kwargs = {"ship": args.ship, "device": args.device}
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    if args.data is not None:
        kwargs["data"] = args.data
    card = run_preset(args.preset, args.run_dir, **kwargs)
    print(json.dumps(card.get("evaluation", {}).get("summary", {}), indent=2))
    print(f"model {card['name']} sha256 {card['sha256']}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import zoo

    for name in zoo.available():
        c = zoo.card(name)
        default = "(default) " if zoo.default_model(c.get("task", "")) == name else ""
        print(f"{name:28s} {c.get('task', ''):24s} {default}{c.get('description', '')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(Path(args.out), device=args.device, overwrite=args.overwrite)
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medlearn", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, out_required=True):
        sp.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, mps")
        sp.add_argument("--overwrite", action="store_true", help="replace existing output files")
        sp.add_argument("--quiet", action="store_true", help="no progress output")

    s = sub.add_parser("segment-heart", help="segment LV, myocardium and RV in a cine; write labels and measures")
    s.add_argument("input", help="NIfTI file (t,z,y,x or z,y,x) or a DICOM cine folder")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--model", default=None, help="zoo name or checkpoint path (default: best shipped)")
    common(s)
    s.set_defaults(func=cmd_segment_heart)

    s = sub.add_parser("train", help="train a preset (reproduces a shipped weight)")
    s.add_argument("preset")
    s.add_argument("--run-dir", default=None, help="checkpoints and outputs (default runs/PRESET); resumes if present")
    s.add_argument("--ship", action="store_true", help="also install the result into the package's zoo")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--data", default=None, help="data folder for presets trained on real data (e.g. ACDC)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("models", help="list shipped models")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("demo", help="run every method on the built-in sample data; write outputs and a report")
    s.add_argument("--out", default="medlearn-demo", help="output directory (default ./medlearn-demo)")
    common(s)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("medlearn: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, FileExistsError, PermissionError, InterruptedError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"medlearn: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
