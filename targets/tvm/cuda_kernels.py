"""Hand-written dp4a kernels for the MAC ops on CUDA (qlinear, and qconv2d with groups = 1).

CUDA's `__dp4a(a, b, c)` (sm_61 and later) adds to the int32 `c` the four products of the
sign-extended bytes of the int32 words `a` and `b`. The kernels here compute

    out[ia, ib] = epilogue(sum_k A[k, ia] * B[k, ib])

with both operands stored as (K/4, columns) int32 words of four int8 values along K, and
the epilogue (folded constant, acc_bits wrap, requantize) exactly the callable
`ops._mac_epilogue` returns, applied before the store: no int32 accumulator reaches memory.

  qlinear   A = the rows of x, packed per call (a small TE stage, its own PrimFunc, which
            dlight's Fallback rule schedules); B = the centred weights, packed at build time.
            threadIdx.x runs along the output channels, so the stores are contiguous.
  qconv2d   an explicit im2col GEMM: A = the centred weights, B = the patches of x (one
            column per output pixel, packed per call, padding taps hold zx); threadIdx.x runs
            along the pixels of an NCHW output plane, so the stores are contiguous.

Exactness. dp4a multiplies signed bytes, so a uint8 activation enters as x - 128 (its top
bit flipped) and the constant gains 128 * sum(w - zw) per output channel:
sum (x - 128)(w - zw) + const + 128 sum(w - zw) == sum x (w - zw) + const, the sum ops.py
folds `bias - zx sum(w - zw)` against. The kernels run only where every int32 intermediate
provably fits: the centred weights are int8 values, x is i8 or u8, and
128 * max_o sum|w - zw| + max|constant| fits int32 (see `_dp4a_constant`). Other MACs keep
the dlight path.

Testing without a GPU. `dp4a_gemm` builds the same TIR body for the CPU when asked
(mode "cpu"): the thread-bound loops become serial loops and `__dp4a` the portable TIR
expression `_dp4a_portable`. Tests set `EMULATE_ON_CPU` and compare an LLVM build with the
interpreter (tests/test_tvm_cuda.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from tvm import relax, te
from tvm import tirx as tir

from qcompile.ir.graph import Node, Value
from qcompile.ir.types import int_bits, int_range, is_signed

from .lower import Kernel, Lowering
from .ops import (INT32_HI, _fused_extern, _mac_dtype, _mac_epilogue, _unravel)

#: Build the dp4a kernels into LLVM (CPU) modules as well, with serial loops and a portable
#: dp4a (tests only: it is how the kernels are checked on a machine without a GPU).
EMULATE_ON_CPU = False
#: The attribute of a `Lowering` that says where dp4a kernels are built: "cuda", "cpu"
#: (the emulation) or None (not at all). compiler.build sets it.
MODE_ATTR = "dp4a"
#: CUDA architectures from this one on have __dp4a.
MIN_SM = 61
#: gridDim.y (the blocks along A) is at most this in CUDA.
MAX_GRID_Y = 65535


def dp4a_mode(target) -> Optional[str]:
    """Where a build for `target` runs the dp4a kernels: "cuda" for a CUDA target of sm_61 or
    later, "cpu" for an LLVM target when EMULATE_ON_CPU is set, else None."""
    kind = target.kind.name
    if kind == "cuda":
        arch = str(target.attrs.get("arch") or "")
        digits = arch[3:] if arch.startswith("sm_") else ""
        return "cuda" if digits.isdigit() and int(digits) >= MIN_SM else None
    if kind == "llvm" and EMULATE_ON_CPU:
        return "cpu"
    return None


def _mode(low: Lowering) -> Optional[str]:
    return getattr(low, MODE_ATTR, None)


# ---------------------------------------------------------------------------------- the kernel

@dataclass(frozen=True)
class Tiles:
    """A thread computes ta x tb outputs (ta consecutive A columns, tb B columns `bx` apart,
    so a warp's loads and stores along B are contiguous); a block is by x bx threads."""

    ta: int
    tb: int
    by: int
    bx: int

    @property
    def block_a(self) -> int:
        return self.ta * self.by

    @property
    def block_b(self) -> int:
        return self.tb * self.bx


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def choose_tiles(ma: int, mb: int) -> Tiles:
    """Register tiles of up to 4 x 4 outputs per thread (16 accumulators and 8 operand words in
    registers), a warp along B and up to 256 threads a block; smaller where the GEMM is
    smaller, so a GEMV (one row) does not compute 15 dead rows per thread."""
    tb = 4 if mb >= 128 else 2 if mb >= 64 else 1
    bx = min(32, _pow2_at_least(-(-mb // tb)))
    ta = 4 if ma >= 16 else 2 if ma >= 2 else 1
    by = min(256 // bx, 8, _pow2_at_least(-(-ma // ta)))
    return Tiles(ta, tb, by, bx)


def _dp4a_portable(a, b, c):
    """__dp4a in plain TIR: c + the four products of the sign-extended bytes of a and b (each
    byte taken by a shift and a truncating cast to int8), in int32 like the instruction."""
    total = c
    for i in range(4):
        sa = a if i == 0 else tir.shift_right(a, tir.const(8 * i, "int32"))
        sb = b if i == 0 else tir.shift_right(b, tir.const(8 * i, "int32"))
        total = total + sa.astype("int8").astype("int32") * sb.astype("int8").astype("int32")
    return total


def _dp4a_cuda(a, b, c):
    return tir.call_pure_extern("int32", "__dp4a", a, b, c)


def dp4a_gemm(a: tir.Buffer, b: tir.Buffer, out: tir.Buffer, tiles: Tiles, ma: int, mb: int,
              out_view: tuple, out_at: Callable, epilogue: Callable,
              mode: str = "cuda") -> tir.Stmt:
    """The body of a hand-written TIR kernel: out[out_at(ia, ib)] = epilogue(acc, ia, ib) with
    acc = sum_k dp4a(A[k, ia], B[k, ib]) for ia < ma, ib < mb, over the buffers

    a    (K/4, Ma) int32: four int8 values along K per word; Ma a multiple of tiles.block_a;
    b    (K/4, Mb) int32, the same along B; Mb a multiple of tiles.block_b;
    out  the op's output, seen as `out_view` (row-major): out_at(ia, ib) is the index there.
    Grid: blockIdx.y over blocks of A, blockIdx.x over blocks of B; each thread keeps its
    ta x tb accumulators in registers through the whole reduction, loading ta + tb words a
    step (A's are the same for a warp: a broadcast; B's are consecutive: one transaction).
    The operands are padded to whole blocks, so only the stores are guarded.

    mode "cuda" binds the loops to blockIdx/threadIdx and calls __dp4a; mode "cpu" builds the
    same body with serial loops and `_dp4a_portable`, for testing on a machine without a GPU.
    No shared memory: a thread cannot emulate __syncthreads in serial loops, and the words a
    block reads are few enough for L1 (see docs/tvm-backend.md)."""
    from tvm.script import tirx as T

    if mode not in ("cuda", "cpu"):
        raise ValueError(f"dp4a_gemm: mode {mode!r} is not 'cuda' or 'cpu'")
    gpu = mode == "cuda"
    k4, ma_p = (int(d) for d in a.shape)
    mb_p = int(b.shape[1])
    ta, tb, by, bx = tiles.ta, tiles.tb, tiles.by, tiles.bx
    assert ma_p % tiles.block_a == 0 and mb_p % tiles.block_b == 0 and int(b.shape[0]) == k4
    dot = _dp4a_cuda if gpu else _dp4a_portable

    def loop(n: int, tag: str):
        return T.thread_binding(n, thread=tag) if gpu else T.serial(n)

    # the buffers come from the closure (te.extern's), so the parsed function has no params
    @T.prim_func(check_well_formed=False)
    def gemm():
        ov = T.decl_buffer(out_view, out.dtype, data=out.data)
        for gy in loop(ma_p // tiles.block_a, "blockIdx.y"):
            for gx in loop(mb_p // tiles.block_b, "blockIdx.x"):
                for ty in loop(by, "threadIdx.y"):
                    for tx in loop(bx, "threadIdx.x"):
                        acc = T.decl_buffer((ta * tb,), "int32", scope="local")
                        wa = T.decl_buffer((ta,), "int32", scope="local")
                        wb = T.decl_buffer((tb,), "int32", scope="local")
                        for t in T.unroll(ta * tb):
                            acc[t] = 0
                        for k in range(k4):
                            for u in T.unroll(ta):
                                wa[u] = a[k, (gy * by + ty) * ta + u]
                            for v in T.unroll(tb):
                                wb[v] = b[k, gx * tiles.block_b + v * bx + tx]
                            for u in T.unroll(ta):
                                for v in T.unroll(tb):
                                    acc[u * tb + v] = dot(wa[u], wb[v], acc[u * tb + v])
                        for u in T.unroll(ta):
                            for v in T.unroll(tb):
                                if (gy * by + ty) * ta + u < ma and \
                                        gx * tiles.block_b + v * bx + tx < mb:
                                    ov[out_at((gy * by + ty) * ta + u,
                                              gx * tiles.block_b + v * bx + tx)] = epilogue(
                                        acc[u * tb + v], (gy * by + ty) * ta + u,
                                        gx * tiles.block_b + v * bx + tx)
    return gemm.body


# ---------------------------------------------------------------------------------- packing

def _byte(v):
    """An int32 expression holding an int8 value, as its byte (uint32 0..255)."""
    return (v & tir.const(0xFF, "int32")).astype("uint32")


def pack_word(values: list) -> "tvm.ir.expr.Expr":
    """Four int32 expressions holding int8 values as one int32 word, values[0] in the low byte
    (the byte order __dp4a pairs up). Built in uint32, so no signed shift overflows."""
    word = _byte(values[0])
    for i, v in enumerate(values[1:], 1):
        word = word | (_byte(v) << tir.const(8 * i, "uint32"))
    return word.astype("int32")


def pack_weight_words(wc2: np.ndarray, cols: int) -> np.ndarray:
    """(O, K) int8-valued centred weights -> (ceil(K/4), cols) int32 words, four weights along
    K per word (the first in the low byte), one column per output channel; channels past O
    and the steps past K are zero."""
    o, kdim = wc2.shape
    k4 = -(-kdim // 4)
    full = np.zeros((cols, 4 * k4), dtype=np.int64)
    full[:o, :kdim] = wc2
    byte = (full & 0xFF).reshape(cols, k4, 4).astype(np.uint32)
    words = byte[..., 0] | byte[..., 1] << 8 | byte[..., 2] << 16 | byte[..., 3] << 24
    return np.ascontiguousarray(words.astype(np.uint32).view(np.int32).T)


def _shift(x: Value) -> int:
    """What turns a code of x into an int8 value for dp4a: -128 for u8 (the top bit flipped),
    0 for i8."""
    return -128 if x.dtype == "u8" else 0


# ---------------------------------------------------------------------------------- conditions

def _dp4a_constant(x: Value, wc2: np.ndarray, const: np.ndarray, acc_dt: str,
                   zx: int) -> Optional[np.ndarray]:
    """The per-channel int32 constant of the dp4a kernel (`const` + 128 sum(w - zw) for u8
    inputs), or None where the kernel would not be exact: x not i8/u8 (or its zero point
    outside its range: padding taps hold it), centred weights outside int8, an int64
    accumulator, or an int32 intermediate that could overflow. Each dp4a partial sum is at
    most 128 sum|w - zw| (|x + shift| <= 128), so that plus the constant bounds them all."""
    if x.dtype not in ("i8", "u8") or acc_dt != "int32":
        return None
    lo, hi = int_range(int_bits(x.dtype), is_signed(x.dtype))
    if not lo <= zx <= hi:
        return None
    if wc2.size and (wc2.min() < -128 or wc2.max() > 127):
        return None
    ct = const.astype(np.int64) - _shift(x) * wc2.sum(axis=1)
    rows = np.abs(wc2).sum(axis=1)
    bound = 128 * int(rows.max(initial=0)) + int(np.abs(ct).max(initial=0))
    return ct.astype(np.int32) if bound <= INT32_HI else None


def _fits_grid(tiles: Tiles, ma: int) -> bool:
    return -(-ma // tiles.block_a) <= MAX_GRID_Y


# ---------------------------------------------------------------------------------- lowerings

def _gemm(low: Lowering, node: Node, rq: Optional[Node], k: Kernel, a_in, b_in, ct: np.ndarray,
          ma: int, mb: int, tiles: Tiles, channel: int, out_view: tuple, out_at, index):
    """The fused dp4a GEMM of a MAC node: kernel `k` already holds the operands' placeholders
    `a_in`, `b_in`; the constant and the requantize tables follow them."""
    out_shape = low.shape(node.output)
    n_in = len(k.placeholders)
    ctt = k.input(low.param(f"{node.name}.dp4a_const", ct), ct.shape, "int32", "c")
    epilogue = _mac_epilogue(low, k, node, rq, ctt, channel, len(out_shape), index)
    tables = k.placeholders[n_in:]
    mode = _mode(low)
    out = _fused_extern(k, [a_in, b_in], tables, out_shape, _mac_dtype(rq),
                        lambda ab, bb, ob: dp4a_gemm(ab, bb, ob, tiles, ma, mb, out_view,
                                                     out_at, epilogue, mode))
    return k.finish(out, scheduled=True)


def _padded(n: int, block: int) -> int:
    return -(-n // block) * block


def try_qlinear(low: Lowering, node: Node, rq: Optional[Node], wc: np.ndarray,
                const: np.ndarray, zx: int, acc_dt: str) -> Optional[relax.Expr]:
    """qlinear on the dp4a GEMM when the build asks for it and the conditions hold (see the
    module docstring); None otherwise (the caller builds its usual kernel)."""
    if _mode(low) is None:
        return None
    x = node.inputs[0]
    ct = _dp4a_constant(x, wc, const, acc_dt, zx)
    xs = low.shape(x)
    lead, kdim = tuple(xs[:-1]), xs[-1]
    rows = int(np.prod(lead, dtype=np.int64)) if lead else 1
    o = wc.shape[0]
    tiles = choose_tiles(rows, o)
    if ct is None or not _fits_grid(tiles, rows):
        return None
    k4, mp = -(-kdim // 4), _padded(rows, tiles.block_a)
    shift = _shift(x)

    # the rows of x as words along K: (K/4, rows padded to whole blocks), zero past the end
    kp = low.kernel(node, ".dp4a_pack")
    xt = kp.value(x, "x")

    def x_word(q, m):
        idx = _unravel(tir.min(m, rows - 1), lead)
        vals = []
        for t in range(4):
            kk = q * 4 + t
            v = xt(*idx, tir.min(kk, kdim - 1)).astype("int32") + shift
            vals.append(tir.Select(tir.all(m < rows, kk < kdim), v, tir.const(0, "int32")))
        return pack_word(vals)
    packed = kp.finish(te.compute((k4, mp), x_word, name="pack"))

    k = low.kernel(node, "+requantize" if rq is not None else "")
    a_in = k.input(packed, (k4, mp), "int32", "xq")
    wq = pack_weight_words(wc, _padded(o, tiles.block_b))
    b_in = k.input(low.param(f"{node.inputs[1].name}.dp4a", wq), wq.shape, "int32", "w")
    rank = len(low.shape(node.output))
    return _gemm(low, node, rq, k, a_in, b_in, ct, rows, o, tiles, rank - 1, (rows, o),
                 lambda m, oc: (m, oc), lambda m, oc: (*_unravel(m, lead), oc))


def try_qconv2d(low: Lowering, node: Node, rq: Optional[Node], wc: np.ndarray,
                const: np.ndarray, zx: int, acc_dt: str) -> Optional[relax.Expr]:
    """qconv2d with groups = 1 as an im2col dp4a GEMM when the build asks for it and the
    conditions hold (see the module docstring); None otherwise."""
    if _mode(low) is None or node.attrs["groups"] != 1:
        return None
    x = node.inputs[0]
    a = node.attrs
    o, c, kh, kw = wc.shape
    wc2 = wc.reshape(o, -1)
    ct = _dp4a_constant(x, wc2, const, acc_dt, zx)
    n_, _, h, wd = low.shape(x)
    _, _, oh, ow = low.shape(node.output)
    pixels, kdim = n_ * oh * ow, c * kh * kw
    tiles = choose_tiles(o, pixels)
    if ct is None or not _fits_grid(tiles, o):
        return None
    k4, mp = -(-kdim // 4), _padded(pixels, tiles.block_b)
    shift = _shift(x)
    sh, sw = a["stride"]
    dh, dw = a["dilation"]
    top, left, _, _ = a["padding"]

    # im2col as words: column m = (image, row, column) of the output, K = (channel, tap row,
    # tap column); a tap in the padding holds zx (what the interpreter pads with)
    kp = low.kernel(node, ".dp4a_im2col")
    xt = kp.value(x, "x")
    pad_value = tir.const(zx + shift, "int32")

    def patch_word(q, m):
        mm = tir.min(m, pixels - 1)
        b, i, j = mm // (oh * ow), mm // ow % oh, mm % ow
        vals = []
        for t in range(4):
            kk = q * 4 + t
            ch, r, s = kk // (kh * kw), kk // kw % kh, kk % kw
            row, col = i * sh + r * dh - top, j * sw + s * dw - left
            inside = tir.all(row >= 0, row < h, col >= 0, col < wd)
            v = xt[b, tir.min(ch, c - 1), tir.min(tir.max(row, 0), h - 1),
                   tir.min(tir.max(col, 0), wd - 1)].astype("int32") + shift
            v = tir.Select(inside, v, pad_value)
            vals.append(tir.Select(tir.all(m < pixels, kk < kdim), v, tir.const(0, "int32")))
        return pack_word(vals)
    patches = kp.finish(te.compute((k4, mp), patch_word, name="pack"))

    k = low.kernel(node, "+requantize" if rq is not None else "")
    wq = pack_weight_words(wc2, _padded(o, tiles.block_a))
    a_in = k.input(low.param(f"{node.inputs[1].name}.dp4a", wq), wq.shape, "int32", "w")
    b_in = k.input(patches, (k4, mp), "int32", "xq")
    plane = oh * ow
    return _gemm(low, node, rq, k, a_in, b_in, ct, o, pixels, tiles, 1, (n_, o, plane),
                 lambda oc, m: (m // plane, oc, m % plane),
                 lambda oc, m: (m // plane, oc, m // ow % oh, m % ow))
