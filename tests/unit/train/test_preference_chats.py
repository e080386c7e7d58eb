"""Preference pairs as chats (TRL's conversational preference formats): the chat so far in a messages
column with a chosen and a rejected final assistant turn, or two whole chats sharing their prompt
(``prompt: null``). The prompt is rendered as instruction tuning renders a messages chat, evaluation
compares answers with the chosen turn, a few DPO steps run through the real loop, and a bad pair is
refused naming its split, row and column."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from freestack.errors import FreestackError
from freestack.ml.lm.chat import IGNORE, ChatColumns, ChatError
from freestack.ml.lm.preference import PreferenceEncoding
from freestack.ml.lm.prompts import ChatEncoding
from freestack.spec import parse_spec
from freestack.train.objectives import build_causal_model, chat_encoding
from tests.support.preference import OPENING, chat_pair_spec, chat_pairs, preference_pairs

PROMPT = [*OPENING, {"role": "user", "content": "What is 3 + 4?"}]
ROW = {"prompt": "What is 3 + 4?", "chosen": "7", "rejected": "8"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tests.support.hf_tiny import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("lm"), pretrain_steps=0)


def _encoding(base, *, implicit: bool = False) -> PreferenceEncoding:
    """The train stage's preprocessing of a chat-pair spec on the tiny base (a folder)."""
    return chat_encoding(parse_spec(chat_pair_spec(str(base), implicit=implicit), "chat_prefs.yaml"))


def _learnt(enc: PreferenceEncoding, out, row: int = 0) -> list[str]:
    ids, labels = out.x["input_ids"][row], out.x["labels"][row]
    return [
        enc.tokenizer.decode([t for t, lab in zip(ids[k], labels[k], strict=True) if lab != IGNORE]).strip()
        for k in (0, 1)
    ]


def test_the_chat_so_far_is_rendered_as_instruction_tuning_renders_a_messages_chat(base):
    """The same tokens as sft's messages chat; of them, the final turn alone is learnt (TRL's completion
    mask), not the opening's answer, which both sides share."""
    enc = _encoding(base)
    out = enc.encode_frame(chat_pairs(pd.DataFrame([ROW])))
    chat = {"chat": json.dumps([*PROMPT, {"role": "assistant", "content": "7"}])}
    sft = ChatEncoding(enc.tokenizer, ChatColumns(prompt=None, response=None, messages="chat"), 96)
    want = sft.encode_rows([chat])
    n = want.x["input_ids"].shape[1]
    assert np.array_equal(out.x["input_ids"][0, 0, :n], want.x["input_ids"][0])
    learnt = out.x["labels"][0, 0, :n] != IGNORE
    assert np.array_equal(out.x["labels"][0, 0, :n][learnt], want.y[0][learnt])
    assert (want.y[0] != IGNORE).sum() > learnt.sum() > 0  # sft learns "OK." too
    assert _learnt(enc, out) == ["7<|im_end|>", "8<|im_end|>"]
    assert out.y.shape == (1, 2) and out.conversations == 1 and out.cut == 0


def test_whole_chats_encode_as_the_chat_so_far_with_its_two_answers(base):
    pairs = pd.DataFrame([ROW, {"prompt": "Reverse 123", "chosen": "321", "rejected": "123"}])
    explicit = _encoding(base).encode_frame(chat_pairs(pairs))
    implicit = _encoding(base, implicit=True).encode_frame(chat_pairs(pairs, implicit=True))
    assert all(np.array_equal(explicit.x[k], implicit.x[k]) for k in explicit.x)


@pytest.mark.parametrize("implicit", [False, True], ids=["messages", "whole-chats"])
def test_evaluation_answers_the_chat_so_far_and_compares_with_the_chosen_turn(base, implicit):
    """The version's chat columns (preprocessing.json) give evaluation the prompt chat and the chosen
    answer, and serving the column a request's chat is in."""
    enc = _encoding(base, implicit=implicit)
    saved = ChatEncoding.from_dict(json.loads(json.dumps(enc.as_dict())), base)
    row = chat_pairs(pd.DataFrame([ROW]), implicit=implicit).iloc[0].to_dict()
    assert saved.columns.prompt_of(row) == PROMPT and saved.columns.answer_of(row) == "7"
    assert saved.columns.input_column == ("chosen" if implicit else "messages")
    assert saved.target == "chosen"


@pytest.mark.parametrize("implicit", [False, True], ids=["messages", "whole-chats"])
def test_a_few_dpo_steps_on_chat_pairs_run_through_the_loop(base, implicit):
    from freestack.ml.lm.preference import PreferenceNet, score_reference
    from freestack.ml.loop import TrainConfig, fit_source
    from freestack.ml.stream import InMemory

    spec = parse_spec(chat_pair_spec(str(base), implicit=implicit), "chat_prefs.yaml")
    enc = chat_encoding(spec)
    out = enc.encode_frame(chat_pairs(preference_pairs(16, seed=3), implicit=implicit))
    assert out.conversations == 16 and out.cut == 0
    net = build_causal_model(spec, enc)
    assert isinstance(net, PreferenceNet)
    sources = [InMemory({k: torch.tensor(v) for k, v in out.x.items()}, torch.tensor(out.y)) for _ in "tv"]
    for source in sources:
        score_reference(net, source, torch.device("cpu"))
    config = TrainConfig(epochs=2, batch_size=8, learning_rate=1e-3, warmup_epochs=0, device="cpu")
    result = fit_source(net, *sources, config, task="preference")
    assert result.metric == "reward_margin" and len(result.history) == 2
    assert result.history[-1]["val_reward_margin"] > 0  # the chosen turns gained on the rejected ones


def _chat(*turns: tuple[str, str]) -> str:
    return json.dumps([{"role": role, "content": content} for role, content in turns])


PAIR = {"messages": _chat(("user", "What is 1 + 1?")), "chosen": "2", "rejected": _chat(("assistant", "3"))}
WHOLE = {"chosen": _chat(("user", "What is 1 + 1?"), ("assistant", "2")), "rejected": "..."}


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"chosen": "3"}, r"row 1: columns 'chosen' and 'rejected' hold the same answer \('3'\)"),
        ({"rejected": _chat(("assistant", " "))}, "row 1, column 'rejected': .* this one is empty"),
        ({"chosen": ""}, "row 1, column 'chosen': .* this one is empty"),
        ({"rejected": None}, "row 1, column 'rejected': .* this one is missing"),
        (
            {"messages": _chat(("user", "Hi"), ("assistant", "Hello"))},
            "row 1, column 'messages': the chat so far ends with the assistant's turn; its answer is column "
            "'chosen', so the chat must end with the user's turn",
        ),
        (
            {"rejected": _chat(("user", "3"))},
            r"row 1, column 'rejected': expected one \{\"role\": \"assistant\"",
        ),
        ({"messages": "What is 1 + 1?"}, "row 1, column 'messages': not JSON"),
    ],
)
def test_a_bad_chat_pair_is_refused_naming_the_row_and_column(base, row, match):
    rows = [PAIR, {**PAIR, **row}]
    with pytest.raises(ChatError, match=match):
        _encoding(base).encode_frame(pd.DataFrame(rows))


@pytest.mark.parametrize(
    ("rejected", "match"),
    [
        (
            _chat(("user", "What is 1 + 2?"), ("assistant", "3")),
            "row 1: the chats in columns 'chosen' and 'rejected' differ at turn 0, before their last one",
        ),
        (
            _chat(("system", "Be brief."), ("user", "What is 1 + 1?"), ("assistant", "3")),
            "row 1: the chats in columns 'chosen' and 'rejected' differ at turn 0",
        ),
        (
            _chat(("user", "What is 1 + 1?"), ("assistant", "3"), ("user", "Sure?")),
            "row 1, column 'rejected': a preference pair's chat ends with its answer .* with the user's",
        ),
        (_chat(("user", "What is 1 + 1?"), ("assistant", " 2 ")), "row 1: .* hold the same answer"),
        (_chat(("user", "What is 1 + 1?"), ("assistant", "")), "row 1, column 'rejected': .* is empty"),
    ],
)
def test_whole_chats_that_do_not_share_their_prompt_are_refused(base, rejected, match):
    rows = [
        {**WHOLE, "rejected": _chat(("user", "What is 1 + 1?"), ("assistant", "3"))},
        {**WHOLE, "rejected": rejected},
    ]
    with pytest.raises(ChatError, match=match):
        _encoding(base, implicit=True).encode_frame(pd.DataFrame(rows))


def test_the_train_stage_names_the_split_of_a_bad_pair(base):
    from freestack.train.core import _prepare_chats
    from freestack.train.stream import FrameRows

    spec = parse_spec(chat_pair_spec(str(base)), "chat_prefs.yaml")
    bad = pd.DataFrame([PAIR, {**PAIR, "chosen": "3"}])
    with pytest.raises(FreestackError, match="pipeline 'chat_prefs', val split: row 1: columns 'chosen'"):
        _prepare_chats(spec, None, {"train": FrameRows(pd.DataFrame([PAIR])), "val": FrameRows(bad)})
