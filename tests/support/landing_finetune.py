"""Landing data and specs of the fine-tuning pipelines (``model: {type: huggingface}``), on the tiny
pretrained models of :mod:`tests.support.hf_tiny` published on the local Hub stand-in:

- ``reviews``: a CSV per day of product reviews (text) labelled ``pos`` / ``neg`` by their words,
  fine-tuned with LoRA adapters from ``team/tiny-bert``;
- ``digits``: scikit-learn's digits as PNG files in one folder per label (corrupt ones among them),
  fine-tuned in full from ``team/tiny-vit``.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from demo.reviews import make_landing
from tests.support.landing_kinds import GLYPHS_SPEC, glyphs_landing

TEXT_BASE, IMAGE_BASE = "team/tiny-bert", "team/tiny-vit"

REVIEWS_SPEC = {
    "name": "reviews",
    "description": "Is a review positive? A pretrained text classifier fine-tuned with LoRA.",
    "schedule": "@daily",
    "start_date": "2026-11-01",
    "catchup": False,
    "retries": 0,
    "source": {
        "landing": "landing/{pipeline}/{ds}/",
        "format": "csv",
        "schema": {
            "key": "id",
            "target": "sentiment",
            "columns": [
                {"name": "id", "type": "string", "nullable": False},
                {"name": "review", "type": "text", "nullable": False},
                {"name": "sentiment", "type": "string", "nullable": False, "allowed": ["neg", "pos"]},
            ],
        },
    },
    "model": {
        "type": "huggingface",
        "base": TEXT_BASE,
        "task": "text-classification",
        "max_length": 16,
        "peft": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "key", "value", "dense"]},
    },
    "train": {
        "epochs": 10,
        "window_days": 30,
        "learning_rate": 0.01,
        "batch_size": 16,
        "grad_accumulation": 2,
    },
    "gate": {"metric": "accuracy", "threshold": 0.8},
}

DIGITS_SPEC = {
    **GLYPHS_SPEC,
    "name": "digits",
    "description": "Handwritten digits: a pretrained image classifier fine-tuned in full.",
    "model": {"type": "huggingface", "base": IMAGE_BASE, "task": "image-classification"},
    "train": {"epochs": 12, "window_days": 30, "learning_rate": 0.003, "batch_size": 32},
    "gate": {"metric": "accuracy", "threshold": 0.5},
}


def reviews_landing(root: Path, start: date, days: int) -> None:
    make_landing(root.as_uri(), start, days)


def digits_landing(root: Path, start: date, days: int) -> None:
    glyphs_landing(root, start, days, name="digits")
