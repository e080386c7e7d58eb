"""freestack's MLServer runtime: one registered model version behind the Open Inference Protocol (V2).

MLServer (1.7.1, Apache-2.0, in ``.venv-mlserver``) loads :class:`FreestackRuntime` from a
``model-settings.json`` whose ``parameters.uri`` is the registry version (or an alias of it) and whose
``parameters.extra`` holds ``max_batch_rows``, ``batch_rows``, ``batch_wait_ms``, ``request_log_uri``,
``request_log_rate``, ``deployment`` and ``torch_threads`` (:func:`freestack_server.mlserver.server.folder_of`
writes it). :class:`ServedModel` does the
work; this class maps the protocol onto it:

- **Inputs.** A model of numbers takes one tensor ``input`` ``[rows, features]`` (any numeric datatype),
  or one ``[rows]`` tensor per feature, named by it. A model of raw
  values (category, text, image columns) takes one tensor per column, named by it: ``BYTES`` for
  text, categories and images (the image file's bytes, raw or base64), numbers for numeric columns.
- **Outputs.** Classification: ``probabilities`` ``FP32 [rows, classes]`` (the classes in the
  metadata's ``parameters``) and ``label`` ``BYTES [rows]``; regression: ``prediction`` ``FP32 [rows]``.
- **Ids.** The answer's ``id`` is the request's own id when it has one, else a fresh one: the request
  log keys rows by it, and ``feedback`` (below) joins true labels to it.
- **Checks.** Every input is checked against the metadata before the model sees it: its name, a shape
  with no negative dimension, an element count that is the data's, and the shape the model takes
  (``[rows, features]``, not a flat ``[features]``); a refusal names the input, the shape given and the
  shape taken.
- **Errors.** What the model cannot answer is an :class:`mlserver.errors.MLServerError` with its HTTP
  status (400, 413, 503): MLServer answers it in the V2 error format, ``{"error": "..."}``.
- **Batching.** Concurrent requests of a model of numbers share one forward pass (:class:`Batcher`:
  the rows of every request checked by the time the event loop is idle, or after ``batch_wait_ms``,
  up to ``batch_rows``). Each request is checked on its own first, so a bad one is refused alone and
  the others are answered, each under its own id. MLServer's own adaptive batching (``max_batch_size``)
  merges the requests before the model sees them: one bad request failed its whole batch, and the
  merged request has lost the ids the request log and feedback join on; it stays off.
- **Ground truth.** A request with ``parameters.feedback_for: <request id>`` and one input ``truth``
  (one label a row) is not a prediction: its labels go to the request log beside that request.
- **Text generation.** A text-generation model takes and answers the tensors MLServer's own Hugging Face
  runtime (``mlserver-huggingface``, task ``text-generation``) does, so its clients need nothing else:
  the prompts in one ``BYTES`` input ``args`` (or ``array_inputs`` / ``text_inputs``; content type ``str``,
  one prompt a value; ``hg_jsonlist``, a conversation of ``{"role", "content"}`` messages, or one JSON
  list of messages a value), the generation parameters as more inputs named by them (``max_new_tokens``,
  ``temperature``, ``top_p``, ``stop``; content type ``raw``) or in the request's ``parameters``; the
  answer one ``BYTES`` output ``output`` ``[prompts, 1]`` of content type ``hg_jsonlist``, a JSON object a
  prompt: ``{"generated_text", "finish_reason", "prompt_tokens", "completion_tokens", "truncated"}``.
  Requests are answered by continuous batching (:mod:`freestack.ml.lm.engine`): each prompt joins the
  running batch between two decoding steps. The same version answers the OpenAI API on the same port
  (:mod:`freestack_server.mlserver.openai`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import time
from dataclasses import replace
from typing import Any

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataTensor,
    Parameters,
    RequestInput,
    ResponseOutput,
)

from freestack.ml.lm.engine import Busy, Engine, EngineError
from freestack.ml.lm.prompts import eos_ids, load_tokenizer
from freestack_server.core.config import ServerConfig
from freestack_server.core.errors import PayloadError
from freestack_server.core.generation import ALIASES, FLAGS, PARAMETERS, Generated, Generator, Prompts
from freestack_server.core.generation import describe as describe_generation
from freestack_server.core.model import ServedModel
from freestack_server.mlserver import metrics as oip_metrics
from freestack_server.mlserver.adapters import Adapters, NotServed
from freestack_server.mlserver.binary import DTYPES
from freestack_server.mlserver.openai import OpenAIRoutes, Served
from freestack_server.mlserver.server import AT_STOP, ENGINE_DIED
from freestack_server.mlserver.unbatched import UnbatchedBound

log = logging.getLogger("freestack.serving")
#: the name of a model of numbers' one tensor [rows, features]
MATRIX = "input"
NUMERIC = tuple(DTYPES)  # the V2 numeric datatypes


class Batcher:
    """One forward pass for the rows of every request waiting: a request's rows join the next pass,
    which runs once the event loop has nothing else ready (``wait_s`` 0: no added latency) or
    ``wait_s`` after the first, or at once when ``max_rows`` rows wait."""

    def __init__(self, forward, max_rows: int, wait_s: float):
        self.forward, self.max_rows, self.wait_s = forward, max_rows, wait_s
        self.waiting: list[tuple[np.ndarray, asyncio.Future]] = []
        self.rows = 0
        self._handle: asyncio.Handle | None = None

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((x, future))
        self.rows += len(x)
        if self.rows >= self.max_rows:
            self.run()
        elif self._handle is None:
            self._handle = (
                loop.call_later(self.wait_s, self.run) if self.wait_s > 0 else loop.call_soon(self.run)
            )
        return await future

    def run(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        waiting, self.waiting, self.rows = self.waiting, [], 0
        if not waiting:
            return
        try:
            out = self.forward(np.concatenate([x for x, _ in waiting]) if len(waiting) > 1 else waiting[0][0])
        except Exception as exc:  # noqa: BLE001 - every waiting request learns what failed
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for x, future in waiting:
            if not future.done():  # a client that left is not answered
                future.set_result(out[start : start + len(x)])
            start += len(x)


class FreestackRuntime(OpenAIRoutes, MLModel):
    """A registry version served over V2 by MLServer (and a text-generation one over the OpenAI API too:
    :class:`OpenAIRoutes`, its custom handlers)."""

    core: ServedModel

    async def load(self) -> bool:
        params = self.settings.parameters
        extra = dict((params.extra if params else None) or {})
        uri = (params.uri if params else None) or ""
        self.core = ServedModel(
            model_uri=uri,
            max_batch_rows=int(extra.get("max_batch_rows", 0)),
            request_log_uri=str(extra.get("request_log_uri", "")),
            request_log_rate=float(extra.get("request_log_rate", -1.0)),
            torch_threads=int(extra.get("torch_threads", 0)),
            deployment=str(extra.get("deployment", "")),
            generation=extra.get("generation"),
        )
        self.core.load()
        wait_s, rows = float(extra.get("batch_wait_ms", 0)) / 1000, int(extra.get("batch_rows", 32))
        self.batcher = None
        if self.core.generator is not None:  # continuous batching, in the engine's thread
            self.served = self._start_engine(self.core.generator)
        elif rows > 1:
            self.batcher = Batcher(self.core.forward, rows, wait_s)
        return True

    def _start_engine(self, generator: Generator) -> Served:
        """The version's generation engine (:mod:`freestack.ml.lm.engine`), which V2 and the OpenAI API use."""
        generator.check_tokenizer = load_tokenizer(self.core.cache_dir)  # the event loop's own
        # the end-of-turn tokens the model can write (one the tokenizer added past its rows never comes)
        known = eos_ids(generator.check_tokenizer, generator.generation_config)
        eos = [t for t in known if t < generator.rows] or known
        bounds = generator.bounds
        engine = Engine(
            generator.lm,
            generator.check_tokenizer,
            eos=eos,
            max_requests=bounds.max_requests,
            max_running_per_request=bounds.max_running_per_request,
            kv_cache_tokens=bounds.kv_cache_tokens,
            max_batch_tokens=bounds.max_batch_tokens,
        )
        engine.start()
        AT_STOP.append(engine.stop)  # its loop thread ends with the server
        self._watch = asyncio.ensure_future(engine.watch(self._engine_died))
        adapters = Adapters(self.core, engine, serves_file=ServerConfig().serves_file)
        unbatched = UnbatchedBound(bounds.max_unbatched_requests, bounds.max_unbatched_per_client)
        return Served(self.name, self.core, generator, engine, adapters, unbatched)

    def _engine_died(self, why: str) -> None:
        """The engine's loop died (its requests were failed with the error): not ready from now on, so
        readiness and ``serve status`` say so, and the server stops, as on SIGTERM, to be started again
        with a new engine by its supervisor (or Kubernetes)."""
        self.ready = False
        log.error(
            "%s is not ready: its generation engine died (%s); the server stops to restart", self.name, why
        )
        ENGINE_DIED.append(why)
        os.kill(os.getpid(), signal.SIGTERM)

    async def unload(self) -> bool:
        if self.served is not None:
            self.served.engine.stop()
        self.served = None
        return True

    # -- metadata -------------------------------------------------------------------------------------
    async def metadata(self) -> MetadataModelResponse:
        core, info = self.core, self.core.describe()
        generation = core.generator is not None  # the task is "generation"; its bounds are parameters too
        inputs, outputs = _generation_metadata_tensors() if generation else _metadata_tensors(core)
        extra = describe_generation(core.generator.bounds, info) if generation else {}
        return MetadataModelResponse(
            name=self.name,
            versions=[core.version],
            platform="freestack",
            inputs=inputs,
            outputs=outputs,
            parameters=Parameters(
                task=core.task,
                model_uri=core.model_uri,
                model=info["model"],
                max_batch_rows=core.max_batch_rows,
                **extra,
            ),
        )

    # -- predict --------------------------------------------------------------------------------------
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        try:
            return await self._predict(payload)
        except PayloadError as exc:  # what the model cannot answer: MLServer answers it with its status
            raise MLServerError(exc.message, status_code=exc.status) from None

    async def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        feedback_for = payload.parameters and getattr(payload.parameters, "feedback_for", None)
        if feedback_for:
            return self._feedback(str(feedback_for), payload)
        if self.served is not None:
            return await self._generate(self.served, payload)
        started = time.perf_counter()
        raw, x = self.core.prepare(*self._rows(payload.inputs))
        batched = self.batcher is not None and isinstance(x, np.ndarray)
        out = await self.batcher(x) if batched else self.core.forward(x)
        p = self.core.answer(raw, out, payload.id or None, started)
        oip_metrics.record(self.core.version, "v2", time.perf_counter() - started, len(p.out))
        return self._response(p.request_id, self._outputs(p.out, p.idx))

    def _response(self, request_id: str, outputs: list[ResponseOutput], **kwargs: Any) -> InferenceResponse:
        """The answer to request ``request_id``, from this model's name and (unless given) its version."""
        kwargs.setdefault("model_version", self.core.version)
        return InferenceResponse(id=request_id, model_name=self.name, outputs=outputs, **kwargs)

    def _outputs(self, out: np.ndarray, idx: np.ndarray | None) -> list[ResponseOutput]:
        if self.core.task != "classification":
            return [
                NumpyCodec.encode_output(
                    "prediction", np.ascontiguousarray(out.reshape(-1), dtype=np.float32)
                )
            ]
        names = self.core.output_names
        labels = [names[i] for i in idx.tolist()]
        return [
            NumpyCodec.encode_output("probabilities", np.ascontiguousarray(out, dtype=np.float32)),
            ResponseOutput(name="label", datatype="BYTES", shape=[len(labels)], data=labels),
        ]

    def _rows(self, inputs: list[RequestInput]) -> tuple[Any, list[str] | None]:
        """The request's rows as :class:`ServedModel` takes them: a matrix (and its column names), or
        records of raw values."""
        if not inputs:
            raise PayloadError(
                "the request has no inputs: send one tensor [rows, features] or one tensor per feature"
            )
        columns = self.core.raw_columns()
        if columns is None and len(inputs) == 1 and inputs[0].name not in self.core.features:
            return _matrix(inputs[0], self.core.features), None
        by_name = {i.name: i for i in inputs}
        if len(by_name) != len(inputs):
            raise PayloadError("two inputs share a name: send one tensor per feature")
        expected = [n for n, _ in columns] if columns is not None else self.core.features
        unknown = [n for n in by_name if n not in expected]
        missing = [n for n in expected if n not in by_name]
        if unknown or missing:
            raise PayloadError(
                f"the inputs must be the model's features, one tensor each: unknown {unknown[:10]}, "
                f"missing {missing[:10]}"
            )
        kinds = dict(columns) if columns is not None else dict.fromkeys(expected, "numeric")
        cols = [
            _column(by_name[n], numeric=kinds[n] == "numeric", image=kinds[n] == "image") for n in expected
        ]
        _same_rows(expected, cols)
        if columns is None:
            return np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1), list(expected)
        return {"instances": [dict(zip(expected, row, strict=True)) for row in zip(*cols, strict=True)]}, None

    # -- text generation ------------------------------------------------------------------------------
    def _generation_request(
        self, gen: Generator, payload: InferenceRequest
    ) -> tuple[Prompts, list[object], bool]:
        prompt_inputs = [i for i in payload.inputs if i.name in PROMPT_INPUTS]
        if len(prompt_inputs) != 1:
            found = [i.name for i in payload.inputs]
            raise PayloadError(
                f"this model generates text and takes one prompt input, got {found}: {V2_HINT}"
            )
        params = _parameters(payload)
        for inp in payload.inputs:
            if inp is prompt_inputs[0]:
                continue
            if inp.name not in _KWARGS:
                raise PayloadError(
                    f"input {inp.name!r} is not one this model takes: {V2_HINT} ({', '.join(PARAMETERS)})"
                )
            if inp.name in params:
                raise PayloadError(f"{inp.name!r} is both an input and a request parameter: send it once")
            params[inp.name] = _kwarg(inp)
        full_text = params.pop("return_full_text", False)
        if type(full_text) is not bool:
            raise PayloadError('"return_full_text" must be true or false')
        chats, texts, sent = _prompts_of(gen, prompt_inputs[0])
        settings = gen.settings(params)
        prompts = gen.prompts(
            chats, texts, settings, {"kind": prompt_inputs[0].name}, tools=gen.columns.tools
        )
        return prompts, sent, full_text

    async def _generate(self, served: Served, payload: InferenceRequest) -> InferenceResponse:
        started = time.perf_counter()
        prompts, sent, full_text = self._generation_request(served.generator, payload)
        try:  # the version the deployment serves now (an in-place promotion, a canary's share)
            version, adapter = await served.adapters.answerer(self.name)
            done = await served.engine.complete_all(prompts.ids, prompts.settings, adapter=adapter)
        except NotServed as exc:
            raise MLServerError(str(exc), status_code=exc.status) from None
        except (Busy, EngineError) as exc:
            raise MLServerError(str(exc), status_code=429 if isinstance(exc, Busy) else 503) from None
        answers = [Generated(replace(c, text=c.text.strip()), len(done)) for c in done]
        g = self.core.answer_generated(prompts, answers, payload.id or None, started, version)
        oip_metrics.record(version, "v2", time.perf_counter() - started, len(answers))
        oip_metrics.answered(version, done)
        outputs = [_generated_output(sent, answers, full_text)]
        params = Parameters(generate_batch=g.batch)
        return self._response(g.request_id, outputs, parameters=params, model_version=version)

    # -- ground truth ---------------------------------------------------------------------------------
    def _feedback(self, request_id: str, payload: InferenceRequest) -> InferenceResponse:
        truth = [i for i in payload.inputs if i.name == "truth"]
        if len(truth) != 1:
            raise PayloadError('feedback carries one input "truth": one label per row of the request')
        n = self.core.add_feedback(request_id, np.asarray(_column(truth[0], numeric=False), dtype=object))
        return self._response(
            request_id, [ResponseOutput(name="labels", datatype="INT64", shape=[1], data=[n])]
        )


# -- text generation: mlserver-huggingface's tensors ------------------------------------------------------------
# MLServer's Hugging Face runtime (SeldonIO/MLServer 1.7.1, runtimes/huggingface/mlserver_huggingface):
# runtime.py decodes a request with HuggingfaceRequestCodec (codecs/base.py): each input by its own content type
# (none: StringCodec, a list of strings; "raw": codecs/raw.py, its first value; "hg_jsonlist": codecs/jsonlist.py,
# one JSON value an element), then calls the pipeline with the "args" input as its positional arguments, the
# "array_inputs" input as one list argument and every other input as a keyword argument (generation kwargs such as
# max_new_tokens are inputs of their own, not request parameters). It answers one output "output", BYTES, shape
# [n, 1], content type "hg_jsonlist" (HuggingfaceListJSONCodec.encode_output), one JSON text per pipeline result,
# e.g. '{"generated_text": "..."}' (docs/examples/huggingface/README.md); metadata.py names text-generation's
# input "array_inputs", BYTES [-1], content type "str".

#: the inputs that carry prompts, as mlserver-huggingface names them
PROMPT_INPUTS = ("args", "array_inputs", "text_inputs")
#: the one output, and its content type (mlserver-huggingface's HuggingfaceListJSONCodec)
GENERATED, JSONLIST = "output", "hg_jsonlist"
_KWARGS = (*PARAMETERS, *ALIASES, *FLAGS, "return_full_text")
#: a request's parameters that belong to the protocol and its clients, not to generation: MLServer's
#: (content type, the HTTP headers it copies in), Triton's client's, and freestack's ``feedback_for``
PROTOCOL_PARAMETERS = frozenset(
    (
        "content_type",
        "headers",
        "binary_data_output",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "feedback_for",
    )
)
V2_HINT = (
    'send the prompts as one BYTES input "args" [prompts] (content type "str"), or a conversation as '
    '"array_inputs" with content type "hg_jsonlist" (one {"role", "content"} message a value), and '
    'the generation parameters as inputs named by them (content type "raw") or in "parameters"'
)


def _generation_metadata_tensors() -> tuple[list[MetadataTensor], list[MetadataTensor]]:
    raw, text = Parameters(content_type="raw"), Parameters(content_type="str")
    inputs = [
        MetadataTensor(name="args", datatype="BYTES", shape=[-1], parameters=text),
        MetadataTensor(name="array_inputs", datatype="BYTES", shape=[-1], parameters=text),
        MetadataTensor(name="max_new_tokens", datatype="INT32", shape=[1], parameters=raw),
        MetadataTensor(name="temperature", datatype="FP32", shape=[1], parameters=raw),
        MetadataTensor(name="top_p", datatype="FP32", shape=[1], parameters=raw),
        MetadataTensor(name="stop", datatype="BYTES", shape=[-1], parameters=text),
    ]
    outputs = [
        MetadataTensor(
            name=GENERATED, datatype="BYTES", shape=[-1, 1], parameters=Parameters(content_type=JSONLIST)
        )
    ]
    return inputs, outputs


def _metadata_tensors(core: ServedModel) -> tuple[list[MetadataTensor], list[MetadataTensor]]:
    """A model of rows' inputs (one matrix, or a tensor per raw column) and outputs (by its task)."""
    columns = core.raw_columns()
    if columns is None:
        inputs = [
            MetadataTensor(
                name="input",
                datatype="FP32",
                shape=[-1, core.n_features],
                parameters=Parameters(features=core.features),
            )
        ]
    else:
        inputs = [
            MetadataTensor(
                name=name,
                datatype="FP32" if kind == "numeric" else "BYTES",
                shape=[-1],
                parameters=Parameters(kind=kind),
            )
            for name, kind in columns
        ]
    if core.task != "classification":
        target = Parameters(target=core.output_names[0])
        return inputs, [MetadataTensor(name="prediction", datatype="FP32", shape=[-1], parameters=target)]
    classes = Parameters(classes=core.output_names)
    return inputs, [
        MetadataTensor(
            name="probabilities", datatype="FP32", shape=[-1, len(core.output_names)], parameters=classes
        ),
        MetadataTensor(name="label", datatype="BYTES", shape=[-1]),
    ]


def _values(inp: RequestInput, flat: bool = True) -> list:
    """An input's data as a list (one value: a list of it), unnested unless ``flat`` is false."""
    data = inp.data.root if hasattr(inp.data, "root") else inp.data
    values = data if isinstance(data, list) else [data]
    while flat and values and all(isinstance(v, list) for v in values):  # nested as its shape ([n, 1])
        values = [x for v in values for x in v]
    return values


def _text(v: object, where: str) -> str:
    if isinstance(v, bytes | bytearray):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError(f"{where}: the bytes are not UTF-8 text") from None
    if not isinstance(v, str):
        raise PayloadError(f"{where}: expected text, got {type(v).__name__}")
    return v


def _kwarg(inp: RequestInput) -> object:
    """A generation parameter sent as an input: its one value (content type ``raw``, or a number or BYTES
    holding one), or for ``stop`` its strings."""
    _check_shape(inp, "[1] (one value)")
    values = _values(inp)
    if inp.name in ("stop", "stop_strings", "stop_sequence"):
        return [_text(v, f"input {inp.name!r}") for v in values]
    if len(values) != 1:
        raise PayloadError(
            f"input {inp.name!r} holds {len(values)} values: a generation parameter is one value, shape [1]"
        )
    v = values[0]
    if isinstance(v, bytes | bytearray | str):  # a number or true/false sent as text
        text = _text(v, f"input {inp.name!r}")
        try:
            v = json.loads(text)
        except ValueError:
            raise PayloadError(f"input {inp.name!r}: {text[:40]!r} is not a number or true/false") from None
    return v.item() if isinstance(v, np.generic) else v


def _parameters(payload: InferenceRequest) -> dict[str, object]:
    """The generation parameters of the request's ``parameters`` (an extension: mlserver-huggingface reads
    only inputs)."""
    if payload.parameters is None:
        return {}
    given = payload.parameters.model_dump(exclude_none=True)
    unknown = sorted(k for k in given if k not in _KWARGS and k not in PROTOCOL_PARAMETERS)
    if unknown:
        raise PayloadError(
            f"unknown generation parameters {unknown}: a request may set {', '.join(PARAMETERS)} "
            '(inputs named by them, or in "parameters")'
        )
    return {k: v for k, v in given.items() if k in _KWARGS}


def _prompts_of(gen: Generator, inp: RequestInput) -> tuple[list, list[str], list[object]]:
    """(chats, logged texts, what the client sent per prompt) of the prompt input."""
    if inp.datatype != "BYTES":
        raise PayloadError(f"input {inp.name!r} is {inp.datatype}: prompts are BYTES (text); {V2_HINT}")
    _check_shape(inp, "[prompts]")
    texts = [_text(v, f"input {inp.name!r}, value {i}") for i, v in enumerate(_values(inp))]
    if not texts:
        raise PayloadError(f"input {inp.name!r} holds no prompt; {V2_HINT}")
    if getattr(inp.parameters, "content_type", None) in (JSONLIST, "hg_json"):
        try:
            decoded = [json.loads(t) for t in texts]
        except ValueError as exc:
            raise PayloadError(f"input {inp.name!r} ({JSONLIST}): a value is not JSON ({exc})") from None
        if all(isinstance(d, dict) for d in decoded):  # one conversation, a message a value
            chat, text = gen.chat(decoded, f"input {inp.name!r}", messages=True)
            return [chat], [text], [decoded]
        if all(isinstance(d, list) for d in decoded):  # a conversation a value
            pairs = [
                gen.chat(d, f"input {inp.name!r}, value {i}", messages=True) for i, d in enumerate(decoded)
            ]
            return [c for c, _ in pairs], [t for _, t in pairs], decoded
        raise PayloadError(
            f'input {inp.name!r} ({JSONLIST}): send one {{"role", "content"}} message a value '
            "(one conversation), or one JSON list of messages a value"
        )
    pairs = [gen.chat(t, f"input {inp.name!r}, value {i}", messages=False) for i, t in enumerate(texts)]
    return [c for c, _ in pairs], [t for _, t in pairs], texts


def _generated_output(sent: list[object], answers: list[Generated], full_text: bool) -> ResponseOutput:
    items = []
    for given, a in zip(sent, answers, strict=True):
        text = a.completion.text
        if full_text:  # the pipeline's default: the prompt (or the conversation) before the answer
            text = (
                given + text if isinstance(given, str) else [*given, {"role": "assistant", "content": text}]
            )
        fields = {k: v for k, v in a.as_dict().items() if k != "text"}
        items.append(json.dumps({"generated_text": text, **fields}, ensure_ascii=False))
    return ResponseOutput(
        name=GENERATED,
        datatype="BYTES",
        shape=[len(items), 1],
        parameters=Parameters(content_type=JSONLIST),
        data=items,
    )


def _matrix(inp: RequestInput, features: list[str]) -> np.ndarray:
    """The one tensor of a model of numbers: named ``input``, shape ``[rows, features]``."""
    want = f"[rows, {len(features)}] ({len(features)} features; [-1, {len(features)}] in the metadata)"
    if inp.name != MATRIX:
        raise PayloadError(
            f"input {inp.name!r} is not one this model takes: send {MATRIX!r} {want}, or one "
            f"[rows] tensor per feature named by it ({', '.join(features[:5])}, ...)"
        )
    _numeric_type(inp)
    _check_shape(inp, want)
    if len(inp.shape) != 2 or inp.shape[1] != len(features):
        one_row = f": send [1, {len(features)}] for one row" if len(inp.shape) == 1 else ""
        raise PayloadError(f"input {inp.name!r} has shape {inp.shape}; the model takes {want}{one_row}")
    return _numeric(inp)


def _check_shape(inp: RequestInput, want: str) -> None:
    """A shape with no negative dimension whose element count is the data's."""
    if any(d < 0 for d in inp.shape):
        raise PayloadError(
            f"input {inp.name!r} has shape {inp.shape}: a request's dimensions are counts, 0 or "
            f"more (-1 is for the metadata); the model takes {want}"
        )
    data = _values(inp, flat=False)  # flat, or nested as the shape is
    n = len(data) if not data or not isinstance(data[0], list) else np.asarray(data, dtype=object).size
    if n != int(np.prod(inp.shape, dtype=np.int64)):
        raise PayloadError(
            f"input {inp.name!r}: shape {inp.shape} holds {int(np.prod(inp.shape))} values, but its "
            f"data has {n}; the model takes {want}"
        )


def _numeric_type(inp: RequestInput) -> None:
    if inp.datatype not in NUMERIC:
        raise PayloadError(
            f"input {inp.name!r} is {inp.datatype}: this model takes numbers (FP32, FP64, INT*)"
        )


def _numeric(inp: RequestInput) -> np.ndarray:
    _numeric_type(inp)
    try:
        x = NumpyCodec.decode_input(inp)
    except Exception as exc:  # noqa: BLE001 - MLServer's codec raises several kinds for a bad shape or data
        raise PayloadError(
            f"input {inp.name!r}: its data does not fit its shape {inp.shape} ({exc})"
        ) from None
    if x.ndim > 2:
        raise PayloadError(f"input {inp.name!r} has shape {list(x.shape)}: send [rows, features]")
    return x


def _column(inp: RequestInput, *, numeric: bool, image: bool = False) -> list:
    """One feature's values, one a row: numbers, or strings (an image's bytes as base64)."""
    _check_shape(inp, "[rows] (one value a row)")
    if len(inp.shape) > 2 or (len(inp.shape) == 2 and inp.shape[1] != 1):
        raise PayloadError(
            f"input {inp.name!r} has shape {inp.shape}: one feature's tensor is [rows] (or [rows, 1])"
        )
    if numeric or inp.datatype in NUMERIC:  # a number column, or a category coded as a number, or a label
        return _numeric(inp).reshape(-1).tolist()
    if inp.datatype != "BYTES":
        raise PayloadError(f"input {inp.name!r} is {inp.datatype}: send BYTES (strings)")
    values = _values(inp, flat=False)
    out = [
        (base64.b64encode(v).decode("ascii") if image else v.decode("utf-8", "replace"))
        if isinstance(v, bytes)
        else v
        for v in values
    ]
    rows = int(np.prod(inp.shape)) if inp.shape else len(out)
    if rows != len(out):
        raise PayloadError(f"input {inp.name!r}: shape {inp.shape} holds {rows} values but it has {len(out)}")
    return out


def _same_rows(names: list[str], cols: list[list]) -> None:
    sizes = {len(c) for c in cols}
    if len(sizes) > 1:
        counts = ", ".join(f"{n}: {len(c)}" for n, c in zip(names, cols, strict=True))
        raise PayloadError(f"every input must hold the same number of rows ({counts})")


__all__ = ["Batcher", "FreestackRuntime"]
