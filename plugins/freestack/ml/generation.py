"""Deprecated: the language-model code moved to :mod:`freestack.ml.lm` (chat, prompts, causal, answers,
sampling). The old names stay importable from here, with a DeprecationWarning, because the model cards of
versions registered before the move print ``from freestack.ml.generation import ...``, and a card's code
must run as printed. New code imports from :mod:`freestack.ml.lm`; nothing of freestack imports this.
"""

from __future__ import annotations

import warnings

from freestack.ml.lm.answers import Completion, GenerationSettings, TokenLogprob
from freestack.ml.lm.causal import CausalLMNet, load_causal_lm, load_generation_version
from freestack.ml.lm.chat import ChatColumns, ChatError
from freestack.ml.lm.prompts import load_tokenizer, render, save_tokenizer
from freestack.ml.lm.sampling import generate

warnings.warn(
    "freestack.ml.generation moved to freestack.ml.lm (chat, prompts, causal, answers, sampling); "
    "import from there",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "CausalLMNet",
    "ChatColumns",
    "ChatError",
    "Completion",
    "GenerationSettings",
    "TokenLogprob",
    "generate",
    "load_causal_lm",
    "load_generation_version",
    "load_tokenizer",
    "render",
    "save_tokenizer",
]
