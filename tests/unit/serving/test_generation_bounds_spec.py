"""``deploy.generation``'s continuous-batching bounds (``kv_cache_tokens``, ``max_batch_tokens``): the spec
takes them, refuses values the server's settings would refuse, and hands them to the server as its
``FREESTACK_GENERATION_*`` settings (a local env file; a manifest's env when they differ from the default)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from freestack.serving.spec import DeploySpec
from freestack.settings import Settings


def test_the_continuous_batch_bounds_reach_the_servers_settings(monkeypatch):
    spec = DeploySpec.model_validate(
        {"generation": {"kv_cache_tokens": 4096, "max_batch_tokens": 256, "max_running_per_request": 2}}
    )
    env = spec.local.generation.env()
    assert (env["FREESTACK_GENERATION_KV_CACHE_TOKENS"], env["FREESTACK_GENERATION_MAX_BATCH_TOKENS"]) == (
        "4096",
        "256",
    )
    assert spec.kubernetes.generation.env(defaults=False) == {
        "FREESTACK_GENERATION_KV_CACHE_TOKENS": "4096",
        "FREESTACK_GENERATION_MAX_BATCH_TOKENS": "256",
        "FREESTACK_GENERATION_MAX_RUNNING_PER_REQUEST": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    read = Settings()
    assert (read.generation_kv_cache_tokens, read.generation_max_batch_tokens) == (4096, 256)
    assert read.generation_max_running_per_request == 2


@pytest.mark.parametrize("field, value", [("kv_cache_tokens", 255), ("max_batch_tokens", 15)])
def test_a_bound_below_the_servers_minimum_is_refused(field, value):
    with pytest.raises(ValidationError, match=f"generation.{field}"):
        DeploySpec.model_validate({"generation": {field: value}})


def test_a_prompt_bound_the_request_bound_could_never_hold_is_refused():
    """``max_prompts_per_request`` over ``max_requests``: a request that large would be a 429 on an idle
    server, for ever; the spec says so, naming both settings."""
    with pytest.raises(ValidationError, match="max_prompts_per_request 300 is over max_requests 256"):
        DeploySpec.model_validate({"generation": {"max_prompts_per_request": 300}})
    DeploySpec.model_validate({"generation": {"max_prompts_per_request": 300, "max_requests": 300}})
