"""A teacher endpoint answers a day's prompts (``score.teacher``, freestack.score.teacher), against a real
HTTP server on 127.0.0.1 speaking OpenAI's routes: an answer per row, a 429 retried with the client's
backoff and counted, a refused row and an empty prompt quarantined with their reasons, an answer cut at
max_tokens published but not landed; the finished answers land in the student's landing folder as its
prompt/response rows, replaced whole on a rerun. A teacher that is down, refuses the key or lacks the model
fails the plan saying so; a day none of whose rows is answered publishes nothing."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from freestack.errors import ScoreError
from freestack.keys import Keys
from tests.dags.test_score_generation_dag import _spec

KEY = "sk-teacher"
DS = "2026-11-02"


class _Teacher(BaseHTTPRequestHandler):
    """Answers ``What is a + b?`` with the sum; ``busy`` in a prompt: 429 on its first request; ``broken``:
    400 always; ``ramble``: an answer cut at max_tokens. A wrong key: 401."""

    server: ThreadingHTTPServer

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: dict, **headers: str) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("authorization") != f"Bearer {KEY}":
            self._send(401, {"error": {"message": "invalid api key", "code": "invalid_api_key"}})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        if self._authorised():
            self._send(200, {"object": "list", "data": [{"id": "big", "object": "model", "owned_by": "t"}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        if not self._authorised():
            return
        prompt = body["messages"][-1]["content"]
        with self.server.lock:
            self.server.seen[prompt] = self.server.seen.get(prompt, 0) + 1
            first = self.server.seen[prompt] == 1
        if "busy" in prompt and first:
            return self._send(429, {"error": {"message": "slow down"}}, **{"retry-after": "0"})
        if "broken" in prompt:
            return self._send(400, {"error": {"message": "this prompt is refused", "param": "messages"}})
        found = re.search(r"(\d+) \+ (\d+)", prompt)
        text, finish = (f"{int(found[1]) + int(found[2])}" if found else ""), "stop"
        if "ramble" in prompt:
            text, finish = "and so on " * 4, "length"
        self._send(
            200,
            {
                "id": "c1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "big-2026",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
            },
        )


@pytest.fixture
def teacher():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    server.lock, server.seen = threading.Lock(), {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _pipelines(root: Path, specs: Path, url: str, **teacher) -> object:
    """The asking pipeline (its prompts in a folder input) and the student pipeline it lands into."""
    from freestack.spec import PipelineSpec

    student = _spec({})
    student.update(name="student", source={**student["source"], "landing": "landing/student/{ds}/"})
    student.pop("score")
    (specs / "student.yaml").write_text(yaml.safe_dump(student))
    folder = root / "prompts" / DS
    folder.mkdir(parents=True)
    rows = {
        "id": ["a", "b", "c", "d", "e", "f"],
        "prompt": ["What is 2 + 3?", "busy: What is 1 + 1?", "broken", "", "ramble", "What is 7 + 5?"],
        "response": [None] * 6,
    }
    pq.write_table(pa.table(rows), folder / "part.parquet")
    settings = {"url": url, "model": "big", "api_key": {"conn_id": "teacher"}, "max_tokens": 8, "retries": 2}
    score = {"input": f"{root.as_uri()}/prompts/{{ds}}/", "teacher": {**settings, **teacher}}
    score["teacher"]["land"] = {"pipeline": "student"}
    return PipelineSpec.model_validate(_spec(score))


def _with(spec, **teacher):
    """``spec`` with other teacher settings (the spec's models are frozen)."""
    changed = spec.score.teacher.model_copy(update=teacher)
    return spec.model_copy(update={"score": spec.score.model_copy(update={"teacher": changed})})


def test_a_teacher_answers_a_day_retries_and_lands_the_finished_answers(
    teacher, tmp_path, storage, monkeypatch
):
    from freestack.score import teacher as taught

    specs, root = tmp_path / "pipelines", Path(storage.removeprefix("file://"))
    specs.mkdir()
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    spec = _pipelines(root, specs, teacher)
    day = datetime(2026, 11, 2, tzinfo=UTC)
    planned = taught.plan(spec, day, datetime(2026, 11, 3, tzinfo=UTC), Keys(teacher=KEY))
    assert [j["ds"] for j in planned["jobs"]] == [DS] and planned["version"] == "big"

    manifest = taught.score(spec, planned["jobs"][0], {"run_id": "r1"}, Keys(teacher=KEY))
    out = root / "scores" / "chat" / f"ds={DS}"
    part = pq.read_table(out / "part.parquet").to_pydict()
    assert dict(zip(part["id"], part["completion"], strict=True)) == {
        "a": "5",
        "b": "2",
        "e": ("and so on " * 4).strip(),
        "f": "12",
    }
    assert part["finish_reason"] == ["stop", "stop", "length", "stop"]
    assert manifest["rows_scored"] == 4 and manifest["rows_quarantined"] == 2
    assert manifest["teacher"]["answered_as"] == ["big-2026"] and manifest["teacher"]["url"] == teacher
    # the 429 was retried once by the client; the 400 was not retried (a refusal), and is the row's reason
    assert manifest["requests"] == {
        "asked": 5,
        "attempts": 6,
        "retries": 1,
        "statuses": {"200": 4, "400": 1, "429": 1},
    }
    assert manifest["answers"]["finish_reasons"] == {"stop": 3, "length": 1}
    assert manifest["answers"]["completion_tokens"] == 8
    reasons = pq.read_table(out / "_quarantine.parquet").to_pydict()
    why = dict(zip(reasons["id"], reasons["_reason"], strict=True))
    assert why["c"].startswith("the teacher answered HTTP 400: ") and "refused" in why["c"]
    assert "no prompt" in why["d"]
    assert manifest["land"] == {"pipeline": "student", "rows": 3, "left_out_unfinished": 1}

    landed = root / "landing" / "student" / DS / "chat-teacher.csv"
    lines = landed.read_text().splitlines()
    assert lines[0] == '"id","prompt","response"' and len(lines) == 4
    assert '"f","What is 7 + 5?","12"' in lines

    # a rerun replaces the day and its landed file whole; a teacher that answers nothing publishes nothing
    manifest = taught.score(spec, planned["jobs"][0], {"run_id": "r2"}, Keys(teacher=KEY))
    assert manifest["requests"]["retries"] == 0 and len(landed.read_text().splitlines()) == 4
    with pytest.raises(ScoreError, match="answered none of the day's 6 rows: .*HTTP 401"):
        taught.score(spec, planned["jobs"][0], {"run_id": "r3"}, Keys(teacher="sk-wrong"))
    assert json.loads((out / "_manifest.json").read_text())["run"] == {"run_id": "r2"}


def test_a_teacher_that_is_down_refuses_the_key_or_lacks_the_model_fails_the_plan(
    teacher, tmp_path, storage, monkeypatch
):
    from freestack.score import teacher as taught

    specs, root = tmp_path / "pipelines", Path(storage.removeprefix("file://"))
    specs.mkdir()
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    day, end = datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC)
    spec = _pipelines(root, specs, teacher)
    with pytest.raises(ScoreError, match="refused the key .*401.*score.teacher.api_key.conn_id"):
        taught.plan(spec, day, end, Keys(teacher="sk-wrong"))
    with pytest.raises(ScoreError, match="score.teacher.model 'small' is not a model of .* \\(big\\)"):
        taught.plan(_with(spec, model="small"), day, end, Keys(teacher=KEY))
    with pytest.raises(ScoreError, match="does not answer \\(APIConnectionError"):
        taught.plan(_with(spec, url="http://127.0.0.1:9/v1"), day, end, Keys(teacher=KEY))
    lacking = root / "prompts" / "2026-11-03"
    lacking.mkdir()
    pq.write_table(pa.table({"id": ["x"], "question": ["What is 1 + 1?"]}), lacking / "part.parquet")
    (lacking / "empty.csv").write_bytes(b"")
    with pytest.raises(
        ScoreError, match="part.parquet has no column\\(s\\) \\['prompt'\\]: the teacher reads"
    ):
        taught.plan(spec, day, datetime(2026, 11, 4, tzinfo=UTC), Keys(teacher=KEY))
    (specs / "student.yaml").unlink()
    with pytest.raises(ScoreError, match="score.teacher.land.pipeline 'student' cannot be read"):
        taught.plan(spec, day, end, Keys(teacher=KEY))


def test_a_teacher_block_is_checked_when_the_spec_is_read():
    from pydantic import ValidationError

    from freestack.spec import PipelineSpec

    teacher = {"url": "http://127.0.0.1:9000/v1", "model": "big", "land": {"pipeline": "chat"}}
    with pytest.raises(ValidationError, match="land.pipeline 'chat' is this pipeline"):
        PipelineSpec.model_validate(_spec({"teacher": teacher}))
    with pytest.raises(ValidationError, match="url"):
        PipelineSpec.model_validate(_spec({"teacher": {"url": "127.0.0.1:9000", "model": "big"}}))
