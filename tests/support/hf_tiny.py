"""Tiny pretrained models for the fine-tuning tests, made here (random weights, ``save_pretrained``) and
published on the local Hub stand-in (:mod:`tests.fakes.hub`), so the real download path runs:

- ``tiny_text_model``: a BERT-style sequence classifier (2 layers, width 32) with a WordPiece tokenizer
  over the words of :func:`review_text`, saved as ``tokenizer.json`` + ``tokenizer_config.json``;
- ``tiny_image_model``: a ViT-style image classifier (16×16 images, 4×4 patches) with a ViT image
  processor (``preprocessor_config.json``).

Either may be saved with another head (``head``): a classifier, the pretraining head a base is usually
published with (``masked-lm``: ``BertForMaskedLM`` / ``DistilBertForMaskedLM``,
``ViTForMaskedImageModeling``), or none (``bare``: ``BertModel``, ``DistilBertModel``, ``ViTModel``); a
text base is BERT- or DistilBERT-style (``family``).

``tiny_causal_lm`` makes a base for instruction tuning: a Llama- or GPT-2-style causal language model
(2 layers, width 64) with a byte-level BPE tokenizer of about 300 tokens (each digit one token) and a
ChatML chat template, pretrained for about ten seconds on the plain text of
:func:`demo.instructions.corpus`, so that fine-tuning on the ``arith`` landing data
(:func:`demo.instructions.instruction_pair` in the chat format) starts from a base that knows the tasks
but not the chat format: 20 epochs on 600 rows take it from about 0 to 0.8-0.98 exact match.
"""

from __future__ import annotations

from pathlib import Path

from demo.instructions import corpus, instruction_pair, messages  # the instruction-tuning tutorial's data
from demo.reviews import BAD, FILLER, GOOD, review_text  # the tutorial's landing data (include/demo)

__all__ = [
    "BAD", "CHAT_TEMPLATE", "FILLER", "GOOD", "HEADS", "LM_BASE", "corpus", "instruction_pair", "messages",
    "publish", "review_text", "tiny_causal_lm", "tiny_image_model", "tiny_text_model",
]  # fmt: skip

#: the Hub repo the tests publish the tiny causal LM as
LM_BASE = "team/tiny-lm"
#: ChatML as Qwen writes it (system, user and assistant turns; ``add_generation_prompt`` opens the assistant's)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
#: Qwen2's pre-tokenizer split: words, single digits, punctuation runs, whitespace
_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

#: the transformers class a base of each family is saved as, by head
HEADS = {
    "bert": {"classifier": "BertForSequenceClassification", "masked-lm": "BertForMaskedLM", "bare": "BertModel"},
    "distilbert": {"classifier": "DistilBertForSequenceClassification", "masked-lm": "DistilBertForMaskedLM",
                   "bare": "DistilBertModel"},
    "vit": {"classifier": "ViTForImageClassification", "masked-lm": "ViTForMaskedImageModeling", "bare": "ViTModel"},
}  # fmt: skip


def tiny_text_model(folder: Path, seed: int = 0, *, family: str = "bert", head: str = "classifier") -> Path:
    """A BERT- or DistilBERT-style model (with the ``head`` of :data:`HEADS`) and its fast tokenizer, saved
    as transformers writes them."""
    import torch
    import transformers
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, DistilBertConfig, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(GOOD + BAD + FILLER)))}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    if family == "bert":
        config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
    else:
        config = DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=64, initializer_range=0.2, pad_token_id=vocab["[PAD]"])
    getattr(transformers, HEADS[family][head])(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def tiny_image_model(folder: Path, seed: int = 0, *, head: str = "classifier") -> Path:
    """A ViT-style model of 16×16 RGB images (with the ``head`` of :data:`HEADS`) and its image processor."""
    import torch
    import transformers
    from transformers import ViTConfig, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_channels=3, initializer_range=0.2, encoder_stride=4)
    getattr(transformers, HEADS["vit"][head])(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def _lm_tokenizer(chat_template: bool):
    """A byte-level BPE tokenizer (314 tokens, the same for every seed) trained on the tasks' text and the
    chat roles, splitting digits apart as Qwen2's does."""
    import numpy as np
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(0)
    pairs = [instruction_pair(rng) for _ in range(2000)]
    text = corpus(2000, 0) + [t for pair in pairs for t in pair] + ["system\nuser\nassistant\n"] * 100
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = BpeTrainer(vocab_size=384, min_frequency=2, special_tokens=specials, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None, model_max_length=128)  # fmt: skip
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def _lm_config(family: str, tok):
    from transformers import GPT2Config, LlamaConfig

    # the tokenizer has no bos token; as Qwen's configs do, the config names <|endoftext|> (the pad) as bos
    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": tok.pad_token_id}  # fmt: skip
    if family == "llama":
        return LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           tie_word_embeddings=True, **ids)  # fmt: skip
    if family == "gpt2":
        return GPT2Config(vocab_size=len(tok), n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=128,
                          tie_word_embeddings=True, **ids)  # fmt: skip
    raise ValueError(f"family must be 'llama' or 'gpt2', not {family!r}")


def tiny_causal_lm(
    folder: Path,
    seed: int = 0,
    *,
    family: str = "llama",
    chat_template: bool = True,
    pretrain_steps: int = 500,
) -> Path:
    """A Llama- (``LlamaForCausalLM``) or GPT-2-style (``GPT2LMHeadModel``) causal LM of 2 layers, width 64,
    and its fast tokenizer (eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos; the ChatML template when
    ``chat_template``), pretrained for ``pretrain_steps`` AdamW steps on :func:`corpus`'s plain text (about
    ten seconds of one CPU core for the default 500, after which a Llama-style base answers the dates and
    reversals in that plain form) and saved as transformers writes them, with a ``generation_config.json``
    (eos ``<|im_end|>``, greedy); the same weights for a seed. ``pretrain_steps=0``: random weights."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = _lm_tokenizer(chat_template)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_lm_config(family, tok))
    if pretrain_steps:
        _pretrain(model, tok, seed, pretrain_steps)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               do_sample=False, max_new_tokens=16)  # fmt: skip
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _pretrain(model, tok, seed: int, steps: int, batch: int = 32, seq: int = 48, lr: float = 3e-3) -> None:
    """Next-token prediction on batches of whole lines of :func:`corpus`, each line ended by the eos token
    and padded (a line always starting a row: a tiny model learns the copying far sooner than on packed
    windows), on one thread (as fast for a model this small, and not slowed by other work on the CPUs)."""
    import torch

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


def publish(hub_endpoint: str, repo: str, folder: Path) -> str:
    """``folder`` uploaded to the Hub stand-in as ``repo``; the commit sha."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_endpoint, token="hf_fake")
    api.create_repo(repo, exist_ok=True)
    return api.upload_folder(repo_id=repo, folder_path=str(folder)).oid
