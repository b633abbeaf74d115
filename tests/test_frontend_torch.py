"""PyTorch front end: torch.export programs, .pt2 files and fx GraphModules into the IR."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from qcompile.errors import FrontendError  # noqa: E402
from qcompile.frontend import from_torch  # noqa: E402
from qcompile.interp import run  # noqa: E402

logging.getLogger("torch").setLevel(logging.ERROR)
HERE = os.path.basename(__file__)


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))


def check_matches(model: nn.Module, *inputs: torch.Tensor, tol: float = 1e-5, **kw):
    g = from_torch(model, inputs, **kw)
    g.verify()
    with torch.no_grad():
        ref = model(*inputs)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    outs = run(g, [i.numpy() for i in inputs])
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == tuple(r.shape)
        assert rel_err(o, r.numpy()) < tol
    return g


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, groups=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu6(self.conv2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def randomized(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return randomized(SmallCNN()), torch.randn(2, 3, 9, 9)


def test_cnn_matches_torch_and_keeps_names_bn_and_locations(cnn):
    model, x = cnn
    g = check_matches(model, x)
    # Parameters and buffers keep their module paths as value names.
    for name in ("conv1.weight", "conv1.bias", "bn1.running_mean", "bn1.running_var", "fc.weight"):
        assert name in g.constants
    # Batch norm is imported, not folded away by torch.export.
    assert g.op_counts() == {"batch_norm": 1, "clip": 1, "conv2d": 2, "global_avg_pool": 1,
                             "linear": 1, "relu": 1, "reshape": 1}
    conv2 = [n for n in g.nodes if n.op == "conv2d"][1]
    assert conv2.attrs["groups"] == 2 and conv2.attrs["stride"] == (2, 2)
    # Every node points at the line of forward() that created it.
    assert all(os.path.basename(n.loc.rsplit(":", 1)[0]) == HERE for n in g.nodes), \
        [n.loc for n in g.nodes]
    line = int(g.find("batch_norm")[0].loc.split(":")[1])
    assert "self.bn1" in open(__file__).read().splitlines()[line - 1]


def test_exported_program_pt2_file_and_fx_graph_module(cnn, tmp_path):
    model, x = cnn
    ref = model(x).detach().numpy()
    ep = torch.export.export(model, (x,))
    path = tmp_path / "cnn.pt2"
    torch.export.save(ep, str(path))
    gm = torch.fx.symbolic_trace(model)
    for source, args in ((ep, None), (str(path), None), (gm, (x,))):
        g = from_torch(source, args)
        assert "conv1.weight" in g.constants
        assert rel_err(run(g, [x.numpy()])[0], ref) < 1e-5
    g = from_torch(gm, (x,))
    assert all(n.loc for n in g.nodes)  # fx code has no source lines: module and node instead


def test_fx_graph_module_after_a_user_pass(cnn):
    model, x = cnn
    gm = torch.fx.symbolic_trace(model)
    for node in gm.graph.nodes:  # a user's fx rewrite: every relu becomes a gelu
        if node.op == "call_function" and node.target is F.relu:
            node.target, node.kwargs = F.gelu, {}
    gm.recompile()
    g = from_torch(gm, (x,))
    assert "gelu" in g.op_counts() and "relu" not in g.op_counts()
    assert rel_err(run(g, [x.numpy()])[0], gm(x).detach().numpy()) < 1e-5


def test_dynamic_batch(cnn):
    model, x = cnn
    g = from_torch(model, (x,), dynamic_batch=True)
    assert g.inputs[0].shape == (None, 3, 9, 9)
    assert g.outputs[0].shape == (None, 4)
    x5 = torch.randn(5, 3, 9, 9)
    assert rel_err(run(g, [x5.numpy()])[0], model(x5).detach().numpy()) < 1e-5


class ManyOps(nn.Module):
    """One of (nearly) every mapped ATen op, checked numerically against torch."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.ln = nn.LayerNorm(6)
        self.prelu = nn.PReLU(4)
        self.prelu1 = nn.PReLU()
        self.conv = nn.Conv2d(4, 4, 3, padding=(1, 2), dilation=(1, 2))

    def forward(self, x, ids):
        e = self.ln(self.emb(ids))
        e = F.gelu(e, approximate="tanh") + torch.sigmoid(e) * torch.tanh(e) + F.gelu(e)
        e = torch.softmax(e, dim=-1) + e.mean(dim=1, keepdim=True) - e.sum(-1, keepdim=True)
        a, b = torch.split(e, [2, 4], dim=-1)
        e = torch.cat([b, a.amax(dim=-1, keepdim=True).expand(-1, -1, 2)], dim=-1)
        y = self.prelu(self.conv(x))
        y = F.hardswish(y) + F.hardsigmoid(y) + F.leaky_relu(y, 0.2) + self.prelu1(y)
        y = F.max_pool2d(y, 3, 2, ceil_mode=True) + F.avg_pool2d(y, 3, 2, 1, count_include_pad=False)
        y = F.pad(y, (1, 0, 2, 1), value=0.5)
        y = torch.clamp(y, -1.0, 2.0) + torch.exp(-y.abs()) + torch.sqrt(y.abs() + 1)
        y = y + torch.rsqrt(y * y + 1) + torch.erf(y) + torch.maximum(y, -y) - torch.minimum(y, y ** 2)
        z = y.permute(0, 2, 3, 1)[:, 1:, :, 0].transpose(1, 2).unsqueeze(1).squeeze(1)
        return e, z[:, :, 1], y.reshape(2, -1) / 3.0


def test_many_ops_match_torch():
    torch.manual_seed(1)
    model = ManyOps().eval()
    x, ids = torch.randn(2, 4, 8, 8), torch.randint(0, 10, (2, 5))
    g = check_matches(model, x, ids)
    ops = set(g.op_counts())
    for op in ("gather", "layer_norm", "gelu", "softmax", "mean", "reduce_sum", "reduce_max",
               "slice", "concat", "expand", "conv2d", "prelu", "hardswish", "hardsigmoid",
               "leaky_relu", "max_pool2d", "avg_pool2d", "pad", "clip", "exp", "sqrt", "rsqrt",
               "erf", "maximum", "minimum", "pow", "transpose", "squeeze", "reshape", "div",
               "sigmoid", "tanh", "abs", "neg", "mul", "sub"):
        assert op in ops, op


class Unsupported(nn.Module):
    def forward(self, x):
        y = torch.cumsum(x, 1)
        return torch.log(y.abs() + 1) + torch.cumsum(y, 0)


def test_unsupported_ops_are_listed_in_one_error():
    with pytest.raises(FrontendError) as info:
        from_torch(Unsupported(), (torch.randn(2, 3),))
    msg = str(info.value)
    assert "cumsum" in msg and "log" in msg
    assert msg.count("cumsum") >= 3  # the summary plus both nodes, each named
    assert "cumsum_1" in msg
    assert f"{HERE}:" in msg  # with source locations


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def test_data_dependent_control_flow_is_a_clear_error():
    with pytest.raises(FrontendError, match="control flow depends on tensor values") as info:
        from_torch(DataDependent(), (torch.randn(2, 3),))
    assert f"{HERE}:" in str(info.value)
    assert info.value.__cause__ is not None  # the torch error is chained, not printed


def test_bad_arguments():
    with pytest.raises(FrontendError, match="example_inputs"):
        from_torch(SmallCNN())
    with pytest.raises(FrontendError, match="nn.Module"):
        from_torch(42)
    with pytest.raises(FrontendError, match="no such file"):
        from_torch("/nonexistent/model.pt2")
