"""Landing drops of the fine-tuning tutorial's pipeline (``include/pipelines/reviews.yaml``): a CSV of
short product reviews per day, each labelled ``pos`` or ``neg`` by its words (docs/tutorials/fine-tune.md).

    .venv/bin/python include/demo/reviews.py --start 2026-11-01 --days 3   # [--rows 200] [--root URI]
"""

from __future__ import annotations

import argparse
import csv
import io
from datetime import date, timedelta

GOOD = ["great", "lovely", "perfect", "excellent", "happy", "works", "fine", "recommend"]
BAD = ["broken", "awful", "returned", "poor", "cracked", "useless", "refund", "terrible"]
FILLER = ["the", "item", "was", "really", "and", "it", "arrived", "on", "time", "box", "colour", "size"]


def review_text(label: str, rng) -> str:
    """A review of five ordinary words and two that say the label (``pos`` / ``neg``), shuffled."""
    words = list(rng.choice(FILLER, size=5)) + list(rng.choice(GOOD if label == "pos" else BAD, size=2))
    rng.shuffle(words)
    return " ".join(words)


def day_csv(day: date, rows: int) -> bytes:
    """One day's ``reviews.csv``: id, review, sentiment (seeded by the day)."""
    import numpy as np

    rng = np.random.default_rng(day.toordinal())
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["id", "review", "sentiment"])
    for i in range(rows):
        label = "pos" if rng.random() < 0.5 else "neg"
        out.writerow([f"{day:%Y%m%d}-{i:04d}", review_text(label, rng), label])
    return buf.getvalue().encode()


def make_landing(root: str, start: date, days: int, rows: int = 200, pipeline: str = "reviews") -> list[str]:
    """``days`` drops from ``start`` under ``<root>/landing/<pipeline>/<ds>/reviews.csv``; their URIs."""
    from freestack.storage import join, to_path, write_bytes

    uris = []
    for d in range(days):
        day = start + timedelta(days=d)
        path = join(to_path(root), "landing", pipeline, day.isoformat(), "reviews.csv")
        write_bytes(path, day_csv(day, rows))
        uris.append(str(path))
    return uris


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="storage root URI (default: the project's, as `make demo` uses)")
    ap.add_argument("--start", type=date.fromisoformat, default=date(2026, 11, 1))
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--rows", type=int, default=200)
    args = ap.parse_args()
    if args.root is None:
        from freestack.settings import default_storage_root

        args.root = default_storage_root()
    for uri in make_landing(args.root, args.start, args.days, args.rows):
        print(uri)


if __name__ == "__main__":
    main()
