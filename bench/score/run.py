"""Batch scoring benchmark: the score stage against a plain pyarrow + torch loop, its memory over a
partition 10x as large, and a 30-day backfill on 2 workers against 1.

    python -m bench.score.run [--rows 300000] [--text-rows 100000] [--rounds 5] [--batch-rows 4096]
                              [--rss-rows 100000] [--scale 10] [--backfill-days 30] [--backfill-rows 20000]
                              [--backfill-rounds 3] [--backfill-threads 0,1] [--threads T]
                              [--out bench/results/score.json]
    python -m bench.score.run --quick --out /tmp/score.json          # smoke size (about 40 s)

1. Builds two pipelines in a temporary storage root, each with its lake (Parquet landed, then ingested
   with ``freestack.ingest.core.ingest_partition``) and a production version trained on a day of its own
   by ``freestack.train.core.train``, registered and promoted with ``ModelRegistry``:
   ``scoredigits`` (scikit-learn's 1,797 digits repeated: 64 float pixels, 10 classes, ``model.type: mlp``)
   and ``scoretext`` (short product reviews worded as the fine-tuning tutorial's landing data,
   ``include/demo/reviews.py``: one ``text`` column, the built-in net and its trained WordPiece tokenizer).
2. Throughput, one fresh process per model with both arms in it: a warm-up of each, then ``--rounds``
   rounds, the order alternating. ``freestack``: ``freestack.score.core.score(spec, job)`` as the score
   task calls it (the job from ``plan``). ``plain``: a hand-written loop doing the same job, reading the
   same lake part with ``ParquetFile.iter_batches`` in batches of the same size, the same model's forward
   under ``torch.no_grad`` with its own ``tokenizers`` tokenizer, and ``ParquetWriter`` (zstd) of the
   same output columns. Target: freestack rows/s / plain rows/s >= 0.9 for each model.
3. Memory: the stage scoring a ``--rss-rows`` partition and one ``--scale`` times as large, each in a
   fresh process (peak RSS = ``ru_maxrss``, interpreter and imports included); the plain loop too, for
   context. Target: 10x / 1x <= 1.3.
4. Backfill: ``--backfill-days`` days of ``--backfill-rows`` rows, planned once, scored by 1 worker
   process and by 2, each worker taking the next unclaimed day (as two Airflow workers share a
   backfill's mapped tasks) and calling ``score`` for it; the workers import first, then start together.
   Wall time 1 worker / 2 workers, per round and median, once per ``--backfill-threads`` setting (torch
   threads per worker; 0: torch's default, all cores, what a task process gets); reported, no target.

Each throughput sample records ``others_busy_fraction``: the share of the cores other processes kept
busy while it ran (a shared machine makes every figure here swing).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    add_child_options,
    busy_cpu_s,
    experiment_flags,
    host,
    install_patch,
    parser,
    peak_rss_mib,
    profiled,
    run_child,
    usable_cores,
    write_report,
)

SEED = 20261202
TRAIN_DS, SCORE_DS, RSS_1X_DS, RSS_BIG_DS = "2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04"
BACKFILL_START = date(2026, 11, 1)
MODELS = ("digits", "text")
PIPELINES = {"digits": "scoredigits", "text": "scoretext"}
TRAIN_ROWS = {"digits": 1797 * 2, "text": 4000}
CHUNK_ROWS = 100_000
#: what the lakes and versions depend on (a kept --workdir whose setup had the same is reused)
SETUP_KEYS = (
    "rows",
    "text_rows",
    "rss_rows",
    "scale",
    "backfill_days",
    "backfill_rows",
    "epochs",
    "batch_rows",
)

DIGITS_SPEC = """\
name: scoredigits
start_date: "2026-10-01"
source:
  landing: "landing/{{pipeline}}/{{ds}}/"
  schema:
    key: id
    target: label
    columns:
      - {{name: id, type: string, nullable: false}}
      - {{name: "px_{{i}}", repeat: 64, type: float, nullable: false, min: 0, max: 16}}
      - {{name: label, type: int, nullable: false, allowed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}}
model: {{type: mlp, task: classification}}
train: {{window_days: 1, epochs: {epochs}, learning_rate: 0.003}}
score: {{input: lake, version: production, batch_rows: {batch_rows}, cache: false}}
"""
TEXT_SPEC = """\
name: scoretext
start_date: "2026-10-01"
source:
  landing: "landing/{{pipeline}}/{{ds}}/"
  schema:
    key: id
    target: sentiment
    columns:
      - {{name: id, type: string, nullable: false}}
      - {{name: review, type: text, nullable: false}}
      - {{name: sentiment, type: string, nullable: false, allowed: [neg, pos]}}
model: {{task: classification}}
train: {{window_days: 1, epochs: {epochs}, learning_rate: 0.003}}
score: {{input: lake, version: production, batch_rows: {batch_rows}, cache: false}}
"""
SPECS = {"digits": DIGITS_SPEC, "text": TEXT_SPEC}


# ---------------------------------------------------------------------------------------------------------
# the lakes and the versions


def _digits_table(start: int, rows: int, prefix: str):
    """Rows ``start..start+rows`` of the digits repeated (each pass over the 1,797 images is one more copy)."""
    import numpy as np
    import pyarrow as pa
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.arange(start, start + rows) % len(d.target)
    cols = {"id": pa.array([f"{prefix}-{i:08d}" for i in range(start, start + rows)])}
    cols.update({f"px_{j}": d.data[idx, j].astype(np.float64) for j in range(64)})
    cols["label"] = d.target[idx].astype(np.int64)
    return pa.table(cols)


def _text_table(start: int, rows: int, prefix: str):
    """Reviews as ``include/demo/reviews.py`` words them (filler words and two that carry the label),
    5 to 20 filler words each; seeded by ``start``."""
    import numpy as np
    import pyarrow as pa

    from include.demo.reviews import BAD, FILLER, GOOD

    rng = np.random.default_rng(SEED + start)
    pos = rng.random(rows) < 0.5
    n_fill = rng.integers(5, 21, rows)
    fill = rng.integers(0, len(FILLER), (rows, 20))
    signal = rng.integers(0, len(GOOD), (rows, 2))
    where = rng.random((rows, 2))
    texts = []
    for i in range(rows):
        words = [FILLER[k] for k in fill[i, : n_fill[i]]]
        said = GOOD if pos[i] else BAD
        for s, w in zip(signal[i], where[i], strict=True):
            words.insert(int(w * (len(words) + 1)), said[s])
        texts.append(" ".join(words))
    ids = [f"{prefix}-{i:08d}" for i in range(start, start + rows)]
    return pa.table({"id": ids, "review": texts, "sentiment": np.where(pos, "pos", "neg")})


def land_and_ingest(work: Path, model: str, ds: str, rows: int) -> dict[str, Any]:
    """``rows`` rows landed as Parquet (written in chunks) and ingested into the lake; the lake part's size."""
    import pyarrow.parquet as pq

    from freestack.ingest.core import ingest_partition
    from freestack.ingest.lake import read_manifest
    from freestack.spec import load_spec

    name = PIPELINES[model]
    spec = load_spec(work / f"{name}.yaml")
    folder = work / "storage" / "landing" / name / ds
    folder.mkdir(parents=True, exist_ok=True)
    make = _digits_table if model == "digits" else _text_table
    writer = None
    try:
        for start in range(0, rows, CHUNK_ROWS):
            table = make(start, min(CHUNK_ROWS, rows - start), ds.replace("-", ""))
            writer = writer or pq.ParquetWriter(folder / "part.parquet", table.schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    ingest_partition(spec, ds)
    part = read_manifest(spec, ds)["part"]
    return {"ds": ds, "rows": rows, "part_mib": round(part.get("size", 0) / (1 << 20), 1)}


def train_version(work: Path, model: str) -> dict[str, Any]:
    """Train on the training day with the train stage's core, register the candidate, promote it."""
    from freestack.registry.core import registry_for
    from freestack.spec import load_spec
    from freestack.tracking.wandb import WandbSettings
    from freestack.train.core import train
    from freestack.train.request import TrainRequest

    spec = load_spec(work / f"{PIPELINES[model]}.yaml")
    t0 = time.perf_counter()
    outcome = train(
        spec,
        TrainRequest(end_ds=TRAIN_DS, window_days=1, run_key="bench-score"),
        tracking_settings=WandbSettings(mode="disabled"),
    )
    reg = registry_for(spec)
    reg.register(outcome.version_uri, outcome.version)
    reg.promote(outcome.version, reason="bench")
    return {
        "version": outcome.version,
        "test_accuracy": round(outcome.metrics.get("test_accuracy", float("nan")), 4),
        "train_s": round(time.perf_counter() - t0, 1),
    }


# ---------------------------------------------------------------------------------------------------------
# the two arms


def _job(work: Path, model: str, ds: str):
    from freestack.score.core import plan
    from freestack.spec import load_spec

    spec = load_spec(work / f"{PIPELINES[model]}.yaml")
    start = datetime.fromisoformat(ds).replace(tzinfo=UTC)
    got = plan(spec, start, start + timedelta(days=1))
    (job,) = got["jobs"]
    return spec, job


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def plain_loop(
    version_dir: Path, src: Path, out: Path, *, key: str, ds: str, version: str, batch_rows: int
) -> int:
    """The same job by hand: the lake part read in record batches of ``batch_rows`` (the key and the
    feature columns), the version's model (and tokenizer) applied under ``no_grad``, the scores written
    with the stage's output columns. Returns the rows scored."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from freestack.ml.models import load_pretrained

    model = load_pretrained(str(version_dir))
    model.eval()
    pre = json.loads((version_dir / "preprocessing.json").read_text())
    features, classes = pre["features"], pa.array(pre["classes"])
    text = (pre.get("encoder") or {}).get("text")
    tok = None
    if text:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
        tok.enable_truncation(text["max_length"])
        tok.enable_padding(length=text["max_length"], pad_id=text["pad_id"])
    ts = pa.timestamp("us", tz="UTC")
    at = pa.scalar(datetime.now(UTC), ts)
    pf = pq.ParquetFile(src)
    schema = pa.schema(
        [
            pf.schema_arrow.field(key),
            pa.field("ds", pa.string()),
            pa.field("prediction", classes.type),
            pa.field("probabilities", pa.list_(pa.float32(), len(classes))),
            pa.field("version", pa.string()),
            pa.field("scored_at", ts),
        ]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with torch.no_grad(), pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[key, *features]):
            n = batch.num_rows
            if tok is None:
                x = torch.from_numpy(
                    np.column_stack([batch.column(f).to_numpy() for f in features]).astype(np.float32)
                )
            else:
                enc = tok.encode_batch(
                    batch.column(features[0]).to_pylist(), add_special_tokens=text["special_tokens"]
                )
                ids = np.asarray([e.ids for e in enc], dtype=np.int64)
                x = {"text": torch.from_numpy(ids.reshape(n, 1, text["max_length"]))}
            probs = torch.softmax(model(x), dim=-1).numpy()
            writer.write_batch(
                pa.record_batch(
                    [
                        batch.column(key),
                        pa.repeat(ds, n),
                        classes.take(pa.array(probs.argmax(axis=1))),
                        pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), probs.shape[1]),
                        pa.repeat(version, n),
                        pa.repeat(at, n),
                    ],
                    schema=schema,
                )
            )
            rows += n
    return rows


def scored(manifest: dict[str, Any]) -> int:
    """The rows the score stage scored. A day it returned from its cache is an error: every measure here
    times scoring (the specs set ``score.cache: false``), and a reused day takes no time at all."""
    if (manifest.get("cache") or {}).get("hit"):
        raise RuntimeError(
            f"the score stage reused the cached scores of {manifest.get('ds')}: nothing scored"
        )
    return manifest["rows_scored"]


def _arms(work: Path, model: str, ds: str):
    """``{"freestack": fn, "plain": fn}`` scoring ``ds``: each returns the rows it scored."""
    from freestack.score.core import score

    spec, job = _job(work, model, ds)
    (src,) = [_local(i["uri"]) for i in job["inputs"]]
    plain_out = work / "plain" / PIPELINES[model] / f"ds={ds}" / "part.parquet"

    def freestack() -> int:
        return scored(score(spec, job))

    def plain() -> int:
        return plain_loop(
            _local(job["version_uri"]),
            src,
            plain_out,
            key=spec.source.schema_.key,
            ds=ds,
            version=job["version"],
            batch_rows=spec.score.batch_rows,
        )

    return {"freestack": freestack, "plain": plain}, job


def _timed(fn) -> dict[str, Any]:
    """Rows, wall and CPU seconds of ``fn()``; ``others_busy_fraction``: the share of the cores other
    processes kept busy meanwhile (the machine's busy CPU from /proc/stat minus this process's)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy0, t0, c0 = busy_cpu_s(), time.perf_counter(), time.process_time()
    rows = fn()
    wall, cpu, busy1 = time.perf_counter() - t0, time.process_time() - c0, busy_cpu_s()
    out = {
        "rows": rows,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 3),
        "rows_per_s": round(rows / wall, 1),
        "loadavg_1m": load,
    }
    if busy0 is not None and busy1 is not None:
        out["others_busy_fraction"] = round(max(0.0, busy1 - busy0 - cpu) / (wall * usable_cores()), 3)
    return out


def _threads(threads: int) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def child_throughput(
    work: Path, model: str, rounds: int, threads: int, profile: bool, patch: str | None
) -> dict[str, Any]:
    threads = _threads(threads)
    install_patch(
        patch
    )  # a proposed change to the stage, measured by monkeypatching (the plain arm is its own)
    arms, job = _arms(work, model, SCORE_DS)
    warmup = {arm: _timed(fn) for arm, fn in arms.items()}
    samples = []
    for r in range(rounds):
        for arm in ("freestack", "plain") if r % 2 == 0 else ("plain", "freestack"):
            with profiled(profile and arm == "freestack", f"score() of {model}, round {r}"):
                samples.append({"round": r, "arm": arm, **_timed(arms[arm])})
    return {
        "model": model,
        "ds": SCORE_DS,
        "version": job["version"],
        "torch_threads": threads,
        "patch": patch,
        "warmup": warmup,
        "samples": samples,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def vm_hwm_mib() -> float | None:
    """The peak RSS of this process's memory since its exec (``VmHWM``; Linux): a cross-check of ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def child_rss(work: Path, model: str, ds: str, arm: str, threads: int) -> dict[str, Any]:
    import freestack.ml.models  # noqa: F401
    import freestack.score.core  # noqa: F401  (both arms import the same libraries)

    _threads(threads)
    arms, _ = _arms(work, model, ds)
    got = _timed(arms[arm])
    return {
        "model": model,
        "ds": ds,
        "arm": arm,
        **got,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "vm_hwm_mib": vm_hwm_mib(),
    }


def child_worker(work: Path, model: str, folder: Path, index: int, threads: int) -> dict[str, Any]:
    """One backfill worker: imports like a task process, says it is ready, waits for the start, then
    scores the next unclaimed day until none is left (``score`` loads the version, as each task does)."""
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from freestack.score.core import score
    from freestack.spec import load_spec

    threads = _threads(threads)
    spec = load_spec(work / f"{PIPELINES[model]}.yaml")
    jobs = json.loads((folder / "jobs.json").read_text())
    (folder / f"ready-{index}").touch()
    while not (folder / "go").exists():
        time.sleep(0.002)
    start, days = time.time(), []
    for job in jobs:
        try:
            os.close(os.open(folder / "claims" / job["ds"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        t0 = time.perf_counter()
        rows = scored(score(spec, job))
        days.append({"ds": job["ds"], "rows": rows, "s": round(time.perf_counter() - t0, 3)})
    return {
        "index": index,
        "start": start,
        "end": time.time(),
        "days": days,
        "threads": threads,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def child_setup(work: Path) -> dict[str, Any]:
    """The specs' lakes and production versions, and the backfill's plan (the jobs its runs map over)."""
    import pyarrow
    import torch

    from freestack.score.core import plan
    from freestack.spec import load_spec

    args = json.loads((work / "setup.json").read_text())
    parts = set(args["parts"])
    for model in MODELS:
        (work / f"{PIPELINES[model]}.yaml").write_text(
            SPECS[model].format(epochs=args["epochs"], batch_rows=args["batch_rows"])
        )
    t0 = time.perf_counter()
    lake: dict[str, list[dict[str, Any]]] = {m: [] for m in MODELS}
    versions = {}
    for model in MODELS:
        lake[model].append(land_and_ingest(work, model, TRAIN_DS, TRAIN_ROWS[model]))
        versions[model] = train_version(work, model)
    if "throughput" in parts:
        lake["digits"].append(land_and_ingest(work, "digits", SCORE_DS, args["rows"]))
        lake["text"].append(land_and_ingest(work, "text", SCORE_DS, args["text_rows"]))
    if "rss" in parts:
        lake["digits"].append(land_and_ingest(work, "digits", RSS_1X_DS, args["rss_rows"]))
        lake["digits"].append(land_and_ingest(work, "digits", RSS_BIG_DS, args["rss_rows"] * args["scale"]))
    jobs = []
    if "backfill" in parts:
        for k in range(args["backfill_days"]):
            lake["digits"].append(
                land_and_ingest(
                    work, "digits", (BACKFILL_START + timedelta(days=k)).isoformat(), args["backfill_rows"]
                )
            )
        start = datetime.combine(BACKFILL_START, datetime.min.time(), UTC)
        jobs = plan(
            load_spec(work / "scoredigits.yaml"), start, start + timedelta(days=args["backfill_days"])
        )["jobs"]
    return {
        "lake": lake,
        "versions": versions,
        "jobs": jobs,
        "setup_s": round(time.perf_counter() - t0, 1),
        "libraries": {"torch": torch.__version__, "pyarrow": pyarrow.__version__},
    }


# ---------------------------------------------------------------------------------------------------------
# the driver


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FREESTACK_STORAGE_ROOT": (work / "storage").as_uri(),
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
    }


def _child(work: Path, spec: str, timeout: float | None, *, flags: list[str] | None = None) -> dict[str, Any]:
    argv = ["--child", spec, "--workdir", str(work), *(flags or [])]
    got = run_child("bench.score.run", argv, env=_env(work), timeout=timeout, echo_stderr=bool(flags))
    if "error" in got:
        raise RuntimeError(f"child {spec} failed ({got['error']}):\n{got.get('stderr_tail', '')}")
    return got


def backfill_round(
    work: Path, jobs: list[dict[str, Any]], workers: int, label: str, threads: int, timeout: float | None
) -> dict[str, Any]:
    """``workers`` processes share the days; wall time from the start signal to the last one done."""
    folder = work / "backfill" / label
    shutil.rmtree(folder, ignore_errors=True)  # a kept --workdir's earlier round
    (folder / "claims").mkdir(parents=True)
    (folder / "jobs.json").write_text(json.dumps(jobs))
    launched = time.time()
    procs = []
    for i in range(workers):
        err = open(folder / f"stderr-{i}", "w")  # noqa: SIM115  (closed below)
        argv = [
            sys.executable,
            "-m",
            "bench.score.run",
            "--child",
            f"worker:digits:{folder}:{i}:{threads}",
            "--workdir",
            str(work),
        ]
        procs.append(
            (
                subprocess.Popen(
                    argv, cwd=REPO, env=_env(work), stdout=subprocess.PIPE, stderr=err, text=True
                ),
                err,
            )
        )
    deadline = launched + (timeout or 3600)
    while not all((folder / f"ready-{i}").exists() for i in range(workers)):
        if any(p.poll() is not None for p, _ in procs) or time.time() > deadline:
            for p, _ in procs:
                p.kill()
            raise RuntimeError(
                f"a backfill worker did not start: {(folder / 'stderr-0').read_text()[-2000:]}"
            )
        time.sleep(0.01)
    go = time.time()
    (folder / "go").touch()
    results = []
    for i, (p, err) in enumerate(procs):
        out, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
        err.close()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            raise RuntimeError(
                f"backfill worker {i} failed (exit {p.returncode}):\n"
                f"{(folder / f'stderr-{i}').read_text()[-2000:]}"
            )
        results.append(json.loads(lines[-1]))
    end = max(r["end"] for r in results)
    scored = sorted(d["ds"] for r in results for d in r["days"])
    if scored != sorted(j["ds"] for j in jobs):
        raise RuntimeError(f"the workers scored {scored}, not the {len(jobs)} planned days")
    return {
        "workers": workers,
        "wall_s": round(end - go, 3),
        "wall_with_startup_s": round(end - launched, 3),
        "loadavg_1m_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "per_worker": [
            {
                "days": len(r["days"]),
                "rows": sum(d["rows"] for d in r["days"]),
                "busy_s": round(sum(d["s"] for d in r["days"]), 3),
                "threads": r["threads"],
                "finished_after_s": round(r["end"] - go, 3),
                "peak_rss_mib": r["peak_rss_mib"],
            }
            for r in results
        ],
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise_throughput(runs: dict[str, dict[str, Any]], target: float) -> dict[str, Any]:
    out = {}
    for model, run in runs.items():
        by_arm = {arm: [s for s in run["samples"] if s["arm"] == arm] for arm in ("freestack", "plain")}
        med = {arm: _median([s["rows_per_s"] for s in got]) for arm, got in by_arm.items()}
        rounds = sorted({s["round"] for s in run["samples"]})
        per_round = [
            round(
                next(s["rows_per_s"] for s in by_arm["freestack"] if s["round"] == r)
                / next(s["rows_per_s"] for s in by_arm["plain"] if s["round"] == r),
                3,
            )
            for r in rounds
        ]
        ratio = med["freestack"] / med["plain"]
        out[model] = {
            "rows": run["samples"][0]["rows"],
            "freestack_rows_per_s": round(med["freestack"]),
            "plain_rows_per_s": round(med["plain"]),
            "ratio": round(ratio, 3),
            "round_ratios": per_round,
            "freestack_cpu_s": _median([s["cpu_s"] for s in by_arm["freestack"]]),
            "plain_cpu_s": _median([s["cpu_s"] for s in by_arm["plain"]]),
            "met": ratio >= target,
            "others_busy_fraction": _median([s.get("others_busy_fraction") or 0.0 for s in run["samples"]]),
        }
    return out


def _threads_label(threads: int) -> str:
    return str(threads) if threads else "default"


def summarise_backfill(rounds: list[dict[str, Any]], args) -> dict[str, Any]:
    """Medians of the 1- and 2-worker wall times of one threads setting; speed-up = 1 worker / 2."""
    walls = {n: [b["wall_s"] for b in rounds if b["workers"] == n] for n in (1, 2)}
    up = {n: [b["wall_with_startup_s"] for b in rounds if b["workers"] == n] for n in (1, 2)}
    one, two = _median(walls[1]), _median(walls[2])
    return {
        "days": args.backfill_days,
        "rows_per_day": args.backfill_rows,
        "threads_per_worker": rounds[0]["per_worker"][0]["threads"],
        "one_worker_s": round(one, 3),
        "two_workers_s": round(two, 3),
        "speedup": round(one / two, 3),
        "round_speedups": [round(a / b, 3) for a, b in zip(walls[1], walls[2], strict=True)],
        "one_worker_with_startup_s": round(_median(up[1]), 3),
        "two_workers_with_startup_s": round(_median(up[2]), 3),
        "speedup_with_startup": round(_median(up[1]) / _median(up[2]), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.score.run", __doc__, out="score.json", workdir=True)
    ap.add_argument(
        "--rows", type=int, default=300_000, help="rows of the digits day whose throughput is measured"
    )
    ap.add_argument(
        "--text-rows", type=int, default=100_000, help="rows of the text day whose throughput is measured"
    )
    ap.add_argument(
        "--rounds", type=int, default=5, help="throughput rounds (each: both arms, the order alternating)"
    )
    ap.add_argument("--batch-rows", type=int, default=4096, help="score.batch_rows (the spec's default)")
    ap.add_argument(
        "--rss-rows", type=int, default=100_000, help="rows of the 1x partition of the memory measure"
    )
    ap.add_argument("--scale", type=int, default=10, help="the large partition is this many times the 1x one")
    ap.add_argument("--backfill-days", type=int, default=30)
    ap.add_argument("--backfill-rows", type=int, default=20_000, help="rows per backfill day")
    ap.add_argument(
        "--backfill-rounds", type=int, default=3, help="rounds of 1 worker and 2, the order alternating"
    )
    ap.add_argument(
        "--backfill-threads",
        default="0,1",
        help="torch threads per backfill worker, one setting after the other (0: torch's default, as a "
        "task process has; the first setting is the headline)",
    )
    ap.add_argument("--epochs", type=int, default=5, help="epochs of the two trainings")
    ap.add_argument(
        "--quick", action="store_true", help="smoke size: a few thousand rows, 1 round, 4 backfill days"
    )
    ap.add_argument("--parts", default="throughput,rss,backfill", help="a subset of throughput,rss,backfill")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the throughput and memory runs (0: torch's default, as a task process has)",
    )
    add_child_options(ap)  # --profile / --patch: the freestack arm of the throughput runs
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child.split(":")
        work = Path(args.workdir)
        if kind == "setup":
            got = child_setup(work)
        elif kind == "throughput":
            got = child_throughput(work, rest[0], int(rest[1]), int(rest[2]), args.profile, args.patch)
        elif kind == "rss":
            got = child_rss(work, rest[0], rest[1], rest[2], int(rest[3]))
        else:
            got = child_worker(work, rest[0], Path(rest[1]), int(rest[2]), int(rest[3]))
        print(json.dumps(got))
        return 0
    if args.quick:
        args.rows, args.text_rows, args.rounds, args.rss_rows = 6_000, 3_000, 1, 2_000
        args.backfill_days, args.backfill_rows, args.backfill_rounds, args.epochs = 4, 1_000, 1, 2
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    backfill_threads = [int(t) for t in args.backfill_threads.split(",") if t.strip()][
        : 1 if args.quick else None
    ]
    stage = REPO / "plugins" / "freestack" / "score" / "core.py"
    score_source = {
        "path": str(stage.relative_to(REPO)),
        "sha256": hashlib.sha256(stage.read_bytes()).hexdigest(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        wanted = {k: getattr(args, k) for k in SETUP_KEYS} | {"parts": sorted(parts)}
        done = work / "setup-result.json"
        kept = json.loads(done.read_text()).get("args", {}) if done.exists() else {}
        if kept and all(kept[k] == wanted[k] for k in SETUP_KEYS) and parts <= set(kept["parts"]):
            setup = json.loads(done.read_text())  # a kept --workdir with these lakes: reused
        else:
            (work / "setup.json").write_text(json.dumps(wanted))
            # the lakes and the trainings run in a child: this process stays small, so that the children's
            # ru_maxrss is their own (a child started with vfork inherits its parent's peak at exec)
            setup = {**_child(work, "setup", args.timeout), "args": wanted}
            if args.workdir:
                done.write_text(json.dumps(setup))
        lake, versions, setup_s, jobs = setup["lake"], setup["versions"], setup["setup_s"], setup["jobs"]
        for model, v in versions.items():
            print(f"{model}: version {v['version']}, test accuracy {v['test_accuracy']}", flush=True)
        print(f"lakes and versions ready in {setup_s:.0f} s", flush=True)

        throughput, rss, backfill = {}, {}, []
        if "throughput" in parts:
            for model in MODELS:
                throughput[model] = _child(
                    work,
                    f"throughput:{model}:{args.rounds}:{args.threads}",
                    args.timeout,
                    flags=experiment_flags(args.profile, args.patch),
                )
                for s in throughput[model]["samples"]:
                    print(
                        f"{model:6} round {s['round']} {s['arm']:9}: {s['rows_per_s']:12,.0f} rows/s "
                        f"({s['wall_s']:.2f} s)",
                        flush=True,
                    )
        if "rss" in parts:
            for arm in ("freestack",) if args.quick else ("freestack", "plain"):  # the plain loop's: context
                for label, ds in (("1x", RSS_1X_DS), (f"{args.scale}x", RSS_BIG_DS)):
                    rss[f"{arm}_{label}"] = _child(
                        work, f"rss:digits:{ds}:{arm}:{args.threads}", args.timeout
                    )
                    print(
                        f"rss {arm:9} {label:>4}: {rss[f'{arm}_{label}']['peak_rss_mib']:8.0f} MiB peak, "
                        f"{rss[f'{arm}_{label}']['rows_per_s']:12,.0f} rows/s",
                        flush=True,
                    )
        if "backfill" in parts:
            for threads in backfill_threads:
                for r in range(args.backfill_rounds):
                    for workers in (1, 2) if r % 2 == 0 else (2, 1):
                        got = backfill_round(
                            work, jobs, workers, f"t{threads}-r{r}-w{workers}", threads, args.timeout
                        )
                        backfill.append({"round": r, "threads_setting": threads, **got})
                        print(
                            f"backfill ({_threads_label(threads)} threads) round {r}, {workers} worker(s): "
                            f"{got['wall_s']:.2f} s (days per worker {[w['days'] for w in got['per_worker']]})",
                            flush=True,
                        )

    targets = {"throughput_ratio_min": 0.9, "peak_rss_ratio_max": 1.3}
    summary: dict[str, Any] = {"checks": {}}
    if throughput:
        summary["throughput"] = summarise_throughput(throughput, targets["throughput_ratio_min"])
        for model, s in summary["throughput"].items():
            summary["checks"][f"{model}_throughput_ratio_ok"] = s["met"]
    if rss:
        big_label = f"{args.scale}x"
        ratio = rss[f"freestack_{big_label}"]["peak_rss_mib"] / rss["freestack_1x"]["peak_rss_mib"]
        summary["peak_rss"] = {
            "freestack_mib": {
                k.split("_", 1)[1]: v["peak_rss_mib"] for k, v in rss.items() if k.startswith("freestack")
            },
            "plain_mib": {
                k.split("_", 1)[1]: v["peak_rss_mib"] for k, v in rss.items() if k.startswith("plain")
            },
            "ratio": round(ratio, 3),
        }
        if "plain_1x" in rss:
            summary["peak_rss"]["plain_ratio"] = round(
                rss[f"plain_{big_label}"]["peak_rss_mib"] / rss["plain_1x"]["peak_rss_mib"], 3
            )
        summary["checks"]["peak_rss_ratio_ok"] = ratio <= targets["peak_rss_ratio_max"]
    if backfill:
        by_threads = {
            _threads_label(t): summarise_backfill([b for b in backfill if b["threads_setting"] == t], args)
            for t in backfill_threads
        }
        summary["backfill"] = {
            **by_threads[_threads_label(backfill_threads[0])],
            "threads": _threads_label(backfill_threads[0]),
        }
        summary["backfill_by_threads"] = by_threads
    report = {
        "name": "score",
        "machine": {**host(), **setup["libraries"]},
        "params": {
            "rows": args.rows,
            "text_rows": args.text_rows,
            "rounds": args.rounds,
            "batch_rows": args.batch_rows,
            "rss_rows": args.rss_rows,
            "scale": args.scale,
            "backfill_days": args.backfill_days,
            "backfill_rows": args.backfill_rows,
            "backfill_rounds": args.backfill_rounds,
            "backfill_threads": [_threads_label(t) for t in backfill_threads],
            "epochs": args.epochs,
            "threads": args.threads or "torch default",
            "patch": args.patch,
            "score_source": score_source,
            "quick": args.quick,
            "data_seed": SEED,
            "setup_seconds": round(setup_s, 1),
            "lake": lake,
            "versions": versions,
        },
        "baseline": "a plain in-process loop: pyarrow ParquetFile.iter_batches over the same lake part (key and "
        "feature columns, the same batch size), the version's model forward under torch.no_grad "
        "(its tokenizer through tokenizers for text), softmax, ParquetWriter(zstd) of the same columns",
        "samples": {"throughput": throughput, "rss": rss, "backfill": backfill},
        "summary": summary,
        "targets": targets,
    }
    path = write_report(report, args.out)
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
