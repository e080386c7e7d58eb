"""guidellm against the model server's OpenAI route and ``transformers serve``: the vLLM project's
OpenAI-server benchmark tool (``guidellm run``, its sweep profile) run against both servers on the same
weights, in the same run, with the same settings.

    python -m bench.serve.guidellm_run [--guidellm /tmp/glv/bin/guidellm] [--size small|base]
                                       [--rates 5] [--max-seconds 20] [--prompt-tokens 64]
                                       [--output-tokens 32] [--threads 1] [--out bench/results/guidellm.json]

guidellm is not a dependency of the project (it pins its own torch and transformers): it lives in a
throwaway environment, ``python3 -m venv /tmp/glv && /tmp/glv/bin/pip install torch==2.13.0 &&
/tmp/glv/bin/pip install guidellm==0.8.1`` (torch first, pinned: the CPU wheel).

The version and both servers are bench/serve/openai.py's (imported): a random-weight Llama whose special
tokens never win (every answer runs to ``max_tokens``), ``transformers serve --continuous-batching`` with
the model server's KV cache and step bounds, and the model server (runtime ``mlserver``) as its image
starts it. guidellm gets the version's folder as its tokenizer (nothing is downloaded), synthetic prompts
of ``--prompt-tokens`` tokens asking ``--output-tokens`` tokens, streaming ``/v1/chat/completions``,
and its sweep profile: a synchronous run, a throughput run (at most ``--max-concurrency`` requests at
once), then constant rates between the two measured rates, ``--rates`` runs in all, each at most
``--max-seconds``. Per run and server: requests/s, output tokens/s, TTFT and ITL p50/p99 (guidellm's
figures, over its successful requests). Ratios: freestack / ``transformers serve`` output tokens/s at
each step of the sweep (the servers' sweeps have their own rates: step k of one is compared with step k
of the other) and their median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bench.common import host, parser, write_report
from bench.serve.generation import MODEL, SIZES, STOP_GRACE_S, make_version
from bench.serve.openai import BOUNDS, PYTHON, TRANSFORMERS_CLI, start_sides

GUIDELLM = Path("/tmp/glv/bin/guidellm")
GUIDELLM_VERSION = "0.8.1"
CREATE = (
    "python3 -m venv /tmp/glv && /tmp/glv/bin/pip install torch==2.13.0 && "
    f"/tmp/glv/bin/pip install guidellm=={GUIDELLM_VERSION}"
)
SERVERS = ("freestack", "transformers_serve")


class Step(BaseModel):
    """One run of a sweep, as guidellm measured it (times in ms)."""

    strategy: str
    rate: float | None
    requests_per_s: float
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    output_tokens_mean: float
    successful: int
    errored: int


class Sweep(BaseModel):
    """One server's sweep: its steps in guidellm's order, the wall seconds it took."""

    server: str
    seconds: float
    steps: list[Step]


# ---------------------------------------------------------------------------------------------------------
# guidellm


def scenario(target: str, model: str, folder: Path, out: Path, args) -> dict[str, Any]:
    """guidellm's scenario (its ``--scenario`` file): the same for both servers but target and model. The
    answer's length is the backend's ``max_tokens``, not the data's ``output_tokens``: with the latter
    guidellm adds vLLM's ``ignore_eos`` to every request, which both servers refuse (the model server 400,
    an unknown parameter; ``transformers serve`` 422); the version's special tokens never win, so every
    answer runs to ``max_tokens`` anyway."""
    return {
        "metadata": {"name": "freestack-bench", "description": "bench/serve/guidellm_run.py"},
        "spec": {
            "backend": {
                "kind": "openai_http",
                "target": target,
                "model": model,
                "request_format": "/v1/chat/completions",
                "stream": True,
                "timeout": args.request_timeout,
                "max_tokens": args.output_tokens,
            },
            "profile": {
                "kind": "sweep",
                "sweep_size": args.rates,
                "max_concurrency": args.max_concurrency,
            },
            "constraints": [{"kind": "max_duration", "seconds": args.max_seconds}],
            "tokenizer": {"kind": "huggingface_auto", "model": str(folder)},
            "data": [{"kind": "synthetic_text", "prompt_tokens": args.prompt_tokens}],
            "outputs": [{"kind": "json", "path": str(out)}],
        },
    }


def run_guidellm(server: str, target: str, model: str, folder: Path, work: Path, args) -> Path:
    """guidellm's sweep against one server; the path of its JSON report."""
    out, spec = work / f"guidellm-{server}.json", work / f"scenario-{server}.json"
    spec.write_text(json.dumps(scenario(target, model, folder, out, args), indent=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    log = work / f"guidellm-{server}.log"
    argv = [str(args.guidellm), "run", "--scenario", str(spec), "--disable-console-interactive"]
    with open(log, "wb") as f:
        done = subprocess.run(argv, env=env, cwd=str(work), stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"guidellm against {server} failed (exit {done.returncode}); its log {log}:\n{tail}")
    return out


def steps_of(report: dict[str, Any]) -> list[Step]:
    """Each benchmark of guidellm's JSON report (one per step of its sweep) as a Step."""
    return [step_of(b) for b in report["benchmarks"]]


def step_of(b: dict[str, Any]) -> Step:
    m, strategy = b["metrics"], b["config"]["strategy"]
    ms = {"time_to_first_token_ms": "ttft", "inter_token_latency_ms": "itl"}
    figures: dict[str, float] = {}
    for key, name in ms.items():
        pct = m[key]["successful"]["percentiles"]
        figures[f"{name}_p50_ms"], figures[f"{name}_p99_ms"] = round(pct["p50"], 2), round(pct["p99"], 2)
    totals = m["request_totals"]
    return Step(
        strategy=strategy.get("type_") or strategy.get("kind") or "?",
        rate=None if strategy.get("rate") is None else round(strategy["rate"], 3),
        requests_per_s=round(m["requests_per_second"]["successful"]["mean"], 3),
        output_tokens_per_s=round(m["output_tokens_per_second"]["successful"]["mean"], 2),
        output_tokens_mean=round(m["output_token_count"]["successful"]["mean"], 2),
        successful=int(totals["successful"]),
        errored=int(totals["errored"]),
        **figures,
    )


# ---------------------------------------------------------------------------------------------------------
# the run


def measure(servers: dict[str, Any], folder: Path, work: Path, args) -> dict[str, Sweep]:
    """guidellm against each server in turn (freestack first), the same scenario but target and model."""
    models = {"freestack": MODEL, "transformers_serve": str(folder)}
    sweeps = {}
    for name in SERVERS:
        target = f"http://127.0.0.1:{servers[name].port}"
        started = time.perf_counter()
        out = run_guidellm(name, target, models[name], folder, work, args)
        steps = steps_of(json.loads(out.read_text()))
        sweeps[name] = Sweep(server=name, seconds=round(time.perf_counter() - started, 1), steps=steps)
        print(f"{name}: sweep of {len(steps)} runs in {sweeps[name].seconds} s", flush=True)
    return sweeps


def summarise(sweeps: dict[str, Sweep]) -> dict[str, Any]:
    """freestack / transformers serve output tokens/s at each step of the sweep, and their median."""
    fs, ts = sweeps["freestack"].steps, sweeps["transformers_serve"].steps
    ratios = [
        {
            "step": k,
            "strategy": a.strategy,
            "freestack_rate": a.rate,
            "transformers_serve_rate": b.rate,
            "output_tokens_per_s_ratio": round(a.output_tokens_per_s / b.output_tokens_per_s, 3)
            if b.output_tokens_per_s
            else None,
        }
        for k, (a, b) in enumerate(zip(fs, ts, strict=False))
    ]
    got = [r["output_tokens_per_s_ratio"] for r in ratios if r["output_tokens_per_s_ratio"] is not None]
    return {
        "statistic": "guidellm's means (requests/s, output tokens/s) and percentiles (TTFT, ITL) over the "
        "successful requests of each run; ratio = freestack / transformers serve output tokens/s, step by step",
        "ratios": ratios,
        "output_tokens_per_s_ratio_median": round(statistics.median(got), 3) if got else None,
        "errored": {name: sum(s.errored for s in sw.steps) for name, sw in sweeps.items()},
    }


def print_table(sweeps: dict[str, Sweep]) -> None:
    print(
        f"\n{'server':<20} {'strategy':<12} {'rate':>7} {'req/s':>7} {'out tok/s':>10} "
        f"{'ttft50':>8} {'ttft99':>8} {'itl50':>7} {'itl99':>7} {'err':>4}"
    )
    for name, sweep in sweeps.items():
        for s in sweep.steps:
            rate = "-" if s.rate is None else f"{s.rate:.2f}"
            print(
                f"{name:<20} {s.strategy:<12} {rate:>7} {s.requests_per_s:>7.2f} {s.output_tokens_per_s:>10.1f} "
                f"{s.ttft_p50_ms:>8.0f} {s.ttft_p99_ms:>8.0f} {s.itl_p50_ms:>7.1f} {s.itl_p99_ms:>7.1f} "
                f"{s.errored:>4}"
            )


def arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = parser("bench.serve.guidellm_run", __doc__, out="guidellm.json", workdir=True)
    ap.add_argument("--guidellm", type=Path, default=GUIDELLM, help="guidellm's executable")
    ap.add_argument("--size", choices=list(SIZES), default="small")
    ap.add_argument("--rates", type=int, default=5, help="runs of the sweep (synchronous, throughput, rates)")
    ap.add_argument("--max-seconds", type=float, default=20, help="seconds a run of the sweep, at most")
    ap.add_argument("--max-concurrency", type=int, default=32, help="requests at once, at most")
    ap.add_argument(
        "--request-timeout",
        type=float,
        default=60,
        help="seconds a request may take before it counts as errored",
    )
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    ap.add_argument("--running-per-request", type=int, default=4, help="generation.max_running_per_request")
    args = ap.parse_args(argv)
    args.start_together = False
    if not args.guidellm.exists():
        ap.error(f"{args.guidellm} is missing: create its environment with `{CREATE}` (or give --guidellm)")
    if not PYTHON.exists() or not TRANSFORMERS_CLI.exists():
        ap.error(f"{PYTHON} or {TRANSFORMERS_CLI} is missing: run `make mlserver-venv` first")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    own = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="freestack-bench-guidellm-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(work / "airflow"))
    servers: dict[str, Any] = {}
    try:
        uri, folder, figures = make_version(work, args.size)
        print(f"version {uri} ({figures['parameters'] / 1e6:.2f}M parameters)", flush=True)
        ts_argv, fs_env = start_sides(servers, uri, folder, work, args)
        sweeps = measure(servers, folder, work, args)
    finally:
        for srv in servers.values():
            srv.stop(timeout=STOP_GRACE_S)
    report = {
        "name": "guidellm",
        "machine": {**host(), "guidellm": guidellm_version(args.guidellm)},
        "params": describe(args, figures, ts_argv, fs_env),
        "sweeps": {name: sweep.model_dump() for name, sweep in sweeps.items()},
        "summary": summarise(sweeps),
    }
    out = write_report(report, args.out, indent=1)
    if own:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print_table(sweeps)
    print(
        f"\nmedian freestack / transformers serve output tokens/s: {report['summary']['output_tokens_per_s_ratio_median']}"
    )
    print(f"report: {out}")
    return 0


def guidellm_version(exe: Path) -> str:
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[-1] if (done.stdout or done.stderr) else "?"


def describe(args, figures: dict[str, Any], ts_argv: list[str], fs_env: dict[str, str]) -> dict[str, Any]:
    """The run's parameters, as the report keeps them."""
    return {
        "size": args.size,
        "model": f"LlamaForCausalLM, random weights, {figures['parameters'] / 1e6:.2f}M parameters",
        "parameters": figures["parameters"],
        "device": "cpu",
        "dtype": "torch.float32",
        "threads": args.threads,
        "profile": f"sweep, {args.rates} runs (synchronous, throughput, {args.rates - 2} constant rates)",
        "rates": args.rates,
        "max_seconds": args.max_seconds,
        "max_concurrency": args.max_concurrency,
        "request_timeout_s": args.request_timeout,
        "data": f"synthetic_text, prompt_tokens={args.prompt_tokens}, output_tokens={args.output_tokens}",
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "route": "/v1/chat/completions, streamed",
        "tokenizer": "the version's folder (huggingface_auto)",
        "bounds": BOUNDS,
        "transformers_serve": {
            "command": "transformers " + " ".join(a if "/" not in a else "<version folder>" for a in ts_argv),
            "model": "<version folder>",
        },
        "freestack": {
            "command": "python -m freestack_server, runtime mlserver, as its image starts it (tests/support/images.py)",
            "model": MODEL,
            "settings": {k: v for k, v in fs_env.items() if k != "FREESTACK_HOME"},
        },
        "order": "freestack's sweep, then transformers serve's (both servers up throughout)",
    }


if __name__ == "__main__":
    sys.exit(main())
