"""The model server with slow clients open against the same server without them, in the same run, and
its answers to a corpus of malformed requests.

    python -m bench.serve.slow_clients [--repeats 3] [--warmup 1] [--duration 8] [--slow 4] [--interval 5]
        [--worker-classes freestack] [--out bench/results/slow_clients.json]

One model server per worker class (``python -m freestack_server`` as the serving image starts it: 2 workers, gunicorn's
default 30 s timeout, the same MLP and payload as ``run.py``, bodies up to 4 MiB), started before the
first cell. Per round, for each server, two cells of ``bench.serve.load`` at concurrency 8 (keep-alive
connections, one 64-feature row per request, a fresh generator process per cell):

- ``none``: no other client;
- ``slow``: ``--slow`` clients each keep a connection open that sends the head of a POST with a 2 MB
  body (two with a Content-Length, the others chunked), then one byte every ``--interval`` seconds
  (``tests/support/serving_hostile.SlowClients``; a client that gets an answer, a 408, opens a new
  connection at once, so that many are always open). They are opened before the cell's warm-up.

Summary: requests/s of each cell (median over rounds), ``ratio`` = slow / none within each round, then
the median (target >= 0.9), the errors (non-200 answers or lost connections: must be 0), the slow
clients' answers, and whether a worker was killed (``WORKER TIMEOUT`` in the server's log, or worker
pids that changed; must not be). Then the malformed corpus (``tests/support/serving_hostile.corpus``:
bad JSON, shapes and types, every route that takes a message, GET ``?json=``, chunked framing,
protocol errors, Content-Encoding), each case on its own connection: the share answered 4xx in
Seldon's JSON error format (target 1.0), and the cases that were not. A few minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import add_cell_options, parser, write_report
from bench.serve import run as base
from tests.support.serving_hostile import SlowClients, corpus, run_corpus

MAX_BODY = 4 * 1024 * 1024
MAX_ROWS = 1000
CONCURRENCY = 8
TARGET = 0.9


def start(workdir: Path, uri: str, folder: Path, body: bytes, classes: list[str]) -> dict[str, base.Server]:
    servers = {}
    for wc in classes:
        extra = {
            "FREESTACK_SERVER_WORKER_CLASS": wc,
            "FREESTACK_SERVER_THREADS": "4" if wc == "gthread" else "1",
            "FREESTACK_MAX_BODY_BYTES": str(MAX_BODY),
            "FREESTACK_MAX_BATCH_ROWS": str(MAX_ROWS),
        }
        servers[wc] = base._image_server(
            wc,
            "seldon",
            uri,
            workdir,
            extra,
            f"python -m freestack_server as docker/serving.Dockerfile starts it, worker_class {wc}",
        )
    expected = base.expected_probs(folder, body)
    for s in servers.values():
        base.check_answer(s.name, s.wait_ready(body), expected)
    base.wait_idle(list(servers.values()))
    return servers


def workers(server: base.Server) -> set[int]:
    return set(base._group_cpu_by_pid(server.proc.pid))


def measure(server: base.Server, body: Path, args: argparse.Namespace, slow: int) -> dict[str, Any]:
    """One cell: the load generator's figures, with ``slow`` slow clients open throughout."""
    if not slow:
        return base.measure_http(server, body, CONCURRENCY, args.warmup, args.duration)
    by_length = SlowClients(server.port, slow - slow // 2, interval=args.interval, reopen=True)
    chunked = SlowClients(server.port, slow // 2, interval=args.interval, chunked=True, reopen=True)
    with by_length, chunked:
        sample = base.measure_http(server, body, CONCURRENCY, args.warmup, args.duration)
    sample["slow_clients"] = slow
    sample["slow_answers"] = {
        str(k): v for k, v in sorted(_count(by_length.statuses + chunked.statuses).items())
    }
    return sample


def _count(values: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def summarise(
    samples: dict[str, dict[str, list[dict]]], killed: dict[str, list[str]], corpora: dict[str, dict]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "statistic": "median over rounds; ratio = slow / none within each round, then the median"
    }
    for wc, cells in samples.items():
        none = {s["round"]: s["rps"] for s in cells["none"]}
        ratios = [round(s["rps"] / none[s["round"]], 3) for s in cells["slow"] if none.get(s["round"])]
        out[wc] = {
            "rps_none": round(statistics.median(s["rps"] for s in cells["none"]), 1),
            "rps_slow": round(statistics.median(s["rps"] for s in cells["slow"]), 1),
            "ratio_by_round": ratios,
            "ratio": round(statistics.median(ratios), 3) if ratios else None,
            "errors": sum(s["errors"] for c in cells.values() for s in c),
            "workers_killed": killed[wc],
            "corpus_cases": corpora[wc]["cases"],
            "corpus_json_4xx": corpora[wc]["json_4xx"],
            "corpus_json_4xx_share": round(corpora[wc]["json_4xx"] / corpora[wc]["cases"], 4),
        }
    out["checks"] = {
        "target": f"slow / none >= {TARGET} requests/s, no errors, no worker killed; every malformed request 4xx JSON",
        **{f"{wc}_ratio_ok": bool(out[wc]["ratio"] and out[wc]["ratio"] >= TARGET) for wc in samples},
        "errors_ok": all(out[wc]["errors"] == 0 for wc in samples),
        "no_worker_killed": not any(killed.values()),
        "corpus_ok": all(out[wc]["corpus_json_4xx_share"] == 1.0 for wc in samples),
    }
    return out


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    uri, folder = base.make_model(workdir)
    body = base.make_bodies(workdir)["row"]
    classes = args.worker_classes.split(",")
    servers = start(workdir, uri, folder, body.read_bytes(), classes)
    samples: dict[str, dict[str, list]] = {wc: {"none": [], "slow": []} for wc in classes}
    killed: dict[str, list[str]] = {}
    corpora: dict[str, dict] = {}
    try:
        pids = {wc: workers(s) for wc, s in servers.items()}
        for r in range(args.repeats):
            for wc in classes:
                for cell, slow in (("none", 0), ("slow", args.slow))[:: 1 if r % 2 == 0 else -1]:
                    s = measure(servers[wc], body, args, slow)
                    s["round"] = r
                    s.pop("latency_us_hist", None)
                    samples[wc][cell].append(s)
                    print(
                        f"  round {r + 1} {wc:<9} {cell:<4} {s['rps']:>8.1f} req/s  p99 {s['p99_ms']} ms  errors "
                        f"{s['errors']}  slow answers {s.get('slow_answers', {})}",
                        flush=True,
                    )
        for wc, server in servers.items():
            log = server.log.read_text(errors="replace")
            killed[wc] = [ln for ln in log.splitlines() if "WORKER TIMEOUT" in ln]
            if workers(server) != pids[wc]:
                killed[wc].append(f"worker pids changed: {sorted(pids[wc])} -> {sorted(workers(server))}")
            t0 = time.monotonic()
            corpora[wc] = run_corpus(server.port, corpus(base.N_FEATURES, MAX_ROWS, MAX_BODY), timeout=60)
            corpora[wc]["seconds"] = round(time.monotonic() - t0, 1)
            print(
                f"  {wc:<9} corpus: {corpora[wc]['json_4xx']} of {corpora[wc]['cases']} answered 4xx JSON",
                flush=True,
            )
    finally:
        for s in servers.values():
            s.stop()
    return {
        "name": "serve_slow_clients",
        "machine": base.machine(),
        "params": {
            "repeats": args.repeats,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "concurrency": CONCURRENCY,
            "slow_clients": args.slow,
            "slow_interval_s": args.interval,
            "slow_body_bytes": 2_000_000,
            "max_body_bytes": MAX_BODY,
            "worker_classes": classes,
            "servers": {n: s.settings for n, s in servers.items()},
        },
        "samples": samples,
        "corpus": corpora,
        "summary": summarise(samples, killed, corpora),
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.serve.slow_clients", __doc__, out="slow_clients.json")
    add_cell_options(ap, repeats=3, warmup=1.0, duration=8.0)
    ap.add_argument("--slow", type=int, default=4, help="slow clients open in the 'slow' cells")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between a slow client's bytes")
    ap.add_argument("--worker-classes", default="freestack", help="comma-separated: freestack,sync,gthread")
    args = ap.parse_args(argv)
    if not base.SERVING_PY.exists():
        ap.error(f"{base.SERVING_PY} is missing: run `make serving-venv` first")
    with tempfile.TemporaryDirectory(prefix="fs-slow-") as tmp:
        report = run(args, Path(tmp))
    out = write_report(report, args.out, indent=1)
    s = report["summary"]
    for wc in report["params"]["worker_classes"]:
        w = s[wc]
        print(
            f"{wc:<9} none {w['rps_none']:>8.1f} req/s  {args.slow} slow clients {w['rps_slow']:>8.1f} req/s  "
            f"ratio {w['ratio']} by round {w['ratio_by_round']}  errors {w['errors']}  workers killed "
            f"{len(w['workers_killed'])}  corpus {w['corpus_json_4xx']}/{w['corpus_cases']} 4xx JSON "
            f"({w['corpus_json_4xx_share']:.1%})"
        )
    print(f"checks: {s['checks']}\nreport: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
