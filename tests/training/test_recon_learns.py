"""The reconstruction recipes learn: a tiny cascade trained for seconds on MNI152 slices lowers
its loss and raises PSNR on held-out slices; the presets run end to end (tiny) and write cards."""

import json

import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.nets import DeepCascade
from napari_medlearn.training.presets import PRESETS
from napari_medlearn.training.recon import (
    CinePool,
    PackedInput,
    SlicePool2D,
    _mse,
    cine_slices,
    evaluate_recon,
    mni_axial_slices,
    run_recon_2d,
    run_recon_2dt,
)
from napari_medlearn.training.trainer import TrainConfig, train
from helpers import needs_acdc

SIZE = 112       # the whole brain at 2 mm (zoom 0.5) on a small canvas


def _slices(size=SIZE):
    return mni_axial_slices(size, zoom=0.5)


@pytest.fixture(scope="module")
def slices():
    train_slices, held, _, held_z = _slices()
    return train_slices, [(f"z={z}", held[i]) for i, z in enumerate(held_z) if i % 7 == 3]


def test_batches_are_normalised_undersampled_examples(slices):
    pool = SlicePool2D(slices[0])
    (k, m), y = pool.batch(np.random.default_rng(0), "cpu", 3)
    assert k.shape == y.shape == (3, 2, SIZE, SIZE) and m.shape == (3, 1, SIZE, SIZE)
    zf = torch.fft.ifft2(torch.fft.ifftshift(torch.complex(k[:, 0], k[:, 1]), dim=(-2, -1)), norm="ortho")
    assert torch.allclose(zf.abs().amax(dim=(-2, -1)), torch.ones(3), atol=1e-4)   # zero-filled peak 1
    lines = m[:, 0, :, 0]
    assert torch.all(m == m[..., :1]) and torch.all(lines.sum(1) < SIZE / 3)
    kk = torch.complex(k[:, 0], k[:, 1])
    assert torch.all(kk[(m[:, 0] == 0)] == 0)


def test_loss_falls_and_held_out_psnr_rises(slices, tmp_path):
    train_slices, held = slices
    torch.manual_seed(0)
    args = {"dims": 2, "n_cascades": 3, "n_layers": 4, "width": 8}
    net = DeepCascade(**args)
    before = evaluate_recon(net, held)["summary"]
    pool = SlicePool2D(train_slices)
    cfg = TrainConfig(epochs=5, iters_per_epoch=30, lr=2e-3, seed=0, device="cpu")
    hist = train(PackedInput(net), "deep_cascade", args, lambda rng, dev: pool.batch(rng, dev, 4),
                 _mse, cfg, tmp_path, progress=False)
    net.eval()
    after = evaluate_recon(net, held)["summary"]
    assert min(hist["loss"][-2:]) < 0.75 * hist["loss"][0], hist["loss"]
    for R in (4, 8):
        assert after[f"R{R}_psnr_cascade"] > before[f"R{R}_psnr_cascade"] + 3.0, (R, before, after)
        assert after[f"R{R}_psnr_gain_db"] > 3.0, (R, after)   # measured: +6 to +7.5 dB


def test_cine_pool_gives_per_frame_masks():
    cines = cine_slices([3], matrix=32, n_frames=6, slices_per_phantom=2)
    assert len(cines) == 2 and cines[0].shape == (6, 32, 32) and 0.5 < cines[0].max() <= 1.0
    (k, m), y = CinePool(cines).batch(np.random.default_rng(0), "cpu", 1)
    assert k.shape == y.shape == (1, 2, 6, 32, 32) and m.shape == (1, 1, 6, 32, 32)
    lines = m[0, 0, :, :, 0]
    assert len({tuple(r.tolist()) for r in lines}) > 1




@needs_acdc
def test_recon_2d_preset_runs_and_writes_its_card(tmp_path):
    card = run_recon_2d(tmp_path, size=48, crop=32, width=2, n_cascades=1, n_layers=2, epochs=1,
                        iters_per_epoch=2, batch_size=2, n_eval=1, progress=False, device="cpu",
                        max_train_slices=8, max_acdc_patients=2, compressed_sensing=False)
    on_disk = json.loads((tmp_path / "model.json").read_text())
    assert on_disk == json.loads(json.dumps(card))
    assert card["name"] == "recon-cascade-mr" and card["task"] == "mri-reconstruction-2d"
    assert card["sha256"] == zoo.sha256_of(tmp_path / "model.pt")
    s = card["evaluation"]["summary"]
    for key in ("R4_psnr_zero_filled", "R4_ssim_zero_filled", "R4_psnr_cascade", "R4_ssim_cascade",
                "R8_psnr_zero_filled", "R8_psnr_cascade", "R8_ssim_cascade"):
        assert np.isfinite(s[key]), key
    names = [c["case"] for c in card["evaluation"]["cases"]]
    assert any(n.startswith("MNI152") for n in names) and any(n.startswith("ACDC") for n in names)
    # the validation patients evaluated are never among the training patients
    split = card["training"]["acdc_split"]
    assert not set(split["train"]) & set(split["validation"])
    assert all(n.split()[1] in split["validation"] for n in names if n.startswith("ACDC"))
    assert "MNI152" in card["training"]["data"] and "ACDC" in card["training"]["data"]
    assert card["training"]["command"] == "medlearn train recon-2d --ship"
    assert zoo.load(tmp_path / "model.pt", device="cpu").width == 2


def test_weighted_cropped_pool_balances_sources_and_crops():
    a = [np.full((64, 64), 0.9, np.float32)]
    b = [np.full((64, 64), 0.5, np.float32)] * 9
    pool = SlicePool2D(a + b, weights=[0.5] + [0.5 / 9] * 9, crop=40)
    drawn = pool.draw(np.random.default_rng(0), 2000)
    assert 0.45 < np.mean(drawn == 0) < 0.55          # one slice in ten, drawn half the time
    assert np.mean(SlicePool2D(a + b).draw(np.random.default_rng(0), 2000) == 0) < 0.15
    (k, m), y = pool.batch(np.random.default_rng(0), "cpu", 3)
    assert k.shape == y.shape == (3, 2, 40, 40) and m.shape == (3, 1, 40, 40)
    with pytest.raises(ValueError, match="weights"):
        SlicePool2D(a + b, weights=[1.0])


def test_held_out_real_mr_never_overlaps_training_sources():
    from napari_medlearn.training.recon import held_out_real_mr

    cases = held_out_real_mr(64)
    assert all(src in {"dipy", "pydicom-data", "BraTS"} for src, _, _ in cases)
    for _, name, im in cases:
        assert im.ndim == 2 and np.isfinite(im).all() and 0.99 <= im.max() <= 1.0, name


def test_recon_2dt_preset_runs_and_writes_its_card(tmp_path):
    card = run_recon_2dt(tmp_path, width=2, n_cascades=1, n_layers=2, share_widths=(1,), matrix=32,
                         n_train=1, n_eval=1, n_eval_full=0, frames=(4, 5), epochs=1, iters_per_epoch=2,
                         progress=False, device="cpu")
    assert card["task"] == "mri-reconstruction-2dt" and card["arch_args"]["dims"] == 3
    assert np.isfinite(card["evaluation"]["summary"]["R8_psnr_cascade"])
    assert zoo.load(tmp_path / "model.pt", device="cpu").share_widths == (1,)


def test_presets_are_registered():
    assert PRESETS["recon-2d"].model_name == "recon-cascade-mr"
    assert PRESETS["recon-2dt"].model_name == "recon-cascade-cine-phantom"
