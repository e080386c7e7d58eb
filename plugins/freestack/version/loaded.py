"""A version loaded: its model on a device and everything it predicts with, the one type every reader
of a version gets (evaluate, score, the registry, the Hub, the CLI and the model server)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from freestack.version import files as F
from freestack.version.errors import NotAVersion
from freestack.version.records import Lineage, Manifest, Metrics, ModelConfig, Preprocessing
from freestack.version.sources import Source, write_local

#: the files a version in object storage that is not registered is copied with (those it has), beside its
#: config, weights and the JSON files: what transformers and the tokenizers read from a version folder
COPIED = (
    F.PREPROCESSING,
    F.TOKENIZER,
    *F.ADAPTER_FILES,
    *F.GENERATION_FILES,
    *F.OPTIONAL_TOKENIZER_FILES,
    "vocab.txt",
    "preprocessor_config.json",
)


class VersionFolder(Protocol):
    """What :func:`load_version` reads of a version folder's records: :class:`freestack.version.ModelVersion`
    is one (:meth:`~freestack.version.ModelVersion.load` calls it with itself)."""

    uri: str
    source: Source
    config: ModelConfig
    preprocessing: Preprocessing | None
    lineage: Lineage
    metrics: Metrics
    manifest: Manifest | None

    @property
    def registered(self) -> bool: ...

    @property
    def kind(self) -> str: ...

    def weight_files(self) -> tuple[str, ...]: ...

    def verify(self, copy_to: str | os.PathLike | None = None) -> None: ...


@dataclass
class LoadedVersion:
    """A version ready to predict. ``model`` is in eval mode on the device asked for; ``kind`` is
    numeric, encoded, custom, huggingface, lora or generation. A text-generation version carries its
    ``tokenizer`` (with the chat template) and ``generation_config``; a version with text columns its
    ``tokenizer_json``. :attr:`preprocessor` turns rows into the model's inputs (pandas, imported then);
    :attr:`encoder` is the raw-value encoder alone (no pandas: what the model server takes)."""

    uri: str
    kind: str
    model: Any
    config: ModelConfig
    preprocessing: Preprocessing | None
    lineage: Lineage
    metrics: Metrics
    history: list[dict[str, Any]] = field(default_factory=list)
    manifest: Manifest | None = None
    tokenizer: Any = None
    tokenizer_json: str = ""
    generation_config: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def preprocessor(self) -> Any:
        """:class:`freestack.ml.prep.Preprocessing` (rows to inputs, labels), or a text-generation
        version's :class:`freestack.ml.lm.prompts.ChatEncoding`."""
        if self.preprocessing is None:
            raise NotAVersion(
                f"{self.uri} has no {F.PREPROCESSING}; it was not written by freestack's trainer"
            )
        pre = self.preprocessing.as_dict()
        if pre.get("task") == "generation":
            from freestack.ml.lm.chat import ChatColumns
            from freestack.ml.lm.prompts import ChatEncoding

            chat = pre["chat"]
            columns = ChatColumns(**chat["columns"])
            return ChatEncoding(self.tokenizer, columns, int(chat["max_length"]), bool(chat.get("packing")))
        from freestack.ml.prep import Preprocessing as Prep

        return Prep.from_dict(pre, self.tokenizer_json)

    @cached_property
    def encoder(self) -> Any:
        """The category/text/image columns' :class:`freestack.ml.features.FeatureEncoder`; None for a
        model of numeric columns only."""
        from freestack.ml.features import FeatureEncoder

        encoder = self.preprocessing.encoder if self.preprocessing is not None else None
        return FeatureEncoder.from_dict(encoder, self.tokenizer_json) if encoder else None


def load_version(version: VersionFolder, device: Any, into: str | os.PathLike | None) -> LoadedVersion:
    """:meth:`freestack.version.ModelVersion.load`: verify, then build the model from a local folder (in
    place, ``into``, or a temporary one)."""
    if into is not None:
        Path(into).mkdir(parents=True, exist_ok=True)
        _local_copy(version, into)
        return _build(version, str(into), device)
    local = version.source.local_dir()
    if local is not None:
        version.verify()
        return _build(version, local, device)
    with tempfile.TemporaryDirectory(prefix="freestack-version-") as tmp:
        _local_copy(version, tmp)
        return _build(version, tmp, device)


def _local_copy(version: VersionFolder, dest: str | os.PathLike) -> None:
    """The version's files into ``dest``: every registered file, checked (its ``verify``),
    or for a folder not registered its config, weights and the files beside them it has."""
    if version.registered:
        version.verify(copy_to=dest)
        return
    for name in dict.fromkeys((F.CONFIG, *version.weight_files(), *COPIED, F.HISTORY)):
        try:
            write_local(Path(dest) / name, version.source.read(name))
        except FileNotFoundError:
            if name == F.CONFIG or name in version.weight_files():
                raise NotAVersion(f"{version.uri} has no {name}; it was not written by freestack") from None


def _build(version: VersionFolder, folder: str, device: Any) -> LoadedVersion:
    from freestack.ml.models import load_pretrained

    model = load_pretrained(folder, map_location="cpu", read_base=version.source.read_base)
    if str(device) != "cpu":
        model.to(device)
    model.eval()
    loaded = LoadedVersion(
        uri=version.uri,
        kind=version.kind,
        model=model,
        config=version.config,
        preprocessing=version.preprocessing,
        lineage=version.lineage,
        metrics=version.metrics,
        history=_json_file(folder, F.HISTORY) or [],
        manifest=version.manifest,
        tokenizer_json=_text_file(folder, F.TOKENIZER) if version.kind != "generation" else "",
    )
    if version.kind == "generation":  # the version's own tokenizer, chat template and generation config
        from freestack.ml.lm.prompts import load_tokenizer

        loaded.tokenizer = load_tokenizer(folder)
        loaded.generation_config = _json_file(folder, F.GENERATION_CONFIG) or {}
    return loaded


def _text_file(folder: str, name: str) -> str:
    path = Path(folder) / name
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _json_file(folder: str, name: str) -> Any:
    text = _text_file(folder, name)
    return json.loads(text) if text else None


__all__ = ["COPIED", "LoadedVersion", "VersionFolder", "load_version"]
