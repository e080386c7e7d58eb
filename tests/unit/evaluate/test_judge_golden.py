"""The judge's golden set (``gate.judge.golden``: prompts judged besides the test split) and a rubric kept in
a project file (``gate.judge.rubric_file``), against the stand-in judge (tests/unit/evaluate/judge_standin.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from freestack.evaluate.text_generation import Answers, golden_set
from freestack.judging import client as judge
from freestack.judging.spec import JudgeSpec
from freestack.keys import NO_KEYS
from tests.unit.evaluate.judge_standin import RUBRIC, StandinJudge
from tests.unit.evaluate.test_judge import CAND, CHAMP, CHATS, REFS, _pipeline


@pytest.fixture(scope="module")
def server():
    s = StandinJudge()
    yield s
    s.stop()


def _lines(path, rows) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_the_golden_set_is_judged_besides_the_test_prompts(server, tmp_path):
    from freestack.evaluate.text_generation import judged_by

    golden = _lines(
        tmp_path / "golden.jsonl",
        [
            {"prompt": "Capital of France?", "reference": "Paris"},
            {"messages": [{"role": "user", "content": "Say hi."}]},  # no reference
            "",
        ],
    )
    chats, refs = golden_set(golden)
    assert refs == ["Paris", None] and chats[1] == [{"role": "user", "content": "Say hi."}]
    spec = _pipeline(
        judge={"url": server.url, "model": "fair", "rubric": RUBRIC, "golden": golden, "max_rows": 3}
    )
    cand, champ = Answers({}, CAND), Answers({}, CHAMP)
    judged = judged_by(
        spec, CHATS, REFS, cand, champ, NO_KEYS, (chats, refs, ["Paris", "hi"], ["Lyon", "hi"])
    )
    assert sorted((it["index"], it["source"]) for it in judged.items) == [
        (0, "test"),
        (1, "test"),
        (2, "test"),
        (3, "golden"),
        (4, "golden"),
    ]  # max_rows bounds the test prompts; the golden set comes on top
    golden_items = {it["prompt"]: it for it in judged.items if it["source"] == "golden"}
    assert golden_items["Capital of France?"]["candidate"]["score"] == 5  # equals its reference
    assert golden_items["Capital of France?"]["champion"]["score"] == 1
    assert cand.metrics["judge_golden_rows"] == 2 and cand.metrics["judge_judged"] == 5
    # exact match has no say on a golden prompt without a reference: 4 of the 5 answers are compared
    assert cand.metrics["judge_exact_agreement"] == 1.0


@pytest.mark.parametrize(
    "rows, says",
    [
        (["{not json"], "line 1"),
        ([{"prompt": "a"}, {"reference": "b"}], r"line 2: one JSON object with \"prompt\""),
        ([{"prompt": "a", "messages": []}], "not both"),
        ([{"prompt": "  "}], "non-empty text"),
        ([{"prompt": "a", "reference": 3}], '"reference" must be text'),
        ([{"messages": [{"role": "robot", "content": "x"}]}], "line 1"),
        ([""], "holds no prompts"),
    ],
)
def test_a_bad_golden_set_names_the_field_and_the_line(tmp_path, rows, says):
    with pytest.raises(judge.JudgeError, match=says) as got:
        golden_set(_lines(tmp_path / "g.jsonl", rows))
    assert "gate.judge.golden" in str(got.value)


def test_a_missing_golden_file_names_the_field(tmp_path):
    with pytest.raises(judge.JudgeError, match=r"gate.judge.golden: .*nope.jsonl is not a file"):
        golden_set(str(tmp_path / "nope.jsonl"))


def test_a_rubric_file_is_read_and_checked_when_the_judging_starts(server, tmp_path):
    (tmp_path / "rubric.txt").write_text(RUBRIC)
    spec = JudgeSpec(url=server.url, model="fair", rubric_file=str(tmp_path / "rubric.txt"))
    read = judge.with_rubric_file(spec)
    assert read.template == RUBRIC and read.rubric_file is None
    got = judge.run(read, CHATS, REFS, CAND, None)
    assert got.record(spec)["rubric"] == RUBRIC  # judge.json keeps the rubric asked
    (tmp_path / "bad.txt").write_text("Score {answer} against {answr}.")
    bad = JudgeSpec(url=server.url, model="fair", rubric_file=str(tmp_path / "bad.txt"))
    with pytest.raises(
        judge.JudgeError, match=r"gate.judge.rubric_file \(.*bad.txt\): unknown variable \{answr\}"
    ):
        judge.with_rubric_file(bad)
    with pytest.raises(judge.JudgeError, match="gate.judge.rubric_file: .* is not a file"):
        judge.with_rubric_file(JudgeSpec(url=server.url, model="fair", rubric_file="include/none.txt"))
    with pytest.raises(ValidationError, match="give rubric or rubric_file, not both"):
        JudgeSpec(url=server.url, model="fair", rubric=RUBRIC, rubric_file="r.txt")
