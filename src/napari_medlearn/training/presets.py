"""Presets: one command per shipped weight file (``medlearn train PRESET``).

Each preset builds its data, trains with :func:`napari_medlearn.training.trainer.train`,
evaluates on held-out data it never trained on, and writes ``model.pt`` + ``model.json``
(the card, with the sha256) into the run directory; ``ship=True`` also copies both into the
package's zoo under the preset's model name.
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import zoo

CARDIAC_LABELS = {"0": "background", "1": "LV cavity", "2": "myocardium", "3": "RV cavity"}
BAI_PAPER = ("W. Bai et al., Automated cardiovascular magnetic resonance image analysis with fully "
             "convolutional networks, J Cardiovasc Magn Reson 20:65, 2018")


@dataclass
class Preset:
    """A named recipe that produces one zoo model."""

    name: str
    model_name: str
    description: str
    run: Callable[..., dict[str, Any]]
    defaults: dict[str, Any] = field(default_factory=dict)


def _hardware() -> str:
    import torch

    return f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}"


def _finish(model, arch: str, arch_args: dict, card: dict, run_dir: Path, ship: bool) -> dict:
    """Write model + card into ``run_dir`` (and the zoo when shipping); return the card."""
    out = run_dir / "model.pt"
    card = dict(card)
    sha = zoo.save_checkpoint(model, out, arch, arch_args, card=card)
    card["sha256"] = sha
    zoo.write_json_atomic(card, run_dir / "model.json")
    if ship:
        zoo.WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
        zoo.CARDS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, zoo.WEIGHTS_DIR / f"{card['name']}.pt")
        zoo.write_json_atomic(card, zoo.CARDS_DIR / f"{card['name']}.json")
        print(f"shipped {card['name']} -> {zoo.WEIGHTS_DIR / (card['name'] + '.pt')}")
    return card


# ---------------------------------------------------------------------------------------------
def run_cardiac_phantom(run_dir: str | Path, ship: bool = False, epochs: int = 8,
                        iters_per_epoch: int = 250, n_train: int = 40, n_eval: int = 10,
                        width: float = 1.0, device: str = "auto", seed: int = 0,
                        progress: bool = True) -> dict[str, Any]:
    """Bai FCN on cardiac cine phantoms; held-out phantoms of seeds 10000+ for the card.

    ``width`` scales the paper's filter counts (1.0 = 16..256); tests use a tiny fraction.
    """
    from monai.losses import DiceCELoss

    from ..nets import BaiFCN
    from ..samples.cardiac_phantom import cardiac_cine_phantom
    from .cardiac import SlicePool, evaluate_cases
    from .trainer import TrainConfig, train

    run_dir = Path(run_dir)
    target = 1.5
    t0 = time.time()
    pool = SlicePool(crop=128)
    for s in range(n_train):
        ph = cardiac_cine_phantom(seed=seed + s)
        for t in range(ph.image.shape[0]):
            pool.add_volume(ph.image[t], ph.labels[t], ph.spacing, target)
        if progress:
            print(f"phantom {s + 1}/{n_train}: {len(pool)} slices", flush=True)
    arch_args = {
        "in_channels": 1, "n_classes": 4,
        "filters": [max(2, int(round(f * width))) for f in (16, 32, 64, 128, 256)],
        "blocks": [2, 2, 3, 3, 3], "same_dim": max(2, int(round(32 * width))),
        "fc": max(2, int(round(64 * width))),
    }
    model = BaiFCN(**arch_args)
    cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=1e-3,
                      lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), seed=seed, device=device)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    hist = train(model, "bai_fcn", arch_args, lambda rng, dev: pool.batch(rng, dev, 8), loss, cfg,
                 run_dir, progress=progress)
    model.card = {"input": {"in_plane_spacing_mm": target}, "n_classes": 4}
    eval_seeds = list(range(10000, 10000 + n_eval))
    cases = []
    for s in eval_seeds:
        ph = cardiac_cine_phantom(seed=s)
        cases.append((ph.image, ph.labels, ph.spacing, f"phantom seed {s}"))
    if progress:
        print("evaluating on held-out phantoms", flush=True)
    ev = evaluate_cases(model, cases, progress=progress)
    card = {
        "name": "cardiac-fcn-phantom",
        "task": "cardiac-segmentation",
        "default": True,
        "description": "Bai FCN trained on synthetic short-axis cine phantoms: a demo of the "
                       "pipeline, not a model for real scans.",
        "architecture": "bai_fcn", "arch_args": arch_args, "paper": BAI_PAPER,
        "n_classes": 4, "labels": CARDIAC_LABELS,
        "input": {
            "axes": "2D short-axis slices of a (t, z, y, x) cine",
            "channels": ["cine MR magnitude (bSSFP)"],
            "in_plane_spacing_mm": target,
            "intensity": "each frame's volume rescaled so its 1st/99th percentiles map to 0/1, clipped",
        },
        "training": {
            "data": f"{n_train} cardiac cine phantoms, napari_medlearn.samples.cardiac_phantom seeds "
                    f"{seed}..{seed + n_train - 1}, all frames and slices ({len(pool)} slices)",
            "command": "medlearn train cardiac-phantom --ship",
            "loss": "MONAI DiceCELoss (softmax cross-entropy + Dice)",
            "augmentation": "rotation +-180 deg, scale 0.8-1.25, translation, flip, gamma 0.7-1.5, crops 128x128",
            "config": asdict(cfg), "loss_per_epoch": hist["loss"],
            "wall_seconds": round(time.time() - t0, 1),
            "train_loop_seconds": round(hist["wall_seconds"], 1), "hardware": _hardware(),
            "reproducibility": "same seed and hardware class give the same batches; "
                               "CPU thread scheduling can change the last bits of the weights, so "
                               "expect metrics within noise rather than the same sha256",
        },
        "evaluation": {
            "data": f"{n_eval} phantoms of seeds {eval_seeds[0]}..{eval_seeds[-1]}, never used in training; "
                    "full pipeline (segment_heart with post-processing) on every frame",
            **ev,
        },
        "licence": {"weights": "BSD-3-Clause", "training_data": "synthetic (generated by this package)"},
        "intended_use": "demonstration and testing; research use only, not for diagnosis",
    }
    return _finish(model, "bai_fcn", arch_args, card, run_dir, ship)


PRESETS: dict[str, Preset] = {
    "cardiac-phantom": Preset(
        "cardiac-phantom", "cardiac-fcn-phantom",
        "Bai FCN on cardiac cine phantoms (demo weights; ~30-60 min on 2 CPU cores)",
        run_cardiac_phantom,
    ),
}


def run_preset(name: str, run_dir: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run preset ``name``; ``ValueError`` for unknown names."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} not supported; known: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / name
    return preset.run(run_dir, **kwargs)
