"""Writing a `CProgram` out as C sources and build files.

Files (all deterministic: the same program gives the same bytes):
  model.h          the API: shapes, quantization parameters, MODEL_ARENA_SIZE, model_run*
  model.c          one kernel call per scheduled node, parameter structs, the static arena
  model_weights.c  the constant arrays (const, so they stay in flash)
  qc_kernels.h/.c  the kernel library (copied)
  CMakeLists.txt   a static library target named after the model
  model.mk         a Makefile fragment (MODEL_SRCS, MODEL_CFLAGS)
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
import numpy as np

from .emitter import CProgram, Port, c_ident

HERE = Path(__file__).resolve().parent
LIBRARY_FILES = ("qc_kernels.h", "qc_kernels.c")
FILES = ("model.h", "model.c", "model_weights.c") + LIBRARY_FILES + ("CMakeLists.txt", "model.mk")

_PLACEHOLDER = re.compile(r"@\{([^}]*)\}")


def library_name(prog: CProgram) -> str:
    return c_ident(prog.graph.name or "model")


def _float_literal(x: float) -> str:
    """A float32 constant that reads back exactly (9 significant digits)."""
    return f"{float(np.float32(x)):.9g}f".replace("inff", "INFINITY")


def _array_lines(values: np.ndarray, per_line: int = 16) -> list[str]:
    items = [str(int(v)) for v in values]
    if not items:
        return ["    0"]
    return ["    " + ", ".join(items[i:i + per_line]) + ","
            for i in range(0, len(items), per_line)]


# ---------------------------------------------------------------------------------- model.h

def _port_macros(prefix: str, port: Port, io: str) -> list[str]:
    shape = port.shape
    numel = int(np.prod(shape, dtype=np.int64))
    lines = [f"#define {prefix}_RANK {len(shape)}",
             f"#define {prefix}_SHAPE {{{', '.join(map(str, shape)) or '1'}}}",
             f"#define {prefix}_SIZE {numel}            /* elements */",
             f"#define {prefix}_BYTES {numel * port.ctype.size}"]
    q = port.value.quant
    if q is not None and q.axis is None:
        lines += [f"#define {prefix}_SCALE {_float_literal(q.scale[0])}",
                  f"#define {prefix}_ZERO_POINT ({q.zero_point[0]})",
                  f"#define {prefix}_QMIN ({q.qmin})",
                  f"#define {prefix}_QMAX ({q.qmax})"]
    elif q is not None:
        lines.append(f"/* {io} has per-channel parameters along axis {q.axis}: "
                     f"scales {list(q.scale)}, zero points {list(q.zero_point)} */")
    if io == "input" and port.boundary is not None:
        rounding = port.boundary.attrs.get("rounding", "half_even")
        lines.append(f"#define {prefix}_ROUNDING_{rounding.upper()} 1")
    return lines


def render_header(prog: CProgram, target_name: str) -> str:
    name = library_name(prog)
    guard = f"QC_{name.upper()}_MODEL_H"
    tin, tout = prog.inputs[0].ctype.name, prog.outputs[0].ctype.name
    single = len(prog.inputs) == 1 and len(prog.outputs) == 1
    lines = [
        f"/* model.h -- graph @{prog.graph.name} compiled by qcompile for target {target_name}.",
        " * Generated file: do not edit.",
        " *",
        " * The model takes and returns quantized integer tensors (NCHW, row-major). To feed it",
        " * float data, quantize each element the way the graph's quantize node does:",
        " *     q = clamp(R(x / MODEL_INPUT_SCALE) + MODEL_INPUT_ZERO_POINT,",
        " *               MODEL_INPUT_QMIN, MODEL_INPUT_QMAX)",
        " * with x / scale computed in float32 and R rounding half to even (rintf) when",
        " * MODEL_INPUT_ROUNDING_HALF_EVEN is defined, half away from zero (roundf) when",
        " * MODEL_INPUT_ROUNDING_HALF_AWAY is. An output code q means",
        " *     real = MODEL_OUTPUT_SCALE * (q - MODEL_OUTPUT_ZERO_POINT).",
        " * Define MODEL_FLOAT_HELPERS before including this header to get",
        " * model_quantize_input() / model_dequantize_output(), which do exactly that (the model",
        " * itself never uses floating point).",
        " *",
        " * Memory: model_run() uses a static arena of MODEL_ARENA_SIZE bytes; model_run_arena()",
        " * uses the caller's, which must be MODEL_ARENA_SIZE bytes, 4-byte aligned, and not",
        " * shared with another inference running at the same time. Input and output arrays are",
        " * the caller's and are not part of the arena.",
        " * Every function returns 0, or -1 for a misaligned arena.",
        " */",
        f"#ifndef {guard}", f"#define {guard}", "", "#include <stdint.h>", "",
        "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
        f'#define MODEL_NAME "{prog.graph.name}"',
        f"#define MODEL_NUM_INPUTS {len(prog.inputs)}",
        f"#define MODEL_NUM_OUTPUTS {len(prog.outputs)}",
        f"#define MODEL_ARENA_SIZE {prog.plan.arena_size}",
        "#define MODEL_ARENA_ALIGN 4",
        f"#define MODEL_MACS {prog.macs()}",
        ""]
    for i, p in enumerate(prog.inputs):
        lines += [f"/* input {i}: %{p.value.name} ({p.value.dtype}) */"]
        lines += _port_macros(f"MODEL_INPUT{i}", p, "input")
        if i == 0:
            lines += _port_macros("MODEL_INPUT", p, "input")
        lines.append("")
    for i, p in enumerate(prog.outputs):
        lines += [f"/* output {i}: %{p.value.name} ({p.value.dtype}) */"]
        lines += _port_macros(f"MODEL_OUTPUT{i}", p, "output")
        if i == 0:
            lines += _port_macros("MODEL_OUTPUT", p, "output")
        lines.append("")
    in_bytes = [p.ctype.size * int(np.prod(p.shape, dtype=np.int64)) for p in prog.inputs]
    out_bytes = [p.ctype.size * int(np.prod(p.shape, dtype=np.int64)) for p in prog.outputs]
    lines += ["/* sizes of all inputs / outputs in order, for generic drivers */",
              f"#define MODEL_INPUT_BYTES_LIST {{{', '.join(map(str, in_bytes))}}}",
              f"#define MODEL_OUTPUT_BYTES_LIST {{{', '.join(map(str, out_bytes))}}}",
              f"#define MODEL_INPUTS_TOTAL_BYTES {sum(in_bytes)}",
              f"#define MODEL_OUTPUTS_TOTAL_BYTES {sum(out_bytes)}", "",
              f"typedef {tin} model_input_t;", f"typedef {tout} model_output_t;", ""]
    lines += ["/* All inputs and outputs, in order (arrays of MODEL_INPUTi_BYTES / "
              "MODEL_OUTPUTi_BYTES). */",
              "int model_run_io(const void *const *inputs, void *const *outputs, "
              "uint8_t *arena);"]
    if not single:
        lines += ["/* One inference with the static arena (several inputs or outputs). */",
                  "int model_run_multi(const void *const *inputs, void *const *outputs);"]
    if single:
        lines += ["/* One inference with the static arena. */",
                  "int model_run(const model_input_t *in, model_output_t *out);",
                  "/* One inference in the caller's arena (MODEL_ARENA_SIZE bytes, 4-aligned). */",
                  "int model_run_arena(const model_input_t *in, model_output_t *out, "
                  "uint8_t *arena);"]
    lines += [""] + _float_helpers(prog) + ["", "#ifdef __cplusplus", "}", "#endif",
                                            f"#endif /* {guard} */", ""]
    return "\n".join(lines)


def _float_helpers(prog: CProgram) -> list[str]:
    pin, pout = prog.inputs[0], prog.outputs[0]
    if (pin.value.quant is None or pin.value.quant.axis is not None or pout.value.quant is None
            or pout.value.quant.axis is not None):
        return ["/* (no float helpers: per-channel or missing boundary parameters) */"]
    rnd = "roundf" if (pin.boundary is not None
                       and pin.boundary.attrs.get("rounding") == "half_away") else "rintf"
    return [
        "#ifdef MODEL_FLOAT_HELPERS",
        "#include <math.h>",
        "/* The graph's input quantize, bit-exact: float32 division, then rounding, clamp. */",
        "static inline void model_quantize_input(const float *x, model_input_t *q)",
        "{",
        "    const float lo = (float)(MODEL_INPUT_QMIN - MODEL_INPUT_ZERO_POINT);",
        "    const float hi = (float)(MODEL_INPUT_QMAX - MODEL_INPUT_ZERO_POINT);",
        "    int32_t i;",
        "    for (i = 0; i < MODEL_INPUT_SIZE; i++) {",
        f"        float r = {rnd}(x[i] / MODEL_INPUT_SCALE);",
        "        r = r != r ? 0.0f : (r < lo ? lo : (r > hi ? hi : r)); /* NaN: real 0 */",
        "        q[i] = (model_input_t)((int32_t)r + MODEL_INPUT_ZERO_POINT);",
        "    }",
        "}",
        "/* real = scale * (q - zero_point), as the graph's dequantize (float32 result). */",
        "static inline void model_dequantize_output(const model_output_t *q, float *x)",
        "{",
        "    int32_t i;",
        "    for (i = 0; i < MODEL_OUTPUT_SIZE; i++)",
        "        x[i] = (float)((double)((int32_t)q[i] - MODEL_OUTPUT_ZERO_POINT)"
        " * (double)MODEL_OUTPUT_SCALE);",
        "}",
        "#endif /* MODEL_FLOAT_HELPERS */"]


# ---------------------------------------------------------------------------------- model.c

def _pointer_map(prog: CProgram) -> dict[str, str]:
    """C expression of every tensor: the caller's arrays for the ports (and views of them),
    arena offsets for the rest."""
    exprs: dict[str, str] = {}
    for i, p in enumerate(prog.inputs):
        exprs[p.value.name] = f"inputs[{i}]"
    for i, p in enumerate(prog.outputs):
        exprs[p.value.name] = f"outputs[{i}]"
    for call in prog.calls:
        for out, src in call.aliases.items():
            if src in exprs and src not in prog.plan.offsets:
                exprs[out] = exprs[src]
    for name, off in prog.plan.offsets.items():
        exprs.setdefault(name, f"(arena + {off})")
    for call in prog.calls:
        if call.scratch:
            off = prog.plan.buffer_offsets[f"{call.node}.scratch"]
            exprs[f"#scratch:{call.node}"] = f"(arena + {off})"
    return exprs


def render_model(prog: CProgram) -> str:
    exprs = _pointer_map(prog)
    weights = [c for c in prog.consts.values() if c.section == "weights"]
    params = [c for c in prog.consts.values() if c.section != "weights"]
    lines = ["/* model.c -- generated by qcompile: do not edit. See model.h for the API. */",
             "#include <stdint.h>", "#include <string.h>", "", '#include "model.h"',
             '#include "qc_kernels.h"', "", "/* constant data, in model_weights.c */"]
    lines += [f"extern const {c.ctype} {c.cname}[{max(c.values.size, 1)}];" for c in weights]
    lines += ["", "/* kernel parameters */"]
    for c in params:
        lines.append(f"static const {c.ctype} {c.cname}[{max(c.values.size, 1)}] = "
                     f"{{{', '.join(str(int(v)) for v in c.values) or '0'}}};")
    lines += prog.defs
    words = max(1, -(-prog.plan.arena_size // 4))
    lines += ["", "/* the static arena, as words so it is 4-byte aligned in C99 */",
              f"static uint32_t model_arena_words[{words}];", "",
              "int model_run_io(const void *const *inputs, void *const *outputs, uint8_t *arena)",
              "{",
              "    if (((uintptr_t)arena & 3u) != 0u)",
              "        return -1;",
              "    (void)inputs;", "    (void)outputs;"]
    for i, call in enumerate(prog.calls, 1):
        what = f"{call.op}" + (f", {call.macs} MACs" if call.macs else "")
        lines.append(f"    /* {i}. %{call.node}: {what} */")
        if not call.code:
            lines.append("    /* a view of its input: no code */")
        for stmt in call.code:
            def sub(m, node=call.node):
                key = m.group(1)
                return exprs[f"#scratch:{node}"] if key == "#scratch" else exprs[key]
            lines.append("    " + _PLACEHOLDER.sub(sub, stmt))
    lines += ["    return 0;", "}", ""]
    if len(prog.inputs) == 1 and len(prog.outputs) == 1:
        lines += ["int model_run_arena(const model_input_t *in, model_output_t *out, "
                  "uint8_t *arena)",
                  "{",
                  "    const void *inputs[1];", "    void *outputs[1];",
                  "    inputs[0] = in;", "    outputs[0] = out;",
                  "    return model_run_io(inputs, outputs, arena);", "}", "",
                  "int model_run(const model_input_t *in, model_output_t *out)", "{",
                  "    return model_run_arena(in, out, (uint8_t *)model_arena_words);", "}", ""]
    else:
        lines += ["int model_run_multi(const void *const *inputs, void *const *outputs)", "{",
                  "    return model_run_io(inputs, outputs, (uint8_t *)model_arena_words);",
                  "}", ""]
    return "\n".join(lines)


def render_weights(prog: CProgram) -> str:
    lines = ["/* model_weights.c -- generated by qcompile: the model's constant data. */",
             "#include <stdint.h>", ""]
    for c in prog.consts.values():
        if c.section != "weights":
            continue
        lines.append(f"extern const {c.ctype} {c.cname}[{max(c.values.size, 1)}];")
        lines.append(f"const {c.ctype} {c.cname}[{max(c.values.size, 1)}] = {{")
        lines += _array_lines(c.values)
        lines += ["};", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- build files

def render_cmake(prog: CProgram, dsp: bool) -> str:
    lib = library_name(prog)
    opt = f"{lib.upper()}_DSP"
    return "\n".join([
        f"# Generated by qcompile: the static library `{lib}` (API in model.h).",
        "# Use it with add_subdirectory(<this folder>) and target_link_libraries(app " + lib + ").",
        "cmake_minimum_required(VERSION 3.13)",
        f"project({lib} C)",
        f'option({opt} "Use the Armv7E-M DSP instructions (SMLAD); results are identical '
        f'without" {"ON" if dsp else "OFF"})',
        f"add_library({lib} STATIC model.c model_weights.c qc_kernels.c)",
        f"target_include_directories({lib} PUBLIC ${{CMAKE_CURRENT_SOURCE_DIR}})",
        f"set_target_properties({lib} PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON "
        "C_EXTENSIONS OFF)",
        f"if({opt})",
        f"  target_compile_definitions({lib} PRIVATE QC_DSP=1)",
        "endif()",
        "# tell a parent project the library's name",
        "get_directory_property(qc_has_parent PARENT_DIRECTORY)",
        "if(qc_has_parent)",
        f"  set(QC_MODEL_LIBRARY {lib} PARENT_SCOPE)",
        "endif()", ""])


def render_makefile(prog: CProgram, dsp: bool) -> str:
    return "\n".join([
        f"# Generated by qcompile: Makefile fragment for model @{prog.graph.name}.",
        "#   include path/to/model.mk",
        "#   app.elf: main.o $(MODEL_OBJS)        # objects built with $(MODEL_CFLAGS)",
        "# Set MODEL_DSP=0 before the include to build without the DSP instructions.",
        "MODEL_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))",
        f"MODEL_DSP ?= {1 if dsp else 0}",
        "MODEL_SRCS := $(MODEL_DIR)/model.c $(MODEL_DIR)/model_weights.c "
        "$(MODEL_DIR)/qc_kernels.c",
        "MODEL_OBJS := $(MODEL_SRCS:.c=.o)",
        "MODEL_CFLAGS := -std=c99 -I$(MODEL_DIR) -DQC_DSP=$(MODEL_DSP)", ""])


def write_files(prog: CProgram, out_dir: Path, target_name: str, dsp: bool) -> list[str]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {"model.h": render_header(prog, target_name), "model.c": render_model(prog),
             "model_weights.c": render_weights(prog),
             "CMakeLists.txt": render_cmake(prog, dsp), "model.mk": render_makefile(prog, dsp)}
    for name in FILES:
        if name in LIBRARY_FILES:
            shutil.copyfile(HERE / name, out_dir / name)
        else:
            (out_dir / name).write_text(texts[name], encoding="utf-8", newline="\n")
    return list(FILES)


def kernel_library_dir() -> Path:
    return HERE


