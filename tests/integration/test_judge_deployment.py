"""The LLM judge (``gate.judge``) pointed at a real freestack deployment: a tiny random text-generation
version on the MLServer runtime, started exactly as its image starts it, answering OpenAI's chat route
with an API key. It answers bytes, never the JSON object asked for: every such answer is counted as a
failure (never a score), past ``max_failures`` the judging fails naming the field and quoting the answer,
and the deployment's identity (``x-freestack-version``) is what the judge records. A wrong key is a
refusal, not an outage."""

from __future__ import annotations

from pathlib import Path

import pytest

from freestack.judging import client as judge
from freestack.judging.spec import JudgeSpec
from freestack.serving.spec import GenerationBounds
from tests.support.generation_serving import SMOKE_PROMPTS, make_generation_version
from tests.support.images import ImageServer, start_like_image

ROOT = Path(__file__).resolve().parents[2]
KEEP_MODEL_SERVERS = True  # the module's server answers every test (see tests/conftest.py)
pytestmark = pytest.mark.skipif(
    not (ROOT / ".venv-mlserver" / "bin" / "python").exists(),
    reason="the MLServer environment is missing: run `make mlserver-venv`",
)

MODEL, KEY = "judge", "sk-judge-freestack"
CHATS = [[{"role": "user", "content": p}] for p in SMOKE_PROMPTS]
REFS = ["4", "321", "03/11/2026", "12"]
ANSWERS = ["4", "123", "03/11/2026", "13"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ImageServer:
    work = tmp_path_factory.mktemp("judge")
    version = make_generation_version((work / "storage").as_uri(), MODEL, "v1", work)
    bounds = GenerationBounds(
        max_new_tokens=24, default_max_new_tokens=16, max_prompt_tokens=80, truncate="left"
    )
    env = {
        "FREESTACK_MODEL_NAME": MODEL,
        "FREESTACK_HOME": str(work),
        "FREESTACK_SERVER_API_KEY": KEY,
        **bounds.env(),
    }
    s = start_like_image(
        "mlserver",
        version.uri,
        work / "mlserver",
        env=env,
        ready_path=f"/v2/models/{MODEL}/ready",
        timeout=180,
    )
    yield s
    s.stop()


def _spec(server: ImageServer, **kw) -> JudgeSpec:
    return JudgeSpec(url=f"{server.url}/v1", model=MODEL, max_tokens=16, retries=0, **kw)


def test_a_tiny_deployments_prose_is_counted_as_failures_and_fails_the_judging(server):
    spec = _spec(server)
    client = judge.JudgeClient(spec, KEY)
    verdict = client.ask(
        spec.template.format(prompt="What is 2 + 2?", reference="4", answer="4"), judge.parse_pointwise
    )
    assert verdict.kind == judge.UNPARSABLE and verdict.value is None and verdict.raw is not None
    assert verdict.error.startswith("unparsable: ")
    # the deployment says which version answered: what lineage records as the judge's identity
    assert client.served_by == f"{MODEL}:v1" and client.answered_as == f"{MODEL}:v1"
    for bound in (0.1, 1.0):  # even a bound of every prompt: nothing was judged
        with pytest.raises(judge.JudgeError) as err:
            judge.run(spec.model_copy(update={"max_failures": bound}), CHATS, REFS, ANSWERS, ANSWERS, KEY)
        msg = str(err.value)
        assert (
            f"gate.judge.url {server.url}/v1 (model {MODEL}) answered in a way freestack cannot read" in msg
        )
        assert f"4 of 4 judgings failed (unparsable 4; gate.judge.max_failures {bound:g})" in msg
        assert "it answered: " in msg and '{"score": <an integer from 1 to 5>' in msg
    # an outage rule does not pass a judge that answers: prose is not an outage
    with pytest.raises(judge.JudgeError, match="cannot read"):
        judge.run(spec.model_copy(update={"on_judge_error": "pass"}), CHATS, REFS, ANSWERS, None, KEY)


def test_pairwise_against_the_deployment_fails_the_same_way(server):
    with pytest.raises(judge.JudgeError, match=r"4 of 4 judgings failed \(unparsable 4"):
        judge.run(_spec(server, mode="pairwise"), CHATS, REFS, ANSWERS, REFS, KEY)


def test_a_wrong_key_is_a_refusal_naming_the_key_field(server):
    with pytest.raises(judge.JudgeError) as err:
        judge.run(_spec(server, on_judge_error="pass"), CHATS, REFS, ANSWERS, None, "sk-wrong")
    msg = str(err.value)
    assert "refused the requests: 4 of 4 judgings failed (refused 4" in msg and "HTTP 401" in msg
    assert "gate.judge.api_key" in msg


def test_a_prompt_cut_to_fit_the_context_is_flagged_in_the_answer(server):
    """generation.truncate: left cuts an over-long prompt from the left: the answer names it in its
    x-freestack-truncated-prompts header (a prompt that fits is not named)."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt=["hi", "one two three " * 60], max_tokens=2
    )
    assert raw.headers["x-freestack-truncated-prompts"] == "1"
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="hi", max_tokens=2)
    assert "x-freestack-truncated-prompts" not in raw.headers
