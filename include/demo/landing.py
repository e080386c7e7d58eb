"""Produce the demo's daily landing drops from scikit-learn's bundled digits dataset.

Each day gets one CSV under ``landing/digits/<ds>/``: a slice of the 1,797 real images, with a
few malformed rows mixed in (a value out of range, a non-number, a short row, an unknown label,
a duplicate id), so the quarantine has something to show.

    .venv/bin/python include/demo/landing.py --start 2026-11-01 --days 5   # [--root URI]
"""

from __future__ import annotations

import argparse
import csv
import io
from datetime import date, datetime, timedelta

from freestack.storage import join, to_path, write_bytes


def day_rows(day_index: int, days: int, variant: int = 0) -> list[list[str]]:
    """Day ``day_index`` of the digits split over ``days`` days. ``variant`` > 0 gives new rows: each image
    shifted ``variant`` pixel(s) right, with new keys. Later demo rounds use them: a drifted batch, on which
    the model trained on the earlier round scores far lower (about 0.53 accuracy for one pixel), so the
    retrained challenger wins the gate."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.target)
    per_day = n // days
    lo, hi = day_index * per_day, (day_index + 1) * per_day if day_index < days - 1 else n
    rows = []
    for i in range(lo, hi):
        ts = datetime(2026, 1, 1) + timedelta(minutes=7 * i)
        image = digits.data[i].reshape(8, 8)
        if variant:
            image = np.roll(image, variant, axis=1)
            image[:, :variant] = 0
        pixels = [f"{v:g}" for v in image.reshape(-1)]
        key = f"digit-{i:05d}" + (f"-v{variant}" if variant else "")
        rows.append([key, ts.isoformat(), *pixels, str(int(digits.target[i]))])
    return rows


def corrupt(rows: list[list[str]], day_index: int) -> list:
    """Mix in a few bad rows, different each day, at fixed positions (deterministic)."""
    out: list = list(rows)
    bad_pixel = list(rows[3])
    bad_pixel[0] = f"bad-{day_index}-range"
    bad_pixel[2 + 10] = "99"  # px_10 above the maximum of 16
    bad_num = list(rows[5])
    bad_num[0] = f"bad-{day_index}-nan"
    bad_num[2 + 20] = "seven"  # px_20 not a number
    bad_label = list(rows[7])
    bad_label[0] = f"bad-{day_index}-label"
    bad_label[-1] = "11"  # not an allowed label
    short = rows[9][:10]  # a truncated row
    dup = list(rows[11])  # a repeated id
    out[20:20] = [bad_pixel, bad_num, bad_label, short, dup]
    return out


def render(rows: list) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "captured_at", *[f"px_{i}" for i in range(64)], "label"])
    w.writerows(rows)
    return buf.getvalue().encode()


def make_landing(root: str, start: date, days: int, pipeline: str = "digits", variant: int = 0) -> list[str]:
    base = to_path(root)
    written = []
    for k in range(days):
        ds = (start + timedelta(days=k)).isoformat()
        data = render(corrupt(day_rows(k, days, variant), k))
        obj = write_bytes(join(base, "landing", pipeline, ds, "digits.csv"), data)
        written.append(obj.uri)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="storage root URI (default: the project's, as `make demo` uses)")
    ap.add_argument("--start", type=date.fromisoformat, default=date(2026, 11, 1))
    ap.add_argument("--days", type=int, default=5)
    args = ap.parse_args()
    if args.root is None:
        from freestack.settings import default_storage_root

        args.root = default_storage_root()
    for uri in make_landing(args.root, args.start, args.days):
        print(uri)


if __name__ == "__main__":
    main()
