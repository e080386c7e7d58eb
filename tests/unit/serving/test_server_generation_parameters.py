"""A generation request's parameters are checked against the deployment's bounds
(freestack_server.core.generation.GenerationParameters): what is taken becomes the generation settings, and
what is refused is a 400 whose message names the parameter and the bound or what to send."""

from __future__ import annotations

import pytest

from freestack_server.core.errors import PayloadError
from freestack_server.core.generation import Bounds, Generator

BOUNDS = Bounds(max_new_tokens=50, default_max_new_tokens=64, max_temperature=1.5, max_stop_strings=2)


def generator(bounds: Bounds = BOUNDS, context: int | None = 80) -> Generator:
    """A Generator without a model: the parameter checks need only the bounds and the prompt budget."""
    g = Generator.__new__(Generator)
    g.bounds, g.max_prompt_tokens, g.context = bounds, 100, context
    return g


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, (50, 0.0, 1.0, ())),  # the default max_new_tokens, within the bound
        ({"max_new_tokens": 5.0, "temperature": 1, "top_p": 0.5}, (5, 1.0, 0.5, ())),
        ({"temperature": 1e-5}, (50, 0.0, 1.0, ())),  # below MIN_TEMPERATURE: greedy
        ({"temperature": "not read", "do_sample": False}, (50, 0.0, 1.0, ())),
        ({"stop": "x"}, (50, 0.0, 1.0, ("x",))),
        ({"stop_sequence": "a"}, (50, 0.0, 1.0, ("a",))),
        ({"stop_strings": ["a", "b"]}, (50, 0.0, 1.0, ("a", "b"))),
    ],
)
def test_parameters_within_the_bounds_become_the_settings(params, expected):
    s = generator().settings(params)
    assert (s.max_new_tokens, s.temperature, s.top_p, s.stop) == expected
    assert s.max_prompt_tokens == 80 - s.max_new_tokens and s.truncate == "left"


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"stop": "a", "stop_sequence": "b"}, '"stop_sequence" and "stop" are the same parameter: send one'),
        (
            {"num_beams": 4, "max_tokens": 3, "max_new_tokens": 0},
            "unknown generation parameters ['max_tokens', 'num_beams']: a request may set max_new_tokens,",
        ),
        ({"do_sample": 1, "temperature": -3}, '"do_sample" must be true or false, not int'),
        ({"do_sample": None}, '"do_sample" must be true or false, not null'),
        ({"max_new_tokens": "5"}, "\"max_new_tokens\" must be a whole number of tokens, 1 or more, not '5'"),
        ({"max_new_tokens": True}, '"max_new_tokens" must be a whole number of tokens, 1 or more, not True'),
        ({"max_new_tokens": 0, "temperature": -1}, '"max_new_tokens" must be a whole number'),
        (
            {"max_new_tokens": 51},
            "max_new_tokens 51 is over this deployment's bound of 50 (deploy.generation.max_new_tokens)",
        ),
        ({"temperature": True}, '"temperature" must be a number, 0 (greedy) or more, not True'),
        ({"temperature": float("inf")}, '"temperature" must be a number, 0 (greedy) or more, not inf'),
        ({"temperature": 1.6}, "temperature 1.6 is over this deployment's bound of 1.5"),
        ({"top_p": 0, "stop": 3}, '"top_p" must be a number above 0 and at most 1, not 0'),
        ({"stop": [""]}, '"stop" must be a string or a list of non-empty strings'),
        ({"stop": ["a", "b", "c"]}, "3 stop strings; this deployment takes at most 2"),
        ({"stop": ["x" * 129]}, "a stop string is over 128 characters: send shorter ones"),
    ],
)
def test_a_parameter_refused_is_a_400_naming_it(params, says):
    with pytest.raises(PayloadError) as refused:
        generator().settings(params)
    assert refused.value.status == 400
    assert str(refused.value).startswith(says), str(refused.value)


def test_no_room_for_a_prompt_is_refused():
    with pytest.raises(PayloadError, match="leaves no room for a prompt in the model's context of 40"):
        generator(context=40).settings({"max_new_tokens": 40})
