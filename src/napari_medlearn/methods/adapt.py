"""Adapt a shipped lesion model to a user's own unlabelled scans (Kamnitsas et al., IPMI 2017).

``adapt(model, target_images, spacing)`` trains a copy of ``model`` on its labelled source data
(regenerated from the card's ``adaptation_source``, or given as ``source=``) while a domain
discriminator on its features is fooled into not telling the source from the user's scans
(:mod:`napari_medlearn.training.uda`). The user's scans are never labelled and never leave the
machine. The result is a new model in the user zoo (:func:`napari_medlearn.zoo.user_dir`) with
its own card (parent, targets, settings, losses), usable by name everywhere a model is asked for.
The copy's batch-norm layers stay on the parent's running statistics: each batch holds source and
target segments, and letting their joint batch statistics in undid part of what the parent had
learnt (lesions-synthetic adapted to four unlabelled scanner-B cases, judged on six labelled
others: whole-tumour Dice 0.733 vs the parent's 0.777; with frozen statistics 0.784).
With ``self_training`` the adversarial stage is followed by rounds of class-balanced self-training
on the same scans (:func:`napari_medlearn.training.uda.self_train_lesion_segmenter`, as the
lesions-uda recipe does), batch-norm statistics again frozen.
The parent model is not changed. A checkpoint is written every epoch (``<user zoo>/runs/<name>``)
and an interrupted adaptation resumes from it when started again with the same name.

This is the one method that trains: it calls into ``training/`` (a departure from DESIGN.md's
``methods -> nets, zoo, imaging`` that the public API ``methods.adapt`` asks for).
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any, Callable, Generator, Sequence

import numpy as np

from ._threads import progress_from_thread
from .cardiac import drain
from .lesions import (DEFAULT_CHANNELS, TASK, _check_spacing, _load, ensemble_members, model_turn, scan_warnings,
                      validate_channels)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _targets(target_images, spacing, brain_masks, names: Sequence[str]):
    """Validated ``(channels, spacing, mask)`` per target scan, with messages naming the scan."""
    if isinstance(target_images, np.ndarray) and target_images.ndim == 4:
        imgs = [target_images]
    elif isinstance(target_images, (list, tuple)) and target_images:
        imgs = list(target_images)
    else:
        raise ValueError("target_images must be a (C, z, y, x) array or a non-empty list of them")
    if spacing is None:
        raise ValueError("spacing is missing: give (dz, dy, dx) in mm, or one per target scan")
    spacings = list(spacing) if (isinstance(spacing, (list, tuple)) and spacing
                                 and isinstance(spacing[0], (list, tuple, np.ndarray))) else [spacing] * len(imgs)
    if len(spacings) != len(imgs):
        raise ValueError(f"{len(spacings)} spacings for {len(imgs)} target scans")
    masks = list(brain_masks) if brain_masks is not None else [None] * len(imgs)
    if len(masks) != len(imgs):
        raise ValueError(f"{len(masks)} brain masks for {len(imgs)} target scans")
    out = []
    for i, (img, sp, m) in enumerate(zip(imgs, spacings, masks)):
        a = np.asarray(img) if not isinstance(img, (list, tuple)) else img
        n = len(a) if isinstance(a, (list, tuple)) else (a.shape[0] if a.ndim == 4 else None)
        if n is not None and n != len(names):
            raise ValueError(f"target scan {i + 1} has {n} channels; the model takes {len(names)} "
                             f"({', '.join(names)})")
        try:
            arr, s, mask = validate_channels(img, sp, names, m)
        except ValueError as e:
            raise ValueError(f"target scan {i + 1}: {e}") from None
        out.append((arr, s, mask))
    return out


def _source_cases(card: dict, source, names: Sequence[str], spacing):
    from ..training.deepmedic import prepare_case

    if source is not None:
        cases = []
        for i, item in enumerate(source):
            try:
                ch, lab, sp, mask = (tuple(item) + (None,))[:4]
                cases.append(prepare_case(ch, lab, sp, mask, target_spacing=spacing, channel_names=names,
                                          name=f"source {i + 1}"))
            except (TypeError, ValueError) as e:
                raise ValueError(f"source case {i + 1}: {e}") from None
        if not cases:
            raise ValueError("source is empty: give labelled (channels, labels, spacing[, brain_mask]) cases")
        return cases, f"{len(cases)} labelled cases given by the user"
    spec = card.get("adaptation_source")
    if not spec:
        raise ValueError(f"model {card.get('name', '?')!r} does not say how to regenerate its training data "
                         "(no 'adaptation_source' in its card): pass source=[(channels, labels, spacing, mask), ...]")
    if spec.get("generator") != "samples.brain_lesions.synthetic_lesion_case":
        raise ValueError(f"unknown adaptation source generator {spec.get('generator')!r}")
    from ..samples.brain_lesions import synthetic_lesion_case
    from ..training.deepmedic import domains_text, scanner_domains

    a, b = spec.get("seeds", [0, 12])
    domains = scanner_domains(spec.get("domain", "A"))      # several: the cases cycle through them
    cases = []
    for s in range(int(a), int(b)):
        c = synthetic_lesion_case(seed=s, domain=domains[(s - int(a)) % len(domains)],
                                  spacing_mm=float(spec.get("spacing_mm", 2.0)))
        ch, lab, sp, mask = c.channels, c.labels, c.spacing, c.brain_mask
        turn = model_turn(card, c.affine)          # source and targets meet in the model's orientation
        if turn is not None:
            ch, lab, sp, mask = turn.apply(ch), turn.apply(lab), turn.spacing(sp), turn.apply(mask)
        cases.append(prepare_case(ch, lab, sp, mask, target_spacing=spacing,
                                  channel_names=tuple(c.channel_names), name=f"seed {s}"))
    return cases, (f"synthetic cases {a}..{int(b) - 1} of samples.brain_lesions ({domains_text(spec.get('domain', 'A'))}), "
                   "the parent's own training data")


def adapt_steps(model, target_images, spacing=None, brain_masks=None, name: str | None = None, source=None,
                epochs: int = 4, iters_per_epoch: int = 100, lam_max: float = 0.05, batch_size: int = 10,
                device: str = "auto", cancelled: Callable[[], bool] | None = None,
                self_training: bool | Sequence[float] = (), affines=None,
                ) -> Generator[tuple[int, int, str], None, str]:
    """:func:`adapt` as a generator of ``(iterations_done, total, message)``; returns the new name."""
    from .. import zoo
    from ..training.deepmedic import unlabelled_case
    from ..training.uda import (SELF_TRAINING_PORTIONS, adapt_lesion_segmenter, self_train_lesion_segmenter,
                                self_training_record)

    if model is None:
        model = zoo.default_model(TASK)
    if ensemble_members(model) is not None:
        raise ValueError("adapt one model at a time, not an ensemble: adapt each member, then ensemble them")
    if epochs < 1 or iters_per_epoch < 1:
        raise ValueError(f"epochs and iters_per_epoch must be >= 1, got {epochs}, {iters_per_epoch}")
    if self_training is True:
        self_training = SELF_TRAINING_PORTIONS
    self_training = tuple(float(p) for p in (self_training or ()))
    if any(not 0.0 < p <= 1.0 for p in self_training):
        raise ValueError(f"self_training portions must be in (0, 1], got {list(self_training)}")
    net = _load(model, device="cpu")
    card = dict(getattr(net, "card", {}) or {})
    parent = str(getattr(net, "zoo_name", card.get("name", "model")))
    arch, arch_args = card.get("architecture"), card.get("arch_args")
    if not arch or arch_args is None:
        raise ValueError(f"model {parent!r} has no architecture/arch_args in its card; cannot save an adapted copy")
    names = tuple(card.get("input", {}).get("channels", DEFAULT_CHANNELS))
    targets = _targets(target_images, spacing, brain_masks, names)
    if affines is not None:       # each scan turned to the orientation the parent learnt
        affs = [affines] * len(targets) if np.ndim(affines) == 2 else list(affines)
        if len(affs) != len(targets):
            raise ValueError(f"{len(affs)} affines for {len(targets)} target scans")
        for i, aff in enumerate(affs):
            turn = model_turn(card, aff)
            if turn is not None:
                a, s_, m = targets[i]
                targets[i] = (turn.apply(a), turn.spacing(s_), None if m is None else turn.apply(m))
    warnings = [f"target scan {i + 1}: {w}" for i, (a, s, m) in enumerate(targets) for w in scan_warnings(a, s, m)]
    stem = str(card["file"]).removesuffix(".pt") if card.get("generated") else parent   # "x (file x.pt)" -> x
    name = name or f"{stem}-adapted-{time.strftime('%Y%m%d-%H%M%S')}"
    if not NAME_RE.match(name):
        raise ValueError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    if zoo._card_path(name) is not None:
        raise ValueError(f"a model named {name!r} exists already; choose another name")
    model_spacing = card.get("input", {}).get("spacing_mm")
    model_spacing = _check_spacing(model_spacing) if model_spacing is not None else None
    yield 0, epochs * iters_per_epoch, "preparing source and target data"
    source_cases, source_text = _source_cases(card, source, names, model_spacing)
    target_cases = [unlabelled_case(a, s, m, target_spacing=model_spacing, channel_names=names,
                                    name=f"target {i + 1}") for i, (a, s, m) in enumerate(targets)]
    student = copy.deepcopy(net).cpu()      # zoo.load caches one module per name: never train it in place
    run_dir = zoo.user_dir() / "runs" / name
    hist = yield from progress_from_thread(lambda report: adapt_lesion_segmenter(
        student, arch, arch_args, source_cases, target_cases, run_dir, epochs=epochs,
        iters_per_epoch=iters_per_epoch, batch_size=batch_size, lam_max=lam_max, device=device, progress=False,
        cancelled=cancelled, report=report, freeze_batchnorm=True, class_prior=bool(card.get("prior_correction"))))
    st = None
    if self_training:
        st = yield from progress_from_thread(lambda report: self_train_lesion_segmenter(
            student, arch, arch_args, source_cases, target_cases, run_dir, portions=self_training,
            iters_per_epoch=iters_per_epoch, batch_size=batch_size, device=device, progress=False,
            cancelled=cancelled, report=report, freeze_batchnorm=True))
    new_card = {k: v for k, v in card.items() if k not in ("sha256", "evaluation", "training", "priority")}
    new_card.update({
        "name": name, "task": TASK, "priority": -1,
        "description": f"{parent} adapted without labels to {len(targets)} of the user's scans "
                       "(adversarial domain adaptation" + (" and self-training)" if st else ")"),
        "parent": {"name": parent, "sha256": card.get("sha256", "")},
        "adaptation": {
            "method": "adversarial domain adaptation (Kamnitsas et al., IPMI 2017), napari_medlearn.methods.adapt",
            "source": source_text,
            "target": f"{len(targets)} unlabelled scans of the user (shapes "
                      f"{', '.join(str(a.shape[1:]) for a, _, _ in targets)}); no label used",
            "settings": hist["config"], "task_loss_per_epoch": hist["seg_loss"],
            "domain_loss_per_epoch": hist["domain_loss"], "domain_accuracy_per_epoch": hist["domain_accuracy"],
            "seconds": round(hist["wall_seconds"], 1), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "target_warnings": warnings,
            **({"self_training": self_training_record(st)} if st else {}),
        },
        "evaluation": {"note": "not evaluated: the targets have no labels; compare it with its parent on "
                               "scans you can check"},
    })
    if "prior_correction" in hist:       # the copy now learnt the class prior of the adaptation's source segments
        new_card["prior_correction"] = hist["prior_correction"]
    zoo.user_dir().mkdir(parents=True, exist_ok=True)
    sha = zoo.save_checkpoint(student, zoo.user_dir() / f"{name}.pt", arch, arch_args, card=new_card)
    zoo.write_json_atomic({**new_card, "sha256": sha}, zoo.user_dir() / f"{name}.json")
    return name


def adapt(model, target_images, spacing=None, brain_masks=None, name: str | None = None, source=None,
          epochs: int = 4, iters_per_epoch: int = 100, lam_max: float = 0.05, batch_size: int = 10,
          device: str = "auto", progress: Callable[[int, int, str], Any] | None = None,
          cancelled: Callable[[], bool] | None = None, self_training: bool | Sequence[float] = (),
          affines=None) -> str:
    """Adapt a lesion model to unlabelled scans; return the new model's zoo name.

    Parameters
    ----------
    model
        Zoo name, checkpoint path or loaded module of a lesion model (None: the default one).
    target_images
        One ``(C, z, y, x)`` scan or a list of them, channels in the model card's order.
    spacing
        ``(dz, dy, dx)`` in mm for all scans, or a list with one per scan.
    brain_masks
        Optional list of boolean masks, one per scan (None: derived).
    name
        Name of the new model (default ``<parent>-adapted-<date>``); must not exist yet.
    source
        Labelled source cases ``[(channels, labels, spacing, brain_mask), ...]``; None
        regenerates the parent's training data from its card (shipped synthetic models).
    epochs, iters_per_epoch, lam_max, batch_size
        Training length, the adversarial weight's final value, segments per batch (half source,
        half target).
    progress, cancelled
        ``progress(done, total, message)`` per iteration; ``cancelled()`` stops at the next one
        (the last finished epoch stays in the checkpoint).
    self_training
        After the adversarial training, one round of class-balanced self-training on the scans per
        portion given (e.g. ``(0.5, 0.7)``; True: lesions-uda's recipe; ``epochs`` is not used for
        it: 2 epochs of ``iters_per_epoch`` per round): the model's most confident voxels of each
        class become pseudo-labels (:func:`napari_medlearn.training.uda.self_train_lesion_segmenter`).
        Default: none.
    affines
        The scans' voxel-to-world matrices (one, or one per scan): each scan is turned to the
        orientation the parent learnt (its card's ``input.orientation``), as
        :func:`~napari_medlearn.methods.lesions.segment_lesions` does. None: taken as they are.
    """
    return drain(adapt_steps(model, target_images, spacing, brain_masks, name, source, epochs, iters_per_epoch,
                             lam_max, batch_size, device, cancelled, self_training, affines), progress)


__all__ = ["adapt", "adapt_steps"]
