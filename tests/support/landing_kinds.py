"""Landing data of the two non-numeric pipelines the DAG and scheduler tests run end to end:

- ``shop``: a CSV per day of product returns, with a price (float), a colour (category), a review
  (text) and a photo (image, a PNG path under the day's landing folder); whether an item comes back
  depends on all four;
- ``glyphs``: an image folder per day (``<label>/<file>.png``), the scikit-learn digits drawn as
  24×24 PNGs, with corrupt and truncated PNGs among them.
"""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

SHOP_SPEC = {
    "name": "shop",
    "description": "Will a sold item come back? Price, colour, review text and photo.",
    "schedule": "@daily",
    "start_date": "2026-11-01",
    "catchup": False,
    "retries": 0,
    "source": {
        "landing": "landing/{pipeline}/{ds}/",
        "format": "csv",
        "schema": {
            "key": "id",
            "target": "returned",
            "columns": [
                {"name": "id", "type": "string", "nullable": False},
                {"name": "price", "type": "float", "nullable": False},
                {"name": "colour", "type": "category"},
                {"name": "review", "type": "text"},
                {"name": "photo", "type": "image", "nullable": False},
                {"name": "returned", "type": "string", "nullable": False, "allowed": ["no", "yes"]},
            ],
        },
        "policy": {"max_quarantine_fraction": 0.1},
    },
    "model": {
        "hidden": [32],
        "channels": [8],
        "image": {"size": [16, 16]},
        "text": {"vocab_size": 200, "max_length": 12},
    },
    "train": {"epochs": 8, "window_days": 30, "learning_rate": 0.01, "batch_size": 32},
    # the tests that use it are about every kind of input going through every stage, not the model's
    # quality: on their two days of rows a good run scores 0.8-1.0 and an unlucky one 0.75, so the gate
    # only rules out a model that learnt nothing (a coin scores 0.5)
    "gate": {"metric": "accuracy", "threshold": 0.65},
}

GLYPHS_SPEC = {
    "name": "glyphs",
    "description": "Handwritten digits as PNG files in one folder per label.",
    "schedule": "@daily",
    "start_date": "2026-11-01",
    "catchup": False,
    "retries": 0,
    "source": {
        "landing": "landing/{pipeline}/{ds}/",
        "format": "imagefolder",
        "schema": {
            "key": "path",
            "target": "label",
            "columns": [
                {"name": "path", "type": "string", "nullable": False},
                {"name": "image", "type": "image", "nullable": False},
                {"name": "label", "type": "category", "nullable": False},
            ],
        },
        "policy": {"max_quarantine_fraction": 0.1},
    },
    "model": {"hidden": [64], "channels": [16, 32], "image": {"size": [16, 16], "channels": 1}},
    # the window is streamed: spooled in row groups of 64 images, shuffled through a 256-row buffer
    "train": {
        "epochs": 10,
        "window_days": 30,
        "learning_rate": 0.01,
        "batch_size": 32,
        "data": {"mode": "stream", "chunk_rows": 64, "shuffle_buffer": 256},
    },
    "gate": {"metric": "accuracy", "threshold": 0.7},
}

GOOD_WORDS = ["sturdy and well made", "fits perfectly", "great colour, love it", "works as described"]
BAD_WORDS = ["broke after one day", "cheap plastic, returning", "wrong size, smells odd", "stopped working"]
COLOURS_KEPT, COLOURS_RETURNED = ["navy", "green", "black"], ["orange", "pink", "yellow"]


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def photo(bright: bool, rng: np.random.Generator) -> bytes:
    """A 20x20 RGB photo: bright for items that come back (the product looks washed out), dark else."""
    base = 200 if bright else 50
    return png(np.clip(rng.normal(base, 25, size=(20, 20, 3)), 0, 255))


def shop_day(folder: Path, day: date, rows: int = 160, seed: int = 0, corrupt: int = 2) -> dict[str, str]:
    """One day of shop landing data: ``rows`` rows, ``corrupt`` of them pointing at broken PNGs.
    Returns the reasons the broken rows should be quarantined for (by id)."""
    rng = np.random.default_rng(seed + day.toordinal())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "photos").mkdir(exist_ok=True)
    broken: dict[str, str] = {}
    with open(folder / "sales.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "price", "colour", "review", "photo", "returned"])
        for i in range(rows):
            key = f"{day:%Y%m%d}-{i:04d}"
            back = bool(rng.random() < 0.5)
            votes = (
                rng.random(3) < 0.85
            )  # each of colour, review, photo agrees with the outcome 85% of the time
            colour = rng.choice(COLOURS_RETURNED if votes[0] == back else COLOURS_KEPT)
            review = rng.choice(BAD_WORDS if votes[1] == back else GOOD_WORDS)
            name = f"photos/{key}.png"
            data = photo(bool(votes[2] == back), rng)
            if i < corrupt:
                data = data[: len(data) // 2] if i % 2 == 0 else b"not a png at all"
                broken[key] = "image"
            (folder / name).write_bytes(data)
            out.writerow([key, f"{rng.uniform(5, 200):.2f}", colour, review, name, "yes" if back else "no"])
    return broken


def shop_landing(root: Path, start: date, days: int) -> None:
    for d in range(days):
        day = start + timedelta(days=d)
        shop_day(root / "landing" / "shop" / day.isoformat(), day)


def glyphs_day(folder: Path, day: date, per_day: int = 300, corrupt: int = 3) -> list[str]:
    """One day of the image folder: ``per_day`` digits as 24x24 grey PNGs under ``<label>/``, the first
    ``corrupt`` of them broken (random bytes, a truncated PNG). Returns the broken files' paths."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    offset = (day.toordinal() * per_day) % (len(digits.target) - per_day)
    broken = []
    for i in range(per_day):
        j = offset + i
        label = str(int(digits.target[j]))
        pixels = np.kron(digits.images[j] * (255 / 16), np.ones((3, 3)))  # 8x8 -> 24x24
        data = png(pixels)
        rel = f"{label}/{day:%Y%m%d}-{j:04d}.png"
        if i < corrupt:
            data = np.random.default_rng(j).bytes(300) if i % 2 == 0 else data[: len(data) // 2]
            broken.append(rel)
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return broken


def glyphs_landing(root: Path, start: date, days: int, name: str = "glyphs") -> None:
    for d in range(days):
        day = start + timedelta(days=d)
        glyphs_day(root / "landing" / name / day.isoformat(), day)
