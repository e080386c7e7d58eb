"""In-process predict for the serving benchmark: the same request body, parsed and predicted in a
loop, no HTTP. Stdlib, numpy and torch only, so it runs in either environment.

    python -m bench.serve.inproc --mode bare --model-dir DIR --body-file BODY.json --warmup 2 --duration 8
    python -m bench.serve.inproc --mode seldon --model-uri file:///... --body-file BODY.json ...

- ``bare`` (main venv): what ``bench/serve/bare.py`` does per request without the HTTP server:
  ``json.loads`` of the body, ``data.ndarray`` as float32, forward + softmax under
  ``inference_mode`` (1 thread), ``json.dumps`` of the answer.
- ``seldon`` (``.venv-serving``, diagnostic): what one request costs in Seldon's wrapper without
  Flask, gunicorn or HTTP: ``json.loads``, our envelope check, ``seldon_core.seldon_methods.predict``
  on ``plugins/freestack_server/seldon/model.py`` with the launcher's buffered metrics, ``json.dumps`` of the answer.

Prints one JSON line shaped like ``bench.serve.load``'s (requests/s, latency percentiles and
histogram, CPU seconds in the window).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path


def _bare(model_dir: str):
    import numpy as np
    import torch

    from freestack.ml.models import FreestackNet

    torch.set_num_threads(1)
    net = FreestackNet.from_pretrained(model_dir)
    net.eval()
    pre = json.loads((Path(model_dir) / "preprocessing.json").read_text())
    names = [str(c) for c in pre.get("classes") or net.classes]

    def call(body: bytes) -> bytes:
        x = np.asarray(json.loads(body)["data"]["ndarray"], dtype=np.float32)
        with torch.inference_mode():
            out = torch.softmax(net(torch.from_numpy(x)), dim=-1).numpy()
        return json.dumps({"data": {"names": names, "ndarray": out.tolist()}, "meta": {}}).encode()

    return call


def _seldon(model_uri: str, model_dir: str):
    os.environ.setdefault("INCLUDE_METRICS_IN_CLIENT_RESPONSE", "false")
    from seldon_core import seldon_methods

    from freestack_server.seldon.metrics import BufferedSeldonMetrics
    from freestack_server.seldon.model import Model
    from freestack_server.seldon.request_checks import predict_problem

    model = Model(model_uri=model_uri)
    model.load()
    metrics = BufferedSeldonMetrics(worker_id_func=os.getpid)
    inputs = model.inputs()

    def call(body: bytes) -> bytes:
        req = json.loads(body)
        if problem := predict_problem(req, body, inputs):
            raise ValueError(problem)
        return json.dumps(seldon_methods.predict(model, req, metrics)).encode()

    return call


def main(argv: list[str] | None = None) -> int:
    from bench.serve.load import round3, summarize_hist

    ap = argparse.ArgumentParser(prog="python -m bench.serve.inproc")
    ap.add_argument("--mode", choices=("bare", "seldon"), default="bare")
    ap.add_argument(
        "--model-dir", required=True, help="the version folder (bare) or include/serving (seldon)"
    )
    ap.add_argument("--model-uri", default="", help="seldon mode: the registered version's URI")
    ap.add_argument("--body-file", required=True)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=8.0)
    args = ap.parse_args(argv)
    body = Path(args.body_file).read_bytes()
    call = _bare(args.model_dir) if args.mode == "bare" else _seldon(args.model_uri, args.model_dir)
    call(body)
    print("ready", flush=True)
    sys.stdin.readline()  # "go": every process of a cell starts its clock together
    hist: Counter = Counter()
    perf = time.perf_counter
    t_start = perf()
    t_warm, t_end = t_start + args.warmup, t_start + args.warmup + args.duration
    per_second = [0] * max(1, int(args.duration + 0.999))
    cpu0 = None
    errors = 0
    while True:
        t0 = perf()
        if t0 >= t_end:
            break
        if cpu0 is None and t0 >= t_warm:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            cpu0, t_warm = ru.ru_utime + ru.ru_stime, t0
        try:
            call(body)
            ok = True
        except Exception:  # counted, like a non-200 answer
            ok = False
        t1 = perf()
        if cpu0 is not None and t1 < t_end:
            if ok:
                hist[round3(int((t1 - t0) * 1e6))] += 1
                per_second[min(int(t1 - t_warm), len(per_second) - 1)] += 1
            else:
                errors += 1
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - (cpu0 or 0.0)
    window = t_end - t_warm
    n = sum(hist.values())
    print(
        json.dumps(
            {
                "mode": args.mode,
                "warmup_s": args.warmup,
                "duration_s": round(window, 4),
                "requests": n,
                "errors": errors,
                "rps": round(n / window, 2) if window > 0 else 0.0,
                **summarize_hist(hist),
                "per_second": per_second,
                "latency_us_hist": {str(k): v for k, v in sorted(hist.items())},
                "cpu_s": round(cpu, 4),
                "cpu_us_per_request": round(cpu / n * 1e6, 2) if n else None,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
