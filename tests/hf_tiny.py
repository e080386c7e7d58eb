"""Tiny pretrained models for the fine-tuning tests, made here (random weights, ``save_pretrained``) and
published on the local Hub stand-in (:mod:`tests.hub_fake`), so the real download path runs:

- ``tiny_text_model``: a BERT-style sequence classifier (2 layers, width 32) with a WordPiece tokenizer
  over the words of :func:`review_text`, saved as ``tokenizer.json`` + ``tokenizer_config.json``;
- ``tiny_image_model``: a ViT-style image classifier (16×16 images, 4×4 patches) with a ViT image
  processor (``preprocessor_config.json``).
"""

from __future__ import annotations

from pathlib import Path

from demo.reviews import BAD, FILLER, GOOD, review_text  # the tutorial's landing data (include/demo)

__all__ = ["BAD", "FILLER", "GOOD", "publish", "review_text", "tiny_image_model", "tiny_text_model"]


def tiny_text_model(folder: Path, seed: int = 0) -> Path:
    """A BERT-style classifier and its fast tokenizer, saved as transformers writes them."""
    import torch
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

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
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
    BertForSequenceClassification(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def tiny_image_model(folder: Path, seed: int = 0) -> Path:
    """A ViT-style classifier of 16×16 RGB images and its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_channels=3, initializer_range=0.2)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def publish(hub_endpoint: str, repo: str, folder: Path) -> str:
    """``folder`` uploaded to the Hub stand-in as ``repo``; the commit sha."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_endpoint, token="hf_fake")
    api.create_repo(repo, exist_ok=True)
    return api.upload_folder(repo_id=repo, folder_path=str(folder)).oid
