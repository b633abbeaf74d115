"""Hand-written CPU schedules for the kernels ops.py builds.

TVM's default CPU pipeline runs every kernel as plain scalar loops. The MAC kernels get:
  conv2d / depthwise: per (image, block of output channels, output row), the accumulators of
      that tile (channels x row) live in a small buffer; the reduction (input channel, kernel
      row, kernel column) runs outside, and the row is the vectorised inner loop, so each
      input row segment is loaded once for a block of output channels; the tiles run in
      parallel. The padded input is materialised first, so the inner loop has no bounds tests.
  dense / matmul: the weights are stored (in, out), so a block of output channels is the
      vectorised inner loop under the reduction; rows and channel blocks run in parallel.
  everything else: the loop nest is flattened, split into vector-width chunks, vectorised
      and (when large enough to pay for the threads) run in parallel.
Schedules never change what is computed (TVM checks every step), so the kernels stay
bit-exact; `build(..., schedule=False)` skips this module for comparison.
"""
from __future__ import annotations

from typing import Callable

from tvm import s_tir
from tvm import tirx as tir

#: Below this many output elements, threads cost more than they save.
PARALLEL_MIN = 4096


def cpu_scheduler(target) -> Callable:
    """fn(prim_func, kind, info) -> scheduled prim_func for an LLVM CPU target."""
    lanes = _int32_lanes(target)

    def schedule(func: tir.PrimFunc, kind: str, info: dict) -> tir.PrimFunc:
        sch = s_tir.Schedule(func)
        if kind in ("conv2d", "depthwise"):
            _conv(sch, lanes, info)
        elif kind in ("dense", "matmul"):
            _dense(sch, lanes)
        else:
            for block in _blocks(sch):
                _elementwise(sch, block, lanes)
        return sch.mod["main"].with_attr("tir.is_scheduled", True)
    return schedule


def _int32_lanes(target) -> int:
    """int32 lanes of the widest vector register the target has (AVX-512 16, AVX2 8, else 4)."""
    from tvm.target import codegen
    try:
        bits = int(codegen.llvm_get_vector_width(target))
    except Exception:  # not every LLVM target reports it
        bits = 128
    return max(4, bits // 32)


def _blocks(sch) -> list:
    root = sch.get_sblock("root") if _has_block(sch, "root") else None
    return list(sch.get_child_blocks(root)) if root is not None else []


def _has_block(sch, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # ScheduleError / ValueError for a missing block
        return False


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _divisor(n: int, candidates) -> int:
    for c in candidates:
        if c <= n and n % c == 0:
            return c
    return 1


def _elementwise(sch, block, lanes: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    if sch.get(block).reads is not None and any(
            iv.iter_type != tir.IterVar.DataPar for iv in sch.get(block).iter_vars):
        # a reduction block (pooling window): parallelise its spatial loops only
        spatial = [lp for lp, iv in zip(loops, sch.get(block).iter_vars)
                   if iv.iter_type == tir.IterVar.DataPar]
        if len(spatial) > 1:
            fused = sch.fuse(*spatial)
            if _extent(sch, fused) >= 64:
                sch.parallel(fused)
        return
    fused = sch.fuse(*loops)
    n = _extent(sch, fused)
    vec = _divisor(n, (lanes * 2, lanes, 4, 2))
    if vec > 1:
        outer, inner = sch.split(fused, [None, vec])
        sch.vectorize(inner)
        if n >= PARALLEL_MIN:
            sch.parallel(outer)
    elif n >= PARALLEL_MIN:
        sch.parallel(fused)


def _conv(sch, lanes: int, info: dict) -> None:
    out = sch.get_sblock("out")
    acc = sch.get_sblock("acc")
    n, oc, oh, ow = sch.get_loops(out)
    ocb = _divisor(info["oc"], (8, 4, 2))
    oco, oci = sch.split(oc, [None, ocb])
    sch.reorder(n, oco, oh, oci, ow)
    sch.compute_at(acc, oh)
    # compute_at drops unit loops, so count: the spatial ones (channel block, row) come first
    inner = sch.get_loops(acc)[3:]
    n_spatial = int(ocb > 1) + int(_extent(sch, ow) > 1)
    spatial, reduce = inner[:n_spatial], inner[n_spatial:]
    if reduce:
        sch.reorder(*reduce, *spatial)
    tile = sch.fuse(n, oco, oh)
    if _extent(sch, tile) > 1:
        sch.parallel(tile)
    if ocb > 1 and _extent(sch, ow) > 1:
        sch.unroll(spatial[0])
    if spatial:
        sch.vectorize(spatial[-1])
    sch.vectorize(ow)
    # last: parallel/vectorize refuse a reduction block without its init statement
    if reduce:
        sch.decompose_reduction(acc, reduce[0])
    if _has_block(sch, "pad"):
        _elementwise(sch, sch.get_sblock("pad"), lanes)


def _dense(sch, lanes: int) -> None:
    out = sch.get_sblock("out")
    acc = sch.get_sblock("acc")
    loops = sch.get_loops(out)
    last = loops[-1]
    width = _extent(sch, last)
    ob = width if width <= 4 * lanes else _divisor(width, (4 * lanes, 2 * lanes, lanes, 4, 2))
    oo, oi = sch.split(last, [None, ob])
    sch.compute_at(acc, oo)
    a_oi, rk = sch.get_loops(acc)[-2:]
    sch.reorder(rk, a_oi)
    tile = sch.fuse(*loops[:-1], oo)
    if _extent(sch, tile) > 1:
        sch.parallel(tile)
    sch.vectorize(a_oi)
    sch.vectorize(oi)
    sch.decompose_reduction(acc, rk)
