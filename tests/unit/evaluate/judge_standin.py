"""A stand-in LLM judge for the tests: a real HTTP server on 127.0.0.1 speaking OpenAI's chat route
(``POST /v1/chat/completions``), answering deterministically from the question, so the judging around it
(rubric filling, both orders, parsing, counting) is what is tested.

The rubric :data:`RUBRIC` / :data:`PAIR_RUBRIC` marks the answers and the reference; the judge gives 5 to
an answer equal to the reference and 1 to any other, and pairwise prefers the answer equal to it (a tie
when both or neither are). The model name picks a behaviour: ``fair`` (the above), ``fenced`` (the JSON
in a code fence with prose around it), ``prose`` (no JSON at all), ``first`` (always prefers answer A: a
position bias), ``slow`` (answers after 3 s), ``flaky`` (every third request an HTTP 500), ``overloaded``
(every third request an HTTP 500, the others after 3 s), ``freestack``
(as ``fair``, with freestack's ``x-freestack-version`` header). Any model answers prose to the
answer ``UNREADABLE``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RUBRIC = "Question: {prompt}\nREFERENCE<<{reference}>>\nANSWER<<{answer}>>\nScore the answer."
PAIR_RUBRIC = (
    "Question: {prompt}\nREFERENCE<<{reference}>>\nA<<{answer_a}>>\nB<<{answer_b}>>\nWhich is better?"
)


def _marked(text: str, mark: str) -> str | None:
    found = re.search(rf"(?:^|\n){mark}<<(.*?)>>", text, re.S)
    return found.group(1).strip() if found else None


def verdict(model: str, system: str, question: str, served: int) -> str:
    """The stand-in's answer text for one question."""
    ref = _marked(question, "REFERENCE")
    if model == "prose" or _marked(question, "ANSWER") == "UNREADABLE":
        return "The answer looks quite good to me, I would give it a high mark."
    if "winner" in system:
        a, b = _marked(question, "A"), _marked(question, "B")
        if model == "first":
            winner = "A"
        else:
            winner = "tie" if (a == ref) == (b == ref) else ("A" if a == ref else "B")
        body = {"winner": winner, "rationale": f"A={a!r} B={b!r} reference={ref!r}"}
    else:
        answer = _marked(question, "ANSWER")
        right = answer == ref
        body = {"score": 5 if right else 1, "rationale": "equals the reference" if right else "differs"}
    text = json.dumps(body)
    return f"Here is my verdict:\n```json\n{text}\n```\nThanks." if model == "fenced" else text


class _Handler(BaseHTTPRequestHandler):
    server: StandinJudge

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        with self.server.lock:
            self.server.requests.append(body)
            served = len(self.server.requests)
        model = body["model"]
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "not found"}})
        if model in ("flaky", "overloaded") and served % 3 == 0:
            return self._send(500, {"error": {"message": "the judge is overloaded"}})
        if model in ("slow", "overloaded"):
            time.sleep(3)
        messages = body["messages"]
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        question = messages[-1]["content"]
        text = verdict(model, system, question, served)
        answer = {
            "id": f"judge-{served}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        headers = {"x-freestack-version": "judge:v3"} if model == "freestack" else {}
        self._send(200, answer, headers)

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left (slow, overloaded): nothing to answer


class StandinJudge(ThreadingHTTPServer):
    """The stand-in judge, serving in a daemon thread until :meth:`stop`."""

    daemon_threads = True
    block_on_close = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
