"""A small chat model built on this machine, for the instruction-tuning tutorial without the Hugging Face
Hub (docs/tutorials/instruction-tune.md, "No network?") and for the tests: a Llama-style causal language
model (2 layers, width 64, about 100 thousand weights) with a byte-level BPE tokenizer of about 300
tokens (each digit one token) trained here on the tutorial's text, ChatML's chat template, and a few
seconds of pretraining on :func:`demo.instructions.corpus`'s plain text, so that instruction tuning on the
``arith`` landing data has to teach it the chat format rather than the tasks. Nothing is downloaded.

    .venv/bin/python include/demo/tiny_lm.py                        # into ~/.cache/freestack/tiny-chat-lm
    .venv/bin/python include/demo/tiny_lm.py --to /path/to/folder   # or s3://..., file://...
    .venv/bin/python include/demo/tiny_lm.py --tools                # the tool-use task's base (tiny-tool-lm)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

#: where the script writes the base unless told (include/pipelines/arith_tiny.yaml names it): a local
#: folder, which training, evaluation and the model server all read without a service
DEFAULT_URI = "~/.cache/freestack/tiny-chat-lm"
#: the tool-use task's base (``--tools``; include/pipelines/tools_tiny.yaml)
TOOLS_URI = "~/.cache/freestack/tiny-tool-lm"
#: ChatML as Qwen writes it (system, user and assistant turns; ``add_generation_prompt`` opens the assistant's)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
#: the tool-use base's (``tools=True``): ChatML, and with ``tools`` a system turn first that lists them in
#: short (``Tools: add(a, b) ...``: a model of 256 positions has no room for their JSON schemas); an
#: assistant's calls are written as Qwen writes them (``<tool_call>{"name": ..., "arguments": ...}</tool_call>``)
#: and a tool's answer is a ``tool`` turn. A chat without tools renders as :data:`CHAT_TEMPLATE` does
TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n' }}{%- endif %}{{- 'Tools:' }}"
    "{%- for tool in tools %}{%- set props = (tool.function.parameters or {}).properties or {} %}"
    "{{- ' ' + tool.function.name + '(' + (props | list | join(', ')) + ')' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message.role == 'system' %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant\\n' + (message.content or '') }}"
    "{%- for call in message.tool_calls %}"
    "{{- '<tool_call>' + ({'name': call.function.name, 'arguments': call.function.arguments} | tojson) + '</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
#: how the server reads an answer's calls (transformers' ``parse_response``; ``tool_choice: auto``): Qwen's
#: ``<tool_call>`` blocks, the text around them the answer's content
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open_pattern": r"\s*<tool_call>",
            "close": "</tool_call>",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"content": "text"},
    },
}
#: ChatML's special tokens: padding, a turn's start, a turn's end (the eos)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
#: Qwen2's pre-tokenizer split: words, single digits, punctuation runs, whitespace
_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def tiny_causal_lm(
    folder: Path,
    seed: int = 0,
    *,
    family: str = "llama",
    chat_template: bool = True,
    pretrain_steps: int = 500,
    tools: bool = False,
) -> Path:
    """A Llama- (``LlamaForCausalLM``) or GPT-2-style (``GPT2LMHeadModel``) causal LM of 2 layers, width 64,
    and its fast tokenizer (eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos; the ChatML template when
    ``chat_template``), pretrained for ``pretrain_steps`` AdamW steps on :func:`corpus`'s plain text (about
    ten seconds of one CPU core for the default 500, after which a Llama-style base answers the dates and
    reversals in that plain form) and saved as transformers writes them, with a ``generation_config.json``
    (eos ``<|im_end|>``, greedy); the same weights for a seed. ``pretrain_steps=0``: random weights.
    ``tools``: the tool-use tutorial's base: its tokenizer also learns the calls' text
    (:func:`demo.instructions.tool_chat`), its template is :data:`TOOLS_TEMPLATE` with
    :data:`RESPONSE_TEMPLATE` to read calls back, and it reads 256 positions (a chat with a call and its
    answer). Without it, the base is the same files whatever this module adds (earlier versions record its
    commit)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = _lm_tokenizer(chat_template, tools)
    if chat_template and tools:
        tok.chat_template, tok.response_template = TOOLS_TEMPLATE, RESPONSE_TEMPLATE
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_lm_config(family, tok))
    if pretrain_steps:
        _pretrain(model, tok, seed, pretrain_steps)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False, max_new_tokens=16
    )
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _lm_tokenizer(chat_template: bool, tools: bool = False):
    """A byte-level BPE tokenizer (314 tokens, the same for every seed) trained on the tasks' text and the
    chat roles, splitting digits apart as Qwen2's does; with ``tools``, on the tool-use task's calls too
    (512 tokens)."""
    import json

    import numpy as np

    from demo.instructions import corpus, instruction_pair, tool_chat

    rng = np.random.default_rng(0)
    pairs = [instruction_pair(rng) for _ in range(2000)]
    text = corpus(2000, 0) + [t for pair in pairs for t in pair]
    if not tools:
        return chatml_tokenizer(text, vocab_size=384, model_max_length=128, chat_template=chat_template)
    calls = [m.get("tool_calls") for i in range(2000) for m in tool_chat(rng, i)]
    text += [
        f"Tools: add(a, b) reverse(digits)<tool_call>{json.dumps(c[0]['function'])}</tool_call>"
        for c in calls
        if c
    ]
    return chatml_tokenizer(text, vocab_size=512, model_max_length=256, chat_template=chat_template)


def chatml_tokenizer(text: list[str], *, vocab_size: int, model_max_length: int, chat_template: bool = True):
    """A byte-level BPE tokenizer trained on ``text`` and the chat roles, Qwen2's split (each digit one
    token), ChatML's special tokens (``<|im_end|>`` ends a turn, ``<|endoftext|>`` pads) and, with
    ``chat_template``, its template: the tutorial's base and the instruction-tuning benchmarks' share it."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([*text, *["system\nuser\nassistant\n"] * 100], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=model_max_length,
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def _lm_config(family: str, tok):
    from transformers import GPT2Config, LlamaConfig

    # the tokenizer has no bos token; as Qwen's configs do, the config names <|endoftext|> (the pad) as bos
    ids = {
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.pad_token_id,
    }
    if family == "llama":
        return LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=tok.model_max_length,
            tie_word_embeddings=True,
            **ids,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=len(tok),
            n_embd=64,
            n_inner=128,
            n_layer=2,
            n_head=4,
            n_positions=128,
            tie_word_embeddings=True,
            **ids,
        )
    raise ValueError(f"family must be 'llama' or 'gpt2', not {family!r}")


def _pretrain(model, tok, seed: int, steps: int, batch: int = 32, seq: int = 48, lr: float = 3e-3) -> None:
    """Next-token prediction on batches of whole lines of :func:`corpus`, each line ended by the eos token
    and padded (a line always starting a row: a tiny model learns the copying far sooner than on packed
    windows), on one thread (as fast for a model this small, and not slowed by other work on the CPUs)."""
    import torch

    from demo.instructions import corpus

    lines = [ids[: seq - 1] + [tok.eos_token_id] for ids in tok(corpus(4000, seed + 1))["input_ids"]]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    # warm up for 20 steps, hold, cool down linearly over the last fifth
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20, 5 * (steps - s) / steps))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(steps):
            rows = [lines[i] for i in torch.randint(0, len(lines), (batch,), generator=gen).tolist()]
            width = max(map(len, rows))
            ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
        model.eval()
    finally:
        torch.set_num_threads(threads)


def write_base(uri: str, seed: int = 0, pretrain_steps: int = 500, tools: bool = False) -> list[str]:
    """Build the base and write its files under ``uri`` (a folder path or a storage URI); their URIs."""
    from freestack.storage import join, to_path, write_bytes

    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_causal_lm(Path(tmp), seed, pretrain_steps=pretrain_steps, tools=tools)
        target = to_path(uri if "://" in uri else Path(uri).expanduser().resolve().as_uri())
        written = []
        for path in sorted(folder.iterdir()):
            dest = join(target, path.name)
            write_bytes(dest, path.read_bytes())
            written.append(str(dest))
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--to", help=f"where the base's files go (default: {DEFAULT_URI}, with --tools {TOOLS_URI})"
    )
    ap.add_argument("--seed", type=int, default=0, help="the same seed gives the same weights")
    ap.add_argument("--pretrain-steps", type=int, default=500, help="0: random weights")
    ap.add_argument(
        "--tools", action="store_true", help="the tool-use task's base (include/pipelines/tools_tiny.yaml)"
    )
    args = ap.parse_args()
    to = args.to or (TOOLS_URI if args.tools else DEFAULT_URI)
    for uri in write_base(to, args.seed, args.pretrain_steps, args.tools):
        print(uri)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # include/: the ``demo`` package
    main()
