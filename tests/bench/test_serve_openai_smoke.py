"""Smoke test of the OpenAI serving benchmark (bench/serve/openai.py): a tiny run (a 2-layer Llama, 8 requests
of 4 new tokens a cell at concurrency 1 and 4, one round, one small flood) against ``transformers serve``, the
model server's OpenAI route and V2 call, and the plain ``generate`` loop writes a complete report that
bench.report turns into rows. The two servers start together (their start-up is not what is checked). No
timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MLSERVER_BIN = ROOT / ".venv-mlserver" / "bin"
SIDES = ("transformers_serve", "freestack_openai", "freestack_openai_whole", "freestack_v2", "baseline")


@pytest.mark.skipif(
    not (MLSERVER_BIN / "transformers").exists(),
    reason="the mlserver environment is missing: run `make mlserver-venv`",
)
def test_openai_serving_benchmark_tiny_run(tmp_path):
    from bench.report import rows_of

    out = tmp_path / "serve_openai.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    cmd = [sys.executable, "-m", "bench.serve.openai", "--size", "small", "--requests", "8"]
    cmd += ["--max-new-tokens", "4", "--repeats", "1", "--concurrency", "1,4", "--floods", "1"]
    cmd += [
        "--flood-new-tokens",
        "8",
        "--flood-probes",
        "4",
        "--start-together",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "w"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "serve_openai" and report["machine"]["cores"] >= 1
    params, summary = report["params"], report["summary"]
    assert (params["size"], params["sides"], params["concurrency"]) == ("small", list(SIDES), [1, 4])
    assert (params["max_new_tokens"], params["requests"], params["threads"], params["temperature"]) == (
        4,
        8,
        1,
        0,
    )
    assert "--continuous-batching" in params["transformers_serve"]["command"]
    assert params["freestack"]["settings"]["FREESTACK_TORCH_THREADS"] == "1"
    assert {(s["side"], s["cell"]) for s in report["samples"]} == {
        (s, c) for s in SIDES for c in ("c1", "c4")
    }
    for s in report["samples"]:
        # every answer runs to max_new_tokens (the special tokens can never win), on every side
        assert s["requests"] == 8 and s["completion_tokens"] == 8 * 4, s
        assert s["tokens_per_s"] > 0 and 0 < s["p50_ms"] <= s["p99_ms"], s
        assert "texts" not in s  # compared in the summary, not kept
        if s["side"] in ("transformers_serve", "freestack_openai"):  # streamed: a first content chunk each
            assert len(s["ttft_ms"]) == 8 and 0 < s["ttft_p50_ms"] <= s["p50_ms"], s
            assert s["finish_reasons"] == ["length"], s
    for group in (
        "vs_transformers_serve",
        "openai_vs_v2",
        "openai_stream_vs_v2",
        "freestack_openai_vs_baseline",
    ):
        for cell in ("c1", "c4"):
            r = summary[group][cell]
            assert r["ratio"] > 0 and len(r["by_round"]) == 1, (group, cell, r)
            assert r["answers_equal"] == 1.0, (group, cell, r)  # greedy on the same weights: the same texts
    assert summary["targets"]["vs_transformers_serve_c1"]["ratio"] > 0
    flood = report["flood"]
    assert flood["flood_status"] == [200] and flood["idle_requests"] == 4 and flood["busy_requests"] >= 2
    assert flood["flood_completion_tokens"] == [params["flood"]["request_prompts"] * 8]
    rows = rows_of([("serve_openai", "serve_openai", report)])
    assert [r.bench for r in rows] == ["serve_openai"] * 7
    assert all(r.ratio and r.ratio > 0 for r in rows)
    assert "OpenAI serving" in proc.stdout
