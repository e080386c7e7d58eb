"""One report from every benchmark's results: ``bench/results/README.md``, PNG charts beside it, and the
performance table of the docs' benchmarks page (``docs/benchmarks.md``, between its ``bench-table`` markers).

    python -m bench.report [--results bench/results] [--readme docs/benchmarks.md]

Reads every ``bench/results/*.json`` (each written by one ``bench/<name>/run.py``: the machine, the
raw samples, and the ratio against its baseline), takes each one's headline figures (what freestack
did, what the baseline did on the same machine in the same run, their ratio and the target), and
writes them as one table, a section per benchmark, and charts. Nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
RATIO_AXIS = 5.0  # the ratio chart's axis ends here


@dataclass
class Row:
    bench: str
    measure: str
    freestack: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    #: what the ratio means: "higher" (freestack / baseline, more is better) or "lower"
    better: str = "higher"


def _n(v: Any, digits: int = 0, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, int | float):
        text = f"{v:,.{digits}f}"
        return f"{text} {unit}".strip()
    return str(v)


# ---------------------------------------------------------------------------------------------------------
# each benchmark's headline rows


def _ingest(r: dict[str, Any], file: str) -> list[Row]:
    s, t = r["summary"], r.get("targets") or {}
    mib = (r.get("params") or {}).get("csv_mib")
    size = "" if not mib else (f"{mib / 1024:g} GiB" if mib >= 1024 else f"{mib:g} MiB")
    label = f"CSV -> validated Parquet{f' ({size})' if size else ''}"
    rows = [
        Row(
            "ingest",
            label + ", rows/s",
            _n(s["freestack_rows_per_s"]),
            f"{_n(s['baseline_rows_per_s'])} (raw pyarrow, {s.get('ratio_against', 'eager')})",
            s.get("throughput_ratio"),
            f">= {t.get('throughput_ratio_min', 0.7)}",
            (s.get("checks") or {}).get("throughput_ratio_ok"),
        )
    ]
    rss_ok = (s.get("checks") or {}).get("peak_rss_ok_for_2gib")
    if rss_ok is not None:
        rows.append(
            Row(
                "ingest",
                label + ", peak memory",
                _n(s["freestack_peak_rss_mib"], 0, "MiB"),
                _n(s["baseline_peak_rss_mib"], 0, "MiB"),
                round(s["freestack_peak_rss_mib"] / s["baseline_peak_rss_mib"], 3),
                f"< {t.get('peak_rss_mib_max_for_2gib', 1024)} MiB",
                rss_ok,
                better="lower",
            )
        )
    return rows


def _train(r: dict[str, Any], file: str) -> list[Row]:
    s, t = r["summary"], r.get("targets") or {}
    kind = (r.get("params") or {}).get("kind") or ("cnn" if "cnn" in file else "mlp")
    ratio, target = s.get("ratio"), t.get("ratio_min", 0.95)
    rows = [
        Row(
            "train",
            f"{kind.upper()} training, samples/s",
            _n(s["freestack_samples_per_s"]),
            f"{_n(s['baseline_samples_per_s'])} (plain PyTorch loop)",
            ratio,
            f">= {target}",
            ratio is not None and ratio >= target,
        )
    ]
    custom = s.get("ratio_custom_vs_builtin")
    if custom is not None:
        rows.append(
            Row(
                "train",
                "the MLP as a custom module (model.type: custom), samples/s",
                _n(s["modes"]["freestack_custom"]["samples_per_s"]),
                f"{_n(s['freestack_samples_per_s'])} (the built-in MLP)",
                custom,
                f">= {target}",
                custom >= target,
            )
        )
    return rows


def _train_stream(r: dict[str, Any], file: str) -> list[Row]:
    s, t, runs, scale = r["summary"], r.get("targets") or {}, r["runs"], r["params"]["scale"]
    rss, rss_max = s["peak_rss_ratio_stream"], t.get("peak_rss_ratio_stream_max", 1.3)
    speed, speed_min = s["throughput_ratio_stream_vs_memory"], t.get("throughput_ratio_min", 0.9)
    return [
        Row(
            "train_stream",
            f"streamed window {scale}x as large, peak memory",
            _n(runs[f"stream_{scale}x"]["peak_rss_mib"], 0, "MiB"),
            f"{_n(runs['stream_1x']['peak_rss_mib'], 0, 'MiB')} (streamed 1x window; in memory: "
            f"{_n(runs['memory_1x']['peak_rss_mib'], 0, 'MiB')} -> {_n(runs[f'memory_{scale}x']['peak_rss_mib'], 0, 'MiB')})",
            rss,
            f"<= {rss_max}",
            rss <= rss_max,
            better="lower",
        ),
        Row(
            "train_stream",
            "streamed window, samples/s",
            _n(runs["stream_1x"]["samples_per_s"]),
            f"{_n(runs['memory_1x']['samples_per_s'])} (the same window in memory)",
            speed,
            f">= {speed_min}",
            speed >= speed_min,
        ),
    ]


def _train_finetune(r: dict[str, Any], file: str) -> list[Row]:
    s, t, modes = r["summary"], r.get("targets") or {}, r["modes"]
    target, size = t.get("ratio_min", 0.95), (r.get("params") or {}).get("size", "distilbert")
    rows = [
        Row(
            "train_finetune",
            f"{size}-sized fine-tuning ({name}), samples/s",
            _n(m["samples_per_s"]["freestack"], 1),
            f"{_n(m['samples_per_s']['baseline'], 1)} (hand-written transformers+peft loop)",
            m["ratio"],
            f">= {target}",
            m["ratio"] >= target,
        )
        for name, m in modes.items()
    ]
    lora, full = modes["lora"], modes["full"]
    rows.append(
        Row(
            "train_finetune",
            "LoRA vs full fine-tuning: trainable parameters / version weights",
            f"{_n(lora['trainable_parameters'])} / {_n(lora['version_weights_mib'], 1, 'MiB')}",
            f"{_n(full['trainable_parameters'])} / {_n(full['version_weights_mib'], 1, 'MiB')} (full)",
            s["trainable_lora_vs_full"],
            "(reported)",
            None,
            better="lower",
        )
    )
    return rows


def _train_distributed(r: dict[str, Any], file: str) -> list[Row]:
    """CPU: 2 ranks against 2x one process (scaling efficiency); CUDA: DDP of one rank against none."""
    s, device, strategy = r["summary"], r["params"]["device"], r["params"].get("strategy", "ddp")
    batch = r["params"]["batch_size"]
    rows = []
    for kind, m in s.items():
        if device == "cpu":
            eff = m["scaling_efficiency"]
            rows.append(
                Row(
                    "train_distributed",
                    f"{kind}: 2 gloo ranks of 1 thread ({batch} rows a rank a step), samples/s",
                    _n(m["two_ranks_samples_per_s"]),
                    f"2 x {_n(m['one_samples_per_s'])} (one process of 1 thread); "
                    f"all-reduce {_n(m['gloo_allreduce_ms_per_step'], 2, 'ms')}/step",
                    eff,
                    ">= 0.85",
                    eff is not None and eff >= 0.85,
                )
            )
        elif strategy == "ddp":
            ratio = m["ddp_overhead_ratio"]
            rows.append(
                Row(
                    "train_distributed",
                    f"{kind}: one GPU under DDP ({m['amp']}, {batch} rows a step), samples/s",
                    _n(m["ddp1_samples_per_s"]),
                    f"{_n(m['plain_samples_per_s'])} (the same loop without DDP)",
                    ratio,
                    ">= 0.97",
                    ratio is not None and ratio >= 0.97,
                )
            )
        else:  # FSDP on one GPU: its gathers' cost, reported (it is for models larger than a device)
            rows.append(
                Row(
                    "train_distributed",
                    f"{kind}: one GPU under FSDP ({m['amp']}, {batch} rows a step), samples/s",
                    _n(m["ddp1_samples_per_s"]),
                    f"{_n(m['plain_samples_per_s'])} (the same loop, not sharded)",
                    m["ddp_overhead_ratio"],
                    "(reported)",
                    None,
                )
            )
    return rows


def _train_sft(r: dict[str, Any], file: str) -> list[Row]:
    """LoRA instruction-tuning of a causal LM: freestack's loop against TRL's SFTTrainer, tokens/s."""
    s, p = r["summary"], r["params"]
    dtype, threads = p["dtype"].removeprefix("torch."), p.get("threads")
    where = (
        f"cpu, {threads} thread{'s' if threads > 1 else ''}"
        if p["device"] == "cpu" and threads
        else p["device"]
    )
    label = f"LoRA SFT, {p['parameters'] / 1e6:.0f}M-parameter Llama ({where}, {dtype}, batch {p['batch_size']}), tokens/s"
    return [
        Row(
            "train_sft",
            label,
            _n(s["freestack_tokens_per_s"], 1),
            f"{_n(s['trl_tokens_per_s'], 1)} (TRL SFTTrainer)",
            s["ratio"],
            f">= {s['target']}",
            s["met"],
        )
    ]


def _dpo_train(r: dict[str, Any], file: str) -> list[Row]:
    """LoRA preference tuning (DPO) of a causal LM: freestack's loop against TRL's DPOTrainer, pairs/s."""
    s, base, med = r["settings"], r["base"], r["median_pairs_per_s"]
    where = (
        f"cpu, {s['threads']} thread{'s' if s['threads'] > 1 else ''}"
        if s["device"] == "cpu"
        else s["device"]
    )
    label = f"LoRA DPO, {base['parameters'] / 1e6:.0f}M-parameter Llama ({where}, batch {s['batch_size']}), pairs/s"
    ratio = r["ratio"]
    return [
        Row(
            "dpo_train",
            label,
            _n(med["freestack"], 2),
            f"{_n(med['trl'], 2)} (TRL DPOTrainer)",
            ratio,
            f">= {r['target']}",
            ratio >= r["target"],
        )
    ]


def _grpo_train(r: dict[str, Any], file: str) -> list[Row]:
    """GRPO of a tiny causal LM on an exact-match reward: freestack's loop against TRL's GRPOTrainer, the
    tokens/s, and the exact match each reached after the same steps (higher is better on both); the
    rollouts by ``generate`` (``grpo_train``) or by continuous batching (``grpo_train_continuous``)."""
    s, med, exact = r["settings"], r["median_tokens_per_s"], r["median_exact_match"]
    where = f"cpu, {s['threads']} thread{'s' if s['threads'] > 1 else ''}"
    steps = f"{s['prompts']} prompts x {s['epochs']} epochs, {s['num_generations']} samples each"
    continuous = s.get("rollouts") == "continuous"
    what = "GRPO, continuous-batching rollouts" if continuous else "GRPO"
    trl = "TRL GRPOTrainer, its continuous batching" if continuous else "TRL GRPOTrainer"
    ratio = r["ratio"]
    return [
        Row(
            r["name"],
            f"{what}, tiny Llama ({where}; {steps}), tokens/s",
            _n(med["freestack"], 0),
            f"{_n(med['trl'], 0)} ({trl})",
            ratio,
            f">= {r['target']}",
            ratio >= r["target"],
        ),
        Row(
            r["name"],
            f"{what}, the same run: exact match on 200 held-out prompts (start {r['exact_match_start']:.3f})",
            f"{exact['freestack']:.3f}",
            f"{exact['trl']:.3f} ({trl})",
            exact["freestack"] / exact["trl"] if exact["trl"] else None,
            ">= 1",
            exact["freestack"] >= exact["trl"],
        ),
    ]


def _grpo_server(r: dict[str, Any], file: str) -> list[Row]:
    """GRPO of the same tiny causal LM's LoRA adapter, its rollouts sampled by a deployed server (the adapter
    pushed to it each step) against sampled in the training process; no target."""
    s, med, exact = r["settings"], r["median_tokens_per_s"], r["median_exact_match"]
    steps = f"{s['prompts']} prompts x {s['epochs']} epochs, {s['num_generations']} samples each"
    return [
        Row(
            r["name"],
            f"GRPO rollouts from a deployed server (mlserver, adapter pushed each step), LoRA of a tiny Llama "
            f"(cpu, {s['threads']} thread each; {steps}), tokens/s",
            _n(med["server"], 0),
            f"{_n(med['padded'], 0)} (rollouts padded, in the training process)",
            r["ratio"],
            "-",
            None,
        ),
        Row(
            r["name"],
            "GRPO rollouts from a deployed server, the same run: exact match on 200 held-out prompts",
            f"{exact['server']:.3f}",
            f"{exact['padded']:.3f} (rollouts padded)",
            exact["server"] / exact["padded"] if exact["padded"] else None,
            "-",
            None,
        ),
    ]


def _train_loaded(r: dict[str, Any], file: str) -> list[Row]:
    """The training loop beside a load: the pool a task sizes against torch's own (a thread per core)."""
    s, p = r["summary"], r["params"]
    modes, sized, own = s["modes"], p["sized_threads"], p["own_threads"]
    beside = f"{p['load_procs']} {p['load']} process{'es' if p['load_procs'] > 1 else ''}"
    pools = f"{sized} thread(s) (the task's share) vs {own} (torch's own)"
    rows = [
        Row(
            "train_loaded",
            f"training beside {beside}: {pools}, samples/s",
            _n(modes["sized_loaded"]["samples_per_s"]),
            f"{_n(modes['own_loaded']['samples_per_s'])} (torch's own pool)",
            s["ratio_loaded"],
            "reported",
            None,
        )
    ]
    if s.get("ratio_quiet"):
        rows.append(
            Row(
                "train_loaded",
                f"the same without the load: {pools}, samples/s",
                _n(modes["sized_quiet"]["samples_per_s"]),
                f"{_n(modes['own_quiet']['samples_per_s'])} (torch's own pool)",
                s["ratio_quiet"],
                "reported",
                None,
            )
        )
    return rows


def _sweep_objectives(r: dict[str, Any]) -> list[Row]:
    """Optuna's multi-objective methods against bayes at equal trial-epochs: the hypervolume of the front
    (accuracy against trainable parameters) and the best accuracy, per task."""
    rows = []
    for task, t in r["tasks"].items():
        base = t["methods"]["bayes"]
        for method in ("tpe", "nsga2"):
            m = t["methods"].get(method)
            if not m:
                continue
            rows += [
                Row(
                    "sweep_objectives",
                    f"{task}: hypervolume, accuracy vs parameters ({method} vs bayes)",
                    _n(m["hypervolume"], 3),
                    f"{_n(base['hypervolume'], 3)} (bayes)",
                    round(m["hypervolume"] / base["hypervolume"], 3) if base["hypervolume"] else None,
                    "reported",
                    None,
                ),
                Row(
                    "sweep_objectives",
                    f"{task}: best val_accuracy ({method} vs bayes)",
                    _n(m["best_val_accuracy"], 3),
                    f"{_n(base['best_val_accuracy'], 3)} (bayes)",
                    round(m["best_val_accuracy"] / base["best_val_accuracy"], 3)
                    if base["best_val_accuracy"]
                    else None,
                    "reported",
                    None,
                ),
            ]
    return rows


def _sweep(r: dict[str, Any], file: str) -> list[Row]:
    if r.get("name") == "sweep_objectives":
        return _sweep_objectives(r)
    rows = []
    par = r.get("parallel")
    if par:
        w = par.get("median_wall_s", {})
        rows.append(
            Row(
                "sweep",
                "2 agents vs 1, wall time",
                _n(w.get("two_agents"), 1, "s"),
                f"{_n(w.get('one_agent_same_threads'), 1, 's')} (1 agent)",
                par.get("speedup"),
                f">= {par.get('target')} speed-up",
                par.get("met"),
            )
        )
        up = par.get("median_wall_with_startup_s")
        if up:
            rows.append(
                Row(
                    "sweep",
                    "2 agents vs 1, agents' start-up counted",
                    _n(up.get("two_agents"), 1, "s"),
                    f"{_n(up.get('one_agent_same_threads'), 1, 's')} (1 agent)",
                    par.get("speedup_with_startup"),
                    "reported",
                    None,
                )
            )
    hb = r.get("hyperband")
    if hb:
        rows.append(
            Row(
                "sweep",
                "hyperband, trial-epochs",
                _n(hb["with"]["epochs"]),
                f"{_n(hb['without']['epochs'])} (no early termination)",
                hb.get("epochs_ratio"),
                f">= {hb['target']['epochs_ratio']}x fewer, best within {hb['target']['best_gap']:.0%}",
                hb.get("met"),
            )
        )
    return rows


def _data_api(r: dict[str, Any], file: str) -> list[Row]:
    """Per object size: the service's plain HTTP download against HTTP's ceiling (a bare sendfile server:
    the target), and data:// through the service, plain HTTP and that ceiling against a direct read."""
    rows = []
    for size, v in (r.get("summary") or {}).items():
        if not isinstance(v, dict) or "direct" not in v:
            continue
        direct = v["direct"]
        down = f"{_n(direct['download_mb_s'])} (direct read)"
        http, bare, target = v["service_http"], v.get("bare_http"), v.get("target") or {}
        rows.append(
            Row(
                "data_api",
                f"{size} upload, MB/s",
                _n(http["upload_mb_s"]),
                f"{_n(direct['upload_mb_s'])} (direct write)",
                http.get("upload_ratio"),
                "-",
                None,
            )
        )
        if bare and http.get("download_vs_bare_http") is not None:  # the bench's own verdict on its target
            rows.append(
                Row(
                    "data_api",
                    f"{size} download over HTTP vs a bare sendfile server, MB/s",
                    _n(http["download_mb_s"]),
                    f"{_n(bare['download_mb_s'])} (bare sendfile server)",
                    http["download_vs_bare_http"],
                    f">= {target.get('service_http_download_vs_bare_http')}",
                    target.get("met"),
                )
            )
        datafs = v.get("service_datafs")
        if datafs and datafs.get("download_ratio") is not None:
            rows.append(
                Row(
                    "data_api",
                    f"{size} download through data:// (ranged GETs), MB/s",
                    _n(datafs["download_mb_s"]),
                    down,
                    datafs["download_ratio"],
                    "(reported)",
                    None,
                )
            )
        rows.append(
            Row(
                "data_api",
                f"{size} download over HTTP, MB/s",
                _n(http["download_mb_s"]),
                down,
                http.get("download_ratio"),
                "(reported)",
                None,
            )
        )
        if bare:  # HTTP's own ceiling here: a bare sendfile server, the same client
            rows.append(
                Row(
                    "data_api",
                    f"{size} download, MB/s: the ceiling of HTTP, a bare sendfile server",
                    _n(bare["download_mb_s"]),
                    down,
                    bare.get("download_ratio"),
                    "(reported)",
                    None,
                )
            )
    return rows


def _seldon_batch(s: dict[str, Any]) -> list[Row]:
    """32 rows a request: the batch target of the faster runtime, read for Seldon too."""
    seldon, bare = (s.get(k, {}).get("batch32_c8") for k in ("seldon", "bare"))
    if not (seldon and bare):
        return []
    ratio = seldon.get("ratio_rps")
    return [
        Row(
            "serve",
            "Seldon model server, 32 rows a request, c=8, req/s",
            _n(seldon["rps"]),
            f"{_n(bare['rps'])} (bare uvicorn)",
            ratio,
            ">= 1.0",
            ratio is not None and ratio >= 1.0,
        )
    ]


def _serve(r: dict[str, Any], file: str) -> list[Row]:
    s = r["summary"]
    if file != "serve":  # a run of some servers only (serve_requestlog.json: seldon, seldon_logged, bare)
        return _request_log(s) + _recorded(s)
    c = s.get("checks") or {}
    seldon, bare = s["seldon"]["c8"], s["bare"]["c8"]
    return [
        Row(
            "serve",
            "Seldon model server, c=8, req/s",
            _n(seldon["rps"]),
            f"{_n(bare['rps'])} (bare uvicorn)",
            c.get("seldon_c8_ratio"),
            ">= 0.8",
            c.get("ratio_ok"),
        ),
        Row(
            "serve",
            "Seldon model server, c=8, p99",
            _n(seldon["p99_ms"], 1, "ms"),
            _n(bare["p99_ms"], 1, "ms"),
            round(seldon["p99_ms"] / bare["p99_ms"], 3) if bare.get("p99_ms") else None,
            "< 5 ms",
            c.get("p99_ok"),
            better="lower",
        ),
        *_seldon_batch(s),
        *_request_log(s),
        *_oip(s),
    ]


def _oip(s: dict[str, Any]) -> list[Row]:
    """The Open Inference Protocol runtime (MLServer) against the bare server, same run."""
    c, m, bare = s.get("checks_oip"), s.get("mlserver") or {}, s["bare"]
    if not c:
        return []
    batch = "batch32_c8"
    return [
        # the target is the faster runtime's (Seldon's rows above); MLServer's figures are reported beside it
        Row(
            "serve",
            "MLServer runtime (V2), c=8, req/s",
            _n(m["c8"]["rps"]),
            f"{_n(bare['c8']['rps'])} (bare uvicorn)",
            c.get("mlserver_c8_ratio"),
            "(reported)",
            None,
        ),
        Row(
            "serve",
            "MLServer runtime (V2), 32 rows a request, c=8, req/s",
            _n(m[batch]["rps"]),
            f"{_n(bare[batch]['rps'])} (bare uvicorn)",
            c.get("mlserver_batch_ratio"),
            "(reported)",
            None,
        ),
    ]


def _request_log(s: dict[str, Any]) -> list[Row]:
    """Serving with the request log on (every request, as deployed by default) ÷ off, same round."""
    lg, on = s.get("logging") or {}, s.get("seldon_logged") or {}
    return [
        Row(
            "serve",
            f"request log on ÷ off, {cell}, req/s",
            _n(on[cell]["rps"]),
            f"{_n(s['seldon'][cell]['rps'])} (log off)",
            lg[cell],
            ">= 0.95" if cell == "c8" else "-",
            lg[cell] >= 0.95 if cell == "c8" else None,
        )
        for cell in ("c8", "batch32_c8")
        if cell in lg and cell in on
    ]


def _recorded(s: dict[str, Any]) -> list[Row]:
    """The latency a version records (evaluate's serving costs) against this benchmark's concurrency-1 cell
    of the same runtime's server, same version, same run."""
    return [
        Row(
            "serve",
            f"recorded serving latency {q} ({runtime}, median of {len(r.get('measurements') or [1])}), ms",
            _n(r["recorded"][f"latency_{q}_ms"], 3),
            f"{_n(r['bench_c1'][q], 3)} (c=1 cell)",
            r["ratio"][q],
            "0.75-1.25",
            r["ratio"][q] is not None and 0.75 <= r["ratio"][q] <= 1.25,
            better="lower",
        )
        for runtime, r in (s.get("recorded") or {}).items()
        for q in ("p50", "p99")
    ]


def _serve_address(r: dict[str, Any], file: str) -> list[Row]:
    s = r["summary"]
    stable, direct = s["stable"]["c8"], s["direct"]["c8"]
    return [
        Row(
            "serve_address",
            "stable address (fd:// from the holder), c=8, req/s",
            _n(stable["rps"]),
            f"{_n(direct['rps'])} (same server, bound directly)",
            stable.get("ratio_rps"),
            ">= 0.95",
            s["checks"].get("ratio_ok"),
        )
    ]


def _serve_slow_clients(r: dict[str, Any], file: str) -> list[Row]:
    s = r["summary"]
    c = s.get("checks") or {}
    slow = r["params"]["slow_clients"]
    rows = []
    for wc in r["params"]["worker_classes"]:
        w = s[wc]
        rows.append(
            Row(
                "serve_slow_clients",
                f"{slow} slow clients open ({wc} worker), c=8, req/s",
                _n(w["rps_slow"]),
                f"{_n(w['rps_none'])} (same server, no slow client)",
                w.get("ratio"),
                ">= 0.9, no worker killed",
                bool(c.get(f"{wc}_ratio_ok")) and not w["workers_killed"],
            )
        )
        rows.append(
            Row(
                "serve_slow_clients",
                f"malformed requests answered 4xx JSON ({wc} worker)",
                f"{w['corpus_json_4xx']} of {w['corpus_cases']}",
                "-",
                w.get("corpus_json_4xx_share"),
                "1.00",
                w.get("corpus_json_4xx_share") == 1.0,
            )
        )
    return rows


def _serve_generation(r: dict[str, Any], file: str) -> list[Row]:
    """Text generation through the model server against a plain ``model.generate`` loop in-process with the
    same batching: completion tokens/s, and p50 / p99 time to the last token (the answer)."""
    s, p = r["summary"], r["params"]
    threads = p["threads"]
    model = f"{p['parameters'] / 1e6:.1f}M-parameter Llama, cpu, {threads} thread{'s' if threads > 1 else ''}"
    rows = []
    for runtime in p["runtimes"]:
        for c in p["concurrency"]:
            m, b = s[runtime][f"c{c}"], s["baseline"][f"c{c}"]
            rows.append(
                Row(
                    "serve_generation",
                    f"{runtime} runtime, c={c} ({model}, {p['max_new_tokens']} new tokens), "
                    "tokens/s (p50 / p99 to the last token)",
                    f"{_n(m['tokens_per_s'])} ({_n(m['p50_ms'], 0, 'ms')} / {_n(m['p99_ms'], 0, 'ms')}; "
                    f"mean generate batch {m['mean_generate_batch']:g})",
                    f"{_n(b['tokens_per_s'])} ({_n(b['p50_ms'], 0, 'ms')} / {_n(b['p99_ms'], 0, 'ms')}; "
                    f"model.generate loop, batches of {c})",
                    m["ratio"],
                    "(reported)",
                    None,
                )
            )
    return rows


def _serve_openai(r: dict[str, Any], file: str) -> list[Row]:
    """The model server's OpenAI route (streamed chat) against ``transformers serve`` and against its own
    direct runtime call (V2): completion tokens/s with time to first token; and 1-prompt latency beside
    the deployment's largest request."""
    s, p = r["summary"], r["params"]
    t = s.get("targets") or {}
    model = f"{p['parameters'] / 1e6:.1f}M-parameter Llama, cpu, {p['threads']} thread(s), {p['max_new_tokens']} new tokens"
    rows = []
    for c in p["concurrency"]:
        cell = f"c{c}"
        m, ts, v2 = (
            s.get(side, {}).get(cell) for side in ("freestack_openai", "transformers_serve", "freestack_v2")
        )
        target = t.get(f"vs_transformers_serve_{cell}") or {}
        if m and ts:
            rows.append(
                Row(
                    "serve_openai",
                    f"/v1/chat/completions streamed, c={c} ({model}), tokens/s (TTFT p50 / p99)",
                    f"{_n(m['tokens_per_s'])} ({_n(m['ttft_p50_ms'], 0, 'ms')} / {_n(m['ttft_p99_ms'], 0, 'ms')})",
                    f"{_n(ts['tokens_per_s'])} ({_n(ts['ttft_p50_ms'], 0, 'ms')} / "
                    f"{_n(ts['ttft_p99_ms'], 0, 'ms')}; transformers serve --continuous-batching)",
                    s["vs_transformers_serve"][cell]["ratio"],
                    target.get("target", "(reported)"),
                    target.get("met"),
                )
            )
        whole = s.get("freestack_openai_whole", {}).get(cell)
        if whole and v2:
            check = t.get(f"openai_vs_v2_{cell}") or {}
            rows.append(
                Row(
                    "serve_openai",
                    f"OpenAI route (answered whole) / direct runtime call, c={c}, tokens/s (p50 / p99)",
                    f"{_n(whole['tokens_per_s'])} ({_n(whole['p50_ms'], 0, 'ms')} / {_n(whole['p99_ms'], 0, 'ms')})",
                    f"{_n(v2['tokens_per_s'])} ({_n(v2['p50_ms'], 0, 'ms')} / {_n(v2['p99_ms'], 0, 'ms')}; "
                    "V2 infer, same server)",
                    s["openai_vs_v2"][cell]["ratio"],
                    check.get("target", "(reported)"),
                    check.get("met"),
                )
            )
        if m and v2 and "openai_stream_vs_v2" in s:
            rows.append(
                Row(
                    "serve_openai",
                    f"OpenAI route streamed / direct runtime call, c={c}, tokens/s",
                    _n(m["tokens_per_s"]),
                    f"{_n(v2['tokens_per_s'])} (V2 infer, same server)",
                    s["openai_stream_vs_v2"][cell]["ratio"],
                    "(reported)",
                    None,
                )
            )
    f = r.get("flood")
    if f:
        rows.append(
            Row(
                "serve_openai",
                f"1-prompt chats beside the largest request ({p['flood'].get('request_prompts')} prompts x "
                f"{p['flood'].get('request_new_tokens')} new tokens, V2), latency p99",
                _n(f["busy_p99_ms"], 0, "ms"),
                f"{_n(f['idle_p99_ms'], 0, 'ms')} (the same requests, idle server)",
                f["p99_ratio"],
                f["target"],
                f["met"],
                better="lower",
            )
        )
    return rows


def _guidellm(r: dict[str, Any], file: str) -> list[Row]:
    """guidellm's sweep against the model server's OpenAI route and ``transformers serve``: output tokens/s
    at its synchronous run (the lowest rate), its throughput run and its highest constant rate; TTFT p50 at
    that rate."""
    p, sweeps = r["params"], r["sweeps"]
    fs, ts = sweeps["freestack"]["steps"], sweeps["transformers_serve"]["steps"]
    model = (
        f"{p['parameters'] / 1e6:.2f}M-parameter Llama, cpu, {p['prompt_tokens']}+{p['output_tokens']} tokens"
    )
    constant = [k for k, step in enumerate(fs[: len(ts)]) if step["rate"] is not None]
    top = max(constant, key=lambda k: fs[k]["rate"]) if constant else None
    picks = {"synchronous": 0, "throughput": 1, "highest constant rate": top}
    rows = []
    for label, k in picks.items():
        if k is None or k >= min(len(fs), len(ts)):
            continue
        a, b = fs[k], ts[k]
        rate = "" if a["rate"] is None else f" ({a['rate']:.1f} / {b['rate']:.1f} req/s)"
        rows.append(
            Row(
                "guidellm",
                f"guidellm sweep, {label}{rate}, output tokens/s ({model})",
                _n(a["output_tokens_per_s"]),
                f"{_n(b['output_tokens_per_s'])} (transformers serve --continuous-batching)",
                _ratio_of(a["output_tokens_per_s"], b["output_tokens_per_s"]),
                "(reported)",
                None,
            )
        )
    if top is not None and top < len(ts):
        a, b = fs[top], ts[top]
        rows.append(
            Row(
                "guidellm",
                f"guidellm sweep, highest constant rate ({a['rate']:.1f} / {b['rate']:.1f} req/s), TTFT p50",
                _n(a["ttft_p50_ms"], 0, "ms"),
                f"{_n(b['ttft_p50_ms'], 0, 'ms')} (transformers serve)",
                _ratio_of(a["ttft_p50_ms"], b["ttft_p50_ms"]),
                "(reported)",
                None,
                better="lower",
            )
        )
    return rows


def _ratio_of(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _serve_lora(r: dict[str, Any], file: str) -> list[Row]:
    """Resident memory of one deployment serving N LoRA versions of its base against serving one."""
    s, f, n = r["summary"], r["figures"], r["adapters"]
    mib = 2**20
    return [
        Row(
            "serve_lora",
            f"RSS with {n} LoRA versions of one base ({f['base_parameters'] / 1e6:.0f}M parameters) vs 1",
            _n(s["rss_n"] / mib, 0, "MiB"),
            f"{_n(s['rss_1'] / mib, 0, 'MiB')} (1 version; {n} deployments: "
            f"{_n(s['n_deployments_bytes'] / mib, 0, 'MiB')})",
            s["ratio"],
            f"< 1.2 + the adapters' {_n(s['adapters_own_bytes'] / mib, 1, 'MiB')}",
            s["met"],
            better="lower",
        )
    ] + _serve_lora_gap(r, file)


def _serve_lora_gap(r: dict[str, Any], file: str) -> list[Row]:
    """The longest time a token of another version's stream while a LoRA version loads, against the same
    stream's longest with nothing loading."""
    s = r["summary"]
    if s.get("gap_loading_ms") is None:
        return []
    return [
        Row(
            "serve_lora",
            f"a v1 stream's longest time a token while each of {r['adapters'] - 1} versions loads (the batch "
            f"paused at most {_n(s.get('batch_paused_ms_max'), 1, 'ms')} a load)",
            _n(s["gap_loading_ms"], 1, "ms"),
            f"{_n(s['gap_idle_ms'], 1, 'ms')} (the same stream, nothing loading)",
            _ratio_of(s["gap_loading_ms"], s["gap_idle_ms"]),
            "(reported)",
            None,
            better="lower",
        )
    ]


def _lora_batches(r: dict[str, Any], file: str) -> list[Row]:
    """peft's mixed-adapter batches against adapters taking turns (the engine's way), tokens/s."""
    p = r["params"]
    return [
        Row(
            "lora_batches",
            f"{c['adapters']} adapter(s), {p['prompts']} prompts x {p['new_tokens']} tokens in one mixed batch "
            f"(adapter_names), tokens/s",
            _n(c["tokens_per_s"]["mixed"]),
            f"{_n(c['tokens_per_s']['turns'])} (one batch per adapter, in turns)",
            round(c["ratio_mixed_over_turns"], 3),
            "(reported)",
            None,
        )
        for c in r["cells"]
    ]


def _dataapi_listing(r: dict[str, Any], file: str) -> list[Row]:
    s = r["summary"]
    listing, anon, kills = s["listing"], s["if_match"]["anonymous"], s["kill_9"]
    p = r["params"]
    return [
        Row(
            "dataapi_listing",
            f"list a folder of {p['large']:,} files, page time",
            _n(listing["large_median_page_s"] * 1000, 1, "ms"),
            f"{_n(listing['small_median_page_s'] * 1000, 1, 'ms')} ({p['small']:,} files)",
            listing.get("ratio"),
            "<= 2 (flat in folder size)",
            listing.get("ratio") is not None and listing["ratio"] <= 2,
            better="lower",
        ),
        Row(
            "dataapi_listing",
            f"anonymous If-Match on {p['object_mib']} MiB, server memory",
            _n(anon["peak_rss_delta_mib"], 1, "MiB"),
            f"{p['object_mib']} MiB (the object)",
            None,
            f"401, < 16 MiB (got {anon['status']})",
            anon["status"] == 401 and anon["peak_rss_delta_mib"] < 16,
            better="lower",
        ),
        Row(
            "dataapi_listing",
            f"temporaries left by {kills['kills']} kill -9, after the sweep",
            str(kills.get("temps_after_restart", kills.get("temps_after_restart_2h_later"))),
            f"{kills['temps_after_kills']} (before the sweep)",
            None,
            "0",
            kills.get("temps_after_restart", kills.get("temps_after_restart_2h_later")) == 0,
            better="lower",
        ),
    ]


def _orchestration(r: dict[str, Any], file: str) -> list[Row]:
    s = r.get("summary")
    if not s:
        return []
    c = s["checks"]
    n = r["params"]["specs"]
    return [
        Row(
            "orchestration",
            "per-task overhead (median)",
            _n(s["overhead_per_task_s"]["median"], 2, "s"),
            "published: ~3 s stock Airflow",
            None,
            "<= 0.5 s",
            c.get("overhead_ok"),
            better="lower",
        ),
        Row(
            "orchestration",
            "demo pipeline, wall time" + (f" (median of {s['repeats']})" if s.get("repeats", 1) > 1 else ""),
            _n(s["pipeline_airflow_s"], 1, "s"),
            f"{_n(s['pipeline_plain_s'], 1, 's')} (same code, one process)",
            s.get("ratio"),
            "<= 1.3",
            c.get("ratio_ok"),
            better="lower",
        ),
        Row(
            "orchestration",
            f"parse {n} pipeline specs",
            _n(s.get(f"parse_{n}_specs_s"), 2, "s"),
            "-",
            None,
            "< 2 s",
            c.get("parse_ok"),
            better="lower",
        ),
    ] + _orchestration_stock(r.get("summary_stock"))


def _orchestration_stock(s: dict[str, Any] | None) -> list[Row]:
    """The same pipeline with the runtime speed-ups off (stock Airflow behaviour): reported, no target."""
    if not s:
        return []
    return [
        Row(
            "orchestration",
            "per-task overhead, speed-ups off (median)",
            _n(s["overhead_per_task_s"]["median"], 2, "s"),
            "published: ~3 s stock Airflow",
            None,
            "-",
            None,
            better="lower",
        ),
        Row(
            "orchestration",
            "demo pipeline, speed-ups off",
            _n(s["pipeline_airflow_s"], 1, "s"),
            f"{_n(s['pipeline_plain_s'], 1, 's')} (same code, one process)",
            s.get("ratio"),
            "-",
            None,
            better="lower",
        ),
    ]


def _ui(r: dict[str, Any], file: str) -> list[Row]:
    """The ML views at volume: the slowest page's server time, and the versions and sweep pages against
    plain reads of the same files."""
    b, ratios = r["baseline"], r["ratios"]
    scale = f"{r['versions']:,} versions / {r['trials']:,} trials"
    return [
        Row(
            "ui",
            f"slowest page, server time ({scale})",
            _n(r["slowest_s"] * 1000, 0, "ms"),
            "-",
            None,
            f"<= {r['target_s'] * 1000:.0f} ms",
            r["met"],
            better="lower",
        ),
        Row(
            "ui",
            f"versions page, first load ({r['versions']:,} versions)",
            _n(r["pages"]["/freestack/ui/models/digits"]["cold_s"] * 1000, 0, "ms"),
            f"{_n(b['versions_s'] * 1000, 0, 'ms')} (plain reads of the same files)",
            ratios["versions_page_cold_vs_plain_reads"],
            "-",
            None,
            better="lower",
        ),
    ]


def _ui_charts(r: dict[str, Any], file: str) -> list[Row]:
    """The chart pages in Chromium: seconds until every figure is drawn, against a page without a chart."""
    plain = r["pages"]["baseline: models page (no chart)"]
    rows = []
    for name, t in r["pages"].items():
        if t is plain:
            continue
        for kind, when in (("cold", "empty cache"), ("warm", "cache warm")):
            s, base = t[f"{kind}_s"], plain[f"{kind}_s"]
            rows.append(
                Row(
                    "ui_charts",
                    f"{name} drawn in the browser, {when}",
                    _n(s * 1000, 0, "ms"),
                    f"{_n(base * 1000, 0, 'ms')} (a page without a chart)",
                    s / base,
                    f"<= {r['target_s'] * 1000:.0f} ms",
                    s <= r["target_s"],
                    better="lower",
                )
            )
    return rows


def _score(r: dict[str, Any], file: str) -> list[Row]:
    """Batch scoring: the score stage's rows/s against a plain pyarrow + torch loop per model, its peak
    memory on a partition ``scale`` times as large, and a backfill on 2 workers against 1."""
    s, t, p = r["summary"], r.get("targets") or {}, r.get("params") or {}
    rows = []
    names = {"digits": "digits MLP (64 numbers)", "text": "text model (trained tokenizer)"}
    target = t.get("throughput_ratio_min", 0.9)
    for model, m in (s.get("throughput") or {}).items():
        rows.append(
            Row(
                "score",
                f"{names.get(model, model)}, {m['rows']:,} rows, rows/s",
                _n(m["freestack_rows_per_s"]),
                f"{_n(m['plain_rows_per_s'])} (plain pyarrow + torch loop)",
                m["ratio"],
                f">= {target}",
                m["ratio"] >= target,
            )
        )
    rss = s.get("peak_rss")
    if rss:
        scale, rss_max = p.get("scale", 10), t.get("peak_rss_ratio_max", 1.3)
        big, one = rss["freestack_mib"][f"{scale}x"], rss["freestack_mib"]["1x"]
        rows.append(
            Row(
                "score",
                f"partition {scale}x as large ({p.get('rss_rows', 0) * scale:,} rows), peak memory",
                _n(big, 0, "MiB"),
                f"{_n(one, 0, 'MiB')} (the 1x partition)",
                rss["ratio"],
                f"<= {rss_max}",
                rss["ratio"] <= rss_max,
                better="lower",
            )
        )
    for threads, bf in (s.get("backfill_by_threads") or {}).items():
        each = (
            "torch's default threads"
            if threads == "default"
            else f"{threads} torch thread{'s' if threads != '1' else ''}"
        )
        rows.append(
            Row(
                "score",
                f"{bf['days']}-day backfill, 2 workers vs 1 ({each} each), wall time",
                _n(bf["two_workers_s"], 1, "s"),
                f"{_n(bf['one_worker_s'], 1, 's')} (1 worker)",
                bf["speedup"],
                "reported",
                None,
            )
        )
    return rows


#: the rows of the grammar libraries: what is measured, where in a library's summary, the ratio's key, the unit
_STRUCTURED = (
    ("next-token mask, 5 test schemas, median", ("mask_us_fixed", "median_us"), "mask_fixed_median", 1, "µs"),
    ("next-token mask, 5 test schemas, mean", ("mask_us_fixed", "mean_us"), "mask_fixed_mean", 1, "µs"),
    (
        "next-token mask, any JSON object ({tokens} tokens), median",
        ("mask_us_any_object", "median_us"),
        "mask_any_object_median",
        1,
        "µs",
    ),
    ("masks of the 6 schemas' answers, added up", ("answer_ms_total",), "mask_per_answer_total", 1, "ms"),
    (
        "JSON schema compile, median of the 5 test schemas",
        ("compile_ms_fixed_median",),
        "compile_fixed_median",
        2,
        "ms",
    ),
    ("install size beside torch + transformers", ("footprint_added_mib",), "footprint_added", 1, "MiB"),
)


def _structured(r: dict[str, Any], file: str) -> list[Row]:
    """Grammar-constrained decoding: llguidance (freestack's) against xgrammar, outlines-core beside them."""
    e, ratio = r["summary"]["engines"], r["summary"]["ratio_vs_xgrammar"] or {}
    llg = next(s for s in r["samples"] if s["engine"] == "llguidance")
    tokens = llg["schemas"]["any_object"]["tokens"]

    def of(name: str, path: tuple[str, ...], digits: int, unit: str) -> str:
        value = e.get(name)
        for key in path if value else ():
            value = value[key]
        return _n(value, digits, unit)

    return [
        Row(
            "structured",
            f"{measure.format(tokens=tokens)} (llguidance)",
            of("llguidance", path, digits, unit),
            f"{of('xgrammar', path, digits, unit)} (xgrammar); outlines-core {of('outlines_core', path, digits, unit)}",
            ratio.get(key),
            "(reported)",
            None,
            better="lower",
        )
        for measure, path, key, digits, unit in _STRUCTURED
    ]


def _score_generation(r: dict[str, Any], file: str) -> list[Row]:
    """The score task's batch generation (padded and continuous) against a plain ``generate`` loop."""
    s, p = r["summary"], r["params"]
    rates = s["tokens_per_s"]
    label = f"score: batch generation, {p['prompts']} prompts x {p['max_new_tokens']} tokens (tokens/s)"
    return [
        Row(
            "score_generation",
            f"{label}, batching: {side}",
            _n(rates[side], 0),
            f"{_n(rates['plain'], 0)} (plain generate loop)",
            s[f"{side}_ratio"],
            f">= {s['target']}" if side == "padded" else "(reported)",
            s["met"] if side == "padded" else None,
        )
        for side in ("padded", "continuous")
    ]


EXTRACT: dict[str, Callable[[dict[str, Any], str], list[Row]]] = {
    "ingest": _ingest,
    "train": _train,
    "train_stream": _train_stream,
    "train_finetune": _train_finetune,
    "train_distributed": _train_distributed,
    "train_sft": _train_sft,
    "dpo_train": _dpo_train,
    "grpo_train": _grpo_train,
    "grpo_train_continuous": _grpo_train,
    "grpo_server": _grpo_server,
    "train_loaded": _train_loaded,
    "score": _score,
    "score_generation": _score_generation,
    "sweep": _sweep,
    "data_api": _data_api,
    "serve": _serve,
    "serve_address": _serve_address,
    "serve_slow_clients": _serve_slow_clients,
    "serve_generation": _serve_generation,
    "serve_openai": _serve_openai,
    "guidellm": _guidellm,
    "serve_lora": _serve_lora,
    "lora_batches": _lora_batches,
    "structured": _structured,
    "dataapi_listing": _dataapi_listing,
    "orchestration": _orchestration,
    "ui": _ui,
    "ui_charts": _ui_charts,
}
ORDER = list(EXTRACT)


def load(results: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, file stem, report)`` of every results file, in the benchmarks' order."""
    found = []
    for path in sorted(results.glob("*.json")):
        report = json.loads(path.read_text())
        name = report.get("name") or path.stem.split("_")[0]
        if name not in EXTRACT:
            name = next((n for n in EXTRACT if path.stem.startswith(n)), name)
        found.append((name, path.stem, report))
    return sorted(found, key=lambda x: (ORDER.index(x[0]) if x[0] in ORDER else 99, x[1]))


def rows_of(found: list[tuple[str, str, dict[str, Any]]]) -> list[Row]:
    rows: list[Row] = []
    for name, stem, report in found:
        if name in EXTRACT:
            rows.extend(EXTRACT[name](report, stem))
    return rows


def table(rows: list[Row]) -> str:
    out = [
        "| benchmark | measure | freestack | baseline (same machine, same run) | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        out.append(
            f"| {r.bench} | {r.measure} | {r.freestack} | {r.baseline} | {ratio} | {r.target} | {met} |"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------
# charts


def charts(found: list[tuple[str, str, dict[str, Any]]], rows: list[Row], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    # 1. every headline ratio against 1 (the baseline)
    ratios = [r for r in rows if r.ratio is not None]
    if ratios:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(ratios) + 1.2))
        labels = [f"{r.bench}: {r.measure}" for r in ratios]
        colors = ["#3b7dd8" if r.better == "higher" else "#d8843b" for r in ratios]
        # a ratio far past the others (a pool sized beside a load) is cut at the axis, its value written
        ax.barh(range(len(ratios)), [min(r.ratio, RATIO_AXIS) for r in ratios], color=colors)
        for i, r in enumerate(ratios):
            if r.ratio > RATIO_AXIS:
                ax.text(RATIO_AXIS, i, f" {r.ratio:.0f}x", va="center", fontsize=7)
        ax.set_xlim(0, RATIO_AXIS * 1.12)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_yticks(range(len(ratios)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("freestack / baseline (blue: higher is better; orange: lower is better)")
        ax.set_title("freestack against its baselines")
        fig.tight_layout()
        fig.savefig(out / "ratios.png", dpi=110)
        plt.close(fig)
        made.append("ratios.png")
    by_name = {name: report for name, _, report in found}
    # 2. serving: requests/s per concurrency, each server
    serve = by_name.get("serve")
    if serve:
        s = serve["summary"]
        cells = [c for c in ("c1", "c8", "c32") if c in s.get("bare", {})]
        servers = [k for k in ("bare", "seldon", "seldon_sync", "seldon_stock") if k in s]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        width = 0.8 / max(1, len(servers))
        for i, srv in enumerate(servers):
            ax.bar(
                [j + i * width for j in range(len(cells))],
                [s[srv][c]["rps"] for c in cells],
                width,
                label=srv,
            )
        ax.set_xticks([j + width * (len(servers) - 1) / 2 for j in range(len(cells))], cells)
        ax.set_ylabel("requests/s")
        ax.set_title("serving: one 64-feature row per request")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "serve.png", dpi=110)
        plt.close(fig)
        made.append("serve.png")
    # 3. orchestration: where a task's time goes, and the pipeline
    orch = by_name.get("orchestration")
    if orch and orch.get("summary"):
        runs = orch["samples"]["airflow"]
        runs = runs if isinstance(runs, list) else [runs]
        tasks = runs[0]["tasks"]  # one run's tasks: the first repeat
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 1]})
        names, seen = [], {}
        for t in tasks:  # one bar per task instance: ingest runs once per day
            base = f"{t['task_id']}{'' if t['map_index'] < 0 else t['map_index']}"
            seen[base] = seen.get(base, 0) + 1
            names.append(base if seen[base] == 1 else f"{base} #{seen[base]}")
        before = [t["queued_to_code_s"] for t in tasks]
        code = [t["code_s"] for t in tasks]
        after = [max(0.0, t["code_to_success_s"]) for t in tasks]
        ax1.barh(names, before, color="#d8843b", label="queued -> code starts")
        ax1.barh(names, code, left=before, color="#3b7dd8", label="the task's code")
        ax1.barh(
            names,
            after,
            left=[b + c for b, c in zip(before, code, strict=True)],
            color="#888",
            label="code ends -> success",
        )
        ax1.invert_yaxis()
        ax1.tick_params(axis="y", labelsize=7)
        ax1.set_xlabel("seconds")
        ax1.legend(fontsize=7)
        ax1.set_title("each task under airflow standalone" + (" (first repeat)" if len(runs) > 1 else ""))
        s = orch["summary"]
        ax2.bar(
            ["plain", "airflow"], [s["pipeline_plain_s"], s["pipeline_airflow_s"]], color=["#888", "#3b7dd8"]
        )
        for x, key in ((0, "pipeline_plain_runs_s"), (1, "pipeline_airflow_runs_s")):
            values = s.get(key) or []
            ax2.scatter([x] * len(values), values, color="k", s=12, zorder=3)
        ax2.set_ylabel("seconds")
        ax2.set_title(
            f"demo pipeline ({s['ratio']:.2f}x)"
            + (f"\nmedian of {len(runs)}; dots: each run" if len(runs) > 1 else ""),
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(out / "orchestration.png", dpi=110)
        plt.close(fig)
        made.append("orchestration.png")
    return made


# ---------------------------------------------------------------------------------------------------------
# the documents


def machine_line(report: dict[str, Any]) -> str:
    m = report.get("machine") or {}
    parts = [
        m.get("cpu_model"),
        f"{m.get('cores')} cores" if m.get("cores") else None,
        f"{m.get('memory_gib')} GiB" if m.get("memory_gib") else None,
        f"Python {m.get('python')}" if m.get("python") else None,
    ]
    return ", ".join(p for p in parts if p)


def results_readme(found: list[tuple[str, str, dict[str, Any]]], rows: list[Row], images: list[str]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m bench.report` from the JSON files in this folder (`make bench` runs every",
        "benchmark, then this). Each JSON holds the machine, the raw samples and the ratio against the",
        "benchmark's baseline, run on the same machine in the same run; see `bench/README.md` for how each",
        "one measures. Do not edit this file by hand.",
        "",
        table(rows),
        "",
    ]
    for img in images:
        lines += [f"![{img[:-4]}]({img})", ""]
    lines += ["## Machines and files", ""]
    for name, stem, report in found:
        lines.append(f"- `{stem}.json` ({name}): {machine_line(report) or 'machine not recorded'}")
    lines.append("")
    return "\n".join(lines)


def update_readme(readme: Path, rows: list[Row]) -> bool:
    """Replace the table between the markers; False if the README has no markers."""
    text = readme.read_text()
    if START not in text or END not in text:
        return False
    body = f"{START}\n<!-- generated by `python -m bench.report` from bench/results/*.json -->\n{table(rows)}\n{END}"
    new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: body, text, count=1, flags=re.S)
    if new != text:
        readme.write_text(new)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument(
        "--readme",
        type=Path,
        default=REPO / "docs" / "benchmarks.md",
        help="the page whose bench-table markers get the table ('' to leave it alone)",
    )
    ap.add_argument("--no-charts", action="store_true")
    args = ap.parse_args(argv)
    found = load(args.results)
    if not found:
        print(f"no results in {args.results}: run `make bench` first", file=sys.stderr)
        return 1
    rows = rows_of(found)
    images = [] if args.no_charts else charts(found, rows, args.results)
    (args.results / "README.md").write_text(results_readme(found, rows, images))
    print(table(rows))
    if str(args.readme) and args.readme.name:
        if not update_readme(args.readme, rows):
            print(
                f"{args.readme} has no {START} ... {END} markers: its table was not updated", file=sys.stderr
            )
    print(f"\nwrote {args.results / 'README.md'} and {', '.join(images) or 'no charts'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
