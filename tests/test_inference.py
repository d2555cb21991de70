"""The inference layer: exports equal torch per architecture, are cached by weights and verified
by hash, fall back to torch with a note, and refuse a missing runtime in one line."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("openvino")

from napari_medlearn import inference, nets, zoo  # noqa: E402
from napari_medlearn.zoo.verify import PROBES  # noqa: E402

#: exported vs torch: the largest absolute difference allowed on the outputs (float32 logits of
#: order 1; the runtimes differ by summation order only, ~1e-6)
TOL = 1e-4


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """Each test its own export cache and no sessions from an earlier test."""
    monkeypatch.setenv("MEDLEARN_ZOO", str(tmp_path / "zoo"))
    inference.clear()
    yield
    inference.clear()


def _tiny(arch):
    torch.manual_seed(0)
    args = {
        "bai_fcn": dict(filters=[4, 4, 4, 4, 4], blocks=[1, 1, 1, 1, 1], same_dim=4, fc=4),
        "deepmedic": dict(in_channels=2, n_classes=4, fms_normal=[3, 3, 4, 4, 4, 4, 5, 5], fc_fms=[6, 6]),
        "sononet": dict(width=2, n_classes=14, in_channels=1, blocks=[1, 1, 1, 1, 1]),
        "unet3d": dict(in_channels=2, n_classes=4, base=4, levels=3),
        "fcn3d": dict(in_channels=2, n_classes=4, base=4, fc=8),
        "sr_net": dict(factor=4, width=3, n_lr=1, n_hr=1),
        "sr_multi_input": dict(n_inputs=2, width=3, n_stream=1, n_fused=1),
    }[arch]
    net = nets.build(arch, **args).eval()
    for m in net.modules():   # BatchNorm statistics that are not the identity
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.card = {"architecture": arch, "arch_args": args}
    return net


def _probe(net, arch, scale=1):
    gen = torch.Generator().manual_seed(1)
    return [a for a in PROBES[arch](net, lambda *s: torch.randn(*s, generator=gen))]


@pytest.mark.parametrize("arch", ["bai_fcn", "deepmedic", "sononet", "unet3d", "fcn3d", "sr_net", "sr_multi_input"])
def test_export_equals_torch_per_architecture(arch):
    net = _tiny(arch)
    xs = _probe(net, arch)
    eng = inference.engine(net, xs, backend="onnx")
    assert eng.backend == inference.RUNTIME, eng.note
    with torch.inference_mode():
        ref, got = net(*xs), eng(*xs)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < TOL
    if arch in ("bai_fcn", "deepmedic", "unet3d", "fcn3d", "sononet"):   # identical labels
        assert torch.equal(got.argmax(1), ref.argmax(1))


def test_dynamic_axes_follow_other_sizes():
    """The cardiac FCN is exported once with batch and size dynamic: other sizes still agree."""
    net = _tiny("bai_fcn")
    eng = inference.engine(net, [torch.zeros(1, 1, 32, 32)], backend="onnx", dynamic=[(0, 2, 3)])
    x = torch.randn(3, 1, 48, 64)
    with torch.inference_mode():
        assert float((eng(x) - net(x)).abs().max()) < TOL


@pytest.mark.filterwarnings("ignore:.*cannot run under:RuntimeWarning")
def test_shipped_weights_run_under_the_runtime():
    """Each shipped model's real weights: exported (or, for the complex-valued cascade and the
    multi-output shape model, refused with a note) and equal to torch on its probe input."""
    for name in zoo.available():
        if zoo.card(name).get("kind") == "ensemble":
            continue
        net = zoo.load(name, device="cpu")
        arch = net.card["architecture"]
        xs = _probe(net, arch)
        eng = inference.engine(net, xs, backend="onnx")
        # the card says what the model was checked on: OpenVINO exactly when it exports
        assert net.card["backends"]["openvino"].startswith("checked") == (eng.backend == inference.RUNTIME), name
        if arch in ("deep_cascade", "acnn_shape"):
            assert eng.backend == "torch" and "running torch" in eng.note, name
            continue
        assert eng.backend == inference.RUNTIME, (name, eng.note)
        with torch.inference_mode():
            assert float((eng(*xs) - net(*xs)).abs().max()) < TOL, name


def _count_exports(monkeypatch):
    calls = []
    real = inference._export

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(inference, "_export", counting)
    return calls


def test_cached_export_reused_and_corrupt_one_rebuilt(monkeypatch):
    calls = _count_exports(monkeypatch)
    net = _tiny("sononet")
    xs = _probe(net, "sononet")
    inference.engine(net, xs, backend="onnx")
    inference.clear()                     # a new process: only the disk cache is left
    inference.engine(net, xs, backend="onnx")
    assert len(calls) == 1
    (path,) = inference.export_dir().glob("*.onnx")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF          # one damaged byte: the recorded sha256 no longer matches
    path.write_bytes(bytes(data))
    inference.clear()
    with pytest.warns(RuntimeWarning, match="damaged"):
        eng = inference.engine(net, xs, backend="onnx")
    assert len(calls) == 2 and eng.backend == inference.RUNTIME
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == zoo.sha256_of(path)
    with torch.inference_mode():
        assert float((eng(*xs) - net(*xs)).abs().max()) < TOL


def test_changed_weights_never_run_an_old_export(monkeypatch):
    calls = _count_exports(monkeypatch)
    net = _tiny("sononet")
    xs = _probe(net, "sononet")
    inference.engine(net, xs, backend="onnx")
    with torch.no_grad():
        next(net.parameters()).mul_(-1.5)   # weights changed in memory after the export
    eng = inference.engine(net, xs, backend="onnx")
    assert len(calls) == 2
    with torch.inference_mode():
        assert float((eng(*xs) - net(*xs)).abs().max()) < TOL


def test_missing_runtime_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(inference, "runtime_installed", lambda: False)
    with pytest.raises(inference.BackendError) as err:
        inference.check_backend("onnx")
    assert "pip install openvino onnx" in str(err.value) and "\n" not in str(err.value)
    net = _tiny("sononet")
    eng = inference.engine(net, _probe(net, "sononet"), backend="auto")
    assert eng.backend == "torch" and "not installed" in eng.note
    with pytest.raises(inference.BackendError, match="unknown backend"):
        inference.check_backend("tensorrt")


def test_unexportable_architecture_falls_back_with_a_note():
    net = nets.DeepCascade(dims=2, n_cascades=1, n_layers=2, width=2).eval()
    k, m = torch.randn(1, 2, 8, 8), torch.ones(1, 1, 8, 8)
    with pytest.warns(RuntimeWarning) as caught:
        eng = inference.engine(net, [k, m], backend="onnx")
    assert eng.backend == "torch"
    assert "cannot run under openvino" in eng.note and "\n" not in eng.note
    assert [str(w.message) for w in caught] == [eng.note]
    with torch.inference_mode():
        assert torch.equal(eng(k, m), net(k, m))


def test_torch_backend_is_the_module_itself():
    net = _tiny("bai_fcn")
    eng = inference.engine(net, [torch.zeros(1, 1, 16, 16)], backend="torch")
    assert eng.backend == "torch" and eng.session is None and eng.note == ""


def test_bfloat16_only_where_the_card_allows_it():
    net = _tiny("sononet")
    xs = _probe(net, "sononet")
    assert inference.engine(net, xs, backend="onnx").backend == inference.RUNTIME
    net.card = {**net.card, "inference": {"mixed_precision": True}}
    eng = inference.engine(net, xs, backend="onnx")
    assert eng.backend == (inference.RUNTIME + "-bf16" if inference.cpu_has_bf16() else inference.RUNTIME)
    with torch.inference_mode():   # bfloat16: ~3 significant digits
        assert float((eng(*xs) - net(*xs)).abs().max()) < 5e-2 * max(1.0, float(net(*xs).abs().max()))


@pytest.mark.parametrize("error", [RuntimeError("std::bad_alloc"), MemoryError(),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 80 GB")])
def test_out_of_memory_is_reported_as_such(error):
    """A runtime's allocation failure becomes one line saying so: a ValueError, which the CLI
    (exit 2), batch and the widgets (one notification) treat as a user's problem."""
    net = _tiny("sononet")

    def fails(*_):
        raise error

    eng = inference.Engine(net, inference.RUNTIME, session=fails)
    with pytest.raises(inference.OutOfMemoryError) as err:
        eng(torch.zeros(1, 1, 16, 16))
    assert isinstance(err.value, ValueError) and isinstance(err.value, MemoryError)
    assert str(err.value).startswith("out of memory running") and "1x1x16x16" in str(err.value)
    eng = inference.Engine(net, inference.RUNTIME, session=lambda *_: (_ for _ in ()).throw(RuntimeError("shape")))
    with pytest.raises(RuntimeError, match="shape"):   # other runtime errors are not disguised
        eng(torch.zeros(1, 1, 16, 16))

