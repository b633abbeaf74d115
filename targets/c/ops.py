"""The C emitter of each integer op: node -> one kernel call of qc_kernels.c.

Each function gets the program (shapes, constants, zero points), the node and, for the MAC
ops, the requantize node fused into it (None when the int32 accumulator is stored). It returns
a `Call` whose code refers to tensors as `@{value}` and to its scratch buffer as `@{#scratch}`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from qcompile.ir.graph import Node, Value
from qcompile.ir.types import int_bits, int_range, is_signed

from .emitter import Call, CBackendError, CProgram, c_ident, c_op

_ROUNDING = {"gemmlowp_double": "QC_ROUND_GEMMLOWP_DOUBLE",
             "single_half_up": "QC_ROUND_SINGLE_HALF_UP",
             "single_half_away": "QC_ROUND_SINGLE_HALF_AWAY",
             "shift_only": "QC_ROUND_SHIFT_ONLY"}
SCRATCH = "@{#scratch}"


def struct(prog: CProgram, ctype: str, hint: str, fields: dict) -> str:
    """A `static const` parameter struct (C99 designated initialisers); returns `&name`."""
    name = prog.reserve(hint)
    body = ", ".join(f".{k} = {v}" for k, v in fields.items())
    prog.defs.append(f"static const {ctype} {name} = {{{body}}};")
    return "&" + name


def _strides(shape) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= int(d)
    return out[::-1]


def _int_list(values) -> str:
    return "{" + ", ".join(str(int(v)) for v in values) + "}"


def _check_rank(node: Node, rank: int) -> None:
    if rank > 6:
        raise CBackendError(f"node %{node.name} ({node.op}): rank {rank} > 6, the most the C "
                            f"kernels index")


def requant_struct(prog: CProgram, rq: Node, x: Value) -> str:
    a = rq.attrs
    mult = [int(m) for m in a["multiplier"]]
    shift = [int(s) for s in a["shift"]]
    if a["rounding"] == "shift_only":
        mult = [0] * len(shift)  # ignored by the kernel; keeps the table honest
    if a["rounding"] in ("single_half_up", "single_half_away") and max(shift) > 30:
        raise CBackendError(f"node %{rq.name} (requantize): shift {max(shift)} > 30 is outside "
                            f"single-rounding requantization")
    m = prog.const(f"qcm_{rq.name}", "int32_t", mult)
    s = prog.const(f"qcs_{rq.name}", "int32_t", shift)
    out_zp = prog.zero_point(rq.output, rq)
    # clamp(v + zp, cmin, cmax) == clamp(v, cmin - zp, cmax - zp) + zp for an int32 v
    lo = max(a["clamp_min"] - out_zp, -(1 << 31))
    hi = min(a["clamp_max"] - out_zp, (1 << 31) - 1)
    return struct(prog, "qc_requant_t", f"qcr_{rq.name}", {
        "mult": m, "shift": s, "channels": len(mult), "in_zp": prog.zero_point(x, rq),
        "out_zp": out_zp, "lo": _c_int(lo), "hi": _c_int(hi),
        "rounding": _ROUNDING[a["rounding"]]})


def _c_int(v: int) -> str:
    """An int32 literal (INT32_MIN has no literal of type int)."""
    return "INT32_MIN" if v == -(1 << 31) else str(v)


def _activation_8bit(prog: CProgram, node: Node, x: Value) -> None:
    if prog.ctype(x).size != 1:
        raise CBackendError(f"node %{node.name} ({node.op}): input %{x.name} is {x.dtype}; the "
                            f"C MAC kernels take 8-bit activations (i2..i8, u2..u8)")


def centred_weights(node: Node, w: Value) -> np.ndarray:
    """w - zero_point (per output channel along axis 0) as int64; must fit int8."""
    if not w.is_constant or w.data is None:
        raise CBackendError(f"node %{node.name} ({node.op}): weight %{w.name} must be a constant "
                            f"with data")
    data = np.asarray(w.data).astype(np.int64)
    zp = np.zeros(1, dtype=np.int64) if w.quant is None else \
        np.asarray(w.quant.zero_point, dtype=np.int64)
    centred = data - zp.reshape((-1,) + (1,) * (data.ndim - 1))
    if centred.size and (centred.min() < -128 or centred.max() > 127):
        raise CBackendError(f"node %{node.name} ({node.op}): weight %{w.name} minus its zero "
                            f"point spans [{centred.min()}, {centred.max()}], outside int8; the C "
                            f"kernels store centred weights as int8 (use symmetric weights)")
    return centred


def reorder_rows(rows: np.ndarray) -> np.ndarray:
    """Each row's first 4*floor(k/4) elements in groups of four as (w0, w2, w1, w3): the SXTB16
    unpacking order (qc_kernels.h)."""
    o, k = rows.shape
    k4 = k // 4 * 4
    head = rows[:, :k4].reshape(o, k // 4, 4)[:, :, [0, 2, 1, 3]].reshape(o, k4)
    return np.concatenate([head, rows[:, k4:]], axis=1)


def bias_array(prog: CProgram, node: Node, b: Optional[Value]) -> str:
    if b is None:
        return "NULL"
    if not b.is_constant or b.data is None:
        raise CBackendError(f"node %{node.name} ({node.op}): bias %{b.name} must be a constant")
    data = np.asarray(b.data).astype(np.int64)
    if b.quant is not None:
        data = data - np.asarray(b.quant.zero_point, dtype=np.int64)
    return prog.const(f"qcb_{node.name}", "int32_t", data, "weights")


def _mac_output(node: Node, rq: Optional[Node]) -> tuple[Value, str]:
    out = rq.output if rq is not None else node.output
    return out, node.name + ("+" + rq.name if rq is not None else "")


# ---------------------------------------------------------------------------------- MACs

@c_op("qconv2d")
def emit_qconv2d(prog: CProgram, node: Node, rq: Optional[Node]) -> Call:
    x, w, b = node.inputs[0], node.inputs[1], node.input(2)
    _activation_8bit(prog, node, x)
    out, label = _mac_output(node, rq)
    n, c, h, wd = prog.shape(x)
    o, cg, kh, kw = prog.shape(w)
    _, _, oh, ow = prog.shape(node.output)
    a = node.attrs
    groups = a["groups"]
    depthwise = cg == 1 and groups > 1
    rows = centred_weights(node, w).reshape(o, cg * kh * kw)
    wname = prog.const(f"qcw_{node.name}", "int8_t", rows if depthwise else reorder_rows(rows),
                       "weights")
    params = struct(prog, "qc_conv_t", f"qcp_{node.name}", {
        "n": n, "c": c, "h": h, "w": wd, "o": o, "oh": oh, "ow": ow, "kh": kh, "kw": kw,
        "sh": a["stride"][0], "sw": a["stride"][1], "dh": a["dilation"][0],
        "dw": a["dilation"][1], "pad_t": a["padding"][0], "pad_l": a["padding"][1],
        "groups": groups, "in_zp": prog.zero_point(x, node), "acc_bits": a["acc_bits"],
        "x_type": prog.ctype(x).enum, "y_type": prog.ctype(out).enum})
    rqs = requant_struct(prog, rq, node.output) if rq is not None else "NULL"
    k = cg * kh * kw
    scratch = 0 if depthwise else 2 * k * 2
    code = [f"qc_conv2d({params}, {prog.tensor(x)}, {wname}, {bias_array(prog, node, b)}, "
            f"{rqs}, {prog.tensor(out)}, {'(int16_t *)' + SCRATCH if scratch else 'NULL'});"]
    return Call(label, "qconv2d" + ("+requantize" if rq else ""), code,
                {out.name: prog.nbytes(out)}, [x.name], scratch, macs=n * o * oh * ow * k)


@c_op("qlinear")
def emit_qlinear(prog: CProgram, node: Node, rq: Optional[Node]) -> Call:
    x, w, b = node.inputs[0], node.inputs[1], node.input(2)
    _activation_8bit(prog, node, x)
    out, label = _mac_output(node, rq)
    o, k = prog.shape(w)
    rows = prog.numel(x) // k
    wname = prog.const(f"qcw_{node.name}", "int8_t", reorder_rows(centred_weights(node, w)),
                       "weights")
    rqs = requant_struct(prog, rq, node.output) if rq is not None else "NULL"
    code = [f"qc_linear({rows}, {k}, {o}, {prog.tensor(x)}, {prog.ctype(x).enum}, "
            f"{prog.zero_point(x, node)}, {wname}, {bias_array(prog, node, b)}, "
            f"{node.attrs['acc_bits']}, {rqs}, {prog.tensor(out)}, {prog.ctype(out).enum}, "
            f"(int16_t *){SCRATCH});"]
    return Call(label, "qlinear" + ("+requantize" if rq else ""), code,
                {out.name: prog.nbytes(out)}, [x.name], 2 * k * 2, macs=rows * o * k)


@c_op("qmatmul")
def emit_qmatmul(prog: CProgram, node: Node, rq: Optional[Node]) -> Call:
    a, b = node.inputs
    out, label = _mac_output(node, rq)
    sa, sb = prog.shape(a), prog.shape(b)
    if len(sa) < 2 or len(sb) < 2:
        raise CBackendError(f"node %{node.name} (qmatmul): rank-1 operands {sa} @ {sb} are not "
                            f"supported by the C backend")
    m, k, n = sa[-2], sa[-1], sb[-1]
    batch = int(np.prod(sa[:-2], dtype=np.int64))
    if len(sb) == 2:
        b_stride = 0
    elif tuple(sb[:-2]) == tuple(sa[:-2]):
        b_stride = k * n
    else:
        raise CBackendError(f"node %{node.name} (qmatmul): batch dims of {sa} @ {sb} must match "
                            f"(or b must be 2-D) for the C backend")
    if tuple(prog.shape(node.output)) != tuple(sa[:-2]) + (m, n):
        raise CBackendError(f"node %{node.name} (qmatmul): broadcasting {sa} @ {sb} is not "
                            f"supported by the C backend")
    rqs = requant_struct(prog, rq, node.output) if rq is not None else "NULL"
    code = [f"qc_matmul({batch}, {m}, {k}, {n}, {prog.tensor(a)}, {prog.ctype(a).enum}, "
            f"{prog.zero_point(a, node)}, {prog.tensor(b)}, {prog.ctype(b).enum}, "
            f"{prog.zero_point(b, node)}, {b_stride}, {node.attrs['acc_bits']}, {rqs}, "
            f"{prog.tensor(out)}, {prog.ctype(out).enum});"]
    uses = [v.name for v in (a, b) if not v.is_constant]
    return Call(label, "qmatmul" + ("+requantize" if rq else ""), code,
                {out.name: prog.nbytes(out)}, uses, macs=batch * m * n * k)


# ---------------------------------------------------------------------------------- element-wise

def _uses(*values: Value) -> list[str]:
    return [v.name for v in values if v is not None and not v.is_constant]


def _inplace(prog: CProgram, out: Value, *candidates: Value) -> dict:
    """out may overwrite the first candidate of the same shape whose elements are no narrower."""
    for v in candidates:
        if (v is not None and not v.is_constant and prog.shape(v) == prog.shape(out)
                and prog.ctype(v).size >= prog.ctype(out).size):
            return {out.name: v.name}
    return {}


def _split_axis(shape: tuple, axis: int, channels: int) -> tuple[int, int, int]:
    if channels == 1:
        return 1, 1, int(np.prod(shape, dtype=np.int64))
    ax = axis % len(shape)
    return (int(np.prod(shape[:ax], dtype=np.int64)), int(shape[ax]),
            int(np.prod(shape[ax + 1:], dtype=np.int64)))


@c_op("requantize")
def emit_requantize(prog: CProgram, node: Node, _rq=None) -> Call:
    x, y = node.inputs[0], node.output
    outer, ch, inner = _split_axis(prog.shape(x), node.attrs["axis"], len(node.attrs["multiplier"]))
    rqs = requant_struct(prog, node, x)
    code = [f"qc_requantize({outer}, {ch}, {inner}, {prog.tensor(x)}, {prog.ctype(x).enum}, "
            f"{rqs}, {prog.tensor(y)}, {prog.ctype(y).enum});"]
    return Call(node.name, node.op, code, {y.name: prog.nbytes(y)}, _uses(x),
                inplace=_inplace(prog, y, x))


def _broadcast_strides(in_shape: tuple, out_shape: tuple) -> list[int]:
    """Strides (elements) of an operand broadcast to out_shape: 0 along broadcast dims."""
    pad = (1,) * (len(out_shape) - len(in_shape)) + tuple(in_shape)
    st = _strides(pad)
    return [0 if d == 1 and o != 1 else s for d, o, s in zip(pad, out_shape, st)]


def _binary(prog: CProgram, node: Node, fields: dict, fn: str) -> Call:
    a, b = node.inputs
    y = node.output
    shape = prog.shape(y) or (1,)
    _check_rank(node, len(shape))
    attrs = node.attrs
    base = {"rank": len(shape), "shape": _int_list(shape),
            "a_stride": _int_list(_broadcast_strides(prog.shape(a), shape)),
            "b_stride": _int_list(_broadcast_strides(prog.shape(b), shape)),
            "a_type": prog.ctype(a).enum, "b_type": prog.ctype(b).enum,
            "y_type": prog.ctype(y).enum, "a_zp": prog.zero_point(a, node),
            "b_zp": prog.zero_point(b, node), "y_zp": prog.zero_point(y, node),
            **fields, "rounding": _ROUNDING[attrs["rounding"]],
            "clamp_min": attrs["clamp_min"], "clamp_max": attrs["clamp_max"]}
    params = struct(prog, "qc_binary_t", f"qcp_{node.name}", base)
    code = [f"{fn}({params}, {prog.tensor(a)}, {prog.tensor(b)}, {prog.tensor(y)});"]
    return Call(node.name, node.op, code, {y.name: prog.nbytes(y)}, _uses(a, b),
                inplace=_inplace(prog, y, a, b))


@c_op("qadd", "qsub")
def emit_qadd(prog: CProgram, node: Node, _rq=None) -> Call:
    at = node.attrs
    return _binary(prog, node, {
        "a_mult": at["a_multiplier"], "a_shift": at["a_shift"], "b_mult": at["b_multiplier"],
        "b_shift": at["b_shift"], "out_mult": at["out_multiplier"], "out_shift": at["out_shift"],
        "left_shift": at["left_shift"], "sub": int(node.op == "qsub")}, "qc_add")


@c_op("qmul")
def emit_qmul(prog: CProgram, node: Node, _rq=None) -> Call:
    at = node.attrs
    return _binary(prog, node, {"out_mult": at["multiplier"], "out_shift": at["shift"]},
                   "qc_mul")


@c_op("qprelu")
def emit_qprelu(prog: CProgram, node: Node, _rq=None) -> Call:
    x, slope = node.inputs
    y = node.output
    at = node.attrs
    if not slope.is_constant or slope.data is None:
        raise CBackendError(f"node %{node.name} (qprelu): slope %{slope.name} must be a constant")
    sdata = np.asarray(slope.data).astype(np.int64).reshape(-1)
    szp = np.asarray(slope.quant.zero_point if slope.quant else [0], dtype=np.int64)
    centred = sdata - szp
    nch = max(len(at["neg_multiplier"]), centred.size)
    outer, ch, inner = _split_axis(prog.shape(x), at["axis"], nch)
    params = struct(prog, "qc_prelu_t", f"qcp_{node.name}", {
        "outer": outer, "channels": ch, "inner": inner, "x_type": prog.ctype(x).enum,
        "y_type": prog.ctype(y).enum, "x_zp": prog.zero_point(x, node),
        "y_zp": prog.zero_point(y, node), "pos_mult": at["pos_multiplier"],
        "pos_shift": at["pos_shift"],
        "neg_mult": prog.const(f"qcm_{node.name}", "int32_t", at["neg_multiplier"]),
        "neg_shift": prog.const(f"qcs_{node.name}", "int32_t", at["neg_shift"]),
        "slope": prog.const(f"qcsl_{node.name}", "int32_t", centred),
        "slope_channels": centred.size, "rounding": _ROUNDING[at["rounding"]],
        "clamp_min": at["clamp_min"], "clamp_max": at["clamp_max"]})
    if len(at["neg_multiplier"]) not in (1, ch):
        raise CBackendError(f"node %{node.name} (qprelu): {len(at['neg_multiplier'])} negative "
                            f"multipliers for {ch} channels")
    code = [f"qc_prelu({params}, {prog.tensor(x)}, {prog.tensor(y)});"]
    return Call(node.name, node.op, code, {y.name: prog.nbytes(y)}, _uses(x),
                inplace=_inplace(prog, y, x))


@c_op("lut")
def emit_lut(prog: CProgram, node: Node, _rq=None) -> Call:
    x, y = node.inputs[0], node.output
    if x.quant is not None:
        qmin = x.quant.qmin
    else:
        qmin = int_range(int_bits(x.dtype), is_signed(x.dtype))[0]
    table = prog.const(f"qct_{node.name}", prog.ctype(y).name, node.attrs["table"], "weights")
    code = [f"qc_lut({prog.numel(x)}u, {prog.tensor(x)}, {prog.ctype(x).enum}, {qmin}, {table}, "
            f"{prog.ctype(y).enum}, {prog.tensor(y)});"]
    return Call(node.name, node.op, code, {y.name: prog.nbytes(y)}, _uses(x),
                inplace=_inplace(prog, y, x))


# ---------------------------------------------------------------------------------- pooling

def _pool_fields(prog: CProgram, node: Node, kernel, stride, padding, dilation) -> dict:
    x = node.inputs[0]
    n, c, h, w = prog.shape(x)
    _, _, oh, ow = prog.shape(node.output)
    stride = tuple(stride) if stride else tuple(kernel)
    return {"n": n, "c": c, "h": h, "w": w, "oh": oh, "ow": ow, "kh": kernel[0],
            "kw": kernel[1], "sh": stride[0], "sw": stride[1], "dh": dilation[0],
            "dw": dilation[1], "pad_t": padding[0], "pad_l": padding[1], "pad_b": padding[2],
            "pad_r": padding[3], "type": prog.ctype(x).enum}


@c_op("max_pool2d")
def emit_max_pool2d(prog: CProgram, node: Node, _rq=None) -> Call:
    a = node.attrs
    x, y = node.inputs[0], node.output
    params = struct(prog, "qc_pool_t", f"qcp_{node.name}",
                    _pool_fields(prog, node, a["kernel"], a["stride"], a["padding"],
                                 a["dilation"]))
    code = [f"qc_max_pool2d({params}, {prog.tensor(x)}, {prog.tensor(y)});"]
    return Call(node.name, node.op, code, {y.name: prog.nbytes(y)}, _uses(x))


@c_op("qavg_pool2d")
def emit_qavg_pool2d(prog: CProgram, node: Node, _rq=None) -> Call:
    a = node.attrs
    x, y = node.inputs[0], node.output
    q = x.quant
    fields = _pool_fields(prog, node, a["kernel"], a["stride"], a["padding"], (1, 1))
    lo, hi = (q.qmin, q.qmax) if q is not None else int_range(int_bits(x.dtype),
                                                               is_signed(x.dtype))
    # A fused relu/relu6 narrows the storage range (the op's optional clamp attributes).
    lo, hi = max(lo, a.get("clamp_min", lo)), min(hi, a.get("clamp_max", hi))
    fields.update({"count_include_pad": int(a["count_include_pad"]),
                   "zp": prog.zero_point(x, node), "qmin": lo, "qmax": hi})
    params = struct(prog, "qc_pool_t", f"qcp_{node.name}", fields)
    code = [f"qc_avg_pool2d({params}, {prog.tensor(x)}, {prog.tensor(y)});"]
    return Call(node.name, node.op, code, {y.name: prog.nbytes(y)}, _uses(x))


# ---------------------------------------------------------------------------------- data movement

def _copy(prog: CProgram, x: Value, y: Value) -> str:
    return (f"memcpy({prog.tensor(y)}, {prog.tensor(x)}, {prog.nbytes(y)}u);")


@c_op(*("reshape", "flatten", "squeeze", "unsqueeze", "identity"))
def emit_view(prog: CProgram, node: Node, _rq=None) -> Call:
    """Same bytes, another shape: the output is a view of the input's buffer. A graph output
    (the caller's array) cannot be a view, so it gets a copy."""
    x, y = node.inputs[0], node.output
    if y.name in prog.external or x.is_constant:
        return Call(node.name, node.op, [_copy(prog, x, y)], {y.name: prog.nbytes(y)}, _uses(x))
    return Call(node.name, node.op, [], {y.name: prog.nbytes(y)}, _uses(x),
                aliases={y.name: x.name})


def _gather(prog: CProgram, node: Node, x: Value, y: Value, shape, stride, offset: int) -> Call:
    _check_rank(node, len(shape))
    sh = prog.const(f"qcsh_{node.name}", "int32_t", list(shape) or [1])
    st = prog.const(f"qcst_{node.name}", "int32_t", list(stride) or [0])
    code = [f"qc_gather_strided({max(len(shape), 1)}, {sh}, {st}, {offset}, "
            f"{prog.ctype(x).size}u, {prog.tensor(x)}, {prog.tensor(y)});"]
    return Call(node.name, node.op, code, {y.name: prog.nbytes(y)}, _uses(x))


@c_op("transpose")
def emit_transpose(prog: CProgram, node: Node, _rq=None) -> Call:
    x, y = node.inputs[0], node.output
    perm = node.attrs["perm"]
    ins = _strides(prog.shape(x))
    return _gather(prog, node, x, y, prog.shape(y), [ins[p] for p in perm], 0)


@c_op("slice")
def emit_slice(prog: CProgram, node: Node, _rq=None) -> Call:
    from qcompile.ir.ops.defs.shape import _slices
    x, y = node.inputs[0], node.output
    xs = prog.shape(x)
    a = node.attrs
    per_axis = _slices("slice", len(xs), a["axes"], a["starts"], a["ends"], a["steps"])
    ins = _strides(xs)
    offset, stride = 0, list(ins)
    for ax, s in per_axis.items():
        start, _, step = s.indices(xs[ax])
        offset += start * ins[ax]
        stride[ax] = step * ins[ax]
    return _gather(prog, node, x, y, prog.shape(y), stride, offset)


@c_op("expand")
def emit_expand(prog: CProgram, node: Node, _rq=None) -> Call:
    x, y = node.inputs[0], node.output
    return _gather(prog, node, x, y, prog.shape(y),
                   _broadcast_strides(prog.shape(x), prog.shape(y)), 0)


@c_op("concat")
def emit_concat(prog: CProgram, node: Node, _rq=None) -> Call:
    y = node.output
    ys = prog.shape(y)
    _check_rank(node, len(ys))
    ax = node.attrs["axis"] % len(ys)
    outs = _strides(ys)
    code, pos = [], 0
    for i, x in enumerate(node.inputs):
        if x.quant != y.quant and (x.quant is None or y.quant is None or
                                   x.quant.zero_point != y.quant.zero_point or
                                   x.quant.scale != y.quant.scale):
            raise CBackendError(f"node %{node.name} (concat): input %{x.name} is quantized "
                                f"differently from the output; requantize it first")
        xs = prog.shape(x)
        sh = prog.const(f"qcsh_{node.name}_{i}", "int32_t", xs)
        st = prog.const(f"qcst_{node.name}_{i}", "int32_t", outs)
        code.append(f"qc_scatter_strided({len(xs)}, {sh}, {st}, {pos * outs[ax]}, "
                    f"{prog.ctype(y).size}u, {prog.tensor(x)}, {prog.tensor(y)});")
        pos += xs[ax]
    return Call(node.name, node.op, code, {y.name: prog.nbytes(y)}, _uses(*node.inputs))


@c_op("pad")
def emit_pad(prog: CProgram, node: Node, _rq=None) -> Call:
    x, y = node.inputs[0], node.output
    a = node.attrs
    if a["mode"] != "constant":
        raise CBackendError(f"node %{node.name} (pad): mode {a['mode']!r} is not supported by "
                            f"the C backend (constant only)")
    value = a["value"]
    if value != int(value):
        raise CBackendError(f"node %{node.name} (pad): fill {value!r} is not an integer code")
    xs, ys = prog.shape(x), prog.shape(y)
    _check_rank(node, len(ys))
    outs = _strides(ys)
    offset = sum(a["pads"][i] * outs[i] for i in range(len(xs)))
    sh = prog.const(f"qcsh_{node.name}", "int32_t", xs)
    st = prog.const(f"qcst_{node.name}", "int32_t", outs)
    code = [f"qc_fill({prog.numel(y)}u, {prog.ctype(y).enum}, {int(value)}, {prog.tensor(y)});",
            f"qc_scatter_strided({len(xs)}, {sh}, {st}, {offset}, {prog.ctype(y).size}u, "
            f"{prog.tensor(x)}, {prog.tensor(y)});"]
    return Call(node.name, node.op, code, {y.name: prog.nbytes(y)}, _uses(x))


__all__ = ["c_ident"]


@c_op("qsoftmax")
def emit_qsoftmax(prog: CProgram, node: Node, _rq=None) -> Call:
    x, y = node.inputs[0], node.output
    if node.input(1) is not None:
        raise CBackendError(f"node %{node.name} (qsoftmax): a mask input is not supported by the "
                            f"C backend")
    a = node.attrs
    q = y.quant
    k = -np.log2(q.scale[0]) if q is not None else 0.5
    if q is None or k != round(k):
        raise CBackendError(f"node %{node.name} (qsoftmax): output scale must be 2**-k")
    xs = prog.shape(x)
    ax = a["axis"] % len(xs)
    lo, hi = int_range(int_bits(y.dtype), is_signed(y.dtype))
    params = struct(prog, "qc_softmax_t", f"qcp_{node.name}", {
        "outer": int(np.prod(xs[:ax], dtype=np.int64)), "n": xs[ax],
        "inner": int(np.prod(xs[ax + 1:], dtype=np.int64)), "x_type": prog.ctype(x).enum,
        "y_type": prog.ctype(y).enum, "y_zp": prog.zero_point(y, node), "qmin": lo, "qmax": hi,
        "in_mult": a["in_multiplier"], "in_shift": a["in_shift"], "frac_bits": a["frac_bits"],
        "exp_b": a["exp_b"], "exp_c": a["exp_c"], "out_frac_bits": int(round(k)),
        "rounding": _ROUNDING[a["rounding"]]})
    code = [f"qc_softmax({params}, {prog.tensor(x)}, {prog.tensor(y)});"]
    return Call(node.name, node.op, code, {y.name: prog.nbytes(y)}, _uses(x))
