"""Preprocessing hands out arrays torch can own: no read-only views of a copy-on-write frame."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from freestack.ml.prep import Preprocessing

_PROBE = """
import warnings
import numpy as np, pandas as pd, torch
from freestack.ml.prep import Preprocessing

df = pd.DataFrame({"a": np.arange(9, dtype=np.float32), "b": np.ones(9, dtype=np.float32), "y": np.arange(9) % 3})
test = df[df["a"] > 2]  # a slice, as the test split is
for task in ("classification", "regression"):
    pre = Preprocessing.fit(df, ["a", "b"], "y", task)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "NumPy array is not writable" UserWarning fails this
        torch.as_tensor(pre.features_array(test))
        torch.as_tensor(pre.target_array(test))
print("ok")
"""


def test_arrays_are_writable():
    df = pd.DataFrame(
        {"a": np.arange(6, dtype=np.float32), "b": np.ones(6, dtype=np.float32), "y": [0, 1, 2] * 2}
    )
    part = df[df["a"] > 1]
    for task in ("classification", "regression"):
        pre = Preprocessing.fit(df, ["a", "b"], "y", task)
        assert pre.features_array(part).flags.writeable
        assert pre.target_array(part).flags.writeable


def test_torch_does_not_warn():
    """In a fresh process: torch warns about a non-writable array only once per process."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert "not writable" not in out.stderr
