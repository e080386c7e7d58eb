"""The request log: what a model server was asked and answered, in Parquet files in object storage.

    <root>/monitoring/<model>/requests/ds=YYYY-MM-DD/hour=HH/<version>-<pid>-<time>.parquet
    <root>/monitoring/<model>/labels/ds=YYYY-MM-DD/hour=HH/feedback-<pid>-<time>.parquet

One row per predicted row: ``request_id``, ``row`` (its place in the request), ``ts`` (UTC), ``model``,
``version``, ``deployment``, one ``input.<feature>`` column per feature as the client sent it (numbers as
float64, category and text values as strings, images as their bytes), ``prediction`` (the class label as
a string, or the value) and ``outputs`` (the class probabilities, or the value).

A text-generation model (``model.task: text-generation``) logs one row per prompt: ``input.<column>`` is the
prompt as the client sent it (a conversation as its JSON), ``prediction`` the completion's text, and
``prompt_chars``, ``prompt_tokens`` (with the chat template), ``completion_chars``, ``completion_tokens``,
``finish_reason`` (``stop``: the end of the answer or a stop string; ``length``: ``max_new_tokens`` ran out)
and ``truncated`` (the prompt was cut from the left) beside them; ``outputs`` is not written.

A label row (``/send-feedback``, or a file a user drops under ``labels/``): ``request_id``, ``row``,
``label`` (string), ``reward``, ``ts``. The monitor joins them to the requests by request id and row.

The request path only appends references to a per-worker buffer; a background thread turns them into
one Parquet object per hour every ``flush_seconds`` (or sooner when ``flush_rows`` are waiting), written
whole (never appended to), so a reader never sees half a file and no request waits for storage.
"""

from __future__ import annotations

import io
import logging
import os
import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from freestack_server.core.fetch import put_bytes

log = logging.getLogger(__name__)

INPUT_PREFIX = "input."
#: the start of the deploy's smoke-test request ids: not traffic, so not written to the request log
SMOKE_ID = "freestack-smoke"


def monitoring_uri(root: str, model: str) -> str:
    """Where a model's request log, labels, reports and alerts live under the storage root."""
    return f"{str(root).rstrip('/')}/monitoring/{model}"


def hour_folder(ts: datetime) -> str:
    return f"ds={ts:%Y-%m-%d}/hour={ts:%H}"


class RequestLog:
    """A worker's buffer of sampled requests and arrived labels, flushed to storage off the request path.

    ``columns``: the model's inputs as (feature, kind), kind one of numeric, category, text, image;
    ``classes``: the class names of a classifier (empty for a regression)."""

    def __init__(
        self,
        uri: str,
        *,
        rate: float,
        model: str,
        version: str,
        deployment: str,
        columns: list[tuple[str, str]],
        classes: list[str],
        flush_seconds: float = 10.0,
        flush_rows: int = 20_000,
        max_rows_per_request: int = 256,
    ):
        self.uri, self.rate = uri.rstrip("/"), rate
        self.model, self.version, self.deployment = model, version, deployment
        self.columns, self.classes = columns, classes
        self.flush_seconds, self.flush_rows, self.max_rows = flush_seconds, flush_rows, max_rows_per_request
        self._requests: list[tuple[datetime, str, Any, np.ndarray]] = []
        self._generated: list[tuple[float, str, list[str], list[Any]]] = []
        self._labels: list[tuple[datetime, str, list, float | None]] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None

    def for_version(self, version: str) -> RequestLog:
        """The same log for another version of the model (its own rows, files and writer)."""
        return RequestLog(
            self.uri,
            rate=self.rate,
            model=self.model,
            version=version,
            deployment=self.deployment,
            columns=self.columns,
            classes=self.classes,
            flush_seconds=self.flush_seconds,
            flush_rows=self.flush_rows,
            max_rows_per_request=self.max_rows,
        )

    # -- the request path -------------------------------------------------------------------------------
    def sampled(self) -> bool:
        return self.rate >= 1.0 or random.random() < self.rate

    def add(
        self,
        request_id: str,
        inputs: np.ndarray | dict[str, list],
        outputs: np.ndarray,
        ts: datetime | None = None,
    ) -> None:
        """Keep one answered request: its inputs (a numbers matrix in feature order, or the raw columns);
        ``ts``: when it was answered (default: now; a replayed log gives its own)."""
        entry = (ts.timestamp() if ts else time.time(), request_id, inputs, outputs)
        self._append("_requests", entry, min(len(outputs), self.max_rows))

    def add_generated(
        self, request_id: str, prompts: list[str], completions: list[Any], ts: datetime | None = None
    ) -> None:
        """Keep one answered text-generation request: its prompts (the text the client sent, a chat as JSON)
        and their completions (:class:`freestack.ml.lm.answers.Completion`: text, token counts, finish reason)."""
        n = min(len(prompts), self.max_rows)
        entry = (ts.timestamp() if ts else time.time(), request_id, prompts[:n], completions[:n])
        self._append("_generated", entry, n)

    def add_labels(
        self, request_id: str, labels: list, reward: float | None, ts: datetime | None = None
    ) -> None:
        """Keep the ground truth of an earlier request (one label per row it predicted)."""
        self._append(
            "_labels", (ts.timestamp() if ts else time.time(), request_id, labels, reward), len(labels)
        )

    def _append(self, buffer: str, entry: tuple, rows: int) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use in this (forked) worker: its own buffer and writer
                self._pid = os.getpid()
                self._requests, self._generated, self._labels, self._rows = [], [], [], 0
                threading.Thread(target=self._loop, name="freestack-request-log", daemon=True).start()
            getattr(self, buffer).append(entry)
            self._rows += rows
            full = self._rows >= self.flush_rows
        if full:
            self._wake.set()

    # -- the writer thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        import atexit

        atexit.register(self.flush)
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._lock:
            requests, generated, labels = self._requests, self._generated, self._labels
            self._requests, self._generated, self._labels, self._rows = [], [], [], 0
        for kind, entries, build in (
            ("requests", requests, self._request_table),
            ("requests", generated, self._generation_table),
            ("labels", labels, _label_table),
        ):
            by_hour: dict[int, list] = {}
            for e in entries:  # entries hold their time as seconds since the epoch
                by_hour.setdefault(int(e[0] // 3600), []).append(e)
            for hour, group in by_hour.items():
                self._write(kind, hour_folder(datetime.fromtimestamp(hour * 3600, UTC)), group, build)

    def table(self, entries: list[tuple[datetime, str, Any, np.ndarray]]):
        """``entries`` (when, request id, inputs, outputs), as :meth:`add` keeps them, as one table of the
        request log: for a batch job that writes its sample of what it predicted through its own storage."""
        return self._request_table(
            [(ts.timestamp(), rid, inputs, outputs) for ts, rid, inputs, outputs in entries]
        )

    def generation_table(self, entries: list[tuple[datetime, str, list[str], list[Any]]]):
        """``entries`` (when, request id, prompts, completions), as :meth:`add_generated` keeps them, as one
        table of the request log: for a batch generation job that writes its sample through its own storage."""
        return self._generation_table([(ts.timestamp(), rid, p, c) for ts, rid, p, c in entries])

    def _write(self, kind: str, folder: str, entries: list, build) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        now = datetime.now(UTC)
        stem = self.version if kind == "requests" else "feedback"
        uri = f"{self.uri}/{kind}/{folder}/{stem}-{os.getpid()}-{now:%H%M%S%f}.parquet"
        try:
            buf = io.BytesIO()
            # dictionaries for the repeated strings only, statistics for the time only: encoding float columns
            # as dictionaries, and min/max statistics of every column, cost more CPU than serving the
            # request they describe (bench/serve/requestlog.py)
            table = build(entries)
            strings = [
                f.name
                for f in table.schema
                if f.type in (pa.string(), pa.binary()) or pa.types.is_dictionary(f.type)
            ]
            pq.write_table(table, buf, compression="snappy", use_dictionary=strings, write_statistics=["ts"])
            put_bytes(uri, buf.getvalue())
        except Exception as exc:  # a full disk or an unreachable store must not take serving down
            log.warning("could not write %d %s records to %s: %s", len(entries), kind, uri, exc)

    def _request_table(self, entries: list):
        """The buffered requests as one table, built column-wise (a few numpy calls per flush, not per row)."""
        import pyarrow as pa

        ins, outs = [e[2] for e in entries], [e[3] for e in entries]
        n = np.fromiter(map(len, outs), dtype=np.int64, count=len(outs))
        if n.max(initial=0) > self.max_rows:  # only then slice: most requests are within the limit
            n = np.minimum(n, self.max_rows)
            ins = [x if isinstance(x, dict) else x[:k] for x, k in zip(ins, n.tolist(), strict=True)]
            outs = [o[:k] for o, k in zip(outs, n.tolist(), strict=True)]
        total = int(n.sum())
        which = np.repeat(np.arange(len(entries), dtype=np.int32), n)  # each row's request
        ts_ms = (np.fromiter((e[0] for e in entries), dtype=np.float64, count=len(entries)) * 1000).astype(
            np.int64
        )
        one = pa.array(np.zeros(total, dtype=np.int32))
        cols: dict[str, Any] = {
            "request_id": pa.DictionaryArray.from_arrays(
                pa.array(which), pa.array([e[1] for e in entries], pa.string())
            ),
            "row": pa.array(
                np.arange(total, dtype=np.int32) - np.repeat(np.cumsum(n) - n, n).astype(np.int32), pa.int32()
            ),
            "ts": pa.array(ts_ms[which], pa.int64()).cast(pa.timestamp("ms", "UTC")),
            "model": pa.DictionaryArray.from_arrays(one, pa.array([self.model])),
            "version": pa.DictionaryArray.from_arrays(one, pa.array([self.version])),
            "deployment": pa.DictionaryArray.from_arrays(one, pa.array([self.deployment])),
        }
        numbers_only = not any(isinstance(x, dict) for x in ins)
        matrix_in = (
            np.concatenate(ins).astype(np.float32, copy=False).T.copy() if numbers_only and ins else None
        )
        for j, (name, kind) in enumerate(self.columns):
            if matrix_in is not None:  # a numbers-only model: float32, as the model read them
                cols[INPUT_PREFIX + name] = pa.array(matrix_in[j], pa.float32())
            else:
                cols[INPUT_PREFIX + name] = _input_column(ins, n, name, kind)
        matrix = np.concatenate(outs).astype(np.float32, copy=False) if outs else np.zeros((0, 1), np.float32)
        matrix = matrix.reshape(len(matrix), -1)
        if self.classes:
            cols["prediction"] = pa.DictionaryArray.from_arrays(
                pa.array(matrix.argmax(axis=1).astype(np.int32)), pa.array(self.classes, pa.string())
            )
        else:
            cols["prediction"] = pa.array(matrix[:, 0].astype(np.float64), pa.float64())
        cols["outputs"] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
        return pa.table(cols)

    def _generation_table(self, entries: list):
        """The buffered text-generation requests as one table: a row per prompt."""
        import pyarrow as pa

        rows = [
            (e[0], e[1], i, p, c) for e in entries for i, (p, c) in enumerate(zip(e[2], e[3], strict=True))
        ]
        n = len(rows)
        one = pa.array(np.zeros(n, dtype=np.int32))
        ((name, _kind),) = self.columns  # the prompt column (a chat: its JSON)
        return pa.table(
            {
                "request_id": pa.array([r[1] for r in rows], pa.string()).dictionary_encode(),
                "row": pa.array([r[2] for r in rows], pa.int32()),
                "ts": pa.array([int(r[0] * 1000) for r in rows], pa.int64()).cast(pa.timestamp("ms", "UTC")),
                "model": pa.DictionaryArray.from_arrays(one, pa.array([self.model])),
                "version": pa.DictionaryArray.from_arrays(one, pa.array([self.version])),
                "deployment": pa.DictionaryArray.from_arrays(one, pa.array([self.deployment])),
                INPUT_PREFIX + name: pa.array([r[3] for r in rows], pa.string()),
                "prediction": pa.array([r[4].text for r in rows], pa.string()),
                "prompt_chars": pa.array([len(r[3]) for r in rows], pa.int32()),
                "prompt_tokens": pa.array([r[4].prompt_tokens for r in rows], pa.int32()),
                "completion_chars": pa.array([len(r[4].text) for r in rows], pa.int32()),
                "completion_tokens": pa.array([r[4].completion_tokens for r in rows], pa.int32()),
                "finish_reason": pa.array(
                    [r[4].finish_reason for r in rows], pa.string()
                ).dictionary_encode(),
                "truncated": pa.array([bool(r[4].truncated) for r in rows], pa.bool_()),
            }
        )


_ARROW_KIND = {"numeric": "float64", "category": "string", "text": "string", "image": "binary"}


def _input_column(ins: list, n, name: str, kind: str):
    """One feature's raw values across the buffered requests (raw columns, name -> values), typed by its kind."""
    import pyarrow as pa

    values = [_typed(v, kind) for inputs, k in zip(ins, n.tolist(), strict=True) for v in inputs[name][:k]]
    return pa.array(values, getattr(pa, _ARROW_KIND[kind])())


def _typed(v: Any, kind: str) -> Any:
    if v is None or (isinstance(v, float) and v != v):
        return None
    if kind == "numeric":
        return float(v)
    if kind == "image":
        return bytes(v) if isinstance(v, bytes | bytearray) else None
    return str(v)


def _label_table(entries: list):
    import pyarrow as pa

    rows = [(ts, rid, i, lab, reward) for ts, rid, labels, reward in entries for i, lab in enumerate(labels)]
    return pa.table(
        {
            "request_id": pa.array([r[1] for r in rows], pa.string()),
            "row": pa.array([r[2] for r in rows], pa.int32()),
            "label": pa.array([str(r[3]) for r in rows], pa.string()),
            "reward": pa.array([r[4] for r in rows], pa.float64()),
            "ts": pa.array([int(r[0] * 1000) for r in rows], pa.int64()).cast(pa.timestamp("ms", "UTC")),
        }
    )


__all__ = ["INPUT_PREFIX", "RequestLog", "hour_folder", "monitoring_uri"]
