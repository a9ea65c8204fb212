"""The one report: built from the committed stage outputs only, deterministic, verdicts that follow the numbers,
a missing output named, and the HTML page checked in a real headless browser (Chromium through Playwright)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ("Data: synthetic world and GT cache", "Point tracks", "Motion tokenizer", "Planner",
            "Temporal multi-view geometry", "Map detection")


def _report(tmp: Path, reports: Path = ROOT / "reports") -> tuple[str, str]:
    from stages import report

    assert report.main(["--params", str(ROOT / "params.yaml"), "--reports", str(reports), "--out", str(tmp)]) == 0
    return (tmp / "report.md").read_text(), (tmp / "report.html").read_text()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return tmp_path_factory.mktemp("report"), *_report(tmp_path_factory.mktemp("report_out"))


def test_every_part_with_its_table_verdicts_and_figures(built, tmp_path):
    _, md, html = built
    for title in SECTIONS:
        assert f"## {title}" in md and title in html, title
    assert md.count("Wall time: ") == len(SECTIONS)                     # from reports/budget.json
    held, total = map(int, re.search(r"\*\*(\d+) of (\d+) verdicts hold", md).groups())
    assert total >= 10 and held == md.count("✅") and total - held == md.count("❌")
    for rel in re.findall(r'<img src="([^"]+)"', md):                     # Markdown: paths relative to the file
        assert (ROOT / "reports" / "report" / rel).resolve().is_file() or rel.startswith("../"), rel
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)   # self-contained
    assert "<link" not in html and "<script" not in html
    assert len(srcs) == len(re.findall(r"<img ", md))
    again = _report(tmp_path)
    assert again == (md, html)                                                  # same inputs, same bytes


def test_verdicts_follow_the_numbers_and_a_missing_output_is_named(tmp_path, capsys):
    from stages import report

    reports = tmp_path / "reports"
    shutil.copytree(ROOT / "reports", reports, ignore=shutil.ignore_patterns("report"))
    path = reports / "mapdet" / "metrics.json"
    m = json.loads(path.read_text())
    m["model"]["mAP"] = 0.0
    path.write_text(json.dumps(m))
    md, _ = _report(tmp_path / "out", reports)
    assert "❌ the detector does not beat the mean training layout" in md
    path.unlink()
    rc = report.main(["--params", str(ROOT / "params.yaml"), "--reports", str(reports), "--out",
                      str(tmp_path / "out")])
    assert rc == 1 and str(path) in capsys.readouterr().err
    assert "does not beat the mean training layout" in (tmp_path / "out" / "report.md").read_text()   # untouched


def test_changed_params_are_listed_and_no_output_keys_are_not(tmp_path):
    from ruamel.yaml import YAML

    yaml = YAML()
    params = yaml.load((ROOT / "params.yaml").read_text())
    params["mapdet"]["freeze_lm"] = False
    params["planner"]["num_workers"] = 3
    with open(tmp_path / "params.yaml", "w") as fh:
        yaml.dump(params, fh)
    from stages import report

    assert report.main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "`mapdet.freeze_lm` = `False` (default `True`)" in md and "num_workers" not in md


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian chromium not installed (.ci/run installs it)")
def test_html_loads_in_a_headless_browser_without_errors(built):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    out, _, _ = built
    page_file = next(out.parent.glob("report_out*/report.html"))
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url[:80]}"))
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("document.images.length")
            broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                                   ".map(i => i.alt)")
            headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        finally:
            browser.close()
    assert errors == [] and broken == [] and images >= 8
    assert all(any(h.startswith(t) for h in headings) for t in SECTIONS), headings
