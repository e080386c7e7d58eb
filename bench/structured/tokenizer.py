"""The benchmark's tokenizer: a byte-level BPE of 32,000 tokens trained with the ``tokenizers`` library on the
Python sources and text files of the project's own environment (no tokenizer can be downloaded here), saved
as ``tokenizer.json`` and loaded as transformers' ``PreTrainedTokenizerFast`` (the fast tokenizer that every
grammar library builds its token table from).

The corpus is the first ``corpus_mib`` MiB of the ``.py``, ``.md`` and ``.txt`` files under the
environment's ``site-packages``, in sorted path order; the trained file is kept under ``bench/.work`` by the
corpus's sha256 and the training settings, so a re-run reuses it.
"""

from __future__ import annotations

import hashlib
import sysconfig
import time
from pathlib import Path

from pydantic import BaseModel

from bench.common import REPO

EOS = "<|endoftext|>"
SUFFIXES = (".py", ".md", ".txt")
CACHE = REPO / "bench" / ".work" / "structured"


class TrainedTokenizer(BaseModel):
    """Where the tokenizer is and what it was trained on."""

    path: str
    vocab_size: int
    corpus_files: int
    corpus_mib: float
    corpus_sha256: str
    train_s: float | None  #: None: read from the cache


def corpus_files(root: Path, limit_bytes: int) -> list[Path]:
    """The text files of ``root`` in sorted path order, as many as make ``limit_bytes``."""
    chosen, total = [], 0
    for path in sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file()):
        if total >= limit_bytes:
            break
        chosen.append(path)
        total += path.stat().st_size
    return chosen


def _texts(files: list[Path]):
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


def _train(files: list[Path], vocab_size: int, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_texts(files), trainer=trainer, length=len(files))
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))


def trained(vocab_size: int = 32_000, corpus_mib: int = 32, cache: Path = CACHE) -> TrainedTokenizer:
    """The tokenizer file, trained now or found in the cache."""
    files = corpus_files(Path(sysconfig.get_paths()["purelib"]), corpus_mib << 20)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    sha = digest.hexdigest()
    out = cache / f"tokenizer-{vocab_size}-{sha[:16]}.json"
    started, train_s = time.perf_counter(), None
    if not out.exists():
        _train(files, vocab_size, out)
        train_s = round(time.perf_counter() - started, 1)
    return TrainedTokenizer(
        path=str(out),
        vocab_size=vocab_size,
        corpus_files=len(files),
        corpus_mib=round(sum(p.stat().st_size for p in files) / (1 << 20), 1),
        corpus_sha256=sha,
        train_s=train_s,
    )


def load(path: str):
    """The tokenizer as transformers' fast tokenizer, its end-of-text token the end of an answer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=path, eos_token=EOS)
