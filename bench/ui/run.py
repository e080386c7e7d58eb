"""The ML views at volume: each page's server time with 1,000 model versions and a 500-trial sweep.

The Airflow API server's app (``create_app()``, with the freestack plugin, its auth and middleware) answers
each page in this process through an ASGI transport, so the time is the server's alone. Each page is asked
once on a fresh process (cold: the versions' files are read) and then 5 times (warm: the median). The
baseline, in the same run, reads the same files with plain ``open`` + ``json`` in one thread.

    python -m bench.ui.run [--versions 1000] [--trials 500] [--out bench/results/ui.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import host, parser, peak_rss_mib, write_report

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 1.0


def _environment(base: Path) -> None:
    (base / "pipelines").mkdir(parents=True)
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", base / "pipelines" / "digits.yaml")
    os.environ.update(
        {
            "AIRFLOW_HOME": str(base / "airflow"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": "bench-ui-" + "0" * 64,
            "FREESTACK_STORAGE_ROOT": (base / "storage").as_uri(),
            "FREESTACK_PIPELINES_DIR": str(base / "pipelines"),
        }
    )
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        env=dict(os.environ),
    )


def _baseline(storage: Path, sweep_id: str) -> dict[str, float]:
    """Plain reads of what the pages read: every version's marker, metrics and lineage; every trial."""
    t0 = time.perf_counter()
    for v in (storage / "registry" / "digits").iterdir():
        if v.is_dir():
            for name in ("_REGISTERED.json", "metrics.json", "lineage.json"):
                json.loads((v / name).read_bytes())
    t1 = time.perf_counter()
    for t in (storage / "runs" / "digits" / sweep_id / "trials").iterdir():
        json.loads((t / "trial.json").read_bytes())
    return {"versions_s": t1 - t0, "trials_s": time.perf_counter() - t1}


async def _time_pages(app, pages: list[str], repeats: int) -> dict[str, dict[str, float]]:
    import httpx

    out = {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        for path in pages:
            times = []
            for _ in range(1 + repeats):
                t0 = time.perf_counter()
                got = await client.get(path)
                times.append(time.perf_counter() - t0)
                assert got.status_code == 200, (path, got.status_code, got.text[:300])
            out[path] = {
                "cold_s": times[0],
                "warm_s": statistics.median(times[1:]),
                "bytes": len(got.content),
            }
    return out


def main() -> int:
    ap = parser("bench.ui.run", __doc__, out="ui.json")
    ap.add_argument("--versions", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="freestack-bench-ui-"))
    try:
        _environment(base)
        from bench.ui.volume import make_registry, make_sweep

        t0 = time.perf_counter()
        names = make_registry(os.environ["FREESTACK_STORAGE_ROOT"], "digits", args.versions)
        sweep_id = make_sweep(os.environ["FREESTACK_STORAGE_ROOT"], "digits", args.trials)
        print(
            f"wrote {args.versions} versions and {args.trials} trials in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        baseline = _baseline(base / "storage", sweep_id)
        from airflow.api_fastapi.app import create_app

        ui = "/freestack/ui"
        pages = [
            f"{ui}/models",
            f"{ui}/models/digits",
            f"{ui}/models/digits?pg=10",
            f"{ui}/models/digits/{names[-1]}",
            f"{ui}/sweeps",
            f"{ui}/sweeps/digits/{sweep_id}",
            f"{ui}/api/models/digits",
            f"{ui}/api/sweeps/digits/{sweep_id}",
            f"{ui}/deployments",
            f"{ui}/data",
        ]
        timings = asyncio.run(_time_pages(create_app(), pages, args.repeats))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return _report(args, timings, baseline)


def _report(args, timings: dict, baseline: dict) -> int:
    worst = max(max(t["cold_s"], t["warm_s"]) for t in timings.values())
    print(f"{'page':<66} {'cold s':>8} {'warm s':>8} {'KiB':>7}")
    for path, t in timings.items():
        print(f"{path:<66} {t['cold_s']:8.3f} {t['warm_s']:8.3f} {t['bytes'] / 1024:7.0f}")
    models_page = timings["/freestack/ui/models/digits"]
    sweep_page = next(t for p, t in timings.items() if p.startswith("/freestack/ui/sweeps/digits/"))
    ratios = {
        "versions_page_cold_vs_plain_reads": models_page["cold_s"] / baseline["versions_s"],
        "sweep_page_cold_vs_plain_reads": sweep_page["cold_s"] / baseline["trials_s"],
    }
    print(
        f"plain reads: versions {baseline['versions_s']:.3f} s, trials {baseline['trials_s']:.3f} s; "
        + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
    )
    met = worst <= LIMIT_S
    print(
        f"slowest page {worst:.3f} s at {args.versions} versions / {args.trials} trials: "
        f"{'meets' if met else 'MISSES'} the {LIMIT_S:.0f} s target"
    )
    write_report(
        {
            "name": "ui",
            "host": host(),
            "versions": args.versions,
            "trials": args.trials,
            "pages": timings,
            "baseline": baseline,
            "ratios": ratios,
            "slowest_s": worst,
            "target_s": LIMIT_S,
            "met": met,
            "peak_rss_mib": peak_rss_mib(),
        },
        args.out,
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
