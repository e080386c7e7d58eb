"""GRPO's rollouts sampled by a deployed server (``train.grpo.rollouts: server``) against the same training
sampling in its own process (``rollouts: padded``), in one run: tokens/s and the exact match reached.

    python -m bench.train.grpo_server [--prompts 256] [--epochs 2] [--num-generations 8] [--repeats 3]
                                      [--threads 1] [--out bench/results/grpo_server.json]
    python -m bench.train.grpo_server --prompts 32 --repeats 1 --out /tmp/grpo_server.json   # smoke run

The task, the careless starting model and the GRPO settings are ``bench/train/grpo.py``'s, trained with
a LoRA adapter (rank 4 on every linear layer), since only an adapter is pushed to a server. The server is
freestack's model server on the ``mlserver`` runtime, started as its image starts it, serving the start
as a LoRA version (a fresh adapter, B = 0) with ``deploy.generation.runtime_adapters`` and a key, and
the same torch threads as the trainer. Each step the trainer writes its adapter, loads it there by name
(vLLM's ``/v1/load_lora_adapter``) and asks ``/v1/completions`` for every prompt's ``num_generations``
answers as token ids, ``concurrency`` prompts at once. The two modes alternate ``--repeats`` times in one
process, each from a fresh copy of the start.

tokens/s = prompt and completion tokens put through (``TrainResult.tokens``) / the training's seconds;
exact match = greedy answers to 200 held-out prompts equal to the right answer; ratio = median server /
median padded. There is no target: the figure says what sampling on another process costs or gains on
this machine.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import parser, write_report
from bench.train.dpo import preference_rows
from bench.train.grpo import BATCH, LR, SETTINGS, exact_match, make_start, train_config
from bench.train.sft import SEED

KEY = "bench-rollouts"
MODEL = "teacher"


def run(mode: str, start: Path, args, train: list[dict], test: list[dict], url: str | None) -> dict[str, Any]:
    """One training of the start's LoRA adapter, its rollouts ``padded`` in this process or by the server."""
    import torch

    from freestack.ml.lm.causal import add_causal_lora, load_causal_lm
    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.lm.grpo import GrpoEncoding, GrpoNet, GrpoSettings
    from freestack.ml.lm.prompts import eos_ids, load_tokenizer
    from freestack.ml.lm.rewards import Reward, RewardSet
    from freestack.ml.lm.rewards import exact_match as exact
    from freestack.ml.lm.rollout_sources import grpo_splits
    from freestack.ml.lm.rollouts import RolloutServer
    from freestack.ml.loop import fit_source
    from freestack.ml.stream import InMemory
    from tests.support.preference import TEACHER_PEFT

    tok = load_tokenizer(start)
    torch.manual_seed(SEED)
    model = add_causal_lora(load_causal_lm(str(start)), TEACHER_PEFT)
    columns = ChatColumns(prompt="prompt", response="chosen")
    settings = GrpoSettings(num_generations=args.num_generations, rollouts=mode, **SETTINGS)
    server = RolloutServer(url, MODEL, KEY) if mode == "server" else None
    rewards = RewardSet((Reward("exact_match", 1.0, exact("chosen")),))
    net = GrpoNet(
        model, grpo=settings, reward_names=("exact_match",), base={}, columns=columns, max_length=48
    )
    enc = GrpoEncoding(tok, columns, 48)
    encoded = enc.encode_rows(train)
    source = InMemory({k: torch.tensor(v) for k, v in encoded.x.items()}, torch.tensor(encoded.y))
    eos = eos_ids(tok, model.generation_config.to_dict())
    splits = grpo_splits(net, {"train": source, "val": source}, enc, rewards, eos, server=server)
    result = fit_source(net, splits["train"], splits["val"], train_config(args), task="grpo")
    return {
        "mode": mode,
        "train_seconds": result.train_seconds,
        "tokens": result.tokens,
        "tokens_per_s": result.tokens / result.train_seconds,
        "exact_match": exact_match(model, tok, test),
    }


def serve(start: Path, work: Path, threads: int):
    """The start, registered as a LoRA version and served as the mlserver image serves it."""
    from freestack.serving.spec import GenerationBounds
    from tests.support.images import start_like_image
    from tests.support.preference import teacher_version

    uri = teacher_version((work / "storage").as_uri(), start, work)
    bounds = GenerationBounds(max_new_tokens=16, max_prompt_tokens=48, runtime_adapters=True)
    env = {
        "FREESTACK_MODEL_NAME": MODEL,
        "FREESTACK_SERVER_API_KEY": KEY,
        "FREESTACK_HOME": str(work),
        "FREESTACK_TORCH_THREADS": str(threads),
        "FREESTACK_REQUEST_LOG_RATE": "0",
        **bounds.env(),
    }
    ready = f"/v2/models/{MODEL}/ready"
    return start_like_image("mlserver", uri, work / "mlserver", env=env, ready_path=ready, timeout=300)


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = parser("bench.train.grpo_server", __doc__, out="grpo_server.json", workdir=True)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = preference_rows(args.prompts + 200, SEED + 7)
    train, test = rows[: args.prompts], rows[args.prompts :]
    samples: dict[str, list[dict[str, Any]]] = {"padded": [], "server": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        start = make_start(work)
        server = serve(start, work, args.threads)
        try:
            for _ in range(args.repeats):
                for mode in samples:
                    samples[mode].append(run(mode, start, args, train, test, f"{server.url}/v1"))
                    print(json.dumps(samples[mode][-1]), flush=True)
        finally:
            server.stop()
    median = {m: statistics.median(r["tokens_per_s"] for r in runs) for m, runs in samples.items()}
    exact = {m: statistics.median(r["exact_match"] for r in runs) for m, runs in samples.items()}
    report = {
        "name": "grpo_server",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
        "grpo": {**SETTINGS, "learning_rate": LR, "prompts_per_step": BATCH, "lora": "r 4, alpha 8"},
        "median_tokens_per_s": median,
        "median_exact_match": exact,
        "ratio": median["server"] / median["padded"],
        "samples": samples,
    }
    print(json.dumps({k: report[k] for k in ("median_tokens_per_s", "median_exact_match", "ratio")}))
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
