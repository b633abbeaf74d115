"""One fused MAC + requantize kernel of the TVM backend, with the older kernel beside the new
one in the same run: qlinear on MiniLM shapes (the vpmaddwd GEMM against the row-vectorised
dense kernel), convolutions on ResNet-18/MobileNetV2 shapes (the vpmaddwd direct conv against
the vpmulld packed conv), depthwise convolutions (the pixel-lanes kernel against the plain
row-vectorised one), 1x1 convolutions on large maps (the pixel-lanes vpmaddwd kernel
against pmadd_conv), the requantize epilogue of the pixel-lanes kernels (SRDHM two lanes
per int64 word against lane by lane; RDBPOT in its short form for right shifts known to be
at least 1 against the general one), and the stride-2 depthwise kernel's column phases
(read as 16-bit words against a stride-2 byte load).

    python benchmarks/tvm_kernels.py [--runs 40] [--threads 2] [--only epilogue]

Each kernel is a one-node integer graph (u8 input, per-channel gemmlowp_double requantize to
i8, lower-integer's default) built with
`qcompile.targets.tvm.build` for this CPU at batch 1; both versions are checked bit-exact
against the interpreter first. Times are the minimum of --runs calls, in milliseconds, with
old and new taking turns 10 calls at a time; the ratio is old / new (above 1: the new kernel
is faster).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--runs", type=int, default=40)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--only", default="", help="run the kernels whose label contains this")
args = ap.parse_args()
os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))  # before TVM starts its pool

import qcompile  # noqa: E402
from qcompile.targets import tvm as qtvm  # noqa: E402
from qcompile.targets.c.testing import IntGraphBuilder  # noqa: E402
from qcompile.targets.tvm import arith  # noqa: E402
from qcompile.targets.tvm import ops as tvm_ops  # noqa: E402
from qcompile.targets.tvm import schedules  # noqa: E402

#: the requantize rounding of every graph: lower-integer's default (TFLite's)
ROUNDING = "gemmlowp_double"
LINEARS = [((128, 384), 384), ((128, 384), 1536), ((128, 1536), 384), ((8, 128, 384), 1536)]
CONVS = [((1, 64, 56, 56), 64, 3, 1), ((1, 256, 14, 14), 256, 3, 1), ((1, 144, 28, 28), 32, 1, 1),
         ((1, 576, 14, 14), 96, 1, 1), ((1, 16, 112, 112), 96, 1, 1)]
DEPTHWISE = [((1, 144, 56, 56), 1), ((1, 384, 14, 14), 1), ((1, 96, 112, 112), 2),
             ((1, 960, 7, 7), 1)]
# the requantize epilogue's SRDHM lane by lane (old) or two lanes per int64 word (new), in
# the pixel-lanes kernels, whose epilogue gets whole vectors
EPILOGUE = [((1, 16, 112, 112), 96), ((1, 24, 56, 56), 144)]
EPILOGUE_DW = [(1, 144, 56, 56)]
# depthwise_rows at stride 2: its column phases from a stride-2 byte load (old) or from
# 16-bit words (new)
PHASES = [(1, 96, 112, 112), (1, 144, 56, 56)]
POINTWISE = [((1, 16, 112, 112), 96), ((1, 24, 56, 56), 144), ((1, 144, 56, 56), 24),
             ((1, 32, 28, 28), 192), ((1, 96, 14, 14), 576), ((1, 160, 7, 7), 960)]


def linear_graph(shape, o):
    b = IntGraphBuilder("fc", seed=0, rounding=ROUNDING)
    x = b.input(shape, "u8")
    return b.output(b.requant(b.linear(x, o), axis=len(shape) - 1)), x


def conv_graph(shape, o, k, stride, groups=1):
    b = IntGraphBuilder("conv", seed=0, rounding=ROUNDING)
    x = b.input(shape, "u8")
    conv = b.conv(x, o, k=k, stride=stride, padding=(k // 2,) * 4, groups=groups)
    return b.output(b.requant(conv)), x


def build_kernel(g, x, switch: str, new: bool):
    """The module of graph `g` with the switch on (new) or off (old), checked bit-exact
    against the interpreter, and its input codes."""
    owner = {"PAIRED_SRDHM": arith, "SHORT_RDBPOT": arith,
             "PAIRED_BYTES": schedules}.get(switch, tvm_ops)
    setattr(owner, switch, new)
    # the conv cases compare pmadd_conv with the older kernel, so 1x1 convs stay off the
    # pixel-lanes kernel there
    if switch in ("POINTWISE", "PMADD_CONV"):
        tvm_ops.POINTWISE = new and switch == "POINTWISE"
    try:
        module = qtvm.build(g, None, batch=x.shape[0])
    finally:
        setattr(owner, switch, True)
        tvm_ops.POINTWISE = True
    xs = np.random.default_rng(1).integers(0, 256, x.shape).astype(np.uint8)
    for r, o in zip(qcompile.run(g, [xs], mode="int"), module(xs)):
        np.testing.assert_array_equal(r, o)  # both kernels are the op, bit for bit
    return module, xs


def time_old_new(g, x, switch: str) -> tuple[float, float]:
    """Minimum ms per call of the old and the new kernel. The two take turns, 10 calls at a
    time, so a slow stretch of a shared machine hits both alike."""
    mods = [build_kernel(g, x, switch, new) for new in (False, True)]
    best = [float("inf"), float("inf")]
    for _ in range(-(-args.runs // 10)):
        for i, (module, xs) in enumerate(mods):
            for _ in range(10):
                t0 = time.perf_counter()
                module(xs)
                best[i] = min(best[i], time.perf_counter() - t0)
    return 1000 * best[0], 1000 * best[1]


def main() -> None:
    cases = [(f"qlinear {'x'.join(map(str, s))} -> {o}", "PMADD_GEMM", *linear_graph(s, o))
             for s, o in LINEARS]
    cases += [(f"conv {k}x{k} {s[1]}->{o} @{s[2]}" + (f" s{st}" if st > 1 else ""), "PMADD_CONV",
               *conv_graph(s, o, k, st)) for s, o, k, st in CONVS]
    cases += [(f"depthwise 3x3 {s[1]} @{s[2]}" + (f" s{st}" if st > 1 else ""),
               "DEPTHWISE_ROWS", *conv_graph(s, s[1], 3, st, groups=s[1]))
              for s, st in DEPTHWISE]
    cases += [(f"pointwise 1x1 {s[1]}->{o} @{s[2]}", "POINTWISE", *conv_graph(s, o, 1, 1))
              for s, o in POINTWISE]
    cases += [(f"epilogue 1x1 {s[1]}->{o} @{s[2]}", "PAIRED_SRDHM", *conv_graph(s, o, 1, 1))
              for s, o in EPILOGUE]
    cases += [(f"epilogue dw 3x3 {s[1]} @{s[2]}", "PAIRED_SRDHM",
               *conv_graph(s, s[1], 3, 1, groups=s[1])) for s in EPILOGUE_DW]
    cases += [(f"rdbpot 1x1 {s[1]}->{o} @{s[2]}", "SHORT_RDBPOT", *conv_graph(s, o, 1, 1))
              for s, o in EPILOGUE]
    cases += [(f"rdbpot conv 3x3 {s[1]}->{o} @{s[2]}", "SHORT_RDBPOT", *conv_graph(s, o, 3, 1))
              for s, o, _, _ in CONVS[:1]]
    cases += [(f"phases dw 3x3 {s[1]} @{s[2]} s2", "PAIRED_BYTES",
               *conv_graph(s, s[1], 3, 2, groups=s[1])) for s in PHASES]
    print(f"{'kernel':34s} {'old ms':>9s} {'new ms':>9s} {'old/new':>8s}")
    for label, switch, g, x in (c for c in cases if args.only in c[0]):
        old, new = time_old_new(g, x, switch)
        print(f"{label:34s} {old:9.3f} {new:9.3f} {old / new:8.2f}", flush=True)
    print(f"\n{args.threads} threads (TVM_NUM_THREADS), minimum of {args.runs} calls, batch 1, "
          f"u8 input, per-channel requantize")


if __name__ == "__main__":
    sys.exit(main())
