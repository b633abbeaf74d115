"""report.html: self-contained, with the four plots, and it renders in a real browser."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from qcompile import cli
from qcompile.ir.printer import write_file
from qcompile.passmanager import all_passes
from qcompile.report import render_html

from test_compile import FLOAT_PIPELINE, tiny_graph

PLOTS = ("plot-sqnr", "plot-bits", "plot-acc", "plot-memory")


class _Dom(HTMLParser):
    """Element counts by id and class, plus anything that would load another file."""

    def __init__(self):
        super().__init__()
        self.ids: dict[str, str] = {}
        self.inside: list[str] = []
        self.bars: dict[str, int] = {}
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids[a["id"]] = tag
        if tag == "svg":
            self.inside.append(a.get("id", ""))
        if tag == "script":
            self.scripts += 1
        if self.inside and tag in ("rect", "polygon") and a.get("class") in ("bar", "area"):
            self.bars[self.inside[-1]] = self.bars.get(self.inside[-1], 0) + 1
        for key in ("src", "href"):
            if key in a and not a[key].startswith("#"):
                self.external.append(a[key])

    def handle_endtag(self, tag):
        if tag == "svg" and self.inside:
            self.inside.pop()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    write_file(tiny_graph(), str(folder / "tiny.qir"), full=True)
    rng = np.random.default_rng(1)
    np.savez(folder / "calib.npz", x=rng.uniform(0, 1, size=(32, 1, 6, 6)).astype(np.float32))
    pipeline = [] if "lower-integer" in all_passes() else ["--pipeline", FLOAT_PIPELINE]
    out = folder / "out"
    assert cli.main(["compile", str(folder / "tiny.qir"), "-t", "c99", "--backend", "none",
                     "-c", str(folder / "calib.npz"), "-o", str(out), "--report", "html",
                     "--quiet", *pipeline]) == 0
    return out


def test_report_html_is_self_contained_with_all_plots(compiled):
    page = (compiled / "report.html").read_text()
    dom = _Dom()
    dom.feed(page)
    assert dom.scripts == 0 and dom.external == []
    for pid in PLOTS:
        if pid == "plot-acc" and "check-accumulator" not in all_passes():
            assert "plot-acc-empty" in dom.ids
            continue
        assert dom.ids.get(pid) == "svg", pid
        assert dom.bars.get(pid, 0) >= 1, pid
    report = json.loads((compiled / "report.json").read_text())
    sqnr_rows = [r for r in report["layers"] if r["sqnr_db"] is not None or r["exact"]]
    assert dom.bars["plot-sqnr"] == sum(1 for r in sqnr_rows if not r["exact"])
    assert dom.ids["layers"] == "table"


def test_render_html_escapes_names_and_handles_an_empty_report():
    report = {
        "model": {"file": "<evil>.onnx"}, "target": {"name": "t&t"}, "pipeline": "a,b",
        "layers": [{"name": "<script>x</script>", "op": "relu", "bits": 8, "weight_bits": None,
                    "sqnr_db": 12.5, "exact": False, "weight_bytes": 0, "output_bytes": 4,
                    "accumulator": None}],
        "accumulators": {}, "output": None, "evaluation": None, "diagnostics": [],
        "memory": {"weight_bytes": 0, "peak_activation_bytes": 0, "peak_at": None,
                   "budget": {}, "schedule": []},
    }
    page = render_html(report)
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "&lt;evil&gt;.onnx" in page and "t&amp;t" in page
    dom = _Dom()
    dom.feed(page)
    assert dom.ids["plot-sqnr"] == "svg" and "plot-acc-empty" in dom.ids
    assert 'fill="#c0392b"' in page  # 12.5 dB is below the 20 dB line: drawn red


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium installed "
                    "(apt-get install chromium) to render the report in")
def test_report_renders_in_headless_chromium(compiled, tmp_path):
    browser = _chromium()
    url = (compiled / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the DOM the browser built (not the file): every plot is an SVG element with content
    rendered = _Dom()
    rendered.feed(dom.stdout)
    for pid in ("plot-sqnr", "plot-bits", "plot-memory"):
        assert rendered.ids.get(pid) == "svg" and rendered.bars.get(pid, 0) >= 1, pid
    shot = tmp_path / "report.png"
    r = subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,1600", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    from PIL import Image
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
    # the plots' blue bars are there (not a blank or an error page)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 100)
    assert blue.sum() > 2000
    assert (pixels.reshape(-1, 3).std(axis=0) > 10).all()
