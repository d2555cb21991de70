"""``medlearn``: the plugin's jobs without a screen.

Every sub-command calls :mod:`napari_medlearn.methods` (the same code the widgets run). Bad
input, and any file error (disk full, read-only, permission, a path that does not resolve), ends
with exit status 2 and one line on stderr; outputs go into ``--out`` and are never written over
unless ``--overwrite`` is given. A job's outputs appear all together or not at all, and a folder
``--out`` is held by one run at a time (a second is refused, naming the first).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

_ARGV: list[str] = []     # this run's arguments, for the lock file of --out


class CLIError(Exception):
    """An error to report as one line and exit status 2."""


def _writable(out: Path) -> None:
    """Refuse, before any work, an output whose folder (or nearest existing parent) cannot be written."""
    folder = out if out.is_dir() else out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = os.path.isdir(folder) and bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        raise CLIError(f"cannot write to {folder}: {os.strerror(errno.EROFS if read_only else errno.EACCES)} "
                       "(choose another --out)")


def _out_dir(path: str, names: Sequence[str], overwrite: bool, inputs: Sequence = ()) -> Path:
    """``--out`` whose outputs would replace no input, nor (without ``overwrite``) earlier outputs."""
    import fnmatch

    out = Path(path)
    real_out = os.path.realpath(out)      # realpath, not resolve(): a symlink loop is not an error here
    for given in inputs:     # an input is never an output, even with --overwrite
        p = Path(os.path.realpath(given)) if given else None
        if p is not None and str(p.parent) == real_out and any(fnmatch.fnmatch(p.name, n) for n in names):
            raise CLIError(f"{given} is an input and would be replaced by an output of the same name in --out "
                           f"{out}: choose another --out (the input file is never modified)")
    from .jobs import existing_outputs

    clash = existing_outputs(out, names) if out.is_dir() else []
    if clash and not overwrite:
        raise CLIError(f"{clash[0]} already exists (use --overwrite to replace it)")
    return out


@contextmanager
def _locked_out(path: str, names: Sequence[str], overwrite: bool, inputs: Sequence = ()) -> Iterator[Path]:
    """``--out`` checked and held for this run: one job at a time writes into a folder (a second
    one is refused, naming the first), and the existing outputs are looked at once it is held."""
    from .imaging.atomic import folder_lock

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    _writable(out)
    with folder_lock(out, _command(), note=_note):
        yield _out_dir(path, names, overwrite, inputs)


def _command() -> str:
    return "medlearn " + " ".join(_ARGV)


def _progress(args: argparse.Namespace, label: str):
    return None if args.quiet else _progress_printer(label)


def _report(result) -> int:
    """Print a job's notes and summary (stdout) and its warnings (stderr)."""
    for text in result.notes:
        _note(text)
    for text in result.warnings:
        print(f"medlearn: warning: {text}", file=sys.stderr)
    for line in result.lines:
        print(line)
    return 0


def _progress_printer(label: str):
    def show(done: int, total: int, message: str = "") -> None:
        print(f"\r{label}: {done}/{total} {message}".ljust(60), end="" if done < total else "\n",
              file=sys.stderr, flush=True)
    return show


def cmd_segment_heart(args: argparse.Namespace) -> int:
    from .inference import check_backend
    from .jobs import CARDIAC_OUTPUTS, segment_heart_job
    from .pacs import PacsError, with_pacs   # --pacs URL --study UID [--series UID] [--push]

    check_backend(args.backend)   # an unknown or missing backend before any output folder

    def run(args: argparse.Namespace):
        # + the SEG/SR files a DICOM input also gets (imaging.dicom_sr.DICOM_OUTPUTS)
        names = CARDIAC_OUTPUTS + ("seg.dcm", "seg_t*.dcm", "sr.dcm")
        with _locked_out(args.out, names, args.overwrite, [args.input]) as out:
            return segment_heart_job(out, args.input, model=args.model, device=args.device, backend=args.backend,
                                     progress=_progress(args, "segment-heart"), overwrite=args.overwrite)
    try:
        return _report(with_pacs(args, "input", run))
    except PacsError as e:
        raise CLIError(str(e)) from None


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .jobs import RECON_OUTPUTS, reconstruct_job

    with _locked_out(args.out, RECON_OUTPUTS, args.overwrite, [args.input, args.mask]) as out:
        return _report(reconstruct_job(out, args.input, mask=args.mask, kspace_key=args.kspace_key,
                                       mask_key=args.mask_key, acceleration=args.acceleration, pattern=args.pattern,
                                       centre_lines=args.centre_lines, seed=args.seed, dynamic=args.dynamic,
                                       model=args.model, device=args.device, progress=_progress(args, "reconstruct"),
                                       overwrite=args.overwrite))


def _note(text: str) -> None:
    """A line of information for the user (stdout; errors alone go to stderr)."""
    print(f"note: {text}")


def cmd_segment_lesions(args: argparse.Namespace) -> int:
    from .inference import check_backend
    from .jobs import LESION_OUTPUTS, segment_lesions_job

    check_backend(args.backend)
    with _locked_out(args.out, LESION_OUTPUTS, args.overwrite, [args.flair, args.t1c, args.mask]) as out:
        return _report(segment_lesions_job(out, args.flair, args.t1c, mask=args.mask, model=args.model,
                                           decision=args.decision, device=args.device, backend=args.backend,
                                           progress=_progress(args, "segment-lesions"), overwrite=args.overwrite))


def cmd_adapt(args: argparse.Namespace) -> int:
    from . import zoo
    from .jobs import read_modalities
    from .methods import adapt
    from .methods.lesions import TASK, scan_warnings

    model = args.model or zoo.default_model(TASK)
    if len(args.flair) != len(args.t1c):
        raise CLIError(f"{len(args.flair)} FLAIR files but {len(args.t1c)} T1c files: give one of each per scan")
    if args.mask and len(args.mask) != len(args.flair):
        raise CLIError(f"{len(args.mask)} brain masks for {len(args.flair)} scans: give one per scan or none")
    scans, spacings, masks, affines = [], [], [], []
    for i, (f, t) in enumerate(zip(args.flair, args.t1c)):
        notes: list[str] = []
        ch, ref, mask = read_modalities(f, t, args.mask[i] if args.mask else None, model, notes)
        for text in notes:
            _note(text)
        for w in scan_warnings(ch, ref.spacing, mask):       # before the training, not after it
            print(f"medlearn: warning: scan {i + 1} ({f}): {w}", file=sys.stderr)
        scans.append(ch)
        spacings.append(tuple(ref.spacing))
        masks.append(mask)
        affines.append(ref.affine)
    name = adapt(model, scans, spacings, brain_masks=masks if args.mask else None, name=args.name,
                 epochs=args.epochs, iters_per_epoch=args.iters, device=args.device,
                 progress=None if args.quiet else _progress_printer("adapt"),
                 self_training=args.self_training or (), affines=affines)
    print(f"adapted model {name} (from {model}, {len(scans)} unlabelled scans) in {zoo.user_dir()}; "
          f"use it with --model {name}")
    return 0


def cmd_detect_planes(args: argparse.Namespace) -> int:
    from .jobs import PLANE_OUTPUTS, detect_planes_job

    with _locked_out(args.out, PLANE_OUTPUTS, args.overwrite, [args.video]) as out:
        return _report(detect_planes_job(out, args.video, model=args.model, saliency=not args.no_saliency,
                                         device=args.device, progress=_progress(args, "detect-planes"),
                                         overwrite=args.overwrite))


def _nifti_output(path: str, overwrite: bool) -> Path:
    """``--out`` for a single NIfTI file: the right suffix, and never an existing file unasked."""
    out = Path(path)
    if not (out.name.endswith(".nii.gz") or out.name.endswith(".nii")):
        raise CLIError(f"--out {out} must end in .nii or .nii.gz")
    if out.exists() and not overwrite:
        raise CLIError(f"{out} already exists (use --overwrite to replace it)")
    _writable(out)
    from .imaging.atomic import remove_stale_temporaries

    for p in remove_stale_temporaries(out.parent):     # only ones no live writer holds
        _note(f"removed {p.name}, a temporary file an interrupted run left in {out.parent}")
    return out


def cmd_super_resolve(args: argparse.Namespace) -> int:
    """One stack (or cine): learned through-plane SR; several stacks: fused in the first one's frame."""
    from .jobs import super_resolve_job

    out = _nifti_output(args.out, args.overwrite)
    return _report(super_resolve_job(out, args.inputs, factor=args.factor, spacing=args.spacing, model=args.model,
                                     device=args.device, overwrite=args.overwrite,
                                     progress=_progress(args, "super-resolving")))


def cmd_correct_mask(args: argparse.Namespace) -> int:
    """Shape-prior correction of a cardiac label map; the output keeps the input's geometry."""
    from .jobs import correct_mask_job

    out = _nifti_output(args.out, args.overwrite)
    if os.path.realpath(args.labels) == os.path.realpath(out):
        raise CLIError("--out must differ from the input: the input file is never modified")
    return _report(correct_mask_job(out, args.labels, model=args.model, device=args.device, overwrite=args.overwrite,
                                    progress=_progress(args, "correct-mask")))


BATCH_OPTIONS = {   # CLI flag -> (job, option name)
    "acceleration": ("reconstruct", "acceleration"), "pattern": ("reconstruct", "pattern"),
    "centre_lines": ("reconstruct", "centre_lines"), "seed": ("reconstruct", "seed"),
    "dynamic": ("reconstruct", "dynamic"), "factor": ("super-resolve", "factor"),
    "decision": ("segment-lesions", "decision"), "no_saliency": ("detect-planes", "saliency"),
}


#: the jobs whose networks run through napari_medlearn.inference (--backend)
BACKEND_JOBS = ("segment-heart", "segment-lesions")


def cmd_batch(args: argparse.Namespace) -> int:
    """One job over a cohort; exit status 1 when any case failed (one line each on stderr)."""
    from .batch import run_batch

    options = {}
    for flag, (job, name) in BATCH_OPTIONS.items():
        value = getattr(args, flag)
        if value is None or value is False:
            continue
        if job != args.job:
            raise CLIError(f"--{flag.replace('_', '-')} is an option of {job}, not of {args.job}")
        options[name] = (not value) if flag == "no_saliency" else value
    if args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    if args.backend is not None:
        from .inference import check_backend

        if args.job not in BACKEND_JOBS:
            raise CLIError(f"--backend is an option of {', '.join(BACKEND_JOBS)}, not of {args.job}")
        options["backend"] = check_backend(args.backend)

    def show(done: int, total: int, message: str) -> None:
        if not args.quiet:
            print(f"batch {args.job}: {done}/{total} {message}", file=sys.stderr, flush=True)

    result = run_batch(args.job, args.cohort, args.out, options=options, model=args.model, device=args.device,
                       workers=args.workers, scheduler=args.scheduler, overwrite=args.overwrite, progress=show,
                       note=_note, command=_command())
    for o in result.outcomes:
        for w in o.warnings:
            if o.status == "done":
                print(f"medlearn: warning: case {o.case}: {w}", file=sys.stderr)
    for o in result.failed:
        print(f"medlearn: case {o.case} failed: {o.error}", file=sys.stderr)
    n = len(result.outcomes)
    print(f"{n} case{'s' if n != 1 else ''}: {result.count('done')} done, {result.count('skipped')} skipped (done "
          f"before, inputs unchanged), {result.count('failed')} failed; table {result.table}")
    return 1 if result.failed else 0


def cmd_import_weights(args: argparse.Namespace) -> int:
    from . import zoo

    name = zoo.import_weights(args.kind, args.path, out=args.out)
    print(f"imported {args.kind} as {name}")
    return 0


#: presets whose BraTS subjects split into training (labels for EMMA, images for lesions-uda) and judging
SPLIT_PRESETS = ("emma-deepmedic", "emma-unet", "emma-fcn", "emma", "lesions-uda")


def cmd_train(args: argparse.Namespace) -> int:
    from .training.presets import PRESETS, run_preset

    if args.preset not in PRESETS:
        raise CLIError(f"preset {args.preset!r} not supported; known: {', '.join(sorted(PRESETS))}")
    kwargs = {"ship": args.ship, "device": args.device}
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    if args.data is not None:
        kwargs["data"] = args.data
    if args.only_folds is not None:
        if args.preset != "lesions-brats":
            raise CLIError(f"--only-folds is for the cross-validated lesions-brats preset, not {args.preset!r}")
        kwargs["only_folds"] = args.only_folds
    if args.train_subjects is not None:
        if args.preset not in SPLIT_PRESETS:
            raise CLIError(f"--train-subjects is for the BraTS-split presets ({', '.join(SPLIT_PRESETS)}), "
                           f"not {args.preset!r}")
        if args.ship:
            raise CLIError("--ship installs the models of the default split; train the other fold of the "
                           "cross-validation with --train-subjects and without --ship")
        kwargs["train_subjects"] = args.train_subjects
    if args.domain is not None:
        if args.preset not in ("lesions-synthetic", "lesions-uda"):
            raise CLIError(f"--domain is for the lesions-synthetic and lesions-uda presets, not {args.preset!r}")
        from .training.deepmedic import scanner_domains

        try:
            scanner_domains(args.domain)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        kwargs["domain"] = args.domain
    if args.with_fold is not None:
        if args.preset not in ("emma", "lesions-uda"):
            raise CLIError(f"--with-fold is for the emma and lesions-uda presets, not {args.preset!r}")
        kwargs["with_fold"] = args.with_fold
    card = run_preset(args.preset, args.run_dir, **kwargs)
    if "folds_done" in card:
        print(f"folds trained and evaluated so far: {card['folds_done']} of {card['folds']}; "
              "run again without --only-folds once all are done to write the model")
        return 0
    print(json.dumps(card.get("evaluation", {}).get("summary", {}), indent=2))
    print(f"model {card['name']} " + (f"sha256 {card['sha256']}" if "sha256" in card
                                       else f"(ensemble of {', '.join(card.get('members', []))})"))
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

    from .imaging.atomic import folder_lock

    with folder_lock(Path(args.out), _command(), note=_note):
        report = run_demo(Path(args.out), device=args.device, overwrite=args.overwrite)
    print(f"report: {report}")
    return 0


def cmd_pacs(args: argparse.Namespace) -> int:
    from .pacs import PacsError, run_cli

    try:
        return run_cli(args)
    except PacsError as e:
        raise CLIError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medlearn", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def backend_option(sp):
        sp.add_argument("--backend", default="auto", help="what runs the network: auto (OpenVINO on CPU, torch on "
                                                          "CUDA/MPS), torch, or onnx (the ONNX export under OpenVINO)")

    def common(sp, out_required=True):
        sp.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, mps")
        sp.add_argument("--overwrite", action="store_true", help="replace existing output files")
        sp.add_argument("--quiet", action="store_true", help="no progress output")

    s = sub.add_parser("segment-heart", help="segment LV, myocardium and RV in a cine; write labels and measures")
    s.add_argument("input", nargs="?", help="NIfTI file (t,z,y,x or z,y,x) or a DICOM cine folder (or --pacs)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--model", default=None, help="zoo name or checkpoint path (default: best shipped)")
    backend_option(s)
    common(s)
    from .pacs import add_job_args

    add_job_args(s)
    s.set_defaults(func=cmd_segment_heart)

    from .imaging.kspace import PATTERNS

    s = sub.add_parser("reconstruct", help="reconstruct MR images from undersampled k-space (deep cascade); "
                                           "from an image, k-space is simulated first")
    s.add_argument("input", help="an image (NIfTI, DICOM: k-space is simulated from it) or k-space as .npy / .h5")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--mask", default=None, help="sampling mask for k-space input (.npy, or .h5 with --mask-key)")
    s.add_argument("--kspace-key", default="kspace", help="HDF5 dataset holding the k-space (default kspace)")
    s.add_argument("--mask-key", default="mask", help="HDF5 dataset holding the mask (default mask)")
    s.add_argument("--acceleration", type=float, default=4.0, help="simulation: acceleration R (default 4)")
    s.add_argument("--pattern", choices=PATTERNS, default="cartesian", help="simulation: sampling pattern")
    s.add_argument("--centre-lines", type=int, default=8, help="simulation: fully sampled centre lines (default 8)")
    s.add_argument("--seed", type=int, default=0, help="simulation: mask seed (default 0)")
    s.add_argument("--dynamic", action="store_true",
                   help="the first axis is time (a cine): 2D+t model, and one mask per frame when simulating")
    s.add_argument("--model", default=None, help="zoo name or checkpoint path (default: best available)")
    common(s)
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("segment-lesions", help="segment a brain tumour (necrotic core, oedema, enhancing) in "
                                               "FLAIR + T1c; write labels, probabilities and volumes")
    s.add_argument("--flair", required=True, help="FLAIR volume (NIfTI or DICOM folder)")
    s.add_argument("--t1c", required=True, help="contrast-enhanced T1 volume of the same session (on another grid "
                                                "it is resampled onto the FLAIR's by scanner coordinates)")
    s.add_argument("--mask", default=None, help="brain mask (default: derived from the images; on another grid it "
                                                "is resampled onto the FLAIR's)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--model", default=None, help="zoo name or checkpoint path (default: best shipped)")
    s.add_argument("--decision", default=None, choices=("argmax", "expected_dice"),
                   help="labels from the probabilities: the most probable class, or the whole tumour of maximal "
                        "expected Dice found per scan (default: as the model card says, else argmax)")
    backend_option(s)
    common(s)
    s.set_defaults(func=cmd_segment_lesions)

    s = sub.add_parser("adapt", help="adapt a lesion model to your own unlabelled scans (adversarial domain "
                                     "adaptation); writes a new model to the user zoo")
    s.add_argument("--flair", nargs="+", required=True, help="FLAIR volumes, one per scan")
    s.add_argument("--t1c", nargs="+", required=True, help="contrast-enhanced T1 volumes, same order")
    s.add_argument("--mask", nargs="+", default=None, help="brain masks, same order (default: derived)")
    s.add_argument("--model", default=None, help="lesion model to adapt (default: best shipped)")
    s.add_argument("--name", default=None, help="name of the new model (default: <model>-adapted-<date>)")
    s.add_argument("--epochs", type=int, default=4)
    s.add_argument("--iters", type=int, default=100, help="iterations per epoch")
    s.add_argument("--self-training", type=float, nargs="+", default=None, metavar="P",
                   help="then class-balanced self-training: one round per portion P of each class's most "
                        "confident voxels kept as pseudo-labels (lesions-uda's recipe: 0.5 0.7)")
    common(s)
    s.set_defaults(func=cmd_adapt)

    s = sub.add_parser("detect-planes", help="detect fetal standard planes in a 2D ultrasound video (SonoNet); "
                                             "write per-frame scores, boxes, saliency and the best frames")
    s.add_argument("video", help="video (t, H, W[, 3]) as .npy, TIFF stack, NIfTI or DICOM (first axis time)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--model", default=None, help="zoo name (e.g. sononet-16 once imported) or checkpoint path "
                                                 "(default: best available)")
    s.add_argument("--no-saliency", action="store_true", help="classification only (faster; boxes from the "
                                                              "category maps)")
    common(s)
    s.set_defaults(func=cmd_detect_planes)

    s = sub.add_parser("super-resolve", help="through-plane super-resolution of thick-slice stacks (one stack, "
                                             "a cine, or several stacks fused); geometry kept")
    s.add_argument("inputs", nargs="+", help="NIfTI/DICOM stacks (z, y, x) thick along z, or one cine (t, z, y, x); "
                                             "several stacks are fused in the first one's frame")
    s.add_argument("--factor", type=float, default=4, help="through-plane factor, an integer >= 2 (default 4)")
    s.add_argument("--out", required=True, help="output NIfTI file (.nii.gz); never overwritten without --overwrite")
    s.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("DZ", "DY", "DX"),
                   help="fusion: output spacing in mm (default: the first stack's, dz / factor)")
    s.add_argument("--model", default=None, help="zoo name, checkpoint path, 'spline' / 'average' for the "
                                                 "baselines (default: best shipped)")
    common(s)
    s.set_defaults(func=cmd_super_resolve)

    s = sub.add_parser("correct-mask", help="check and correct a cardiac label map with the learned shape prior "
                                            "(ACNN); prints the plausibility before and after")
    s.add_argument("labels", help="label map (NIfTI or DICOM; z,y,x or t,z,y,x; 1 LV, 2 myocardium, 3 RV)")
    s.add_argument("--out", required=True, help="output NIfTI file (.nii.gz)")
    s.add_argument("--model", default=None, help="zoo name or checkpoint path (default: best shipped shape prior)")
    common(s)
    s.set_defaults(func=cmd_correct_mask)

    s = sub.add_parser("batch", help="run one job on a cohort (a folder of cases or a CSV manifest): one output "
                                     "folder per case, cohort.csv; resumable")
    from .batch import JOBS

    s.add_argument("job", choices=JOBS, help="the job, as its medlearn command")
    s.add_argument("cohort", help="a folder (each image file or sub-folder a case; segment-lesions: each sub-folder "
                                  "a session with FLAIR and T1c files) or a CSV manifest (columns case, image; "
                                  "segment-lesions: case, flair, t1c, mask)")
    s.add_argument("--out", required=True, help="output folder: OUT/<case>/ and OUT/cohort.csv")
    s.add_argument("--model", default=None, help="zoo name or checkpoint path (default: best shipped)")
    s.add_argument("--workers", type=int, default=1, help="cases run at once (dask processes; default 1: one "
                                                         "after the other in this process)")
    s.add_argument("--scheduler", default=None, help="dask scheduler: processes (default with --workers > 1), "
                                                     "threads, sync, or a dask.distributed address tcp://host:port")
    s.add_argument("--acceleration", type=float, default=None, help="reconstruct: simulated acceleration R")
    s.add_argument("--pattern", choices=PATTERNS, default=None, help="reconstruct: simulated sampling pattern")
    s.add_argument("--centre-lines", type=int, default=None, help="reconstruct: fully sampled centre lines")
    s.add_argument("--seed", type=int, default=None, help="reconstruct: mask seed")
    s.add_argument("--dynamic", action="store_true", help="reconstruct: the first axis is time")
    s.add_argument("--factor", type=float, default=None, help="super-resolve: through-plane factor")
    s.add_argument("--decision", default=None, choices=("argmax", "expected_dice"), help="segment-lesions: as there")
    s.add_argument("--no-saliency", action="store_true", help="detect-planes: classification only")
    s.add_argument("--backend", default=None, help="segment-heart, segment-lesions: as there")
    common(s)
    s.set_defaults(func=cmd_batch)

    s = sub.add_parser("import-weights", help="convert officially published weights into a zoo model")
    s.add_argument("kind", help="which published weights, e.g. deep-cascade-d5c5")
    s.add_argument("path", help="the published file (e.g. d5_c5.npz)")
    s.add_argument("--out", default=None, help="folder for NAME.pt + NAME.json (default: the user zoo)")
    s.set_defaults(func=cmd_import_weights)

    s = sub.add_parser("train", help="train a preset (reproduces a shipped weight)")
    s.add_argument("preset")
    s.add_argument("--run-dir", default=None, help="checkpoints and outputs (default runs/PRESET); resumes if present")
    s.add_argument("--ship", action="store_true", help="also install the result into the package's zoo")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--data", default=None, help="data folder for presets trained on real data (e.g. ACDC)")
    s.add_argument("--only-folds", type=int, nargs="+", default=None, metavar="K",
                   help="cross-validated presets: train and evaluate only these folds (run folds in parallel)")
    s.add_argument("--train-subjects", nargs="+", default=None, metavar="SUBJECT",
                   help="EMMA members, emma and lesions-uda: the BraTS subjects used in training (their labels; "
                        "lesions-uda: their images only); the others judge the model (the cross-validation's "
                        "other fold; not with --ship)")
    s.add_argument("--domain", default=None, metavar="SCANNERS",
                   help="lesions-synthetic and lesions-uda: the synthetic source's scanner domain(s), e.g. ABC (the "
                        "default: the cases cycle through A, B, C) or A (one scanner)")
    s.add_argument("--with-fold", nargs="+", default=None, metavar="CARD",
                   help="emma and lesions-uda: the cards (JSON) of the runs with the other --train-subjects; the "
                        "card written adds the cross-validation of all folds")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("models", help="list shipped models")
    s.set_defaults(func=cmd_models)

    from .pacs import add_cli as add_pacs_cli   # medlearn pacs find|retrieve|store (DICOMweb)

    add_pacs_cli(sub)
    sub.choices["pacs"].set_defaults(func=cmd_pacs)

    s = sub.add_parser("demo", help="run every method on the built-in sample data; write outputs and a report")
    s.add_argument("--out", default="medlearn-demo", help="output directory (default ./medlearn-demo)")
    common(s)
    s.set_defaults(func=cmd_demo)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings for the user (a damaged series' missing end, a repaired voxel size) as one line on
    stderr, like errors, instead of Python's two lines with a source file and code."""
    text = " ".join(str(message).split())
    print(f"medlearn: warning: {text}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    _ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("medlearn: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError) as e:   # OSError: every file error (disk full, read-only, ...)
        from .imaging.atomic import error_message

        print(f"medlearn: error: {error_message(e)}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
