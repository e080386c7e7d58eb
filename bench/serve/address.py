"""Serving through a deployment's stable address against the same server bound directly: what the
address (a listening socket handed over by the address holder, ``fd://N`` in gunicorn) costs.

    python -m bench.serve.address [--repeats 8] [--warmup 1] [--duration 4] [--out bench/results/serve_address.json]

Two model servers, each ``python -m freestack_server --env-file F`` with the image's settings
(the image's defaults: 2 workers of the freestack worker) and the same MLP as ``run.py``,
both started before the first cell:

- ``direct``: gunicorn binds ``127.0.0.1:PORT`` itself, as every server did before stable addresses;
- ``stable``: an address holder (``python -m freestack_server hold``) listens on the
  deployment's address, the supervisor fetches the socket from it and gunicorn accepts on it as
  ``fd://N`` (its gate open from the start), which is how ``deploy`` serves now; the load goes to the
  deployment's address.

Cells: concurrency 1, 8 and 32, one 64-feature row per request (``bench.serve.load``: keep-alive
connections, a fresh generator process per cell); ``--repeats`` short rounds, the two servers
measured back to back at each cell, their order alternating from round to round, so that each
stable/direct pair shares the machine's state (the CI machine's 2 cores are shared and noisy: many
short pairs beat a few long ones). Summary: medians over rounds and ``ratio_rps`` = stable / direct
within each round, then the median, with CPU per request. Target: stable >= 0.95 x direct requests/s
at concurrency 8 (no proxy hop: the kernel hands connections to the same workers). About 5 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import add_cell_options, free_port, parser, write_report
from bench.serve import run as base

SERVERS = ("direct", "stable")
TARGET = 0.95


def _config(workdir: Path, name: str, uri: str, port: int, address: dict[str, Any] | None) -> Path:
    """The server's variables in an env file, as the local deploy writes them (the image's defaults:
    2 workers of the freestack worker)."""
    from freestack_server.core.config import ServerConfig, write_env_file

    cfg = ServerConfig.model_validate(
        {
            "model": "bench",
            "version": "v1",
            "deployment": "bench",
            "port": port,
            "metrics_port": free_port(),
            "address": address,
        }
    )
    path = workdir / f"{name}.env"
    write_env_file(path, {"FREESTACK_MODEL_URI": uri, **cfg.env()})
    return path


def start(
    workdir: Path, uri: str, folder: Path, body: bytes
) -> tuple[dict[str, base.Server], subprocess.Popen]:
    """The direct server, the address holder and the stable server; each answered the same probabilities."""
    from freestack_server.core.address import socket_name

    env = base._env(PYTHONPATH=str(base.REPO / "plugins"))
    cmd = [str(base.SERVING_PY), "-m", "freestack_server"]
    address_port = free_port()
    holder = subprocess.Popen(
        [*cmd, "hold", str(workdir), "127.0.0.1", str(address_port)],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    while not (workdir / socket_name(address_port)).exists():
        if holder.poll() is not None:
            raise SystemExit(f"the address holder exited with {holder.returncode}")
        time.sleep(0.02)
    gate = workdir / "stable.gate"
    gate.write_text("")  # open from the start: the server accepts on the address as soon as it is up
    address = {
        "host": "127.0.0.1",
        "port": address_port,
        "socket": socket_name(address_port),
        "gate": str(gate),
    }
    servers = {}
    for name, port, addr in (("direct", free_port(), None), ("stable", address_port, address)):
        cfg = _config(workdir, name, uri, port if addr is None else free_port(), addr)
        what = (
            "gunicorn binds 127.0.0.1:PORT"
            if addr is None
            else "gunicorn accepts on the deployment's address (fd:// from the address holder)"
        )
        servers[name] = base.Server(
            name,
            [*cmd, "--env-file", str(cfg)],
            port,
            workdir / f"{name}.log",
            env=env,
            cwd=workdir,
            settings={"workers": 2, "worker_class": "freestack", "address": addr is not None},
            description=what,
        )
    expected = base.expected_probs(folder, body)
    for s in servers.values():
        s.first_answer = s.wait_ready(body)
        base.check_answer(s.name, s.first_answer, expected)
    base.wait_idle(list(servers.values()))
    return servers, holder


def summarise(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "statistic": "median over rounds; ratio_rps = stable / direct within each round, then the median"
    }
    for name, per_cell in samples.items():
        out[name] = {
            cell: {
                k: round(statistics.median(s[k] for s in ss), 3)
                for k in ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_request")
            }
            | {"errors": sum(s["errors"] for s in ss), "rounds": len(ss)}
            for cell, ss in per_cell.items()
        }
    for cell, ss in samples["stable"].items():
        direct = {s["round"]: s["rps"] for s in samples["direct"][cell]}
        rounds = [round(s["rps"] / direct[s["round"]], 3) for s in ss if direct.get(s["round"])]
        out["stable"][cell]["ratio_rps_by_round"] = rounds
        out["stable"][cell]["ratio_rps"] = round(statistics.median(rounds), 3) if rounds else None
    c8 = out["stable"].get("c8", {})
    out["checks"] = {
        "target": f"stable >= {TARGET} x direct requests/s at concurrency 8, 0 errors",
        "stable_c8_ratio": c8.get("ratio_rps"),
        "ratio_ok": bool(c8.get("ratio_rps") and c8["ratio_rps"] >= TARGET),
        "errors_ok": all(r["errors"] == 0 for n in SERVERS for r in out[n].values()),
    }
    return out


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    uri, folder = base.make_model(workdir)
    body = base.make_bodies(workdir)["row"]
    conc = [int(c) for c in args.concurrency.split(",")]
    samples: dict[str, dict[str, list]] = {n: {f"c{c}": [] for c in conc} for n in SERVERS}
    servers, holder = start(workdir, uri, folder, body.read_bytes())
    try:
        for r in range(args.repeats):
            order = SERVERS if r % 2 == 0 else SERVERS[::-1]
            for c in conc:
                for name in order:
                    s = base.measure_http(servers[name], body, c, args.warmup, args.duration)
                    s["round"] = r
                    s.pop("latency_us_hist", None)
                    samples[name][f"c{c}"].append(s)
                    print(
                        f"  round {r + 1} {name:<7} c{c:<3} {s['rps']:>9.1f} req/s  p50 {s['p50_ms']} ms  "
                        f"p99 {s['p99_ms']} ms  errors {s['errors']}",
                        flush=True,
                    )
    finally:
        for s in servers.values():
            s.stop()
        holder.terminate()
        holder.wait(timeout=10)
    return {
        "name": "serve_address",
        "machine": base.machine(),
        "params": {
            "repeats": args.repeats,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "concurrency": conc,
            "servers": {
                n: {"description": s.description, "settings": s.settings} for n, s in servers.items()
            },
            "payload": "one 64-feature row per request, keep-alive connections (bench/serve/load.py)",
        },
        "samples": samples,
        "summary": summarise(samples),
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.serve.address", __doc__, out="serve_address.json")
    add_cell_options(ap, repeats=8, warmup=1.0, duration=4.0)
    ap.add_argument("--concurrency", default="1,8,32")
    args = ap.parse_args(argv)
    if not base.SERVING_PY.exists():
        ap.error(f"{base.SERVING_PY} is missing: run `make serving-venv` first")
    with tempfile.TemporaryDirectory(prefix="fs-addr-") as tmp:  # short: the Unix socket's path limit
        report = run(args, Path(tmp))
    out = write_report(report, args.out, indent=1)
    s = report["summary"]
    for cell in s["stable"]:
        d, st = s["direct"][cell], s["stable"][cell]
        print(
            f"{cell:<4} direct {d['rps']:>8.1f} req/s ({d['server_cpu_us_per_request']} us CPU/request)  stable "
            f"{st['rps']:>8.1f} req/s ({st['server_cpu_us_per_request']} us)  ratio {st['ratio_rps']} "
            f"by round {st['ratio_rps_by_round']}"
        )
    print(f"checks: {s['checks']}\nreport: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
