"""The ``model:`` and ``train:`` blocks of a pipeline spec: what to train, and how.

    model: {type: auto, hidden: [128, 64], dropout: 0.1}
    train: {window_days: 30, epochs: 30, learning_rate: 3.0e-3, batch_size: 64}

The train DAG's Params form (and a sweep trial's parameters) override ``train:`` per run.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from freestack.judging.spec import Endpoint
from freestack.ml.contract import static_check
from freestack.ml.lm.rewards import reference_problem
from freestack.settings import checkout_dir
from freestack.specbase import SpecModel as _Model

InitValue = int | float | bool | str | list[int] | list[float] | list[str]


class CategorySpec(_Model):
    """How ``category`` columns are encoded (``model.category``): a vocabulary per column, fitted on the
    training split; values outside it (or missing) share the unknown bucket."""

    max_size: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="The most values a column's vocabulary keeps (the most frequent).",
    )
    min_count: int = Field(
        default=1, ge=1, description="A value is kept when the training split has it at least this often."
    )


class TextSpec(_Model):
    """How ``text`` columns are tokenized (``model.text``)."""

    tokenizer: str = Field(
        default="train",
        min_length=1,
        max_length=200,
        description="train: a WordPiece tokenizer trained on the training split (Hugging Face tokenizers); or a Hub repo id whose tokenizer.json is used.",
    )
    revision: str = Field(default="main", description="The Hub revision of a named tokenizer.")
    vocab_size: int = Field(
        default=8_000, ge=16, le=1_000_000, description="A trained tokenizer's vocabulary size."
    )
    max_length: int = Field(
        default=64,
        ge=1,
        le=8192,
        description="Tokens per text value (longer ones are cut, shorter ones padded).",
    )


class ImageSpec(_Model):
    """How the ``image`` column is decoded for the model (``model.image``)."""

    size: list[int] = Field(
        default_factory=lambda: [32, 32],
        min_length=2,
        max_length=2,
        description="[height, width] every image is resized to.",
    )
    channels: Literal[1, 3] = Field(default=3, description="3: RGB; 1: grey.")
    augment: list[Literal["flip", "shift"]] = Field(
        default_factory=list,
        description="Augmentations in training: flip (horizontal, half the images), shift (up to 1/8 of the size).",
    )

    @field_validator("size")
    @classmethod
    def _size(cls, v: list[int]) -> list[int]:
        if any(d < 4 or d > 1024 for d in v):
            raise ValueError(f"image size {v} must be between 4 and 1024 pixels per side")
        return v


class PeftSpec(_Model):
    """Parameter-efficient fine-tuning of a ``type: huggingface`` model (``model.peft``): LoRA adapters
    on the base's attention projections, the classification head trained in full."""

    method: Literal["lora"] = Field(default="lora", description="lora: low-rank adapters (the peft library).")
    r: int = Field(default=8, ge=1, le=1024, description="The adapters' rank (sweepable as peft.r).")
    alpha: float = Field(
        default=16,
        gt=0,
        description="LoRA's scaling numerator: updates are scaled by alpha / r (sweepable as peft.alpha).",
    )
    dropout: float = Field(
        default=0.05, ge=0, lt=1, description="Dropout on the adapters' input (sweepable as peft.dropout)."
    )
    target_modules: list[str] | None = Field(
        default=None,
        description="The modules adapted (names or name suffixes, e.g. [query, value]); default: peft's choice for the base's architecture, else its attention's query and value projections found by name (DistilBERT's q_lin/v_lin, ViT's q_proj/v_proj).",
    )
    merge: bool = Field(
        default=False,
        description="false: a version holds the adapter and names the base repo and commit; true: the adapter merged into full weights.",
    )


#: the pretrained tasks of ``type: huggingface`` and the feature kind each one reads
PRETRAINED_TASKS = {"text-classification": "text", "image-classification": "image", "text-generation": "text"}


class FunctionSpec(_Model):
    """A function a model may call: its name, what it does and its arguments' JSON schema."""

    name: str = Field(description="The function's name: 1 to 64 letters, digits, _, . or - (OpenAI's rule).")
    description: str | None = Field(default=None, max_length=2_000, description="What the function does.")
    parameters: dict[str, JsonValue] | None = Field(
        default=None, description="Its arguments as a JSON schema (an object's)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ValueError(
                f"{name!r}: a function's name is 1 to 64 letters, digits, _, . or - (OpenAI's rule)"
            )
        return name


class ToolSpec(_Model):
    """A tool, in OpenAI's form: ``{type: function, function: {name, description, parameters}}``."""

    type: Literal["function"] = "function"
    function: FunctionSpec


class ChatDataSpec(_Model):
    """Where a ``text-generation`` model's conversations are in the lake (``model.data``): a ``prompt`` and a
    ``response`` column (a user turn and the assistant's answer), or one ``messages`` column holding the
    chat as JSON (``[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]``; every
    assistant turn is learnt). ``system`` is a system prompt put first in every conversation.

    Preference pairs (``chosen`` and ``rejected``, TRL's preference formats) come as a prompt column and
    two answers; as ``messages`` (the chat so far, ending with a user turn) and two final assistant
    turns; or, with ``prompt: null``, as two whole chats sharing every turn but the last (TRL's implicit
    prompt), held as ``messages`` naming the chosen column. The chosen answer stands as the response."""

    prompt: str | None = Field(
        default="prompt", description="The column of the user's instruction (with response)."
    )
    response: str | None = Field(
        default="response", description="The column of the answer to learn (with prompt)."
    )
    messages: str | None = Field(
        default=None,
        description="Instead of prompt/response: the column of whole chats, as JSON lists of {role, content}; with chosen and rejected, the chat so far (ending with a user turn).",
    )
    system: str | None = Field(
        default=None,
        max_length=20_000,
        description="A system prompt put first in every conversation, in training and in serving.",
    )
    tools: list[ToolSpec] | None = Field(
        default=None,
        max_length=64,
        description="The functions every conversation may call (OpenAI's tool definitions), laid out by the chat template in training, evaluation, scoring and serving (on the OpenAI API a request's own tools); the chats' assistant turns may carry tool_calls and tool turns answer them.",
    )
    chosen: str | None = Field(
        default=None,
        description="train.objective dpo: the column of the preferred answer (default chosen): text, a JSON [{role: assistant, content}], or with prompt: null the whole chat; it is the response evaluation compares answers with.",
    )
    rejected: str | None = Field(
        default=None,
        description="train.objective dpo: the column of the worse answer to the same prompt (default rejected), in the chosen column's form.",
    )

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, data):
        """Preference pairs (``chosen`` or ``rejected`` given), or one conversation per row."""
        if not isinstance(data, dict):
            return data
        if data.get("chosen") is None and data.get("rejected") is None:
            return cls._one_form(data)
        return cls._preference_form(data)

    @staticmethod
    def _preference_form(data: dict) -> dict:
        """The pair's columns: the chosen one stands as the response, or (``prompt: null``, whole chats)
        as the messages, which is what evaluation compares answers with and serving takes."""
        chosen, rejected = data.get("chosen") or "chosen", data.get("rejected") or "rejected"
        if data.get("response") not in (None, chosen):
            raise ValueError(
                f"model.data: response {data['response']!r} and chosen {chosen!r} both name the preferred "
                "answer's column; give chosen only"
            )
        if chosen == rejected:
            raise ValueError(f"model.data: chosen and rejected are both {chosen!r}; name two columns")
        pair = {**data, "chosen": chosen, "rejected": rejected}
        if data.get("messages") is not None:
            if data.get("prompt") is not None:
                raise ValueError("model.data takes a prompt column or a messages column, not both")
            if data["messages"] in (chosen, rejected):
                raise ValueError(
                    f"model.data: messages {data['messages']!r} is the chat so far, chosen and rejected its "
                    "two last turns: name three columns (or prompt: null for whole chats in chosen and rejected)"
                )
            return {**pair, "prompt": None, "response": chosen}
        if "prompt" in data and data["prompt"] is None:  # whole chats: the prompt is implicit in them
            return {**pair, "messages": chosen, "response": None}
        return {**pair, "response": chosen}

    @staticmethod
    def _one_form(data: dict) -> dict:
        if data.get("messages") is not None:
            if data.get("prompt") is not None or data.get("response") is not None:
                raise ValueError(
                    "model.data takes either prompt and response columns or a messages column, not both"
                )
            return {**data, "prompt": None, "response": None}
        return data

    @model_validator(mode="after")
    def _both(self) -> ChatDataSpec:
        if self.messages is None and (not self.prompt or not self.response):
            raise ValueError("model.data needs both prompt and response columns (or a messages column)")
        return self

    @property
    def columns(self) -> list[str]:
        """Every column the conversations are read from (the rejected answer's last)."""
        if self.messages:
            own = [self.messages, *([self.response] if self.response else [])]
        else:
            own = [self.prompt or "", self.response or ""]
        return [*own, *([self.rejected] if self.rejected else [])]

    @property
    def preference(self) -> bool:
        """Whether the rows are preference pairs (a prompt, a chosen and a rejected answer)."""
        return self.rejected is not None

    @property
    def implicit_prompt(self) -> bool:
        """Whether the pairs are two whole chats sharing their prompt (``prompt: null``)."""
        return self.preference and self.messages == self.chosen


class GenerationEvalSpec(_Model):
    """How a ``text-generation`` model is judged on the held-out rows (``model.generation``): per-token loss
    and perplexity, and ``metric`` over greedy answers of at most ``max_new_tokens`` tokens."""

    metric: Literal["exact_match", "rouge_l"] = Field(
        default="exact_match",
        description="exact_match: the answer equals the reference (whitespace trimmed); rouge_l: ROUGE-L F1 (Google's rouge-score package).",
    )
    max_new_tokens: int = Field(
        default=32, ge=1, le=4096, description="Tokens generated per answer at evaluation (greedy)."
    )
    max_rows: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="The most test rows answered by generation (perplexity uses them all).",
    )
    batch_size: int = Field(default=16, ge=1, le=1024, description="Prompts per generate call at evaluation.")
    samples: int = Field(
        default=8, ge=0, le=100, description="Sample prompts shown in the report with both models' answers."
    )


class ModelSpec(_Model):
    """What to train (``model:``). ``type: auto`` picks a CNN when ``image_shape`` is given; ``type:
    custom`` trains a module the user wrote (``module``, ``class``, ``init``; the contract is
    :mod:`freestack.ml.contract`)."""

    name: str | None = Field(default=None, description="registry name; default: the pipeline name")
    type: Literal["auto", "mlp", "cnn", "custom", "huggingface"] = Field(
        default="auto",
        description="auto: a CNN when image_shape is given, else an MLP; custom: your own torch.nn.Module (module, class, init); huggingface: fine-tune a pretrained transformers model (base, task).",
    )
    module: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="type custom: a .py file of the project (relative to the checkout, e.g. include/models/my_net.py) or a dotted import path.",
    )
    class_: str | None = Field(
        default=None,
        alias="class",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="type custom: the torch.nn.Module class in module.",
    )
    init: dict[str, InitValue] = Field(
        default_factory=dict,
        description="type custom: keyword arguments of the class's constructor, after the inputs (sweepable as model.init.<name>).",
    )
    task: Literal[
        "auto",
        "classification",
        "regression",
        "text-classification",
        "image-classification",
        "text-generation",
    ] = Field(
        default="auto",
        description="auto: classification for string/bool targets and ints with few values, else regression; type huggingface: text-classification or image-classification (auto: from the feature column's kind), or text-generation (instruction-tuning a causal LM on model.data's conversations).",
    )
    base: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="type huggingface: the pretrained model, a Hub repo id (org/name) or a folder of a saved model: a path (read as the file:// URI of its folder), or a file://, s3:// or data:// URI; lineage records the URI and the sha256 of its config and weights. A text-generation model may start from a registered version of this storage root: registry:<model>@<alias> or registry:<model>:<version> (full weights; a LoRA version merged).",
    )
    revision: str = Field(
        default="main",
        min_length=1,
        max_length=200,
        description="type huggingface: the Hub revision of base (a branch, tag or commit); resolved to its commit sha, recorded in lineage.",
    )
    max_length: int = Field(
        default=128,
        ge=8,
        le=8192,
        description="type huggingface, text: tokens per text (longer ones are cut).",
    )
    peft: PeftSpec | None = Field(
        default=None,
        description="type huggingface: LoRA adapters instead of full fine-tuning (omit for full).",
    )
    data: ChatDataSpec | None = Field(
        default=None,
        description="task text-generation: the columns of the conversations (default: prompt and response).",
    )
    chat_template: str | None = Field(
        default=None,
        min_length=1,
        max_length=100_000,
        description="task text-generation: a Jinja chat template (or a .jinja file of the project) used instead of the base tokenizer's; needed when the base has none.",
    )
    packing: bool = Field(
        default=False,
        description="task text-generation: pack several conversations into each max_length row (positions restart per conversation, so attention stays within it).",
    )
    generation: GenerationEvalSpec = Field(
        default_factory=GenerationEvalSpec,
        description="task text-generation: how the evaluation generates and scores answers.",
    )
    features: list[str] | None = Field(default=None, description="default: every numeric/bool column")
    image_shape: list[int] | None = Field(
        default=None,
        min_length=2,
        max_length=3,
        description="The features as an image: [height, width] or [channels, height, width].",
    )
    hidden: list[int] = Field(default_factory=lambda: [128, 64], description="The MLP's hidden layer widths.")
    channels: list[int] = Field(
        default_factory=lambda: [16, 32],
        description="The CNN's convolution channels (also the image column's encoder).",
    )
    category: CategorySpec = Field(
        default_factory=CategorySpec, description="How category columns are encoded."
    )
    text: TextSpec = Field(default_factory=TextSpec, description="How text columns are tokenized.")
    image: ImageSpec = Field(default_factory=ImageSpec, description="How the image column is decoded.")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout probability.")
    hub_repo: str | None = Field(
        default=None, description="Hugging Face Hub repo (org/name) registered versions are pushed to"
    )

    @field_validator("image_shape")
    @classmethod
    def _shape(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(d < 1 for d in v):
            raise ValueError(f"image_shape {v} must have positive sizes")
        return v

    @model_validator(mode="after")
    def _cnn(self) -> ModelSpec:
        if self.type == "cnn" and self.image_shape is None:
            raise ValueError("type: cnn needs image_shape (e.g. [8, 8] or [channels, height, width])")
        return self

    @model_validator(mode="after")
    def _pretrained(self) -> ModelSpec:
        """A pretrained model names its base; its tasks and settings belong to it alone."""
        if self.task != "text-generation" and (self.data is not None or self.chat_template or self.packing):
            raise ValueError("data, chat_template and packing are for task: text-generation")
        if self.type != "huggingface":
            if self.base or self.peft is not None or self.task in PRETRAINED_TASKS:
                raise ValueError(
                    "base, peft and the tasks text-classification / image-classification are for type: huggingface "
                    "(and text-generation)"
                )
            return self
        if not self.base:
            raise ValueError(
                "type: huggingface needs base: a Hub repo id (e.g. distilbert/distilbert-base-uncased) or a "
                "folder of a saved model (a path, or a file://, s3:// or data:// URI)"
            )
        if self.task == "regression" or self.task == "classification":
            raise ValueError(
                f"type: huggingface takes task text-classification or image-classification (or auto), or text-generation, not {self.task!r}"
            )
        return self

    @property
    def chat(self) -> ChatDataSpec:
        """``model.data``, or its defaults (prompt and response columns)."""
        return self.data or ChatDataSpec()

    @property
    def generative(self) -> bool:
        """Whether the model is an instruction-tuned causal LM (``task: text-generation``)."""
        return self.type == "huggingface" and self.task == "text-generation"

    @property
    def pretrained_task(self) -> str | None:
        """``type: huggingface``'s task, when the spec names it (auto: the feature column decides)."""
        return self.task if self.task in PRETRAINED_TASKS else None

    @model_validator(mode="after")
    def _custom(self) -> ModelSpec:
        """A custom model names its module and class (the file is read, not run: see the contract)."""
        if self.type != "custom":
            if self.module or self.class_ or self.init:
                raise ValueError("module, class and init are for type: custom")
            return self
        if not self.module or not self.class_:
            raise ValueError(
                "type: custom needs module (a .py file of the project, or a dotted import path) "
                "and class (the torch.nn.Module class in it)"
            )
        problem = static_check(self.module, self.class_, checkout_dir())
        if problem:
            raise ValueError(problem)
        return self


class DataSpec(_Model):
    """How a training run reads its window (``train.data``): into memory, or streamed from a local spool
    (docs/stages/train.md#windows-larger-than-memory)."""

    mode: Literal["auto", "memory", "stream"] = Field(
        default="auto",
        description="auto: stream when the window's estimated in-memory size is over memory_limit_mb; memory: load it whole (fastest); stream: read it in row groups through a shuffle buffer.",
    )
    memory_limit_mb: int | None = Field(
        default=None,
        ge=16,
        description="auto: the most MiB a window may take in memory (3x its uncompressed Parquet size) before it is streamed; default a quarter of the machine's (or container's) memory.",
    )
    shuffle_buffer: int = Field(
        default=65_536,
        ge=1,
        le=10_000_000,
        description="stream: rows in the shuffle buffer (fewer when they would take over 256 MiB encoded).",
    )
    chunk_rows: int = Field(
        default=16_384,
        ge=64,
        le=1_000_000,
        description="stream: the most rows read at once (a row group of the spool; also at most 64 MiB).",
    )


class DistributedSpec(_Model):
    """Training across processes and machines on ``torch.distributed`` (``train.distributed``): data-parallel
    ranks (DDP), launched by torch's elastic launcher (what ``torchrun`` runs) in the train task, one task per
    node, or as a Kubeflow ``PyTorchJob`` (docs/operating/distributed.md)."""

    processes_per_node: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Ranks on each node: CPU processes, or one per GPU (at most the node's GPU count).",
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Machines; more than 1: the ranks of every node meet at rendezvous (c10d).",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto", description="auto: nccl on CUDA, gloo on the CPU."
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="ddp: every rank holds the model, gradients are averaged (DistributedDataParallel); fsdp: each rank holds a shard of the parameters, gradients and optimizer state (FSDP2, fully_shard), for a model too large for one device.",
    )
    launcher: Literal["local", "kubernetes"] = Field(
        default="local",
        description="local: the train task launches its node's ranks (nodes > 1: one train task per node, on workers that can reach each other); kubernetes: the train task submits a PyTorchJob and follows it.",
    )
    rendezvous: str = Field(
        default="127.0.0.1:29400",
        pattern=r"^[A-Za-z0-9_.-]+:[0-9]{1,5}$",
        description="host:port of the c10d rendezvous, on the machine that runs node 0 (launcher local).",
    )
    timeout_seconds: float = Field(
        default=300,
        ge=10,
        le=86_400,
        description="Bounds the rendezvous and every collective: a rank that died or hangs fails the attempt after this long at most, and the retry resumes from the last checkpoint.",
    )
    threads_per_process: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="CPU threads of each rank; default the train task's threads (FREESTACK_TASK_THREADS, else the worker's share of the cores) divided among the node's ranks, at least 1.",
    )
    find_unused_parameters: bool = Field(
        default=False,
        description="DDP's find_unused_parameters: true for a model whose forward leaves some trainable parameters out.",
    )
    pool: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,256}$",
        description="The Airflow pool of the train tasks when nodes > 1 (the gang: it needs a slot per node at once).",
    )
    host_queue: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="nodes > 1, launcher local: the executor queue of node 0's task (train), one that only the worker at the rendezvous address consumes; default train.queue.",
    )
    image: str = Field(
        default="freestack/airflow:0.1.0",
        min_length=1,
        max_length=500,
        description="launcher kubernetes: the image of the ranks' pods (the project's Airflow image, docker/Dockerfile, holds freestack and torch).",
    )
    namespace: str = Field(
        default="default",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="launcher kubernetes: the namespace of the PyTorchJob.",
    )
    gpus_per_node: int = Field(
        default=0, ge=0, le=64, description="launcher kubernetes: nvidia.com/gpu limit of each node's pod."
    )
    kubernetes_conn_id: str = Field(
        default="kubernetes_default",
        min_length=1,
        max_length=250,
        description="launcher kubernetes: the Airflow connection to the cluster (cncf.kubernetes provider's kubernetes type).",
    )
    service_account: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="launcher kubernetes: the pods' service account (e.g. one bound to an IAM role for S3).",
    )

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.nodes

    @model_validator(mode="after")
    def _launcher(self) -> DistributedSpec:
        if (
            self.launcher == "kubernetes"
            and self.gpus_per_node
            and self.processes_per_node > self.gpus_per_node
        ):
            raise ValueError(
                f"processes_per_node {self.processes_per_node} is more than gpus_per_node {self.gpus_per_node}: "
                "each GPU rank needs its own GPU"
            )
        return self


class DpoSpec(_Model):
    """Direct preference optimisation (``train.dpo``, with ``train.objective: dpo``): the policy is pushed
    to prefer each pair's chosen answer over its rejected one, measured against the starting model (the
    reference), whose log-probabilities are computed once before training."""

    beta: float = Field(
        default=0.1,
        gt=0,
        le=100,
        description="How far the model may move from the reference: the rewards are beta x the log-probability ratios (TRL's beta).",
    )
    loss: Literal["sigmoid"] = Field(
        default="sigmoid",
        description="sigmoid: DPO's loss, -log sigmoid(beta x (chosen log-ratio - rejected log-ratio)).",
    )
    sft_weight: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Adds this x the chosen answers' mean token loss (TRL's loss_type [sigmoid, sft] with loss_weights [1, sft_weight]; RPO), which keeps the chosen answers likely while the rejected ones are pushed down; 0: DPO alone.",
    )


class RewardSpec(_Model):
    """One reward function of a GRPO training (``train.grpo.rewards[]``), with its weight."""

    # ``schema`` is written as is; a dumped spec (a run's effective spec) holds it as ``schema_``
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    function: str = Field(
        description="exact_match (against column), regex (pattern), json_schema (schema), length (max_tokens), judge (gate.judge's endpoint, a pointwise score 1-5 read as 0-1, column its reference), or a function of your own: path/to/file.py:function or package.module:function, called as function(prompt=, completion=, **row) and returning a number.",
    )
    weight: float = Field(default=1.0, description="Its weight in the completion's reward (a weighted sum).")
    name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_]{1,40}$",
        description="What its metrics are called (reward_<name>); default: the function's name.",
    )
    column: str | None = Field(
        default=None,
        description="exact_match, judge: the reference answer's column (default model.data.response).",
    )
    pattern: str | None = Field(
        default=None, description="regex: the pattern the whole completion must match (re.fullmatch, DOTALL)."
    )
    schema_: dict[str, JsonValue] | None = Field(
        default=None,
        alias="schema",
        description="json_schema: the JSON schema the completion must validate against.",
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="length: completions longer than this many tokens are penalised."
    )

    @model_validator(mode="after")
    def _settings(self) -> RewardSpec:
        needs = {"regex": "pattern", "json_schema": "schema_", "length": "max_tokens"}
        if self.function in needs and getattr(self, needs[self.function]) is None:
            raise ValueError(f"reward {self.function} needs {needs[self.function].rstrip('_')}")
        own = self.function not in ("exact_match", "judge", *needs)
        if own and not re.fullmatch(r"[^:\s]+:[A-Za-z_]\w*", self.function):
            raise ValueError(
                f"{self.function!r} is not a reward function: give exact_match, regex, json_schema, length, "
                "judge, or path/to/file.py:function (or package.module:function) for one of your own"
            )
        problem = reference_problem(self.function, checkout_dir()) if own else None
        if problem:
            raise ValueError(problem)
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from None
        return self

    @property
    def label(self) -> str:
        """The name its metrics carry."""
        return self.name or re.sub(r"\W", "_", self.function.rpartition(":")[2])


class RolloutServerSpec(Endpoint):
    """``train.grpo.server``: the deployment that samples the rollouts (``rollouts: server``): a freestack
    deployment of the model's base on the mlserver runtime with ``deploy.generation.runtime_adapters`` (or a
    vLLM server with runtime LoRA updating). Each step the LoRA adapter being trained is written to
    ``adapter_dir`` and loaded there by name; the prompts are sent as token ids to its ``/v1/completions``."""

    adapter_dir: str | None = Field(
        default=None,
        max_length=4096,
        description="A folder both the trainer and the server read (the same machine, or a shared mount); "
        "default: a temporary folder of the trainer's machine, for a server on the same machine.",
    )


class GrpoSpec(_Model):
    """Group relative policy optimisation (``train.grpo``, with ``train.objective: grpo``), as TRL's
    ``GRPOTrainer`` defines it: ``num_generations`` completions are sampled per prompt, scored by the
    rewards, and each one's advantage is its reward against its group's; the policy is pushed towards the
    better ones by the clipped objective, with a KL term to the starting model (``beta``)."""

    rewards: list[RewardSpec] = Field(
        min_length=1, max_length=16, description="The reward functions, each with its weight."
    )
    num_generations: int = Field(
        default=4,
        ge=2,
        le=64,
        description="Completions sampled per prompt (the group; TRL's num_generations).",
    )
    max_completion_length: int = Field(
        default=64, ge=1, le=8192, description="The most tokens a sampled completion has."
    )
    temperature: float = Field(
        default=1.0, gt=0, le=4, description="The sampling temperature of the rollouts."
    )
    top_p: float = Field(default=1.0, gt=0, le=1, description="The rollouts' nucleus sampling.")
    beta: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="The KL term's weight (TRL's beta); 0 (TRL's default): no reference model is needed.",
    )
    epsilon: float = Field(default=0.2, gt=0, lt=1, description="The ratio's clipping range (TRL's epsilon).")
    loss: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        default="dapo",
        description="How token losses are averaged (TRL's loss_type): grpo per completion then over them; bnpo and dapo over the batch's tokens; dr_grpo over completions x max_completion_length.",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default="group",
        description="Advantages divided by the standard deviation of the group's rewards, of the batch's, or not at all (TRL's scale_rewards).",
    )
    rollouts: Literal["auto", "continuous", "padded", "server"] = Field(
        default="auto",
        description="What samples the completions, on the model as it is at each step: continuous: freestack's continuous-batching engine in the training process (transformers' paged attention, every prompt's answers scheduled together; TRL's use_transformers_paged); padded: generate on the left-padded batch; auto: padded on a CPU (where it is faster), continuous on an accelerator; server: the deployment train.grpo.server names, the LoRA adapter pushed to it each step.",
    )
    server: RolloutServerSpec | None = Field(
        default=None,
        description="rollouts: server: the deployment that samples (url, model, api_key, adapter_dir).",
    )

    @property
    def reward_labels(self) -> list[str]:
        return [r.label for r in self.rewards]

    @model_validator(mode="after")
    def _names(self) -> GrpoSpec:
        labels = self.reward_labels
        if len(set(labels)) != len(labels):
            raise ValueError(f"two rewards are called the same ({labels}); give each a name")
        if (self.rollouts == "server") != (self.server is not None):
            raise ValueError(
                "train.grpo.server names the deployment that samples, and goes with rollouts: server only"
            )
        return self


class TrainSpec(_Model):
    """Training defaults (``train:``); the train DAG's Params form overrides them per run."""

    schedule: str | None = Field(default=None, description="a cron; default: run on each lake update")
    ingest_wait_minutes: float = Field(
        default=120,
        ge=0,
        le=7 * 24 * 60,
        description="A training run first waits this long at most for the pipeline's queued and running ingest "
        "runs (a backfill) to finish, then fixes its window; 0: do not wait.",
    )
    ingest_poke_seconds: float = Field(
        default=30,
        ge=1,
        le=3600,
        description="How often the window task looks again while ingest runs are active.",
    )
    window_days: int = Field(
        default=30, ge=1, le=3660, description="Days of lake partitions up to the run's interval to train on."
    )
    epochs: int = Field(
        default=30, ge=1, le=10_000, description="The most epochs (early stopping may end sooner)."
    )
    learning_rate: float = Field(default=3e-3, gt=0, le=10, description="AdamW's peak learning rate.")
    batch_size: int = Field(default=64, ge=1, le=1_000_000, description="Rows per step.")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW's weight decay.")
    patience: int = Field(
        default=5, ge=1, description="Epochs without a better validation metric before stopping."
    )
    grad_accumulation: int = Field(
        default=1,
        ge=1,
        le=4096,
        description="Batches whose gradients are summed before each optimizer step (an effective batch of batch_size x grad_accumulation).",
    )
    grad_clip: float | None = Field(
        default=1.0, gt=0, description="The gradient norm is clipped to this (null: no clipping)."
    )
    scheduler: Literal["cosine", "constant", "onecycle"] = Field(
        default="cosine", description="The learning-rate schedule (with warmup_epochs of linear warm-up)."
    )
    warmup_epochs: int = Field(default=1, ge=0, description="Epochs of linear warm-up.")
    seed: int = Field(default=42, description="The seed: the same seed gives the same metrics.")
    val_fraction: float = Field(
        default=0.15, gt=0, lt=0.5, description="Share of row keys in the validation split."
    )
    test_fraction: float = Field(
        default=0.15, gt=0, lt=0.5, description="Share of row keys in the test split."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA (with mixed precision) when present, else the CPU."
    )
    objective: Literal["sft", "dpo", "grpo"] = Field(
        default="sft",
        description="model.task text-generation: sft, the next-token loss on the answers (instruction tuning); dpo, preference tuning on model.data's chosen and rejected answers (train.dpo); grpo, reinforcement on rewards of sampled answers (train.grpo).",
    )
    dpo: DpoSpec = Field(default_factory=DpoSpec, description="train.objective dpo: its settings.")
    grpo: GrpoSpec | None = Field(default=None, description="train.objective grpo: its rewards and settings.")
    data: DataSpec = Field(
        default_factory=DataSpec, description="How the window is read: in memory or streamed."
    )
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec,
        description="Ranks and nodes of a data-parallel training on torch.distributed (default: one process).",
    )
    # the executor queue of the training tasks (``train`` and the sweep's ``agent``s): ``gpu`` sends them
    # to GPU workers (a Celery worker consuming ``gpu``, or the Helm values' GPU pod template)
    queue: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The executor queue of train and the sweep's agents (gpu: GPU workers).",
    )
    cache: bool = Field(
        default=False,
        description="Reuse the version an earlier run trained on the same partitions, settings, base and code "
        "(freestack.train.reuse); off: every run asked for trains.",
    )


__all__ = [
    "PRETRAINED_TASKS",
    "CategorySpec",
    "DataSpec",
    "DistributedSpec",
    "DpoSpec",
    "GrpoSpec",
    "RolloutServerSpec",
    "ImageSpec",
    "ModelSpec",
    "PeftSpec",
    "RewardSpec",
    "TextSpec",
    "TrainSpec",
]
