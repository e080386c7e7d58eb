"""freestack.ml.lm on a tiny causal LM built here (tests.support.hf_tiny): the loss is on the
assistant's tokens only, packing keeps conversations apart, generation pads on the left and stops where
it should, and every bad conversation or prompt gets an error that says what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from freestack.ml.lm.answers import GenerationSettings
from freestack.ml.lm.causal import load_causal_lm, token_loss
from freestack.ml.lm.chat import IGNORE, ChatColumns, ChatError
from freestack.ml.lm.prompts import (
    ChatEncoding,
    PromptTooLong,
    answer_text,
    encode_chat,
    load_tokenizer,
    render,
)
from freestack.ml.lm.sampling import generate
from tests.support.checkpoints import MemoryCheckpoints


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tests.support.hf_tiny import tiny_causal_lm

    return tiny_causal_lm(tmp_path_factory.mktemp("lm"), pretrain_steps=0)


@pytest.fixture(scope="module")
def tok(base):
    return load_tokenizer(base)


def _learnt(tok, ids, labels) -> str:
    return tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE])


def test_only_the_assistant_turns_are_learnt(tok):
    chat = ChatColumns(system="Answer briefly.").conversation({"prompt": "What is 3 + 4?", "response": "7"})
    ids, labels = encode_chat(tok, chat)
    assert _learnt(tok, ids, labels).strip() == "7<|im_end|>"
    assert tok.decode(ids).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")
    turns = [
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
    ids, labels = encode_chat(tok, turns)
    assert _learnt(tok, ids, labels).replace("\n", "") == "2<|im_end|>4<|im_end|>"


def test_tool_calls_are_learnt_and_read_back_as_the_template_writes_them(base):
    """data.tools: the template lays the tools out; an assistant's call is learnt as the template writes
    it (evaluation's reference for a call turn), and the server's response parser reads it back."""
    from demo.instructions import TOOLS
    from demo.tiny_lm import RESPONSE_TEMPLATE, TOOLS_TEMPLATE

    tok = load_tokenizer(base, TOOLS_TEMPLATE)  # the tool-use base's template, on this base's tokenizer
    tok.response_template = RESPONSE_TEMPLATE
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 38, "b": 45}'}}
    ]
    row = {
        "messages": json.dumps(
            [
                {"role": "user", "content": "What is 38 + 45?"},
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_1", "content": "83"},
                {"role": "assistant", "content": "83"},
            ]
        )
    }
    columns = ChatColumns(prompt=None, response=None, messages="messages", tools=TOOLS)
    chat = columns.conversation(row)
    ids, labels = encode_chat(tok, chat, tools=TOOLS)
    written = '<tool_call>{"name": "add", "arguments": {"a": 38, "b": 45}}</tool_call>'
    assert tok.decode(ids).startswith("<|im_start|>system\nTools: add(a, b) reverse(digits)<|im_end|>")
    assert _learnt(tok, ids, labels).replace("\n", "") == f"{written}<|im_end|>83<|im_end|>"
    assert answer_text(tok, chat[:2], TOOLS) == written and answer_text(tok, chat, TOOLS) == "83"
    assert ChatEncoding(tok, columns, 256).encode_rows([row]).tokens == sum(lab != IGNORE for lab in labels)
    parsed = tok.parse_response(written, prefix=render(tok, chat[:1], generation_prompt=True, tools=TOOLS))
    assert parsed["tool_calls"] == [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 38, "b": 45}}}
    ]


def test_packing_restarts_positions_and_keeps_every_answer(tok):
    rows = [{"prompt": f"What is {a} + 1?", "response": str(a + 1)} for a in range(9)]
    enc = ChatEncoding(tok, ChatColumns(), max_length=64)
    padded, packed = enc.encode_rows(rows), enc.encode_rows(rows, packing=True)
    assert len(packed.y) < len(padded.y) and packed.tokens == padded.tokens == 9 * int(
        (padded.y[0] != IGNORE).sum()
    )
    pos = packed.x["position_ids"][0]
    assert pos[0] == 0 and (np.diff(pos) != 1).sum() >= 1  # a second conversation starts at 0 again


def test_packed_conversations_do_not_attend_to_each_other(base, tok):
    """The logits of a conversation packed after another equal those of it alone."""
    model = load_causal_lm(str(base)).eval()
    enc = ChatEncoding(tok, ChatColumns(), max_length=64)
    rows = [
        {"prompt": "What is 2 + 2?", "response": "4"},
        {"prompt": "Reverse the digits: 123", "response": "321"},
    ]
    alone = enc.encode_rows(rows[1:])
    packed = enc.encode_rows(rows, packing=True)
    n = int(alone.x["attention_mask"][0].sum())
    with torch.no_grad():
        one = model(input_ids=torch.as_tensor(alone.x["input_ids"][:, :n])).logits[0]
        both = model(
            input_ids=torch.as_tensor(packed.x["input_ids"]),
            position_ids=torch.as_tensor(packed.x["position_ids"]),
        ).logits[0]
    start = int(np.flatnonzero(packed.x["position_ids"][0] == 0)[1])
    longer_first = (
        packed.x["input_ids"][0, start : start + n].tolist() == alone.x["input_ids"][0, :n].tolist()
    )
    offset = start if longer_first else 0
    assert torch.allclose(both[offset : offset + n], one, atol=1e-4)


def test_over_long_conversations_are_cut_and_answerless_ones_dropped(tok):
    enc = ChatEncoding(tok, ChatColumns(), max_length=12)
    out = enc.encode_rows([{"prompt": "Convert 2026-11-03 to DD/MM/YYYY.", "response": "03/11/2026"}])
    assert (out.cut, out.dropped, len(out.y)) == (1, 1, 0)


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ({"chat": "[{'role': 'user'}]"}, "not JSON"),
        ({"chat": json.dumps([{"role": "robot", "content": "hi"}])}, "needs a role"),
        (
            {"chat": json.dumps([{"role": "tool", "content": "4"}])},
            'message 0: a tool turn answers a call: send its "tool_call_id"',
        ),
        ({"chat": json.dumps([{"role": "user", "content": "hi"}])}, "no assistant turn"),
        ({"chat": None}, "non-empty list"),
    ],
)
def test_a_malformed_chat_names_the_row_and_the_fix(tok, row, says):
    with pytest.raises(ChatError, match=says) as err:
        ChatEncoding(tok, ChatColumns(prompt=None, response=None, messages="chat"), 64).encode_rows([row])
    assert "row 0" in str(err.value)


def test_a_base_without_a_chat_template_is_refused_naming_the_setting(tmp_path):
    from tests.support.hf_tiny import tiny_causal_lm

    folder = tiny_causal_lm(tmp_path / "plain", chat_template=False, pretrain_steps=0)
    with pytest.raises(ChatError, match="model.chat_template"):
        load_tokenizer(folder)
    assert load_tokenizer(folder, "{% for m in messages %}{{ m['content'] }}{% endfor %}").chat_template


def test_generation_pads_left_and_answers_each_prompt_as_alone(base, tok):
    model = load_causal_lm(str(base)).eval()
    chats = [
        [{"role": "user", "content": "What is 2 + 2?"}],
        [{"role": "user", "content": "Convert 2026-11-03 to DD/MM/YYYY."}],
    ]
    settings = GenerationSettings(max_new_tokens=6)
    batched = generate(model, tok, chats, settings)
    alone = [generate(model, tok, [c], settings)[0] for c in chats]
    assert [c.text for c in batched] == [c.text for c in alone]
    assert all(c.completion_tokens <= 6 and c.finish_reason in ("stop", "length") for c in batched)
    assert batched[0].prompt_tokens < batched[1].prompt_tokens


def test_an_over_long_prompt_is_cut_from_the_left_or_refused(base, tok):
    model = load_causal_lm(str(base)).eval()
    chat = [[{"role": "user", "content": "What is 1 + 1? " * 20}]]
    cut = generate(model, tok, chat, GenerationSettings(max_new_tokens=2, max_prompt_tokens=16))[0]
    assert cut.truncated and cut.prompt_tokens == 16
    with pytest.raises(PromptTooLong, match="over the limit of 16"):
        generate(
            model, tok, chat, GenerationSettings(max_new_tokens=2, max_prompt_tokens=16, truncate="refuse")
        )


def test_the_token_loss_ignores_masked_labels():
    logits = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), IGNORE)
    labels[0, 3] = 4
    want = torch.nn.functional.cross_entropy(logits[0, 2:3], torch.tensor([4]))
    assert torch.allclose(token_loss(logits, labels), want)


def test_a_retry_resumes_a_tied_language_model_from_its_checkpoint(base, tok):
    """Embeddings tied to the head are saved as copies (safetensors refuses shared memory) and a retried
    run resumes from the checkpoint's epoch with the same weights."""
    from freestack.ml.lm.causal import CausalLMNet
    from freestack.ml.loop import TrainConfig, fit

    enc = ChatEncoding(tok, ChatColumns(), max_length=48).encode_rows(
        [{"prompt": f"What is {a} + 2?", "response": str(a + 2)} for a in range(8)]
    )

    def net():
        model = load_causal_lm(str(base))
        assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
        return CausalLMNet(model, base={"repo": "x"}, columns=ChatColumns(), max_length=48)

    store, config = (
        MemoryCheckpoints(),
        TrainConfig(epochs=2, batch_size=4, learning_rate=1e-3, warmup_epochs=0),
    )
    first = fit(net(), enc.x, enc.y, enc.x, enc.y, config, task="generation", checkpoints=store)
    again = fit(net(), enc.x, enc.y, enc.x, enc.y, config, task="generation", checkpoints=store)
    assert again.resumed_from == 2 and again.history == first.history
    want, got = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_a_tokenizer_that_knows_more_tokens_than_the_model_has_rows_is_fitted_or_refused(base, tmp_path):
    """A token added to the tokenizer past the model's rows (transformers' ``<|endoftext|>`` as id N on an
    N-row model): a prompt holding it is refused naming the id and both sizes (embedding it would fail
    the batch); a grammar is built over the model's width and never allows it; training full weights
    resizes the embeddings, a LoRA adapter (which cannot add rows to its base) is refused saying what to do."""
    from freestack.ml.lm.causal import fit_vocabulary, token_rows
    from freestack.ml.lm.constrained import GrammarProcessor, json_grammar, vocab_of
    from freestack.ml.lm.prompts import OutOfVocabulary, prompt_ids
    from freestack.ml.pretrained import PretrainedError

    tok = load_tokenizer(base)
    tok.add_special_tokens({"additional_special_tokens": ["<|added|>"]})
    model = load_causal_lm(str(base))
    rows = token_rows(model)
    assert len(tok) == rows + 1
    settings = GenerationSettings(max_prompt_tokens=64)
    with pytest.raises(
        OutOfVocabulary, match=f"token id {rows}, outside the model's vocabulary .*knows {rows + 1}"
    ):
        prompt_ids(tok, [(1, rows)], settings, rows=rows)
    with pytest.raises(OutOfVocabulary, match=f"token id {rows}"):  # in a text, as the tokenizer reads it
        prompt_ids(tok, ["hello <|added|>"], settings, rows=rows)
    assert prompt_ids(tok, [(1, rows - 1)], settings, rows=rows) == [([1, rows - 1], False)]

    grammar = json_grammar({"type": "object"}, tok, vocab_of(model), [tok.eos_token_id])
    processor = GrammarProcessor(grammar, tok, vocab_of(model), 1, 1)
    scores = processor(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, vocab_of(model)))
    assert scores.shape == (1, rows) and torch.isfinite(scores).any()

    with pytest.raises(PretrainedError, match="a LoRA adapter cannot add rows to its base"):
        fit_vocabulary(model, tok, lora=True)
    said = fit_vocabulary(model, tok, lora=False)
    assert said and f"resized to {rows + 1} rows" in said and token_rows(model) == rows + 1
    assert fit_vocabulary(model, tok, lora=False) is None
