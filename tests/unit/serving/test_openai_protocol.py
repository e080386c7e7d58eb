"""The OpenAI API's requests as typed models (freestack_server.mlserver.protocol): a request is read into
its model, or refused with OpenAI's error shape, ``param`` naming the field as the client sent it; chat
turns are the ML core's one parser's (freestack.ml.generation.Message)."""

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
    assert [m.model_dump() for m in request.messages] == [
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
            "messages[0]: tools and function calls",
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "messages[0].role: unknown role 'robot'",
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": HI, "n": 3},
            "n",
            '"n" must be 1 here, not 3: send 3 requests',
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": HI, "seed": 1, "temperature": 1},
            "seed",
            "seed is taken with temperature 0 only",
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": HI, "max_tokens": 2, "max_completion_tokens": 3},
            "max_tokens",
            "max_tokens and max_completion_tokens differ",
        ),
        (
            ChatCompletionRequest,
            {"model": "chat", "messages": HI, "tools": [{}]},
            "tools",
            "'tools' is not supported",
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
            CompletionRequest,
            {"model": "chat", "prompt": "x", "messages": HI},
            "messages",
            "unknown parameter 'messages': this endpoint takes max_tokens, model, n, prompt,",
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
