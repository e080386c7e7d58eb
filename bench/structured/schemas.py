"""The JSON schemas every library compiles, each with a valid instance whose tokens are the decoding walk.

The first five are also the schemas the model server's constrained-decoding test answers
(``tests/unit/ml/test_engine.py`` takes them from here); the sixth is OpenAI's JSON mode, any JSON object
(``freestack.ml.lm.constrained.ANY_OBJECT``), walked with an order record of a few hundred tokens. Instances
are written compact (no whitespace between tokens), as the model server asks every library to write them.
The open instance nests three levels at most and has no ``\\u`` escape: outlines-core's regex of an open
object stops at three levels and its strings take no ``\\u`` escape.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

SCHEMAS: dict[str, dict] = {
    "name_age": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "enum_bool": {
        "type": "object",
        "properties": {"label": {"enum": ["cat", "dog", "bird"]}, "sure": {"type": "boolean"}},
        "required": ["label", "sure"],
        "additionalProperties": False,
    },
    "string_array": {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 3}},
        "required": ["tags"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 5},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "integer", "minimum": -90, "maximum": 90}},
                "required": ["lat"],
                "additionalProperties": False,
            },
        },
        "required": ["city", "where"],
        "additionalProperties": False,
    },
    "any_of": {
        "type": "object",
        "properties": {
            "answer": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "null"}]}
        },
        "required": ["answer"],
        "additionalProperties": False,
    },
    "any_object": {"type": "object"},
}

_ORDER = {
    "id": "ord_2026_11_8f3a",
    "status": "shipped",
    "customer": {
        "name": "Zoë Müller-Lindqvist",
        "email": "zoe.mueller@example.com",
        "tags": ["vip", "eu", "newsletter"],
        "since": "2019-04-12",
    },
    "items": [
        {"sku": "A-100", "title": "Espresso beans, 1 kg", "qty": 2, "price": 19.99, "gift": False},
        {"sku": "B-220", "title": 'Grinder "Mini" (burr)', "qty": 1, "price": 89.5, "gift": True},
        {"sku": "C-013", "title": "Filter papers\tsize 4", "qty": 3, "price": 3.25, "gift": False},
    ],
    "shipping": {"method": "express", "cost": 7.9, "tracking": None, "eta_days": 2},
    "discount": -0.15,
    "total": 1.5e2,
    "paid": True,
    "note": "Leave at the back door \\ ring twice; fragile!",
}

INSTANCES: dict[str, object] = {
    "name_age": {"name": "Ann", "age": 42},
    "enum_bool": {"label": "dog", "sure": True},
    "string_array": {"tags": ["a", "bc", "def"]},
    "nested": {"city": "Paris", "where": {"lat": 48}},
    "any_of": {"answer": None},
    "any_object": _ORDER,
}


class Case(BaseModel):
    """One schema as JSON text, its keys sorted as ``freestack.ml.lm.constrained.json_grammar`` writes it
    (every library here emits an object's properties in the schema's order), and its instance written
    compact, its keys sorted too."""

    name: str
    schema_text: str
    instance_text: str


def cases() -> list[Case]:
    return [
        Case(
            name=name,
            schema_text=json.dumps(schema, sort_keys=True),
            instance_text=json.dumps(
                INSTANCES[name], separators=(",", ":"), ensure_ascii=False, sort_keys=True
            ),
        )
        for name, schema in SCHEMAS.items()
    ]
