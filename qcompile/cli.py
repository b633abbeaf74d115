"""The `qcompile` command line.

    qcompile inspect model.onnx --pipeline "fixpoint(fold-constants,remove-identity,dce)"
    qcompile passes
    qcompile --version

Subcommands are registered with `@subcommand`, each with its argparse arguments, so a new one
is a decorated function here or in a module listed in COMMAND_MODULES:

    @subcommand("targets", help="list the named targets",
                args=[arg("--json", action="store_true", help="machine-readable output")])
    def _targets(args) -> int: ...

Exit codes: 0 success, 2 a user error (any QCompileError, bad arguments), 1 an internal error.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import sys
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from . import __version__
from .errors import PipelineError, QCompileError

# Modules whose import registers more subcommands (kept lazy: `qcompile passes` stays fast).
COMMAND_MODULES: list[str] = ["qcompile.cli_commands"]


@dataclass(frozen=True)
class Arg:
    flags: tuple
    kwargs: dict = field(default_factory=dict)


def arg(*flags: str, **kwargs) -> Arg:
    """One argparse argument: the same parameters as `ArgumentParser.add_argument`."""
    return Arg(flags, kwargs)


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[argparse.Namespace], Optional[int]]
    help: str
    args: tuple


COMMANDS: dict[str, Command] = {}


def subcommand(name: str, help: str, args: Sequence[Arg] = ()):
    """Register `fn(args) -> exit code (None means 0)` as `qcompile <name>`."""
    def deco(fn: Callable[[argparse.Namespace], Optional[int]]):
        COMMANDS[name] = Command(name, fn, help, tuple(args))
        return fn
    return deco


# ---- shared helpers ---------------------------------------------------------------------------
def _debug_flag(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show tracebacks and verify the IR after every pass")


def _parse_shape(text: str) -> tuple[str, tuple]:
    """`name=1,3,224,224` (use ? for a dynamic dimension) for --input-shape."""
    name, sep, dims = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=D1,D2,..., got {text!r}")
    try:
        shape = tuple(None if d.strip() == "?" else int(d) for d in dims.split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"dimensions must be integers or ?, got {dims!r}") from None
    return name, shape


def make_context(args: argparse.Namespace, **kwargs):
    """A PassContext from the common flags (--debug, --dump-ir)."""
    from .passmanager import DumpIRInstrument, PassContext
    ctx = PassContext(verify=bool(getattr(args, "debug", False)), **kwargs)
    if getattr(args, "dump_ir", None):
        ctx.instruments.append(DumpIRInstrument(args.dump_ir))
    return ctx


def print_diagnostics(ctx) -> None:
    for d in ctx.diagnostics:
        print(d, file=sys.stderr)


# ---- inspect ----------------------------------------------------------------------------------
@subcommand("inspect", help="print a model's IR, optionally after a pass pipeline", args=[
    arg("file", help="a .qir, .onnx or .pt2 file"),
    arg("--pipeline", "-p", default="", metavar="P",
        help="passes to run first, e.g. 'fixpoint(fold-constants,remove-identity,dce)'"),
    arg("--full", action="store_true", help="print constants in full instead of a summary"),
    arg("--dump-ir", metavar="DIR", help="write the IR after every pass to numbered files in DIR"),
    arg("--input-shape", metavar="NAME=D1,D2,...", type=_parse_shape, action="append",
        help="pin an input's shape (ONNX models with dynamic dimensions); repeatable"),
    arg("--calibration", metavar="NPZ", help="calibration inputs for the calibrate pass (.npz)"),
    arg("--sqnr", metavar="NPZ", help="after the pipeline, print per-layer SQNR of the simulated "
        "quantized graph against float on these inputs (.npz; labels 'y' add accuracies)"),
    arg("--target", "-t", metavar="NAME", help="run the passes for this named target (the "
        "quantize pass takes its scheme from it); without --pipeline, its default pipeline"),
    arg("--target-file", metavar="FILE", help="the same, for a target described in a TOML file"),
    arg("--after", metavar="PASS", help="show the graph as it was after PASS (its last run)"),
    arg("--diff", nargs=2, metavar=("PASS_A", "PASS_B"), help="print a unified diff of the IR "
        "after PASS_A and after PASS_B ('input' is the graph before any pass)"),
    arg("--format", choices=("text", "dot", "svg"), default="text",
        help="text IR (default), a Graphviz dot graph, or a standalone SVG drawing"),
])
def _inspect(args: argparse.Namespace) -> int:
    from .api import load
    from .passmanager import parse_pipeline, run_pipeline
    target = None
    if args.target or args.target_file:
        from .targets import resolve_target
        target = resolve_target(args.target, args.target_file)
    # a bad pipeline fails before a slow model load
    pipeline = target.pipeline(args.pipeline or None) if target is not None \
        else parse_pipeline(args.pipeline)
    wanted = [p for p in ([args.after] if args.after else []) + list(args.diff or ())
              if p != "input"]
    names = pipeline.pass_names()
    for p in wanted:
        if p not in names:
            raise PipelineError(f"--after/--diff: pass '{p}' is not in the pipeline "
                                f"'{pipeline}' (its passes: {', '.join(names) or 'none'})")
    shapes = dict(args.input_shape) if args.input_shape else None
    graph = load(args.file, input_shapes=shapes)
    original = graph.copy() if args.sqnr else None
    ctx = make_context(args, calibration_data=args.calibration, target=target)
    snaps = _AfterSnapshots(set(wanted))
    ctx.instruments.append(snaps)
    try:
        run_pipeline(graph, pipeline, ctx)
    finally:
        print_diagnostics(ctx)
    if args.diff:
        a, b = (snaps.graphs[p] for p in args.diff)
        sys.stdout.writelines(difflib.unified_diff(
            a.dump(full=args.full).splitlines(True), b.dump(full=args.full).splitlines(True),
            fromfile=f"after {args.diff[0]}", tofile=f"after {args.diff[1]}"))
        return 0
    shown = snaps.graphs[args.after] if args.after else graph
    if args.format == "text":
        sys.stdout.write(shown.dump(full=args.full))
    else:
        from .report import graph_to_dot, graph_to_svg
        sys.stdout.write(graph_to_dot(shown) if args.format == "dot" else graph_to_svg(shown))
    if args.sqnr:
        _print_sqnr(original, shown, args.sqnr)
    return 0


class _AfterSnapshots:
    """Copies of the graph before the pipeline ('input') and after the last run of each pass
    in `names`, for `inspect --after/--diff`."""

    def __init__(self, names: set):
        self.names, self.graphs = names, {}

    def enter_pipeline(self, graph, ctx, pipeline) -> None:
        self.graphs["input"] = graph.copy()

    def exit_pipeline(self, graph, ctx) -> None: ...

    def run_before_pass(self, graph, ctx, run) -> None: ...

    def run_after_pass(self, graph, ctx, run, changed) -> None:
        if run.name in self.names:
            self.graphs[run.name] = graph.copy()


def _print_sqnr(original, graph, path: str) -> None:
    """The per-layer error table, and float vs simulated accuracy when the file has labels.

    Per-layer SQNR compares the simulated graph with the same graph run in float (the pipeline's
    float rewrites included); the float accuracy is that of the model as loaded, because bias
    correction deliberately changes the float graph."""
    import numpy as np
    from rich.console import Console

    from .quant.sqnr import compare_outputs, per_layer_sqnr, print_sqnr_table
    inputs = path  # the calibration reader takes .npz files (arrays named after inputs, or 'x')
    with np.load(path) as npz:
        labels = npz["y"] if "y" in npz.files else None
    console = Console(width=None if Console().is_terminal else 160)
    print_sqnr_table(per_layer_sqnr(graph, inputs), console=console)
    result = compare_outputs(graph, inputs, labels)
    line = (f"output SQNR {result['output_sqnr_db']:.1f} dB, top-1 agreement "
            f"{100 * result['top1_agreement']:.2f} % on {result['samples']} samples")
    if labels is not None:
        float_acc = compare_outputs(original, inputs, labels)["float_accuracy"]
        line += (f"; accuracy of the loaded float model {100 * float_acc:.2f} %, "
                 f"simulated quantized {100 * result['quant_accuracy']:.2f} %")
    console.print(line)


# ---- passes -----------------------------------------------------------------------------------
@subcommand("passes", help="list the registered passes with their options")
def _passes(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .passmanager import all_passes
    table = Table(title="qcompile passes", title_justify="left")
    table.add_column("pass", style="bold", no_wrap=True)
    table.add_column("description")
    table.add_column("options")
    for name, info in all_passes().items():
        opts = "\n".join(spec.describe() for spec in info.options.values())
        table.add_row(name, info.doc, opts or "-")
    # Piped output (build logs, tests) gets a wide table so descriptions are not wrapped mid-phrase.
    console = Console()
    Console(width=console.width if console.is_terminal else 200).print(table)
    return 0


# ---- main -------------------------------------------------------------------------------------
class _CMakeDir(argparse.Action):
    """`qcompile --cmake-dir`: like --version, answers and exits before a command is needed."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from pathlib import Path
        print(Path(__file__).resolve().parent / "cmake")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(
        prog="qcompile", description="A compiler for quantized neural networks.")
    parser.add_argument("--version", action="version", version=f"qcompile {__version__}")
    parser.add_argument("--cmake-dir", action=_CMakeDir,
                        help="print the folder holding QCompile.cmake and exit")
    _debug_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        _debug_flag(p, default=argparse.SUPPRESS)  # `qcompile inspect --debug` works too
        for a in cmd.args:
            p.add_argument(*a.flags, **a.kwargs)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._command.run(args) or 0)
    except QCompileError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qcompile inspect big.onnx | head`
        return 0
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not args.debug:
            print("(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
