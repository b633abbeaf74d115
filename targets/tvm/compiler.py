"""Compile an integer graph with TVM, export it, and load it back.

    mod = build(graph, {"kind": "llvm"})           # a TVMModule: mod(x) -> [outputs]
    files = export(mod, out_dir)                   # model.so, model.params, model.json
    run = load(out_dir)                            # the same callable, from the files

What is written:
  model.so      the Relax VM executable and its kernels (`ex.export_library`); for a target
                this machine cannot link for (another CPU triple without a cross compiler),
                model.o, the kernels' object file, instead;
  model.params  the weights and constant tables (`tvm.runtime.save_param_dict`), passed to
                `main` after the inputs, in the order model.json lists them;
  model.json    inputs, outputs (names, shapes, dtypes), the parameter order, the TVM target;
  tuning/       the tuning database (`tune.py`), when the module was tuned or built with one.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import tvm
import tvm_ffi
from tvm import relax

from qcompile.ir.graph import Graph

from .lower import Lowering, TVMBackendError, lower_graph, tvm_dtype
from .target import TargetSpec, is_cross, is_gpu, make_target
from .tune import TUNING_DIR, TVMTuningError

FILES_HOST = ("model.so", "model.params", "model.json")
FILES_CROSS = ("model.o", "model.params", "model.json")


@dataclass
class TVMModule:
    """A compiled graph: the VM executable, its parameters, and how to call it."""

    executable: object
    params: dict
    meta: dict
    target: object
    tuning: Optional[object] = None   # the TuningDatabase the build tuned into or applied
    _vm: object = field(default=None, repr=False)
    _run: Optional["Runner"] = field(default=None, repr=False)

    @property
    def source(self) -> Optional[str]:
        """The generated device source (CUDA C) for a GPU target."""
        todo = [self.executable.mod]
        while todo:
            m = todo.pop()
            if m.kind in ("cuda", "rocm", "metal", "opencl", "vulkan"):
                return m.inspect_source()
            todo.extend(m.imports)
        return None

    def device_binary(self, fmt: str = "ptx") -> Optional[str]:
        """The device code nvcc produced from the source (PTX text), if any."""
        todo = [self.executable.mod]
        while todo:
            m = todo.pop()
            if m.kind == "cuda":
                try:
                    return m.inspect_source(fmt)
                except Exception:  # the module keeps only the format it was built in
                    return None
            todo.extend(m.imports)
        return None

    def device(self):
        return device_for(self.target.kind.name)

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if self._vm is None:
            if is_cross(self.target):
                raise TVMBackendError(f"a module for {self.meta['target']} cannot run here")
            dev = self.device()
            self._vm = relax.VirtualMachine(self.executable, dev)
            params = [tvm.runtime.tensor(self.params[n], dev) for n in self.meta["params"]]
            self._run = Runner(self._vm["main"], dev, self.meta, params)
        return self._run(inputs)


def device_for(kind: str):
    """The TVM device that runs code of target kind `kind` ("llvm" -> cpu)."""
    return tvm.cpu(0) if kind in ("llvm", "c", "cpu") else tvm.device(kind, 0)


#: The kernels assume 64-byte aligned buffers (TVM's default data alignment): they use
#: aligned vector loads, so a misaligned input would fault.
ALIGNMENT = 64


def _aligned_empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class Runner:
    """Calls a module's VM function `main` on numpy inputs: checks them against the module's
    signature (shape; dtype, converting to a float input's dtype), and returns owned numpy
    outputs.

    On the CPU each input is copied into an aligned staging array that the VM reads in place
    (DLPack; the TVM tensors over the staging arrays are made once): going through
    `tvm.runtime.tensor`, or even checking each call's array for alignment, costs more than
    the whole digits CNN's kernels. One Runner serves one caller at a time."""

    def __init__(self, main, dev, meta: dict, params: list):
        self.main, self.dev, self.meta, self.params = main, dev, meta, params
        self.specs = [(i["name"], tuple(i["shape"]), np.dtype(i["dtype"])) for i in meta["inputs"]]
        self.many = len(meta["outputs"]) > 1
        self.on_cpu = dev.dlpack_device_type() == 1  # kDLCPU
        self.stage = [_aligned_empty(shape, dt) for _, shape, dt in self.specs] \
            if self.on_cpu else []
        self.staged = [tvm_ffi.from_dlpack(a) for a in self.stage]

    def _check(self, k: int, x) -> np.ndarray:
        name, shape, dt = self.specs[k]
        x = np.asarray(x)
        if x.shape != shape:
            raise TVMBackendError(f"input {name}: expected shape {shape} (the module was built "
                                  f"for batch {self.meta['batch']}), got {x.shape}")
        if x.dtype != dt and not np.issubdtype(dt, np.floating):
            raise TVMBackendError(f"input {name}: expected dtype {dt}, got {x.dtype}")
        return x

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self.specs):
            raise TVMBackendError(f"the model takes {len(self.specs)} inputs "
                                  f"({', '.join(s[0] for s in self.specs)}), got {len(inputs)}")
        xs = [self._check(k, x) for k, x in enumerate(inputs)]
        if self.on_cpu:
            for stage, x in zip(self.stage, xs):
                np.copyto(stage, x, casting="unsafe")  # float inputs convert here
            args = self.staged
        else:
            args = [tvm.runtime.tensor(np.ascontiguousarray(x, dtype=dt), self.dev)
                    for x, (_, _, dt) in zip(xs, self.specs)]
        out = self.main(*args, *self.params)
        outs = list(out) if self.many else [out]
        if not self.on_cpu:
            return [o.numpy() for o in outs]
        # an owned copy: a view would pin the VM's memory
        return [np.from_dlpack(o).copy() for o in outs]


# ---------------------------------------------------------------------------------- build

def _schedule_for(target, schedule: bool):
    if not schedule or is_gpu(target):
        return None
    from .schedules import cpu_scheduler
    return cpu_scheduler(target)


def build(graph: Graph, target: TargetSpec = None, batch: int = 1,
          schedule: bool = True, tune: int = 0, database=None) -> TVMModule:
    """Lower `graph` to Relax, schedule it, and compile it for `target` (default: this host's
    CPU). `batch` fixes the graph's dynamic batch dimension. `schedule=False` keeps TVM's
    default (plain loop) kernels on the CPU, which is slow but shows what scheduling adds.

    `tune=N` tunes the MAC kernels with MetaSchedule (N candidates in total) and keeps, per
    kernel, the faster of the tuned and the hand schedule; `database` is a folder: its records
    are applied (and kernels it lacks are tuned when `tune` > 0, then written back there)."""
    tgt = make_target(target)
    if tune < 0:
        raise TVMTuningError(f"tune={tune}: the number of tuning trials must be 0 or more")
    if (tune or database is not None) and (is_gpu(tgt) or is_cross(tgt)):
        raise TVMTuningError(f"tuning runs the kernels on this CPU; target "
                             f"{json.dumps(_spec_of(tgt))} cannot be tuned here")
    sched = _schedule_for(tgt, schedule)
    db = None
    if tune or database is not None:
        sched, db = _tuned(graph, batch, tgt, sched, tune, database)
    mod, params = _lower(graph, batch, sched, tgt)
    if is_gpu(tgt):
        mod = _gpu_schedule(mod, tgt)
    try:
        ex = tvm.compile(mod, target=tgt)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise TVMBackendError(f"TVM could not compile graph @{graph.name} for target "
                              f"{json.dumps(dict(_spec_of(tgt)))}: {first}") from exc
    meta = _meta(graph, batch, params, tgt)
    return TVMModule(ex, params, meta, tgt, tuning=db)


def _tuned(graph: Graph, batch: int, tgt, hand, trials: int, database):
    """The scheduler that applies tuning records, tuning first the kernels without one."""
    from .tune import TuningDatabase, applying_scheduler, collect_kernels, tune
    spec = _spec_of(tgt)
    if isinstance(database, TuningDatabase):
        db = database
    else:
        db = TuningDatabase.open(database, create=trials > 0) if database is not None \
            else TuningDatabase.empty()
    if trials:
        kernels = collect_kernels(lambda s: lower_graph(graph, batch, s), hand, spec)
        if any(k.key not in db.records for k in kernels):
            tune(kernels, tgt, trials, db)
            if db.folder is not None:
                db.save()
    return applying_scheduler(db, hand, tgt, spec), db


def _lower(graph: Graph, batch: int, sched, tgt):
    """lower_graph, telling the lowering where the hand-written dp4a kernels are built (a
    CUDA target; see cuda_kernels.dp4a_mode): the CPU scheduler says nothing on a GPU target,
    and a scheduler there would change the views the other ops take."""
    from .cuda_kernels import MODE_ATTR, dp4a_mode
    mode = dp4a_mode(tgt)
    if mode is None:
        return lower_graph(graph, batch, sched)
    low = Lowering(graph, batch, sched)
    setattr(low, MODE_ATTR, mode)
    return low.build(), dict(low.params)


def _gpu_schedule(mod, tgt):
    """Thread bindings for every kernel from dlight's default GPU rules; the hand-written
    kernels (cuda_kernels.py) carry "tirx.is_scheduled", which dlight leaves alone."""
    from tvm.s_tir import dlight as dl
    mod = relax.transform.LegalizeOps()(mod)
    with tgt:
        return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                       dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)


def _spec_of(tgt) -> dict:
    keep = ("kind", "mcpu", "mtriple", "mattr", "arch")
    d = {"kind": tgt.kind.name}
    for k in keep[1:]:
        v = tgt.attrs.get(k)
        if v is not None:
            d[k] = [str(x) for x in v] if not isinstance(v, str) and hasattr(v, "__len__") \
                and not hasattr(v, "capitalize") else str(v)
    return d


def _meta(graph: Graph, batch: int, params: dict, tgt) -> dict:
    from .lower import static_shapes
    shapes = static_shapes(graph, batch)

    def port(v):
        q = v.quant
        return {"name": v.name, "shape": list(shapes[v.name]), "dtype": tvm_dtype(v.dtype),
                "scale": list(q.scale) if q else None,
                "zero_point": list(q.zero_point) if q else None}
    return {"format": "qcompile-tvm/1", "graph": graph.name, "batch": batch,
            "target": _spec_of(tgt),
            "inputs": [port(v) for v in graph.inputs],
            "outputs": [port(v) for v in graph.outputs],
            "params": list(params)}


# ---------------------------------------------------------------------------------- files

def export(module: TVMModule, out_dir) -> list[str]:
    """Write the module's files into `out_dir`; returns their names (stable order)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_cross(module.target):
        files = list(FILES_CROSS)
        _write_object(module, out / "model.o")
    else:
        files = list(FILES_HOST)
        module.executable.export_library(str(out / "model.so"))
    params = {n: tvm.runtime.tensor(module.params[n]) for n in module.meta["params"]}
    (out / "model.params").write_bytes(bytes(tvm.runtime.save_param_dict(params)))
    (out / "model.json").write_text(json.dumps(module.meta, indent=1, sort_keys=True) + "\n")
    if module.tuning is not None:
        files += [f"{TUNING_DIR}/{name}" for name in module.tuning.save(out / TUNING_DIR)]
    return files


def _write_object(module: TVMModule, path: Path) -> None:
    """The kernels of a cross-compiled module as one object file (no linker for that CPU)."""
    lib = module.executable.mod
    todo = [lib]
    while todo:
        m = todo.pop(0)
        if m.kind == "llvm":
            m.write_to_file(str(path))
            return
        todo.extend(m.imports)
    raise TVMBackendError(f"no LLVM module to write for target {module.meta['target']}")


def load(path, device: Optional[str] = None) -> "LoadedModel":
    """The model in folder `path` (as `export` wrote it) as a callable: model(x) -> [outputs]."""
    folder = Path(path)
    meta_file = folder / "model.json"
    if not meta_file.exists():
        raise TVMBackendError(f"{meta_file} is missing: {folder} is not a TVM backend output")
    meta = json.loads(meta_file.read_text())
    lib_file = folder / "model.so"
    if not lib_file.exists():
        raise TVMBackendError(f"{lib_file} is missing (a cross-compiled output holds model.o, "
                              f"which must be linked for its CPU first)")
    lib = tvm.runtime.load_module(str(lib_file))
    dev = device_for(device or meta["target"]["kind"])
    vm = relax.VirtualMachine(lib, dev)
    blob = tvm.runtime.load_param_dict((folder / "model.params").read_bytes())
    params = [tvm.runtime.tensor(blob[n].numpy(), dev) for n in meta["params"]]
    return LoadedModel(vm, dev, meta, params)


@dataclass
class LoadedModel:
    vm: object
    dev: object
    meta: dict
    params: list

    def __post_init__(self):
        self._run = Runner(self.vm["main"], self.dev, self.meta, self.params)

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self._run(inputs)


def have_nvcc() -> bool:
    return shutil.which("nvcc") is not None
