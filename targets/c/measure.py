"""Figures of a model compiled for a Cortex-M: flash, RAM and instructions per inference.

    from qcompile.targets.c.measure import measure
    figures = measure(graph, "cortex-m4")      # emits, cross-compiles, runs under QEMU

* flash: text + data (`arm-none-eabi-size`; the `const` weights are .rodata, counted in text)
  that the model adds to a minimal program linked with --gc-sections (kernels the model does
  not call are dropped); `text_bytes` etc. are the model's objects before that;
* RAM: the static arena (.bss) + data + the deepest stack of `model_run`, from GCC's call-graph
  stack information (`-fcallgraph-info=su`, static frames only, library calls counted as 0);
* instructions: QEMU with `-icount shift=0` and the instruction-counting plugin, between the
  `bench_mark()` calls that bracket one inference in the driver firmware. The firmware's
  outputs are also compared with the integer interpreter (`bit_exact`).
"""
from __future__ import annotations

import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from qcompile.ir.types import int_bits, int_range, is_signed

from . import toolchain as tc
from .emitter import CProgram
from .render import write_files


def _random_inputs(prog: CProgram, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for p in prog.inputs:
        q = p.value.quant
        lo, hi = (q.qmin, q.qmax) if q is not None else int_range(int_bits(p.value.dtype),
                                                                   is_signed(p.value.dtype))
        out.append(rng.integers(lo, hi + 1, p.shape).astype(tc.numpy_dtype(p.value.dtype)))
    return out


def stack_depth(ci_files: Sequence[Path], root: str = "model_run_io") -> int:
    """The deepest static stack from `root` over GCC's .ci call graphs (bytes)."""
    size: dict[str, int] = {}
    edges: dict[str, set] = defaultdict(set)
    node_re = re.compile(r'node: \{ title: "([^"]+)" label: "([^"]*)"')
    edge_re = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')
    for f in ci_files:
        for line in Path(f).read_text().splitlines():
            m = node_re.search(line)
            if m:
                title = m.group(1).split(":")[-1]
                b = re.search(r"(\d+) bytes", m.group(2))
                if b:
                    size[title] = max(size.get(title, 0), int(b.group(1)))
                continue
            m = edge_re.search(line)
            if m:
                edges[m.group(1).split(":")[-1]].add(m.group(2).split(":")[-1])
    memo: dict[str, int] = {}

    def depth(fn: str, seen: frozenset) -> int:
        if fn in memo:
            return memo[fn]
        if fn in seen:  # recursion does not occur in the kernels; stop rather than loop
            return 0
        d = size.get(fn, 0) + max((depth(c, seen | {fn}) for c in edges.get(fn, ())), default=0)
        memo[fn] = d
        return d

    return depth(root, frozenset())


def model_sizes(src: Path, build: Path, cpu: str, dsp: bool) -> dict:
    """text/data/bss and stack depth of the model's objects for `cpu`."""
    build.mkdir(parents=True, exist_ok=True)
    objs = []
    for f in tc.MODEL_SOURCES:
        obj = build / (Path(f).stem + ".o")
        tc.run(["arm-none-eabi-gcc", *tc.WARNINGS, "-O2", *tc.arm_flags(cpu), f"-DQC_DSP={int(dsp)}",
                f"-I{src}", "-fcallgraph-info=su", "-c", Path(src) / f, "-o", obj], cwd=build)
        objs.append(obj)
    sizes = tc.section_sizes(objs)
    stack = stack_depth(sorted(build.glob("*.ci")), "model_run_io")
    # flash: what --gc-sections keeps of the model in a minimal program, minus an empty one
    probes = []
    for empty in (False, True):
        elf = build / ("probe_empty.elf" if empty else "probe.elf")
        files = [] if empty else [Path(src) / f for f in tc.MODEL_SOURCES]
        tc.run(["arm-none-eabi-gcc", "-std=c99", "-O2", *tc.arm_flags(cpu), f"-DQC_DSP={int(dsp)}",
                f"-I{src}", *(["-DSIZE_PROBE_EMPTY"] if empty else []), "-ffunction-sections",
                "-fdata-sections", "-Wl,--gc-sections", "--specs=nano.specs",
                "--specs=nosys.specs", "-T", tc.SUPPORT / "link.ld", tc.SUPPORT / "startup.c",
                tc.SUPPORT / "size_probe.c", *files, "-o", elf], cwd=build)
        probes.append(tc.section_sizes([elf]))
    flash = (probes[0]["text"] + probes[0]["data"]) - (probes[1]["text"] + probes[1]["data"])
    return {**sizes, "flash": flash, "stack_bytes": stack,
            "float_symbols": tc.float_symbols(objs)}


def measure(graph, cpu: str = "cortex-m4", dsp: Optional[bool] = None, target: Any = None,
            inputs: Optional[Sequence[np.ndarray]] = None,
            workdir: Optional[Path] = None) -> dict:
    """Emit `graph` for `cpu` (an emulated MPS2 board: cortex-m4, cortex-m7, cortex-m33), build
    it, run one inference under QEMU and return the figures (see the module docstring).

    `dsp` defaults to the target's backend option, else to True for Armv7E-M cores. `inputs`
    are integer tensors at the C boundary (random codes when omitted)."""
    from .testing import boundary_arrays
    if dsp is None:
        opts = getattr(target, "backend_options", None) or {}
        dsp = bool(opts.get("dsp", cpu in ("cortex-m4", "cortex-m7", "cortex-m33")))
    tmp = tempfile.TemporaryDirectory(prefix="qc-measure-") if workdir is None else None
    work = Path(workdir) if workdir is not None else Path(tmp.name)
    try:
        prog = CProgram(graph)
        src = work / "src"
        write_files(prog, src, getattr(target, "name", cpu), dsp)
        sizes = model_sizes(src, work / "obj", cpu, dsp)
        elf = tc.cross_build(src, work / "fw.elf", cpu, dsp, bench=True)
        ins = list(inputs) if inputs is not None else _random_inputs(prog)
        count, outs = tc.count_instructions(elf, cpu, prog, ins, work)
        _, ref = boundary_arrays(_int_boundary_graph(graph, prog), ins, prog)
        exact = all(np.array_equal(r, o) for r, o in zip(ref, outs))
        macs = prog.macs()
        return {
            "cpu": cpu, "board": tc.BOARDS[cpu], "dsp": dsp,
            "instructions": int(count), "macs": int(macs),
            "instructions_per_mac": round(count / macs, 3) if macs else None,
            "flash_bytes": sizes["flash"],
            "ram_bytes": sizes["data"] + sizes["bss"] + sizes["stack_bytes"],
            "arena_bytes": prog.plan.arena_size, "arena_lower_bound_bytes": prog.plan.lower_bound,
            "text_bytes": sizes["text"], "data_bytes": sizes["data"], "bss_bytes": sizes["bss"],
            "stack_bytes": sizes["stack_bytes"], "constant_bytes": prog.weight_bytes(),
            "raw_weight_bytes": prog.raw_weight_bytes(), "bit_exact": bool(exact),
            "float_symbols": sizes["float_symbols"],
        }
    finally:
        if tmp is not None:
            tmp.cleanup()


def _int_boundary_graph(graph, prog: CProgram):
    """`graph` cut at the C boundary, so the interpreter takes the integer inputs directly."""
    g = graph.copy()
    for port, v in zip(prog.inputs, list(g.inputs)):
        if port.boundary is None:
            continue
        q = g.values[port.value.name]
        node = q.producer
        new_in = g.add_input(port.value.name + ".in", q.type.with_shape(port.shape), q.quant)
        g.replace_all_uses(q, new_in)
        g.erase(node)
        g.inputs.remove(v)
        g.values.pop(v.name, None)
        g.rename(new_in, port.value.name)
    g.outputs = [g.values[p.value.name] for p in prog.outputs]
    for n in list(reversed(g.nodes)):  # drop the output dequantize nodes (now unused)
        if all(not o.users and o not in g.outputs for o in n.outputs):
            g.erase(n)
    return g
