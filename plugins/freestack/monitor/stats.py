"""Reference statistics and drift tests, column by column. Plain numpy, pandas and scipy.

Every monitored *series* is one column of numbers or of categories:

- a numeric feature (int, float, bool): its values;
- a category feature: its values as text (missing ones ``(missing)``);
- a text feature: proxies, ``<col>.length`` (characters) and ``<col>.unknown_rate`` (the share of its words
  outside the reference vocabulary);
- an image feature: proxies, ``<col>.brightness`` and ``<col>.contrast`` (mean and standard deviation of the
  grey levels, 0-255), ``<col>.width`` and ``<col>.height``;
- the prediction: the predicted class (a category), or the predicted value (a number).

A reference series keeps what the tests need and nothing of the rows themselves beyond a small sample of
numbers: decile edges and their proportions (PSI), up to ``KS_SAMPLE`` values (Kolmogorov-Smirnov),
category proportions (PSI, chi²). A series drifts when its PSI reaches the threshold *and* its test's
p-value is below the threshold.

PSI and the reference vocabulary are written here (a few lines each); the tests are scipy's.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from typing import Any

import numpy as np

KS_SAMPLE = 2000
VOCAB_SIZE = 20_000
MISSING = "(missing)"
OTHER = "(other)"
MAX_CATEGORIES = 50
FLOOR = 1e-4  # the smallest proportion a PSI term uses (an empty bin on one side)
_WORD = re.compile(r"\w+", re.UNICODE)


# ---------------------------------------------------------------------------------------------------------
# series from raw columns


def words(text: Any) -> list[str]:
    return _WORD.findall(str(text).lower()) if text is not None else []


def text_series(name: str, values: list, vocab: set[str]) -> dict[str, np.ndarray]:
    lengths, unknown = [], []
    for v in values:
        w = words(v)
        lengths.append(len(str(v)) if v is not None else 0)
        unknown.append(sum(t not in vocab for t in w) / len(w) if w else 0.0)
    return {
        f"{name}.length": np.asarray(lengths, np.float64),
        f"{name}.unknown_rate": np.asarray(unknown, np.float64),
    }


def image_series(name: str, values: list) -> dict[str, np.ndarray]:
    """Grey-level brightness and contrast, width and height of each image; NaN for one that cannot be read."""
    from PIL import Image, UnidentifiedImageError

    out = np.full((len(values), 4), np.nan)
    for i, v in enumerate(values):
        if not v:
            continue
        try:
            with Image.open(io.BytesIO(v)) as img:
                grey = np.asarray(img.convert("L"), dtype=np.float64)
        except (UnidentifiedImageError, OSError, ValueError):
            continue
        out[i] = (grey.mean(), grey.std(), grey.shape[1], grey.shape[0])
    return {f"{name}.{p}": out[:, k] for k, p in enumerate(("brightness", "contrast", "width", "height"))}


def category_values(values: list) -> np.ndarray:
    return np.asarray(
        [MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values],
        dtype=object,
    )


def series_of(
    columns: dict[str, list], kinds: dict[str, str], vocab: dict[str, set[str]]
) -> dict[str, tuple[str, np.ndarray]]:
    """Every monitored series of some rows: name -> (numeric | category, values). ``kinds``: feature ->
    numeric | category | text | image; ``vocab``: a text feature's reference vocabulary."""
    out: dict[str, tuple[str, np.ndarray]] = {}
    for name, kind in kinds.items():
        values = columns[name]
        if kind == "numeric":
            out[name] = ("numeric", np.asarray(values, dtype=np.float64))
        elif kind == "category":
            out[name] = ("category", category_values(values))
        elif kind == "text":
            proxies = text_series(name, list(values), vocab.get(name, set()))
            out.update({k: ("numeric", v) for k, v in proxies.items()})
        elif kind == "image":
            out.update({k: ("numeric", v) for k, v in image_series(name, list(values)).items()})
    return out


# ---------------------------------------------------------------------------------------------------------
# reference statistics


def vocabulary(values: list) -> list[str]:
    counts = Counter(w for v in values for w in words(v))
    return [w for w, _ in counts.most_common(VOCAB_SIZE)]


def numeric_reference(values: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    missing = float(1 - len(finite) / len(values)) if len(values) else 0.0
    shared = {"kind": "numeric", "rows": int(len(values)), "missing": missing}
    if not len(finite):
        return {**shared, "edges": [], "proportions": [1.0], "sample": []}
    edges = np.unique(np.quantile(finite, np.linspace(0.1, 0.9, 9)))
    props = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1) / len(finite)
    sample = finite if len(finite) <= KS_SAMPLE else rng.choice(finite, KS_SAMPLE, replace=False)
    return {
        **shared,
        "edges": edges.tolist(),
        "proportions": props.tolist(),
        "sample": np.sort(sample).tolist(),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
    }


def category_reference(values: np.ndarray) -> dict[str, Any]:
    counts = Counter(values.tolist())
    top = dict(counts.most_common(MAX_CATEGORIES))
    rest = sum(counts.values()) - sum(top.values())
    if rest:
        top[OTHER] = rest
    n = max(1, len(values))
    return {"kind": "category", "rows": int(len(values)), "proportions": {k: v / n for k, v in top.items()}}


def reference(series: dict[str, tuple[str, np.ndarray]], seed: int = 0) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return {
        name: numeric_reference(v, rng) if kind == "numeric" else category_reference(v)
        for name, (kind, v) in series.items()
    }


# ---------------------------------------------------------------------------------------------------------
# drift


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """The population stability index of two distributions over the same bins."""
    e = np.maximum(np.asarray(expected, np.float64), FLOOR)
    a = np.maximum(np.asarray(actual, np.float64), FLOOR)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_drift(ref: dict[str, Any], values: np.ndarray) -> dict[str, Any]:
    from scipy.stats import ks_2samp

    finite = values[np.isfinite(values)]
    if not len(finite) or not ref["sample"]:
        return {
            "statistic": "psi",
            "psi": 0.0,
            "test": "ks",
            "p_value": 1.0,
            "rows": int(len(finite)),
            "note": "no finite values on one side",
        }
    edges = np.asarray(ref["edges"])
    cur = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1) / len(finite)
    test = ks_2samp(np.asarray(ref["sample"]), finite)
    return {
        "statistic": "psi",
        "psi": psi(np.asarray(ref["proportions"]), cur),
        "test": "ks",
        "ks": float(test.statistic),
        "p_value": float(test.pvalue),
        "rows": int(len(finite)),
        "mean": float(finite.mean()),
        "reference_mean": ref.get("mean"),
        "bins": {"reference": ref["proportions"], "current": cur.tolist()},
    }


def category_drift(ref: dict[str, Any], values: np.ndarray) -> dict[str, Any]:
    from scipy.stats import chisquare

    props = ref["proportions"]
    known = [k for k in props if k != OTHER]
    counts = Counter(values.tolist())
    cur = np.asarray(
        [counts.get(k, 0) for k in known] + [sum(v for k, v in counts.items() if k not in props)], np.float64
    )
    exp = np.asarray([props[k] for k in known] + [props.get(OTHER, 0.0)], np.float64)
    n = cur.sum()
    exp_s = np.maximum(exp, FLOOR)
    test = chisquare(cur, exp_s / exp_s.sum() * n) if n else None
    new = sorted((k for k in counts if k not in props), key=lambda k: -counts[k])[:5]
    return {
        "statistic": "psi",
        "psi": psi(exp, cur / max(n, 1)),
        "test": "chi2",
        "chi2": float(test.statistic) if test else 0.0,
        "p_value": float(test.pvalue) if test else 1.0,
        "rows": int(n),
        "unseen": new,
        "bins": {"labels": [*known, OTHER], "reference": exp.tolist(), "current": (cur / max(n, 1)).tolist()},
    }


def drift(
    ref: dict[str, Any], kind: str, values: np.ndarray, psi_threshold: float, p_threshold: float
) -> dict[str, Any]:
    got = numeric_drift(ref, values) if kind == "numeric" else category_drift(ref, values)
    got["kind"] = kind
    got["drifted"] = bool(got["psi"] >= psi_threshold and got["p_value"] < p_threshold)
    return got


__all__ = ["drift", "psi", "reference", "series_of", "vocabulary"]
