"""Memory of many LoRA versions on one base: the model server's resident memory serving 1 adapter version of
a base, then 8 (each loaded by a request naming it: ``model: <model>:<version>``), against the adapters' own
size and against 8 deployments of one version each.

    python -m bench.serve.lora_memory [--adapters 8] [--size large|base] [--out bench/results/serve_lora.json]

1. A random-weight ``LlamaForCausalLM`` base (``--size large``: 8 layers, width 512, MLP 1536, about 30M
   parameters, float32) saved as a folder, with bench/serve/generation.py's tokenizer; ``--adapters``
   LoRA versions on it (rank 8 on every attention and MLP projection, their B matrices drawn at random so
   that each answers differently), registered as training registers them (``CausalLMNet``), v1 promoted.
2. The server (``python -m freestack_server``, runtime ``mlserver``, as its image starts it) serves
   ``<model>@production`` with ``FREESTACK_GENERATION_MAX_ADAPTERS`` = ``--adapters``; one request warms it
   (v1). Resident memory (VmRSS of the server's process tree, sampled three times, the median) after it;
   then after a request to each other version, and each answer is checked to come from that version.
3. Reported: RSS with 1 and with N adapters, their ratio, the adapters' files' size, the target
   (RSS_N < 1.2 x RSS_1 + the N-1 adapters' own size) and what N deployments of one version each would hold
   (N x RSS_1: a base each).
4. The stall of a load: while each new version loads, a greedy stream of v1 (``--stream-tokens`` tokens)
   is being sent; its longest time a token between two chunks (the gap over the tokens the chunk brought)
   during the load, against the same stream's longest with nothing loading (3 streams before the first
   load); and the batch's pause for each load, as the server's log reports it. A load reads the adapter's
   files beside the batch and pauses it only to put the weights into the model.
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import host, parser, write_report
from bench.serve.generation import STOP_GRACE_S

MODEL = "benchlora"
SIZES = {
    "large": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
    },
    "base": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_versions(work: Path, size: str, n: int) -> tuple[str, dict[str, Any]]:
    """Save the base folder, register ``n`` adapter versions on it; (the production alias URI, figures)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.serve.generation import MAX_LENGTH, make_tokenizer
    from freestack.ml.lm.causal import CausalLMNet, add_causal_lora
    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.lm.prompts import save_tokenizer
    from freestack.registry.core import ModelRegistry

    tok = make_tokenizer()
    config = LlamaConfig(
        **SIZES[size],
        vocab_size=len(tok),
        max_position_embeddings=2 * MAX_LENGTH,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.pad_token_id,
    )
    torch.manual_seed(1)
    base = LlamaForCausalLM(config).eval()
    base_folder = work / "base"
    base.save_pretrained(base_folder)
    tok.save_pretrained(base_folder)
    root = (work / "storage").as_uri()
    registry = ModelRegistry(root, MODEL)
    peft = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": TARGETS}
    adapter_bytes = 0
    for i in range(1, n + 1):
        lm = add_causal_lora(LlamaForCausalLM.from_pretrained(base_folder), peft).eval()
        draw = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for name, p in lm.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=draw) * 0.05)
        src = work / f"v{i}"
        columns = ChatColumns()
        net = CausalLMNet(
            lm, base={"repo": str(base_folder)}, columns=columns, max_length=MAX_LENGTH, peft=peft
        )
        net.save_pretrained(src)
        save_tokenizer(tok, src)
        chat = {"columns": {"prompt": "prompt", "response": "response", "messages": None, "system": None}}
        pre = {"task": "generation", "features": ["prompt"], "target": "response", "classes": []}
        pre["chat"] = {**chat, "max_length": MAX_LENGTH, "packing": False}
        (src / "preprocessing.json").write_text(json.dumps(pre))
        (src / "lineage.json").write_text(json.dumps({"pipeline": MODEL, "model": MODEL}))
        registry.register(src.as_uri(), f"v{i}")
        adapter_bytes += (src / "adapter_model.safetensors").stat().st_size
    registry.promote("v1")
    figures = {
        "base_parameters": sum(p.numel() for p in base.parameters()),
        "base_bytes": (base_folder / "model.safetensors").stat().st_size,
        "adapter_bytes_each": adapter_bytes // n,
        "config": SIZES[size],
        "lora": peft,
    }
    return f"{root}/registry/{MODEL}@production", figures


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and every process under it, in KiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        for task in Path(f"/proc/{p}/task").iterdir():
            todo += [int(k) for k in (task / "children").read_text().split()]
    return total


def steady_rss(pid: int) -> int:
    samples = []
    for _ in range(3):
        time.sleep(0.5)
        samples.append(rss_kib(pid))
    return int(statistics.median(samples))


def ask(url: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 4}
    req = urllib.request.Request(
        f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 (the benchmark's own server)
        return json.loads(r.read())["model"]


def stream_gaps(url: str, model: str, tokens: int, started: threading.Event) -> list[float]:
    """A greedy streamed answer of ``tokens`` tokens from ``model``: for each chunk after the first, the
    seconds since the last one per token it brought (``continuous_usage_stats`` counts them: a chunk can
    bring several, when the text of the ones before it was not whole characters yet); ``started`` set
    after its fifth chunk."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Count on."}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    req = urllib.request.Request(
        f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    seen: list[tuple[float, int]] = []  # (when, tokens so far) of each chunk with text
    with urllib.request.urlopen(req, timeout=300) as r:  # noqa: S310 (the benchmark's own server)
        for line in r:
            chunk = json.loads(line[6:]) if line.startswith(b"data: {") else None
            if chunk and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                seen.append((time.perf_counter(), chunk["usage"]["completion_tokens"]))
                if len(seen) == 5:
                    started.set()
    started.set()
    return [(b - a) / max(1, m - n) for (a, n), (b, m) in zip(seen[1:], seen[2:], strict=False)]


def beside_a_stream(url: str, tokens: int, load: str | None) -> tuple[float, str | None]:
    """The longest gap of a v1 stream while ``load`` (a version; None: nothing) is asked for."""
    started, gaps, answered = threading.Event(), [], None

    def run() -> None:
        gaps.extend(stream_gaps(url, MODEL, tokens, started))

    streamer = threading.Thread(target=run)
    streamer.start()
    started.wait(120)
    if load is not None:
        answered = ask(url, load)
    streamer.join()
    return max(gaps), answered


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from tests.support.images import start_like_image

    ap = parser("bench.serve.lora_memory", __doc__, out="serve_lora.json")
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--size", choices=list(SIZES), default="large")
    ap.add_argument("--stream-tokens", type=int, default=192, help="the v1 stream beside each load")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        work = Path(tmp)
        uri, figures = make_versions(work, args.size, args.adapters)
        env = {
            "FREESTACK_MODEL_NAME": MODEL,
            "FREESTACK_HOME": str(work),
            "FREESTACK_TORCH_THREADS": "1",
            "FREESTACK_REQUEST_LOG_RATE": "0",
            "FREESTACK_GENERATION_MAX_ADAPTERS": str(args.adapters),
        }
        server = start_like_image(
            "mlserver", uri, work / "mlserver", env=env, ready_path=f"/v2/models/{MODEL}/ready", timeout=300
        )
        try:
            assert ask(server.url, MODEL) == f"{MODEL}:v1"
            rss = [steady_rss(server.proc.pid)]
            idle = [beside_a_stream(server.url, args.stream_tokens, None)[0] for _ in range(3)]
            loading = []
            for i in range(2, args.adapters + 1):
                gap, answered = beside_a_stream(server.url, args.stream_tokens, f"{MODEL}:v{i}")
                assert answered == f"{MODEL}:v{i}", answered
                loading.append(gap)
                rss.append(steady_rss(server.proc.pid))
            log = server.log()
            loads = log.count("Loading weights: 100%")
            paused = [float(ms) for ms in re.findall(r"the batch paused ([0-9.]+) ms", log)]
        finally:
            server.stop(timeout=STOP_GRACE_S)
    one, many = rss[0] * 1024, rss[-1] * 1024
    own = figures["adapter_bytes_each"] * (args.adapters - 1)
    report = {
        "name": "serve_lora",
        "machine": host(),
        "adapters": args.adapters,
        "size": args.size,
        "figures": figures,
        "rss_bytes_by_adapters": [r * 1024 for r in rss],
        "base_loads": loads,
        "stream_tokens": args.stream_tokens,
        "longest_gap_idle_s": idle,
        "longest_gap_loading_s": loading,
        "batch_paused_ms": paused,
        "summary": {
            "rss_1": one,
            "rss_n": many,
            "ratio": many / one,
            "adapters_own_bytes": own,
            "target_bytes": 1.2 * one + own,
            "met": many < 1.2 * one + own,
            "n_deployments_bytes": args.adapters * one,
            "gap_idle_ms": 1000 * max(idle),
            "gap_loading_ms": 1000 * max(loading) if loading else None,
            "batch_paused_ms_max": max(paused) if paused else None,
        },
    }
    write_report(report, args.out)
    s = report["summary"]
    print(
        f"RSS 1 adapter {one / 2**20:.0f} MiB, {args.adapters} adapters {many / 2**20:.0f} MiB "
        f"(x{s['ratio']:.3f}); adapters' own {own / 2**20:.1f} MiB; {args.adapters} deployments "
        f"{s['n_deployments_bytes'] / 2**20:.0f} MiB; base loaded {loads} time(s); a v1 stream's longest "
        f"time a token {s['gap_idle_ms']:.1f} ms idle, {s['gap_loading_ms'] or 0:.1f} ms while a version "
        f"loads; the batch paused at most {s['batch_paused_ms_max'] or 0:.1f} ms a load"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
