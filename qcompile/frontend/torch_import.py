"""PyTorch front end: `torch.export` an `nn.Module` (or take an `ExportedProgram`, a saved `.pt2`
file or an fx `GraphModule`), lower it to core ATen, and map the ATen ops onto the op catalog.

A few composite ops are kept out of the decomposition because the catalog has them whole and the
ONNX exporter emits them whole too (so both imports of a model give the same graph): linear,
matmul, prelu, hardswish, hardsigmoid, and inference-mode batch norm, which stays a `batch_norm`
node (folding it is a pass, not a side effect of importing).

Parameters and buffers become graph constants named by their module path (`conv1.weight`);
every node records the line of the user's Python source that created it in `Node.loc`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import FrontendError
from ..ir.graph import Graph, Value
from ..ir.types import TensorType
from ._build import (MISSING, Const, GraphBuilder, Unsupported, float_type_of, handler_table,
                     transposed)

_FLOAT_MAX = float(np.finfo(np.float32).max)
_INT64_MAX = 2 ** 63 - 1


# ---- getting an ExportedProgram ----------------------------------------------------------------
def _keep_whole(torch) -> list:
    aten = torch.ops.aten
    return [aten.linear.default, aten.matmul.default, aten.prelu.default,
            aten._prelu_kernel.default, aten.hardswish.default, aten.hardsigmoid.default]


def _export(model: Any, example_inputs: Optional[Sequence], dynamic_batch: bool):
    import torch

    if isinstance(model, (str, Path)):
        try:
            return torch.export.load(str(model)), str(model)
        except FileNotFoundError as exc:
            raise FrontendError(f"no such file: {model}") from exc
        except Exception as exc:
            raise FrontendError(f"{model}: not a loadable torch.export program (.pt2): "
                                f"{type(exc).__name__}: {_first_line(exc)}") from exc
    if isinstance(model, torch.export.ExportedProgram):
        return model, "exported program"
    if not isinstance(model, torch.nn.Module):
        raise FrontendError(f"from_torch expects an nn.Module, a torch.fx.GraphModule, an "
                            f"ExportedProgram or a .pt2 path, got {type(model).__name__}")
    what = f"{type(model).__name__} module"
    if example_inputs is None:
        raise FrontendError(f"{what}: example_inputs are needed to trace it (e.g. "
                            f"from_torch(model, (torch.randn(1, 3, 32, 32),)))")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if isinstance(t, torch.Tensor) and t.dim() > 0 else None
                               for t in example_inputs)
    # The IR describes inference: dropout off, batch norm reading its running statistics.
    was_training = model.training
    model.eval()
    try:
        return torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes), what
    except Exception as exc:
        raise FrontendError(_export_failure(what, exc)) from exc
    finally:
        model.train(was_training)


def _export_failure(what: str, exc: Exception) -> str:
    text = str(exc)
    kind = type(exc).__name__
    if "data-dependent" in text.lower() or "GuardOnDataDependent" in kind or "Dynamic control flow" in text:
        reason = ("its Python control flow depends on tensor values (e.g. `if x.sum() > 0`), "
                  "which a static graph cannot express; use torch.cond or move the branch out")
    elif "Constraints violated" in text or "specialized" in text:
        reason = "the batch dimension cannot be dynamic (the model fixes it); use dynamic_batch=False"
    else:
        reason = "torch.export failed"
    loc = _user_frame(text)
    return (f"{what}: {reason}" + (f" (at {loc})" if loc else "") +
            f". torch said: {kind}: {_first_line(exc)}")


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


# ---- source locations --------------------------------------------------------------------------
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _torch_dir() -> str:
    import torch
    return os.path.dirname(torch.__file__)


def _user_frame(stack_trace: Optional[str]) -> str:
    """`file:line` of the innermost frame outside torch itself (the user's model code)."""
    if not stack_trace:
        return ""
    tdir = _torch_dir()
    frames = [(f, ln) for f, ln in _FRAME.findall(stack_trace)
              if not os.path.abspath(f).startswith(tdir) and not f.startswith("torch/")]
    if not frames:
        return ""
    path, line = frames[-1]
    try:
        rel = os.path.relpath(path)
        path = rel if not rel.startswith("..") else path
    except ValueError:
        pass
    return f"{path}:{line}"


def _location(node) -> str:
    loc = _user_frame(node.meta.get("stack_trace"))
    if loc:
        return loc
    # fx GraphModules carry no Python source; name the module and the fx node instead.
    chain = node.meta.get("from_node") or []
    name = chain[0].name if chain else node.name
    stack = node.meta.get("nn_module_stack") or {}
    module = [path for path, _ in stack.values() if path][-1:] if stack else []
    return f"{module[0]}:{name}" if module else f"fx:{name}"


# ---- the importer ------------------------------------------------------------------------------
_DTYPES = {"float32": "f32", "float16": "f16", "float64": "f32", "int64": "i64", "int32": "i32",
           "int8": "i8", "uint8": "u8", "int16": "i16", "bool": "bool"}


def _ir_dtype(tdtype) -> str:
    key = str(tdtype).replace("torch.", "")
    if key not in _DTYPES:
        raise FrontendError(f"tensor dtype {tdtype} has no IR equivalent")
    return _DTYPES[key]


def _meta_type(node) -> Optional[TensorType]:
    import torch
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    return TensorType(tuple(d if isinstance(d, int) else None for d in val.shape),
                      _ir_dtype(val.dtype))


class _Sym:
    """A symbolic int of a dynamic shape (only ever read through the output shapes in meta)."""

    def __repr__(self) -> str:
        return "SymInt"


class TorchImporter:
    def __init__(self, program, what: str):
        import torch
        self.torch = torch
        self.program = program
        self.b = GraphBuilder(Graph("main"), f"PyTorch {what}")
        self.env: dict[Any, Any] = {}

    def run(self) -> Graph:
        ep = self.program
        sig = ep.graph_signature
        named: dict[str, str] = {}
        named.update(sig.inputs_to_parameters)
        named.update(sig.inputs_to_buffers)
        named.update(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
        user_inputs = list(sig.user_inputs)
        for node in ep.graph.nodes:
            self.b.loc, self.b.node_name = _location(node) if node.op == "call_function" else "", node.name
            if node.op == "placeholder":
                self._placeholder(node, named, user_inputs)
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                self._outputs(node)
        self.b.raise_if_unsupported()
        return self.b.graph

    def _placeholder(self, node, named: dict, user_inputs: list) -> None:
        ep = self.program
        if node.name in named:
            fqn = named[node.name]
            tensor = ep.state_dict.get(fqn)
            if tensor is None:
                tensor = ep.constants.get(fqn)
            if tensor is None:
                raise FrontendError(f"{self.b.source}: no data for parameter/buffer {fqn}")
            self.env[node] = Const(fqn, _to_numpy(tensor))
            return
        t = _meta_type(node)
        if t is None:  # a non-tensor user input (int/float): baked in as the traced value
            self.env[node] = node.meta.get("val")
            return
        self.env[node] = self.b.graph.add_input(node.name, t)

    def _outputs(self, node) -> None:
        outs = []
        for a in _flatten(node.args[0]):
            v = self.env.get(a) if hasattr(a, "op") else a
            if v is MISSING:
                continue
            if isinstance(v, Const):
                v = self.b.value(v)
            if not isinstance(v, Value):
                raise FrontendError(f"{self.b.source}: output {a} is not a tensor")
            outs.append(v)
        self.b.graph.outputs = outs

    def _resolve(self, a: Any) -> Any:
        if hasattr(a, "op") and hasattr(a, "meta"):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self._resolve(x) for x in a)
        return a

    def _call(self, node) -> None:
        import operator
        torch = self.torch
        target = node.target
        args = [self._resolve(a) for a in node.args]
        kwargs = {k: self._resolve(v) for k, v in node.kwargs.items()}
        if target is operator.getitem:
            seq, i = args
            self.env[node] = MISSING if seq is MISSING else seq[i]
            return
        name = _op_name(target)
        flat = _flatten(args) + _flatten(list(kwargs.values()))
        if not isinstance(node.meta.get("val"), (torch.Tensor, list, tuple)):
            # shape arithmetic on dynamic dims (sym_size, operator.mul, ...): read via meta later
            self.env[node] = _Sym()
            return
        handler = _HANDLERS.get(name)
        if any(x is MISSING for x in flat):
            if handler is None:
                self.b.mark_unsupported(name, node.name, self.b.loc)
            self.env[node] = MISSING
            return
        if not any(isinstance(x, Value) for x in flat) and isinstance(target, torch._ops.OpOverload):
            folded = self._fold(node, target, args, kwargs, name)
            if folded is not None:
                self.env[node] = folded
                return
        if handler is None:
            self.b.mark_unsupported(name, node.name, self.b.loc)
            self.env[node] = MISSING
            return
        try:
            self.env[node] = handler(self, node, *args, **kwargs)
        except Unsupported as exc:
            self.b.mark_unsupported(name, node.name, self.b.loc, exc.reason)
            self.env[node] = MISSING

    def _fold(self, node, target, args, kwargs, name):
        """Run an op on import-time constants with torch itself (weights re-laid out, scalars
        turned into tensors, `full`, `arange`, ...)."""
        torch = self.torch

        def to_t(x):
            if isinstance(x, Const):
                return torch.from_numpy(np.ascontiguousarray(x.array))
            if isinstance(x, (list, tuple)):
                return type(x)(to_t(y) for y in x)
            return x
        if any(isinstance(x, _Sym) for x in _flatten(args)):
            return None
        try:
            with torch.no_grad():
                out = target(*to_t(args), **{k: to_t(v) for k, v in kwargs.items()})
        except Exception:
            return None
        consts = [x for x in _flatten(args) if isinstance(x, Const)]
        if any(c.quant is not None for c in consts):
            return None
        keep_name = consts and name in _LAYOUT
        cname = consts[0].name if keep_name else node.name
        if isinstance(out, torch.Tensor):
            return Const(cname, _to_numpy(out))
        if isinstance(out, (tuple, list)):
            return [Const(f"{cname}.{i}", _to_numpy(o)) if isinstance(o, torch.Tensor) else o
                    for i, o in enumerate(out)]
        return None

    # helpers for handlers
    def emit(self, op: str, inputs: Sequence, attrs: Optional[dict] = None, name: str = ""):
        return self.b.emit(op, inputs, attrs, name=name or self.b.node_name)

    def scalar(self, x: Any, like: Any) -> Any:
        """A Python number as a 0-d constant of the dtype of `like` (how torch promotes scalars)."""
        if isinstance(x, (Value, Const)):
            return x
        dtype = float_type_of(like)
        arr = np.asarray(x, dtype=np.float32 if dtype in ("f32", "f16") else np.int64)
        return Const(f"{self.b.node_name}.scalar", arr)


_LAYOUT = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "unsqueeze", "squeeze",
           "expand", "clone", "alias", "_to_copy", "detach", "slice", "contiguous", "flatten",
           "lift_fresh_copy", "select"}


def _op_name(target) -> str:
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(target, "__name__", str(target))


def _flatten(x: Any) -> list:
    if isinstance(x, (list, tuple)):
        return [y for z in x for y in _flatten(z)]
    return [x]


def _to_numpy(t) -> np.ndarray:
    import torch
    t = t.detach().cpu()
    if t.dtype in (torch.float64, torch.bfloat16):
        t = t.to(torch.float32)
    return t.contiguous().numpy().copy()


# ---- op handlers: (importer, fx node, *args) -> Value | Const | list ------------------------------
_HANDLERS, _h = handler_table()


def _out_shape(node) -> tuple:
    """The output shape torch recorded, dynamic dims as -1 (at most one may be dynamic)."""
    t = _meta_type(node)
    dims = [(-1 if d is None else d) for d in t.shape]
    if dims.count(-1) > 1:
        raise Unsupported("a reshape with more than one dynamic dimension")
    return tuple(dims)


def _rank(x) -> int:
    return len(x.shape) if isinstance(x, Value) else x.array.ndim


def _pair(v, n=2) -> tuple:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(int(x) for x in (v * n if len(v) == 1 else v))


@_h("convolution")
def _conv(im, node, x, w, b, stride, padding, dilation, is_transposed, output_padding, groups):
    if is_transposed:
        raise Unsupported("transposed convolution")
    if _rank(x) != 4:
        raise Unsupported(f"{_rank(x) - 2}-D convolution (only 2-D is in the IR)")
    ph, pw = _pair(padding)
    return im.emit("conv2d", [x, w, b], {"stride": _pair(stride), "padding": (ph, pw, ph, pw),
                                         "dilation": _pair(dilation), "groups": int(groups)})


@_h("linear")
def _linear(im, node, x, w, b=None):
    return im.emit("linear", [x, w, b])


@_h("addmm")
def _addmm(im, node, bias, a, m, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        raise Unsupported("addmm with alpha/beta other than 1")
    if isinstance(m, Const) and m.array.ndim == 2 and isinstance(bias, Const):
        return im.emit("linear", [a, transposed(m), bias])
    return im.emit("add", [im.emit("matmul", [a, m], name=node.name + "_mm"), bias])


@_h("mm", "bmm", "matmul")
def _matmul(im, node, a, m):
    if isinstance(m, Const) and m.array.ndim == 2 and isinstance(a, Value):
        return im.emit("linear", [a, transposed(m)])
    return im.emit("matmul", [a, m])



@_h("_native_batch_norm_legit_no_training")
def _bn(im, node, x, w, b, mean, var, momentum, eps):
    c = x.shape[1]
    w = w if w is not None else Const(f"{node.name}.gamma", np.ones(c, np.float32))
    b = b if b is not None else Const(f"{node.name}.beta", np.zeros(c, np.float32))
    y = im.emit("batch_norm", [x, w, b, mean, var], {"eps": float(eps), "axis": 1})
    return [y, MISSING, MISSING]


@_h("_native_batch_norm_legit_functional", "_native_batch_norm_legit", "native_batch_norm")
def _bn_training(im, node, *args, **kw):
    raise Unsupported("batch norm in training mode (export the module after .eval())")


@_h("relu")
def _relu(im, node, x):
    return im.emit("relu", [x])


@_h("hardtanh", "clamp")
def _clip(im, node, x, lo=None, hi=None):
    if isinstance(lo, (Value, Const)) or isinstance(hi, (Value, Const)):
        raise Unsupported("clamp with tensor bounds")
    if lo is not None and float(lo) == 0.0 and (hi is None or np.isinf(float(hi))):
        return im.emit("relu", [x])
    return im.emit("clip", [x], {"min": -_FLOAT_MAX if lo is None else float(lo),
                                 "max": _FLOAT_MAX if hi is None else float(hi)})


@_h("clamp_min")
def _clamp_min(im, node, x, lo):
    return _clip(im, node, x, lo, None)


@_h("clamp_max")
def _clamp_max(im, node, x, hi):
    return _clip(im, node, x, None, hi)


@_h("prelu", "_prelu_kernel")
def _prelu(im, node, x, w):
    if isinstance(w, Const):
        w = Const(w.name, w.array.reshape(-1), w.quant)
    return im.emit("prelu", [x, w], {"axis": 1})


@_h("leaky_relu")
def _leaky(im, node, x, slope=0.01):
    return im.emit("leaky_relu", [x], {"alpha": float(slope)})


def _unary(op: str):
    def handler(im, node, x):
        return im.emit(op, [x])
    return handler


for _name in ("hardswish", "hardsigmoid", "sigmoid", "tanh", "exp", "sqrt", "rsqrt", "neg", "erf", "abs"):
    _HANDLERS[_name] = _unary(_name)


@_h("gelu")
def _gelu(im, node, x, approximate="none"):
    return im.emit("gelu", [x], {"approximate": approximate})


@_h("_softmax", "softmax")
def _softmax(im, node, x, dim, half_to_float=False):
    return im.emit("softmax", [x], {"axis": int(dim)})


@_h("native_layer_norm")
def _layer_norm(im, node, x, normalized_shape, w, b, eps):
    axis = _rank(x) - len(normalized_shape)
    y = im.emit("layer_norm", [x, w, b], {"axis": axis, "eps": float(eps)})
    return [y, MISSING, MISSING]


def _binary(op: str):
    def handler(im, node, a, b, alpha=1):
        out_t = _meta_type(node)
        a, b = im.scalar(a, b), im.scalar(b, a)
        if alpha != 1:
            b = im.emit("mul", [b, im.scalar(alpha, b)], name=node.name + "_alpha")
        a, b = (_cast_to(im, node, v, out_t.dtype) for v in (a, b))
        return im.emit(op, [a, b])
    return handler


def _cast_to(im, node, v, dtype: str):
    if isinstance(v, Const):
        want = np.float32 if dtype in ("f32", "f16") else None
        return Const(v.name, v.array.astype(want)) if want and v.array.dtype != want else v
    if v.dtype != dtype:
        return im.emit("cast", [v], {"dtype": dtype}, name=node.name + "_cast")
    return v


for _name, _op in (("add", "add"), ("sub", "sub"), ("mul", "mul"), ("pow", "pow"),
                   ("maximum", "maximum"), ("minimum", "minimum")):
    _HANDLERS[_name] = _binary(_op)


@_h("div")
def _div(im, node, a, b, rounding_mode=None):
    if rounding_mode is not None:
        raise Unsupported(f"division with rounding_mode={rounding_mode!r}")
    return _binary("div")(im, node, a, b)


@_h("rsub")
def _rsub(im, node, a, b, alpha=1):
    return _binary("sub")(im, node, b, a, alpha)


@_h("where")
def _where(im, node, cond, a, b):
    a, b = im.scalar(a, b), im.scalar(b, a)
    return im.emit("where", [cond, a, b])


@_h("cat", "concat")
def _cat(im, node, xs, dim=0):
    return im.emit("concat", list(xs), {"axis": int(dim)})


@_h("view", "_unsafe_view", "reshape")
def _view(im, node, x, shape):
    return im.emit("reshape", [x], {"shape": _out_shape(node)})


@_h("permute")
def _permute(im, node, x, dims):
    r = _rank(x)
    return im.emit("transpose", [x], {"perm": tuple(int(d) % r for d in dims)})


@_h("transpose")
def _transpose(im, node, x, d0, d1):
    r = _rank(x)
    perm = list(range(r))
    perm[d0 % r], perm[d1 % r] = perm[d1 % r], perm[d0 % r]
    return im.emit("transpose", [x], {"perm": tuple(perm)})


@_h("t")
def _t(im, node, x):
    return _transpose(im, node, x, 0, 1) if _rank(x) == 2 else x


@_h("unsqueeze")
def _unsqueeze(im, node, x, dim):
    return im.emit("unsqueeze", [x], {"axes": (int(dim) % (_rank(x) + 1),)})


@_h("squeeze")
def _squeeze(im, node, x, dims=None):
    shape = x.shape if isinstance(x, Value) else x.array.shape
    r = len(shape)
    if dims is None:
        dims = [i for i, d in enumerate(shape) if d == 1]
    dims = [int(d) % r for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    dims = tuple(d for d in dims if shape[d] == 1)  # torch ignores non-1 dims
    return im.emit("squeeze", [x], {"axes": dims}) if dims else x


@_h("expand")
def _expand(im, node, x, size, implicit=False):
    shape = _meta_type(node).shape
    if any(d is None for d in shape):
        raise Unsupported("expand to a dynamic shape")
    return im.emit("expand", [x], {"shape": tuple(shape)})


@_h("slice")
def _slice(im, node, x, dim=0, start=None, end=None, step=1):
    shape = x.shape if isinstance(x, Value) else x.array.shape
    dim = int(dim) % len(shape)
    start = 0 if start is None else int(start)
    end = _INT64_MAX if end is None or isinstance(end, _Sym) else int(end)
    if start == 0 and step == 1 and shape[dim] is not None and end >= shape[dim]:
        return x  # the full range: exporters emit these for `x[:, :8]`
    return im.emit("slice", [x], {"axes": (dim,), "starts": (start,), "ends": (end,),
                                  "steps": (int(step),)})


@_h("select")
def _select(im, node, x, dim, index):
    r = _rank(x)
    dim, index = int(dim) % r, int(index)
    end = index + 1 if index != -1 else _INT64_MAX
    s = im.emit("slice", [x], {"axes": (dim,), "starts": (index,), "ends": (end,), "steps": (1,)},
                name=node.name + "_slice")
    return im.emit("squeeze", [s], {"axes": (dim,)})


@_h("split_with_sizes", "split")
def _split(im, node, x, sizes, dim=0):
    shape = x.shape if isinstance(x, Value) else x.array.shape
    dim = int(dim) % len(shape)
    if isinstance(sizes, int):
        total = shape[dim]
        sizes = [min(sizes, total - i) for i in range(0, total, sizes)]
    outs, start = [], 0
    for k, size in enumerate(sizes):
        outs.append(im.emit("slice", [x], {"axes": (dim,), "starts": (start,),
                                           "ends": (start + int(size),), "steps": (1,)},
                            name=f"{node.name}_{k}"))
        start += int(size)
    return outs


@_h("clone", "alias", "detach", "contiguous", "lift_fresh_copy", "dropout")
def _passthrough(im, node, x, *args, **kwargs):
    return x


@_h("native_dropout")
def _native_dropout(im, node, x, *args, **kwargs):
    return [x, MISSING]


@_h("_to_copy", "to")
def _to_copy(im, node, x, *args, **kwargs):
    return _cast_to(im, node, x, _meta_type(node).dtype)


def _reduce(op: str):
    def handler(im, node, x, dims=None, keepdim=False, dtype=None):
        r = _rank(x)
        axes = tuple(range(r)) if dims is None or dims == [] else \
            tuple(sorted(int(d) % r for d in (dims if isinstance(dims, (list, tuple)) else [dims])))
        if op == "mean" and r == 4 and axes == (2, 3) and keepdim:
            return im.emit("global_avg_pool", [x])
        return im.emit(op, [x], {"axes": axes, "keepdims": bool(keepdim)})
    return handler


_HANDLERS["mean"] = _reduce("mean")
_HANDLERS["sum"] = _reduce("reduce_sum")
_HANDLERS["amax"] = _reduce("reduce_max")


def _pool_padding(padding) -> tuple:
    ph, pw = _pair(padding) if padding not in (None, [], ()) else (0, 0)
    return (ph, pw, ph, pw)


@_h("max_pool2d_with_indices", "max_pool2d")
def _max_pool(im, node, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    k = _pair(kernel)
    y = im.emit("max_pool2d", [x], {"kernel": k, "stride": _pair(stride) if stride else k,
                                    "padding": _pool_padding(padding),
                                    "dilation": _pair(dilation), "ceil_mode": bool(ceil_mode)})
    return [y, MISSING] if _op_name(node.target) == "max_pool2d_with_indices" else y


@_h("avg_pool2d")
def _avg_pool(im, node, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
    if divisor_override is not None:
        raise Unsupported("avg_pool2d with divisor_override")
    k = _pair(kernel)
    return im.emit("avg_pool2d", [x], {"kernel": k, "stride": _pair(stride) if stride else k,
                                       "padding": _pool_padding(padding),
                                       "ceil_mode": bool(ceil_mode),
                                       "count_include_pad": bool(count_include_pad)})


@_h("_adaptive_avg_pool2d", "adaptive_avg_pool2d")
def _adaptive_avg(im, node, x, output_size):
    oh, ow = _pair(output_size)
    if (oh, ow) == (1, 1):
        return im.emit("global_avg_pool", [x])
    h, w = x.shape[2], x.shape[3]
    if h is None or w is None or h % oh or w % ow:
        raise Unsupported(f"adaptive average pooling from {(h, w)} to {(oh, ow)} (not a whole window)")
    k = (h // oh, w // ow)
    return im.emit("avg_pool2d", [x], {"kernel": k, "stride": k})


@_h("embedding")
def _embedding(im, node, weight, indices, padding_idx=-1, *args):
    return im.emit("gather", [weight, indices], {"axis": 0})


@_h("index")
def _index(im, node, x, indices):
    """x[i0, i1, ...] with constant index tensors (masks built from `arange`): flatten the indexed
    leading dims and gather once with the combined linear index."""
    if not indices or any(not isinstance(i, Const) for i in indices):
        raise Unsupported("advanced indexing with run-time or missing (None) indices")
    shape = x.shape if isinstance(x, Value) else x.array.shape
    k = len(indices)
    lead = shape[:k]
    if any(d is None for d in lead):
        raise Unsupported("advanced indexing over a dynamic dimension")
    arrays = np.broadcast_arrays(*[i.array.astype(np.int64) for i in indices])
    linear = np.zeros(arrays[0].shape, np.int64)
    for arr, d in zip(arrays, lead):
        linear = linear * d + np.where(arr < 0, arr + d, arr)
    flat = im.emit("reshape", [x], {"shape": (int(np.prod(lead)),) + tuple(
        -1 if d is None else d for d in shape[k:])}, name=node.name + "_flat")
    return im.emit("gather", [flat, Const(node.name + ".index", linear)], {"axis": 0})


@_h("bitwise_and", "logical_and", "bitwise_or", "logical_or")
def _logical(im, node, a, b):
    """Masks combined with an all-true (and) / all-false (or) constant are the other mask; other
    boolean logic has no op in the IR."""
    is_and = _op_name(node.target).endswith("and")
    for c, other in ((a, b), (b, a)):
        if isinstance(c, Const) and c.array.dtype == np.bool_ and c.array.size and \
                (c.array.all() if is_and else not c.array.any()):
            out_shape = _meta_type(node).shape
            if isinstance(other, Value) and tuple(other.shape) != tuple(out_shape):
                return im.emit("expand", [other], {"shape": tuple(out_shape)})
            return other
    raise Unsupported("boolean logic on run-time masks")


@_h("constant_pad_nd")
def _pad(im, node, x, pad, value=0.0):
    r = _rank(x)
    begins, ends = [0] * r, [0] * r
    for i in range(len(pad) // 2):  # torch lists (left, right) pairs from the last dim backwards
        begins[r - 1 - i], ends[r - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    if min(begins + ends) < 0:
        raise Unsupported("negative padding (cropping)")
    return im.emit("pad", [x], {"pads": tuple(begins + ends), "mode": "constant", "value": float(value)})


# ---- public entry point ------------------------------------------------------------------------
def from_torch(model: Any, example_inputs: Optional[Sequence] = None,
               dynamic_batch: bool = False) -> Graph:
    """Import a PyTorch model as a float `Graph`.

    `model` is an `nn.Module` or fx `GraphModule` (traced with `example_inputs`), an
    `ExportedProgram`, or the path of a program saved with `torch.export.save`.
    `dynamic_batch=True` exports dimension 0 of every input as dynamic (`?` in the IR)."""
    import torch

    program, what = _export(model, example_inputs, dynamic_batch)
    table = torch.export.default_decompositions()
    for op in _keep_whole(torch):
        table.pop(op, None)
    try:
        program = program.run_decompositions(table)
    except Exception as exc:
        raise FrontendError(f"PyTorch {what}: lowering to core ATen failed: "
                            f"{type(exc).__name__}: {_first_line(exc)}") from exc
    graph = TorchImporter(program, what).run()
    from ._canonical import canonicalize_graph
    canonicalize_graph(graph)
    return graph


__all__ = ["from_torch", "TorchImporter"]
