"""The README's Python examples run as written (from the repository root)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_python_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        namespace: dict = {}
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
        from qcompile.passmanager import unregister_pass
        unregister_pass("count-convs")
    out = capsys.readouterr().out
    assert "requantize(" in out  # the integer IR was printed
    accuracy = float(out.rsplit("integer accuracy", 1)[1].split()[0])
    assert accuracy >= 0.991
