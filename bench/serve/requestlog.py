"""The request log's cost per request, in one process: the model class's ``predict`` with the log on for every
request ÷ off, the writer's work included (its flushes run in the same process, as in a worker).

    .venv-serving/bin/python -m bench.serve.requestlog [--seconds 5] [--repeats 5]   (run by bench.serve.run)

Prints one JSON line: predictions/s off and on per payload (one row, 32 rows), their ratio per round and the
median. Unlike the HTTP cells of ``bench.serve.run`` (whose rounds differ by up to 20% on 2 cores), this
measures only what the log adds, so a few percent can be read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _rate(model, X, names, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.predict(X, names, {})
        model.tags()
        n += 1
    if model._log is not None:
        model._log.flush()  # the writer's work for what was buffered, inside the timed interval
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serve.requestlog")
    ap.add_argument("--model-uri", required=True)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import numpy as np

    from freestack_server.seldon.model import Model

    work = tempfile.mkdtemp(prefix="freestack-bench-requestlog-")
    os.environ["FREESTACK_REQUEST_LOG_FLUSH_SECONDS"] = (
        "3600"  # flushed by _rate, so every round pays its own
    )
    off = Model(model_uri=args.model_uri)
    on = Model(
        model_uri=args.model_uri,
        request_log_uri=Path(work, "monitoring", "bench").as_uri(),
        request_log_rate=1.0,
    )
    for m in (off, on):
        m.load()
    rng = np.random.default_rng(0)
    out: dict[str, dict] = {}
    for label, rows in (("row", 1), ("batch32", 32)):
        X = rng.uniform(0, 16, size=(rows, off.n_features)).tolist()
        ratios = []
        for _ in range(args.repeats):
            a = _rate(off, np.asarray(X), off.features, args.seconds)
            b = _rate(on, np.asarray(X), on.features, args.seconds)
            ratios.append(round(b / a, 3))
        out[label] = {
            "ratios": ratios,
            "median": statistics.median(ratios),
            "off_per_s": round(a, 1),
            "on_per_s": round(b, 1),
        }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
