"""Import time of real models: qcompile's front ends beside TVM Relax's importers of the same
ExportedProgram / ONNX file (another compiler's IR import, measured in the same run).

    python benchmarks/import_times.py [--models minilm,digits_cnn,mtcnn_rnet] [--repeat 3]

torch.export itself is timed separately: both torch importers start from the same
ExportedProgram, so the columns compare the IR translation, not the tracing.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import zoo  # noqa: E402

import qcompile  # noqa: E402


def example_args(name: str):
    if name == "minilm":
        model, tok = zoo.minilm()
        batch = tok(zoo.english_sentences(8), padding="max_length", max_length=128,
                    truncation=True, return_tensors="pt")
        return model, (batch["input_ids"], batch["attention_mask"])
    model = getattr(zoo, name)()
    return model, (torch.from_numpy(zoo.example_input(name)),)


def peer_time(repeat: int, fn):
    """The peer's best time, or None when the peer cannot import the model at all."""
    try:
        return best_of(repeat, fn)
    except Exception as exc:  # a peer failing is a result to print, not a crash of the benchmark
        print(f"  (peer failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
        return None


def fmt_pair(ours: float, peer) -> str:
    if peer is None:
        return f"{ours:>11.2f}s{'failed':>11}{'-':>7}"
    return f"{ours:>11.2f}s{peer:>10.2f}s{peer / ours:>6.1f}x"


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,digits_cnn,mtcnn_rnet,mobilenetv2_stack")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(2)
    from tvm.relax.frontend.onnx import from_onnx as tvm_from_onnx
    from tvm.relax.frontend.torch import from_exported_program as tvm_from_ep

    print(f"command: python benchmarks/import_times.py --models {args.models} --repeat {args.repeat}")
    print(f"{'model':<20}{'torch.export':>13}{'ours(ep)':>10}{'tvm(ep)':>10}{'ratio':>7}"
          f"{'ours(onnx)':>12}{'tvm(onnx)':>11}{'ratio':>7}  nodes")
    tmp = Path(tempfile.mkdtemp())
    for name in args.models.split(","):
        model, inputs = example_args(name)
        t_export = best_of(1, lambda: torch.export.export(model.eval(), inputs))
        program = torch.export.export(model.eval(), inputs)
        onnx_path = tmp / f"{name}.onnx"
        # The TorchScript exporter: TVM's ONNX importer rejects the dynamo exporter's Constant nodes.
        torch.onnx.export(model, inputs, str(onnx_path), dynamo=False, opset_version=17)
        import onnx
        onnx_model = onnx.load(str(onnx_path))
        ours_ep = best_of(args.repeat, lambda: qcompile.from_torch(program))
        tvm_ep = peer_time(args.repeat, lambda: tvm_from_ep(program))
        ours_onnx = best_of(args.repeat, lambda: qcompile.from_onnx(onnx_model))
        tvm_onnx = peer_time(args.repeat, lambda: tvm_from_onnx(onnx_model))
        nodes = len(qcompile.from_torch(program).nodes)
        print(f"{name:<20}{t_export:>12.2f}s{fmt_pair(ours_ep, tvm_ep)[1:]}"
              f"{fmt_pair(ours_onnx, tvm_onnx)}  {nodes}")
    print("ratio = TVM time / qcompile time (above 1: qcompile imports faster)")


if __name__ == "__main__":
    main()
