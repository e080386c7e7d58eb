"""OpenAI serving benchmark: the model server's ``/v1/chat/completions`` (``python -m freestack_server``,
runtime ``mlserver``, transformers' continuous batching) against ``transformers serve`` itself, on the same
model, machine and prompts, in one run; with the server's direct runtime call and a plain ``generate`` loop.

    python -m bench.serve.openai [--size base|small] [--requests 64] [--max-new-tokens 32] [--repeats 4]
                                 [--threads 1] [--concurrency 1,8,32] [--floods 1]
                                 [--out bench/results/serve_openai.json]
    python -m bench.serve.openai --size small --requests 8 --max-new-tokens 4 --repeats 1 \\
        --concurrency 1,4 --floods 1 --flood-new-tokens 16 --out /tmp/o.json          # smoke run

The version, its prompts and the plain loop are bench/serve/generation.py's (imported: a random-weight
Llama whose special tokens never win, so every answer runs to ``max_new_tokens`` on every side). Sides:

- ``transformers_serve``: ``transformers serve <version folder> --continuous-batching`` of the
  ``mlserver`` environment (the same torch and transformers as the model server), on 127.0.0.1, cpu,
  float32, ``OMP_NUM_THREADS`` = ``--threads``, its KV cache and step sizes the model server's
  (``--cb-block-size``, ``--cb-num-blocks``, ``--cb-max-batch-tokens``), log level ``error``;
  streaming ``POST /v1/chat/completions``.
- ``freestack_openai``: the model server started as its image starts it (tests/support/images.py), 1
  worker, ``FREESTACK_TORCH_THREADS`` = ``--threads``, request log off; the same streaming route.
- ``freestack_openai_whole``: the same route answered whole (``stream: false``): the same work as
  ``freestack_v2``.
- ``freestack_v2``: the same server's direct runtime call, ``/v2/models/<m>/infer`` with
  mlserver-huggingface's tensors (one prompt a request, not streamed).
- ``baseline``: the plain ``model.generate`` loop in a fresh process (batches of c prompts).

Every request is greedy (temperature 0) with the same ``max_tokens``. Clients are threads, each with its
own keep-alive connection (``http.client``), closed loop: at concurrency c, c clients send the
``--requests`` prompts (client k the prompts k, k + c, ...) after one untimed warm-up request each.
Streaming chat asks ``stream_options.include_usage``: completion tokens are the usage's; time to first
token (TTFT) is the time to the first chunk with content; latency, to the end of the stream. Per side and
concurrency: completion tokens/s (median over rounds), TTFT and latency p50/p99 (every request of every
round). Ratios: ``freestack_openai`` / ``transformers_serve`` tokens/s (targets >= 1.0 at c=32, >= 0.9
at c=1), ``freestack_openai_whole`` / ``freestack_v2`` (the OpenAI route against the direct call for the
same work: target >= 0.95; ``openai_stream_vs_v2``, streamed, is reported), each side / ``baseline``; and the
share of equal answers (greedy on the same weights; a trailing half character that a streaming decoder
holds back is not a difference). ``--repeats`` rounds: at each concurrency the server sides one
after another (what other work on the machine does, it does to all of them), their order alternating
between rounds; the plain loop first or last.

Flood (``--floods`` times a round): one request of the deployment's largest size on the V2 path (the
most prompts a request may carry, ``generation.max_prompts_per_request``, each at the bound
``generation.max_new_tokens``) and meanwhile 1-prompt streaming chat requests one after another until
it is answered; their latency p99 against the same requests' latency on the idle server (target <= 2x).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import busy_cpu_s, free_port, host, parser, write_report
from bench.serve.generation import (
    MAX_LENGTH,
    MODEL,
    PYTHONS,
    SIZES,
    STOP_GRACE_S,
    V2_ROUTE,
    VERSION,
    _others,
    _quantiles,
    _versions,
    make_prompts,
    make_version,
    measure_inproc,
    parse_answer,
    prompt_tokens,
    v2_body,
)

SIDES = ("transformers_serve", "freestack_openai", "freestack_openai_whole", "freestack_v2", "baseline")
SERVERS = ("transformers_serve", "freestack")
CONCURRENCY = (1, 8, 32)
CHAT_ROUTE = "/v1/chat/completions"
PYTHON = PYTHONS["mlserver"]
TRANSFORMERS_CLI = PYTHON.parent / "transformers"
#: the model server's continuous batching bounds (deploy.generation), given to both servers
BOUNDS = {"kv_cache_tokens": 16384, "max_batch_tokens": 1024, "page_tokens": 256}
#: the deployment's request bounds: the flood's request is the largest these allow
MAX_NEW_TOKENS_BOUND = 256
MAX_PROMPTS_PER_REQUEST = 16
TARGETS = {"vs_transformers_serve_c32": 1.0, "vs_transformers_serve_c1": 0.9, "openai_vs_v2": 0.95}
FLOOD_TARGET = 2.0


@dataclass
class Answer:
    """One request's timing and answer (TTFT is None where the answer is not streamed)."""

    index: int
    latency_s: float
    ttft_s: float | None
    text: str
    tokens: int
    finish: str | None


@dataclass
class Chat:
    """How a side's streaming chat requests are sent: its server's port and the ``model`` it names."""

    port: int
    model: str
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# requests


def chat_body(chat: Chat, prompt: str, n_new: int) -> bytes:
    return json.dumps(
        {
            "model": chat.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": n_new,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            **chat.extra,
        }
    ).encode()


def stream_chat(conn: http.client.HTTPConnection, body: bytes, index: int = 0) -> Answer:
    """One streaming chat completion: the time to its first content chunk and to its end, its text, and
    the completion tokens of its usage chunk."""
    start = time.perf_counter()
    conn.request("POST", CHAT_ROUTE, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    first, parts, tokens, finish = None, [], 0, None
    while line := r.readline():
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            raise RuntimeError(f"stream error: {event['error']}")
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                first = first or time.perf_counter()
                parts.append(content)
            finish = choice.get("finish_reason") or finish
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
    r.read()  # the end of the chunked body: the connection is ready for the next request
    end = time.perf_counter()
    return Answer(
        index, end - start, (first - start) if first else None, "".join(parts).strip(), tokens, finish
    )


def whole_chat(conn: http.client.HTTPConnection, body: bytes, index: int = 0) -> Answer:
    """One chat completion answered whole (``stream: false``): the same work as a V2 call."""
    start = time.perf_counter()
    conn.request("POST", CHAT_ROUTE, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
    answer = json.loads(data)
    choice = answer["choices"][0]
    text, tokens = choice["message"]["content"].strip(), answer["usage"]["completion_tokens"]
    return Answer(index, time.perf_counter() - start, None, text, tokens, choice["finish_reason"])


def v2_call(conn: http.client.HTTPConnection, body: bytes, index: int = 0) -> Answer:
    """One direct runtime call (V2 infer, not streamed): its latency and answer."""
    start = time.perf_counter()
    conn.request("POST", V2_ROUTE, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
    text, tokens, _, finish = parse_answer("mlserver", json.loads(data))
    return Answer(index, time.perf_counter() - start, None, text, tokens, finish)


# ---------------------------------------------------------------------------------------------------------
# the servers


def start_transformers_serve(folder: Path, work: Path, threads: int):
    """``transformers serve`` on the version's folder, continuous batching with the model server's bounds."""
    from tests.support.images import ImageServer, _wait_ready

    port = free_port()
    argv = [
        str(TRANSFORMERS_CLI),
        "serve",
        str(folder),
        "--continuous-batching",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--cb-block-size",
        str(BOUNDS["page_tokens"]),
        "--cb-num-blocks",
        str(BOUNDS["kv_cache_tokens"] // BOUNDS["page_tokens"]),
        "--cb-max-batch-tokens",
        str(BOUNDS["max_batch_tokens"]),
        "--log-level",
        "error",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREESTACK_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"})
    log_path = work / f"transformers-serve-{port}.log"
    work.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=str(work), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = ImageServer(proc, port, port, port, log_path)
    _wait_ready(server, "/health", 300)
    return server, argv[1:]


def start_freestack(uri: str, work: Path, threads: int, running_per_request: int = 4):
    """The model server (runtime ``mlserver``) as its image starts it, with the same bounds."""
    from tests.support.images import start_like_image

    env = {
        "FREESTACK_MODEL_NAME": MODEL,
        "FREESTACK_MODEL_VERSION": VERSION,
        "FREESTACK_SERVER_WORKERS": "1",
        "FREESTACK_TORCH_THREADS": str(threads),
        "FREESTACK_HOME": str(work),
        "FREESTACK_REQUEST_LOG_RATE": "0",
        "FREESTACK_GENERATION_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS_BOUND),
        "FREESTACK_GENERATION_MAX_PROMPTS_PER_REQUEST": str(MAX_PROMPTS_PER_REQUEST),
        "FREESTACK_GENERATION_KV_CACHE_TOKENS": str(BOUNDS["kv_cache_tokens"]),
        "FREESTACK_GENERATION_MAX_BATCH_TOKENS": str(BOUNDS["max_batch_tokens"]),
        "FREESTACK_GENERATION_MAX_RUNNING_PER_REQUEST": str(running_per_request),
    }
    ready = f"/v2/models/{MODEL}/ready"
    return start_like_image("mlserver", uri, work / "mlserver", env=env, ready_path=ready, timeout=300), env


def start_sides(
    servers: dict[str, Any], uri: str, folder: Path, work: Path, args
) -> tuple[list[str], dict[str, str]]:
    """``transformers serve`` then the model server, each start-up alone on the machine (the times printed),
    or with ``--start-together`` both at once (a smoke run's shortcut). Every server that came up goes
    into ``servers`` (the caller stops them), even when the other failed."""
    starts = {
        "transformers_serve": lambda: start_transformers_serve(folder, work / "ts", args.threads),
        "freestack": lambda: start_freestack(uri, work, args.threads, args.running_per_request),
    }

    def timed(name: str):
        started = time.perf_counter()
        got = starts[name]()
        print(f"{name.replace('_', ' ')} ready in {time.perf_counter() - started:.1f} s", flush=True)
        return got

    with ThreadPoolExecutor(max_workers=2 if args.start_together else 1) as pool:
        futures = {name: pool.submit(timed, name) for name in starts}
    failed = [f.exception() for f in futures.values() if f.exception() is not None]
    for name, f in futures.items():
        if f.exception() is None:
            servers[name] = f.result()[0]
    if failed:
        raise failed[0]
    return futures["transformers_serve"].result()[1], futures["freestack"].result()[1]


# ---------------------------------------------------------------------------------------------------------
# one cell: c closed-loop clients


def run_clients(port: int, ask, prompts: list[str], warm: list[str], c: int) -> tuple[list[Answer], float]:
    """c client threads, each with its own keep-alive connection, closed loop over its share of ``prompts``;
    (the answers in prompt order, wall seconds from the clients' start to the last answer)."""
    results: list[list[Answer]] = [[] for _ in range(c)]
    errors: list[str] = []
    ready = threading.Barrier(c + 1)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            ask(conn, warm[k % len(warm)], -1)  # untimed: the connection opened, the server warm
            ready.wait(timeout=600)
            for i in range(k, len(prompts), c):
                results[k].append(ask(conn, prompts[i], i))
        except Exception as exc:  # noqa: BLE001 - reported by the driver
            errors.append(f"client {k}: {exc!r}")
            ready.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(c)]
    for t in threads:
        t.start()
    try:
        ready.wait(timeout=600)
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"concurrency {c}: {errors[:3]}")
    return sorted((a for rs in results for a in rs), key=lambda a: a.index), time.perf_counter() - t0


def measure_http(side: str, server, asker, prompts: list[str], warm: list[str], c: int) -> dict[str, Any]:
    """One cell of an HTTP side: tokens/s, TTFT and latency quantiles, CPU seconds of the server."""
    from bench.serve.run import _group_cpu

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy0, srv0, own0 = busy_cpu_s(), sum(_group_cpu(server.proc.pid)), time.process_time()
    try:
        done, wall = run_clients(server.port, asker, prompts, warm, c)
    except RuntimeError as exc:
        raise SystemExit(f"{side}: {exc}\n{server.log()[-3000:]}") from None
    srv, own = sum(_group_cpu(server.proc.pid)) - srv0, time.process_time() - own0
    tokens = sum(a.tokens for a in done)
    ttft = [a.ttft_s for a in done if a.ttft_s is not None]
    q_ttft = _quantiles(ttft) if ttft else {"p50_ms": None, "p99_ms": None}
    return {
        "requests": len(done),
        "completion_tokens": tokens,
        "wall_s": round(wall, 4),
        "tokens_per_s": round(tokens / wall, 2),
        "cpu_s": round(srv, 4),
        "tokens_per_cpu_s": round(tokens / srv, 2) if srv else None,
        "client_cpu_s": round(own, 4),
        **_quantiles([a.latency_s for a in done]),
        "ttft_p50_ms": q_ttft["p50_ms"],
        "ttft_p99_ms": q_ttft["p99_ms"],
        "latencies_ms": [round(a.latency_s * 1000, 2) for a in done],
        "ttft_ms": [round(x * 1000, 2) for x in ttft],
        "finish_reasons": sorted({str(a.finish) for a in done}),
        "texts": [a.text for a in done],
        "loadavg_1m_before": load,
        "others_busy_fraction": _others(busy0, busy_cpu_s(), srv + own, wall),
    }


# ---------------------------------------------------------------------------------------------------------
# the flood: the largest request running, 1-prompt requests meanwhile


def flood_body(prompts: list[str], n_new: int) -> bytes:
    """The deployment's largest V2 request: ``len(prompts)`` prompts, ``n_new`` new tokens each."""
    body = json.loads(v2_body(prompts[0], n_new))
    body["inputs"][0].update(shape=[len(prompts)], data=prompts)
    return json.dumps(body).encode()


def measure_flood(server, chat: Chat, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """1-prompt streaming chats one after another, on the idle server and beside the largest request."""
    small = prompts[: args.flood_probes]
    many = [prompts[i % len(prompts)] for i in range(MAX_PROMPTS_PER_REQUEST)]
    big = flood_body(many, args.flood_new_tokens)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    ask = lambda p, i: stream_chat(conn, chat_body(chat, p, args.max_new_tokens), i)  # noqa: E731
    ask(small[0], -1)
    idle = [ask(p, i) for i, p in enumerate(small)]
    busy: list[Answer] = []
    flood: dict[str, Any] = {}

    def big_request() -> None:
        big_conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        start = time.perf_counter()
        big_conn.request("POST", V2_ROUTE, body=big, headers={"Content-Type": "application/json"})
        r = big_conn.getresponse()
        data = r.read()
        flood["latency_s"], flood["status"] = time.perf_counter() - start, r.status
        if r.status == 200:
            outs = json.loads(data)
            flood["completion_tokens"] = sum(
                json.loads(x)["completion_tokens"] for x in outs["outputs"][0]["data"]
            )
        big_conn.close()

    t = threading.Thread(target=big_request, daemon=True)
    t.start()
    time.sleep(0.05)  # the big request is in the batch first
    i = 0
    while t.is_alive() or len(busy) < 2:
        busy.append(ask(small[i % len(small)], i))
        i += 1
    t.join()
    conn.close()
    return {"idle": [a.latency_s for a in idle], "busy": [a.latency_s for a in busy], "flood": flood}


def flood_summary(floods: list[dict[str, Any]]) -> dict[str, Any]:
    idle = [x for f in floods for x in f["idle"]]
    busy = [x for f in floods for x in f["busy"]]
    qi, qb = _quantiles(idle), _quantiles(busy)
    ratio = round(qb["p99_ms"] / qi["p99_ms"], 3) if qi["p99_ms"] else None
    big = [f["flood"] for f in floods]
    return {
        "idle_p50_ms": qi["p50_ms"],
        "idle_p99_ms": qi["p99_ms"],
        "busy_p50_ms": qb["p50_ms"],
        "busy_p99_ms": qb["p99_ms"],
        "idle_requests": len(idle),
        "busy_requests": len(busy),
        "p99_ratio": ratio,
        "target": f"<= {FLOOD_TARGET:g}",
        "met": ratio is not None and ratio <= FLOOD_TARGET,
        "flood_latency_s": [round(b.get("latency_s", 0), 3) for b in big],
        "flood_status": sorted({b.get("status") for b in big}),
        "flood_completion_tokens": [b.get("completion_tokens") for b in big],
    }


# ---------------------------------------------------------------------------------------------------------
# the report


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _cell_summary(ss: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = [x / 1000 for s in ss for x in s.get("ttft_ms", [])]
    q_ttft = _quantiles(ttft) if ttft else {"p50_ms": None, "p99_ms": None}
    cpu = [s["tokens_per_cpu_s"] for s in ss if s.get("tokens_per_cpu_s")]
    return {
        "tokens_per_s": round(statistics.median(s["tokens_per_s"] for s in ss), 2),
        "tokens_per_s_by_round": [s["tokens_per_s"] for s in ss],
        **_quantiles([x / 1000 for s in ss for x in s["latencies_ms"]]),
        "ttft_p50_ms": q_ttft["p50_ms"],
        "ttft_p99_ms": q_ttft["p99_ms"],
        "tokens_per_cpu_s": round(statistics.median(cpu), 2) if cpu else None,
        "completion_tokens_per_request": round(
            sum(s["completion_tokens"] for s in ss) / sum(s["requests"] for s in ss), 2
        ),
        "requests": sum(s["requests"] for s in ss),
    }


def _text(answer: str) -> str:
    """An answer as compared: without a tail of half characters (U+FFFD) and white space, which a streaming
    decoder may hold back for good where the answer's last tokens end inside a character (same tokens)."""
    return re.sub(r"[\s\ufffd]+$", "", answer.strip())


def _compare(by: dict, side: str, other: str, cell: str, rounds: list[int]) -> dict[str, Any]:
    """side / other tokens/s: of the medians, and within each round; the share of equal answers."""
    both = [k for k in rounds if (side, cell, k) in by and (other, cell, k) in by]
    per = [_ratio(by[(side, cell, k)]["tokens_per_s"], by[(other, cell, k)]["tokens_per_s"]) for k in both]
    pairs = [
        (_text(a), _text(b))
        for k in both
        for a, b in zip(by[(side, cell, k)]["texts"], by[(other, cell, k)]["texts"], strict=True)
    ]
    return {
        "by_round": per,
        "same_round_median": round(statistics.median(per), 3) if per else None,
        "answers_equal": round(sum(a == b for a, b in pairs) / len(pairs), 3) if pairs else None,
        "differing_examples": [[a, b] for a, b in pairs if a != b][:2],
    }


def summarise(samples: list[dict[str, Any]], sides: list[str], concurrency: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "statistic": "tokens/s: median over rounds; p50/p99 (latency, TTFT): over every request of every "
        "round; ratios of the medians, and within each round (by_round)"
    }
    by = {(s["side"], s["cell"], s["round"]): s for s in samples}
    rounds = sorted({s["round"] for s in samples})
    for side in sides:
        out[side] = {}
        for c in concurrency:
            ss = [by[(side, f"c{c}", k)] for k in rounds if (side, f"c{c}", k) in by]
            if ss:
                out[side][f"c{c}"] = _cell_summary(ss)
    pairs = {
        "vs_transformers_serve": ("freestack_openai", "transformers_serve"),
        "openai_vs_v2": ("freestack_openai_whole", "freestack_v2"),
        "openai_stream_vs_v2": ("freestack_openai", "freestack_v2"),
        **{f"{s}_vs_baseline": (s, "baseline") for s in sides if s != "baseline"},
    }
    for name, (side, other) in pairs.items():
        if side not in sides or other not in sides:
            continue
        out[name] = {}
        for c in concurrency:
            cell = f"c{c}"
            a, b = out[side].get(cell), out[other].get(cell)
            if a and b:
                out[name][cell] = {
                    "ratio": _ratio(a["tokens_per_s"], b["tokens_per_s"]),
                    **_compare(by, side, other, cell, rounds),
                }
    out["targets"] = targets(out, concurrency)
    busy = {f"{s['side']} {s['cell']} #{s['round']}": s.get("others_busy_fraction") or 0 for s in samples}
    out["contended_samples"] = [k for k, v in busy.items() if v > 0.1]
    out["others_busy_fraction_median"] = round(statistics.median(busy.values()), 3) if busy else None
    return out


def targets(out: dict[str, Any], concurrency: list[int]) -> dict[str, Any]:
    """Each target's figure, bound and whether it is met (None where its cell was not measured)."""

    def check(group: str, cell: str, bound: float) -> dict[str, Any]:
        ratio = (out.get(group) or {}).get(cell, {}).get("ratio")
        return {"ratio": ratio, "target": f">= {bound:g}", "met": None if ratio is None else ratio >= bound}

    hi = f"c{max(concurrency)}"
    return {
        "vs_transformers_serve_c32": check(
            "vs_transformers_serve", "c32", TARGETS["vs_transformers_serve_c32"]
        ),
        "vs_transformers_serve_c1": check("vs_transformers_serve", "c1", TARGETS["vs_transformers_serve_c1"]),
        **{
            f"openai_vs_v2_c{c}": check("openai_vs_v2", f"c{c}", TARGETS["openai_vs_v2"]) for c in concurrency
        },
        "highest_concurrency": hi,
    }


def measure_round(
    k: int, servers: dict[str, Any], chats: dict[str, Chat], spec: dict[str, Any], args
) -> list:
    """One round: at each concurrency the servers' sides one after another, in an order that alternates
    between rounds; the plain loop first or last."""
    n_new, prompts, warm = args.max_new_tokens, spec["prompts"], spec["warm"]
    askers = {
        "transformers_serve": lambda conn, p, i: stream_chat(conn, chat_body(chats["ts"], p, n_new), i),
        "freestack_openai": lambda conn, p, i: stream_chat(conn, chat_body(chats["fs"], p, n_new), i),
        "freestack_openai_whole": lambda conn, p, i: whole_chat(
            conn, _whole(chat_body(chats["fs"], p, n_new)), i
        ),
        "freestack_v2": lambda conn, p, i: v2_call(conn, v2_body(p, n_new), i),
    }
    server_of = {"transformers_serve": "transformers_serve", "freestack_openai": "freestack"}
    server_of["freestack_v2"] = server_of["freestack_openai_whole"] = "freestack"
    cells = []
    order = list(SIDES if k % 2 == 0 else SIDES[::-1])
    if order[0] == "baseline":
        cells += _baseline_cells(k, spec, args)
    for c in args.concurrency:  # the servers' sides one after another at each concurrency: the same load
        for side in (s for s in order if s != "baseline"):
            srv = servers[server_of[side]]
            cells.append(_shown(k, side, f"c{c}", measure_http(side, srv, askers[side], prompts, warm, c)))
    if order[-1] == "baseline":
        cells += _baseline_cells(k, spec, args)
    return cells


def _whole(body: bytes) -> bytes:
    """A streaming chat body as one answered whole: the same request otherwise."""
    d = json.loads(body)
    d.pop("stream_options", None)
    return json.dumps({**d, "stream": False}).encode()


def _baseline_cells(k: int, spec: dict[str, Any], args) -> list[dict[str, Any]]:
    """The plain loop's cells of a round: one fresh process, every concurrency."""
    got = measure_inproc(PYTHON, spec["folder"], spec["file"], ["baseline"], args)
    spec["inproc_env"] = {key: got[key] for key in ("torch", "transformers", "threads")}
    return [_shown(k, "baseline", f"c{c}", got["sides"]["baseline"][f"c{c}"]) for c in args.concurrency]


def _shown(k: int, side: str, cell: str, s: dict[str, Any]) -> dict[str, Any]:
    """A measured cell as a sample, printed as it comes."""
    print(
        f"  round {k + 1} {side:<18} {cell:<4} {s['tokens_per_s']:>8.1f} tok/s  p50 {s['p50_ms']} ms  "
        f"p99 {s['p99_ms']} ms  ttft p50 {s.get('ttft_p50_ms')} ms  others busy {s['others_busy_fraction']}",
        flush=True,
    )
    return {"side": side, "cell": cell, "round": k, **s}


def print_table(report: dict[str, Any]) -> None:
    s, p = report["summary"], report["params"]
    print(
        f"\nOpenAI serving ({p['model']}, {p['threads']} torch thread(s), {p['max_new_tokens']} new tokens, "
        f"{p['requests']} requests a cell, {p['repeats']} round(s))"
    )
    print(f"{'side':<20} {'cell':<5} {'tok/s':>8} {'ttft50':>8} {'ttft99':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for side in SIDES:
        for cell, r in s.get(side, {}).items():
            t50, t99 = r["ttft_p50_ms"], r["ttft_p99_ms"]
            print(
                f"{side:<20} {cell:<5} {r['tokens_per_s']:>8.1f} {t50 if t50 is not None else '-':>8} "
                f"{t99 if t99 is not None else '-':>8} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}"
            )
    for name, t in s["targets"].items():
        if isinstance(t, dict):
            print(f"{name}: {t['ratio']} (target {t['target']}, met {t['met']})")
    f = report.get("flood") or {}
    if f:
        print(f"flood: p99 {f['busy_p99_ms']} ms beside it / {f['idle_p99_ms']} ms idle = {f['p99_ratio']}")
    print(f"contended cells: {s['contended_samples'] or 'none'}")


def arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = parser("bench.serve.openai", __doc__, out="serve_openai.json", workdir=True)
    ap.add_argument("--size", choices=list(SIZES), default="base")
    ap.add_argument("--requests", type=int, default=64, help="measured requests a cell (at each concurrency)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=4, help="rounds (the order of the sides alternating)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each side")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    ap.add_argument("--floods", type=int, default=1, help="floods a round (0: none)")
    ap.add_argument("--flood-new-tokens", type=int, default=MAX_NEW_TOKENS_BOUND)
    ap.add_argument("--flood-probes", type=int, default=16, help="idle 1-prompt requests a flood")
    ap.add_argument(
        "--running-per-request",
        type=int,
        default=4,
        help="the server's generation.max_running_per_request (16: a request's prompts all at once)",
    )
    ap.add_argument("--timeout", type=float, default=900, help="seconds per in-process run")
    ap.add_argument(
        "--start-together",
        action="store_true",
        help="start both servers at once (a smoke run's shortcut; their start-up times then overlap)",
    )
    args = ap.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    if not PYTHON.exists() or not TRANSFORMERS_CLI.exists():
        ap.error(f"{PYTHON} or {TRANSFORMERS_CLI} is missing: run `make mlserver-venv` first")
    if args.flood_new_tokens > MAX_NEW_TOKENS_BOUND:
        ap.error(f"--flood-new-tokens is at most the deployment's bound, {MAX_NEW_TOKENS_BOUND}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    own = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="freestack-bench-openai-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(work / "airflow"))
    servers: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    floods: list[dict[str, Any]] = []
    try:
        uri, folder, figures = make_version(work, args.size)
        n_warm = max(args.concurrency)
        all_prompts = make_prompts(args.requests + n_warm)
        warm, prompts = all_prompts[:n_warm], all_prompts[n_warm:]
        spec_file = work / "prompts.json"
        spec_file.write_text(
            json.dumps({"prompts": prompts, "warm": warm, "max_new_tokens": args.max_new_tokens})
        )
        spec = {"prompts": prompts, "warm": warm, "folder": folder, "file": spec_file}
        lengths = prompt_tokens(folder, prompts)
        print(
            f"version {uri} ({figures['parameters'] / 1e6:.2f}M parameters); {len(prompts)} prompts",
            flush=True,
        )
        ts_argv, fs_env = start_sides(servers, uri, folder, work, args)
        chats = {
            "ts": Chat(servers["transformers_serve"].port, str(folder)),
            "fs": Chat(servers["freestack"].port, MODEL),
        }
        for k in range(args.repeats):
            samples += measure_round(k, servers, chats, spec, args)
            for _ in range(args.floods):
                floods.append(measure_flood(servers["freestack"], chats["fs"], all_prompts, args))
    finally:
        for srv in servers.values():
            srv.stop(timeout=STOP_GRACE_S)
    summary = summarise(samples, list(SIDES), args.concurrency)
    for s in samples:  # compared in the summary (answers_equal)
        del s["texts"]
    params = describe(args, figures, lengths, prompts, ts_argv, fs_env, spec)
    machine = {**host(), "mlserver_env": _versions(PYTHON)}
    report = {
        "name": "serve_openai",
        "machine": machine,
        "params": params,
        "samples": samples,
        "summary": summary,
    }
    if floods:
        report["flood"] = {**flood_summary(floods), "floods": len(floods)}
    out = write_report(report, args.out, indent=1)
    if own:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print_table(report)
    print(f"\nreport: {out}")
    return 0


def describe(args, figures, lengths, prompts, ts_argv, fs_env, spec) -> dict[str, Any]:
    """The run's parameters, as the report keeps them."""
    return {
        "size": args.size,
        "model": f"LlamaForCausalLM, random weights, {figures['parameters'] / 1e6:.2f}M parameters",
        "parameters": figures["parameters"],
        "config": figures["config"],
        "vocab": figures["vocab"],
        "weights": figures["weights"],
        "device": "cpu",
        "dtype": "torch.float32",
        "threads": args.threads,
        "sides": list(SIDES),
        "concurrency": args.concurrency,
        "requests": args.requests,
        "repeats": args.repeats,
        "max_new_tokens": args.max_new_tokens,
        "max_length": MAX_LENGTH,
        "temperature": 0,
        "prompts": {
            "source": "include/demo/instructions.py instruction_pair, one user turn, ChatML",
            "count": len(prompts),
            "prompt_tokens_min": min(lengths),
            "prompt_tokens_max": max(lengths),
            "prompt_tokens_mean": round(sum(lengths) / len(lengths), 2),
        },
        "bounds": BOUNDS,
        "transformers_serve": {
            "command": "transformers " + " ".join(a if "/" not in a else "<version folder>" for a in ts_argv),
            "env": {"OMP_NUM_THREADS": str(args.threads)},
            "route": f"{CHAT_ROUTE} (stream, stream_options.include_usage)",
        },
        "freestack": {
            "command": "python -m freestack_server, runtime mlserver, as its image starts it (tests/support/images.py)",
            "settings": {k: v for k, v in fs_env.items() if k != "FREESTACK_HOME"},
            "routes": {"freestack_openai": f"{CHAT_ROUTE} (stream)", "freestack_v2": V2_ROUTE},
        },
        "clients": "one thread and one keep-alive http.client connection per client, closed loop; client k of c "
        "sends prompts k, k + c, ...; one untimed warm-up request each",
        "ttft": "time to the first chunk with content (streamed sides only)",
        "baseline": "bench/serve/generation.py's plain model.generate loop in a fresh process, batches of c",
        "inproc_env": spec.get("inproc_env"),
        "flood": {
            "request_prompts": MAX_PROMPTS_PER_REQUEST,
            "request_new_tokens": args.flood_new_tokens,
            "request": f"V2, {MAX_PROMPTS_PER_REQUEST} prompts (generation.max_prompts_per_request), "
            f"{args.flood_new_tokens} new tokens each (generation.max_new_tokens {MAX_NEW_TOKENS_BOUND})",
            "probes": f"1-prompt streaming chats of {args.max_new_tokens} new tokens one after another; "
            f"idle: {args.flood_probes} the same before it",
            "floods_a_round": args.floods,
        },
    }


if __name__ == "__main__":
    sys.exit(main())
