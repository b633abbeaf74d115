"""Hand-written CPU schedules for the kernels ops.py builds.

TVM's default CPU pipeline runs every kernel as plain scalar loops. The MAC kernels get:
  conv2d on x86 (ops._lower_qconv2d_pmadd): a hand-written kernel (pmadd_conv below) after a
      pad stage that changes the layout (_conv_extern schedules it); it writes the NCHW
      output itself.
  1x1 conv2d on large maps on x86 (ops._lower_qconv2d_pointwise): pmadd_pointwise below,
      output pixels in the lanes, after a stage that packs channel pairs.
  depthwise on x86 (ops._lower_depthwise_rows): a hand-written kernel (depthwise_rows below)
      that pads each channel plane itself and keeps NCHW throughout.
  older packed conv2d (ops._lower_qconv2d_packed, ops.PMADD_CONV off): output channels are the
      vector lanes; per output row and block of 2 lane groups, register tiles of up to 7
      columns accumulate through the whole reduction; the epilogue runs per row.
  other conv2d / depthwise: per (image, block of output channels, output row), the accumulators of
      that tile (channels x row) live in a small buffer; the reduction (input channel, kernel
      row, kernel column) runs outside, and the row is the vectorised inner loop, so each
      input row segment is loaded once for a block of output channels; the tiles run in
      parallel. The padded input is materialised first, so the inner loop has no bounds tests.
  packed dense / matmul (x86, int32 accumulator, int16 operands): a hand-written vpmaddwd
      GEMM (pmadd_gemm below) between element-wise packing and epilogue stages.
  other dense / matmul: the weights are stored (in, out), so a block of output channels is
      the vectorised inner loop under the reduction; rows and channel blocks run in parallel.
  row kernels (qsoftmax, qlayer_norm over the last axis; _rows): all stages under one
      parallel loop over rows, row reductions as vectors of partial results (rfactor).
  everything else: the loop nest is flattened, split into vector-width chunks, vectorised
      and (when large enough to pay for the threads) run in parallel.
Schedules never change what is computed (TVM checks every step), so the kernels stay
bit-exact; `build(..., schedule=False)` skips this module for comparison.
"""
from __future__ import annotations

from typing import Callable

from tvm import s_tir
from tvm import tirx as tir

#: Below this many output elements, threads cost more than they save (waking the pool
#: takes a few microseconds; an element-wise kernel does thousands of elements in that time).
PARALLEL_MIN = 1 << 15
#: Below this many multiply-adds a hand-written MAC kernel runs on one thread: waking the
#: pool costs a few microseconds per kernel, more than small convolutions take in total
#: (without this threshold the digits CNN ran slower on two threads than on one).
PARALLEL_MIN_MACS = 1 << 19


#: depthwise_rows at column stride 2 reads 8-bit rows of even length as 16-bit words (each
#: phase a byte of every word); False: a stride-2 byte load, which LLVM gathers byte by byte
#: (benchmarks/tvm_kernels.py compares the two)
PAIRED_BYTES = True


def _task_loop(macs: int):
    """T.parallel for kernels with enough work, else T.serial (see PARALLEL_MIN_MACS)."""
    from tvm.script import tirx as T
    return T.parallel if macs >= PARALLEL_MIN_MACS else T.serial


def cpu_scheduler(target) -> Callable:
    """fn(prim_func, kind, info) -> scheduled prim_func for an LLVM CPU target.

    The function carries `mac_lanes`: the int32 vector lanes of the packed convolution
    kernels (8 with AVX2, 4 on other x86-64 targets), or 0 where ops.py should build the
    plain ones (other CPUs: their packed schedule is untested)."""
    lanes = _int32_lanes(target)
    mac = mac_lanes(target)

    def schedule(func: tir.PrimFunc, kind: str, info: dict) -> tir.PrimFunc:
        sch = s_tir.Schedule(func)
        if kind == "conv2d_packed":
            _conv_packed(sch, lanes, info)
        elif kind in ("conv2d", "depthwise"):
            _conv(sch, lanes, info)
        elif kind == "conv_extern":
            _conv_extern(sch, lanes)
        elif kind == "gemm_packed":
            # the GEMM itself is hand-written (pmadd_gemm); its packing and epilogue stages
            # are element-wise
            for block in _blocks(sch):
                if sch.get(block).name_hint != "gemm":
                    _elementwise(sch, block, lanes)
        elif kind in ("dense", "matmul"):
            _dense(sch, lanes)
        elif kind == "rows":
            _rows(sch, lanes)
        else:
            for block in _blocks(sch):
                _elementwise(sch, block, lanes)
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    schedule.mac_lanes = mac
    return schedule


def mac_lanes(target) -> int:
    """int32 lanes of the packed conv kernels on this target: 8 with AVX2, 4 on other
    x86-64 CPUs (SSE), 0 off x86."""
    from tvm.target import codegen
    triple = str(target.attrs.get("mtriple") or codegen.llvm_get_system_triple())
    if not triple.startswith(("x86_64", "i686", "i386")):
        return 0
    return 8 if codegen.target_has_features("avx2", target) else 4


def _int32_lanes(target) -> int:
    """int32 lanes of the widest vector register the target has (AVX-512 16, AVX2 8, else 4).

    x86 asks for the features: LLVM reports a 512-bit vector width for AVX2-only CPUs such
    as znver3, and 16-lane vectors then sent every row of 8 to 15 elements (small pooling
    maps) to the flattened, gathering form of the element-wise schedule."""
    from tvm.target import codegen
    if mac_lanes(target):
        if codegen.target_has_features("avx512f", target):
            return 16
        return 8 if codegen.target_has_features("avx2", target) else 4
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
    """Vectorise an element-wise block along its innermost (contiguous) axis.

    The vectors lie within one row of the innermost axis: a vector that straddles two rows
    reads each operand through a div/mod index TVM cannot prove contiguous, and LLVM then
    gathers it byte by byte. A row that is not a whole number of vectors is partitioned into
    a vectorised part and a scalar tail. Rows shorter than a vector fall back to vectorising
    the flattened loop nest (gathered loads, but vector arithmetic)."""
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
    n = 1
    for lp in loops:
        n *= _extent(sch, lp)
    *outer, row = loops
    width = _extent(sch, row)
    vec = _divisor(width, (lanes * 2, lanes))
    # a partition copies the body, and with it a Let variable (arith.let) TVM then sees
    # bound twice; ops.py gives such kernels flat views of whole vectors where it matters
    if width < lanes or (vec == 1 and _has_let(sch.get(block).body)):
        fused = sch.fuse(*loops)
        vec = _divisor(n, (lanes * 2, lanes, 4, 2))
        if vec > 1:
            fused, inner = sch.split(fused, [None, vec])
            sch.vectorize(inner)
        if n >= PARALLEL_MIN:
            sch.parallel(fused)
        return
    if vec == 1:
        vec = lanes
        row, _tail = sch.loop_partition(row, [width - width % vec, None])
    o, inner = sch.split(row, [None, vec])
    sch.vectorize(inner)
    if n >= PARALLEL_MIN:
        # the rows in parallel; a lone row (1-D value): its vectors
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0] if outer else o)


def _rows(sch, lanes: int) -> None:
    """A kernel whose stages all work along the last axis, row by row (qsoftmax, qlayer_norm
    over the last axis): every stage
    moves under one parallel loop over the rows, so a row's intermediates (the i-exp codes,
    its max and sum) stay in cache, or on the stack, between stages. The row's reductions
    are split into `lanes` partial results (rfactor) reduced as vectors, and the
    element-wise stages are vectorised along the row."""
    if len(sch.get_loops(_blocks(sch)[-1])) < 2:  # a single row: stage by stage
        for block in _blocks(sch):
            _elementwise(sch, block, lanes)
        return
    partial = set()
    for block in _blocks(sch)[:-1]:
        if all(iv.iter_type == tir.IterVar.DataPar for iv in sch.get(block).iter_vars):
            continue
        red = sch.get_loops(block)[-1]
        if _extent(sch, red) % lanes == 0 and _extent(sch, red) > lanes:
            _, ri = sch.split(red, [None, lanes])
            partial.add(sch.get(sch.rfactor(ri, 0)).name_hint)
    blocks = _blocks(sch)
    out = blocks[-1]
    *outer, col = sch.get_loops(out)
    row = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    size = _extent(sch, row) * _extent(sch, col)
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, row, preserve_unit_loops=False)
    for block in sch.get_child_blocks(row):
        loops = sch.get_loops(block)[1:]
        if sch.get(block).name_hint in partial:
            # (lanes, steps): the lanes loop innermost, as the vector
            if len(loops) >= 2:
                sch.reorder(loops[-1], loops[-2])
            sch.vectorize(sch.get_loops(block)[-1])
            continue
        if not loops or any(iv.iter_type != tir.IterVar.DataPar
                            for iv in sch.get(block).iter_vars):
            continue
        col = loops[-1]
        vec = _divisor(_extent(sch, col), (lanes * 2, lanes))
        if vec > 1:
            _, inner = sch.split(col, [None, vec])
            sch.vectorize(inner)
    if size >= PARALLEL_MIN:
        sch.parallel(row)


def _has_let(stmt) -> bool:
    """Whether a block stores a Let expression (arith.let binds at the root of the value)."""
    value = getattr(stmt, "value", None)
    while isinstance(value, tir.Cast):
        value = value.value
    return isinstance(value, tir.Let)


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


# ---------------------------------------------------------------------------------- packed conv

def _conv_packed(sch, lanes: int, info: dict) -> None:
    """acc (N, OB, OH, OWx, L) = sum over (C/2, KH, KW, 2): per (image, block of `obi` lane
    groups, output row, tile of `jt` columns) the obi x jt accumulator vectors sit in a small
    local buffer that LLVM keeps in registers while the reduction runs (fully unrolled tile;
    each step is one weight vector load, one broadcast input and a vector multiply-add).
    The requantize epilogue runs per output row, after the row's tiles, vectorised along
    the row. Rows x channel blocks run in parallel."""
    acc = sch.get_sblock("acc")
    b, q, i, j, l, rc, rkh, rkw, rt = sch.get_loops(acc)
    qo, qi = sch.split(q, [None, info["obi"]])
    jo, ji = sch.split(j, [None, info["jt"]])
    sch.reorder(b, qo, i, jo, rc, rkh, rkw, qi, ji, rt, l)
    local = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(local, jo)
    out = sch.get_sblock("out")
    sch.reverse_compute_at(out, i)
    row = sch.fuse(b, qo, i)
    sch.parallel(row)
    sch.vectorize(l)
    sch.unroll(rt)
    sch.unroll(ji)
    sch.unroll(qi)
    # last: vectorize refuses a reduction block once its init is split off
    init = sch.decompose_reduction(acc, rc)
    *_, iq, ij, il = sch.get_loops(init)
    sch.vectorize(il)
    sch.unroll(ij)
    sch.unroll(iq)
    cl = sch.get_loops(local)
    sch.vectorize(cl[-1])
    _epilogue_row(sch, out, lanes)
    _elementwise(sch, sch.get_sblock("pad"), lanes)


def _conv_extern(sch, lanes: int) -> None:
    """The stage before a hand-written conv kernel (pmadd_conv writes the output itself): the
    pad (layout change), parallel over its outer loops and vectorised along its innermost
    one, so no vector straddles two rows. depthwise_rows has no such stage."""
    for name in ("pad",):
        if not _has_block(sch, name):  # a kernel that pads inside (depthwise_rows)
            continue
        block = sch.get_sblock(name)
        *outer, last = sch.get_loops(block)
        n = _extent(sch, last)
        vec = _divisor(n, (2 * lanes, lanes, 8, 4)) if n > 2 * lanes else n
        if vec < n:
            o, last = sch.split(last, [None, vec])
            outer.append(o)
        if vec > 1:
            sch.vectorize(last)
        if outer:
            fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
            if _extent(sch, fused) > 1 and _extent(sch, fused) * n >= PARALLEL_MIN:
                sch.parallel(fused)


def _epilogue_row(sch, out, lanes: int) -> None:
    """The out block under a row: its column loop is the vector."""
    loops = sch.get_loops(out)
    col = loops[-1]
    n = _extent(sch, col)
    vec = _divisor(n, (2 * lanes, lanes)) if n > 4 * lanes else n
    if vec < n:
        _, col = sch.split(col, [None, vec])
    sch.vectorize(col)



# ---------------------------------------------------------------------------------- pmaddwd GEMM

def _pmadd_intrinsic(lanes: int) -> tuple[str, str, str]:
    """(LLVM intrinsic, int32 vector type, int16 vector type) of `vpmaddwd` at `lanes` int32
    lanes: each lane gets a0*b0 + a1*b1 of two adjacent int16 pairs."""
    if lanes == 8:
        return "llvm.x86.avx2.pmadd.wd", "int32x8", "int16x16"
    if lanes == 4:
        return "llvm.x86.sse2.pmadd.wd", "int32x4", "int16x8"
    raise ValueError(f"no pmaddwd for {lanes} int32 lanes")


def pmadd_gemm(xp, w, out, mt: int, obi: int, lanes: int, rows: int, cols: int, epilogue):
    """The body of a hand-written TIR kernel: out[g, m, o] = epilogue(sum_k x[g, m, k] w[g, o, k])
    with vpmaddwd, over the buffers

    xp   (groups, rows_padded, kp) int32: two int16 values of x per word (x[2k] low, x[2k+1] high);
    w    (w_groups, ob, kp, 2*lanes) int16: for each pair step, `lanes` output channels with
         their two weights adjacent (ops._pack_pairs); w_groups is 1 (shared weights) or groups;
    out  the op's output, row-major as (groups, rows, cols): out[g, m, o] =
         epilogue(acc, g, m, o), the stored value (requantized) of an int32 sum.
    A task is `mt` rows of one group; for each block of `obi` lane groups its mt*obi
    accumulator vectors live in registers through the whole reduction. Each step broadcasts
    an x pair to all lanes, loads obi weight vectors, and does mt*obi vpmaddwd + vpaddd; the
    tile then goes through the epilogue (requantize) vectorised along the output channels,
    which are contiguous in the output, so no int32 accumulator reaches memory.
    The exactness condition (every pair sum fits int32) is the caller's: the build-time
    accumulator bound covers it.

    It is written out rather than scheduled: `sch.tensorize` crashes in TVM 0.27 and LLVM
    does not form vpmaddwd from a pair loop. The accumulators are a "global"-scope buffer
    declared inside the task: TVM turns a "local" one inside a parallel loop into a heap
    workspace that LLVM cannot keep in registers, this one into a stack slot it can."""
    from tvm.script import tirx as T

    intrin, v32, v16 = _pmadd_intrinsic(lanes)
    groups, rows_p, kp = (int(d) for d in xp.shape)
    w_groups, ob = int(w.shape[0]), int(w.shape[1])
    assert rows_p % mt == 0 and ob % obi == 0
    mb, qb = rows_p // mt, ob // obi
    wsel = 1 if w_groups > 1 else 0
    width = 2 * lanes
    tasks = _task_loop(groups * rows * cols * kp * 2)

    # the buffers come from the closure (te.extern's), so the parsed function has no params
    @T.prim_func(check_well_formed=False)
    def gemm():
        o3 = T.decl_buffer((groups, rows, cols), out.dtype, data=out.data)
        for task in tasks(groups * mb):
            # plain Lets (a heap word per task, see pmadd_conv): with T.meta_var this kernel
            # ran 1.4x slower on MiniLM's 128-row GEMMs (benchmarks/tvm_kernels.py); why was
            # not pinned down
            g = task // mb
            m0 = task % mb * mt
            for qo in range(qb):
                a = T.decl_buffer((mt * obi * lanes,), "int32", scope="global")
                for i in T.unroll(mt * obi):
                    a[T.ramp(i * lanes, 1, lanes)] = T.Broadcast(T.int32(0), lanes)
                for k in range(kp):
                    for i in T.unroll(mt):
                        for q in T.unroll(obi):
                            a[T.ramp((i * obi + q) * lanes, 1, lanes)] = \
                                a[T.ramp((i * obi + q) * lanes, 1, lanes)] + \
                                T.call_llvm_pure_intrin(
                                    v32, intrin,
                                    T.reinterpret(v16, T.Broadcast(xp[g, m0 + i, k], lanes)),
                                    w[g * wsel, qo * obi + q, k, T.ramp(0, 1, width)])
                for i in T.unroll(mt):
                    if m0 + i < rows:
                        for q in T.unroll(obi):
                            if (qo * obi + q + 1) * lanes <= cols:
                                for t in T.vectorized(lanes):
                                    o3[g, m0 + i, (qo * obi + q) * lanes + t] = epilogue(
                                        a[(i * obi + q) * lanes + t], g, m0 + i,
                                        (qo * obi + q) * lanes + t)
                            else:
                                for t in range(lanes):
                                    if (qo * obi + q) * lanes + t < cols:
                                        o3[g, m0 + i, (qo * obi + q) * lanes + t] = epilogue(
                                            a[(i * obi + q) * lanes + t], g, m0 + i,
                                            (qo * obi + q) * lanes + t)
    return gemm.body


def pmadd_conv(xp, w, out, obi: int, jt: int, lanes: int, stride: tuple, dilation: tuple,
               channels: int, ow: int, epilogue):
    """The body of a hand-written direct convolution with vpmaddwd (no im2col), over

    xp   (N, C/2, Hp, Wx) int32: the padded input, two int16 channels per word (even channel
         in the low half);
    w    (OB, C/2, KH, KW, 2*lanes) int16: per channel pair and tap, `lanes` output channels
         with their two weights adjacent (ops._pack_conv_pmadd);
    out  the op's NCHW output: out[b, o, i, j] = epilogue(acc, b, o, i, j) for o < channels
         and j < ow (epilogue(acc, b, o, i, j): the int32 sum -> stored value, the
         requantize).
    A task is one output row of one block of `obi` lane groups; the row runs in tiles of
    `jt` columns whose obi*jt accumulator vectors stay in registers through the reduction
    over (C/2, KH, KW). Each step loads obi weight vectors, broadcasts jt input pairs and
    does obi*jt vpmaddwd + vpaddd. Each finished tile goes straight through the epilogue,
    channel by channel, vectorised over the tile's jt columns: LLVM keeps the tile in
    registers and transposes it with shuffles, so each channel's jt outputs are one
    contiguous store into its NCHW plane, and no int32 accumulator reaches memory. (Measured
    slower: the epilogue vectorised over the lanes with a byte scatter per output, and a row
    of tiles staged in memory and read back across lanes.) Consecutive tasks share a channel
    block, so its weights stay in cache.
    Exactness and register choices are as in pmadd_gemm."""
    from tvm.script import tirx as T

    intrin, v32, v16 = _pmadd_intrinsic(lanes)
    n_, cp, _, _ = (int(d) for d in xp.shape)
    ob, _, kh, kw, width = (int(d) for d in w.shape)
    oh = int(out.shape[2])
    owx = -(-ow // jt) * jt
    assert ob % obi == 0 and width == 2 * lanes
    qb, jb = ob // obi, owx // jt
    sh, sw = stride
    dh, dw = dilation
    cw = obi * lanes
    tasks = _task_loop(n_ * channels * oh * ow * cp * 2 * kh * kw)

    @T.prim_func(check_well_formed=False)
    def conv():
        for task in tasks(n_ * qb * oh):
            # T.meta_var substitutes the expression: a plain assignment is a Let, and TVM 0.27
            # gives each Let inside a parallel loop a 4-byte heap workspace, allocated and
            # freed on every task
            b = T.meta_var(task // (qb * oh))
            qo = T.meta_var(task // oh % qb)
            i = T.meta_var(task % oh)
            for jo in range(jb):
                a = T.decl_buffer((obi * jt * lanes,), "int32", scope="global")
                for t in T.unroll(obi * jt):
                    a[T.ramp(t * lanes, 1, lanes)] = T.Broadcast(T.int32(0), lanes)
                for rc in range(cp):
                    for rkh in range(kh):
                        for rkw in range(kw):
                            for jj in T.unroll(jt):
                                for q in T.unroll(obi):
                                    a[T.ramp((q * jt + jj) * lanes, 1, lanes)] = \
                                        a[T.ramp((q * jt + jj) * lanes, 1, lanes)] + \
                                        T.call_llvm_pure_intrin(
                                            v32, intrin,
                                            T.reinterpret(v16, T.Broadcast(
                                                xp[b, rc, i * sh + rkh * dh,
                                                   (jo * jt + jj) * sw + rkw * dw], lanes)),
                                            w[qo * obi + q, rc, rkh, rkw, T.ramp(0, 1, width)])
                for q in T.unroll(obi):
                    for t in T.unroll(lanes):
                        if (qo * obi + q) * lanes + t < channels:
                            o = T.meta_var((qo * obi + q) * lanes + t)
                            if (jo + 1) * jt <= ow:
                                for jj in T.vectorized(jt):
                                    out[b, o, i, jo * jt + jj] = epilogue(
                                        a[(q * jt + jj) * lanes + t], b, o, i, jo * jt + jj)
                            else:
                                for jj in range(jt):
                                    if jo * jt + jj < ow:
                                        out[b, o, i, jo * jt + jj] = epilogue(
                                            a[(q * jt + jj) * lanes + t], b, o, i, jo * jt + jj)
    return conv.body


def pmadd_pointwise(xq, w, out, ot: int, pv: int, lanes: int, channels: int, epilogue):
    """The body of a hand-written 1x1 convolution (stride 1, no padding) with vpmaddwd and
    output pixels in the vector lanes, in the NCHW layout the graph keeps:

    xq   (N, C/2, Px) int32: the input's pixels (H*W, rounded up to whole tiles), two int16
         channels per word (even channel in the low half);
    w    (Ob, C/2) int32: per output channel (rounded up to whole blocks of `ot`) and channel
         pair, its two weights as one word (the broadcast vpmaddwd operand);
    out  the op's NCHW output, seen as (N, O, H*W): out[b, o, p] = epilogue(acc, b, o, p).
    A task is a tile of pv*lanes pixels of one image, for every output channel in blocks
    of `ot`; the tile's C/2 input words stay in L1 while the blocks run. Each step loads pv
    input vectors, broadcasts ot weight words, and does ot*pv vpmaddwd + vpaddd into
    accumulators that stay in registers. A finished vector goes through the epilogue with
    its channel's constants, and its pixels are one contiguous store, where the
    channel-lanes kernel (pmadd_conv) has to transpose each tile: with the few input
    channels of MobileNetV2's expansion convs the epilogue is most of the work."""
    from tvm.script import tirx as T

    intrin, v32, v16 = _pmadd_intrinsic(lanes)
    n_, cp, px = (int(d) for d in xq.shape)
    ob = int(w.shape[0])
    p = int(out.shape[2]) * int(out.shape[3])
    tile = pv * lanes
    assert px % tile == 0 and ob % ot == 0
    pb = px // tile
    tasks = _task_loop(n_ * channels * p * cp * 2)

    @T.prim_func(check_well_formed=False)
    def pointwise():
        o3 = T.decl_buffer((n_, channels, p), out.dtype, data=out.data)
        for task in tasks(n_ * pb):
            # the image by substitution (see pmadd_conv), the first pixel as a Let: the
            # substituted form measured slower on the 144->24 conv at 56x56
            b = T.meta_var(task // pb)
            p0 = task % pb * tile
            for qo in range(ob // ot):
                a = T.decl_buffer((ot * tile,), "int32", scope="global")
                for t in T.unroll(ot * pv):
                    a[T.ramp(t * lanes, 1, lanes)] = T.Broadcast(T.int32(0), lanes)
                for k in range(cp):
                    for q in T.unroll(ot):
                        for v in T.unroll(pv):
                            a[T.ramp((q * pv + v) * lanes, 1, lanes)] = \
                                a[T.ramp((q * pv + v) * lanes, 1, lanes)] + \
                                T.call_llvm_pure_intrin(
                                    v32, intrin,
                                    T.reinterpret(v16, xq[b, k, T.ramp(p0 + v * lanes, 1,
                                                                       lanes)]),
                                    T.reinterpret(v16, T.Broadcast(w[qo * ot + q, k], lanes)))
                # a whole tile's pixels of a channel go through the epilogue as one vector
                # (16 lanes narrow to bytes with pack instructions); the last tile, vector by
                # vector and its partial vector lane by lane
                for q in T.unroll(ot):
                    if qo * ot + q < channels:
                        if p0 + tile <= p:
                            o3[b, qo * ot + q, T.ramp(p0, 1, tile)] = epilogue(
                                a[T.ramp(q * tile, 1, tile)], b, qo * ot + q, p0)
                        else:
                            for v in T.unroll(pv):
                                if p0 + (v + 1) * lanes <= p:
                                    o3[b, qo * ot + q, T.ramp(p0 + v * lanes, 1, lanes)] = \
                                        epilogue(a[T.ramp((q * pv + v) * lanes, 1, lanes)], b,
                                                 qo * ot + q, p0 + v * lanes)
                                else:
                                    for t in range(lanes):
                                        if p0 + v * lanes + t < p:
                                            o3[b, qo * ot + q, p0 + v * lanes + t] = epilogue(
                                                a[(q * pv + v) * lanes + t], b, qo * ot + q,
                                                p0 + v * lanes + t)
    return pointwise.body


def depthwise_rows(x, w, out, jt: int, lanes: int, stride: tuple, dilation: tuple,
                   padding: tuple, zx: int, pad_dtype: str, epilogue):
    """The body of a hand-written depthwise convolution with output pixels in the vector lanes,
    in the NCHW layout the graph keeps (no change of layout on the way in or out):

    x    the op's (N, C, H, W) input;
    w    (C, KH, KW) int32: the centred weights, one broadcast scalar per tap;
    out  the op's NCHW output: out[b, c, i, j] = epilogue(acc, b, c, i, j).
    A task is one channel of one image. It first copies its plane, padded with zx, into a
    buffer of its own (it stays in cache) split into the SW = stride_w column phases
    (xp[r, p, j] = padded column j*SW + p), so every tap of either stride reads `lanes`
    contiguous values. Each output row then runs in tiles of `jt` vectors whose accumulators
    stay in registers while the (unrolled) taps run: each tap broadcasts its weight and does
    jt contiguous loads (widened to int32) and multiply-adds. A finished vector goes through
    the epilogue with the channel's constants, and its pixels are one contiguous store.
    (An earlier kernel with channels in the lanes needed the input transposed to NCHW[L]c
    and scattered its outputs back byte by byte, which cost more than its multiply-adds.)"""
    from tvm.script import tirx as T

    v32 = f"int32x{lanes}"
    n_, ch, h, wd = (int(d) for d in x.shape)
    _, kh, kw = (int(d) for d in w.shape)
    oh, ow = int(out.shape[2]), int(out.shape[3])
    sh, sw = stride
    dh, dw = dilation
    top, left, bottom, _ = padding
    assert sw in (1, 2)
    tile = jt * lanes
    jb = -(-ow // tile)
    hp = h + top + bottom
    # whole vectors of columns per phase, enough for the last tile's rightmost tap
    wq = -(-(jb * tile + (kw - 1) * dw // sw) // (2 * lanes)) * 2 * lanes
    # per phase p: the first buffer column that holds an input column, how many do, and
    # the input column it starts at
    runs = []
    for p in range(sw):
        j0 = max(0, -(-(left - p) // sw))
        j1 = min(wq - 1, (wd - 1 + left - p) // sw)
        runs.append((j0, max(0, j1 - j0 + 1), j0 * sw + p - left))
    (a0, an, ac), (b0, bn, bc) = runs[0], runs[-1]
    zv = T.Broadcast(T.Cast(pad_dtype, zx), 2 * lanes)
    tasks = _task_loop(n_ * ch * oh * ow * kh * kw)
    parallel = tasks is T.parallel
    # LLVM gathers a stride-2 byte load one vpinsrb per byte; with an even row length every
    # row starts on a 16-bit word, so both phases come from the row's words instead
    paired_bytes = PAIRED_BYTES and sw == 2 and wd % 2 == 0 and x.dtype in ("int8", "uint8")

    def byte_of(word, high: int):
        """The int8/uint8 code in the low (high=0) or high byte of a uint16 word, as
        pad_dtype."""
        if x.dtype == "uint8":
            return T.Cast(pad_dtype, (word >> T.uint16(8 * high)) & T.uint16(0xFF))
        signed = T.reinterpret("int16", word)
        return T.Cast(pad_dtype, (signed << T.int16(8 - 8 * high)) >> T.int16(8))

    @T.prim_func(check_well_formed=False)
    def dw_rows():
        # allocated once per call (a buffer declared per task is a heap workspace per task):
        # in parallel a plane per task, each filled just before its task reads it; serially
        # one plane that every task reuses
        planes = T.decl_buffer((n_ * ch if parallel else 1, hp, sw, wq), pad_dtype,
                               scope="global")
        xw = T.decl_buffer((n_ * ch * h * wd // 2,), "uint16", data=x.data)
        for task in tasks(n_ * ch):
            # by substitution, not Lets (see pmadd_conv)
            b = T.meta_var(task // ch)
            c = T.meta_var(task % ch)
            xp = T.decl_buffer((hp, sw, wq), pad_dtype, data=planes.data,
                               elem_offset=(task if parallel else 0) * hp * sw * wq)
            for r in range(hp):
                for p in range(sw):
                    for jv in range(wq // (2 * lanes)):
                        xp[r, p, T.ramp(jv * 2 * lanes, 1, 2 * lanes)] = zv
            for r in range(h):
                if paired_bytes:
                    # stride 2 on 8-bit codes: a phase's columns are every other byte, so read
                    # the row as 16-bit words and take each word's low or high byte
                    if an > 0:
                        for j in T.vectorized(an):
                            xp[r + top, 0, a0 + j] = byte_of(
                                xw[((b * ch + c) * h + r) * (wd // 2) + ac // 2 + j], ac % 2)
                    if bn > 0:
                        for j in T.vectorized(bn):
                            xp[r + top, 1, b0 + j] = byte_of(
                                xw[((b * ch + c) * h + r) * (wd // 2) + bc // 2 + j], bc % 2)
                else:
                    if an > 0:
                        for j in T.vectorized(an):
                            xp[r + top, 0, a0 + j] = T.Cast(pad_dtype, x[b, c, r, ac + j * sw])
                    if sw == 2 and bn > 0:
                        for j in T.vectorized(bn):
                            xp[r + top, 1, b0 + j] = T.Cast(pad_dtype,
                                                             x[b, c, r, bc + j * 2])
            for i in range(oh):
                for jo in range(jb):
                    a = T.decl_buffer((tile,), "int32", scope="global")
                    for v in T.unroll(jt):
                        a[T.ramp(v * lanes, 1, lanes)] = T.Broadcast(T.int32(0), lanes)
                    for rkh in T.unroll(kh):
                        for rkw in T.unroll(kw):
                            for v in T.unroll(jt):
                                a[T.ramp(v * lanes, 1, lanes)] = \
                                    a[T.ramp(v * lanes, 1, lanes)] + \
                                    T.Cast(v32, xp[i * sh + rkh * dh, rkw * dw % sw,
                                                   T.ramp(jo * tile + v * lanes
                                                          + rkw * dw // sw, 1, lanes)]) \
                                    * T.Broadcast(T.Cast("int32", w[c, rkh, rkw]), lanes)
                    # a whole tile goes through the epilogue two vectors at a time (16 lanes
                    # narrow to bytes with pack instructions); the row's last tile, vector by
                    # vector and its partial vector lane by lane
                    if jo * tile + tile <= ow:
                        for v in T.unroll(jt // 2):
                            out[b, c, i, T.ramp(jo * tile + v * 2 * lanes, 1, 2 * lanes)] = \
                                epilogue(a[T.ramp(v * 2 * lanes, 1, 2 * lanes)], b, c, i,
                                         jo * tile + v * 2 * lanes)
                        if jt % 2 == 1:
                            out[b, c, i, T.ramp(jo * tile + (jt - 1) * lanes, 1, lanes)] = \
                                epilogue(a[T.ramp((jt - 1) * lanes, 1, lanes)], b, c, i,
                                         jo * tile + (jt - 1) * lanes)
                    else:
                        for v in T.unroll(jt):
                            if jo * tile + (v + 1) * lanes <= ow:
                                out[b, c, i, T.ramp(jo * tile + v * lanes, 1, lanes)] = \
                                    epilogue(a[T.ramp(v * lanes, 1, lanes)], b, c, i,
                                             jo * tile + v * lanes)
                            else:
                                for t in range(lanes):
                                    if jo * tile + v * lanes + t < ow:
                                        out[b, c, i, jo * tile + v * lanes + t] = epilogue(
                                            a[v * lanes + t], b, c, i, jo * tile + v * lanes + t)
    return dw_rows.body
