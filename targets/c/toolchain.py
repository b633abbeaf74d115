"""Building and running emitted C: host gcc, arm-none-eabi-gcc for Cortex-M, QEMU.

These helpers serve the tests, the benchmark and `measure()`. Every failure raises
`ToolchainError` with the command and its output, so a broken build says why.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qcompile.errors import QCompileError
from qcompile.ir.types import numpy_dtype

SUPPORT = Path(__file__).resolve().parent / "support"
MODEL_SOURCES = ("model.c", "model_weights.c", "qc_kernels.c")
WARNINGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")

#: Emulated boards (QEMU machine) per Cortex-M core, and the arch flags the core needs.
BOARDS = {"cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500", "cortex-m33": "mps2-an505"}


class ToolchainError(QCompileError):
    """A compiler, linker or emulator is missing or failed."""


def which(tool: str) -> Optional[str]:
    return shutil.which(tool)


def have_host_cc() -> bool:
    return which("gcc") is not None


def have_arm() -> bool:
    return all(which(t) for t in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"))


def run(cmd: Sequence[str], cwd: Optional[Path] = None, timeout: float = 300) -> str:
    try:
        proc = subprocess.run(list(map(str, cmd)), cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError as exc:
        raise ToolchainError(f"{cmd[0]} is not installed ({exc})") from None
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"timed out after {timeout} s: {' '.join(map(str, cmd))}") from None
    if proc.returncode != 0:
        raise ToolchainError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                             f"{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------- host

def _kernel_object(src: Path, dsp: bool, opt: str, extra: Sequence[str]) -> Path:
    """qc_kernels.c compiled once per content and flags: it is the same for every model, and
    the slowest file to compile."""
    import hashlib
    import tempfile
    text = (Path(src) / "qc_kernels.c").read_bytes() + (Path(src) / "qc_kernels.h").read_bytes()
    key = hashlib.sha256(text + repr((dsp, opt, tuple(extra))).encode()).hexdigest()[:20]
    cache = Path(tempfile.gettempdir()) / f"qc-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"
    cache.mkdir(exist_ok=True)
    obj = cache / f"{key}.o"
    if not obj.exists():
        part = cache / f"{key}.{os.getpid()}.tmp.o"
        run(["gcc", *WARNINGS, opt, f"-DQC_DSP={int(dsp)}", f"-I{src}", *extra, "-c",
             Path(src) / "qc_kernels.c", "-o", part])
        os.replace(part, obj)
    return obj


def host_build(src: Path, exe: Path, dsp: bool = False, opt: str = "-O2",
               extra: Sequence[str] = (), driver: str = "driver.c") -> Path:
    """Compile the emitted sources in `src` with a driver from support/ into `exe` (warnings
    are errors): `driver.c` runs one inference, `dataset_driver.c` one per input record."""
    src = Path(src)
    files = [src / f for f in MODEL_SOURCES if f != "qc_kernels.c"] + [SUPPORT / driver]
    run(["gcc", *WARNINGS, opt, f"-DQC_DSP={int(dsp)}", f"-I{src}", *extra, *files,
         _kernel_object(src, dsp, opt, extra), "-o", exe])
    return Path(exe)


@dataclass
class PortSpec:
    shape: tuple
    dtype: np.dtype


def ports(prog) -> tuple[list[PortSpec], list[PortSpec]]:
    ins = [PortSpec(p.shape, numpy_dtype(p.value.dtype)) for p in prog.inputs]
    outs = [PortSpec(p.shape, numpy_dtype(p.value.dtype)) for p in prog.outputs]
    return ins, outs


def write_inputs(path: Path, arrays: Sequence[np.ndarray], specs: Sequence[PortSpec]) -> None:
    with open(path, "wb") as f:
        for a, s in zip(arrays, specs):
            f.write(np.ascontiguousarray(np.asarray(a).reshape(s.shape), s.dtype).astype(
                s.dtype.newbyteorder("<")).tobytes())


def read_outputs(path: Path, specs: Sequence[PortSpec]) -> list[np.ndarray]:
    data = Path(path).read_bytes()
    out, pos = [], 0
    for s in specs:
        n = int(np.prod(s.shape, dtype=np.int64)) * s.dtype.itemsize
        out.append(np.frombuffer(data[pos:pos + n], dtype=s.dtype.newbyteorder("<"))
                   .astype(s.dtype).reshape(s.shape))
        pos += n
    return out


def run_host(exe: Path, prog, inputs: Sequence[np.ndarray], workdir: Path) -> list[np.ndarray]:
    ins, outs = ports(prog)
    workdir = Path(workdir)
    write_inputs(workdir / "input.bin", inputs, ins)
    run([exe, workdir / "input.bin", workdir / "output.bin"], cwd=workdir)
    return read_outputs(workdir / "output.bin", outs)


def call_batch(prog) -> int:
    """Samples one model_run_io call takes: the leading dimension every port shares (1 when
    the graph's batch is dynamic, since the backend emits one batch item per call)."""
    ins, outs = ports(prog)
    leading = {s.shape[0] if s.shape else None for s in ins + outs}
    if len(leading) != 1 or None in leading:
        shapes = ", ".join(str(tuple(s.shape)) for s in ins + outs)
        raise ToolchainError(f"graph @{prog.graph.name}: its C inputs and outputs {shapes} do "
                             f"not share a leading batch dimension, so a data set cannot be "
                             f"split into model_run_io calls")
    return int(leading.pop())


def run_host_dataset(exe: Path, prog, inputs: Sequence[np.ndarray],
                     workdir: Path) -> list[np.ndarray]:
    """Run a `dataset_driver.c` build of `prog` on N samples: `inputs` are the C boundary
    tensors with the samples along axis 0. They are cut into model_run_io calls of
    `call_batch(prog)` samples (the last one padded by repeating its final sample, whose
    results are dropped), all run by one process; returns the outputs, N samples each."""
    ins, outs = ports(prog)
    if len(inputs) != len(ins):
        raise ToolchainError(f"graph @{prog.graph.name}: {len(inputs)} input arrays for "
                             f"{len(ins)} C inputs")
    batch = call_batch(prog)
    n = int(np.asarray(inputs[0]).shape[0]) if len(inputs) else 0
    calls = -(-n // batch)
    if n == 0:
        return [np.zeros((0, *s.shape[1:]), s.dtype) for s in outs]
    records = []
    for i, (a, s) in enumerate(zip(inputs, ins)):
        a = np.asarray(a)
        if a.shape[0] != n or a.shape[1:] != tuple(s.shape[1:]):
            raise ToolchainError(f"graph @{prog.graph.name}: C input {i} takes samples of "
                                 f"shape {tuple(s.shape[1:])}; got an array of shape {a.shape} "
                                 f"({n} samples expected)")
        if calls * batch > n:
            a = np.concatenate([a, np.repeat(a[-1:], calls * batch - n, axis=0)])
        le = np.ascontiguousarray(a, s.dtype).astype(s.dtype.newbyteorder("<"))
        records.append(le.view(np.uint8).reshape(calls, -1))
    workdir = Path(workdir)
    (workdir / "dataset_in.bin").write_bytes(np.concatenate(records, axis=1).tobytes())
    run([exe, workdir / "dataset_in.bin", workdir / "dataset_out.bin"], cwd=workdir)
    data = np.frombuffer((workdir / "dataset_out.bin").read_bytes(), np.uint8)
    sizes = [int(np.prod(s.shape, dtype=np.int64)) * s.dtype.itemsize for s in outs]
    if data.size != calls * sum(sizes):
        raise ToolchainError(f"{exe} wrote {data.size} bytes for {calls} calls of "
                             f"{sum(sizes)} output bytes each")
    table, result, pos = data.reshape(calls, -1), [], 0
    for s, size in zip(outs, sizes):
        raw = np.ascontiguousarray(table[:, pos:pos + size])
        a = raw.view(s.dtype.newbyteorder("<")).astype(s.dtype)
        result.append(a.reshape(calls * batch, *s.shape[1:])[:n])
        pos += size
    return result


# ---------------------------------------------------------------------------------- Cortex-M

def arm_flags(cpu: str, float_abi: str = "soft", fpu: Optional[str] = None) -> list[str]:
    flags = [f"-mcpu={cpu}", "-mthumb", f"-mfloat-abi={float_abi}"]
    if fpu and float_abi != "soft":
        flags.append(f"-mfpu={fpu}")
    return flags


def cross_compile_objects(src: Path, build: Path, cpu: str, dsp: bool, opt: str = "-O2",
                          float_abi: str = "soft") -> list[Path]:
    """Model objects only (for the float-symbol check and size figures)."""
    build.mkdir(parents=True, exist_ok=True)
    objs = []
    for f in MODEL_SOURCES:
        obj = build / (Path(f).stem + ".o")
        run(["arm-none-eabi-gcc", *WARNINGS, opt, *arm_flags(cpu, float_abi),
             f"-DQC_DSP={int(dsp)}", f"-I{src}", "-ffunction-sections", "-fdata-sections",
             "-c", Path(src) / f, "-o", obj])
        objs.append(obj)
    return objs


def float_symbols(objs: Sequence[Path]) -> list[str]:
    """Soft-float helper symbols (__aeabi_f*, __aeabi_d*) the objects reference."""
    out = run(["arm-none-eabi-nm", "-u", *objs])
    syms = {line.split()[-1] for line in out.splitlines() if line.strip()}
    return sorted(s for s in syms if s.startswith(("__aeabi_f", "__aeabi_d", "__aeabi_i2f",
                                                   "__aeabi_l2f", "__aeabi_ui2f")))


def cross_build(src: Path, elf: Path, cpu: str, dsp: bool, bench: bool = False,
                opt: str = "-O2", float_abi: str = "soft") -> Path:
    """The driver firmware for the MPS2 board of `cpu`, with newlib + semihosting."""
    src = Path(src)
    files = [src / f for f in MODEL_SOURCES] + [SUPPORT / "driver.c", SUPPORT / "startup.c"]
    run(["arm-none-eabi-gcc", *WARNINGS[:-1], opt, *arm_flags(cpu, float_abi),
         f"-DQC_DSP={int(dsp)}", *(["-DQC_BENCH"] if bench else []), f"-I{src}",
         "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections",
         "-T", SUPPORT / "link.ld", "--specs=rdimon.specs", *files, "-lc", "-lrdimon",
         "-o", elf])
    return Path(elf)


def qemu_command(elf: Path, cpu: str, plugin: Optional[Path] = None,
                 mark: Optional[int] = None, log: Optional[Path] = None) -> list[str]:
    if cpu not in BOARDS:
        raise ToolchainError(f"no emulated board for cpu {cpu!r}; known: {', '.join(BOARDS)}")
    cmd = ["qemu-system-arm", "-M", BOARDS[cpu], "-nographic", "-monitor", "none",
           "-semihosting-config", "enable=on,target=native"]
    if plugin is not None:
        cmd += ["-icount", "shift=0", "-plugin", f"{plugin},mark={mark:#x}", "-d", "plugin",
                "-D", str(log)]
    return cmd + ["-kernel", str(elf)]


def run_qemu(elf: Path, cpu: str, prog, inputs: Sequence[np.ndarray], workdir: Path,
             timeout: float = 300) -> list[np.ndarray]:
    """Run the driver firmware on the emulated board; input.bin/output.bin in `workdir`."""
    ins, outs = ports(prog)
    workdir = Path(workdir)
    write_inputs(workdir / "input.bin", inputs, ins)
    out = workdir / "output.bin"
    if out.exists():
        out.unlink()
    run(qemu_command(elf, cpu), cwd=workdir, timeout=timeout)
    if not out.exists():
        raise ToolchainError(f"the firmware {elf} wrote no output.bin")
    return read_outputs(out, outs)


def build_plugin(dest: Path) -> Path:
    """The instruction-counting QEMU plugin (support/qemu_insncount.c) as a shared object."""
    so = Path(dest) / "libinsncount.so"
    if not so.exists():
        run(["gcc", "-O2", "-shared", "-fPIC", "-o", so, SUPPORT / "qemu_insncount.c"])
    return so


def symbol_address(elf: Path, name: str) -> int:
    for line in run(["arm-none-eabi-nm", elf]).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise ToolchainError(f"{elf} has no symbol {name}")


def count_instructions(elf: Path, cpu: str, prog, inputs: Sequence[np.ndarray],
                       workdir: Path) -> tuple[int, list[np.ndarray]]:
    """Instructions of one model_run_io() call (bench_mark brackets), and its outputs."""
    workdir = Path(workdir)
    plugin = build_plugin(workdir)
    ins, outs = ports(prog)
    write_inputs(workdir / "input.bin", inputs, ins)
    log = workdir / "plugin.log"
    cmd = qemu_command(elf, cpu, plugin, symbol_address(elf, "bench_mark"), log)
    run(cmd, cwd=workdir)
    marks = [int(line.split()[2]) for line in log.read_text().splitlines()
             if line.startswith("MARK ")]
    if len(marks) < 2:
        raise ToolchainError(f"the plugin saw {len(marks)} bench_mark calls, expected 2 ({log})")
    # MARK counts instructions before each bench_mark call; the call itself (bl + bx lr)
    # adds two that are not the model's.
    return marks[1] - marks[0] - 2, read_outputs(workdir / "output.bin", outs)


def section_sizes(elf_or_obj: Sequence[Path]) -> dict[str, int]:
    """text/data/bss summed over files, from arm-none-eabi-size (Berkeley format)."""
    out = run(["arm-none-eabi-size", *elf_or_obj])
    tot = {"text": 0, "data": 0, "bss": 0}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit():
            tot["text"] += int(parts[0])
            tot["data"] += int(parts[1])
            tot["bss"] += int(parts[2])
    return tot


def env_cpu_count() -> int:
    return os.cpu_count() or 1
