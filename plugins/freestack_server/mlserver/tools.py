"""Tool calls on the OpenAI API's chat route, as vLLM and ``transformers serve`` answer them: the request's
``tools`` go into the version's chat template (``apply_chat_template(tools=...)``), and the answer's calls
come back as OpenAI's ``tool_calls``.

- ``tool_choice: "required"`` or a named function: the answer is generated under a JSON schema
  (:mod:`freestack.ml.lm.constrained`), a list of ``{"name", "arguments"}`` calls of the given tools (one
  only, with ``parallel_tool_calls: false``) or the named function's arguments, so every call names a
  tool and its arguments follow the tool's ``parameters``, whatever the model.
- ``"auto"``: the model answers freely and its calls are read by transformers' response parser
  (``tokenizer.parse_response`` with the version's ``response_template``, the declarative parser chat
  models ship); a version whose tokenizer has none is refused (400) with what to send instead.
- ``"none"`` (the default without tools): text, and the tools are left out of the prompt.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, JsonValue, StringConstraints
from pydantic.types import StrictBool


class FunctionDefinition(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, JsonValue] | None = None  #: a JSON schema of the arguments
    strict: StrictBool | None = None


class ToolDefinition(BaseModel):
    """One of ``tools``: a function the model may call."""

    model_config = {"extra": "forbid", "frozen": True}

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the function the answer calls."""

    model_config = {"extra": "forbid", "frozen": True}

    type: Literal["function"]
    function: FunctionName


#: a call's arguments when its tool declares no ``parameters``
ANY_ARGUMENTS: dict[str, JsonValue] = {"type": "object"}


@dataclass(frozen=True)
class Call:
    """One tool call of an answer: the function's name and its arguments as JSON text (OpenAI's form)."""

    name: str
    arguments: str
    id: str = ""

    def as_dict(self, index: int | None = None) -> dict[str, object]:
        out = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return out if index is None else {"index": index, **out}


@dataclass(frozen=True)
class ToolCalling:
    """A chat request's tools and how the answer may call them."""

    tools: tuple[ToolDefinition, ...]
    choice: str | NamedToolChoice
    parallel: bool

    def template_tools(self) -> list[dict[str, object]]:
        """The tools as chat templates take them (OpenAI's form)."""
        return [t.model_dump(exclude_none=True) for t in self.tools]

    def schema(self) -> dict[str, JsonValue] | None:
        """The JSON schema the answer is generated under; None for ``auto`` (free, then parsed)."""
        if isinstance(self.choice, NamedToolChoice):
            return self.schemas()[0][1]  # the named tool's parameters
        if self.choice != "required":
            return None
        defs: dict[str, JsonValue] = {}
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.function.name},
                    "arguments": _hoisted(self.parameters(i), f"tool{i}_", defs),
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for i, t in enumerate(self.tools)
        ]
        return {
            "type": "array",
            "items": {"anyOf": calls},
            "minItems": 1,
            **({} if self.parallel else {"maxItems": 1}),
            **({"$defs": defs} if defs else {}),
        }

    def parameters(self, index: int) -> dict[str, JsonValue]:
        """The arguments' schema of tool ``index`` (``tools[index].function.parameters``)."""
        return self.tools[index].function.parameters or ANY_ARGUMENTS

    def schemas(self) -> list[tuple[str, dict[str, JsonValue]]]:
        """Each schema the answer's grammar holds, with the field the client sent it in: the named tool's
        parameters, or every tool's under ``required`` (none for ``auto``)."""
        if self.choice != "required" and not isinstance(self.choice, NamedToolChoice):
            return []
        named = self.choice.function.name if isinstance(self.choice, NamedToolChoice) else None
        return [
            (f"tools[{i}].function.parameters", self.parameters(i))
            for i, t in enumerate(self.tools)
            if named in (None, t.function.name)
        ]

    def read(self, text: str, prompt: str, tokenizer) -> tuple[str | None, list[Call]]:
        """An answer's text and its calls (each with a new id); the text is None when it is all calls."""
        if isinstance(self.choice, NamedToolChoice):
            return None, [_call(self.choice.function.name, text)]
        if self.choice == "required":
            return None, [_call(c["name"], json.dumps(c["arguments"])) for c in json.loads(text)]
        parsed = tokenizer.parse_response(text, prefix=prompt, tools=self.template_tools())
        calls = [
            _call(c["function"]["name"], _arguments(c["function"])) for c in parsed.get("tool_calls") or []
        ]
        content = parsed.get("content") or None
        return content if calls else (content or text), calls


def _hoisted(schema: dict[str, JsonValue], prefix: str, defs: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """A tool's ``schema`` to nest inside the calls' schema: its definitions (``$defs``, ``definitions``)
    move to ``defs`` (the root's ``$defs``) under ``prefix``-ed names, and its own pointers (``#...``) are
    rewritten to where they now are, so each ``$ref`` resolves (llguidance resolves them from the root)."""
    home = f"#/$defs/{prefix}root"
    moved = {
        f"#/{key}/{name}": f"#/$defs/{prefix}{name}"
        for key in ("$defs", "definitions")
        for name in schema.get(key) or {}
        if isinstance(schema.get(key), dict)
    }
    rewritten = _pointed(schema, moved, home)
    for key in ("$defs", "definitions"):
        for name, sub in (rewritten.pop(key, None) or {}).items():
            defs[f"{prefix}{name}"] = sub
    if any(isinstance(r, str) and r.startswith("#") for r in _refs(schema)):
        defs[f"{prefix}root"] = rewritten  # a pointer to the tool's root ("#") goes to its copy
    return rewritten


def _pointed(node: JsonValue, moved: dict[str, str], home: str) -> JsonValue:
    """``node`` with each local ``$ref`` rewritten: into a moved definition, or relative to ``home``."""
    if isinstance(node, list):
        return [_pointed(v, moved, home) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _pointed(v, moved, home) for k, v in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        hit = next((m for m in moved if ref == m or ref.startswith(f"{m}/")), None)
        out["$ref"] = moved[hit] + ref[len(hit) :] if hit else home + ref[1:]
    return out


def _refs(node: JsonValue) -> list[JsonValue]:
    """Every ``$ref`` in ``node``."""
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    if not isinstance(node, dict):
        return []
    return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in _refs(v)]


def _arguments(function: dict[str, object]) -> str:
    arguments = function.get("arguments", {})
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _call(name: str, arguments: str) -> Call:
    return Call(name, arguments, f"call_{secrets.token_hex(12)}")


__all__ = ["Call", "FunctionDefinition", "FunctionName", "NamedToolChoice", "ToolCalling", "ToolDefinition"]
