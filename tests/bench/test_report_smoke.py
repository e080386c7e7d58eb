"""bench/report.py: one table, a results README and PNG charts from every bench/results/*.json, and
the docs benchmarks page's table replaced between its markers (nothing measured here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.report", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_report_from_the_committed_results(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results, ignore=shutil.ignore_patterns("*.png", "README.md"))
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\nbefore\n<!-- bench-table:start -->\nold table\n<!-- bench-table:end -->\nafter\n"
    )
    out = _run("--results", str(results), "--readme", str(readme))
    assert out.returncode == 0, out.stderr
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    table = text.split("<!-- bench-table:start -->", 1)[1].split("<!-- bench-table:end -->", 1)[0]
    names = {json.loads(p.read_text()).get("name") for p in results.glob("*.json")}
    for name in names:
        assert f"| {name} |" in table, f"no row for {name}"
    generated = (results / "README.md").read_text()
    assert table.strip().splitlines()[-1] in generated  # the same table in both
    pngs = sorted(results.glob("*.png"))
    assert {p.name for p in pngs} >= {"ratios.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    for p in pngs:
        assert f"]({p.name})" in generated
    # a second run changes nothing
    before = readme.read_text()
    assert _run("--results", str(results), "--readme", str(readme)).returncode == 0
    assert readme.read_text() == before


def test_readme_without_markers_is_left_alone_and_no_results_is_an_error(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    out = _run("--results", str(results), "--readme", "")
    assert out.returncode == 1 and "run `make bench` first" in out.stderr
    shutil.copy(ROOT / "bench" / "results" / "serve.json", results)
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    out = _run("--results", str(results), "--readme", str(readme), "--no-charts")
    assert out.returncode == 0 and "has no" in out.stderr
    assert readme.read_text() == "no markers here\n"
    assert "| serve |" in (results / "README.md").read_text()


def test_the_docs_benchmark_table_is_the_generated_one(tmp_path):
    """The docs' performance table is what bench/report.py makes of the committed results."""
    readme = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", readme)
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results, ignore=shutil.ignore_patterns("*.png", "README.md"))
    assert _run("--results", str(results), "--readme", str(readme), "--no-charts").returncode == 0
    assert readme.read_text() == (ROOT / "docs" / "benchmarks.md").read_text(), (
        "docs/benchmarks.md is stale: run `python -m bench.report`"
    )
