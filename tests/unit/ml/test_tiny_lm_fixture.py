"""The tiny causal LM of :func:`tests.support.hf_tiny.tiny_causal_lm` and the instruction-tuning landing data
of ``include/demo/instructions.py``: a ChatML tokenizer that keeps digits apart, a base that loads and
generates with plain transformers and knows the tasks in plain text but not the chat format, and
deterministic daily drops whose answers are right."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime

import numpy as np
import pytest
import torch

from demo import instructions
from tests.support.hf_tiny import CHAT_TEMPLATE, LM_BASE, corpus, instruction_pair, tiny_causal_lm

USER = [{"role": "user", "content": "Convert 2026-11-03 to DD/MM/YYYY."}]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The default base (Llama-style, pretrained): built once, about ten seconds."""
    return tiny_causal_lm(tmp_path_factory.mktemp("lm") / "tiny-lm")


@pytest.fixture(scope="module")
def tok(base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


def _greedy(model, tok, prompts: list[str], max_new_tokens: int = 14) -> list[str]:
    """Each prompt's greedy continuation, up to the first ``<|im_end|>``."""
    tok.padding_side = "left"
    x = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**x, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, x["input_ids"].shape[1] :]
    return [tok.decode(o, skip_special_tokens=False).split("<|im_end|>")[0].strip() for o in new]


def test_saved_base_folder(base):
    names = {p.name for p in base.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert {"tokenizer_config.json", "chat_template.jinja"} <= names
    config = json.loads((base / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 64 and config["tie_word_embeddings"]
    gen = json.loads((base / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["pad_token_id"]) == (config["eos_token_id"], config["pad_token_id"])
    assert LM_BASE == "team/tiny-lm"


def test_tokenizer_specials_and_vocabulary(tok):
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert 256 < len(tok) < 512
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert tok.convert_ids_to_tokens(tok(special)["input_ids"]) == [special]


def test_chat_template_renders_chatml_and_round_trips(tok):
    text = tok.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nConvert 2026-11-03 to DD/MM/YYYY.<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(USER, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.chat_template == CHAT_TEMPLATE
    # a system turn first; a whole conversation ends with the eos (and a newline)
    chat = [
        {"role": "system", "content": "Answer briefly."},
        *USER,
        {"role": "assistant", "content": "03/11/2026"},
    ]
    whole = tok.apply_chat_template(chat, tokenize=False)
    assert whole.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n")
    assert whole.endswith("<|im_start|>assistant\n03/11/2026<|im_end|>\n")


def test_digits_are_one_token_each(tok):
    for text in ("0123456789", "2026-11-03", "What is 3 + 5?", " 4821"):
        digits = [t for t in tok.tokenize(text) if any(c.isdigit() for c in t)]
        assert digits == [c for c in text if c.isdigit()]
    assert (
        tok.decode(tok("Convert 2026-11-03 to DD/MM/YYYY.")["input_ids"])
        == "Convert 2026-11-03 to DD/MM/YYYY."
    )


def test_base_loads_generates_and_knows_the_tasks_in_plain_text(base, tok):
    """Pretrained on :func:`corpus`, the base answers a plain-text instruction; it does not yet answer in the
    chat format (what instruction tuning teaches it)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base).eval()
    assert isinstance(model, LlamaForCausalLM)
    rng = np.random.default_rng(7)
    pairs = [instruction_pair(rng) for _ in range(48)]
    dates = [(p, r) for p, r in pairs if p.startswith("Convert")]
    plain = _greedy(model, tok, [f"{p} {instructions.ANSWER}" for p, _ in dates])
    assert np.mean([got == want for got, (_, want) in zip(plain, dates, strict=True)]) >= 0.8
    chat = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p, _ in pairs
    ]
    answers = _greedy(model, tok, chat)
    assert np.mean([got == want for got, (_, want) in zip(answers, pairs, strict=True)]) <= 0.1


def test_same_seed_same_weights_and_gpt2_family(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    a = tiny_causal_lm(tmp_path / "a", seed=3, pretrain_steps=10)
    b = tiny_causal_lm(tmp_path / "b", seed=3, pretrain_steps=10)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()

    g = tiny_causal_lm(tmp_path / "g", family="gpt2", pretrain_steps=10)
    model, tok = AutoModelForCausalLM.from_pretrained(g), AutoTokenizer.from_pretrained(g)
    assert isinstance(model, GPT2LMHeadModel)
    prompt = tok.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)
    assert isinstance(_greedy(model, tok, [prompt], max_new_tokens=4)[0], str)
    with pytest.raises(ValueError, match="family"):
        tiny_causal_lm(tmp_path / "x", family="bert", pretrain_steps=0)


def test_base_without_chat_template(tmp_path):
    from transformers import AutoTokenizer

    folder = tiny_causal_lm(tmp_path / "plain", chat_template=False, pretrain_steps=0)
    assert not (folder / "chat_template.jinja").exists()
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template is None
    with pytest.raises(ValueError, match="chat_template|chat template"):
        tok.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)


def _rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def _kind(prompt: str) -> str:
    if prompt.startswith("What is"):
        return "add"
    if prompt.startswith("Reverse"):
        return "reverse"
    return "date-dmy" if "DD/MM/YYYY" in prompt else "date-mdy"


def _right(prompt: str, response: str) -> bool:
    words = prompt.rstrip(".?").split()
    if prompt.startswith("What is"):
        return int(response) == int(words[2]) + int(words[4])
    if prompt.startswith("Reverse"):
        return response == words[-1][::-1]
    day = date.fromisoformat(words[1])
    return datetime.strptime(response, "%d/%m/%Y" if words[3] == "DD/MM/YYYY" else "%m/%d/%Y").date() == day


def test_day_csv_is_deterministic_with_right_answers():
    day = date(2026, 11, 1)
    data = instructions.day_csv(day, 120)
    assert data == instructions.day_csv(day, 120) != instructions.day_csv(date(2026, 11, 2), 120)
    rows = _rows(data)
    assert list(rows[0]) == ["id", "prompt", "response"] and len(rows) == 120
    assert rows[0]["id"] == "20261101-0000" and len({r["id"] for r in rows}) == 120
    assert all(_right(r["prompt"], r["response"]) for r in rows)
    assert {_kind(r["prompt"]) for r in rows} == set(instructions.TASKS)
    assert instructions.day_csv(day, 120, tasks=instructions.TASKS) == data  # all tasks: the same drop
    hard = _rows(instructions.day_csv(day, 60, tasks=("add", "reverse")))  # --tasks add,reverse
    assert {_kind(r["prompt"]) for r in hard} == {"add", "reverse"} and all(
        _right(r["prompt"], r["response"]) for r in hard
    )


def test_messages_format_is_json_chat():
    day = date(2026, 11, 1)
    pairs = _rows(instructions.day_csv(day, 20))
    rows = _rows(instructions.day_csv(day, 20, fmt="messages"))
    assert list(rows[0]) == ["id", "messages"]
    for pair, row in zip(pairs, rows, strict=True):
        assert row["id"] == pair["id"]
        assert json.loads(row["messages"]) == [
            {"role": "user", "content": pair["prompt"]},
            {"role": "assistant", "content": pair["response"]},
        ]
    system = _rows(instructions.day_csv(day, 3, fmt="messages", system="Answer briefly."))
    assert all(
        json.loads(r["messages"])[0] == {"role": "system", "content": "Answer briefly."} for r in system
    )
    assert [m["role"] for m in json.loads(system[0]["messages"])] == ["system", "user", "assistant"]
    with pytest.raises(ValueError, match="fmt"):
        instructions.day_csv(day, 3, fmt="jsonl")


def test_make_landing_and_corpus(tmp_path):
    uris = instructions.make_landing(tmp_path.as_uri(), date(2026, 11, 1), 2, rows=5, fmt="messages")
    paths = [tmp_path / "landing" / "arith" / ds / "instructions.csv" for ds in ("2026-11-01", "2026-11-02")]
    assert [p.read_bytes() for p in paths] == [
        instructions.day_csv(date(2026, 11, d), 5, fmt="messages") for d in (1, 2)
    ]
    assert len(uris) == 2 and all("instructions.csv" in u for u in uris)
    lines = corpus(50, seed=1)
    assert lines == corpus(50, seed=1) and len(lines) == 50
    for line in lines:
        prompt, response = line.split(f" {instructions.ANSWER} ")
        assert _right(prompt, response) and "<|" not in line
