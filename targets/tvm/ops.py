"""Per-op lowerings: each builds the TE computation of one integer op (see lower.py).

Every formula mirrors the op's "int" kernel in qcompile/ir/ops/defs/integer.py; the integer
primitives come from arith.py. Kernel stage names ("pad", "acc", "out") are what the CPU
schedules in schedules.py look for.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from tvm import relax, te, topi
from tvm import tirx as tir

from qcompile.ir.graph import Node, Value
from qcompile.ir.ops.defs import pool as pool_defs
from qcompile.ir.types import int_bits, int_range, is_signed

from . import arith
from .arith import I64, i64
from .lower import Kernel, Lowering, TVMBackendError, at, tvm_dtype, tvm_op

INT32_LO, INT32_HI = -(1 << 31), (1 << 31) - 1


# ---------------------------------------------------------------------------------- helpers

def _requant_epilogue(low: Lowering, k: Kernel, rq: Node, rank: int):
    """fn(acc int64 expr, index tuple) -> stored output: requantize `rq` applied to `acc`."""
    a = rq.attrs
    axis = a["axis"] % rank
    m = k.table("multiplier", a["multiplier"])
    s = k.table("shift", a["shift"])
    q_in = rq.inputs[0].quant
    if q_in is None:
        raise TVMBackendError(f"node %{rq.name} (requantize): input %{rq.inputs[0].name} has "
                              f"no QuantParams")
    zx = k.table("zx", q_in.zero_point)
    zx_axis = (q_in.axis or 0) % rank
    rounding, lo, hi = a["rounding"], a["clamp_min"], a["clamp_max"]
    all_shifts = np.asarray(a["shift"], dtype=np.int64).reshape(-1)
    shifts = (int(all_shifts.min()), int(all_shifts.max())) if all_shifts.size else None
    dtype = tvm_dtype(a["dtype"])
    q_out = rq.output.quant

    def centred(acc, idx):
        if isinstance(zx, int) and zx == 0:
            return acc
        return i64(acc) - k.read(zx, idx[zx_axis])
    if q_out is not None and len(set(q_out.zero_point)) > 1:
        # per-channel output zero points (per-channel activations): the int64 form
        zy_at = _zero_point_at(k, rq.output, rq, rank, "zy")

        def per_channel_epilogue(acc, idx):
            y = arith.requantize(centred(acc, idx), k.read(m, idx[axis]), k.read(s, idx[axis]),
                                 rounding, shifts)
            return arith.clamp_cast(y + zy_at(idx), lo, hi, dtype)
        return per_channel_epilogue
    zy = low.zero_point(rq.output, rq)

    def epilogue(acc, idx):
        return arith.requantize_clamp(centred(acc, idx), k.read(m, idx[axis]),
                                      k.read(s, idx[axis]), rounding, zy, lo, hi, dtype,
                                      shifts)
    return epilogue


def _mac_finish(acc, acc_bits: int, wide: bool):
    """The accumulator as the op stores it, wrapped to acc_bits (two's complement), as an int32
    expression: an int32 sum is already exact (the build-time bound), a wrapped one fits."""
    if acc_bits < 32 or wide:
        return arith.i32(arith.wrap(i64(acc), acc_bits))
    return arith.i32(acc)


def _centred_weight(node: Node, w: Value, axis: int = 0) -> np.ndarray:
    """w - zw (per output channel) as int64, from a constant weight."""
    if not w.is_constant or w.data is None:
        raise TVMBackendError(f"node %{node.name} ({node.op}): weight %{w.name} must be a "
                              f"constant with data")
    if w.quant is None:
        raise TVMBackendError(f"node %{node.name} ({node.op}): weight %{w.name} has no "
                              f"QuantParams")
    return np.asarray(w.data).astype(np.int64) - w.quant.zero_point_array(w.data.ndim)


def _narrowest(arr: np.ndarray) -> str:
    for dt in ("int8", "int16", "int32"):
        info = np.iinfo(dt)
        if not arr.size or (arr.min() >= info.min and arr.max() <= info.max):
            return dt
    raise TVMBackendError("a centred weight does not fit int32")


def _bias_term(node: Node, bias: Optional[Value], n: int) -> np.ndarray:
    if bias is None:
        return np.zeros(n, dtype=np.int64)
    if not bias.is_constant or bias.data is None:
        raise TVMBackendError(f"node %{node.name} ({node.op}): bias %{bias.name} must be a "
                              f"constant with data")
    b = np.asarray(bias.data).astype(np.int64).reshape(-1)
    if bias.quant is not None:
        b = b - np.asarray(bias.quant.zero_point, dtype=np.int64).reshape(-1)
    return np.broadcast_to(b, (n,)).copy()


def _act_range(v: Value) -> int:
    """The largest |code| a value of this dtype can hold."""
    lo, hi = int_range(int_bits(v.dtype), is_signed(v.dtype))
    return max(abs(lo), abs(hi))


def _fits32(bound: int) -> bool:
    return bound <= INT32_HI


def _broadcast_index(shape: tuple, out_rank: int):
    """Index map from an output index to an input of `shape` (numpy broadcasting)."""
    pad = out_rank - len(shape)

    def index(idx):
        return tuple(0 if d == 1 else idx[pad + i] for i, d in enumerate(shape))
    return index


# ---------------------------------------------------------------------------------- MACs

def _folded_constant(node: Node, x: Value, wc: np.ndarray, bias: Optional[Value], zx: int):
    """The per-output-channel constant of a MAC with the input zero point folded out, and the
    accumulator type: sum (x - zx)(w - zw) + b == sum x (w - zw) + (b - zx sum(w - zw)). int32
    when the worst case |sum x (w - zw)| + |constant| provably fits, int64 otherwise."""
    o = wc.shape[0]
    rows = np.abs(wc).reshape(o, -1).sum(axis=1)
    const = _bias_term(node, bias, o) - zx * wc.reshape(o, -1).sum(axis=1)
    bound = _act_range(x) * int(rows.max(initial=0)) + int(np.abs(const).max(initial=0))
    return const, ("int32" if _fits32(bound) else "int64")


def _mac_lanes(low: Lowering) -> int:
    """int32 lanes of the packed conv kernel (0: build the plain one). The CPU scheduler says
    so; unscheduled and non-x86 builds keep the plain kernels."""
    return int(getattr(low.schedule, "mac_lanes", 0)) if low.schedule is not None else 0


def _fits_i16(lo: int, hi: int) -> bool:
    return -(1 << 15) <= lo and hi < (1 << 15)


def _packable(low: Lowering, x: Value, wc: np.ndarray, zx: int, acc_dt: str) -> bool:
    """Whether a MAC can run packed: inputs, centred weights and the padding value are int16
    values (they are stored widened to int16, half the bytes of int32), and the sum is int32
    (the build-time bound). The layout pairs reduction steps so that a pmaddwd
    (16-bit pairs summed into int32 lanes) can replace the multiply-add; the same bound
    covers every pair sum, |x0 w0 + x1 w1| <= max|x| (|w0| + |w1|) <= bound."""
    if not _mac_lanes(low) or acc_dt != "int32":
        return False
    lo, hi = int_range(int_bits(x.dtype), is_signed(x.dtype))
    return (_fits_i16(lo, hi) and _fits_i16(zx, zx)
            and (not wc.size or _fits_i16(int(wc.min()), int(wc.max()))))


def _pair_word(lo, hi):
    """Two 16-bit values as one int32 word, `lo` in the low half: the vpmaddwd operand layout of
    the packed kernels' inputs."""
    return (lo.astype("int32") & tir.const(0xFFFF, "int32")) | \
        (hi.astype("int32") << tir.const(16, "int32"))


def _pack_pairs(wc2: np.ndarray, lanes: int, block: int) -> np.ndarray:
    """(O, K) centred weights -> (OB, ceil(K/2), lanes, 2) int16: output channels in blocks of
    `lanes` (the vector lanes), reduction steps in pairs. OB is a multiple of `block`;
    channels and reduction steps past the end are zero."""
    o, kdim = wc2.shape
    ob = -(-o // lanes)
    ob = -(-ob // block) * block
    kp = -(-kdim // 2)
    full = np.zeros((ob * lanes, kp * 2), dtype=np.int16)
    full[:o, :kdim] = wc2
    return np.ascontiguousarray(full.reshape(ob, lanes, kp, 2).transpose(0, 2, 1, 3))


def _tile_width(n: int, candidates=(6, 5, 4, 7, 3, 2)) -> int:
    """The register tile along output columns: the candidate that pads `n` least."""
    if n <= max(candidates):
        return n
    return min(candidates, key=lambda t: (-(-n // t) * t - n, candidates.index(t)))


def _blocked_conv_output(low: Lowering, k: Kernel, rq: Optional[Node], acc, ct, lanes: int,
                         out_shape: tuple, acc_bits: int):
    """The NCHW output of a conv whose accumulators are blocked as (N, O/L, OH, OWx, L):
    accumulator + the folded constant, wrapped to acc_bits, then the fused requantize."""
    finish = _requant_epilogue(low, k, rq, 4) if rq is not None else None

    def out_fn(b, oc, i, j):
        v = _mac_finish(acc[b, oc // lanes, i, j, oc % lanes] + ct[oc], acc_bits, False)
        return finish(v, (b, oc, i, j)) if finish else v
    return te.compute(out_shape, out_fn, name="out")


def _mac_epilogue(low: Lowering, k: Kernel, node: Node, rq: Optional[Node], ct, channel: int,
                  rank: int, index=None):
    """fn(int32 sum, *position) -> the stored output of a hand-written MAC kernel: + the folded
    constant `ct` (per channel along `channel`; None: none), wrapped to acc_bits, then the
    fused requantize. `index(*position)` maps the kernel's own position to the output index
    (default: they are the same)."""
    finish = _requant_epilogue(low, k, rq, rank) if rq is not None else None
    acc_bits = node.attrs["acc_bits"]

    def fn(v, *pos):
        idx = tuple(index(*pos)) if index is not None else pos
        if ct is not None:
            v = v + k.read(ct, idx[channel], "int32")
        v = _mac_finish(v, acc_bits, False)
        return finish(v, idx) if finish else v
    return fn


def _mac_dtype(rq: Optional[Node]) -> str:
    return tvm_dtype(rq.attrs["dtype"]) if rq is not None else "int32"


def _fused_extern(k: Kernel, inputs: list, tables: list, out_shape: tuple, out_dtype: str,
                  body):
    """te.extern of a hand-written MAC kernel that writes the op's output itself: its epilogue
    reads the kernel's tables (folded constant, requantize multipliers) from buffers, so
    `body(*input buffers, out buffer)` is built while the tables are bound (Kernel.read)."""
    srcs = list(inputs) + list(tables)
    # te.extern wants buffers that share the tensors' shape objects
    bufs = [tir.decl_buffer(t.shape, t.dtype, f"in{i}") for i, t in enumerate(srcs)]
    ob = tir.decl_buffer(tuple(int(d) for d in out_shape), out_dtype, "out")

    def fcompute(ins, outs):
        k.bound = list(zip(tables, ins[len(inputs):]))
        try:
            return body(*ins[:len(inputs)], outs[0])
        finally:
            k.bound = []
    return te.extern([ob.shape], srcs, fcompute, in_buffers=bufs, out_buffers=[ob], name="gemm")


def _lower_qconv2d_packed(low: Lowering, node: Node, rq: Optional[Node], wc: np.ndarray,
                          const: np.ndarray, zx: int):
    """qconv2d (groups = 1) with output channels in the vector lanes (NCHW[x]c-style).

    pad:  x widened to int16, padded with zx, channel pairs adjacent: (N, C/2, Hp, Wx, 2)
    acc:  (N, O/L, OH, OWx, L) int32, L output channels in the vector lanes; OWx rounds the
          output width up to the register tile, and the extra columns are never read
    out:  acc + the folded constant, then the requantize epilogue, in NCHW."""
    x = node.inputs[0]
    a = node.attrs
    lanes = _mac_lanes(low)
    n_, c, h, wd = low.shape(x)
    o, _, kh, kw = wc.shape
    out_shape = low.shape(node.output)
    _, _, oh, ow = out_shape
    sh, sw = a["stride"]
    dh, dw = a["dilation"]
    top, left, bottom, right = a["padding"]
    obi = 2 if o > lanes else 1
    jt = _tile_width(ow)
    owx = -(-ow // jt) * jt
    hp = h + top + bottom
    wx = max(wd + left + right, (owx - 1) * sw + (kw - 1) * dw + 1)
    cp = -(-c // 2)
    wp = _pack_conv(wc, lanes, obi)
    ob = wp.shape[0]

    k = low.kernel(node, "+requantize" if rq is not None else "")
    xt = k.value(x, "x")
    wt = k.input(low.param(f"{node.inputs[1].name}.packed", wp), wp.shape, "int16", "w")
    ct = k.input(low.param(f"{node.name}.const", const.astype("int32")), (o,), "int32", "c")
    zx16 = tir.const(zx, "int16")
    pad = te.compute(
        (n_, cp, hp, wx, 2),
        lambda b, p, i, j, t: tir.if_then_else(
            tir.all(i >= top, i < top + h, j >= left, j < left + wd),
            xt[b, tir.min(p * 2 + t, c - 1), i - top, j - left].astype("int16"), zx16),
        name="pad")
    rc = te.reduce_axis((0, cp), "rc")
    rkh = te.reduce_axis((0, kh), "rkh")
    rkw = te.reduce_axis((0, kw), "rkw")
    rt = te.reduce_axis((0, 2), "rt")
    acc = te.compute(
        (n_, ob, oh, owx, lanes),
        lambda b, q, i, j, l: te.sum(
            pad[b, rc, i * sh + rkh * dh, j * sw + rkw * dw, rt].astype("int32")
            * wt[q, rc, rkh, rkw, rt, l].astype("int32"), axis=[rc, rkh, rkw, rt]), name="acc")
    out = _blocked_conv_output(low, k, rq, acc, ct, lanes, out_shape, a["acc_bits"])
    return k.finish(out, "conv2d_packed", {"lanes": lanes, "obi": obi, "jt": jt})


def _pack_conv(wc: np.ndarray, lanes: int, block: int) -> np.ndarray:
    """(O, C, KH, KW) -> (OB, ceil(C/2), KH, KW, 2, L): for each pair of input channels at one
    kernel tap, two vectors of L output channels (contiguous loads); a zero channel after an
    odd C."""
    o, c, kh, kw = wc.shape
    cp = -(-c // 2)
    even = np.zeros((o, 2 * cp, kh, kw), dtype=wc.dtype)
    even[:, :c] = wc
    wp = _pack_pairs(even.transpose(0, 2, 3, 1).reshape(o, kh * kw * 2 * cp), lanes, block)
    return np.ascontiguousarray(
        wp.reshape(wp.shape[0], kh, kw, cp, lanes, 2).transpose(0, 3, 1, 2, 5, 4))


#: qlinear / qmatmul run the packed vpmaddwd GEMM (schedules.pmadd_gemm) when the bounds allow;
#: False selects the row-vectorised dense kernel (kept for comparison and as a fallback).
PMADD_GEMM = True
#: Packed convs run the vpmaddwd kernel (schedules.pmadd_conv); False selects the older
#: vpmulld packed kernel (kept for comparison and as a fallback).
PMADD_CONV = True
#: Depthwise convs with a column stride of 1 or 2 run the pixel-lanes kernel
#: (schedules.depthwise_rows) on x86; False selects the plain row-vectorised kernel.
DEPTHWISE_ROWS = True
#: 1x1 stride-1 convs on large maps run the pixel-lanes kernel (see POINTWISE_PIXELS);
#: False sends them to pmadd_conv.
POINTWISE = True


def _pack_conv_pmadd(wc: np.ndarray, lanes: int, block: int) -> np.ndarray:
    """(O, C, KH, KW) -> (OB, ceil(C/2), KH, KW, 2*L) int16: for each pair of input channels
    at one kernel tap, L output channels with their two weights adjacent (one vpmaddwd
    operand); a zero channel after an odd C, zero channels past O."""
    o, c, kh, kw = wc.shape
    cp = -(-c // 2)
    even = np.zeros((o, 2 * cp, kh, kw), dtype=wc.dtype)
    even[:, :c] = wc
    pairs = even.reshape(o, cp, 2, kh, kw).transpose(0, 1, 3, 4, 2).reshape(o, -1)
    wp = _pack_pairs(pairs, lanes, block)
    return np.ascontiguousarray(wp.reshape(wp.shape[0], cp, kh, kw, 2 * lanes))


def _lower_qconv2d_pmadd(low: Lowering, node: Node, rq: Optional[Node], wc: np.ndarray,
                         const: np.ndarray, zx: int):
    """qconv2d (groups = 1) on the vpmaddwd direct-conv kernel (schedules.pmadd_conv).

    pad:  x padded with zx, two channels per int32 word: (N, C/2, Hp, Wx)
    gemm: per output row, int32 sums with L output channels in the vector lanes, then +
          the folded constant and the requantize epilogue into the NCHW output."""
    from .schedules import pmadd_conv
    x = node.inputs[0]
    a = node.attrs
    lanes = _mac_lanes(low)
    n_, c, h, wd = low.shape(x)
    o, _, kh, kw = wc.shape
    out_shape = low.shape(node.output)
    _, _, oh, ow = out_shape
    sh, sw = a["stride"]
    dh, dw = a["dilation"]
    top, left, bottom, right = a["padding"]
    # obi x jt accumulators + obi weight vectors + a broadcast in the 16 vector registers
    obi = 2 if o > lanes else 1
    jt = _tile_width(ow, (6, 5, 4, 3, 2) if obi == 2 else (12, 8, 6, 7, 5, 4, 3, 2))
    owx = -(-ow // jt) * jt
    hp = h + top + bottom
    wx = max(wd + left + right, (owx - 1) * sw + (kw - 1) * dw + 1)
    cp = -(-c // 2)
    wp = _pack_conv_pmadd(wc, lanes, obi)

    k = low.kernel(node, "+requantize" if rq is not None else "")
    xt = k.value(x, "x")
    wt = k.input(low.param(f"{node.inputs[1].name}.packed", wp), wp.shape, "int16", "w")
    n_in = len(k.placeholders)
    ct = k.input(low.param(f"{node.name}.const", const.astype("int32")), (o,), "int32", "c")
    epilogue = _mac_epilogue(low, k, node, rq, ct, 1, 4)
    tables = k.placeholders[n_in:]
    zpair = (zx & 0xFFFF) | ((zx & 0xFFFF) << 16)
    zpair = tir.const(zpair - (1 << 32) if zpair >= 1 << 31 else zpair, "int32")

    def pad_fn(b, p, i, j):
        inside = tir.all(i >= top, i < top + h, j >= left, j < left + wd)
        ii, jj = tir.min(tir.max(i - top, 0), h - 1), tir.min(tir.max(j - left, 0), wd - 1)
        # the odd channel past an odd C meets zero weights: any value will do
        word = _pair_word(xt[b, p * 2, ii, jj], xt[b, tir.min(p * 2 + 1, c - 1), ii, jj])
        return tir.if_then_else(inside, word, zpair)
    pad = te.compute((n_, cp, hp, wx), pad_fn, name="pad")
    out = _fused_extern(k, [pad, wt], tables, out_shape, _mac_dtype(rq),
                        lambda xp, wb, ob_: pmadd_conv(xp, wb, ob_, obi, jt, lanes, (sh, sw),
                                                       (dh, dw), o, ow, epilogue))
    return k.finish(out, "conv_extern", {"lanes": lanes})


#: 1x1 stride-1 convs run the pixel-lanes kernel (schedules.pmadd_pointwise) from this many
#: pixels on, and from POINTWISE_MIN_PIXELS when they widen (C <= O); otherwise the
#: channel-lanes pmadd_conv measured faster (on MobileNetV2's narrowing 14x14 and 7x7 convs,
#: 384->64 and 960->160). Small maps waste lanes on the last tile and have few tiles to share
#: between threads; with many input channels the multiply loop, where pmadd_conv reuses each
#: load more, outweighs the epilogue.
POINTWISE_PIXELS = 784
POINTWISE_MIN_PIXELS = 49


def _lower_qconv2d_pointwise(low: Lowering, node: Node, rq: Optional[Node], wc: np.ndarray,
                             const: np.ndarray, zx: int):
    """A 1x1, stride-1, unpadded qconv2d on the pixel-lanes vpmaddwd kernel
    (schedules.pmadd_pointwise).

    pairs: x as (N, C/2, Px) int32, two channels per word, pixels rounded up to whole tiles
    gemm:  per tile of pixels, int32 sums of L pixels per vector for blocks of output
           channels, then + the folded constant and the requantize epilogue into NCHW."""
    from .schedules import pmadd_pointwise
    x = node.inputs[0]
    lanes = _mac_lanes(low)
    n_, c, h, wd = low.shape(x)
    o = wc.shape[0]
    out_shape = low.shape(node.output)
    # ot x pv accumulators + pv input vectors + a broadcast in the 16 vector registers
    ot, pv = (4 if o % 6 and o % 4 == 0 else 6), 2
    tile = pv * lanes
    px = -(-(h * wd) // tile) * tile
    cp = -(-c // 2)
    ob = -(-o // ot) * ot
    pairs16 = np.zeros((ob, 2 * cp), dtype=np.int16)
    pairs16[:o, :c] = wc[:, :, 0, 0]
    # the two int16 weights of a pair as one int32 word (little-endian: the even channel low)
    wq = np.ascontiguousarray(pairs16).view(np.int32).reshape(ob, cp)

    k = low.kernel(node, "+requantize" if rq is not None else "")
    xt = k.value(x, "x")
    wt = k.input(low.param(f"{node.inputs[1].name}.pairs", wq), wq.shape, "int32", "w")
    n_in = len(k.placeholders)
    ct = k.input(low.param(f"{node.name}.const", const.astype("int32")), (o,), "int32", "c")
    epilogue = _mac_epilogue(low, k, node, rq, ct, 1, 4,
                             index=lambda b, oc, p: (b, oc, p // wd, p % wd))
    tables = k.placeholders[n_in:]

    def pair_fn(b, q, p):
        pp = tir.min(p, h * wd - 1)   # pixels past the end: any value, never stored
        i, j = pp // wd, pp % wd
        # the odd channel past an odd C meets zero weights: any value will do
        return _pair_word(xt[b, q * 2, i, j], xt[b, tir.min(q * 2 + 1, c - 1), i, j])
    pairs = te.compute((n_, cp, px), pair_fn, name="pad")
    out = _fused_extern(k, [pairs, wt], tables, out_shape, _mac_dtype(rq),
                        lambda xq, wb, ob_: pmadd_pointwise(xq, wb, ob_, ot, pv, lanes, o,
                                                            epilogue))
    return k.finish(out, "conv_extern", {"lanes": lanes})


def _lower_depthwise_rows(low: Lowering, node: Node, rq: Optional[Node], wc: np.ndarray,
                          const: np.ndarray, zx: int):
    """Depthwise qconv2d with output pixels in the vector lanes (schedules.depthwise_rows);
    x86 with an int32 accumulator and a column stride of 1 or 2. One kernel: per channel,
    the padded plane, then int32 sums of L pixels per vector, + the folded constant, and the
    requantize epilogue into the NCHW output."""
    from .schedules import depthwise_rows
    x = node.inputs[0]
    a = node.attrs
    lanes = _mac_lanes(low)
    out_shape = low.shape(node.output)
    ow = out_shape[3]
    jt = _tile_width(-(-ow // lanes), (7, 6, 5, 4, 3, 2))  # vectors per register tile
    lo, hi = int_range(int_bits(x.dtype), is_signed(x.dtype))
    xdt = "int16" if _fits_i16(min(lo, zx), max(hi, zx)) else "int32"
    wl = np.ascontiguousarray(wc[:, 0].astype("int32"))

    k = low.kernel(node, "+requantize" if rq is not None else "")
    xt = k.value(x, "x")
    wt = k.input(low.param(f"{node.inputs[1].name}.rows", wl), wl.shape, "int32", "w")
    n_in = len(k.placeholders)
    ct = k.input(low.param(f"{node.name}.const", const.astype("int32")), (out_shape[1],),
                 "int32", "c")
    epilogue = _mac_epilogue(low, k, node, rq, ct, 1, 4)
    tables = k.placeholders[n_in:]
    out = _fused_extern(k, [xt, wt], tables, out_shape, _mac_dtype(rq),
                        lambda xb, wb, ob_: depthwise_rows(
                            xb, wb, ob_, jt, lanes, a["stride"], a["dilation"], a["padding"],
                            zx, xdt, epilogue))
    return k.finish(out, "conv_extern", {"lanes": lanes})


@tvm_op("qconv2d")
def lower_qconv2d(low: Lowering, node: Node, rq: Optional[Node]):
    x, w, bias = node.inputs[0], node.inputs[1], node.input(2)
    a = node.attrs
    n_, c, h, wd = low.shape(x)
    o, cg, kh, kw = low.shape(w)
    out_shape = low.shape(node.output)
    _, _, oh, ow = out_shape
    groups = a["groups"]
    sh, sw = a["stride"]
    dh, dw = a["dilation"]
    top, left, bottom, right = a["padding"]
    zx = low.zero_point(x, node)
    wc = _centred_weight(node, w)
    # Padding taps hold zx, so they contribute zx (w - zw) to the sum and cancel in the constant.
    const, acc_dt = _folded_constant(node, x, wc, bias, zx)
    from .cuda_kernels import try_qconv2d  # CUDA builds: the dp4a kernel where it is exact
    if (dp4a := try_qconv2d(low, node, rq, wc, const, zx, acc_dt)) is not None:
        return dp4a
    if groups == 1 and _packable(low, x, wc, zx, acc_dt):
        if POINTWISE and (kh, kw, sh, sw) == (1, 1, 1, 1) and not any(a["padding"]) \
                and _mac_lanes(low) == 8 and (h * wd >= POINTWISE_PIXELS or (
                    h * wd >= POINTWISE_MIN_PIXELS and c <= o)):
            return _lower_qconv2d_pointwise(low, node, rq, wc, const, zx)
        if PMADD_CONV:
            return _lower_qconv2d_pmadd(low, node, rq, wc, const, zx)
        return _lower_qconv2d_packed(low, node, rq, wc, const, zx)

    # rows of at most one vector (7x7 maps) ran faster on the plain kernel
    # (benchmarks/tvm_kernels.py: 960 channels at 7x7)
    if DEPTHWISE_ROWS and groups == c == o and cg == 1 and acc_dt == "int32" \
            and _mac_lanes(low) and sw in (1, 2) and ow > _mac_lanes(low):
        return _lower_depthwise_rows(low, node, rq, wc, const, zx)

    k = low.kernel(node, "+requantize" if rq is not None else "")
    xt = k.value(x, "x")
    wdt = _narrowest(wc)
    wt = k.input(low.param(f"{w.name}.centred", wc.astype(wdt)), wc.shape, wdt, "w")
    ct = k.input(low.param(f"{node.name}.const", const.astype(acc_dt)), (o,), acc_dt, "c")
    xdt = tvm_dtype(x.dtype)
    hp, wp = h + top + bottom, wd + left + right
    if top or left or bottom or right:
        pad = te.compute(
            (n_, c, hp, wp),
            lambda b, ch, i, j: tir.if_then_else(
                tir.all(i >= top, i < top + h, j >= left, j < left + wd),
                xt[b, ch, i - top, j - left], tir.const(zx, xdt)), name="pad")
    else:
        pad = xt
    opg = o // groups
    ric = te.reduce_axis((0, cg), "ric")
    rkh = te.reduce_axis((0, kh), "rkh")
    rkw = te.reduce_axis((0, kw), "rkw")
    acc = te.compute(
        (n_, o, oh, ow),
        lambda b, oc, i, j: te.sum(
            pad[b, (oc // opg) * cg + ric, i * sh + rkh * dh, j * sw + rkw * dw].astype(acc_dt)
            * wt[oc, ric, rkh, rkw].astype(acc_dt), axis=[ric, rkh, rkw]), name="acc")
    finish = _requant_epilogue(low, k, rq, 4) if rq is not None else None

    def out_fn(b, oc, i, j):
        v = _mac_finish(acc[b, oc, i, j] + ct[oc], a["acc_bits"], acc_dt == "int64")
        return finish(v, (b, oc, i, j)) if finish else v.astype("int32")
    out = te.compute(out_shape, out_fn, name="out")
    kind = "depthwise" if groups == c and cg == 1 else "conv2d"
    return k.finish(out, kind, {"groups": groups, "oc": o, "has_pad": pad is not xt})


# ---------------------------------------------------------------------------------- pmaddwd GEMMs

def _gemm_tiles(rows: int, ob: int) -> tuple[int, int]:
    """(rows per task, lane groups per register block) of the pmaddwd GEMM: 5 x 2 vectors
    (10 accumulators, 2 weight vectors and a broadcast in the 16 ymm registers) measured
    fastest; fewer rows when there are fewer."""
    return min(rows, 5), (2 if ob >= 2 else 1)


def _unravel(flat, dims: tuple) -> list:
    """Row-major indices into `dims` of a flat index expression."""
    out, stride = [], int(np.prod(dims, dtype=np.int64)) if dims else 1
    for d in dims:
        stride //= d
        out.append(flat // stride % d if stride > 1 else flat % d)
    return out


def _pack_x_pairs(src, groups: int, rows: int, kdim: int, mx: int, name: str = "pack_x"):
    """(groups, mx, ceil(kdim/2)) int32: src(g, m, k) (an int16 value) in pairs, k even in the
    low half-word; rows past `rows` and the step past an odd kdim are 0."""
    kp = -(-kdim // 2)

    def fn(g, m, p):
        hi = tir.if_then_else(p * 2 + 1 < kdim,
                              src(g, tir.min(m, rows - 1), tir.min(p * 2 + 1, kdim - 1))
                              .astype("int32"), tir.const(0, "int32"))
        word = _pair_word(src(g, tir.min(m, rows - 1), p * 2), hi)
        return tir.if_then_else(m < rows, word, tir.const(0, "int32"))
    return te.compute((groups, mx, kp), fn, name=name)


def _pmadd_gemm(low: Lowering, k: Kernel, xp, wp, mt: int, obi: int, rows: int, cols: int,
                out_shape: tuple, out_dtype: str, tables: list, epilogue):
    """The op's output from the pmaddwd kernel (schedules.pmadd_gemm) on the packed x pairs
    `xp` (groups, rows padded to mt, kp) and weights `wp` (1 or groups, ob, kp, 2*lanes):
    out (groups, rows, cols) row-major = epilogue(sum, g, m, o)."""
    from .schedules import pmadd_gemm
    lanes = _mac_lanes(low)
    return _fused_extern(k, [xp, wp], tables, out_shape, out_dtype,
                         lambda xb, wb, ob_: pmadd_gemm(xb, wb, ob_, mt, obi, lanes, rows, cols,
                                                        epilogue))


def _lower_qlinear_packed(low: Lowering, node: Node, rq: Optional[Node], wc: np.ndarray,
                          const: np.ndarray):
    """qlinear on the pmaddwd GEMM: the weights repacked at build time to (O/L, K/2, L, 2)
    int16, the rows of x packed in int16 pairs, and the requantize epilogue reading the
    (rows, O) accumulator. The sum is x (w - zw) with the input zero point folded into
    `const`, as in the plain kernel."""
    x = node.inputs[0]
    lanes = _mac_lanes(low)
    xs = low.shape(x)
    lead, kdim = tuple(xs[:-1]), xs[-1]
    rows = int(np.prod(lead, dtype=np.int64)) if lead else 1
    o = wc.shape[0]
    out_shape = low.shape(node.output)
    ob = -(-o // lanes)
    mt, obi = _gemm_tiles(rows, ob)
    wp = _pack_pairs(wc, lanes, obi)
    ob, kp = wp.shape[0], wp.shape[1]
    mx = -(-rows // mt) * mt

    k = low.kernel(node, "+requantize" if rq is not None else "")
    xt = k.value(x, "x")
    wpk = wp.reshape(1, ob, kp, 2 * lanes)
    wt = k.input(low.param(f"{node.inputs[1].name}.packed", wpk), wpk.shape, "int16", "w")
    n_in = len(k.placeholders)
    ct = k.input(low.param(f"{node.name}.const", const.astype("int32")), (o,), "int32", "c")
    rank = len(out_shape)
    epilogue = _mac_epilogue(low, k, node, rq, ct, rank - 1, rank,
                             lambda g, m, oc: (*_unravel(m, lead), oc))
    tables = k.placeholders[n_in:]
    xp = _pack_x_pairs(lambda g, m, kk: xt(*_unravel(m, lead), kk), 1, rows, kdim, mx)
    out = _pmadd_gemm(low, k, xp, wt, mt, obi, rows, o, out_shape, _mac_dtype(rq), tables,
                      epilogue)
    return k.finish(out, "gemm_packed", {"lanes": lanes})


def _lower_qmatmul_packed(low: Lowering, node: Node, rq: Optional[Node], za: int, zb: int):
    """qmatmul of two activations on the pmaddwd GEMM: both operands centred to int16 while
    they are packed (a in row pairs, b per group as (N/L, K/2, L, 2)), one task per `mt`
    rows of one leading index (batch x head)."""
    a_v, b_v = node.inputs
    lanes = _mac_lanes(low)
    ash, bsh = low.shape(a_v), low.shape(b_v)
    out_shape = low.shape(node.output)
    lead = tuple(out_shape[:-2])
    rows, n, kdim = out_shape[-2], out_shape[-1], ash[-1]
    groups = int(np.prod(lead, dtype=np.int64)) if lead else 1
    b_shared = all(d == 1 for d in bsh[:-2])
    ob = -(-n // lanes)
    mt, obi = _gemm_tiles(rows, ob)
    ob = -(-ob // obi) * obi
    kp = -(-kdim // 2)
    mx = -(-rows // mt) * mt
    a_lead = _broadcast_index(ash[:-2], len(lead))
    b_lead = _broadcast_index(bsh[:-2], len(lead))

    k = low.kernel(node, "+requantize" if rq is not None else "")
    at_, bt = k.value(a_v, "a"), k.value(b_v, "b")
    zat, zbt = tir.const(za, "int32"), tir.const(zb, "int32")
    ap = _pack_x_pairs(lambda g, m, kk: at_(*a_lead(_unravel(g, lead)), m, kk).astype("int32")
                       - zat, groups, rows, kdim, mx, "pack_a")

    def b_fn(g, q, p, t):
        col, kk = q * lanes + t // 2, p * 2 + t % 2
        v = bt(*b_lead(_unravel(g, lead)), tir.min(kk, kdim - 1), tir.min(col, n - 1))
        return tir.if_then_else(tir.all(col < n, kk < kdim),
                                (v.astype("int32") - zbt).astype("int16"),
                                tir.const(0, "int16"))
    bp = te.compute((1 if b_shared else groups, ob, kp, 2 * lanes), b_fn, name="pack_b")
    rank = len(out_shape)
    n_in = len(k.placeholders)
    epilogue = _mac_epilogue(low, k, node, rq, None, rank - 1, rank,
                             lambda g, m, col: (*_unravel(g, lead), m, col))
    out = _pmadd_gemm(low, k, ap, bp, mt, obi, rows, n, out_shape, _mac_dtype(rq),
                      k.placeholders[n_in:], epilogue)
    return k.finish(out, "gemm_packed", {"lanes": lanes})


@tvm_op("qlinear")
def lower_qlinear(low: Lowering, node: Node, rq: Optional[Node]):
    x, w, bias = node.inputs[0], node.inputs[1], node.input(2)
    xs = low.shape(x)
    o, kdim = low.shape(w)
    out_shape = low.shape(node.output)
    zx = low.zero_point(x, node)
    wc = _centred_weight(node, w)
    const, acc_dt = _folded_constant(node, x, wc, bias, zx)
    from .cuda_kernels import try_qlinear  # CUDA builds: the dp4a kernel where it is exact
    if (dp4a := try_qlinear(low, node, rq, wc, const, zx, acc_dt)) is not None:
        return dp4a
    if PMADD_GEMM and _packable(low, x, wc, zx, acc_dt):
        return _lower_qlinear_packed(low, node, rq, wc, const)
    k = low.kernel(node, "+requantize" if rq is not None else "")
    xt = k.value(x, "x")
    wdt = _narrowest(wc)
    # stored (in, out): the output channels are contiguous, so the schedule vectorises them
    wT = np.ascontiguousarray(wc.T)
    wt = k.input(low.param(f"{w.name}.centred_t", wT.astype(wdt)), wT.shape, wdt, "w")
    ct = k.input(low.param(f"{node.name}.const", const.astype(acc_dt)), (o,), acc_dt, "c")
    rk = te.reduce_axis((0, kdim), "rk")
    acc = te.compute(out_shape, lambda *idx: te.sum(
        xt(*idx[:-1], rk).astype(acc_dt) * wt[rk, idx[-1]].astype(acc_dt), axis=rk), name="acc")
    rank = len(out_shape)
    finish = _requant_epilogue(low, k, rq, rank) if rq is not None else None

    def out_fn(*idx):
        v = _mac_finish(acc(*idx) + ct[idx[-1]], node.attrs["acc_bits"], acc_dt == "int64")
        return finish(v, idx) if finish else v.astype("int32")
    return k.finish(te.compute(out_shape, out_fn, name="out"), "dense", {"o": o, "k": kdim})


@tvm_op("qmatmul")
def lower_qmatmul(low: Lowering, node: Node, rq: Optional[Node]):
    a_v, b_v = node.inputs
    ash, bsh = low.shape(a_v), low.shape(b_v)
    out_shape = low.shape(node.output)
    za, zb = low.zero_point(a_v, node), low.zero_point(b_v, node)
    if len(ash) < 2 or len(bsh) < 2:
        raise TVMBackendError(f"node %{node.name} (qmatmul): the TVM backend takes operands of "
                              f"rank >= 2, got {ash} and {bsh}")
    kdim = ash[-1]
    ra = max(abs(v - za) for v in int_range(int_bits(a_v.dtype), is_signed(a_v.dtype)))
    rb = max(abs(v - zb) for v in int_range(int_bits(b_v.dtype), is_signed(b_v.dtype)))
    wide = not _fits32(kdim * ra * rb)
    acc_dt = "int64" if wide else "int32"
    # packed: both centred operands are int16 values, and the int32 bound covers every pair sum
    if PMADD_GEMM and _mac_lanes(low) and not wide and max(ra, rb) < (1 << 15):
        return _lower_qmatmul_packed(low, node, rq, za, zb)
    k = low.kernel(node, "+requantize" if rq is not None else "")
    at_, bt = k.value(a_v, "a"), k.value(b_v, "b")
    rank = len(out_shape)
    a_lead = _broadcast_index(ash[:-2], rank - 2)
    b_lead = _broadcast_index(bsh[:-2], rank - 2)
    rk = te.reduce_axis((0, kdim), "rk")
    acc = te.compute(out_shape, lambda *idx: te.sum(
        (at_(*a_lead(idx[:-2]), idx[-2], rk).astype(acc_dt) - tir.const(za, acc_dt))
        * (bt(*b_lead(idx[:-2]), rk, idx[-1]).astype(acc_dt) - tir.const(zb, acc_dt)),
        axis=rk), name="acc")
    finish = _requant_epilogue(low, k, rq, rank) if rq is not None else None

    def out_fn(*idx):
        v = _mac_finish(acc(*idx), node.attrs["acc_bits"], wide)
        return finish(v, idx) if finish else v.astype("int32")
    return k.finish(te.compute(out_shape, out_fn, name="out"), "matmul", {})


# ---------------------------------------------------------------------------------- rescaling

def _zero_point_at(k: Kernel, v: Value, node: Node, rank: int, what: str):
    """fn(index) -> int64 zero point of `v`: a folded constant, or a per-channel table read
    along the params' own axis (per-channel activations)."""
    if v.quant is None:
        raise TVMBackendError(f"node %{node.name} ({node.op}): value %{v.name} has no "
                              f"QuantParams")
    zp = k.table(what, v.quant.zero_point)
    if isinstance(zp, int):
        return lambda idx: i64(zp)
    axis = (v.quant.axis or 0) % max(rank, 1)
    return lambda idx: k.read(zp, idx[axis])


@tvm_op("requantize")
def lower_requantize(low: Lowering, node: Node, _rq=None):
    """The standalone requantize: multipliers per channel along any axis, per-channel input and
    output zero points (each along its own params' axis), any integer output dtype.

    Runs in int32: x - zx is the accumulator intmath.requantize checks against int32, and the
    zero points of an (at most 32-bit) value fit int32, so the subtraction cannot overflow on
    any input the interpreter accepts; the clamp widens only where clamp bounds minus zy leave
    int32 (arith.offset_clamp)."""
    x = node.inputs[0]
    a = node.attrs
    shape = low.shape(x)
    rank = len(shape)
    k = low.kernel(node)
    axis = a["axis"] % rank
    m = k.table("multiplier", a["multiplier"], "int32")
    s = k.table("shift", a["shift"], "int32")

    def zero_point(v: Value, what: str):
        """(fn(index) -> the zero point as an int or int32 expression, (min, max) of its
        values): a folded constant, or an int32 table read along the params' own axis."""
        if v.quant is None:
            raise TVMBackendError(f"node %{node.name} (requantize): value %{v.name} has no "
                                  f"QuantParams")
        zps = [int(z) for z in v.quant.zero_point]
        if not arith.fits32(min(zps), max(zps)):
            raise TVMBackendError(f"node %{node.name} (requantize): zero points of %{v.name} "
                                  f"span [{min(zps)}, {max(zps)}]; expected int32 values")
        zp = k.table(what, zps, "int32")
        if isinstance(zp, int):
            return (lambda idx: zp), (zp, zp)
        zaxis = (v.quant.axis or 0) % max(rank, 1)
        return (lambda idx: arith.entry32(zp, idx[zaxis])), (min(zps), max(zps))
    zx, zx_range = zero_point(x, "zx")
    zy, zy_range = zero_point(node.output, "zy")
    dtype = tvm_dtype(a["dtype"])
    # one multiplier and zero point: a flat view (free reshapes), whole vectors of
    # contiguous elements whatever the innermost axis is
    flat = rank > 1 and low.schedule is not None and isinstance(m, int) \
        and isinstance(s, int) and zx_range[0] == zx_range[1] and zy_range[0] == zy_range[1]
    view = (int(np.prod(shape)),) if flat else shape
    xt = k.input(low.bb.emit(relax.op.reshape(low.expr(x), view)) if flat else low.expr(x),
                 view, tvm_dtype(x.dtype))

    def fn(*idx):
        xc = arith.i32(xt(*idx))
        z = zx(idx)
        if not (isinstance(z, int) and z == 0):
            xc = xc - z
        c = idx[axis] if not flat else 0
        y = arith.requantize32(xc, arith.entry32(m, c), arith.entry32(s, c), a["rounding"])
        return arith.offset_clamp(y, zy(idx), a["clamp_min"], a["clamp_max"], dtype, zy_range)
    out = k.finish(te.compute(view, fn, name="out"))
    return low.bb.emit(relax.op.reshape(out, shape)) if view != shape else out if flat else out


def _binary_inputs(low: Lowering, node: Node, k: Kernel):
    """(kernel shape, centred a at a kernel index, centred b at a kernel index, fn(kernel
    result) -> the op's output), the centred values as int32 expressions: a and b are codes
    of at most 16 bits and each zero point lies in its dtype's range, so q - z fits int32.

    Without broadcasting the kernel runs on flat views of the tensors (free reshapes): its
    one loop is split into whole vectors of contiguous elements, where a 4-D loop nest with
    rows that are not a whole number of vectors would gather its operands."""
    a_v, b_v = node.inputs
    out_shape = low.shape(node.output)
    for v in (a_v, b_v):
        z = low.zero_point(v, node)
        lo, hi = int_range(int_bits(v.dtype), is_signed(v.dtype))
        if int_bits(v.dtype) > 16 or not arith.fits32(lo - z, hi - z):
            raise TVMBackendError(f"node %{node.name} ({node.op}): input %{v.name} ({v.dtype}, "
                                  f"zero point {z}) is not a centred code of at most 16 bits")
    za, zb = low.zero_point(a_v, node), low.zero_point(b_v, node)
    if low.shape(a_v) == out_shape == low.shape(b_v) and len(out_shape) > 1 \
            and low.schedule is not None:  # the flat views serve the CPU schedule only
        flat = (int(np.prod(out_shape)),)
        at_, bt = (k.input(low.bb.emit(relax.op.reshape(low.expr(v), flat)), flat,
                           tvm_dtype(v.dtype), nm) for v, nm in ((a_v, "a"), (b_v, "b")))
        shape, ai, bi = flat, (lambda idx: idx), (lambda idx: idx)

        def done(result):
            return low.bb.emit(relax.op.reshape(result, out_shape))
    else:
        rank = len(out_shape)
        at_, bt = k.value(a_v, "a"), k.value(b_v, "b")
        ai, bi = _broadcast_index(low.shape(a_v), rank), _broadcast_index(low.shape(b_v), rank)
        shape = out_shape

        def done(result):
            return result

    def centred(t, index, z):
        return lambda idx: arith.i32(t(*index(idx))) - z if z else arith.i32(t(*index(idx)))
    return shape, centred(at_, ai, za), centred(bt, bi, zb), done


def _lower_qaddsub(low: Lowering, node: Node, sign: int):
    """qadd / qsub in int32: (q - z) << left_shift and sa +- sb are inputs of requantizations
    that intmath checks against int32, so on every input the interpreter accepts nothing
    overflows; the three rescalings are one expression (no int64 stages in memory)."""
    a = node.attrs
    k = low.kernel(node)
    shape, ac, bc, done = _binary_inputs(low, node, k)
    zy = low.zero_point(node.output, node)
    r = a["rounding"]
    left = tir.const(a["left_shift"], "int32")

    def out(raw):
        return arith.requantize_clamp(raw, a["out_multiplier"], a["out_shift"], r, zy,
                                      a["clamp_min"], a["clamp_max"], tvm_dtype(a["dtype"]))

    def fn(*idx):
        sa = arith.requantize32(ac(idx) << left, a["a_multiplier"], a["a_shift"], r)
        sb = arith.requantize32(bc(idx) << left, a["b_multiplier"], a["b_shift"], r)
        # each rescaling is bound once (arith.let): nested, the three formulas copy their
        # operands into every use
        return arith.let(sa + sb if sign > 0 else sa - sb, out, "raw")
    return done(k.finish(te.compute(shape, fn, name="out")))


@tvm_op("qadd")
def lower_qadd(low: Lowering, node: Node, _rq=None):
    return _lower_qaddsub(low, node, +1)


@tvm_op("qsub")
def lower_qsub(low: Lowering, node: Node, _rq=None):
    return _lower_qaddsub(low, node, -1)


@tvm_op("qmul")
def lower_qmul(low: Lowering, node: Node, _rq=None):
    """qmul in int32: the product of the centred inputs is the accumulator intmath.requantize
    checks against int32."""
    a = node.attrs
    k = low.kernel(node)
    shape, ac, bc, done = _binary_inputs(low, node, k)
    zy = low.zero_point(node.output, node)

    def fn(*idx):
        return arith.requantize_clamp(ac(idx) * bc(idx), a["multiplier"], a["shift"],
                                      a["rounding"], zy, a["clamp_min"], a["clamp_max"],
                                      tvm_dtype(a["dtype"]))
    return done(k.finish(te.compute(shape, fn, name="out")))


@tvm_op("qprelu")
def lower_qprelu(low: Lowering, node: Node, _rq=None):
    """qprelu in int32. Both branches are computed for every element and one is selected, but
    the interpreter checks only the branch each element takes: the unselected one may hold
    any int32 bits (never UB: shifts and the int64 product are defined for every int32),
    except the slope product, which is formed in int64 and truncated unless its build-time
    bound fits int32."""
    x, slope = node.inputs
    a = node.attrs
    shape = low.shape(x)
    rank = len(shape)
    axis = a["axis"] % rank
    if not slope.is_constant or slope.data is None or slope.quant is None:
        raise TVMBackendError(f"node %{node.name} (qprelu): slope %{slope.name} must be a "
                              f"quantized constant")
    sc = (np.asarray(slope.data).astype(np.int64) - slope.quant.zero_point_array(1)).reshape(-1)
    k = low.kernel(node)
    zx, zy = low.zero_point(x, node), low.zero_point(node.output, node)
    lo, hi = int_range(int_bits(x.dtype), is_signed(x.dtype))
    if int_bits(x.dtype) > 16 or not arith.fits32(lo - zx, hi - zx) \
            or not arith.fits32(int(sc.min()), int(sc.max())):
        raise TVMBackendError(f"node %{node.name} (qprelu): input %{x.name} ({x.dtype}) and "
                              f"slope %{slope.name} must be centred codes of at most 16 bits")
    narrow = arith.fits32(-1, max(abs(lo - zx), abs(hi - zx)) * int(np.abs(sc).max()))
    slopes = k.table("slope", sc, "int32")
    nm = k.table("neg_multiplier", a["neg_multiplier"], "int32")
    ns = k.table("neg_shift", a["neg_shift"], "int32")
    r = a["rounding"]
    # a view with the channel axis alone between two flattened ones (free reshapes): the
    # rows of the inner one are longer than the innermost axis, so fewer scalar tails
    before, after = int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1:]))
    view = (before, shape[axis], after) if after > 1 else (before, shape[axis])
    if all(isinstance(t, int) for t in (slopes, nm, ns)):
        view = (int(np.prod(shape)),)
    if low.schedule is None:  # the views serve the CPU schedule only
        view = shape
    xt = k.input(low.bb.emit(relax.op.reshape(low.expr(x), view)) if view != shape
                 else low.expr(x), view, tvm_dtype(x.dtype))

    def fn(*idx):
        c = idx[axis] if view == shape else idx[1] if len(view) > 1 else 0
        xc = arith.i32(xt(*idx)) - zx if zx else arith.i32(xt(*idx))
        sl = arith.entry32(slopes, c)
        prod = xc * sl if narrow else arith.i32(i64(xc) * i64(sl))
        # one requantize of the selected branch's value, multiplier and shift: the same
        # integers as selecting between two requantized branches, at half the vector work
        # (both Select arms run in vector code)
        pos = xc >= tir.const(0, "int32")
        y = arith.requantize32(
            tir.Select(pos, xc, prod),
            tir.Select(pos, tir.const(a["pos_multiplier"], "int32"), arith.entry32(nm, c)),
            tir.Select(pos, tir.const(a["pos_shift"], "int32"), arith.entry32(ns, c)), r)
        return arith.offset_clamp(y, zy, a["clamp_min"], a["clamp_max"], tvm_dtype(a["dtype"]))
    out = k.finish(te.compute(view, fn, name="out"))
    return low.bb.emit(relax.op.reshape(out, shape)) if view != shape else out


@tvm_op("lut")
def lower_lut(low: Lowering, node: Node, _rq=None):
    x = node.inputs[0]
    q = x.quant
    qmin = q.qmin if q is not None else int(np.iinfo(tvm_dtype(x.dtype)).min)
    k = low.kernel(node)
    xt = k.value(x)
    dt = tvm_dtype(node.attrs["dtype"])
    table = np.asarray(node.attrs["table"], dtype=np.int64).astype(dt)
    tt = k.input(low.param(f"{node.name}.table", table), table.shape, dt, "table")
    out = te.compute(low.shape(x), lambda *idx: tt(xt(*idx).astype("int32") - qmin), name="out")
    return k.finish(out)


# ---------------------------------------------------------------------------------- pooling

def _window_input(xt, h: int, w: int, top: int, left: int, bottom: int, right: int,
                  pad_value, overrun_value):
    """x padded by the declared padding (pad_value) and any ceil_mode overrun (overrun_value)."""
    def fn(b, c, i, j):
        inside = tir.all(i >= top, i < top + h, j >= left, j < left + w)
        declared = tir.all(i < top + h + bottom, j < left + w + right)
        val = xt[b, c, tir.max(tir.min(i - top, h - 1), 0), tir.max(tir.min(j - left, w - 1), 0)]
        return tir.Select(inside, val, tir.Select(declared, pad_value, overrun_value))
    return fn


def _every_window_hits(n_out: int, n_in: int, k: int, stride: int, dilation: int,
                       before: int) -> bool:
    """Whether every pooling window along one axis holds at least one input position and
    the nearest edge position of each overrun tap lies inside its window: the window's taps
    are start + t*dilation, so with dilation 1 (contiguous windows) and a window that starts
    inside or ends inside the input, clamping a tap to the edge stays within the window."""
    if dilation != 1:
        return False
    for o in range(n_out):
        start = o * stride - before
        if start + k - 1 < 0 or start > n_in - 1:
            return False
    return True


@tvm_op("max_pool2d")
def lower_max_pool2d(low: Lowering, node: Node, _rq=None):
    x = node.inputs[0]
    a = node.attrs
    n_, c, h, w = low.shape(x)
    out_shape = low.shape(node.output)
    kh, kw = a["kernel"]
    sh, sw = pool_defs._stride(a["kernel"], a["stride"])
    dh, dw = a["dilation"]
    top, left, bottom, right = a["padding"]
    k = low.kernel(node)
    xt = k.value(x)
    dt = xt.dtype
    lowest = tir.min_value(dt)
    _, _, oh, ow = out_shape
    inside = (top == left == bottom == right == 0 and (oh - 1) * sh + (kh - 1) * dh < h
              and (ow - 1) * sw + (kw - 1) * dw < w)
    if inside:
        src = lambda b, ch, i, j: xt[b, ch, i, j]  # noqa: E731
    elif _every_window_hits(oh, h, kh, sh, dh, top) and _every_window_hits(ow, w, kw, sw, dw, left):
        # A tap outside the input reads `lowest`, which never wins over the window's own
        # values; reading the nearest edge element instead (which lies in the same window,
        # the windows being contiguous) gives the same max, with no select per tap.
        def src(b, ch, i, j):
            return xt[b, ch, tir.max(tir.min(i - top, h - 1), 0),
                      tir.max(tir.min(j - left, w - 1), 0)]
    else:
        src = _window_input(xt, h, w, top, left, bottom, right, lowest, lowest)
    if kh * kw <= 16:
        # a small window as an explicit max over its taps: an element-wise block, which the
        # element-wise schedule vectorises (a reduction block stays scalar); without padding
        # or ceil_mode overrun the taps are plain loads
        def fn(b, ch, i, j):
            taps = [src(b, ch, i * sh + r * dh, j * sw + t * dw)
                    for r in range(kh) for t in range(kw)]
            m = taps[0]
            for v in taps[1:]:
                m = tir.max(m, v)
            return m
        return k.finish(te.compute(out_shape, fn, name="out"), "pool")
    rkh, rkw = te.reduce_axis((0, kh), "rkh"), te.reduce_axis((0, kw), "rkw")
    out = te.compute(out_shape, lambda b, ch, i, j: te.max(
        src(b, ch, i * sh + rkh * dh, j * sw + rkw * dw), axis=[rkh, rkw]), name="out")
    return k.finish(out, "pool")


@tvm_op("qavg_pool2d")
def lower_qavg_pool2d(low: Lowering, node: Node, _rq=None):
    x = node.inputs[0]
    a = node.attrs
    n_, c, h, w = low.shape(x)
    out_shape = low.shape(node.output)
    _, _, oh, ow = out_shape
    kh, kw = a["kernel"]
    sh, sw = pool_defs._stride(a["kernel"], a["stride"])
    top, left, bottom, right = a["padding"]
    q = x.quant
    if q is None:
        raise TVMBackendError(f"node %{node.name} (qavg_pool2d): input has no QuantParams")
    fill = low.zero_point(x, node) if a["count_include_pad"] else 0
    dh_ = pool_defs._divisor_1d(h, oh, kh, sh, top, bottom, a["count_include_pad"])
    dw_ = pool_defs._divisor_1d(w, ow, kw, sw, left, right, a["count_include_pad"])
    count = np.outer(dh_, dw_).astype(np.int64)
    k = low.kernel(node)
    xt = k.value(x)
    ct = k.input(low.param(f"{node.name}.count", count), count.shape, "int64", "count")
    src = _window_input(xt, h, w, top, left, bottom, right, tir.const(fill, xt.dtype),
                        tir.const(0, xt.dtype))
    rkh, rkw = te.reduce_axis((0, kh), "rkh"), te.reduce_axis((0, kw), "rkw")
    total = te.compute(out_shape, lambda b, ch, i, j: te.sum(
        src(b, ch, i * sh + rkh, j * sw + rkw).astype(I64), axis=[rkh, rkw]), name="acc")
    out = te.compute(out_shape, lambda b, ch, i, j: arith.clamp_cast(
        arith.div_round_away(total[b, ch, i, j], ct[i, j]), q.qmin, q.qmax, xt.dtype), name="out")
    return k.finish(out, "pool")


# ---------------------------------------------------------------------------------- boundary

def _per_tensor(node: Node, q, what: str):
    if q is None or len(q.scale) != 1:
        raise TVMBackendError(f"node %{node.name} ({node.op}): the TVM backend needs one "
                              f"scale and zero point for the {what}")
    return np.float32(q.scale[0]), int(q.zero_point[0])


@tvm_op("quantize")
def lower_quantize(low: Lowering, node: Node, _rq=None):
    """intmath.quantize_float: x / scale in float32, rounded, + zp, clamped."""
    x = node.inputs[0]
    q = node.output.quant
    scale, zp = _per_tensor(node, q, "output")
    k = low.kernel(node)
    xt = k.value(x)
    dt = tvm_dtype(node.attrs["dtype"])
    away = node.attrs["rounding"] == "half_away"
    s = tir.const(float(scale), "float32")

    def fn(*idx):
        v = xt(*idx).astype("float32") / s
        if away:
            t = tir.trunc(v)
            sign = tir.Select(v > 0, tir.const(1.0, "float32"),
                              tir.Select(v < 0, tir.const(-1.0, "float32"),
                                         tir.const(0.0, "float32")))
            r = t + tir.Select(tir.abs(v - t) >= tir.const(0.5, "float32"), sign,
                               tir.const(0.0, "float32"))
        else:
            r = tir.nearbyint(v)
        # clamping before the cast makes +-inf and huge values saturate instead of wrapping;
        # qmin - zp .. qmax - zp are exact in float32
        r = tir.min(tir.max(r, tir.const(float(q.qmin - zp), "float32")),
                    tir.const(float(q.qmax - zp), "float32"))
        return (r.astype("int32") + tir.const(zp, "int32")).astype(dt)
    return k.finish(te.compute(low.shape(x), fn, name="out"))


@tvm_op("dequantize")
def lower_dequantize(low: Lowering, node: Node, _rq=None):
    """(q - zp) * float32(scale), in float64 then rounded once to float32 (dequantize_array)."""
    x = node.inputs[0]
    scale, zp = _per_tensor(node, x.quant, "input")
    k = low.kernel(node)
    xt = k.value(x)
    s = tir.const(float(scale), "float64")
    out = te.compute(low.shape(x), lambda *idx: (
        (xt(*idx).astype("float64") - tir.const(float(zp), "float64")) * s).astype("float32"),
        name="out")
    return k.finish(out)


# ---------------------------------------------------------------------------------- data movement

@tvm_op("reshape", "flatten", "squeeze", "unsqueeze", "identity")
def lower_view(low: Lowering, node: Node, _rq=None):
    return low.bb.emit(relax.op.reshape(low.expr(node.inputs[0]), low.shape(node.output)))


@tvm_op("transpose")
def lower_transpose(low: Lowering, node: Node, _rq=None):
    return low.bb.emit(relax.op.permute_dims(low.expr(node.inputs[0]),
                                             list(node.attrs["perm"])))


@tvm_op("expand")
def lower_expand(low: Lowering, node: Node, _rq=None):
    return low.bb.emit(relax.op.broadcast_to(low.expr(node.inputs[0]), low.shape(node.output)))


@tvm_op("concat")
def lower_concat(low: Lowering, node: Node, _rq=None):
    quants = {v.quant for v in node.inputs}
    if len(quants) > 1 and any(is_int_value(v) for v in node.inputs):
        raise TVMBackendError(f"node %{node.name} (concat): integer inputs with different "
                              f"QuantParams (lower-integer requantizes them first)")
    rank = len(low.shape(node.output))
    return low.bb.emit(relax.op.concat([low.expr(v) for v in node.inputs],
                                       axis=node.attrs["axis"] % rank))


def is_int_value(v: Value) -> bool:
    return v.dtype[0] in "iu"


@tvm_op("slice")
def lower_slice(low: Lowering, node: Node, _rq=None):
    x = node.inputs[0]
    shape = low.shape(x)
    from qcompile.ir.ops.defs.shape import _slices
    a = node.attrs
    per_axis = _slices("slice", len(shape), a["axes"], a["starts"], a["ends"], a["steps"])
    starts = [0] * len(shape)
    steps = [1] * len(shape)
    for ax, sl in per_axis.items():
        start, _, step = sl.indices(shape[ax])
        starts[ax], steps[ax] = start, step
    k = low.kernel(node)
    xt = k.value(x)
    out = te.compute(low.shape(node.output), lambda *idx: xt(*(
        starts[i] + steps[i] * idx[i] for i in range(len(shape)))), name="out")
    return k.finish(out)


@tvm_op("pad")
def lower_pad(low: Lowering, node: Node, _rq=None):
    x = node.inputs[0]
    a = node.attrs
    if a["mode"] != "constant":
        raise TVMBackendError(f"node %{node.name} (pad): mode {a['mode']!r} is not supported by "
                              f"the TVM backend (constant only)")
    shape = low.shape(x)
    rank = len(shape)
    begin, end = list(a["pads"][:rank]), list(a["pads"][rank:])
    k = low.kernel(node)
    xt = k.value(x)
    value = a["value"]
    if xt.dtype.startswith(("int", "uint")):
        info = np.iinfo(xt.dtype)
        if value != int(value) or not info.min <= value <= info.max:
            raise TVMBackendError(f"node %{node.name} (pad): fill {value!r} is not a code of "
                                  f"{xt.dtype}")
        value = int(value)
    out = topi.nn.pad(xt, begin, end, pad_value=value, name="out")
    return k.finish(out)


# ---------------------------------------------------------------------------------- float islands

@tvm_op("softmax")
def lower_softmax(low: Lowering, node: Node, _rq=None):
    return low.bb.emit(relax.op.nn.softmax(low.expr(node.inputs[0]), axis=node.attrs["axis"]))


_FLOAT_UNARY = {"sigmoid": relax.op.sigmoid, "tanh": relax.op.tanh, "exp": relax.op.exp,
                "relu": relax.op.nn.relu, "sqrt": relax.op.sqrt, "erf": relax.op.erf}
_FLOAT_BINARY = {"add": relax.op.add, "sub": relax.op.subtract, "mul": relax.op.multiply,
                 "div": relax.op.divide}


def _float_only(node: Node) -> None:
    for v in list(node.inputs) + list(node.outputs):
        if v is not None and not v.dtype.startswith("f"):
            raise TVMBackendError(f"node %{node.name} ({node.op}) on {v.dtype} %{v.name}: the "
                                  f"TVM backend runs {node.op} only on float values (a float "
                                  f"island); integer graphs use its integer lowering")


@tvm_op(*_FLOAT_UNARY)
def lower_float_unary(low: Lowering, node: Node, _rq=None):
    _float_only(node)
    return low.bb.emit(_FLOAT_UNARY[node.op](low.expr(node.inputs[0])))


@tvm_op(*_FLOAT_BINARY)
def lower_float_binary(low: Lowering, node: Node, _rq=None):
    _float_only(node)
    a, b = node.inputs
    return low.bb.emit(_FLOAT_BINARY[node.op](low.expr(a), low.expr(b)))
