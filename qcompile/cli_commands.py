"""`qcompile compile` and `qcompile targets` (registered into the CLI on import)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import _parse_shape, arg, subcommand


def _console(stderr: bool = False):
    from rich.console import Console
    probe = Console(stderr=stderr)
    # piped output (logs, tests) gets a wide console so tables are not wrapped mid-word
    return Console(stderr=stderr, width=None if probe.is_terminal else 160)


# ---- targets ------------------------------------------------------------------------------------
@subcommand("targets", help="list the named hardware targets, or show one in full", args=[
    arg("name", nargs="?", help="a target name: show all of its settings"),
    arg("--target-file", metavar="FILE", help="show (and check) a target file instead"),
    arg("--json", action="store_true", help="machine-readable output"),
])
def _targets(args: argparse.Namespace) -> int:
    from .targets import all_targets, backend_available, resolve_target
    if args.name or args.target_file:
        t = resolve_target(args.name, args.target_file)
        if args.json:
            print(json.dumps(t.to_dict(), indent=2))
            return 0
        _show_target(t, backend_available(t.backend))
        return 0
    targets = all_targets()
    if args.json:
        print(json.dumps([t.to_dict() for t in targets.values()], indent=2))
        return 0
    from rich.table import Table
    table = Table(title="qcompile targets", title_justify="left")
    for col in ("name", "kind", "backend", "bits w/a", "summary"):
        table.add_column(col, no_wrap=col != "summary", style="bold" if col == "name" else None)
    for t in targets.values():
        backend = t.backend if backend_available(t.backend) else f"{t.backend} (not available)"
        bits = f"{'/'.join(map(str, t.weight_bits))} / {'/'.join(map(str, t.act_bits))}"
        table.add_row(t.name, t.kind, backend, bits, t.summary)
    _console().print(table)
    return 0


def _show_target(t, available: bool) -> None:
    from rich.table import Table
    table = Table(title=f"target {t.name}", title_justify="left", show_header=False)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value")
    data = t.to_dict()
    data["backend"] = t.backend + ("" if available else " (not available in this install)")
    data["file"] = str(t.source) if t.source else "-"
    data["quant_scheme"] = (f"weights {t.quant_scheme.weight_bits} bit, activations "
                            f"{t.quant_scheme.act_bits} bit, per_channel={t.per_channel}, "
                            f"pow2={t.quant_scheme.pow2}")
    for key, value in data.items():
        if isinstance(value, dict):
            value = "\n".join(f"{k} = {v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        table.add_row(key, str(value))
    _console().print(table)


# ---- compile ------------------------------------------------------------------------------------
def _report_formats(text: str) -> tuple:
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    bad = [f for f in formats if f not in ("json", "html")]
    if bad or not formats:
        raise argparse.ArgumentTypeError(f"expected json, html or json,html, got {text!r}")
    # report.json is the record the manifest and tools read, so html comes with it
    return tuple(dict.fromkeys(("json",) + formats))


def _backend_option(text: str) -> tuple:
    """KEY=VALUE; the value is an int, a float, true/false, or else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    value = value.strip()
    for convert in (int, float):
        try:
            return key.strip(), convert(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return key.strip(), value.lower() == "true"
    return key.strip(), value


@subcommand("compile", help="compile a model for a hardware target into an output folder", args=[
    arg("model", help="a .onnx, .pt2 or .qir model"),
    arg("--target", "-t", metavar="NAME", help="a named target (`qcompile targets` lists them)"),
    arg("--target-file", metavar="FILE", help="a target described in a TOML file"),
    arg("--output", "-o", metavar="DIR", required=True,
        help="output folder (written atomically; must not exist unless --force)"),
    arg("--calibration", "-c", metavar="DATA",
        help="calibration data: an .npz, a folder of images (with preprocess.json), or "
             "module:function returning an iterable of batches"),
    arg("--pipeline", "-p", metavar="P",
        help="replace the target's default pipeline, or '+passes' to extend it"),
    arg("--backend", metavar="NAME",
        help="override the target's backend ('none' writes the integer IR)"),
    arg("--dump-ir", metavar="SPEC",
        help="write the IR into DIR/ir/: after=PASS[,PASS], before=PASS, or all"),
    arg("--report", metavar="FORMATS", type=_report_formats, default=("json",),
        help="json (default), html, or json,html (html also writes report.json)"),
    arg("--evaluate", metavar="NPZ",
        help="labelled data (x, y): report float, simulated and integer accuracy"),
    arg("--depfile", metavar="FILE", help="write a Makefile-style depfile of the inputs"),
    arg("--measure", action="store_true",
        help="microcontroller targets: cross-compile, run one inference under QEMU and put "
             "flash, RAM and instructions per inference into report.json (needs "
             "arm-none-eabi-gcc and qemu-system-arm)"),
    arg("--input-shape", metavar="NAME=D1,D2,...", type=_parse_shape, action="append",
        help="pin an input's shape (ONNX models with dynamic dimensions); repeatable"),
    arg("--backend-option", metavar="KEY=VALUE", type=_backend_option, action="append",
        help="set one of the target's backend_options (e.g. tune=64 for a TVM target); "
             "repeatable"),
    arg("--force", action="store_true", help="replace an existing output folder"),
    arg("--quiet", "-q", action="store_true", help="no summary table"),
])
def _compile(args: argparse.Namespace) -> int:
    from .compile import CompileOptions, compile_model
    from .report import print_summary
    from .targets import resolve_target
    target = resolve_target(args.target, args.target_file)
    opts = CompileOptions(
        model=args.model, target=target, output=args.output, calibration=args.calibration,
        pipeline=args.pipeline, backend=args.backend, dump_ir=args.dump_ir,
        reports=args.report, depfile=args.depfile, force=args.force, debug=args.debug,
        evaluate=args.evaluate, input_shapes=dict(args.input_shape) if args.input_shape else None,
        measure=args.measure,
        backend_options=dict(args.backend_option) if args.backend_option else None)
    console = _console()
    result = compile_model(opts, console=console)
    for d in result.diagnostics:
        if d.level != "note" or args.debug:
            print(d, file=sys.stderr)
    if not args.quiet:
        print_summary(result.report, result.timings, Path(args.output), console)
    return 0


def cmake_dir() -> Path:
    """The folder holding QCompile.cmake (for `-DCMAKE_MODULE_PATH` / `include()`)."""
    return Path(__file__).resolve().parent / "cmake"


__all__ = ["cmake_dir"]
