"""The OpenAI API's requests as typed models (freestack_server.mlserver.protocol): a request is read into
its model, or refused with OpenAI's error shape, ``param`` naming the field as the client sent it; chat
turns are the ML core's one parser's (freestack.ml.lm.chat.Message)."""

from __future__ import annotations

import json

import pytest

from freestack_server.mlserver.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError, read

HI = [{"role": "user", "content": "hi"}]
LONE = "the text holds a lone surrogate (an unpaired \\ud800-\\udfff escape): send valid Unicode text"


def test_a_chat_takes_developer_turns_and_text_parts_as_the_chat_template_does():
    turns = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "name": "x",
        },
    ]
    body = {"model": "chat", "messages": turns, "max_completion_tokens": 3, "user": "u", "logit_bias": {}}
    request = read(ChatCompletionRequest, json.dumps(body).encode())
    assert [m.model_dump(exclude_none=True) for m in request.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
    ]
    assert request.parameters() == {"max_new_tokens": 3}
    assert read(CompletionRequest, b'{"model": "chat", "prompt": "x", "seed": 1}').prompt == ["x"]


@pytest.mark.parametrize(
    ("kind", "body", "param", "message"),
    [
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": [{"role": "user", "content": "a\ud800"}]},
            "messages[0].content",
            f"messages[0].content: {LONE}",
        ),
        (CompletionRequest, {"model": "chat", "prompt": "a\ud800"}, "prompt[0]", f"prompt[0]: {LONE}"),
        (ChatCompletionRequest, {"messages": HI}, "model", '"model" is required'),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": []},
            "messages",
            '"messages" must be a non-empty list',
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0]",
            'messages[0]: a tool turn answers a call: send its "tool_call_id"',
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "messages[0].role: unknown role 'robot'",
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": HI, "n": 0},
            "n",
            "n: Input should be greater than or equal to 1",
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": HI, "logprobs": True, "top_logprobs": 21},
            "top_logprobs",
            "top_logprobs: Input should be less than or equal to 20",
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": HI, "max_tokens": 2, "max_completion_tokens": 3},
            "max_tokens",
            "max_tokens and max_completion_tokens differ",
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": HI, "tools": [{"type": "function", "function": {"name": "a b"}}]},
            "tools[0].function.name",
            "tools[0].function.name: String should match pattern",
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": HI, "stream": None},
            "stream",
            "stream: Input should be a valid boolean",
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": HI, "stream_options": {"x": 1}},
            "stream_options",
            "stream_options takes",
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": HI, "stream_options": {"continuous_usage_stats": [1]}},
            "stream_options.continuous_usage_stats",
            "stream_options.continuous_usage_stats: Input should be a valid boolean",
        ),
        (
            CompletionRequest,
            {"model": "chat", "prompt": "x", "messages": HI},
            "messages",
            "unknown parameter 'messages': this endpoint takes logprobs, max_tokens, model, n, prompt,",
        ),
        (CompletionRequest, [1], None, "the request body must be a JSON object"),
    ],
)
def test_a_refusal_names_the_field_in_openais_error_shape(kind, body, param, message):
    with pytest.raises(OpenAIError) as refused:
        read(kind, json.dumps(body).encode())
    error = refused.value.body()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error") and error[
        "message"
    ].startswith(message), error
    assert refused.value.status == 400


def test_json_nested_too_deep_is_a_400_not_a_crash():
    with pytest.raises(OpenAIError, match="nested too deep"):
        read(ChatCompletionRequest, b"[" * 100_000 + b"]" * 100_000)


def test_auto_reads_the_calls_with_the_versions_response_template():
    """tool_choice auto: the answer's calls are read by transformers' response parser with the tokenizer's
    response_template (here Qwen's form, <tool_call>{json}</tool_call>), its text kept apart."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from demo.tiny_lm import RESPONSE_TEMPLATE

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.response_template = RESPONSE_TEMPLATE  # the tool-use tutorial base's: Qwen's form
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    body = read(ChatCompletionRequest, json.dumps({"model": "m", "messages": HI, "tools": [tool]}).encode())
    calling = body.tool_calling(tok)
    assert calling.schema() is None  # auto: free, then read
    text = 'Let me add. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
    content, calls = calling.read(text, "<|im_start|>assistant\n", tok)
    assert content == "Let me add." and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("add", {"a": 1})
    ]
    assert calling.read("Just text.", "<|im_start|>assistant\n", tok) == ("Just text.", [])
    with pytest.raises(OpenAIError, match="response_template"):
        body.tool_calling(
            PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))),
        )


def test_requests_beside_the_batch_are_bounded_per_deployment_and_per_client():
    """Constrained, logprob and seeded requests run one at a time beside the batch: past the client's bound
    or the deployment's, a 429 (Retry-After) names the setting; a place is freed as its request ends."""
    from freestack_server.mlserver.unbatched import UnbatchedBound

    bound = UnbatchedBound(most=3, per_client=2)
    with bound.hold("10.0.0.1"), bound.hold("10.0.0.1"):
        with pytest.raises(OpenAIError) as one:
            with bound.hold("10.0.0.1"):
                pass
        assert one.value.status == 429 and "max_unbatched_per_client" in one.value.message
        assert one.value.response().headers["retry-after"] == "1"
        with bound.hold("10.0.0.2"):
            with pytest.raises(OpenAIError, match="max_unbatched_requests"):
                with bound.hold("10.0.0.3"):
                    pass
    assert not bound.held
    with bound.hold("10.0.0.1"):
        assert bound.held == {"10.0.0.1": 1}


def _tools_body(tools: list[dict], choice: object) -> ChatCompletionRequest:
    given = {"model": "m", "messages": HI, "tools": tools, "tool_choice": choice}
    return read(ChatCompletionRequest, json.dumps(given).encode())


def test_tool_parameters_with_defs_hold_under_every_tool_choice_and_a_bad_one_is_named():
    """Tools with ``$defs``/``$ref`` (as openai.pydantic_function_tool writes a nested model) compile under
    ``required`` as under a named choice, their pointers resolved in the calls' schema (jsonschema checks a
    call against it); a tool schema that cannot be followed is found by the field it came in."""
    import jsonschema
    import openai
    import pydantic

    from demo.tiny_lm import _lm_tokenizer
    from freestack.ml.lm.constrained import json_grammar

    class P(pydantic.BaseModel):
        x: int

    class Outer(pydantic.BaseModel):
        p: P
        ps: list[P]

    class Other(pydantic.BaseModel):
        p: P  # the same definition's name in a second tool

    tok = _lm_tokenizer(True)
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    compiled = lambda schema: json_grammar(schema, tok, len(tok), eos)  # noqa: E731
    tools = [openai.pydantic_function_tool(Outer), openai.pydantic_function_tool(Other)]
    assert "$defs" in tools[0]["function"]["parameters"]
    for choice in ("required", {"type": "function", "function": {"name": "Other"}}):
        calling = _tools_body(tools, choice).tool_calling(tok)
        assert compiled(calling.schema()).text
    schema = _tools_body(tools, "required").tool_calling(tok).schema()
    good = [{"name": "Outer", "arguments": {"p": {"x": 1}, "ps": [{"x": 2}]}}]
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "Outer", "arguments": {"p": {"x": "no"}, "ps": []}}], schema)
    endless = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
    bad = [*tools, {"type": "function", "function": {"name": "loop", "parameters": endless}}]
    calling = _tools_body(bad, "required").tool_calling(tok)
    fields = [f for f, schema in calling.schemas() if not _compiles(compiled, schema)]
    assert fields == ["tools[2].function.parameters"]


def _compiles(compiled, schema) -> bool:
    from freestack.ml.lm.constrained import GrammarError

    try:
        compiled(schema)
    except GrammarError:
        return False
    return True


def test_a_refusal_deep_in_nested_arrays_names_a_short_param():
    """A body of arrays nested a thousand deep where text belongs: the 400 names the place by its first parts."""
    body = json.dumps({"model": "m", "prompt": [[[[[[[[[[[[["x"]]]]]]]]]]]]] * 2}).encode()
    with pytest.raises(OpenAIError) as refused:
        read(CompletionRequest, body)
    assert refused.value.status == 400 and len(refused.value.param or "") < 80, refused.value.param
