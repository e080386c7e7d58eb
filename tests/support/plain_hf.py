"""Runs a script with plain transformers + peft and no freestack: the project's own Python, isolated
(``-I -S``: no PYTHONPATH, no current directory, no ``.pth`` files, so neither the editable install of
``plugins/`` nor the tests are importable), with the venv's site-packages added by hand. The script
checks first that ``import freestack`` fails, then does what a user of a pushed version would do.

- :data:`LOAD_VERSION`: a version folder (or Hub repo) loaded as its model card says, under two torch
  seeds, on inputs saved as ``.npy`` files; prints each seed's class probabilities as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np

PRELUDE = """
import sys
sys.path.append({site!r})
try:
    import freestack  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    sys.exit("freestack is importable here; the check needs an environment without it")
"""

LOAD_VERSION = """
import json
import numpy as np
import torch
import transformers
import os
from peft import PeftConfig, PeftModel

version, inputs, seeds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
kw = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
config = transformers.AutoConfig.from_pretrained(version, **kw)  # the labels
adapter = PeftConfig.from_pretrained(version, **kw)  # the base
args = {name: torch.as_tensor(np.load(f"{inputs}/{name}.npy")) for name in ("input_ids", "attention_mask", "pixel_values")
        if os.path.exists(f"{inputs}/{name}.npy")}
auto = transformers.AutoModelForImageClassification if "pixel_values" in args else transformers.AutoModelForSequenceClassification
out = []
for seed in seeds:
    torch.manual_seed(seed)
    base = auto.from_pretrained(adapter.base_model_name_or_path, revision=adapter.revision, config=config)
    model = PeftModel.from_pretrained(base, version, **kw).eval()
    with torch.no_grad():
        out.append(model(**args).logits.softmax(-1).tolist())
print(json.dumps(out))
"""


def run_plain(script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    """``script``'s standard output, run without freestack (AssertionError with its stderr when it fails)."""
    site = sysconfig.get_paths()["purelib"]
    code = PRELUDE.format(site=site) + script
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | (env or {})
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, *args],
        env=environ,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def plain_probabilities(
    version: str | Path,
    inputs: dict[str, np.ndarray],
    folder: Path,
    seeds=(0, 1),
    hub: dict[str, str] | None = None,
) -> list[np.ndarray]:
    """The class probabilities of a LoRA version loaded with plain transformers + peft, one array per
    torch seed: ``version`` a folder, or a Hub repo id with ``hub`` = {"revision": tag} (HF_ENDPOINT set)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in inputs.items():
        np.save(folder / f"{name}.npy", value)
    args = [str(version), str(folder), json.dumps(list(seeds))] + ([json.dumps(hub)] if hub else [])
    return [np.asarray(p) for p in json.loads(run_plain(LOAD_VERSION, *args))]
