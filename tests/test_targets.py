"""The target catalog: loading and validating target files, the named targets, backends, and
`qcompile targets`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qcompile import cli
from qcompile.passmanager import parse_pipeline
from qcompile.targets import (BackendResult, BackendUnavailable, TargetError, all_targets,
                              get_backend, get_target, load_target_file, register_backend)
from qcompile.targets import backend as backend_mod

GOOD = """\
name = "my-board"
kind = "mcu"
summary = "a test board"
backend = "c"
weight_bits = [8]
act_bits = [8]
requantization = "dyadic"
rounding = "gemmlowp_double"
accumulator_bits = 32
default_pipeline = "fold-bn,calibrate,quantize,lower-integer"

[backend_options]
cpu = "cortex-m4"

[memory]
flash_bytes = 65536
ram_bytes = 8192
"""


def write(tmp_path: Path, text: str, name: str = "board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- the catalog ---------------------------------------------------------------------------------
def test_catalog_has_the_named_targets_with_their_backends():
    targets = all_targets()
    expected = {"x86-64-avx2": ("cpu", "tvm"), "aarch64": ("cpu", "tvm"),
                "cuda-sm80": ("gpu", "tvm"), "cuda-sm90": ("gpu", "tvm"),
                "cortex-m4": ("mcu", "c"), "cortex-m7": ("mcu", "c"),
                "cortex-m55": ("mcu", "c"), "c99": ("cpu", "c"),
                "pynq-z2": ("fpga", "hls"), "ultra96-v2": ("fpga", "hls")}
    assert {n: (t.kind, t.backend) for n, t in targets.items()} == expected
    for t in targets.values():
        assert t.source is not None and t.source.name == f"{t.name}.toml"
        names = parse_pipeline(t.default_pipeline).pass_names()
        assert names[-2:] == ["lower-integer", "check-accumulator"], t.name
        assert "calibrate" in names and "quantize" in names
    assert get_target("cortex-m55").backend_options["mve"] == "int"
    assert get_target("cortex-m4").memory == {"flash_bytes": 1048576, "ram_bytes": 196608}
    assert set(get_target("pynq-z2").memory) == {"dsp", "bram", "lut"}


def test_quant_scheme_follows_the_target():
    m4 = get_target("cortex-m4").quant_scheme
    assert (m4.weight_bits, m4.act_bits, m4.per_channel, m4.weight_symmetric, m4.pow2) == \
        (8, 8, True, True, False)
    pynq = get_target("pynq-z2")
    assert pynq.quant_scheme.pow2 and not pynq.quant_scheme.per_channel
    assert pynq.accumulator_bits == 24


def test_unknown_target_suggests_close_names():
    with pytest.raises(TargetError, match=r"unknown target 'cortex-m3'; did you mean "
                                          r"cortex-m\d"):
        get_target("cortex-m3")


def test_target_pipeline_default_extend_and_replace():
    t = get_target("c99")
    assert str(t.pipeline()) == str(parse_pipeline(t.default_pipeline))
    extended = t.pipeline("+dce")
    assert extended.pass_names() == parse_pipeline(t.default_pipeline).pass_names() + ["dce"]
    assert t.pipeline("fold-bn,dce").pass_names() == ["fold-bn", "dce"]


# ---- validation ----------------------------------------------------------------------------------
def test_a_valid_file_loads(tmp_path):
    t = load_target_file(write(tmp_path, GOOD))
    assert t.name == "my-board" and t.weight_bits == (8,) and t.ram_bytes == 8192
    assert t.source == (tmp_path / "board.toml").resolve()


@pytest.mark.parametrize("edit, message", [
    (("weight_bits = [8]", "wieght_bits = [8]"),
     r"board\.toml: unknown key 'wieght_bits'; did you mean 'weight_bits'"),
    (('kind = "mcu"', 'kind = "microcontroller"'),
     r"board\.toml: key 'kind' must be one of cpu, gpu, mcu, fpga, got 'microcontroller'"),
    (('backend = "c"', 'backend = "cc"'),
     r"key 'backend' must be one of c, tvm, hls, none, got 'cc'; did you mean 'c'"),
    (("weight_bits = [8]", "weight_bits = [8, 12]"),
     r"key 'weight_bits' must be a non-empty array of bit widths from 2, 3, 4, 5, 6, 7, 8, 16"),
    (('rounding = "gemmlowp_double"', 'rounding = "gemlowp_double"'),
     r"key 'rounding' must be one of gemmlowp_double, .*; did you mean 'gemmlowp_double'"),
    (("accumulator_bits = 32", "accumulator_bits = true"), r"key 'accumulator_bits' must be"),
    (("ram_bytes = 8192", "ram_byte = 8192"),
     r"unknown key 'memory\.ram_byte'; did you mean 'ram_bytes'"),
    (("ram_bytes = 8192", "ram_bytes = -1"), r"key 'memory\.ram_bytes' must be a positive"),
    (('summary = "a test board"\n', ""), r"missing required key\(s\) 'summary'"),
    (('rounding = "gemmlowp_double"', 'rounding = "shift_only"'),
     r"needs rounding = 'shift_only' exactly when requantization is 'shift_only'"),
    (('name = "my-board"', 'name = "my board"'), r"key 'name' must use letters"),
])
def test_a_wrong_field_names_the_file_the_key_and_the_allowed_values(tmp_path, edit, message):
    old, new = edit
    assert old in GOOD
    with pytest.raises(TargetError, match=message) as info:
        load_target_file(write(tmp_path, GOOD.replace(old, new)))
    assert str(tmp_path / "board.toml") in str(info.value)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(TargetError, match=r"board\.toml: not valid TOML"):
        load_target_file(write(tmp_path, GOOD + "\nthis is = = not toml\n"))
    with pytest.raises(TargetError, match=r"nope\.toml: no such target file"):
        load_target_file(tmp_path / "nope.toml")


def test_a_bad_default_pipeline_is_reported_with_its_file(tmp_path):
    t = load_target_file(write(tmp_path, GOOD.replace("fold-bn,calibrate", "fold-bn,calibrat")))
    with pytest.raises(TargetError, match=r"target 'my-board' \(.*board\.toml\): key "
                                          r"'default_pipeline': .*unknown pass 'calibrat'"):
        t.pipeline()


# ---- backends ------------------------------------------------------------------------------------
def test_missing_backend_names_the_target_and_what_is_missing(monkeypatch):
    monkeypatch.delitem(backend_mod._BACKENDS, "hls", raising=False)
    monkeypatch.setitem(sys.modules, "qcompile.targets.hls", None)  # as if not installed
    with pytest.raises(BackendUnavailable, match=r"target 'ultra96-v2' uses backend 'hls', which "
                                                 r"is not available here: it needs the HLS backend module"):
        get_backend("hls", get_target("ultra96-v2"))


def test_register_backend_and_the_none_backend(tmp_path):
    @register_backend("test-echo")
    def emit(graph, target, out_dir, ctx):
        (out_dir / "x.txt").write_text(graph.name)
        return BackendResult(["x.txt"], {"n": 1})
    try:
        assert get_backend("test-echo") is emit
    finally:
        del backend_mod._BACKENDS["test-echo"]
    import qcompile
    g = qcompile.parse("graph @g(%x: tensor<2xf32>) -> (%y) {\n  %y = relu(%x) : tensor<2xf32>\n"
                       "  return %y\n}\n")
    result = get_backend("none")(g, get_target("c99"), tmp_path, None)
    assert result.files == ["model.qir", "model.npz"]
    assert qcompile.parse_file(tmp_path / "model.qir").dump() == g.dump()


# ---- the command ---------------------------------------------------------------------------------
def test_targets_command_lists_and_shows(capsys):
    assert cli.main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in all_targets():
        assert name in out
    assert "Cortex-M55 with Helium" in out
    assert cli.main(["targets", "cortex-m55"]) == 0
    out = capsys.readouterr().out
    assert "mve = int" in out and "ram_bytes = 524288" in out and "cortex-m55.toml" in out
    assert cli.main(["targets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in data] == list(all_targets())


def test_targets_command_checks_a_file_and_rejects_unknown_names(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert cli.main(["targets", "--target-file", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["memory"] == {"flash_bytes": 65536,
                                                             "ram_bytes": 8192}
    r = subprocess.run([sys.executable, "-m", "qcompile", "targets", "cortex-m3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: unknown target 'cortex-m3'; did you mean")


def test_cmake_dir_prints_the_folder_with_the_module():
    r = subprocess.run([sys.executable, "-m", "qcompile", "--cmake-dir"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    folder = Path(r.stdout.strip())
    assert (folder / "QCompile.cmake").is_file()


def test_tvm_targets_are_tvm_dicts_and_nested_tables_are_checked(tmp_path):
    """Catalog TVM targets use TVM 0.27's dict form; a table inside it is refused by key."""
    from qcompile.targets import get_target
    from qcompile.targets.catalog import TargetError, load_target_file
    assert get_target("cuda-sm90").backend_options["target"] == {"arch": "sm_90", "kind": "cuda"}
    assert get_target("x86-64-avx2").backend_options["target"]["mattr"] == ["+avx2", "+fma"]
    text = (Path(get_target("cuda-sm90").source).read_text()
            .replace('target = { kind = "cuda", arch = "sm_90" }',
                     'target = { kind = "cuda", arch = { v = 90 } }').replace('"cuda-sm90"', '"mine"'))
    bad = tmp_path / "mine.toml"
    bad.write_text(text)
    with pytest.raises(TargetError, match=r"backend_options\.target\.arch"):
        load_target_file(bad)
