"""Ingest benchmark: freestack's ``ingest_partition`` against raw pyarrow CSV -> Parquet.

    python -m bench.ingest.run [--size-mb 256] [--repeats N] [--out bench/results/ingest.json]

1. Generates a digits-schema CSV of about ``--size-mb`` MiB (id, captured_at, px_0..px_63, label),
   deterministic (numpy seed), written in chunks with ``pyarrow.csv.CSVWriter`` so generation memory
   stays bounded, with ~0.1% bad rows (px out of range, px not a number, label not allowed,
   timestamp not a timestamp, duplicate id) so the validator has work to do.
2. Runs each measurement in a fresh subprocess (peak RSS = the child's ``ru_maxrss``), alternating
   baseline and candidate:
     - ``eager``:     ``pyarrow.csv.read_csv`` + ``pyarrow.parquet.write_table(zstd)``
     - ``streaming``: ``pyarrow.csv.open_csv`` + ``ParquetWriter(zstd)`` batch by batch
     - ``freestack``: ``freestack.ingest.core.ingest_partition(spec, ds)`` on the same file
3. Writes a JSON report (machine, params, raw samples, summary, targets) and prints a table.

The non-number tokens injected into numeric columns (``#N/A``, ``n/a``, ``1.#QNAN``, ``#NA``) are
null markers for pyarrow's default CSV options, so both raw baselines can load the file with type
inference (the streaming reader cannot change a column's type after the first block), while for
freestack (null_values ``"", NA, N/A, null, NULL``) they are values that are not numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    add_child_options,
    add_modes,
    chosen_modes,
    experiment_flags,
    host,
    install_patch,
    median,
    parser,
    peak_rss_mib,
    profiled,
    run_child,
    write_report,
)

DS = "2026-11-01"
PIPELINE = "bench"
SEED = 20261101
N_PX = 64
BAD_FRACTION = 0.001
CHUNK_ROWS = 50_000
MODES = ("eager", "streaming", "freestack")
BASELINES = ("eager", "streaming")
NON_NUMBERS = ["#N/A", "n/a", "1.#QNAN", "#NA"]
GEN_VERSION = 1  # bump when the generated data changes, so cached files are rebuilt

# ---------------------------------------------------------------------------------------------------------
# the spec: include/pipelines/digits.yaml, renamed


def spec_data(max_quarantine_fraction: float = 0.5) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load((REPO / "include" / "pipelines" / "digits.yaml").read_text())
    data["name"] = PIPELINE
    data["description"] = "ingest benchmark (a copy of the digits schema)"
    data["source"]["landing"] = "landing/{pipeline}/{ds}/"
    data["source"]["policy"]["max_quarantine_fraction"] = max_quarantine_fraction
    return data


def build_spec(data: dict[str, Any]):
    from freestack.spec import parse_spec

    return parse_spec(data, f"{PIPELINE}.yaml")


# ---------------------------------------------------------------------------------------------------------
# data generation


def _chunk(rng, start: int, n: int):
    """One chunk of rows as a pyarrow table of strings, with the bad values injected."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    idx = np.arange(start, start + n, dtype=np.int64)
    px = np.round(rng.uniform(0.0, 16.0, size=(n, N_PX)), 2)
    # digits images are mostly background: about 40% of the pixels are 0
    px[rng.random((n, N_PX)) < 0.4] = 0.0
    label = rng.integers(0, 10, size=n)
    ids = np.char.add("r", np.char.zfill(idx.astype(str), 10)).astype(object)

    bad = np.flatnonzero(rng.random(n) < BAD_FRACTION)
    kinds = rng.integers(0, 5, size=len(bad))
    cols_for_bad = rng.integers(0, N_PX, size=len(bad))
    token_for_bad = rng.integers(0, len(NON_NUMBERS), size=len(bad))
    nonnum: dict[int, list[tuple[int, str]]] = {}
    bad_ts = []
    counts = {
        "px_out_of_range": 0,
        "px_not_a_number": 0,
        "label_not_allowed": 0,
        "timestamp_invalid": 0,
        "duplicate_id": 0,
    }
    for row, kind, col, tok in zip(bad, kinds, cols_for_bad, token_for_bad, strict=True):
        if kind == 0:
            px[row, col] = float(rng.choice([16.5, 17.0, 25.25, 99.0, -0.5, -3.0]))
            counts["px_out_of_range"] += 1
        elif kind == 1:
            nonnum.setdefault(int(col), []).append((int(row), NON_NUMBERS[tok]))
            counts["px_not_a_number"] += 1
        elif kind == 2:
            label[row] = int(rng.choice([10, 11, 42, -1]))
            counts["label_not_allowed"] += 1
        elif kind == 3:
            bad_ts.append(int(row))
            counts["timestamp_invalid"] += 1
        else:
            if row > 0:
                ids[row] = ids[row - 1]
                counts["duplicate_id"] += 1
            else:  # nothing earlier in the chunk: make it out of range instead
                px[row, col] = 20.0
                counts["px_out_of_range"] += 1

    ts = pa.array(np.datetime64("2026-11-01T00:00:00", "s") + idx.astype("timedelta64[s]"))
    ts_text = pc.strftime(ts, format="%Y-%m-%dT%H:%M:%S")
    if bad_ts:
        m = np.zeros(n, dtype=bool)
        m[bad_ts] = True
        ts_text = pc.if_else(pa.array(m), pa.scalar("n/a"), ts_text)

    cols = {"id": pa.array(ids, pa.string()), "captured_at": ts_text}
    for j in range(N_PX):
        text = pc.cast(pa.array(px[:, j]), pa.string())
        if j in nonnum:
            m = np.zeros(n, dtype=bool)
            values = np.empty(n, dtype=object)
            for row, tok in nonnum[j]:
                m[row] = True
                values[row] = tok
            text = pc.if_else(pa.array(m), pa.array(values, pa.string()), text)
        cols[f"px_{j}"] = text
    cols["label"] = pc.cast(pa.array(label), pa.string())
    return pa.table(cols), counts


def generate_csv(path: Path, size_mb: float, *, seed: int = SEED) -> dict[str, Any]:
    """Write about ``size_mb`` MiB of CSV to ``path``; reuse it if it was built with the same params."""
    import numpy as np
    import pyarrow.csv as pacsv

    meta_path = path.with_name(".gen-" + path.name + ".json")
    want = {"size_mb": size_mb, "seed": seed, "bad_fraction": BAD_FRACTION, "version": GEN_VERSION}
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == want and meta.get("bytes") == path.stat().st_size:
            meta["reused"] = True
            return meta
    path.parent.mkdir(parents=True, exist_ok=True)
    target = int(size_mb * (1 << 20))
    rng = np.random.default_rng(seed)
    rows = 0
    bad = {}
    started = time.perf_counter()
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as f:
        writer = None
        while True:
            written = f.tell()
            if written >= target:
                break
            n = CHUNK_ROWS
            per_row = written / rows if rows else 300  # about 290 bytes a row
            if (target - written) / per_row < CHUNK_ROWS:  # the last chunk: about as many rows as still fit
                n = max(1, min(CHUNK_ROWS, int((target - written) / per_row) + 1))
            table, counts = _chunk(rng, rows, n)
            if writer is None:
                opts = pacsv.WriteOptions(include_header=True, quoting_style="none")
                writer = pacsv.CSVWriter(f, table.schema, write_options=opts)
            writer.write_table(table)
            f.flush()
            rows += n
            for k, v in counts.items():
                bad[k] = bad.get(k, 0) + v
        if writer is not None:
            writer.close()
    os.replace(tmp, path)
    meta = {
        "params": want,
        "rows": rows,
        "bytes": path.stat().st_size,
        "bad_rows": bad,
        "bad_rows_total": sum(bad.values()),
        "generate_s": round(time.perf_counter() - started, 3),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    meta["reused"] = False
    return meta


# ---------------------------------------------------------------------------------------------------------
# one measurement (runs in a fresh child process)


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def child(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    csv_path = args.csv
    out_dir = Path(args.scratch)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if args.child == "freestack":
        # freestack and Airflow's ObjectStoragePath are imported before the clock starts (a task process
        # has them loaded); first-use costs inside ingest_partition (Airflow's filesystem discovery, the
        # pandas import in keyset.hash_keys: about 0.3 s) are timed.
        from airflow.sdk import ObjectStoragePath  # noqa: F401

        import freestack.ingest.core as core
        from freestack.storage import storage_root

        storage_root()
        spec = build_spec(json.loads(Path(args.spec).read_text()))
        install_patch(args.patch)
    rss_before = _rss_now_mib()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.child == "eager":
        table = pacsv.read_csv(csv_path)
        rows = table.num_rows
        pq.write_table(table, str(out_dir / "eager.parquet"), compression="zstd")
        del table
    elif args.child == "streaming":
        read_opts = pacsv.ReadOptions(block_size=args.block_size_mb << 20)
        reader = pacsv.open_csv(csv_path, read_options=read_opts)
        rows = 0
        with pq.ParquetWriter(str(out_dir / "streaming.parquet"), reader.schema, compression="zstd") as w:
            for batch in reader:
                w.write_batch(batch)
                rows += batch.num_rows
    elif args.child == "freestack":
        with profiled(args.profile, "freestack", dump=out_dir / "freestack.prof"):
            res = core.ingest_partition(spec, DS)
        rows = res.rows_in
        extra = {
            "rows_good": res.rows_good,
            "rows_quarantined": res.rows_quarantined,
            "part_bytes": res.part["size"] if res.part else None,
        }
    else:
        raise SystemExit(f"unknown mode {args.child!r}")
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "mode": args.child,
        "wall_s": wall,
        "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "rows": rows,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "pyarrow_pool_max_mib": pa.default_memory_pool().max_memory() / (1 << 20),
        **extra,
    }
    return out


# ---------------------------------------------------------------------------------------------------------
# the driver


def machine() -> dict[str, Any]:
    import pyarrow as pa

    return {**host(), "pyarrow_version": pa.__version__}


def _run_child(mode: str, ctx: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    argv = [
        "--child",
        mode,
        "--csv",
        ctx["csv"],
        "--scratch",
        ctx["scratch"],
        "--spec",
        ctx["spec"],
        "--block-size-mb",
        str(ctx["block_size_mb"]),
    ]
    if mode == "freestack":
        argv += experiment_flags(ctx["profile"], ctx["patch"])
    env = {**os.environ, "FREESTACK_STORAGE_ROOT": ctx["root"]}
    env.setdefault("AIRFLOW_HOME", str(Path(ctx["workdir"]) / "airflow"))
    try:
        sample = run_child(
            "bench.ingest.run",
            argv,
            env=env,
            timeout=timeout,
            echo_stderr=bool(ctx["profile"] or ctx["patch"]),
        )
    finally:
        # remove outputs so every run starts from the same disk state
        for name in ("eager.parquet", "streaming.parquet"):
            p = Path(ctx["scratch"]) / name
            if p.exists():
                p.unlink()
        lake = Path(ctx["workdir"]) / "storage" / "lake"
        if lake.exists():
            shutil.rmtree(lake)
    return {"mode": mode, **sample}


def _finish_sample(s: dict[str, Any], rows_total: int, size_bytes: int) -> dict[str, Any]:
    if "error" in s:
        return s
    wall = s["wall_s"]
    s["rows_per_s"] = rows_total / wall
    s["mib_per_s"] = size_bytes / (1 << 20) / wall
    for k in ("wall_s", "cpu_s", "process_s", "rss_before_mib", "peak_rss_mib", "pyarrow_pool_max_mib"):
        if k in s:
            s[k] = round(s[k], 3)
    s["rows_per_s"] = round(s["rows_per_s"], 1)
    s["mib_per_s"] = round(s["mib_per_s"], 2)
    return s


def _max(samples: list[dict[str, Any]], key: str) -> float | None:
    vals = [s[key] for s in samples if "error" not in s]
    return max(vals) if vals else None


def summarise(samples: dict[str, list[dict[str, Any]]], size_mb: float) -> dict[str, Any]:
    eager_ok = bool(samples["eager"]) and all("error" not in s for s in samples["eager"])
    against = "eager" if eager_ok else "streaming"
    base = samples[against]
    base_rps = median(base, "rows_per_s")
    fs_rps = median(samples["freestack"], "rows_per_s")
    ratio = fs_rps / base_rps if (base_rps and fs_rps) else None
    fs_rss = _max(samples["freestack"], "peak_rss_mib")
    summary = {
        "ratio_against": against,
        "ratio_against_reason": (
            "the eager baseline completed"
            if eager_ok
            else "the eager baseline failed (out of memory?)"
            if samples["eager"]
            else "the eager baseline was not run"
        ),
        "baseline_rows_per_s": round(base_rps, 1) if base_rps else None,
        "freestack_rows_per_s": round(fs_rps, 1) if fs_rps else None,
        "throughput_ratio": round(ratio, 4) if ratio else None,
        "freestack_peak_rss_mib": fs_rss,
        "baseline_peak_rss_mib": _max(base, "peak_rss_mib"),
        "statistic": "rows/s: median over samples; peak RSS: max over samples",
    }
    for mode in MODES:
        summary[mode] = {
            "rows_per_s": median(samples[mode], "rows_per_s"),
            "mib_per_s": median(samples[mode], "mib_per_s"),
            "wall_s": median(samples[mode], "wall_s"),
            "cpu_s": median(samples[mode], "cpu_s"),
            "peak_rss_mib": _max(samples[mode], "peak_rss_mib"),
            "errors": sum(1 for s in samples[mode] if "error" in s),
        }
    stream_rps = summary["streaming"]["rows_per_s"]
    summary["throughput_ratio_vs_streaming"] = (
        round(fs_rps / stream_rps, 4) if (fs_rps and stream_rps) else None
    )
    summary["checks"] = {
        "throughput_ratio_ok": None if ratio is None else ratio >= 0.7,
        # the RSS target is stated for a 2 GiB input; smaller runs report it but do not judge it
        "peak_rss_ok_for_2gib": (None if size_mb < 2048 or fs_rss is None else fs_rss <= 1024),
    }
    return summary


def print_table(report: dict[str, Any]) -> None:
    p = report["params"]
    print(
        f"\ningest benchmark: {p['csv_mib']:.1f} MiB CSV, {p['rows']:,} rows "
        f"({p['bad_rows_total']} bad), {p['repeats']} repeat(s)"
    )
    print(f"{'mode':<10} {'wall s':>8} {'cpu s':>8} {'rows/s':>12} {'MiB/s':>8} {'peak RSS MiB':>13}")
    for mode in MODES:
        for s in report["samples"][mode]:
            if "error" in s:
                print(f"{mode:<10} {'error: ' + s['error']}")
                continue
            print(
                f"{mode:<10} {s['wall_s']:>8.2f} {s['cpu_s']:>8.2f} {s['rows_per_s']:>12,.0f} "
                f"{s['mib_per_s']:>8.1f} {s['peak_rss_mib']:>13.0f}"
            )
    sm = report["summary"]
    ratio = sm["throughput_ratio"]
    print(
        f"throughput ratio freestack/{sm['ratio_against']}: "
        f"{ratio if ratio is None else f'{ratio:.3f}'} (target >= {report['targets']['throughput_ratio_min']}); "
        f"vs streaming: {sm['throughput_ratio_vs_streaming']}; "
        f"freestack peak RSS {sm['freestack_peak_rss_mib']} MiB "
        f"(target <= {report['targets']['peak_rss_mib_max_for_2gib']} MiB at 2 GiB)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.ingest.run", __doc__, out="ingest.json")
    ap.add_argument("--size-mb", type=float, default=256, help="CSV size in MiB (default 256)")
    ap.add_argument("--repeats", type=int, default=None, help="samples per mode (default 3; 1 above 1 GiB)")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a new one under $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (the CSV is reused)")
    add_modes(ap, MODES)
    add_child_options(ap)
    # child-only arguments
    ap.add_argument("--csv", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--block-size-mb", type=int, default=16, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0

    modes = chosen_modes(ap, args.modes, MODES)
    repeats = args.repeats if args.repeats is not None else (1 if args.size_mb > 1024 else 3)
    if repeats < 1:
        ap.error("--repeats must be at least 1")

    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="freestack-bench-ingest-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        root = workdir / "storage"
        csv_path = root / "landing" / PIPELINE / DS / "data.csv"
        print(f"generating {args.size_mb:g} MiB of CSV under {workdir} ...", flush=True)
        gen = generate_csv(csv_path, args.size_mb)
        print(
            f"  {gen['rows']:,} rows, {gen['bytes'] / (1 << 20):.1f} MiB, {gen['bad_rows_total']} bad rows"
            + (" (reused)" if gen.get("reused") else f" in {gen['generate_s']:.1f}s"),
            flush=True,
        )
        data = spec_data()
        spec = build_spec(data)  # fail here, not in a child, if the spec is wrong
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(data, default=str))
        ctx = {
            "csv": str(csv_path),
            "scratch": str(workdir / "baseline"),
            "spec": str(spec_path),
            "root": root.as_uri(),
            "workdir": str(workdir),
            "block_size_mb": spec.source.policy.block_size_mb,
            "profile": args.profile,
            "patch": str(Path(args.patch).resolve()) if args.patch else None,
        }
        samples: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        order = [m for m in ("eager", "freestack", "streaming") if m in modes]
        for r in range(repeats):
            for mode in order:
                print(f"  repeat {r + 1}/{repeats}: {mode} ...", end="", flush=True)
                s = _finish_sample(_run_child(mode, ctx, args.timeout), gen["rows"], gen["bytes"])
                s["repeat"] = r
                samples[mode].append(s)
                if "error" in s:
                    print(f" error: {s['error']}", flush=True)
                    if s.get("stderr_tail"):
                        print(s["stderr_tail"], file=sys.stderr)
                else:
                    print(f" {s['wall_s']:.2f}s, peak RSS {s['peak_rss_mib']:.0f} MiB", flush=True)
                if mode == "freestack" and "error" not in s and s["rows"] != gen["rows"]:
                    s["warning"] = f"freestack counted {s['rows']} rows, the file has {gen['rows']}"

        report = {
            "name": "ingest",
            "machine": machine(),
            "params": {
                "size_mb_requested": args.size_mb,
                "csv_bytes": gen["bytes"],
                "csv_mib": round(gen["bytes"] / (1 << 20), 2),
                "rows": gen["rows"],
                "columns": 2 + N_PX + 1,
                "bad_rows": gen["bad_rows"],
                "bad_rows_total": gen["bad_rows_total"],
                "seed": SEED,
                "repeats": repeats,
                "order": order,
                "ds": DS,
                "spec": "include/pipelines/digits.yaml renamed 'bench', max_quarantine_fraction 0.5",
                "block_size_mb": ctx["block_size_mb"],
                "baselines": {
                    "eager": "pyarrow.csv.read_csv(path) (defaults, type inference) + "
                    "pyarrow.parquet.write_table(table, zstd)",
                    "streaming": f"pyarrow.csv.open_csv(path, block_size={ctx['block_size_mb']} MiB) + "
                    "ParquetWriter(zstd).write_batch per batch",
                },
                "candidate": "freestack.ingest.core.ingest_partition(spec, ds) (imports done before timing)",
                "patch": ctx["patch"],
                "units": "MiB = 2**20 bytes; wall_s timed inside the child around the operation only; "
                "peak_rss_mib = child's ru_maxrss (interpreter and imports included)",
            },
            "samples": samples,
            "summary": summarise(samples, args.size_mb),
            "targets": {"throughput_ratio_min": 0.7, "peak_rss_mib_max_for_2gib": 1024},
        }
        out = write_report(report, args.out)
        print_table(report)
        print(f"wrote {out}")
        return 0
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not args.keep:
            for sub in ("baseline", "storage/lake"):
                shutil.rmtree(workdir / sub, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
