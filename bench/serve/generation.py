"""Generation serving benchmark: completion tokens/s and time to the last token of the model server
(``python -m freestack_server``) answering prompts of an instruction-tuned causal LM at concurrency 1 and 8,
against a plain ``model.generate`` loop in-process with the same batching, on the same machine in the same run.

    python -m bench.serve.generation [--size base|small] [--runtime seldon,mlserver] [--requests 64]
                                     [--max-new-tokens 32] [--repeats 5] [--threads 1]
                                     [--out bench/results/serve_generation.json]
    python -m bench.serve.generation --size small --runtime seldon --requests 8 --max-new-tokens 4 \\
        --repeats 1 --out /tmp/g.json                              # smoke run

1. Makes a generation version as the trainer saves one (``CausalLMNet.save_pretrained``, ``save_tokenizer``,
   ``preprocessing.json``) and registers it in a temporary ``file://`` registry: a byte-level BPE tokenizer
   trained on the instruction-tuning tutorial's pairs (``include/demo/instructions.py``) with a ChatML
   template, and a random-weight ``LlamaForCausalLM`` (``--size base``: 4 layers, width 256, 4 heads, MLP
   768; ``small``: 2 layers, width 64). Its weights are drawn at random with logits far apart (greedy answers
   are the same wherever they are computed), and the LM head's rows of the special tokens are zero, so that
   the end of turn is never the likeliest token: every answer runs to ``max_new_tokens``, and both sides do
   the same work.
2. Prompts: ``instruction_pair`` (dates, sums, reversed digits), one user turn each, rendered with the chat
   template; every request asks ``{"max_new_tokens": N, "temperature": 0}`` (greedy).
3. Server side (``--runtime``): the real program started as its image starts it (tests/support/images.py),
   1 worker, ``FREESTACK_TORCH_THREADS`` = ``--threads``, request log off. Clients are threads, each with
   its own keep-alive connection (``http.client``), closed loop: at concurrency c, c clients send the
   ``--requests`` prompts (client k the prompts k, k + c, ...), after one untimed warm-up request each.
   Seldon: ``POST /api/v1.0/predictions`` with ``jsonData``; MLServer: ``/v2/models/<m>/infer`` with the
   prompt in ``args`` and the parameters as ``raw`` inputs (mlserver-huggingface's tensors).
   tokens/s = the completion tokens the server reports / wall seconds from the clients' start to the last
   answer; latency = each request's time to its answer (the last token: answers are not streamed).
   The ``generate`` call size of each answer (``meta.tags.generate_batch`` / ``parameters.generate_batch``)
   is recorded: whether the server really batched.
4. Baseline (in a fresh process a round, in the first runtime's Python, so the same torch and transformers
   as that server): ``AutoModelForCausalLM`` + ``AutoTokenizer`` from the same version folder, a loop over the
   same prompts in batches of c (1, or 8: the most the server's batching can reach): ``apply_chat_template``,
   tokenize with left padding, ``model.generate`` (greedy, the same ``max_new_tokens``), decode; the same
   torch threads. Per batch: its latency (each of its requests'), the completion tokens (up to an end
   token). In the same process, with the same batches: ``inproc_generate``, freestack's own
   ``freestack.ml.lm.sampling.generate`` (what both servers call), a diagnostic that splits a server's gap
   into the generation core's part and the server's own.
5. ``--repeats`` rounds, the order of the sides alternating. Summary per side and concurrency: median
   tokens/s over rounds, p50/p99 latency over every request of every round, tokens per CPU second (the
   server's process group, or the in-process run's); ``ratio`` = side / baseline tokens/s (medians), the
   same within each round, and over CPU seconds (``ratio_cpu``: what other work on the machine moves
   least); ``generate_batch``: how many answers came from ``generate`` calls of each size. Each cell
   records the 1-minute load average and ``others_busy_fraction`` (the share of the cores other processes
   kept busy meanwhile); ``summary.contended_samples`` lists the cells above 10%. Answers are compared:
   every side is greedy on the same weights, so the texts must be equal (``answers_equal``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, busy_cpu_s, host, parser, usable_cores, write_report

SEED = 20261204
MODEL, VERSION = "benchgen", "v1"
RUNTIMES = ("seldon", "mlserver")
PYTHONS = {
    "seldon": REPO / ".venv-serving" / "bin" / "python",
    "mlserver": REPO / ".venv-mlserver" / "bin" / "python",
}
SELDON_ROUTE = "/api/v1.0/predictions"
V2_ROUTE = f"/v2/models/{MODEL}/infer"
CONCURRENCY = (1, 8)
#: the in-process sides: the baseline, and freestack's generate alone (a diagnostic)
INPROC = ("baseline", "inproc_generate")
MAX_LENGTH = 256  # the version's max_length: the prompts are far shorter
CONTENDED = 0.1  # a cell went beside other work when this share of the cores was busy with it
#: seconds a server has to exit after SIGTERM before it is killed: nothing is measured at shutdown, and the
#: mlserver runtime serving a generation version stays up after its shutdown until it is killed
STOP_GRACE_S = 5.0
SIZES = {
    "base": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
    "small": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# ---------------------------------------------------------------------------------------------------------
# the version and the prompts (made once, by the driver)


def make_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on the tutorial's pairs (as bench/train/sft.py's), ChatML template."""
    from bench.train.sft import chat_tokenizer

    return chat_tokenizer(vocab_size, MAX_LENGTH, seed=SEED + 1)


def make_version(work: Path, size: str) -> tuple[str, Path, dict[str, Any]]:
    """Register the benchmark's generation version; (its URI, its registered folder, its figures)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from freestack.ml.lm.causal import CausalLMNet
    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.lm.prompts import save_tokenizer
    from freestack.registry.core import ModelRegistry

    tok = make_tokenizer()
    ids = {
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.pad_token_id,
    }
    config = LlamaConfig(
        **SIZES[size],
        vocab_size=len(tok),
        max_position_embeddings=2 * MAX_LENGTH,
        tie_word_embeddings=False,
        **ids,
    )
    torch.manual_seed(SEED)
    lm = LlamaForCausalLM(config).eval()
    # random weights with logits far apart (normal, 4 / sqrt(width); the norms kept): greedy answers do not
    # hinge on float32 rounding, so padded batches answer as prompts alone do
    draw = torch.Generator().manual_seed(SEED)
    scale = 4.0 / SIZES[size]["hidden_size"] ** 0.5
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=draw) * scale)
        # the special tokens' logits are 0, below the best of the others': no answer ends before max_new_tokens
        for token in SPECIALS:
            lm.lm_head.weight[tok.convert_tokens_to_ids(token)] = 0.0
    columns = ChatColumns()
    src = work / "version"
    net = CausalLMNet(
        lm, base={"name": "bench-random-llama", "folder": str(src)}, columns=columns, max_length=MAX_LENGTH
    )
    net.save_pretrained(src)
    save_tokenizer(tok, src)
    pre = {
        "task": "generation",
        "features": [columns.input_column],
        "target": "response",
        "classes": [],
        "chat": {
            "columns": {"prompt": "prompt", "response": "response", "messages": None, "system": None},
            "max_length": MAX_LENGTH,
            "packing": False,
        },
    }
    (src / "preprocessing.json").write_text(json.dumps(pre))
    (src / "lineage.json").write_text(json.dumps({"pipeline": MODEL, "model": MODEL}))
    root = (work / "storage").as_uri()
    uri = ModelRegistry(root, MODEL).register(src.as_uri(), VERSION)
    figures = {
        "parameters": sum(p.numel() for p in lm.parameters()),
        "vocab": len(tok),
        "config": SIZES[size],
        "weights": f"normal(0, {scale:.3g}) except the norms; LM head rows of {', '.join(SPECIALS)} zero",
    }
    return uri, work / "storage" / "registry" / MODEL / VERSION, figures


def make_prompts(n: int) -> list[str]:
    from bench.train.sft import pairs

    return [row["prompt"] for row in pairs(n, SEED)]


def prompt_tokens(folder: Path, prompts: list[str]) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return [
        len(
            tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True, return_dict=True
            )["input_ids"]
        )
        for p in prompts
    ]


# ---------------------------------------------------------------------------------------------------------
# the baseline: a plain model.generate loop (a child process, the serving environment's Python)


def _quantiles(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p99_ms": None}
    xs = sorted(latencies)

    def q(p: float) -> float:  # linear interpolation between the closest ranks (numpy's default)
        k = (len(xs) - 1) * p
        lo = int(k)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    return {"p50_ms": round(q(0.5) * 1000, 2), "p99_ms": round(q(0.99) * 1000, 2)}


def _others(busy0: float | None, busy1: float | None, own_cpu: float, wall: float) -> float | None:
    """The share of the cores other processes kept busy: the machine's busy CPU seconds minus ours."""
    if busy0 is None or busy1 is None or wall <= 0:
        return None
    return round(max(0.0, (busy1 - busy0) - own_cpu) / (wall * usable_cores()), 3)


def child_inproc(args: argparse.Namespace) -> None:
    """The in-process sides, in the order of ``--modes``, in this one process (the model loaded once):
    ``baseline`` (plain transformers) and ``inproc_generate`` (freestack's ``generate``, what the servers call)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    folder = args.folder
    spec = json.loads(Path(args.prompts_file).read_text())
    prompts, warm, n_new = spec["prompts"], spec["warm"], spec["max_new_tokens"]
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])

    def plain(batch: list[str]) -> tuple[list[str], list[int]]:
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in batch
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=n_new,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=sorted(eos),
            )
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        kept = [row[: next((i for i, t in enumerate(row) if t in eos), len(row))] for row in new]
        return [tok.decode(row, skip_special_tokens=True).strip() for row in kept], [len(row) for row in kept]

    answerers = {"baseline": plain}
    if "inproc_generate" in args.modes:
        from freestack.ml.lm.answers import GenerationSettings
        from freestack.ml.lm.prompts import load_tokenizer
        from freestack.ml.lm.sampling import generate

        ftok = load_tokenizer(folder)
        config = json.loads((Path(folder) / "generation_config.json").read_text())
        settings = GenerationSettings(max_new_tokens=n_new, max_prompt_tokens=MAX_LENGTH)

        def freestack_generate(batch: list[str]) -> tuple[list[str], list[int]]:
            done = generate(model, ftok, [[{"role": "user", "content": p}] for p in batch], settings, config)
            return [d.text for d in done], [d.completion_tokens for d in done]

        answerers["inproc_generate"] = freestack_generate

    sides: dict[str, dict[str, Any]] = {}
    for mode in args.modes:
        answer, cells = answerers[mode], {}
        for c in args.concurrency:
            answer(warm[:c])  # untimed: the first call's one-time costs
            latencies, tokens, texts = [], 0, []
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            busy0, cpu0, t0 = busy_cpu_s(), time.process_time(), time.perf_counter()
            for i in range(0, len(prompts), c):
                start = time.perf_counter()
                got, counts = answer(prompts[i : i + c])
                took = time.perf_counter() - start
                latencies += [took] * len(got)  # each request of the batch waits for the whole batch
                tokens += sum(counts)
                texts += got
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            cells[f"c{c}"] = {
                "requests": len(prompts),
                "batches": -(-len(prompts) // c),
                "completion_tokens": tokens,
                "wall_s": round(wall, 4),
                "tokens_per_s": round(tokens / wall, 2),
                "cpu_s": round(cpu, 4),
                "tokens_per_cpu_s": round(tokens / cpu, 2) if cpu else None,
                **_quantiles(latencies),
                "latencies_ms": [round(x * 1000, 2) for x in latencies],
                "texts": texts,
                "loadavg_1m_before": load,
                "others_busy_fraction": _others(busy0, busy_cpu_s(), cpu, wall),
            }
        sides[mode] = cells
    import transformers

    print(
        json.dumps(
            {
                "sides": sides,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


def measure_inproc(
    python: Path, folder: Path, spec_file: Path, modes: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """One fresh process in ``python`` running the in-process ``modes`` in turn."""
    cmd = [
        str(python),
        "-m",
        "bench.serve.generation",
        "--child",
        "inproc",
        "--modes",
        ",".join(modes),
        "--folder",
        str(folder),
        "--prompts-file",
        str(spec_file),
        "--threads",
        str(args.threads),
        "--concurrency",
        ",".join(map(str, args.concurrency)),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREESTACK_", "PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins")])
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the in-process run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------------
# the server side


def seldon_body(prompt: str, n_new: int) -> bytes:
    return json.dumps(
        {"jsonData": {"prompt": prompt, "parameters": {"max_new_tokens": n_new, "temperature": 0}}}
    ).encode()


def v2_body(prompt: str, n_new: int) -> bytes:
    """mlserver-huggingface's request: the prompt in ``args``, the parameters as raw inputs."""
    return json.dumps(
        {
            "inputs": [
                {"name": "args", "datatype": "BYTES", "shape": [1], "data": [prompt]},
                {
                    "name": "max_new_tokens",
                    "datatype": "INT32",
                    "shape": [1],
                    "data": [n_new],
                    "parameters": {"content_type": "raw"},
                },
                {
                    "name": "temperature",
                    "datatype": "FP32",
                    "shape": [1],
                    "data": [0.0],
                    "parameters": {"content_type": "raw"},
                },
            ]
        }
    ).encode()


def parse_answer(runtime: str, body: dict[str, Any]) -> tuple[str, int, int, str]:
    """(text, completion tokens, generate batch, finish reason) of a server's answer."""
    if runtime == "seldon":
        (c,) = body["jsonData"]["completions"]
        return c["text"], c["completion_tokens"], body["meta"]["tags"]["generate_batch"], c["finish_reason"]
    (out,) = body["outputs"]
    c = json.loads(out["data"][0])
    return (
        c["generated_text"],
        c["completion_tokens"],
        body["parameters"]["generate_batch"],
        c["finish_reason"],
    )


def start_server(runtime: str, uri: str, work: Path, threads: int):
    from tests.support.images import start_like_image

    env = {
        "FREESTACK_MODEL_NAME": MODEL,
        "FREESTACK_MODEL_VERSION": VERSION,
        "FREESTACK_SERVER_WORKERS": "1",
        "FREESTACK_TORCH_THREADS": str(threads),
        "FREESTACK_HOME": str(work),
        "FREESTACK_REQUEST_LOG_RATE": "0",
        "FREESTACK_GENERATION_BATCH_PROMPTS": str(max(CONCURRENCY)),
    }
    ready = f"/v2/models/{MODEL}/ready" if runtime == "mlserver" else "/health/status"
    return start_like_image(runtime, uri, work / runtime, env=env, ready_path=ready, timeout=300), env


def measure_server(
    runtime: str, server, prompts: list[str], warm: list[str], c: int, n_new: int
) -> dict[str, Any]:
    """c client threads, each with its own keep-alive connection, closed loop over its share of ``prompts``."""
    from bench.serve.run import _group_cpu

    route, body = (SELDON_ROUTE, seldon_body) if runtime == "seldon" else (V2_ROUTE, v2_body)
    results: list[list[tuple[int, float, str, int, int, str]]] = [[] for _ in range(c)]
    errors: list[str] = []
    ready = threading.Barrier(c + 1)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)

        def ask(prompt: str) -> tuple[str, int, int, str]:
            conn.request(
                "POST", route, body=body(prompt, n_new), headers={"Content-Type": "application/json"}
            )
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
            return parse_answer(runtime, json.loads(data))

        try:
            ask(warm[k % len(warm)])  # untimed: the connection opened, the worker warm
        except Exception as exc:  # noqa: BLE001 - reported by the driver
            errors.append(f"client {k} warm-up: {exc}")
        try:
            ready.wait(timeout=600)
            for i in range(k, len(prompts), c):
                start = time.perf_counter()
                text, tokens, batch, reason = ask(prompts[i])
                results[k].append((i, time.perf_counter() - start, text, tokens, batch, reason))
        except Exception as exc:  # noqa: BLE001 - reported by the driver
            errors.append(f"client {k}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(c)]
    for t in threads:
        t.start()
    ready.wait(timeout=600)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy0, srv0, own0, t0 = (
        busy_cpu_s(),
        sum(_group_cpu(server.proc.pid)),
        time.process_time(),
        time.perf_counter(),
    )
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    srv, own = sum(_group_cpu(server.proc.pid)) - srv0, time.process_time() - own0
    if errors:
        raise SystemExit(f"{runtime} at concurrency {c}: {errors[:3]}\n{server.log()[-3000:]}")
    done = sorted(r for rs in results for r in rs)
    tokens = sum(r[3] for r in done)
    batches: dict[str, int] = {}
    for r in done:
        batches[str(r[4])] = batches.get(str(r[4]), 0) + 1
    return {
        "requests": len(done),
        "completion_tokens": tokens,
        "wall_s": round(wall, 4),
        "tokens_per_s": round(tokens / wall, 2),
        "cpu_s": round(srv, 4),
        "tokens_per_cpu_s": round(tokens / srv, 2) if srv else None,
        "client_cpu_s": round(own, 4),
        **_quantiles([r[1] for r in done]),
        "latencies_ms": [round(r[1] * 1000, 2) for r in done],
        "generate_batch": dict(sorted(batches.items(), key=lambda kv: int(kv[0]))),
        "finish_reasons": sorted({r[5] for r in done}),
        "texts": [r[2] for r in done],
        "loadavg_1m_before": load,
        "others_busy_fraction": _others(busy0, busy_cpu_s(), srv + own, wall),
    }


def scrape_counters(server) -> dict[str, float]:
    """The server's generation counters (Seldon's Prometheus port), summed over their labels."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
            lines = r.read().decode().splitlines()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in lines:
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in (
            "freestack_generate_batched_requests_total",
            "freestack_completion_tokens_total",
            "freestack_prompt_tokens_total",
        ):
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


# ---------------------------------------------------------------------------------------------------------
# the report


def _median_or_none(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def summarise(samples: list[dict[str, Any]], sides: list[str], concurrency: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "statistic": "tokens/s: median over rounds; p50/p99: over every request of every round; "
        "ratio = server / baseline tokens/s (medians), ratio_by_round within each round"
    }
    by = {(s["side"], s["cell"], s["round"]): s for s in samples}
    rounds = sorted({s["round"] for s in samples})
    for side in sides:
        row = {}
        for c in concurrency:
            cell = f"c{c}"
            ss = [by[(side, cell, r)] for r in rounds if (side, cell, r) in by]
            lat = [x / 1000 for s in ss for x in s["latencies_ms"]]
            r = {
                "tokens_per_s": round(statistics.median(s["tokens_per_s"] for s in ss), 2),
                "tokens_per_s_by_round": [s["tokens_per_s"] for s in ss],
                **_quantiles(lat),
                # None where no round measured any CPU time (a cell of a few ms: /proc counts 10 ms ticks)
                "tokens_per_cpu_s": _median_or_none(
                    [s["tokens_per_cpu_s"] for s in ss if s["tokens_per_cpu_s"]]
                ),
                "completion_tokens_per_request": round(
                    sum(s["completion_tokens"] for s in ss) / sum(s["requests"] for s in ss), 2
                ),
                "requests": sum(s["requests"] for s in ss),
            }
            if side in RUNTIMES:
                hist: dict[str, int] = {}
                for s in ss:
                    for k, v in s["generate_batch"].items():
                        hist[k] = hist.get(k, 0) + v
                r["generate_batch"] = dict(sorted(hist.items(), key=lambda kv: int(kv[0])))
                r["mean_generate_batch"] = round(
                    sum(int(k) * v for k, v in hist.items()) / sum(hist.values()), 2
                )
            row[cell] = r
        out[side] = row
    base = out.get("baseline", {})
    for side in sides:
        if side == "baseline":
            continue
        for c in concurrency:
            cell, r = f"c{c}", out[side][f"c{c}"]
            b = base[cell]
            r["ratio"] = round(r["tokens_per_s"] / b["tokens_per_s"], 3)
            per = [
                round(by[(side, cell, k)]["tokens_per_s"] / by[("baseline", cell, k)]["tokens_per_s"], 3)
                for k in rounds
                if (side, cell, k) in by and ("baseline", cell, k) in by
            ]
            r["ratio_by_round"] = per
            r["ratio_same_round_median"] = round(statistics.median(per), 3) if per else None
            cpu_pair = (r["tokens_per_cpu_s"], b["tokens_per_cpu_s"])
            r["ratio_cpu"] = round(cpu_pair[0] / cpu_pair[1], 3) if all(cpu_pair) else None
            r["p50_ratio"] = round(r["p50_ms"] / b["p50_ms"], 3) if b["p50_ms"] else None
            r["p99_ratio"] = round(r["p99_ms"] / b["p99_ms"], 3) if b["p99_ms"] else None
            texts = [
                (by[(side, cell, k)]["texts"], by[("baseline", cell, k)]["texts"])
                for k in rounds
                if (side, cell, k) in by and ("baseline", cell, k) in by
            ]
            pairs_ = [(a, b) for srv, bl in texts for a, b in zip(srv, bl, strict=True)]
            r["answers_equal"] = round(sum(a == b for a, b in pairs_) / len(pairs_), 3) if pairs_ else None
    busy = {f"{s['side']} {s['cell']} #{s['round']}": s.get("others_busy_fraction") or 0 for s in samples}
    out["contended_samples"] = [k for k, v in busy.items() if v > CONTENDED]
    out["contended_rule"] = (
        f"other processes kept more than {CONTENDED:.0%} of the cores busy during the cell"
    )
    out["others_busy_fraction_median"] = round(statistics.median(busy.values()), 3) if busy else None
    return out


def _versions(python: Path) -> dict[str, str]:
    """The libraries of a serving environment that the figures depend on."""
    code = (
        "import importlib.metadata as m, json\nout = {}\nfor p in ('torch', 'transformers', 'tokenizers', "
        "'seldon-core', 'mlserver'):\n    try:\n        out[p] = m.version(p)\n    except m.PackageNotFoundError:\n"
        "        pass\nprint(json.dumps(out))"
    )
    got = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    return json.loads(got.stdout) if got.returncode == 0 and got.stdout.strip() else {}


def print_table(report: dict[str, Any]) -> None:
    s, p = report["summary"], report["params"]
    print(
        f"\nGeneration serving ({p['model']}, {p['threads']} torch thread(s), {p['max_new_tokens']} new tokens, "
        f"{p['requests']} requests a cell, {p['repeats']} round(s))"
    )
    print(
        f"{'side':<16} {'cell':<5} {'tok/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'tok/cpu-s':>9} {'ratio':>6} {'batches':>20}"
    )
    for side in [*p["runtimes"], *INPROC[::-1]]:
        for cell, r in s[side].items():
            print(
                f"{side:<16} {cell:<5} {r['tokens_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                f"{r['tokens_per_cpu_s'] or 0:>9.1f} {r.get('ratio', ''):>6} {json.dumps(r.get('generate_batch', '')):>20}"
            )
    print(f"contended cells: {s['contended_samples'] or 'none'}")


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.serve.generation", __doc__, out="serve_generation.json", workdir=True)
    ap.add_argument("--size", choices=list(SIZES), default="base")
    ap.add_argument(
        "--runtime", default=",".join(RUNTIMES), help="comma-separated subset of " + ",".join(RUNTIMES)
    )
    ap.add_argument("--requests", type=int, default=64, help="measured requests a cell (at each concurrency)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="rounds (the order of the sides alternating)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads: the server's worker and the baseline"
    )
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per in-process run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", help=argparse.SUPPRESS)
    ap.add_argument("--modes", default=",".join(INPROC), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    if args.child == "inproc":
        args.modes = [m for m in args.modes.split(",") if m]
        child_inproc(args)
        return 0
    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    if not runtimes or set(runtimes) - set(RUNTIMES):
        ap.error(f"--runtime must be a subset of {','.join(RUNTIMES)}")
    for r in runtimes:
        if not PYTHONS[r].exists():
            ap.error(
                f"{PYTHONS[r]} is missing: run `make {'serving' if r == 'seldon' else 'mlserver'}-venv` first"
            )
    if max(args.concurrency) > 8:
        ap.error(
            "the server batches at most 8 prompts a generate call here (deploy.generation.batch_prompts)"
        )
    # the in-process sides run the same torch and transformers as the first runtime's server
    inproc_python = PYTHONS[runtimes[0]]

    own = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="freestack-bench-generation-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(work / "airflow"))
    servers: dict[str, Any] = {}
    try:
        uri, folder, figures = make_version(work, args.size)
        n_warm = max(args.concurrency)
        all_prompts = make_prompts(args.requests + n_warm)
        warm, prompts = all_prompts[:n_warm], all_prompts[n_warm:]
        spec_file = work / "prompts.json"
        spec_file.write_text(
            json.dumps({"prompts": prompts, "warm": warm, "max_new_tokens": args.max_new_tokens})
        )
        lengths = prompt_tokens(folder, prompts)
        print(
            f"version {uri} ({figures['parameters'] / 1e6:.2f}M parameters); {len(prompts)} prompts of "
            f"{min(lengths)}-{max(lengths)} tokens; runtimes {', '.join(runtimes)}",
            flush=True,
        )
        settings = {}
        for r in runtimes:
            started = time.perf_counter()
            servers[r], settings[r] = start_server(r, uri, work, args.threads)
            print(f"{r} ready in {time.perf_counter() - started:.1f} s", flush=True)
        order = [*runtimes, "inproc"]  # the in-process sides: one fresh process a round
        samples: list[dict[str, Any]] = []
        for k in range(args.repeats):
            for side in order if k % 2 == 0 else order[::-1]:
                if side == "inproc":
                    modes = list(INPROC if k % 2 == 0 else INPROC[::-1])
                    got = measure_inproc(inproc_python, folder, spec_file, modes, args)
                    inproc_libs = {key: got[key] for key in ("torch", "transformers", "threads")}
                    cells = [
                        (mode, f"c{c}", got["sides"][mode][f"c{c}"])
                        for mode in modes
                        for c in args.concurrency
                    ]
                else:
                    cells = [
                        (
                            side,
                            f"c{c}",
                            measure_server(side, servers[side], prompts, warm, c, args.max_new_tokens),
                        )
                        for c in args.concurrency
                    ]
                for name, cell, s in cells:
                    samples.append({"side": name, "cell": cell, "round": k, **s})
                    print(
                        f"  round {k + 1} {name:<15} {cell:<4} {s['tokens_per_s']:>8.1f} tok/s  p50 {s['p50_ms']} ms  "
                        f"p99 {s['p99_ms']} ms  batches {s.get('generate_batch', '-')}  "
                        f"others busy {s['others_busy_fraction']}",
                        flush=True,
                    )
        counters = {r: scrape_counters(servers[r]) for r in runtimes if r == "seldon"}
    finally:
        for srv in servers.values():
            srv.stop(timeout=STOP_GRACE_S)
    summary = summarise(samples, [*runtimes, *INPROC], args.concurrency)
    for s in samples:  # compared in the summary (answers_equal): random weights answer bytes, not words
        del s["texts"]
    params = {
        "size": args.size,
        "model": f"LlamaForCausalLM, random weights, {figures['parameters'] / 1e6:.2f}M parameters",
        "parameters": figures["parameters"],
        "config": figures["config"],
        "vocab": figures["vocab"],
        "weights": figures["weights"],
        "device": "cpu",
        "dtype": "torch.float32",
        "threads": args.threads,
        "runtimes": runtimes,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "repeats": args.repeats,
        "max_new_tokens": args.max_new_tokens,
        "temperature": 0,
        "prompts": {
            "source": "include/demo/instructions.py instruction_pair, one user turn, ChatML",
            "count": len(prompts),
            "prompt_tokens_min": min(lengths),
            "prompt_tokens_max": max(lengths),
            "prompt_tokens_mean": round(sum(lengths) / len(lengths), 2),
            "examples": prompts[:4],
        },
        "servers": {
            r: {
                "command": "python -m freestack_server as its image starts it (tests/support/images.py)",
                "settings": {k: v for k, v in settings[r].items() if k != "FREESTACK_HOME"},
                "route": SELDON_ROUTE if r == "seldon" else V2_ROUTE,
            }
            for r in runtimes
        },
        "clients": "one thread and one keep-alive http.client connection per client, closed loop; client k of c "
        "sends prompts k, k + c, ...; one untimed warm-up request each",
        "baseline": "AutoModelForCausalLM + AutoTokenizer of the same folder in a fresh process (the first runtime's "
        "Python), apply_chat_template, left padding, model.generate(do_sample=False), decode; batches "
        "of c prompts in order",
        "inproc_generate": "diagnostic: freestack.ml.lm.sampling.generate (what both servers call) on the same model "
        "object, in the same process as the baseline and with the same batches: the gap between "
        "it and a server is the server's, between it and the baseline the generation core's",
        "inproc_env": inproc_libs,
        "tokens": "completion tokens as each side counts them (the server's completion_tokens); every answer runs "
        "to max_new_tokens by construction",
    }
    machine = {**host(), **{f"{r}_env": _versions(PYTHONS[r]) for r in runtimes}}
    report = {
        "name": "serve_generation",
        "machine": machine,
        "params": params,
        "samples": samples,
        "server_counters": counters,
        "summary": summary,
    }
    out = write_report(report, args.out, indent=1)
    if own:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print_table(report)
    print(f"\nreport: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
