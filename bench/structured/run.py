"""Grammar-constrained decoding: llguidance (freestack's choice) against xgrammar and outlines-core, on the
same tokenizer, schemas and decoding walks; what each costs to compile a JSON schema, to compute the next
token's mask at each decoding step, and to install.

    python -m bench.structured.run [--repeats 10] [--walks 20] [--other-python /tmp/xgv/bin/python]
                                   [--out bench/results/structured.json]
    python -m bench.structured.run --repeats 2 --walks 2 --out /tmp/structured.json   # smoke run

1. A byte-level BPE tokenizer of 32,000 tokens, trained on this environment's own Python and text files
   (``bench.structured.tokenizer``; kept under ``bench/.work/structured``), loaded as transformers'
   ``PreTrainedTokenizerFast``.
2. Each library in a fresh process (``bench.structured.engines``): llguidance with this interpreter (it is
   a freestack dependency), xgrammar and outlines-core with ``--other-python``, an environment of their
   own (they are not freestack's). Without it, only llguidance is measured; to make it:
   ``python3 -m venv /tmp/xgv``, then ``/tmp/xgv/bin/pip install torch==2.13.0`` (the CPU wheel first:
   otherwise pip brings CUDA's) and ``/tmp/xgv/bin/pip install transformers==5.24.0 xgrammar==0.2.8
   outlines-core==0.2.14 tokenizers``.
3. Per library: the token table (once); for each schema of ``bench.structured.schemas`` (the model
   server's five test schemas and the open "any JSON object"), ``--repeats`` compiles from scratch and
   ``--walks`` walks over a valid instance's tokens, the mask fill timed at each step; the size on disk of
   the library and of what it pulls in.

Ratios are llguidance / xgrammar (lower is better). Nothing here decodes with a model: a model's step on
this CPU takes milliseconds, so these are the grammar's share of it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from bench.common import REPO, host, parser, write_report
from bench.structured.engines import EngineResult, Pooled
from bench.structured.schemas import SCHEMAS
from bench.structured.tokenizer import trained

ENGINES = ("llguidance", "xgrammar", "outlines_core")
OTHER_PYTHON = "/tmp/xgv/bin/python"
MAKE_OTHER = (
    "python3 -m venv /tmp/xgv && /tmp/xgv/bin/pip install torch==2.13.0 && /tmp/xgv/bin/pip install "
    "transformers==5.24.0 xgrammar==0.2.8 outlines-core==0.2.14 tokenizers"
)
FIXED = [name for name in SCHEMAS if name != "any_object"]


class Failed(BaseModel):
    """A library whose measurement did not finish."""

    engine: str
    error: str
    stderr_tail: str = ""


class Summary(BaseModel):
    """One library's headline figures."""

    version: str
    table_s: float
    first_mask_s: float
    compile_ms: dict[str, float]  #: per schema, the median of the repeats
    compile_ms_fixed_median: float  #: the median of the five test schemas'
    matcher_ms_median: float
    mask_us_fixed: Pooled  #: every step of the five test schemas' walks
    mask_us_any_object: Pooled
    answer_ms: dict[str, float]  #: per schema, the fills of one walk added up
    answer_ms_total: float
    footprint_added_mib: float
    footprint_total_mib: float


def measure(engine: str, python: str, tokenizer: str, args) -> EngineResult | Failed:
    """``bench.structured.engines`` for one library in a fresh process of ``python``."""
    argv = ["-m", "bench.structured.engines", "--engine", engine, "--tokenizer", tokenizer]
    argv += ["--repeats", str(args.repeats), "--walks", str(args.walks)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [python, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return Failed(engine=engine, error=f"timed out after {args.timeout} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return Failed(engine=engine, error=f"exit {proc.returncode}", stderr_tail=proc.stderr[-2000:])
    print(f"{engine}: measured in {time.perf_counter() - started:.1f} s", flush=True)
    return EngineResult.model_validate_json(lines[-1])


def summarize(sample: EngineResult) -> Summary:
    schemas = sample.schemas
    compile_ms = {name: round(statistics.median(s.compile_ms), 3) for name, s in schemas.items()}
    return Summary(
        version=sample.version,
        table_s=sample.table_s,
        first_mask_s=sample.first_mask_s,
        compile_ms=compile_ms,
        compile_ms_fixed_median=round(statistics.median(compile_ms[n] for n in FIXED), 3),
        matcher_ms_median=round(
            statistics.median(statistics.median(s.matcher_ms) for s in schemas.values()), 3
        ),
        mask_us_fixed=sample.pooled["fixed"],
        mask_us_any_object=sample.pooled["any_object"],
        answer_ms={name: s.answer_ms for name, s in schemas.items()},
        answer_ms_total=round(sum(s.answer_ms for s in schemas.values()), 3),
        footprint_added_mib=sample.footprint.added_mib,
        footprint_total_mib=sample.footprint.total_mib,
    )


def ratios(summary: dict[str, Summary]) -> dict[str, float] | None:
    """llguidance / xgrammar of each headline figure (lower is better); None without both."""
    llg, xgr = summary.get("llguidance"), summary.get("xgrammar")
    if not llg or not xgr:
        return None
    pairs = {
        "mask_fixed_median": (llg.mask_us_fixed.median_us, xgr.mask_us_fixed.median_us),
        "mask_fixed_mean": (llg.mask_us_fixed.mean_us, xgr.mask_us_fixed.mean_us),
        "mask_any_object_median": (llg.mask_us_any_object.median_us, xgr.mask_us_any_object.median_us),
        "mask_per_answer_total": (llg.answer_ms_total, xgr.answer_ms_total),
        "compile_fixed_median": (llg.compile_ms_fixed_median, xgr.compile_ms_fixed_median),
        "compile_any_object": (llg.compile_ms["any_object"], xgr.compile_ms["any_object"]),
        "footprint_added": (llg.footprint_added_mib, xgr.footprint_added_mib),
    }
    return {name: round(a / b, 3) for name, (a, b) in pairs.items()}


def show(summary: dict[str, Summary]) -> None:
    """The headline figures, a line per library."""
    print(
        f"{'library':<14} {'table s':>8} {'compile ms':>11} {'any-object compile ms':>22} "
        f"{'mask us (5 schemas) median/mean/p99':>36} {'mask us (any object)':>21} {'added MiB':>10}"
    )
    for name, s in summary.items():
        fixed, anyo = s.mask_us_fixed, s.mask_us_any_object
        print(
            f"{name:<14} {s.table_s:>8.2f} {s.compile_ms_fixed_median:>11.2f} "
            f"{s.compile_ms['any_object']:>22.1f} "
            f"{fixed.median_us:>16.1f} / {fixed.mean_us:.1f} / {fixed.p99_us:.0f}"
            f"{anyo.median_us:>15.1f} / {anyo.p99_us:.0f} {s.footprint_added_mib:>10.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.structured.run", __doc__, out="structured.json")
    ap.add_argument("--repeats", type=int, default=10, help="compiles of each schema (median)")
    ap.add_argument("--walks", type=int, default=20, help="walks over each schema's instance")
    ap.add_argument("--engines", default=",".join(ENGINES), help="a subset of " + ",".join(ENGINES))
    ap.add_argument(
        "--other-python",
        default=OTHER_PYTHON,
        help="the Python of the environment with xgrammar and outlines-core",
    )
    ap.add_argument("--vocab-size", type=int, default=32_000)
    ap.add_argument("--corpus-mib", type=int, default=32, help="MiB of text the tokenizer is trained on")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per library")
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if unknown := set(engines) - set(ENGINES):
        ap.error(f"unknown engine(s) {sorted(unknown)}; choose from {','.join(ENGINES)}")
    if not Path(args.other_python).exists() and set(engines) - {"llguidance"}:
        print(
            f"{args.other_python} is missing: measuring llguidance alone. To measure xgrammar and "
            f"outlines-core, make their environment: {MAKE_OTHER}",
            file=sys.stderr,
        )
        engines = [e for e in engines if e == "llguidance"]
    tokenizer = trained(args.vocab_size, args.corpus_mib)
    print(
        f"tokenizer: {tokenizer.vocab_size} tokens from {tokenizer.corpus_files} files "
        f"({tokenizer.corpus_mib} MiB), {tokenizer.path}",
        flush=True,
    )
    samples = []
    for engine in engines:
        python = sys.executable if engine == "llguidance" else args.other_python
        samples.append(measure(engine, python, tokenizer.path, args))
    failed = [s for s in samples if isinstance(s, Failed)]
    for s in failed:
        print(f"{s.engine} failed: {s.error}\n{s.stderr_tail}", file=sys.stderr)
    summary = {s.engine: summarize(s) for s in samples if isinstance(s, EngineResult)}
    show(summary)
    return _report(args, tokenizer, samples, summary) or (1 if failed else 0)


def _report(args, tokenizer, samples: list[EngineResult | Failed], summary: dict[str, Summary]) -> int:
    import tokenizers
    import torch
    import transformers

    got = ratios(summary)
    if got:
        print("llguidance / xgrammar: " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()))
    machine = {
        **host(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        **{name: s.version for name, s in summary.items()},
    }
    params = {
        "repeats": args.repeats,
        "walks": args.walks,
        "tokenizer": tokenizer.model_dump(exclude={"path"}),
        "schemas": SCHEMAS,
        "baseline": "xgrammar",
        "footprint": "size on disk of the installed distributions' files: the library, what it requires "
        "all the way down (total), and what of that an environment with torch and transformers lacks (added)",
    }
    report = {
        "name": "structured",
        "machine": machine,
        "params": params,
        "samples": [s.model_dump() for s in samples],
        "summary": {
            "engines": {name: s.model_dump() for name, s in summary.items()},
            "ratio_vs_xgrammar": got,
        },
    }
    print(f"wrote {write_report(report, args.out, indent=1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
