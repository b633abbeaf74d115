"""Cortex-M figures of the C backend: instructions per inference and per MAC, memory.

    python benchmarks/mcu_kernels.py                 # everything (a few minutes)
    python benchmarks/mcu_kernels.py --models digits --cpus cortex-m4

For each model (the digits CNN and MTCNN's RNet, lowered with the target's default pipeline) on
the emulated Cortex-M4 (mps2-an386) and Cortex-M7 (mps2-an500), with and without the DSP
instructions: instructions per inference counted by QEMU (`-icount shift=0` and the counting
plugin, one `model_run` bracketed by marks), instructions per MAC, the arena against its lower
bound, flash (the model's code + constants after --gc-sections) against the raw weight bytes.
Single layers (3x3, 1x1, depthwise 3x3 convolutions, a fully connected layer) show the
per-kernel cost; the reference points for well-tuned int8 kernels on a Cortex-M4 with SMLAD are
about 2.1 instructions/MAC for a 3x3 convolution, 2.7 for 1x1, 2.1 for a fully connected layer
and 8 for a 3x3 depthwise convolution (a plain C loop with one MAC per iteration needs 6 to 8).

QEMU counts instructions, not cycles: it models no pipeline, no memory wait states.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def layer_graphs():
    from qcompile.targets.c.testing import IntGraphBuilder

    def conv(name, shape, o, k, groups=1, padding=(0, 0, 0, 0)):
        b = IntGraphBuilder(name, 0, rounding="gemmlowp_double")
        x = b.input(shape, "i8")
        return b.output(b.requant(b.conv(x, o, k=k, groups=groups, padding=padding)))

    def fc(name, k, o):
        b = IntGraphBuilder(name, 0, rounding="gemmlowp_double")
        x = b.input((1, k), "i8")
        return b.output(b.requant(b.linear(x, o), axis=1))

    return {
        "conv3x3 16->32 @16x16": conv("conv3x3", (1, 16, 16, 16), 32, 3, padding=(1, 1, 1, 1)),
        "conv1x1 32->64 @16x16": conv("conv1x1", (1, 32, 16, 16), 64, 1),
        "depthwise3x3 32 @16x16": conv("dw3x3", (1, 32, 16, 16), 32, 3, groups=32,
                                       padding=(1, 1, 1, 1)),
        "fc 256->128": fc("fc", 256, 128),
    }


def model_graphs(names):
    from qcompile.targets.c.testing import lowered_model
    return {name: lowered_model(name)[0] for name in names}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["digits", "rnet"])
    ap.add_argument("--cpus", nargs="*", default=["cortex-m4", "cortex-m7"])
    ap.add_argument("--no-layers", action="store_true", help="skip the single-layer figures")
    args = ap.parse_args(argv)
    print("$ python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]]))

    from qcompile.targets import get_target
    from qcompile.targets.c import toolchain as tc
    from qcompile.targets.c.measure import measure
    if not tc.have_arm():
        print("needs arm-none-eabi-gcc (with newlib), arm-none-eabi-size and qemu-system-arm")
        return 1

    graphs = {} if args.no_layers else layer_graphs()
    graphs.update(model_graphs(args.models))
    header = (f"{'graph':26s} {'cpu':10s} {'dsp':>3s} {'MACs':>9s} {'instructions':>13s} "
              f"{'instr/MAC':>9s} {'arena B':>8s} {'bound B':>8s} {'flash B':>8s} "
              f"{'weights B':>9s} {'RAM B':>7s} exact")
    print(header)
    print("-" * len(header))
    for name, g in graphs.items():
        for cpu in args.cpus:
            for dsp in (False, True):
                m = measure(g, cpu, dsp=dsp, target=get_target(cpu))
                print(f"{name:26s} {cpu:10s} {'on' if dsp else 'off':>3s} {m['macs']:9d} "
                      f"{m['instructions']:13d} {m['instructions_per_mac']:9.2f} "
                      f"{m['arena_bytes']:8d} {m['arena_lower_bound_bytes']:8d} "
                      f"{m['flash_bytes']:8d} {m['raw_weight_bytes']:9d} {m['ram_bytes']:7d} "
                      f"{'yes' if m['bit_exact'] else 'NO'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
