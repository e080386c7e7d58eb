"""Text generation in the model server: an instruction-tuned causal LM (``model: {type: huggingface, task:
text-generation}``) answering prompts and conversations, on both runtimes. Runs in the serving
environments (no Airflow); the ML itself is :mod:`freestack.ml.lm`'s (``generate``: a batch of
chats, left-padded, greedy when the temperature is 0, cut at stop strings).

What a request may ask is bounded by the deployment (:class:`Bounds`: ``deploy.generation`` in the spec,
the ``FREESTACK_GENERATION_*`` settings in the server): a parameter beyond a bound is a 400 naming the
bound, a prompt over ``max_prompt_tokens`` is cut from the left or refused (413) as ``truncate`` says,
never a 500. Every request is checked alone (:meth:`Generator.prompts`) before it joins a batch, so a
bad one is refused alone.

A request's prompts travel as :class:`Prompts`: the chats, their token ids, the text the request log
keeps, and the generation settings. On the ``seldon`` runtime concurrent requests with the same settings
share one ``generate`` call of at most ``batch_prompts`` prompts (the worker's adaptive batching,
:mod:`freestack_server.seldon.batching`, whose rounds group parked :class:`Prompts` by :attr:`Prompts.batch_key`);
on ``mlserver`` every prompt joins the continuous batch of :mod:`freestack.ml.lm.engine`, which also
answers the OpenAI API (:mod:`freestack_server.mlserver.openai`). Each answer (:class:`Generated`) says how
many prompts answered with it.

The payloads (Seldon's ``strData`` / ``jsonData``; the Open Inference Protocol's tensors, named as
MLServer's own ``mlserver-huggingface`` runtime names them) are in ``docs/stages/serving.md``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeGuard

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from freestack.ml.lm.answers import Completion, GenerationSettings  # light: no torch
from freestack.ml.lm.chat import ChatError, parse_messages  # light: pydantic only
from freestack.settings import settings
from freestack_server.core.errors import PayloadError, kind_of

log = logging.getLogger("freestack.serving")

#: the generation parameters a request may carry, and the other names clients use for them (transformers'
#: ``generate`` and text-generation pipeline: ``stop_strings``, ``stop_sequence``)
PARAMETERS = ("max_new_tokens", "temperature", "top_p", "stop", "seed")
ALIASES = {"stop_strings": "stop", "stop_sequence": "stop"}
#: accepted and checked, but not a setting of its own: the pipeline's ``do_sample: false`` is temperature 0
FLAGS = ("do_sample",)
MIN_TEMPERATURE = 1e-4  # a temperature below this is greedy decoding
MAX_STOP_CHARS = 128  # a stop string longer than this is refused (transformers builds tables per stop string)


@dataclass(frozen=True)
class Bounds:
    """What a request may ask for (``deploy.generation``; the defaults are the settings' and the spec's)."""

    max_new_tokens: int = 256
    default_max_new_tokens: int = 64
    max_temperature: float = 2.0
    max_prompt_tokens: int | None = None  # None: the model's max_length
    truncate: str = "left"  # left | refuse
    max_stop_strings: int = 4
    batch_prompts: int = 8
    max_prompts_per_request: int = 16
    max_requests: int = 256
    max_unbatched_requests: int = 8
    max_unbatched_per_client: int = 2
    max_running_per_request: int = 4
    kv_cache_tokens: int = 16384
    max_batch_tokens: int = 1024
    max_adapters: int = 8
    #: the alias that answers ``canary_weight`` of the requests for the model's own name (``mlserver``)
    canary_alias: str | None = None
    canary_weight: float = 0.0
    #: POST /v1/load_lora_adapter loads an adapter that is not a registered version (``mlserver``)
    runtime_adapters: bool = False

    @classmethod
    def from_settings(cls) -> Bounds:
        """The ``FREESTACK_GENERATION_*`` settings (:mod:`freestack.settings`)."""
        config = settings()
        return cls(**{f.name: getattr(config, f"generation_{f.name}") for f in fields(cls)})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> Bounds:
        """From ``model-settings.json``'s ``parameters.extra.generation`` (MLServer); missing keys: the settings'."""
        known = {f.name for f in fields(cls)}
        return replace(cls.from_settings(), **{k: v for k, v in (values or {}).items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prompts:
    """One request's prompts (or several requests' prompts, joined for one batch): each a chat, the text the
    request log keeps for it, and the generation settings they share. ``form``: how the request asked
    (the runtimes answer in it)."""

    chats: list[list[dict[str, str]]]
    texts: list[str]
    settings: GenerationSettings  # frozen: hashable
    batch_limit: int = 8  # the most prompts of one generate call (Bounds.batch_prompts)
    form: dict[str, str] = field(default_factory=dict)
    #: each prompt's token ids as the model reads them, and whether it was cut from the left
    ids: list[tuple[list[int], bool]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.chats)

    @property
    def batch_key(self) -> tuple[str, GenerationSettings]:
        """Requests with equal keys may share a ``generate`` call (the batching rounds group by it)."""
        return ("generate", self.settings)

    @classmethod
    def join(cls, parts: Sequence[Prompts]) -> Prompts:
        if len(parts) == 1:
            return parts[0]
        return cls(
            [c for p in parts for c in p.chats],
            [t for p in parts for t in p.texts],
            parts[0].settings,
            parts[0].batch_limit,
        )


@dataclass
class Generated:
    """One prompt's answer, and how many prompts the ``generate`` call that answered it held."""

    completion: Completion
    batch: int

    def as_dict(self) -> dict[str, Any]:
        keys = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "truncated")
        return {k: getattr(self.completion, k) for k in keys}


def _number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _refused(message: str) -> PydanticCustomError:
    """A parameter's refusal: ``message`` is the 400's text as it stands (no "Value error, " before it)."""
    return PydanticCustomError("generation_parameter", "{message}", {"message": message})


def _bounds(info: ValidationInfo) -> Bounds:
    return (info.context or {}).get("bounds") or Bounds()


class GenerationParameters(BaseModel):
    """A request's generation parameters, checked against the deployment's :class:`Bounds` (the
    validation context's ``bounds``). Each field's rule and refusal is its own validator; values are taken
    as JSON sends them (a number as text, or 1 for true, is refused, never coerced), and the fields are
    checked in this order, the first refusal being the request's 400."""

    model_config = ConfigDict(extra="forbid")

    do_sample: bool | None = None  #: ``false`` is greedy decoding (temperature 0), as in transformers
    max_new_tokens: int  #: default: the bounds' default_max_new_tokens, within max_new_tokens
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None  #: a sampled answer given again for the same seed

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Mapping[str, object], info: ValidationInfo) -> dict[str, object]:
        """The parameters under their own names (ALIASES), none unknown, and the default max_new_tokens."""
        params = dict(data)
        for alias, name in ALIASES.items():
            if alias in params:
                if name in params:
                    raise _refused(f'"{alias}" and "{name}" are the same parameter: send one')
                params[name] = params.pop(alias)
        unknown = sorted(k for k in params if k not in PARAMETERS and k not in FLAGS)
        if unknown:
            raise _refused(
                f"unknown generation parameters {unknown}: a request may set {', '.join(PARAMETERS)}"
            )
        b = _bounds(info)
        params.setdefault("max_new_tokens", min(b.default_max_new_tokens, b.max_new_tokens))
        return params

    @field_validator("do_sample", mode="plain")
    @classmethod
    def _flag(cls, v: object, info: ValidationInfo) -> bool:
        if type(v) is not bool:
            raise _refused(f'"{info.field_name}" must be true or false, not {kind_of(v)}')
        return v

    @field_validator("max_new_tokens", mode="plain")
    @classmethod
    def _max_new_tokens(cls, n: object, info: ValidationInfo) -> int:
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        if type(n) is not int or n < 1:
            raise _refused(f'"max_new_tokens" must be a whole number of tokens, 1 or more, not {n!r}')
        bound = _bounds(info).max_new_tokens
        if n > bound:
            raise _refused(
                f"max_new_tokens {n} is over this deployment's bound of {bound} "
                f"(deploy.generation.max_new_tokens): ask for at most {bound}"
            )
        return n

    @field_validator("temperature", mode="plain")
    @classmethod
    def _temperature(cls, t: object, info: ValidationInfo) -> float:
        if info.data.get("do_sample") is False:
            return 0.0
        if not _number(t) or t < 0:
            raise _refused(f'"temperature" must be a number, 0 (greedy) or more, not {t!r}')
        if t < MIN_TEMPERATURE:  # dividing the logits by less overflows them: as good as greedy anyway
            return 0.0
        bound = _bounds(info).max_temperature
        if t > bound:
            raise _refused(
                f"temperature {t:g} is over this deployment's bound of {bound:g} "
                "(deploy.generation.max_temperature)"
            )
        return float(t)

    @field_validator("top_p", mode="plain")
    @classmethod
    def _top_p(cls, p: object) -> float:
        if not _number(p) or not 0 < p <= 1:
            raise _refused(f'"top_p" must be a number above 0 and at most 1, not {p!r}')
        return float(p)

    @field_validator("stop", mode="plain")
    @classmethod
    def _stop(cls, stop: object, info: ValidationInfo) -> tuple[str, ...]:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise _refused('"stop" must be a string or a list of non-empty strings')
        bound = _bounds(info).max_stop_strings
        if len(stop) > bound:
            raise _refused(
                f"{len(stop)} stop strings; this deployment takes at most {bound} "
                "(deploy.generation.max_stop_strings)"
            )
        if any(len(s) > MAX_STOP_CHARS for s in stop):
            raise _refused(f"a stop string is over {MAX_STOP_CHARS} characters: send shorter ones")
        return tuple(stop)

    @field_validator("seed", mode="plain")
    @classmethod
    def _seed(cls, seed: object) -> int:
        if type(seed) is not int or not -(2**63) <= seed < 2**63:
            raise _refused(f'"seed" must be a whole number (64 bits), not {seed!r}')
        return seed


class Generator:
    """A version's causal LM, its tokenizer and chat columns, and the deployment's bounds: checks requests
    and answers them (:meth:`run`)."""

    def __init__(self, net, tokenizer, *, bounds: Bounds, generation_config: dict[str, Any] | None = None):
        self.net, self.lm, self.tokenizer = net, net.model, tokenizer
        #: the tokenizer the checks count prompt tokens with: the runtime that generates in another thread
        #: gives them a copy of their own (a fast tokenizer is not safe to share across threads)
        self.check_tokenizer = tokenizer
        self.columns = net.columns  # freestack.ml.lm.chat.ChatColumns
        self.bounds, self.generation_config = bounds, generation_config or {}
        self.max_length = int(net.max_length)
        self.max_prompt_tokens = int(bounds.max_prompt_tokens or self.max_length)
        self.context = context_of(getattr(self.lm, "config", None))  # the model's positions (None: no limit)
        self.rows = _rows(net, tokenizer)  # the token ids the model has rows for

    # -- what a request may ask -------------------------------------------------------------------------
    def settings(self, params: Mapping[str, object] | None) -> GenerationSettings:
        """The generation settings of a request's ``params`` within the bounds (:class:`GenerationParameters`);
        PayloadError (400) naming the parameter, and the bound it is beyond or what to send."""
        try:
            checked = GenerationParameters.model_validate(dict(params or {}), context={"bounds": self.bounds})
        except ValidationError as exc:  # the first parameter refused, in the order of the fields
            first = exc.errors(include_url=False)[0]
            name = str(first["loc"][0]) if first.get("loc") else None
            raise PayloadError(first["msg"], param=name) from None
        return GenerationSettings(
            **checked.model_dump(exclude={"do_sample"}),
            max_prompt_tokens=self._prompt_budget(checked.max_new_tokens),
            truncate=self.bounds.truncate,
        )

    def _prompt_budget(self, max_new_tokens: int) -> int:
        """The most prompt tokens a request with ``max_new_tokens`` may have: max_prompt_tokens, and room
        for the answer within the model's positions."""
        budget = self.max_prompt_tokens
        if self.context is not None:
            room = self.context - max_new_tokens
            if room < 1:
                raise PayloadError(
                    f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
                    f"context of {self.context} tokens: ask for fewer",
                    param="max_new_tokens",
                )
            budget = min(budget, room)
        return budget

    def check_count(self, n: int) -> None:
        """A request of more prompts than ``max_prompts_per_request`` is refused (413) before any is read: one
        request of thousands would hold every other client for minutes."""
        limit = self.bounds.max_prompts_per_request
        if n > limit:
            raise PayloadError(
                f"{n} prompts in one request; this deployment answers at most {limit} a request "
                "(deploy.generation.max_prompts_per_request): send them in several requests",
                413,
                "PAYLOAD_TOO_LARGE",
            )

    def chat(self, value: object, where: str, *, messages: bool) -> tuple[list[dict[str, str]], str]:
        """A prompt (text: one user turn) or a conversation (``messages``: a list of {"role", "content"}, or
        its JSON), parsed by the ML core's one parser (:func:`freestack.ml.lm.chat.parse_messages`),
        with the model's system prompt first; and the text the request log keeps."""
        try:
            chat = parse_messages(value, where, prompt=not messages)
        except ChatError as exc:
            raise PayloadError(str(exc)) from None
        text = json.dumps(chat, ensure_ascii=False) if messages else chat[0]["content"]
        return self.columns.with_system(chat), text

    def prompts(
        self,
        chats: list[list[dict[str, str]]],
        texts: list[str | tuple[int, ...]],
        settings: GenerationSettings,
        form: dict[str, str] | None = None,
        *,
        continued: bool = False,
        tools: list | None = None,
    ) -> Prompts:
        """A request's prompts, checked: their number and each prompt's length (cut from the left, or
        refused with 413, by ``truncate``), under ``settings`` (:meth:`settings`, the request's parameters
        checked against the bounds). ``continued``: the texts are continued as they
        stand, with no chat template (the OpenAI API's completions; a tuple is token ids, kept as its
        decoded text); ``tools``: the functions the chat
        template lays out for the model (an OpenAI request's own; the version's, ``columns.tools``, on the
        routes that cannot send any)."""
        from freestack.ml.lm.prompts import EmptyPrompt, PromptTooLong, prompt_ids

        if not chats:
            raise PayloadError("the request holds no prompt: send a prompt or a list of messages")
        self.check_count(len(chats))
        try:
            ids = prompt_ids(self.check_tokenizer, texts if continued else chats, settings, tools, self.rows)
        except PromptTooLong as exc:
            within = (
                f", less max_new_tokens {settings.max_new_tokens} within the model's context of {self.context}"
                if self.context is not None and exc.limit < self.max_prompt_tokens
                else ""
            )
            raise PayloadError(
                f"prompt {exc.index} is {exc.tokens} tokens{' with the chat template' if exc.chat else ''}, "
                f"over this deployment's limit of {exc.limit} (deploy.generation.max_prompt_tokens{within}): "
                "shorten it, or deploy with generation.truncate: left to keep its last tokens",
                413,
                "PROMPT_TOO_LONG",
            ) from None
        except EmptyPrompt as exc:
            raise PayloadError(str(exc), param="messages" if exc.chat else "prompt") from None
        except ChatError as exc:  # a token id past the model's rows, a template that fails
            raise PayloadError(str(exc), param="prompt" if continued else "messages") from None
        shown = [t if isinstance(t, str) else self.tokenizer.decode(list(t)) for t in texts]
        return Prompts(chats, shown, settings, self.bounds.batch_prompts, dict(form or {}), ids)

    # -- answering --------------------------------------------------------------------------------------
    def run(self, prompts: Prompts) -> list[Generated]:
        """Answers to ``prompts`` (checked), ``batch_prompts`` at a time: one ``generate`` call each."""
        from freestack.ml.lm.sampling import generate

        out: list[Generated] = []
        step = max(1, self.bounds.batch_prompts)
        for i in range(0, len(prompts.chats), step):
            chats = prompts.chats[i : i + step]
            completions = generate(self.lm, self.tokenizer, chats, prompts.settings, self.generation_config)
            out += [Generated(c, len(chats)) for c in completions]
        return out

    def warm_up(self) -> None:
        """One token for an empty prompt: a broken model fails here, at load, not on traffic."""
        from freestack.ml.lm.sampling import generate

        chat = self.columns.with_system([{"role": "user", "content": ""}])
        generate(
            self.lm,
            self.tokenizer,
            [chat],
            GenerationSettings(max_new_tokens=1, max_prompt_tokens=self.max_prompt_tokens),
            self.generation_config,
        )


def _rows(net, tokenizer) -> int:
    """The token ids ``net``'s model has rows for, logged when its tokenizer knows more (ids past the rows
    are refused with a 400: embedding one would fail every request in the batch)."""
    rows = net.token_rows()
    if len(tokenizer) > rows:
        log.warning(
            "the tokenizer knows %d tokens but the model has rows for %d: prompts holding ids %d and up are "
            "refused (train the version with its embeddings resized to the tokenizer)",
            len(tokenizer),
            rows,
            rows,
        )
    return rows


def describe(bounds: Bounds, info: dict[str, Any]) -> dict[str, Any]:
    """The bounds a version is served within and its chat columns, for the metadata: from the small JSON
    files (``info``: :meth:`freestack_server.core.model.ServedModel.describe`), before the model is loaded."""
    chat = info.get("chat") or {}
    out = {
        **bounds.as_dict(),
        "default_max_new_tokens": min(bounds.default_max_new_tokens, bounds.max_new_tokens),
        "max_prompt_tokens": bounds.max_prompt_tokens or chat.get("max_length"),
        "context": context_of(info.get("config") or {}),
        "max_length": chat.get("max_length"),
        "input": (info.get("features") or ["prompt"])[0],
        "system_prompt": bool((chat.get("columns") or {}).get("system")),
    }
    return {k: v for k, v in out.items() if v is not None}


def context_of(config: Any) -> int | None:
    """The model's position limit (GPT-2's ``n_positions``, most others' ``max_position_embeddings``), from
    its config (transformers' object or ``config.json``'s dict): a prompt plus its answer must fit, else the
    model fails or answers nonsense."""
    for name in ("n_positions", "max_position_embeddings"):
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


__all__ = [
    "ALIASES",
    "PARAMETERS",
    "Bounds",
    "Generated",
    "Generator",
    "Prompts",
    "context_of",
    "describe",
]
