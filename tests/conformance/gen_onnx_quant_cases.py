"""Write ONNX's node conformance cases for the quantization operators.

Vendored from the project's ONNX quantization case generator (a standalone tool), trimmed to
what the tests need. The onnx wheel ships no node test data, but it ships the generators that
make it (`onnx/backend/test/case/node/<op>.py`): each class's `export*` methods run when the
module is imported and record their cases through `expect`. Importing just the seven modules
below (not `collect_testcases()`, which runs every operator's generator) takes a fraction of a
second. Cases are written in the standard layout:

    OUTDIR/<case>/model.onnx
    OUTDIR/<case>/test_data_set_<k>/input_<j>.pb, output_<j>.pb

Usage: python gen_onnx_quant_cases.py OUTDIR
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np

OPS = ("QLinearConv", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear", "ConvInteger",
       "MatMulInteger", "DynamicQuantizeLinear")
_MODULES = ("qlinearconv", "qlinearmatmul", "quantizelinear", "dequantizelinear", "convinteger",
            "matmulinteger", "dynamicquantizelinear")


def collect_cases() -> list:
    """The onnx package's node test cases that use one of `OPS`, in generation order."""
    from onnx.backend.test.case import node as node_cases

    for mod in _MODULES:
        importlib.import_module(f"onnx.backend.test.case.node.{mod}")
    seen, cases = set(), []
    for case in node_cases._NodeTestCases:
        if case.name in seen or not any(n.op_type in OPS for n in case.model.graph.node):
            continue
        seen.add(case.name)
        cases.append(case)
    return cases


def _to_proto(x, name: str):
    from onnx import TensorProto, numpy_helper
    if isinstance(x, TensorProto):  # float8 / int4 data comes as ready-made tensors
        p = TensorProto()
        p.CopyFrom(x)
        p.name = name
        return p
    return numpy_helper.from_array(np.asarray(x), name)


def write_case(case, outdir: Path) -> Path:
    d = Path(outdir) / case.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(case.model.SerializeToString())
    g = case.model.graph
    for k, (ins, outs) in enumerate(case.data_sets):
        dd = d / f"test_data_set_{k}"
        dd.mkdir(exist_ok=True)
        for j, x in enumerate(ins):
            (dd / f"input_{j}.pb").write_bytes(_to_proto(x, g.input[j].name).SerializeToString())
        for j, y in enumerate(outs):
            (dd / f"output_{j}.pb").write_bytes(_to_proto(y, g.output[j].name).SerializeToString())
    return d


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "onnx_quant_cases")
    cases = collect_cases()
    for case in cases:
        write_case(case, out)
    print(f"wrote {len(cases)} cases to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
