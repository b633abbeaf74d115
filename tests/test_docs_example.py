"""The code in docs/passes.md runs as written, so the guide cannot drift from the API."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

from qcompile.passmanager import all_passes, unregister_pass

DOC = Path(__file__).resolve().parent.parent / "docs" / "passes.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_guide_has_a_complete_example():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 2
    assert "register_pass" in blocks[0] and "run_pipeline" in blocks[0]


def test_docs_passes_code_runs(capsys):
    before = set(all_passes())
    # Run the blocks as one module, the way a reader would paste them into a file.
    module = types.ModuleType("docs_passes_example")
    sys.modules[module.__name__] = module
    try:
        for i, block in enumerate(python_blocks(DOC.read_text())):
            # dont_inherit: this test file's `from __future__` must not change the doc's code
            code = compile(block, f"{DOC.name}[python block {i + 1}]", "exec", dont_inherit=True)
            exec(code, module.__dict__)
    finally:
        del sys.modules[module.__name__]
        for name in set(all_passes()) - before:
            unregister_pass(name)
    out = capsys.readouterr().out
    # the printed diagnostic in the first example is what its comment says
    assert "note: [fold-double-relu] %b: removed a redundant relu" in out


def test_docs_table_lists_every_builtin_cleanup_pass():
    text = DOC.read_text()
    for name in ("dce", "fold-constants", "remove-identity"):
        assert f"| `{name}" in text
        assert name in all_passes()
