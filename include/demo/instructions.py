"""Landing drops of the instruction-tuning tutorial's pipeline ``arith``: a CSV of templated instructions
per day, each with the one right answer, so a fine-tuned model is scored by exact match.

The tasks are small enough that a 2-layer transformer learns them in a short CPU fine-tune, with a small,
fixed vocabulary (the words of the templates, the digits and a little punctuation):

- a date converted from ISO form: ``Convert 2026-11-03 to DD/MM/YYYY.`` -> ``03/11/2026`` (or to
  ``MM/DD/YYYY`` -> ``11/03/2026``);
- single-digit addition: ``What is 3 + 5?`` -> ``8``;
- digits reversed: ``Reverse the digits: 4821`` -> ``1284`` (digits, not letters: a tokenizer's merges
  would hide a word's letters from a tiny model, a digit is always one token).

Each drop is ``<root>/landing/<pipeline>/<ds>/instructions.csv`` with columns ``id, prompt, response``,
or ``id, messages`` (``--format messages``: a JSON list of chat messages, user then assistant, with a
system message first when ``--system`` is given). :func:`corpus` gives plain text of the same tasks,
not chat formatted, to pretrain a tiny base on (``include/demo/tiny_lm.py``).

``--format tools`` lands the tutorial's tool-use task (``include/pipelines/tools_tiny.yaml``, whose
``model.data.tools`` are :data:`TOOLS`) as ``id, messages``: sums of two-digit numbers call ``add`` and
reversals call ``reverse``, every other row ending with the call and the others going on with the tool's
answer and the assistant's final one; dates are answered without a call.

    .venv/bin/python include/demo/instructions.py --start 2026-11-01 --days 3   # [--rows 200] [--root URI]
    # [--format messages|tools] [--system TEXT] [--tasks add,reverse]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import date, timedelta

#: the tasks, in the order their share is drawn
TASKS = ("date-dmy", "date-mdy", "add", "reverse")
FORMATS = ("pairs", "messages", "tools")
#: the tool-use task's functions, as OpenAI defines tools (include/pipelines/tools_tiny.yaml lists them)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two whole numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "reverse",
            "description": "Reverse a string of digits.",
            "parameters": {
                "type": "object",
                "properties": {"digits": {"type": "string"}},
                "required": ["digits"],
            },
        },
    },
]
#: the dates drawn: 2020-01-01 up to 2029-12-31
_FIRST, _LAST = date(2020, 1, 1).toordinal(), date(2029, 12, 31).toordinal()
#: what joins an instruction and its answer in :func:`corpus`'s plain text
ANSWER = "The answer is:"


def instruction_pair(rng, tasks: tuple[str, ...] = TASKS) -> tuple[str, str]:
    """One (prompt, response) drawn by ``rng`` (a numpy ``Generator``) from ``tasks``: a date conversion, a
    sum or reversed digits, the response the one right answer."""
    kind = tasks[int(rng.integers(len(tasks)))]
    if kind == "add":
        a, b = (int(v) for v in rng.integers(0, 10, size=2))
        return f"What is {a} + {b}?", str(a + b)
    if kind == "reverse":
        digits = "".join(str(int(v)) for v in rng.integers(0, 10, size=int(rng.integers(3, 5))))
        return f"Reverse the digits: {digits}", digits[::-1]
    day = date.fromordinal(int(rng.integers(_FIRST, _LAST + 1)))
    form, answer = (
        ("DD/MM/YYYY", f"{day:%d/%m/%Y}") if kind == "date-dmy" else ("MM/DD/YYYY", f"{day:%m/%d/%Y}")
    )
    return f"Convert {day.isoformat()} to {form}.", answer


def messages(prompt: str, response: str, system: str | None = None) -> list[dict[str, str]]:
    """The pair as chat messages: ``system`` (when given), user, assistant."""
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def tool_chat(rng, index: int) -> list[dict[str, object]]:
    """One chat of the tool-use task: a sum of two two-digit numbers calls ``add``, a reversal calls
    ``reverse`` (ending with the call when ``index`` is even, else with the tool's answer and the
    assistant's final one); a date is answered without a call."""
    prompt, answer = instruction_pair(rng)
    if prompt.startswith("What is"):
        a, b = (int(v) for v in rng.integers(10, 100, size=2))
        prompt, answer, call = f"What is {a} + {b}?", str(a + b), ("add", {"a": a, "b": b})
    elif prompt.startswith("Reverse"):
        call = ("reverse", {"digits": prompt.rsplit(" ", 1)[1]})
    else:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    calls = [{"id": f"call_{index}", "type": "function", "function": {"name": call[0], "arguments": call[1]}}]
    chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": "", "tool_calls": calls}]
    if index % 2:
        chat += [
            {"role": "tool", "tool_call_id": f"call_{index}", "content": answer},
            {"role": "assistant", "content": answer},
        ]
    return chat


def corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` lines of plain text (not chat formatted) on the same tasks, each an instruction and its answer
    as a web page might put them, e.g. ``What is 3 + 5? The answer is: 8`` or ``Convert 2026-11-03 to
    DD/MM/YYYY. The answer is: 03/11/2026``: what a tiny base is pretrained on, so that instruction
    tuning mostly has to teach it the chat format. (`` The answer is: `` is five tokens of the tiny base's
    tokenizer, as many as ChatML puts between a user's message and the assistant's answer: the answer
    stands as far from the question in both, and what the base learnt carries over.)"""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [f"{prompt} {ANSWER} {response}" for prompt, response in (instruction_pair(rng) for _ in range(n))]


def day_csv(
    day: date, rows: int, fmt: str = "pairs", system: str | None = None, tasks: tuple[str, ...] = TASKS
) -> bytes:
    """One day's ``instructions.csv`` (seeded by the day; ``tasks``, pairs and messages only, the tasks
    drawn from): id, prompt, response (``fmt="pairs"``) or id,
    messages (``fmt="messages"``, a JSON list of chat messages; ``fmt="tools"``, :func:`tool_chat`'s)."""
    import numpy as np

    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    rng = np.random.default_rng(day.toordinal())
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["id", "prompt", "response"] if fmt == "pairs" else ["id", "messages"])
    for i in range(rows):
        key = f"{day:%Y%m%d}-{i:04d}"
        if fmt == "tools":
            out.writerow([key, json.dumps(tool_chat(rng, i))])
            continue
        prompt, response = instruction_pair(rng, tasks)
        if fmt == "pairs":
            out.writerow([key, prompt, response])
        else:
            out.writerow([key, json.dumps(messages(prompt, response, system))])
    return buf.getvalue().encode()


def make_landing(
    root: str,
    start: date,
    days: int,
    rows: int = 200,
    pipeline: str = "arith",
    fmt: str = "pairs",
    system: str | None = None,
    tasks: tuple[str, ...] = TASKS,
) -> list[str]:
    """``days`` drops from ``start`` under ``<root>/landing/<pipeline>/<ds>/instructions.csv``; their URIs."""
    from freestack.storage import join, to_path, write_bytes

    uris = []
    for d in range(days):
        day = start + timedelta(days=d)
        path = join(to_path(root), "landing", pipeline, day.isoformat(), "instructions.csv")
        write_bytes(path, day_csv(day, rows, fmt, system, tasks))
        uris.append(str(path))
    return uris


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="storage root URI (default: the project's, as `make demo` uses)")
    ap.add_argument("--start", type=date.fromisoformat, default=date(2026, 11, 1))
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument(
        "--format",
        choices=FORMATS,
        default="pairs",
        dest="fmt",
        help="pairs: id, prompt, response; messages: id, messages (JSON chat messages); tools: id, messages "
        "(the tool-use task's chats)",
    )
    ap.add_argument("--system", help="a system message first in each row's messages (--format messages)")
    ap.add_argument(
        "--tasks",
        type=lambda text: tuple(text.split(",")),
        default=TASKS,
        help=f"the tasks drawn from, comma-separated (default: all of {','.join(TASKS)}; pairs and messages)",
    )
    ap.add_argument(
        "--pipeline", help="the landing folder's pipeline (default: tools with --format tools, else arith)"
    )
    args = ap.parse_args()
    if args.root is None:
        from freestack.settings import default_storage_root

        args.root = default_storage_root()
    pipeline = args.pipeline or ("tools" if args.fmt == "tools" else "arith")
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        ap.error(f"--tasks {','.join(unknown)}: no such task; choose among {','.join(TASKS)}")
    if args.fmt == "tools" and args.tasks != TASKS:
        ap.error("--tasks chooses the tasks of pairs and messages; --format tools lands its own mix")
    drops = make_landing(
        args.root, args.start, args.days, args.rows, pipeline, args.fmt, args.system, args.tasks
    )
    for uri in drops:
        print(uri)


if __name__ == "__main__":
    main()
