"""One registered model version, ready to answer: what every serving runtime shares.

:class:`ServedModel` fetches a registry version (or the version an alias names), loads it with torch,
checks and encodes a request's rows (numbers, or the raw category/text/image values a model with an
encoder takes), runs the forward pass, and keeps the request log (:mod:`.requestlog`). It knows no wire
protocol: Seldon's (:mod:`freestack_server.seldon.model`) and the Open Inference Protocol's (MLServer,
:mod:`freestack_server.mlserver.runtime`) wrap it, and each turns a :class:`PayloadError` into its own error
format. Runs in the serving environments (no Airflow, no pandas).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from freestack.ml.contract import ModelInputs
from freestack.ml.features import EncodingError
from freestack.settings import settings
from freestack.version.errors import VersionError
from freestack.version.files import MARKER, PREPROCESSING
from freestack.version.folder import open_folder
from freestack_server.core.config import CANNOT_SERVE
from freestack_server.core.errors import PayloadError
from freestack_server.core.fetch import FetchError, FetchSource, resolve_uri
from freestack_server.core.generation import Bounds, Generated, Generator, Prompts
from freestack_server.core.raw import RawInputError, RawInputs, label_text
from freestack_server.core.requestlog import SMOKE_ID, RequestLog

log = logging.getLogger("freestack.serving")


@contextlib.contextmanager
def cannot_serve():
    """A version whose files are not what was registered (VersionError names the file) is logged on a line
    of its own (:data:`CANNOT_SERVE`, quoted by the deploy), then raised: the server exits BOOT_ERROR, and
    is not restarted, since no restart mends it."""
    try:
        yield
    except VersionError as exc:
        log.error("%s%s", CANNOT_SERVE, exc)
        raise


_ids: tuple[int, str, Any] = (0, "", None)  # (pid, the process's random prefix, its counter)


def new_request_id() -> str:
    """A request id unique across workers and restarts: 16 random hex digits per process, then a counter
    (cheaper on the request path than a uuid4 per request)."""
    global _ids
    pid = os.getpid()
    if _ids[0] != pid:  # first request in this (forked) worker
        _ids = (pid, uuid.uuid4().hex[:16], itertools.count())
    return f"{_ids[1]}{next(_ids[2]):016x}"


@dataclass
class Prediction:
    """One request's answer: the model's outputs (class probabilities, or one value a row), the
    predicted class index of each row (classification), the rows predicted per class, and its id."""

    out: np.ndarray
    idx: np.ndarray | None
    per_class: list[tuple[str, int]]
    request_id: str
    ms: float


@dataclass
class Generation:
    """One text-generation request's answers (:class:`freestack_server.core.generation.Generated`, one a
    prompt), its id and how long it took."""

    answers: list[Generated]
    request_id: str
    ms: float

    @property
    def batch(self) -> int:
        """The most prompts a ``generate`` call that answered this request held (more than its own: batched)."""
        return max((a.batch for a in self.answers), default=0)


class ServedModel:
    """One registered freestack model version, behind any wire protocol."""

    def __init__(
        self,
        model_uri: str = "",
        max_batch_rows: int = 0,
        request_log_uri: str = "",
        request_log_rate: float = -1.0,
        torch_threads: int = 0,
        deployment: str = "",
        generation: dict[str, Any] | None = None,
    ):
        config = settings()
        self.model_uri = (model_uri or config.model_uri or "").rstrip("/")
        if not self.model_uri:
            raise ValueError("no model to serve: pass the model_uri parameter or set FREESTACK_MODEL_URI")
        #: what was asked for: the version URI, or an alias URI that ``model_uri`` is resolved from
        self.requested_uri = self.model_uri
        self.max_batch_rows = int(max_batch_rows or config.max_batch_rows)
        self.request_log_uri = request_log_uri or config.request_log_uri or ""
        rate = float(request_log_rate) if float(request_log_rate) >= 0 else config.request_log_rate
        self.request_log_rate = min(max(rate, 0.0), 1.0)
        self.torch_threads = int(torch_threads or config.torch_threads)
        self.deployment = deployment or os.environ.get("SELDON_DEPLOYMENT_ID", "")
        self.cache_dir = str(config.serving_cache or tempfile.mkdtemp(prefix="freestack-model-"))
        self.net = None
        self.opened = None  # the version's records (freestack.version.folder.ModelVersion), once described
        self.loaded = None  # the version loaded (freestack.version.loaded.LoadedVersion)
        self.ready = False
        self._described: dict[str, Any] | None = None
        self._local = threading.local()
        self._log = None  # the request log (RequestLog), once loaded with request_log_uri and a rate above 0
        self._logs: dict[str, Any] = {}  # the request logs of other adapter versions served (multi-LoRA)
        #: a text-generation model's bounds as given (MLServer's model settings); None: the FREESTACK_GENERATION_* settings
        self.generation_bounds = generation
        #: a text-generation model's, once loaded
        self.generator: Generator | None = None

    # -- loading --------------------------------------------------------------------------------------
    @cannot_serve()
    def describe(self) -> dict[str, Any]:
        """Model name, version, features and classes from the small JSON files (read by
        :func:`freestack.version.folder.open_folder`, checked against the registration manifest): no torch
        involved, so it is safe in a server's parent process before its workers fork."""
        if self._described is None:
            # an alias (registry/<model>@production) is read once: every later fetch, in this process and
            # in the workers forked from it, uses the one version it named, never a mix of two
            self.model_uri = resolve_uri(self.model_uri)
            opened = open_folder(self.model_uri, FetchSource(self.model_uri))
            if opened.manifest is None:
                raise FetchError(
                    f"{self.model_uri} is not a registered model version (no {MARKER}); deploy a version "
                    "the registry committed"
                )
            if opened.preprocessing is None:
                raise FetchError(f"{self.model_uri} has no {PREPROCESSING}; it was not written by freestack")
            pre, config = opened.preprocessing, opened.config
            self.opened = opened
            self._described = {
                "model": opened.manifest.model or "model",
                "version": opened.manifest.version or "unknown",
                "task": pre.task or config.task or "classification",
                "features": list(pre.features or config.features or []),
                "classes": list(pre.classes or config.classes or []),
                "target": pre.target or "",
                "config": config.as_dict(),
                # category / text / image columns: requests carry raw values (freestack.ml.features)
                "encoder": pre.encoder,
                "chat": pre.chat,  # a text-generation model's chat columns (freestack.ml.lm)
            }
        return self._described

    def takes_raw_values(self) -> bool:
        """Whether requests carry raw category/text/image values rather than numbers only."""
        return bool(self.describe().get("encoder"))

    @cannot_serve()
    def load(self) -> None:
        import torch

        torch.set_num_threads(max(1, self.torch_threads))
        info = self.describe()
        # every file of the version, checked against the registration manifest, into the cache (a custom
        # model's module.py is imported from there), and the model built from it
        loaded = self.opened.load("cpu", into=self.cache_dir)
        self.loaded = loaded
        self.net = loaded.model
        self.version = info["version"]
        self.features = info["features"]
        self.n_features = len(self.features) or int(info["config"].get("n_features", 0))
        self._feature_index = {f: i for i, f in enumerate(self.features)}
        self.task = info["task"]
        self.classes = info["classes"]
        #: the output columns: class names, or the regression target
        self.output_names = (
            [str(c) for c in self.classes]
            if self.task == "classification"
            else [info["target"] or "prediction"]
        )
        self._torch = torch
        self._encoder = self._raw = None
        if self.task == "generation":
            self._load_generation()  # answers one token before health checks: a broken model fails here
        else:
            if info["encoder"]:
                self._load_encoder()
            # one real forward pass before answering health checks: a broken model fails here, not on traffic
            out = self.forward(self.zero_row())
            if not np.all(np.isfinite(out)):
                raise RuntimeError(f"{self.model_uri}: the model answers non-finite values on a zero row")
        if self.request_log_uri and self.request_log_rate > 0:
            self._log = self._request_log(info)
        self.ready = True
        log.info(
            "serving %s %s from %s (%s, task %s)",
            info["model"],
            self.version,
            self.model_uri,
            self.inputs_summary(),
            self.task,
        )

    def inputs_summary(self) -> str:
        """What a request carries, in words: "64 numeric features", "1 column: review (text)", "4 columns:
        1 numeric, 1 category, 1 text, 1 image"."""
        if self.generator is not None:
            return (
                f"prompts or chats in {self.generator.columns.input_column} (text), max_length "
                f"{self.generator.max_length}, prompts up to {self.generator.max_prompt_tokens} tokens"
            )
        columns = self.raw_columns()
        if columns is None:
            return f"{self.n_features} numeric feature{'s' if self.n_features != 1 else ''}"
        if len(columns) == 1:
            return f"1 column: {columns[0][0]} ({columns[0][1]})"
        counts = Counter(kind for _, kind in columns)
        return f"{len(columns)} columns: " + ", ".join(f"{n} {kind}" for kind, n in counts.items())

    def _request_log(self, info: dict[str, Any]):
        config = settings()
        if self.generator is not None:  # the prompt (or the chat, as JSON) is one text column
            columns = [(self.generator.columns.input_column, "text")]
        elif self._encoder is not None:
            columns = list(self._encoder.columns)
        else:
            columns = [(f, "numeric") for f in self.features]
        return RequestLog(
            self.request_log_uri,
            rate=self.request_log_rate,
            model=info["model"],
            version=self.version,
            deployment=self.deployment,
            columns=columns,
            classes=self.output_names if self.task == "classification" else [],
            flush_seconds=config.request_log_flush_seconds,
            max_rows_per_request=config.request_log_max_rows,
        )

    def _load_generation(self) -> None:
        """A text-generation model's tokenizer (its chat template) and generation config, loaded with the
        version (:class:`freestack.version.loaded.LoadedVersion`), and the deployment's bounds."""
        self.generator = Generator(
            self.net,
            self.loaded.tokenizer,
            bounds=Bounds.from_mapping(self.generation_bounds),  # None: the settings' bounds
            generation_config=self.loaded.generation_config,
        )
        self.generator.warm_up()

    def _load_encoder(self) -> None:
        """The version's encoder (its preprocessing and tokenizer, as training saved them)."""
        self._encoder = self.loaded.encoder
        self._raw = RawInputs(self._encoder.columns, self.max_batch_rows)
        self.n_features = len(self._encoder.numeric)

    def raw_columns(self) -> list[tuple[str, str]] | None:
        """(name, kind) of every feature column of a model that takes raw values, else None."""
        return list(self._encoder.columns) if self._encoder is not None else None

    def zero_row(self) -> np.ndarray | dict[str, np.ndarray]:
        """One row of zeros (numbers), unknown categories, empty text and a black image."""
        if self._encoder is None:
            return np.zeros((1, self.n_features), dtype=np.float32)
        from freestack.ml.custom import zero_batch

        sizes = self._encoder.group_sizes()
        inputs = ModelInputs.from_dict(
            {"task": self.task, "n_outputs": 1, "groups": {g: {"kind": g, **v} for g, v in sizes.items()}}
        )
        return {k: v.numpy() for k, v in zero_batch(inputs, 1).items()}

    # -- ground truth, later ------------------------------------------------------------------------------
    def add_feedback(self, request_id: str, truth: np.ndarray, reward: float = 0.0) -> int:
        """The true labels of an earlier request, kept in the request log beside it; returns how many."""
        self.require_request_log()
        labels = self.truth_labels(truth)
        self._log.add_labels(request_id, labels, float(reward))
        return len(labels)

    def require_request_log(self) -> None:
        """Feedback is joined to requests through the request log: refuse it when there is none."""
        if self._log is None:
            raise PayloadError(
                "this server keeps no request log (deploy.local.log_sample_rate is 0), so feedback "
                "cannot be joined to a request: turn the request log on",
                400,
                "NO_REQUEST_LOG",
            )

    def truth_labels(self, truth: np.ndarray) -> list[str]:
        """One label per row: values, or one row of class probabilities (one-hot) per row."""
        truth = np.asarray(truth)
        if truth.size == 0:
            raise PayloadError('"truth" holds no labels: send one label per row of the request')
        if self.task == "classification" and truth.ndim == 2 and truth.shape[1] == len(self.output_names) > 1:
            return [self.output_names[i] for i in truth.astype(np.float64).argmax(axis=1).tolist()]
        if truth.ndim > 2 or (truth.ndim == 2 and truth.shape[1] != 1):
            raise PayloadError(
                f'"truth" has shape {list(truth.shape)}: send one label per row, [[label], ...] or [label, ...]'
            )
        return [label_text(v) for v in truth.reshape(-1).tolist()]

    # -- predict --------------------------------------------------------------------------------------
    #: the worker's adaptive batching (:mod:`freestack_server.seldon.batching`), when it is on
    batcher: Any = None

    def forward(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """The model's outputs for ``x``: with adaptive batching, from one forward shared by the requests
        that arrived with this one."""
        if self.batcher is not None and (out := self.batcher.park(x)) is not None:
            return out
        return self.forward_now(x)

    def forward_now(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        if self.generator is not None:  # a text-generation model's forward is a generate call (Prompts in)
            return self.generator.run(x)
        torch = self._torch
        with torch.inference_mode():
            t = {k: torch.from_numpy(v) for k, v in x.items()} if isinstance(x, dict) else torch.from_numpy(x)
            if self.task == "classification":
                return torch.softmax(self.net(t), dim=-1).numpy()
            return self.net.predict(t).numpy()

    def matrix(self, X: Any, names: list[str] | None) -> np.ndarray:
        """Numeric rows as the model takes them (float32, the model's feature order), checked."""
        if isinstance(X, dict):
            X, names = self._records(X)
        if not isinstance(X, np.ndarray):
            raise PayloadError("expected numeric features (data.ndarray, data.tensor or jsonData records)")
        if X.dtype.kind not in "iuf":
            kind = {"U": "strings", "S": "bytes", "O": "mixed or non-numeric values", "b": "booleans"}.get(
                X.dtype.kind, f"dtype {X.dtype}"
            )
            raise PayloadError(f"features must be numbers; the payload holds {kind}")
        if X.ndim == 1:
            X = X.reshape(1, -1) if X.size else X.reshape(0, 0)
        if X.ndim != 2:
            raise PayloadError(
                f"features must be a 2-D array [rows, {self.n_features}], got shape {list(X.shape)}"
            )
        rows, width = X.shape
        if rows == 0:
            raise PayloadError("the payload holds no rows: send at least one row of features")
        if rows > self.max_batch_rows:
            raise PayloadError(
                f"{rows} rows in one request; at most {self.max_batch_rows}: split the batch",
                413,
                "PAYLOAD_TOO_LARGE",
            )
        if names:
            X = self._reordered(X, names, width)
        if X.shape[1] != self.n_features:
            raise PayloadError(
                f"each row must hold {self.n_features} features ({', '.join(self.features[:4])}, ...), "
                f"got {width}"
            )
        X = np.ascontiguousarray(X, dtype=np.float32)
        # one pass for the common case: the largest magnitude is NaN if any value is NaN
        if not np.abs(X).max(initial=0.0) <= 3.0e38:
            if not np.isfinite(X).all():
                r, c = np.argwhere(~np.isfinite(X))[0]
                raise PayloadError(
                    f"row {r}, feature {self.features[c] if self.features else c}: NaN or infinite "
                    "values are not accepted; impute them first"
                )
            raise PayloadError("feature values overflow float32")
        return X

    def _reordered(self, X: np.ndarray, names: list[str], width: int) -> np.ndarray:
        if len(names) != width:
            raise PayloadError(f"data.names lists {len(names)} names for {width} columns")
        if names == self.features:
            return X
        unknown = [n for n in names if n not in self._feature_index]
        missing = [f for f in self.features if f not in set(names)]
        if unknown or missing:
            raise PayloadError(
                f"feature names do not match the model's: unknown {unknown[:10]}, missing {missing[:10]}"
            )
        return X[:, [names.index(f) for f in self.features]]

    def encoded(self, X: Any, names: list[str] | None) -> tuple[dict[str, list], dict[str, np.ndarray]]:
        """A request of raw values (category, text, base64 images): its columns, and them encoded as the
        training split was."""
        try:
            columns = self._raw.from_any(X, names)
            return columns, self._encoder.encode(columns)
        except RawInputError as exc:
            status = 413 if "at most" in str(exc) else 400
            raise PayloadError(
                str(exc), status, "PAYLOAD_TOO_LARGE" if status == 413 else "BAD_PAYLOAD"
            ) from None
        except EncodingError as exc:
            raise PayloadError(
                f"{exc}; send the image file's bytes (PNG, JPEG, ...) base64-encoded"
            ) from None

    def _records(self, payload: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
        records = payload.get("instances", payload)  # or one record
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list) or not records:
            raise PayloadError(
                'jsonData must be {"instances": [{feature: value, ...}, ...]} with at least one record'
            )
        if len(records) > self.max_batch_rows:
            raise PayloadError(
                f"{len(records)} records in one request; at most {self.max_batch_rows}",
                413,
                "PAYLOAD_TOO_LARGE",
            )
        out = np.empty((len(records), self.n_features), dtype=np.float64)
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise PayloadError(f"jsonData record {i} must be an object of feature: value")
            missing = [f for f in self.features if f not in rec]
            if missing:
                raise PayloadError(f"jsonData record {i} lacks features {missing[:10]}")
            for j, f in enumerate(self.features):
                v = rec[f]
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise PayloadError(
                        f"jsonData record {i}, feature {f}: expected a number, got {type(v).__name__}"
                    )
                out[i, j] = v
        return out, list(self.features)

    def prepare(self, X: Any, names: list[str] | None) -> tuple[Any, np.ndarray | dict[str, np.ndarray]]:
        """A request's rows checked and encoded: (what the request log keeps, what the network takes)."""
        if not self.ready:
            raise PayloadError("the model is still loading", 503, "NOT_READY")
        if self._encoder is not None:
            return self.encoded(X, names)
        x = self.matrix(X, names)
        return x, x

    def answer(self, raw: Any, out: np.ndarray, request_id: str | None, started: float) -> Prediction:
        """A request's outputs as a :class:`Prediction`, logged (unless it is the deploy's smoke test);
        ``request_id`` is the client's own id for the request, if it sent one."""
        idx, per_class = None, []
        if self.task == "classification":
            idx = out.argmax(axis=1)
            if len(idx) == 1:
                per_class = [(self.output_names[int(idx[0])], 1)]
            else:
                counts = np.bincount(idx, minlength=len(self.output_names)).tolist()
                per_class = [(self.output_names[i], n) for i, n in enumerate(counts) if n]
        ms = (time.perf_counter() - started) * 1000.0
        request_id = request_id or new_request_id()
        if self._log is not None and self._log.sampled() and not request_id.startswith(SMOKE_ID):
            self._log.add(request_id, raw, out)  # the deploy's smoke test is not traffic
        return Prediction(out, idx, per_class, request_id, ms)

    # -- text generation ----------------------------------------------------------------------------------
    def generate(self, prompts: Prompts, request_id: str | None = None) -> Generation:
        """Answer a text-generation request's checked prompts (:class:`freestack_server.core.generation.Prompts`;
        with adaptive batching in one ``generate`` call with the requests that arrived with it) and log them."""
        started = time.perf_counter()
        return self.answer_generated(prompts, self.forward(prompts), request_id, started)

    def answer_generated(
        self,
        prompts: Prompts,
        answers: list[Generated],
        request_id: str | None,
        started: float,
        version: str | None = None,
    ) -> Generation:
        """A text-generation request's answers as a :class:`Generation`, logged (unless it is the deploy's
        smoke test): each prompt with its completion and token counts, under the version that answered
        (``version``: another adapter version of the same base; default: the one deployed)."""
        ms = (time.perf_counter() - started) * 1000.0
        request_id = request_id or new_request_id()
        log_ = self._log_of(version)
        if log_ is not None and log_.sampled() and not request_id.startswith(SMOKE_ID):
            log_.add_generated(request_id, prompts.texts, [a.completion for a in answers])
        return Generation(answers, request_id, ms)

    def _log_of(self, version: str | None):
        """The request log of ``version`` (one a version: its rows and files are named by it)."""
        if self._log is None or version is None or version == self.version:
            return self._log
        if version not in self._logs:
            self._logs[version] = self._log.for_version(version)
        return self._logs[version]

    def predict_rows(
        self, X: Any, names: list[str] | None = None, request_id: str | None = None
    ) -> Prediction:
        """Check and encode a request's rows, answer them, and log them."""
        started = time.perf_counter()
        raw, x = self.prepare(X, names)
        return self.answer(raw, self.forward(x), request_id, started)


__all__ = ["Generation", "Prediction", "ServedModel", "label_text", "new_request_id"]
