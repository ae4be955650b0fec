"""``monai-ms report RUN_DIR``: the HTML page of a real lesion_seg evaluation and inference run (tiny cohort).

The browser test renders the page in headless Chromium (``apt-get install chromium``) and reads back,
from the rendered DOM, whether every image decoded; it is skipped when no Chromium binary is found.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from bundle_runner import NO_N4, check, run_bundle

from monai_ms.cli import main
from monai_ms.report import build_report

pytestmark = pytest.mark.slow

LESION_TINY = {"spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32], "patches_per_volume": 2, "epochs": 1,
               "batch_size": 2, "num_workers": 0, **NO_N4}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Session rows (class, cells) and every image source of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.rows: list[dict] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
            if self._table == "sessions" and self.rows:
                self.rows[-1]["images"].append(attrs.get("src", ""))
        elif tag == "table":
            self._table = attrs.get("id")
        elif tag == "tr" and self._table == "sessions":
            self.rows.append({"class": attrs.get("class", ""), "cells": [], "images": []})
        elif tag in ("td", "th") and self._table == "sessions":
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1]["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.rows = [r for r in parser.rows if r["images"] or r["cells"][:1] != ["session"]]  # drop the header row
    return parser


@pytest.fixture(scope="module")
def lesion_run(tiny_manifest, tmp_path_factory) -> Path:
    """lesion_seg trained 1 epoch, evaluated and run on the testing split: eval/ and eval/inference/."""
    out = tmp_path_factory.mktemp("report_run")
    overrides = {**LESION_TINY, "data_manifest": str(tiny_manifest), "output_dir": str(out / "eval"), "ckpt_dir": str(out / "models")}
    check(run_bundle("lesion_seg", "training", ["train"], overrides))
    check(run_bundle("lesion_seg", "evaluating", ["train", "evaluate"], overrides))
    check(run_bundle("lesion_seg", "inferring", ["train", "inference"], overrides))
    return out


def test_inference_page_has_every_session_with_its_qc_overlay_and_lesion_count(lesion_run, capsys):
    run_dir = lesion_run / "eval" / "inference"
    assert main(["report", str(run_dir)]) == 0
    assert f"wrote {run_dir / 'report.html'}" in capsys.readouterr().out
    page = parse((run_dir / "report.html").read_text())
    table = pd.read_csv(run_dir / "lesions.csv")
    assert sorted(r["cells"][0] for r in page.rows) == sorted(table["session"].astype(str))
    for row in page.rows:
        session = row["cells"][0]
        (src,) = row["images"]
        # the inlined picture is the QC file of that session, byte for byte
        assert base64.b64decode(src.split(",", 1)[1]) == (run_dir / "qc" / f"{session}_qc.png").read_bytes()
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    count_column = next(c for c in ("lesion_count", "n_lesions") if c in table.columns)
    assert f">{count_column}<" in (run_dir / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:|file:|/)', (run_dir / "report.html").read_text())  # self-contained


def test_evaluation_page_has_the_metrics_with_intervals_and_the_plots(lesion_run):
    run_dir = lesion_run / "eval"
    page = build_report(run_dir)
    report = json.loads((run_dir / "metrics.json").read_text())
    dice = report["summary"]["mean_dice"]
    assert f"{dice:.3f}" in page
    interval = (report["summary"].get("ci95") or {}).get("mean_dice")
    if interval and all(v is not None for v in interval):
        assert f"[{interval[0]:.3f}, {interval[1]:.3f}]" in page
    for name in report.get("baselines", {}):
        assert f"baseline: {name}" in page
    parsed = parse(page)
    plots = sorted(p.name for p in run_dir.glob("*.png"))
    assert {"learning_curve.png", "volumes.png"} <= set(plots)
    sessions = pd.read_csv(run_dir / "per_scan.csv")["session"].astype(str)
    assert sorted(r["cells"][0] for r in parsed.rows) == sorted(sessions)
    # next to an evaluation, the QC overlays of the inference run of the same split (eval/inference/qc)
    qc = [run_dir / "inference" / "qc" / f"{s}_qc.png" for s in sessions]
    assert all(q.is_file() for q in qc)
    assert len(parsed.images) == len(plots) + len(qc)


def test_failed_sessions_are_highlighted_and_listed_first(lesion_run, tmp_path):
    run_dir = tmp_path / "inference"
    shutil.copytree(lesion_run / "eval" / "inference", run_dir)
    table = pd.read_csv(run_dir / "lesions.csv")
    failed = str(table["session"].iloc[-1])
    table["error"] = ""
    table.loc[table.index[-1], "error"] = "t1: /data/x_T1.nii.gz: truncated NIfTI"
    table.to_csv(run_dir / "lesions.csv", index=False)
    rows = parse(build_report(run_dir)).rows
    assert rows[0]["class"] == "error" and rows[0]["cells"][0] == failed
    assert "t1: /data/x_T1.nii.gz: truncated NIfTI" in rows[0]["cells"]
    assert all(r["class"] != "error" for r in rows[1:])


def test_not_a_run_folder_is_one_line_and_exit_1(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run folder" in err[0] and str(tmp_path) in err[0]
    assert not (tmp_path / "report.html").exists()


def _chromium() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(name)), None)


# appended to a copy of the page: after load, write each image's decode result into the DOM
_PROBE = """<script>window.addEventListener('load', function(){
  var out = Array.prototype.map.call(document.images, function(i){ return [i.complete, i.naturalWidth, i.naturalHeight]; });
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
  document.querySelector('#sessions thead th:nth-child(3)').click();  // the sort script runs without error
  var mark = document.createElement('pre'); mark.id = 'sorted'; mark.textContent = 'ok'; document.body.appendChild(mark);
});</script>"""


def test_page_renders_in_headless_chromium_with_every_image_loaded(lesion_run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium binary on PATH (apt-get install chromium) to render the page")
    run_dir = lesion_run / "eval" / "inference"
    page = build_report(run_dir)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout)
    assert found, f"no probe in the rendered DOM (exit {dom.returncode}): {dom.stderr[-1500:]}"
    images = json.loads(found.group(1))
    assert len(images) == page.count("<img") > 0
    assert all(complete and width > 0 and height > 0 for complete, width, height in images), images
    assert '<pre id="sorted">ok</pre>' in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1200,900", f"--screenshot={shot}", (run_dir / "report.html").as_uri()
                    if (run_dir / "report.html").is_file() else probe.as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == PNG_MAGIC
