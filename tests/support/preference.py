"""Preference pairs of the instruction-tuning tutorial's tasks (include/demo/instructions.py) for the DPO
tests: each prompt with its one right answer (chosen) and a plausible wrong one (rejected), and a
starting model instruction-tuned on answers of which a share are the wrong one (a careless annotator),
whose mistakes preference tuning can correct."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from freestack.ml.lm.chat import ChatColumns

COLUMNS = ChatColumns(prompt="prompt", response="chosen")


def wrong_answer(prompt: str, answer: str, rng) -> str:
    """A plausible wrong answer to one of the tutorial's instructions: a sum off by one or two, the digits
    not reversed, the date in the other format."""
    if prompt.startswith("What is"):
        return str(int(answer) + int(rng.choice([-2, -1, 1, 2])))
    if prompt.startswith("Reverse"):
        return prompt.rsplit(" ", 1)[1]
    day, month, year = answer.split("/")
    return f"{month}/{day}/{year}"


def preference_pairs(n: int, seed: int) -> pd.DataFrame:
    """``n`` pairs: prompt, chosen (the right answer), rejected (a wrong one)."""
    from demo.instructions import instruction_pair

    rng, rows = np.random.default_rng(seed), []
    while len(rows) < n:
        prompt, answer = instruction_pair(rng)
        wrong = wrong_answer(prompt, answer, rng)
        if wrong != answer:
            rows.append({"prompt": prompt, "chosen": answer, "rejected": wrong})
    return pd.DataFrame(rows)


#: the exchange every chat pair opens with, before the prompt: a chat so far of more than one turn
OPENING = [
    {"role": "user", "content": "Answer with the result only."},
    {"role": "assistant", "content": "OK."},
]


def chat_pairs(pairs: pd.DataFrame, *, implicit: bool = False) -> pd.DataFrame:
    """``pairs`` (prompt, chosen, rejected) as TRL's conversational preference rows (JSON text): messages,
    the opening exchange then the prompt as the user's turn, with the chosen answer as text and the
    rejected one as ``[{"role": "assistant", ...}]``; or (``implicit``) chosen and rejected as whole
    chats sharing every turn but the last."""
    rows = []
    for r in pairs.to_dict("records"):
        chat = [*OPENING, {"role": "user", "content": r["prompt"]}]
        chosen, rejected = ({"role": "assistant", "content": r[k]} for k in ("chosen", "rejected"))
        if implicit:
            rows.append({"chosen": json.dumps([*chat, chosen]), "rejected": json.dumps([*chat, rejected])})
        else:
            rows.append(
                {"messages": json.dumps(chat), "chosen": r["chosen"], "rejected": json.dumps([rejected])}
            )
    return pd.DataFrame(rows)


def chat_pair_spec(base: str = "team/tiny-lm", *, implicit: bool = False) -> dict:
    """A ``train.objective: dpo`` spec reading :func:`chat_pairs`' rows: ``model.data`` names the chat so
    far (messages) and the two answers, or (``implicit``, ``prompt: null``) two whole chats."""
    if implicit:
        data, names = {"prompt": None, "chosen": "chosen", "rejected": "rejected"}, ["chosen", "rejected"]
    else:
        data = {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}
        names = ["messages", "chosen", "rejected"]
    columns = [
        {"name": "id", "type": "string", "nullable": False},
        *({"name": c, "type": "text"} for c in names),
    ]
    return {
        "name": "chat_prefs",
        "source": {
            "landing": "landing/{pipeline}/{ds}/",
            "format": "csv",
            "schema": {"key": "id", "target": "chosen", "columns": columns},
        },
        "model": {
            "type": "huggingface",
            "base": base,
            "task": "text-generation",
            "data": data,
            "max_length": 96,
        },
        "train": {"objective": "dpo", "dpo": {"beta": 0.1}, "data": {"mode": "memory"}},
        "gate": {"metric": "exact_match", "threshold": 0.5},
    }


def careless_sft(model, tok, pairs: pd.DataFrame, careless: float = 0.3, epochs: int = 6) -> None:
    """``model`` (a transformers causal LM) instruction-tuned in place on ``pairs``' prompts, answered by
    the chosen answer, or by the rejected one for a ``careless`` share of them."""
    import torch

    from freestack.ml.lm.causal import CausalLMNet
    from freestack.ml.lm.prompts import ChatEncoding
    from freestack.ml.loop import TrainConfig, fit_source
    from freestack.ml.stream import InMemory

    flip = np.random.default_rng(5).random(len(pairs)) < careless
    rows = pairs.assign(chosen=np.where(flip, pairs["rejected"], pairs["chosen"]))
    enc = ChatEncoding(tok, COLUMNS, 48).encode_frame(rows)
    source = InMemory({k: torch.tensor(v) for k, v in enc.x.items()}, torch.tensor(enc.y))
    config = TrainConfig(epochs=epochs, learning_rate=3e-3, batch_size=16, warmup_epochs=0, device="cpu")
    fit_source(
        CausalLMNet(model, base={}, columns=COLUMNS, max_length=48), source, source, config, task="generation"
    )


def sft_base(base: Path, folder: Path, pairs: pd.DataFrame) -> Path:
    """The tiny base in ``base`` carelessly instruction-tuned on ``pairs``, saved in ``folder`` as
    transformers writes a model (with the base's tokenizer and generation config): a DPO starting point."""
    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.prompts import load_tokenizer

    model, tok = load_causal_lm(str(base)), load_tokenizer(base)
    careless_sft(model, tok, pairs)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


#: the LoRA settings of :func:`teacher_version`'s adapter (a trainer pushing its own must use the same)
TEACHER_PEFT = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}


def teacher_version(root: str, base: Path, work: Path) -> str:
    """``base`` (a saved causal LM, such as :func:`sft_base`'s) registered as version v1 of model ``teacher``,
    saved as training saves an instruction-tuned LoRA version (prompt/chosen columns, 48 tokens): its
    adapter is peft's fresh one (B = 0), so it answers as ``base`` does, and its deployment can load other
    adapters on ``base`` (a GRPO training's, pushed to it); its URI."""
    from freestack.ml.lm.causal import add_causal_lora, load_causal_lm
    from freestack.ml.lm.prompts import load_tokenizer
    from freestack.registry.core import ModelRegistry
    from tests.support.generation_serving import save_generation

    folder = work / "teacher-v1"
    lm, tok = add_causal_lora(load_causal_lm(str(base)), TEACHER_PEFT).eval(), load_tokenizer(base)
    save_generation(folder, lm, tok, COLUMNS, 48, {"repo": str(base)}, TEACHER_PEFT, pipeline="teacher")
    return ModelRegistry(root, "teacher").register(folder.as_uri(), "v1")


def landing_pairs(root: Path, pipeline: str, start: date, days: int, rows: int) -> None:
    """``days`` landing drops of ``rows`` pairs each: ``landing/<pipeline>/<ds>/pairs.csv`` with columns
    id, prompt, chosen, rejected."""
    for d in range(days):
        day = start + timedelta(days=d)
        pairs = preference_pairs(rows, seed=day.toordinal())
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(["id", "prompt", "chosen", "rejected"])
        for i, r in enumerate(pairs.to_dict("records")):
            out.writerow([f"{day:%Y%m%d}-{i:04d}", r["prompt"], r["chosen"], r["rejected"]])
        folder = root / "landing" / pipeline / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pairs.csv").write_text(buf.getvalue())
