"""Streaming benchmark: the train stage over a window 1x and ``--scale``x as large, in memory and streamed.

    python -m bench.train.stream [--rows-per-day 100000] [--days 2] [--scale 10] [--epochs 2]
                                 [--batch-size 256] [--out bench/results/train_stream.json]

1. Lands ``--days * --scale`` days of a numeric classification table (a key, 32 float features, a label
   of 4 classes from a noisy linear teacher; numpy seed) as Parquet files and ingests them with
   ``freestack.ingest.core.ingest_partition``, so the lake is the one a pipeline would have.
2. Runs ``freestack.train.core.train`` on the 1x window (the last ``--days`` days) and on the whole
   ``--scale``x window, each in a fresh process (its peak RSS, ``ru_maxrss``, is its own), once with
   ``train.data.mode: memory`` and once with ``stream`` (default ``shuffle_buffer`` and ``chunk_rows``).
3. Reports per run: peak RSS (interpreter and imports included), the loop's samples/s (the train
   split's rows x epochs / seconds of the training epochs, as ``TrainResult.samples_per_s``), the wall
   seconds of ``train()`` (reading or spooling the window included) and the test accuracy.

Targets: peak RSS of the streamed ``--scale``x run / the streamed 1x run <= 1.3; the streamed loop's
samples/s / the in-memory loop's on the 1x window >= 0.9. The in-memory ``--scale``x run shows what
streaming saves (the baseline of the memory ratio is the same stage reading the window into memory).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bench.common import REPO, add_child_options, host, parser, peak_rss_mib, run_child, write_report

SEED = 20261123
FEATURES = 32
CLASSES = 4
START = date(2026, 10, 1)
SPEC = """\
name: streambench
schedule: "@daily"
start_date: "2026-10-01"
source:
  landing: "landing/{{pipeline}}/{{ds}}/"
  schema:
    key: id
    target: label
    columns:
      - {{name: id, type: int, nullable: false}}
{columns}
      - {{name: label, type: int, nullable: false}}
model: {{hidden: [64, 32], task: classification}}
train: {{window_days: {days}, epochs: {epochs}, batch_size: {batch}, learning_rate: 0.003}}
"""


def _spec_text(days: int, epochs: int, batch: int) -> str:
    columns = "\n".join(f"      - {{name: f{i:02d}, type: float, nullable: false}}" for i in range(FEATURES))
    return SPEC.format(columns=columns, days=days, epochs=epochs, batch=batch)


def make_lake(work: Path, days: int, rows: int) -> None:
    """``days`` days of landing Parquet files, ingested into the lake under ``work/storage``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from freestack.ingest.core import ingest_partition
    from freestack.spec import load_spec

    spec = load_spec(work / "streambench.yaml")
    rng = np.random.default_rng(SEED)
    teacher = rng.normal(size=(FEATURES, CLASSES))
    for d in range(days):
        ds = (START + timedelta(days=d)).isoformat()
        x = rng.normal(size=(rows, FEATURES))
        label = (x @ teacher + rng.normal(scale=0.5, size=(rows, CLASSES))).argmax(axis=1)
        table = pa.table(
            {
                "id": np.arange(d * rows, (d + 1) * rows),
                **{f"f{i:02d}": x[:, i] for i in range(FEATURES)},
                "label": label,
            }
        )
        folder = work / "storage" / "landing" / "streambench" / ds
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part.parquet")
        ingest_partition(spec, ds)


def child(work: Path, mode: str, days: int, end_ds: str) -> dict[str, Any]:
    """One training in this process: the numbers the report keeps."""
    from freestack.spec import load_spec
    from freestack.tracking.wandb import WandbSettings
    from freestack.train.core import train
    from freestack.train.request import TrainRequest

    spec = load_spec(work / "streambench.yaml")
    req = TrainRequest(
        end_ds=end_ds,
        window_days=days,
        run_key=f"{mode}-{days}",
        overrides={"train": {"data": {"mode": mode}}},
    )
    t0 = time.perf_counter()
    outcome = train(spec, req, tracking_settings=WandbSettings(mode="disabled"))
    wall = time.perf_counter() - t0
    lineage = json.loads((Path(outcome.version_uri.removeprefix("file://")) / "lineage.json").read_text())
    return {
        "mode": mode,
        "days": days,
        "rows": lineage["data"]["rows"],
        "data": lineage["data"],
        "samples_per_s": outcome.summary["samples_per_s"],
        "train_seconds": outcome.summary["train_seconds"],
        "wall_s": wall,
        "test_accuracy": outcome.metrics["test_accuracy"],
        "peak_rss_mib": peak_rss_mib(),
    }


def measure(work: Path, mode: str, days: int, end_ds: str, timeout: float | None) -> dict[str, Any]:
    env = {
        **os.environ,
        "FREESTACK_STORAGE_ROOT": (work / "storage").as_uri(),
        "FREESTACK_SPOOL_DIR": str(work / "spool"),
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
    }
    got = run_child(
        "bench.train.stream",
        ["--child", f"{mode}:{days}:{end_ds}", "--workdir", str(work)],
        env=env,
        timeout=timeout,
    )
    if "error" in got:
        raise RuntimeError(f"{mode} over {days} days failed ({got['error']}):\n{got.get('stderr_tail', '')}")
    return got


def summarise(runs: dict[str, dict[str, Any]], scale: int) -> dict[str, Any]:
    big, small = f"stream_{scale}x", "stream_1x"
    rss_ratio = runs[big]["peak_rss_mib"] / runs[small]["peak_rss_mib"]
    throughput = runs["stream_1x"]["samples_per_s"] / runs["memory_1x"]["samples_per_s"]
    memory_rss = runs[f"memory_{scale}x"]["peak_rss_mib"] / runs["memory_1x"]["peak_rss_mib"]
    return {
        "peak_rss_ratio_stream": round(rss_ratio, 3),
        "peak_rss_ratio_memory": round(memory_rss, 3),
        "throughput_ratio_stream_vs_memory": round(throughput, 3),
        "throughput_ratio_stream_vs_memory_large": round(
            runs[big]["samples_per_s"] / runs[f"memory_{scale}x"]["samples_per_s"], 3
        ),
        "stream_peak_rss_mib": {
            k: round(v["peak_rss_mib"], 1) for k, v in runs.items() if k.startswith("stream")
        },
        "memory_peak_rss_mib": {
            k: round(v["peak_rss_mib"], 1) for k, v in runs.items() if k.startswith("memory")
        },
        "checks": {"peak_rss_ratio_ok": rss_ratio <= 1.3, "throughput_ratio_ok": throughput >= 0.9},
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.train.stream", __doc__, out="train_stream.json")
    ap.add_argument("--rows-per-day", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=2, help="days of the 1x window (default 2)")
    ap.add_argument("--scale", type=int, default=10, help="the large window is this many times the 1x one")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workdir", help="where the lake goes (default: a temporary folder)")
    add_child_options(ap, experiments=False)
    args = ap.parse_args(argv)
    if args.child:
        mode, days, end_ds = args.child.split(":")
        print(json.dumps(child(Path(args.workdir), mode, int(days), end_ds)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        work = Path(args.workdir or tmp)
        (work / "spool").mkdir(parents=True, exist_ok=True)
        total = args.days * args.scale
        (work / "streambench.yaml").write_text(_spec_text(total, args.epochs, args.batch_size))
        os.environ.update(FREESTACK_STORAGE_ROOT=(work / "storage").as_uri(), WANDB_MODE="disabled")
        t0 = time.perf_counter()
        make_lake(work, total, args.rows_per_day)
        lake_s = time.perf_counter() - t0
        end_ds = (START + timedelta(days=total - 1)).isoformat()
        runs = {}
        for mode in ("memory", "stream"):
            for label, days in (("1x", args.days), (f"{args.scale}x", total)):
                runs[f"{mode}_{label}"] = measure(work, mode, days, end_ds, args.timeout)
                print(
                    f"{mode:6} {label:>4}: {runs[f'{mode}_{label}']['peak_rss_mib']:8.0f} MiB peak, "
                    f"{runs[f'{mode}_{label}']['samples_per_s']:10,.0f} samples/s",
                    flush=True,
                )
    report = {
        "name": "train_stream",
        "machine": host(),
        "params": {
            "rows_per_day": args.rows_per_day,
            "days": args.days,
            "scale": args.scale,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "features": FEATURES,
            "classes": CLASSES,
            "data_seed": SEED,
            "lake_seconds": round(lake_s, 1),
        },
        "baseline": "the same train stage with train.data.mode: memory (the window read whole into a DataFrame)",
        "runs": runs,
        "summary": summarise(runs, args.scale),
        "targets": {"peak_rss_ratio_stream_max": 1.3, "throughput_ratio_min": 0.9},
    }
    path = write_report(report, args.out)
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
