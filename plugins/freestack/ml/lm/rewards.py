"""The rewards of a GRPO training (``train.grpo.rewards``): functions that score a completion of a prompt,
each with a weight; the completion's reward is their weighted sum (TRL's ``reward_funcs`` with
``reward_weights``). Each is logged on its own.

Built in, the checks a user needs first:

- ``exact_match``: 1 when the completion is the row's reference answer (``column``, default the
  response column), whitespace at the ends aside; else 0.
- ``regex``: 1 when the completion matches ``pattern`` whole (Python's ``re.fullmatch``, ``.`` matching
  newlines: a format check such as ``<answer>\\d+</answer>``); else 0.
- ``json_schema``: 1 when the completion is JSON that validates against ``schema``; else 0.
- ``length``: a penalty of ``-(tokens - max_tokens) / max_tokens`` for a completion longer than
  ``max_tokens`` tokens (0 up to it): it keeps answers short without rewarding empty ones.
- ``judge``: the LLM judge of ``gate.judge`` (its endpoint, key and rubric), asked for a pointwise score
  of each completion, 1-5 read as ``(score - 1) / 4``; built by the train stage, which holds the judge's
  settings and key, as a batch scorer (the judge is asked ``concurrency`` completions at a time).

And a user's own: ``module:function``, a function in a file of the project (``include/rewards.py:correct``)
or an importable module (``mypkg.rewards:correct``), called per completion as
``function(prompt=..., completion=..., **row)`` and returning a number: ``prompt`` is the prompt's text
and ``completion`` the completion's, and the row's other columns come by name (a column called
``prompt`` or ``completion``, as in ``model.data: {prompt: prompt}``, is given as the keyword, not a
second time). A file's reference is checked when the spec is read (:func:`reference_problem`). Its
file's sha256 goes into the version's lineage.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freestack.errors import FreestackError
from freestack.ml.contract import is_dotted, module_path, sha256_of

#: the reward functions freestack has (``train.grpo.rewards[].function``)
BUILT_IN = ("exact_match", "regex", "json_schema", "length", "judge")


class RewardError(FreestackError):
    """A reward function that cannot be loaded or that failed on a completion; the message names it."""


@dataclass(frozen=True)
class Sample:
    """What a reward function is given: the prompt's text (its last user turn), the completion's text and
    token count, and the row's columns."""

    prompt: str
    completion: str
    tokens: int
    row: dict[str, Any]


@dataclass(frozen=True)
class Reward:
    """One reward function: its name (what its metrics are called), weight and code."""

    name: str
    weight: float
    score: Callable[[Sample], float]
    source: dict[str, Any] = field(default_factory=dict)  # lineage: the function, its file and sha256
    #: scores a batch of samples at once (a judge asked concurrently); None: ``score`` one by one
    batch: Callable[[Sequence[Sample]], list[float]] | None = None

    def scores(self, samples: Sequence[Sample]) -> list[float]:
        return self.batch(samples) if self.batch is not None else [self.score(s) for s in samples]


def exact_match(column: str) -> Callable[[Sample], float]:
    def score(s: Sample) -> float:
        want = s.row.get(column)
        return float(isinstance(want, str) and s.completion.strip() == want.strip())

    return score


def regex(pattern: str) -> Callable[[Sample], float]:
    compiled = re.compile(pattern, re.DOTALL)
    return lambda s: float(compiled.fullmatch(s.completion.strip()) is not None)


def json_schema(schema: dict[str, Any]) -> Callable[[Sample], float]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)

    def score(s: Sample) -> float:
        try:
            value = json.loads(s.completion)
        except ValueError:
            return 0.0
        return float(validator.is_valid(value))

    return score


def length(max_tokens: int) -> Callable[[Sample], float]:
    return lambda s: -max(0, s.tokens - max_tokens) / max_tokens


def user_function(ref: str, base: Path) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The function ``module:function`` names, and its lineage (the reference, its file and sha256)."""
    module, _, name = ref.partition(":")
    path = _module_file(module, base, ref)
    source = path.read_bytes()
    digest = sha256_of(source)
    mod_name = f"freestack_reward_{digest[:16]}"
    mod = sys.modules.get(mod_name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise RewardError(
                f"train.grpo.rewards {ref!r}: importing {path} failed ({type(exc).__name__}: {exc}); fix the module"
            ) from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise RewardError(f"train.grpo.rewards {ref!r}: {path} defines no function {name!r}")
    return fn, {"function": ref, "file": str(path), "sha256": digest}


def reference_problem(ref: str, base: Path) -> str | None:
    """What is wrong with a user's reward ``path/to/file.py:function`` that can be seen without running
    the file: no such regular file, not a .py file, not Python, or no top-level ``function``; None when
    nothing is. The file is parsed, never imported: a spec is read at every DAG parse, and an import
    would run the module's own code (and its imports, torch and the like) there. A module's reference
    (``pkg.rewards:correct``) is checked when the train task imports it: finding it would import its
    package."""
    module, _, name = ref.partition(":")
    if is_dotted(module):
        return None
    path = module_path(module, base)
    if path.suffix != ".py":
        return f"{ref!r}: {module!r} must be a .py file of the project or a dotted import path (pkg.rewards)"
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        return f"{ref!r}: {what} ({path}); paths are relative to the project ({base})"
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        return f"{ref!r}: {path}, line {exc.lineno}: {exc.msg} (the file does not parse)"
    names = _module_names(tree)
    if names is not None and name not in names:
        defined = ", ".join(sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef)))
        return f"{ref!r}: {path} defines no {name!r} at its top level (its functions: {defined or 'none'})"
    return None


def _module_names(tree: ast.Module) -> set[str] | None:
    """The names a module binds outside its functions and classes (a def, a class, an assignment, an
    import, in if/try/with blocks too); None when a star import may bind any."""
    names: set[str] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return None
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        todo.extend(ast.iter_child_nodes(node))
    return names


def _module_file(module: str, base: Path, ref: str) -> Path:
    if is_dotted(module):
        found = importlib.util.find_spec(module)
        if found is None or not (found.origin or "").endswith(".py"):
            raise RewardError(
                f"train.grpo.rewards {ref!r}: module {module!r} is not importable as one .py file; name a "
                "file of the project (include/rewards.py:correct) or an importable module"
            )
        return Path(found.origin)
    path = module_path(module, base)
    if not path.is_file():
        raise RewardError(
            f"train.grpo.rewards {ref!r}: {path} is not a file; name a .py file of the project "
            "(relative to the checkout) and a function in it, as include/rewards.py:correct"
        )
    return path


def call_user(fn: Callable[..., Any], ref: str) -> Callable[[Sample], float]:
    """A user's function as a reward: called with the prompt, the completion and the row's other columns
    (a ``prompt`` or ``completion`` column is given as the keyword, the prompt's and completion's text)."""

    def score(s: Sample) -> float:
        try:
            value = fn(**{**s.row, "prompt": s.prompt, "completion": s.completion})
        except Exception as exc:
            raise RewardError(
                f"train.grpo.rewards {ref!r} failed on a completion of {s.prompt[:60]!r} "
                f"({type(exc).__name__}: {exc}); fix the function (it is called with prompt=, "
                "completion= and the row's other columns by name)"
            ) from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RewardError(
                f"train.grpo.rewards {ref!r} returned {value!r} for a completion of {s.prompt[:60]!r}; "
                "a reward is a finite number"
            )
        return float(value)

    return score


@dataclass(frozen=True)
class RewardSet:
    """The rewards of a training, scoring completions: each function's values, then the weighted sum."""

    rewards: tuple[Reward, ...]

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    def score(self, samples: Sequence[Sample]) -> list[list[float]]:
        """Each sample's reward by each function, in ``names``' order."""
        columns = [r.scores(samples) for r in self.rewards]
        return [list(row) for row in zip(*columns, strict=True)] if columns else [[] for _ in samples]

    def lineage(self) -> list[dict[str, Any]]:
        return [{"name": r.name, "weight": r.weight, **r.source} for r in self.rewards]


__all__ = [
    "BUILT_IN",
    "Reward",
    "RewardError",
    "RewardSet",
    "Sample",
    "call_user",
    "exact_match",
    "json_schema",
    "length",
    "reference_problem",
    "regex",
    "user_function",
]
