"""A small, resumable training loop shared by every preset.

Deterministic given the seed (each epoch reseeds from ``seed + epoch``, so a resumed run
draws the same batches as an uninterrupted one), a progress bar, a checkpoint after every
epoch (``last.pt`` in the run directory: model, optimiser, scheduler and epoch), and resume
from it. What to train is the caller's: a model, a ``batch(rng) -> (x, y)`` sampler and a loss.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import zoo


@dataclass
class TrainConfig:
    """Loop settings; written into the card."""

    epochs: int = 10
    iters_per_epoch: int = 250
    lr: float = 1e-3
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    extra: dict = field(default_factory=dict)


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def train(
    model: torch.nn.Module,
    arch: str,
    arch_args: dict[str, Any],
    sample_batch: Callable[[np.random.Generator, torch.device], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    config: TrainConfig,
    run_dir: str | Path,
    progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place; return the history (loss per epoch, wall time).

    Resumes from ``run_dir/last.pt`` when it exists and matches ``arch``.
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = zoo.resolve_device(config.device)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(config.lr_milestones),
                                                 gamma=config.lr_gamma)
    history: dict[str, Any] = {"loss": [], "wall_seconds": 0.0, "config": asdict(config)}
    start_epoch = 0
    last = run_dir / "last.pt"
    if last.exists():
        ckpt = zoo.torch_load(last)
        if ckpt.get("arch") == arch:
            model.load_state_dict(ckpt["state_dict"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            start_epoch = int(ckpt["epoch"]) + 1
            history = json.loads(ckpt["history"])
            print(f"resuming {arch} from epoch {start_epoch} ({last})")
    t_start = time.time() - float(history.get("wall_seconds", 0.0))
    for epoch in range(start_epoch, config.epochs):
        rng = seed_everything(config.seed + 1000 * epoch)
        model.train()
        losses = []
        bar = tqdm(range(config.iters_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, mininterval=5.0)
        for _ in bar:
            if cancelled is not None and cancelled():
                raise InterruptedError("training cancelled")
            x, y = sample_batch(rng, device)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        sched.step()
        history["loss"].append(float(np.mean(losses)))
        history["wall_seconds"] = time.time() - t_start
        zoo.save_checkpoint(model, last, arch, arch_args, extra={
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "epoch": epoch, "history": json.dumps(history),
        })
        if on_epoch is not None:
            on_epoch(epoch, history["loss"][-1])
    model.eval()
    return history
