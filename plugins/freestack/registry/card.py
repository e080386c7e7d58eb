"""Model cards: the ``README.md`` of a registry version, a Hugging Face model card (YAML front matter
with model-index eval results and a ``freestack`` section, then Markdown) rendered from the version's
metrics and lineage and what the registering stage adds (:class:`CardInfo`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CardInfo:
    """What the model card says beyond what ``lineage.json`` / ``metrics.json`` hold already.

    Every field is optional; missing ones are read from the version's ``metrics.json`` (metrics) and
    ``lineage.json`` (window, partitions, train_config = hyperparameters, sweep, gate)."""

    metrics: dict[str, Any] | None = None
    window: dict[str, Any] | None = None
    partitions: list[dict[str, Any]] | None = None
    train_config: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    intended_use: str | None = None
    limitations: str | None = None
    license: str = "apache-2.0"
    tags: list[str] = field(default_factory=list)
    library_name: str = "freestack"
    dataset_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, info: CardInfo | dict[str, Any] | None) -> CardInfo:
        if info is None:
            return cls()
        if isinstance(info, CardInfo):
            return info
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        unknown = {k: v for k, v in info.items() if k not in known}
        return cls(
            **{k: v for k, v in info.items() if k in known},
            extra=dict(info.get("extra") or {}) | {k: v for k, v in unknown.items() if k != "extra"},
        )


def metrics_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The top-level numeric metrics (``test_*``, ``best_val_*``...), without nested sections."""
    return {
        k: float(v)
        for k, v in sorted(metrics.items())
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "best_epoch"
    }


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model }} {{ version }}

{% if pretrained -%}
`{{ pretrained.repo }}` (commit `{{ pretrained.commit }}`) fine-tuned by freestack for {{ pretrained.task }}
{%- if adapter %} with LoRA adapters (`adapter_config.json`, `adapter_model.safetensors`; the base is
{% if base_folder %}read from the folder `{{ base_folder }}`{% else %}fetched at that commit{% endif %}){% else %} (`config.json` + `model.safetensors`){% endif %}, labels in `config.json`'s
`id2label`; loadable with plain `transformers`{% if adapter %} and `peft`{% endif %}.
{%- elif custom -%}
A freestack custom model (`{{ custom.class }}` from `{{ custom.source }}`, {{ task }}) in Hugging Face
layout: `config.json`, `model.safetensors` and the module's own source, `module.py` (sha256
`{{ custom.sha256 }}`), loadable with `freestack.ml.models.load_pretrained` (below).
{%- else -%}
A freestack model ({{ kind }} {{ task }}) in Hugging Face layout: `config.json` +
`model.safetensors`, loadable with `freestack.ml.models.load_pretrained` (below).
{%- endif %}

## Intended use

{{ intended_use }}

## Limitations

{{ limitations }}

## Metrics

| metric | value |
|---|---|
{% for k, v in metrics.items() -%}
| {{ k }} | {{ "%.6g"|format(v) }} |
{% endfor %}
{% if costs -%}
## Costs

| what | measured |
|---|---|
{% for k, v in costs -%}
| {{ k }} | {{ v }} |
{% endfor %}
{% endif -%}
## Training data

Window: {{ window_text }}.

| partition | rows | sha256 |
|---|---|---|
{% for p in partitions -%}
| {{ p.ds }} | {{ p.rows }} | `{{ p.sha256 }}` |
{% endfor %}
## Gate decision

{{ gate_text }}

## Lineage

- spec hash: `{{ lineage.spec_hash }}`
- code version: `{{ lineage.code_version }}`
- Airflow: {{ airflow_text }}
- W&B run: {{ wandb_text }}
- sweep: {{ sweep_text }}

## How to load

In Python with freestack installed, from the version's folder (`registry/{{ model }}/{{ version }}/` under
the storage root, or a copy of it: `huggingface_hub.snapshot_download(repo_id, revision="{{ version }}")`
of a Hub repo it was pushed to); the example inputs are the first test rows the evaluation checked:
{%- if custom %}
loading runs the version's `module.py`: do it for versions whose code you trust.
{%- endif %}
{%- if adapter %}
{%- if base_folder %}
the adapter's base is read from `{{ pretrained.repo }}` and must still hash to `{{ pretrained.commit }}`.
{%- else %}
the adapter's base, `{{ pretrained.repo }}`, is fetched from the Hub at commit `{{ pretrained.commit }}`.
{%- endif %}
{%- endif %}

```python
{% if pretrained and pretrained.task == "text-generation" -%}
import json

from freestack.ml.lm.answers import GenerationSettings
from freestack.ml.lm.prompts import load_tokenizer
from freestack.ml.lm.sampling import generate
from freestack.ml.models import load_pretrained

folder = "."  # the version's folder
net = load_pretrained(folder)
tokenizer = load_tokenizer(folder)  # with the chat template trained on
sample = json.load(open(f"{folder}/evaluation/smoke.json"))  # test prompts and the answers evaluation saw
for answer in generate(net.model, tokenizer, sample["chats"][:4], GenerationSettings(max_new_tokens=sample["max_new_tokens"])):
    print(answer.text, answer.finish_reason)
{% else -%}
{% if image_column -%}
import base64
{% endif -%}
import json

import torch
{%- if features %}
from freestack.ml.features import load_encoder
{%- endif %}
from freestack.ml.models import load_pretrained

folder = "."  # the version's folder
model = load_pretrained(folder)
{%- if features %}
encoder = load_encoder(folder)  # preprocessing.json{% if text_column %} + tokenizer.json{% endif %}: the inputs encoded as in training
{%- endif %}
sample = json.load(open(f"{folder}/evaluation/smoke.json"))  # test rows, as a client sends them
{%- if features %}

# a list of raw values per column: {{ features_text }}
columns = {name: [row[i] for row in sample["rows"][:4]] for i, name in enumerate(sample["features"])}
{%- if image_column %}
columns["{{ image_column }}"] = [base64.b64decode(v) for v in columns["{{ image_column }}"]]  # an image is its file's bytes
{%- endif %}
x = {group: torch.as_tensor(values) for group, values in encoder.encode(columns).items()}
{%- else %}

# a row of {{ n_features }} numbers per input, in the order of the columns in model.features
x = torch.tensor(sample["rows"][:4], dtype=torch.float32)
{%- endif %}
{%- if task == "regression" %}
print(model.predict(x).tolist())  # in the target's units
{%- else %}
proba = model.predict_proba(x)  # a probability per class, in model.classes order
print(proba.tolist())
print([model.classes[i] for i in proba.argmax(-1).tolist()])
{%- endif %}
{% endif -%}
```
{% if pretrained %}
From the Hub with plain `transformers`{% if adapter %} and `peft`{% endif %} (no freestack), once pushed to `<repo>`:

```python
from transformers import {{ auto_class }}{% if pretrained.task in ("text-classification", "text-generation") %}, AutoTokenizer{% endif %}
{%- if adapter %}
from transformers import AutoConfig
from peft import PeftModel

config = AutoConfig.from_pretrained("<repo>", revision="{{ version }}")   # the labels
{%- if base_folder %}
# the base folder the adapter was trained on (adapter_config.json's base_model_name_or_path), unchanged
base = {{ auto_class }}.from_pretrained("{{ base_folder }}", config=config)
{%- else %}
base = {{ auto_class }}.from_pretrained("{{ pretrained.repo }}", revision="{{ pretrained.commit }}", config=config)
{%- endif %}
model = PeftModel.from_pretrained(base, "<repo>", revision="{{ version }}").eval()
{%- else %}

model = {{ auto_class }}.from_pretrained("<repo>", revision="{{ version }}").eval()
{%- endif %}
{%- if pretrained.task == "text-classification" %}
tokenizer = AutoTokenizer.from_pretrained("<repo>", revision="{{ version }}")
batch = tokenizer(["some text"], return_tensors="pt", padding="max_length", truncation=True, max_length={{ max_length }})
print(model(**batch).logits.softmax(-1).tolist())  # labels: model.config.id2label
{%- elif pretrained.task == "text-generation" %}
tokenizer = AutoTokenizer.from_pretrained("<repo>", revision="{{ version }}")  # with the chat template trained on
{% if system_literal -%}
system = {{ system_literal }}  # data.system: first in every conversation, in training and in serving
chat = [{"role": "system", "content": system}, {"role": "user", "content": "your instruction"}]
{% else -%}
chat = [{"role": "user", "content": "your instruction"}]
{% endif -%}
ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
{%- endif %}
```
{% elif custom %}
From the Hub, once pushed to `<repo>`: `model = freestack.registry.hub.load_from_hub("<repo>",
revision="{{ version }}", trust_remote_code=True).model`, then as above.
{% else %}
From the Hub, once pushed to `<repo>`: `model = freestack.ml.models.FreestackNet.from_pretrained("<repo>",
revision="{{ version }}")`, then as above.
{% endif %}
"""


def _task_type(task: str, kind: str, lineage: dict[str, Any] | None = None) -> str:
    base = (lineage or {}).get("base") or {}
    if base.get("task"):  # a fine-tuned model: text-classification or image-classification
        return str(base["task"])
    if set(((lineage or {}).get("features") or {}).values()) == {"image"}:  # one image column
        return "image-classification" if task == "classification" else "image-to-text"
    return "tabular-regression" if task == "regression" else "tabular-classification"


def render_card(
    model: str, version: str, info: CardInfo, *, metrics: dict[str, Any], lineage: dict[str, Any]
) -> str:
    """The model card text: YAML front matter (``ModelCardData``, with model-index eval results and a
    ``freestack`` section) and a Markdown body."""
    from huggingface_hub import ModelCard, ModelCardData

    facts = _facts(model, info, metrics=metrics, lineage=lineage)
    task, kind, pipeline = facts["task"], facts["kind"], facts["pipeline"]
    freestack = {
        "model": model,
        "version": version,
        **{k: facts[k] for k in ("metrics", "window", "partitions", "train_config", "sweep", "gate")},
        "spec_hash": lineage.get("spec_hash"),
        "code_version": lineage.get("code_version"),
        "airflow": lineage.get("airflow") or None,
        "wandb": _wandb_ref(lineage.get("wandb")),
        **({"costs": lineage["costs"]} if lineage.get("costs") else {}),
        **info.extra,
    }
    hub = _pretrained_facts(lineage)
    data = ModelCardData(
        model_name=f"{model}-{version}",
        library_name=hub.get("library_name") or info.library_name,
        license=info.license,
        tags=sorted({"freestack", task, *hub.get("tags", []), *info.tags}),
        pipeline_tag=_task_type(task, kind, lineage),
        base_model=hub.get("base_model"),
        eval_results=_eval_results(facts, info, lineage) or None,
        freestack=json.loads(json.dumps(freestack, default=str)),  # plain YAML types only
    )
    intended = info.intended_use or (
        f"Predicting `{pipeline}` {task} targets for rows shaped like the training window's "
        "(same features, same units); a starting point for experiments and demos."
    )
    limits = info.limitations or (
        "Trained on a bounded time window of one pipeline's data: it inherits that window's biases and "
        "can drift as the data changes. Check the metrics on your own data before relying on it."
    )
    card = ModelCard.from_template(
        data,
        template_str=CARD_TEMPLATE,
        model=model,
        version=version,
        task=task,
        kind=kind,
        intended_use=intended,
        limitations=limits,
        metrics=facts["metrics"],
        partitions=facts["partitions"],
        window_text=_window_text(facts["window"]),
        gate_text=_gate_text(facts["gate"]),
        lineage=_Attr(lineage),
        airflow_text=_airflow_text(lineage.get("airflow")),
        wandb_text=_kv_text(_wandb_ref(lineage.get("wandb"))),
        sweep_text=_kv_text(facts["sweep"]),
        custom=lineage.get("module"),
        **_features(lineage, facts["train_config"]),
        pretrained=lineage.get("base"),
        adapter=hub.get("library_name") == "peft",
        auto_class=hub.get("auto_class"),
        base_folder=hub.get("base_folder"),
        system_literal=_system_literal(lineage),
        costs=cost_rows(lineage.get("costs") or {}),
    )
    return str(card)


#: the figures of a version's costs (lineage's ``costs``), as pages compare them: better lower, but for
#: the throughputs (``*_per_s``)
COST_FIGURES = (
    "model_mb",
    "trainable_params",
    "train.wall_s",
    "train.cpu_s",
    "train.gpu_s",
    "train.peak_memory_mb",
    "train.cost",
    "train.tokens",
    "serving.latency_p50_ms",
    "serving.latency_p99_ms",
    "serving.rows_per_s",
    "serving.ttft_p50_ms",
    "serving.ttft_p99_ms",
    "serving.itl_ms",
    "serving.tokens_per_s",
    "serving.peak_memory_mb",
    "serving.cpu_ms_per_request",
    "serving.cost_per_1k_requests",
)


def cost_figures(costs: dict[str, Any]) -> dict[str, float]:
    """``costs.model_mb``, ``costs.train.wall_s``, ...: the numbers of a version's costs, by name."""
    out = {}
    for name in COST_FIGURES:
        value: Any = costs
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            out[f"costs.{name}"] = float(value)
    return out


def cost_rows(costs: dict[str, Any]) -> list[tuple[str, str]]:
    """The card's costs table: the model's size, what its training took and cost
    (:class:`freestack.train.costs.TrainCosts`) and what serving it takes
    (:class:`freestack.serving.costs.ServingCosts`)."""
    rows = [("model files", f"{costs['model_mb']:,.3f} MB")] if "model_mb" in costs else []
    if costs.get("trainable_params") is not None:
        rows.append(("trainable parameters", f"{costs['trainable_params']:,}"))
    return rows + _train_rows(costs.get("train")) + serving_rows(costs.get("serving"))


def _train_rows(t: dict[str, Any] | None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if t:
        ranks = f" on {t['ranks']} ranks" if t["ranks"] > 1 else ""
        rows += [
            (
                "training time",
                f"{t['wall_s']:,.1f} s wall, {t['cpu_s']:,.1f} CPU-s, {t['gpu_s']:,.1f} GPU-s{ranks}",
            ),
            (
                "training memory",
                f"{t['peak_memory_mb']:,.0f} MB peak resident"
                + (f", {t['peak_gpu_memory_mb']:,.0f} MB GPU" if t.get("peak_gpu_memory_mb") else ""),
            ),
            ("training samples", f"{t['samples']:,} ({t['epochs']} epochs on {t['device']})"),
            *([("training tokens", f"{t['tokens']:,}")] if t.get("tokens") else []),
            ("training cost", f"{t['cost']:,.4f} {t['currency']} at the spec's prices"),
        ]
    return rows


def serving_rows(s: dict[str, Any] | None) -> list[tuple[str, str]]:
    """What serving the version takes, as its evaluation measured it (``costs.serving``)."""
    if not s:
        return []
    if "error" in s:
        return [("serving", f"not measured: {s['error']}")]
    how = f"{s['runtime']}, {s['workers']} worker{'s' if s['workers'] > 1 else ''}"
    rows = [
        (
            "serving latency",
            f"p50 {s['latency_p50_ms']:,.3f} ms, p99 {s['latency_p99_ms']:,.3f} ms ({how}, one request at a time)",
        )
    ]
    if s.get("ttft_p50_ms") is not None:
        rows.append(
            ("time to first token", f"p50 {s['ttft_p50_ms']:,.1f} ms, p99 {s['ttft_p99_ms']:,.1f} ms")
        )
    if s.get("itl_ms") is not None:
        rows.append(("inter-token latency", f"{s['itl_ms']:,.2f} ms"))
    if s.get("tokens_per_s") is not None:
        rows.append(
            (
                "generation throughput",
                f"{s['tokens_per_s']:,.1f} tokens/s ({s['concurrency']} requests at once)",
            )
        )
    else:
        rows.append(
            (
                "serving throughput",
                f"{s['rows_per_s']:,.0f} rows/s ({s['batch_rows']} rows a request, {s['concurrency']} at once)",
            )
        )
    return rows + [
        ("serving memory", f"{s['peak_memory_mb']:,.0f} MB peak, the server's processes together"),
        (
            "serving cost",
            f"{s['cpu_ms_per_request']:,.3f} CPU-ms a request; {s['cost_per_1k_requests']:,.6f} {s['currency']} per 1,000 requests",
        ),
        ("server start", f"{s['start_s']:,.1f} s to healthy"),
    ]


def _system_literal(lineage: dict[str, Any]) -> str | None:
    """A text-generation version's system prompt (``model.data.system``) as a Python string literal, for the
    recipe that builds the chat as training and serving did; None without one."""
    system = ((lineage.get("chat") or {}).get("data") or {}).get("system")
    return repr(system) if system else None


def _pretrained_facts(lineage: dict[str, Any]) -> dict[str, Any]:
    """The Hub metadata of a fine-tuned model: its base (a Hub repo, not a folder), the library that
    loads it (peft for an adapter) and the transformers class; nothing for freestack's own models."""
    base = lineage.get("base")
    if not base:
        return {}
    from freestack.ml.pretrained import local_folder

    peft = lineage.get("peft") or None
    adapter = peft is not None and not peft.get("merge")
    repo = str(base.get("repo") or "")
    hub_repo = "://" not in repo and not repo.startswith(("/", ".", "~")) and repo.count("/") <= 1
    auto = {
        "text-classification": "AutoModelForSequenceClassification",
        "text-generation": "AutoModelForCausalLM",
    }.get(str(base.get("task")), "AutoModelForImageClassification")
    return {
        "base_model": repo if hub_repo else None,
        "library_name": "peft" if adapter else "transformers",
        "auto_class": auto,
        "tags": ["lora"] if peft else [],
        "base_folder": None if hub_repo else (local_folder(repo) or repo),
    }


def _features(lineage: dict[str, Any], hyper: dict[str, Any]) -> dict[str, Any]:
    """The card's words on the inputs: the columns and their kinds, the image and text columns (the
    recipe decodes images from base64, and a text model's tokenizer length)."""
    kinds = lineage.get("features") or {}
    facts = {
        "features": None,
        "features_text": "",
        "feature_names": list(kinds),
        "n_features": len(kinds),
        "image_column": None,
        "text_column": None,
        "max_length": (hyper.get("model") or {}).get("max_length") or 128,
    }
    if all(k in ("int", "float", "bool") for k in kinds.values()):
        return facts
    text = ", ".join(f"`{name}` ({kind})" for name, kind in kinds.items())
    image = next((n for n, k in kinds.items() if k == "image"), None)
    texts = next((n for n, k in kinds.items() if k == "text"), None)
    return facts | {"features": kinds, "features_text": text, "image_column": image, "text_column": texts}


#: the ``model:`` settings each kind of model uses, beside type, task, name, features and hub_repo
MODEL_SETTINGS = {
    "mlp": ("hidden", "dropout"),
    "cnn": ("image_shape", "channels", "dropout"),
    "custom": ("module", "class", "init"),
    "huggingface": ("base", "revision", "peft"),
}


def model_settings(hyper: dict[str, Any], kind: str, kinds: dict[str, str]) -> dict[str, Any]:
    """The training settings with only the ``model:`` fields that apply to the model's kind (an MLP's
    widths are not a custom module's) and its inputs (``model.text`` only for a text column); settings
    left unset (None) are left out."""
    model = dict(hyper.get("model") or {})
    if not model:
        return hyper
    inputs = set(kinds.values())
    own = ["type", "task", "name", "features", "hub_repo", *MODEL_SETTINGS.get(kind, MODEL_SETTINGS["mlp"])]
    # a fine-tuned model has the base's tokenizer or image processor: only its length and the augmentations
    if kind == "huggingface":
        own += ["max_length"] if "text" in inputs else []
        if "image" in inputs and isinstance(model.get("image"), dict):
            model["image"] = {"augment": model["image"].get("augment") or []}
            own.append("image")
    else:
        own += [group for group in ("category", "text", "image") if group in inputs]
        own += ["channels"] if kind == "mlp" and "image" in inputs else []  # the image column's CNN
    return {**hyper, "model": {k: v for k, v in model.items() if k in own and v is not None}}


def _facts(model: str, info: CardInfo, *, metrics: dict[str, Any], lineage: dict[str, Any]) -> dict[str, Any]:
    """What the card says, each from ``info`` when the registering stage gave it, else from the lineage."""
    hyper = lineage.get("hyperparameters") or {}
    task = str(metrics.get("task") or hyper.get("model", {}).get("task") or "") or "classification"
    kind = _kind(lineage, hyper.get("model") or {})
    given = {k: v for k, v in vars(info).items() if v is not None}  # what the registering stage gave
    return {
        "task": task,
        "kind": kind,
        "pipeline": lineage.get("pipeline") or model,
        "metrics": metrics_summary(given.get("metrics", metrics)),
        "window": given.get("window", lineage.get("window") or {}),
        "partitions": [
            {k: p.get(k) for k in ("ds", "sha256", "rows", "uri") if p.get(k) is not None}
            for p in given.get("partitions", lineage.get("partitions") or [])
        ],
        "train_config": model_settings(given.get("train_config", hyper), kind, lineage.get("features") or {}),
        "sweep": given.get("sweep", lineage.get("sweep") or None),
        "gate": given.get("gate", lineage.get("gate") or None),
    }


def _kind(lineage: dict[str, Any], model: dict[str, Any]) -> str:
    """mlp, cnn (``type: auto`` with an ``image_shape``), custom or huggingface."""
    if lineage.get("module"):
        return "custom"
    if lineage.get("base"):
        return "huggingface"
    kind = str(model.get("kind") or model.get("type") or "auto")
    if kind == "auto":
        return "cnn" if model.get("image_shape") else "mlp"
    return kind


def _eval_results(facts: dict[str, Any], info: CardInfo, lineage: dict[str, Any]) -> list:
    """The model-index entries: one per metric, on the test split of the pipeline's lake window."""
    from huggingface_hub import EvalResult

    pipeline = facts["pipeline"]
    return [
        EvalResult(
            task_type=_task_type(facts["task"], facts["kind"], lineage),
            dataset_type=f"freestack/{pipeline}",
            dataset_name=info.dataset_name or f"{pipeline} lake window",
            dataset_split="test",
            metric_type=name.removeprefix("test_").removeprefix("best_val_"),
            metric_name=name,
            metric_value=value,
        )
        for name, value in facts["metrics"].items()
    ]


class _Attr(dict):
    def __getattr__(self, name: str) -> Any:
        return self.get(name, "n/a")


def _wandb_ref(w: Any) -> dict[str, Any] | None:
    if not isinstance(w, dict):
        return None
    keys = ("id", "run_id", "name", "project", "entity", "url", "mode", "sweep_id")
    return {k: w[k] for k in keys if w.get(k) is not None} or None


def _window_text(window: dict[str, Any]) -> str:
    if not window:
        return "not recorded"
    return ", ".join(f"{k} {v}" for k, v in window.items())


def _gate_text(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "No gate decision recorded for this version."
    decision = gate.get("decision") or ("promote" if gate.get("promote") or gate.get("passed") else None)
    head = f"**{decision}**" if decision else "recorded"
    return "\n".join([head] + [f"- {r}" for r in gate.get("reasons") or []])


#: where a version's recorded data interval comes from (lineage's ``airflow.data_interval_from``)
INTERVAL_FROM = {
    "airflow": "the run's data interval",
    "window": "the days of the lake window it trained on: Airflow gives a run triggered by hand or by an "
    "asset no data interval",
}


def _airflow_text(a: Any) -> str:
    """The Airflow run and task that wrote the version, then its data interval and where that comes from."""
    if not isinstance(a, dict) or not a:
        return _kv_text(a)
    text = _kv_text({k: v for k, v in a.items() if not k.startswith("data_interval") and v not in (None, "")})
    start, end = a.get("data_interval_start"), a.get("data_interval_end")
    if start and end:
        text += f"; data interval `{start}` to `{end}` ({INTERVAL_FROM.get(a.get('data_interval_from'), INTERVAL_FROM['airflow'])})"
    return text


def _kv_text(d: Any) -> str:
    if not d:
        return "n/a"
    if isinstance(d, dict):
        return ", ".join(f"{k} `{v}`" for k, v in d.items() if not isinstance(v, dict | list))
    return str(d)


__all__ = ["CARD_TEMPLATE", "CardInfo", "metrics_summary", "model_settings", "render_card"]
