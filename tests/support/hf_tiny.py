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

``tiny_causal_lm`` (the tutorial's own small local base, :mod:`demo.tiny_lm`) makes a base for instruction
tuning: a Llama- or GPT-2-style causal language model (2 layers, width 64) with a byte-level BPE tokenizer
of about 300 tokens (each digit one token) and a ChatML chat template, pretrained for about ten seconds on
the plain text of :func:`demo.instructions.corpus`, so that fine-tuning on the ``arith`` landing data
(:func:`demo.instructions.instruction_pair` in the chat format) starts from a base that knows the tasks
but not the chat format: 20 epochs on 600 rows take it from about 0 to 0.8-0.98 exact match.
"""

from __future__ import annotations

from pathlib import Path

from demo.instructions import corpus, instruction_pair, messages  # the instruction-tuning tutorial's data
from demo.reviews import BAD, FILLER, GOOD, review_text  # the tutorial's landing data (include/demo)
from demo.tiny_lm import CHAT_TEMPLATE, tiny_causal_lm  # the tutorial's small local base (include/demo)

__all__ = [
    "BAD",
    "CHAT_TEMPLATE",
    "FILLER",
    "GOOD",
    "HEADS",
    "LM_BASE",
    "corpus",
    "instruction_pair",
    "messages",
    "publish",
    "review_text",
    "tiny_causal_lm",
    "tiny_image_model",
    "tiny_text_model",
]

#: the Hub repo the tests publish the tiny causal LM as
LM_BASE = "team/tiny-lm"
#: the transformers class a base of each family is saved as, by head
HEADS = {
    "bert": {
        "classifier": "BertForSequenceClassification",
        "masked-lm": "BertForMaskedLM",
        "bare": "BertModel",
    },
    "distilbert": {
        "classifier": "DistilBertForSequenceClassification",
        "masked-lm": "DistilBertForMaskedLM",
        "bare": "DistilBertModel",
    },
    "vit": {
        "classifier": "ViTForImageClassification",
        "masked-lm": "ViTForMaskedImageModeling",
        "bare": "ViTModel",
    },
}


def tiny_text_model(
    folder: Path,
    seed: int = 0,
    *,
    family: str = "bert",
    head: str = "classifier",
    words: list[str] | None = None,
) -> Path:
    """A BERT- or DistilBERT-style model (with the ``head`` of :data:`HEADS`) and its fast tokenizer over
    ``words`` (default: the reviews' words), saved as transformers writes them."""
    import torch
    import transformers
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, DistilBertConfig, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = words if words is not None else sorted(set(GOOD + BAD + FILLER))
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(seed)
    if family == "bert":
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            initializer_range=0.2,
        )
    else:
        config = DistilBertConfig(
            vocab_size=len(vocab),
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=64,
            initializer_range=0.2,
            pad_token_id=vocab["[PAD]"],
        )
    getattr(transformers, HEADS[family][head])(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def tiny_image_model(folder: Path, seed: int = 0, *, head: str = "classifier") -> Path:
    """A ViT-style model of 16×16 RGB images (with the ``head`` of :data:`HEADS`) and its image processor."""
    import torch
    import transformers
    from transformers import ViTConfig, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_channels=3,
        initializer_range=0.2,
        encoder_stride=4,
    )
    getattr(transformers, HEADS["vit"][head])(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def publish(hub_endpoint: str, repo: str, folder: Path) -> str:
    """``folder`` uploaded to the Hub stand-in as ``repo``; the commit sha."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_endpoint, token="hf_fake")
    api.create_repo(repo, exist_ok=True)
    return api.upload_folder(repo_id=repo, folder_path=str(folder)).oid
