"""Many LoRA versions on one base, in one deployment: the version a text-generation deployment was
started with, and every other registered adapter version of the same model and base that a request names,
loaded through peft's multi-adapter API (``add_adapter`` with ``set_peft_model_state_dict``, ``set_adapter``,
``delete_adapter``) into the one ``PeftModel``, so the base's weights are in memory once: its files are read
while the batch runs, and only putting them into the model pauses it, off the event loop. Runs in the
serving environment.

A request names its version by ``model`` (the OpenAI API's field):

- ``<model>``: the version the deployment serves now. A local deploy that promotes another adapter
  version of the same base does it in place: it smoke-tests that version through this server
  (``<model>:<version>``), then names it in the server's *serves file* (``serves_file``, read again when it
  changes), so the promotion is served without a new server or a second copy of the base. A server
  started from an alias URI (``.../<model>@production``) follows that alias in the registry's
  ``aliases.json`` instead (read at most every :data:`ALIAS_TTL_S`, in a worker thread). A canary
  (``deploy.generation.canary_alias`` and ``canary_weight``) answers that share of these requests with
  its alias's version;
- ``<model>@<alias>``: any alias, read the same way;
- ``<model>:<version>``: that version.

With ``runtime_adapters`` on (and the deployment's key), a client also loads an adapter that is not a
registered version, from a folder or URI, under a name of its own (vLLM's ``POST /v1/load_lora_adapter``
and ``/v1/unload_lora_adapter``): a trainer sampling from the adapter it is training. Only its
``adapter_config.json`` and ``adapter_model.safetensors`` are read, each only when it is a regular file
(a symlink is followed to one) within its size bound, the read within :data:`READ_TIMEOUT_S`; a request
names it as ``<model>:<name>``, a name no registered version, alias or the model itself has.

Every adapter's weights, registered or named, must be finite: one NaN would make every answer of a
request for it fail in the engine's batch.

At most ``max_adapters`` versions are loaded at once; past it the least recently used is unloaded
(never the one the deployment started with, nor the active one). Each answer and request-log row names
the version that produced it. A version that is not a registered adapter on this deployment's base (a
full-weight version, another base, another model) is refused with what to do instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from freestack.registry.names import ALIASES, VERSION_RE, is_version_name
from freestack.version.errors import NotAVersion
from freestack.version.files import MARKER
from freestack.version.folder import open_folder
from freestack_server.core.fetch import FetchError, FetchSource, read_bounded, reader, split_alias

if TYPE_CHECKING:
    from freestack.ml.lm.engine import Engine
    from freestack_server.core.model import ServedModel

log = logging.getLogger("freestack.serving")

#: how long an alias read from the registry is used before it is read again (seconds)
ALIAS_TTL_S = 5.0
#: peft's name for the adapter a PeftModel was loaded with: the deployed version's
DEPLOYED = "default"
#: the most bytes a named adapter's ``adapter_config.json`` may hold (peft writes a few hundred)
CONFIG_BYTES = 64 * 1024
#: how long reading a named adapter's two files may take (seconds), wherever they are
READ_TIMEOUT_S = 60.0
#: the alias names a runtime adapter may never take, set or not yet (the registry's own words)
KNOWN_ALIASES = frozenset({"production", "staging", "previous", "champion", "challenger"})


class NotServed(Exception):
    """The version a request names cannot be served by this deployment; the message says why and what to do."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


@dataclass
class Adapters:
    """The adapter versions of one deployment (``core``: its ServedModel, loaded; ``engine``: its Engine)."""

    core: ServedModel
    engine: Engine
    #: the file naming the version ``<model>`` answers with (written by an in-place promotion)
    serves_file: Path | None = None
    loaded: OrderedDict[str, str] = field(default_factory=OrderedDict)  # version -> peft adapter name
    _aliases: tuple[float, dict[str, object]] = (0.0, {})  # aliases.json as read
    _loading: dict[str, asyncio.Future] = field(default_factory=dict)
    _refused: dict[str, NotServed] = field(default_factory=dict)
    _serves: tuple[int, str | None] = (0, None)  # the serves file's mtime and version
    runtime: set[str] = field(default_factory=set)  # loaded by name from a path, not registered versions

    def __post_init__(self) -> None:
        self.name = self.core.describe()["model"]
        self.bounds = self.core.generator.bounds  # deploy.generation: max_adapters, the canary
        self.folder = self.core.model_uri.rsplit("/", 1)[0]  # <root>/registry/<model>
        alias = split_alias(self.core.requested_uri)
        self.alias = alias[2] if alias else None  # what "<model>" means: None, the version deployed
        self.deployed = self.core.version
        self.base = self.core.opened.adapter_base
        peft = self.core.generator.lm
        self.peft = peft if hasattr(peft, "load_adapter") and self.base is not None else None
        self.loaded[self.deployed] = DEPLOYED
        #: the most bytes a named adapter's weights may hold: a LoRA of full rank on every module of the
        #: base, in float32, is at most twice the base's parameters; 1 MiB more for the header
        base_numel = sum(p.numel() for p in self.core.generator.lm.parameters())
        self.weights_limit = 8 * base_numel + (1 << 20)
        if self.peft is not None:
            self.engine.activate = self.peft.set_adapter
            self.engine.adapter = DEPLOYED

    # -- which version a request names ----------------------------------------------------------------
    def version_of(self, model: str) -> str:
        """The version ``model`` names now (NotServed, 404, for another model or an unknown alias)."""
        if model == self.name:
            if self.bounds.canary_alias and random.random() < self.bounds.canary_weight:
                return self._canary()
            return self.serving()
        if model in self.runtime:  # an adapter loaded by name, called by it as vLLM's clients do
            return model
        name, sep, rest = model.partition("@") if "@" in model else model.partition(":")
        if name != self.name or not sep or not rest:
            raise NotServed(
                f"the model {model!r} does not exist here: this deployment serves {self.name!r} "
                f"('{self.name}', '{self.name}@<alias>' or '{self.name}:<version>'; GET /v1/models lists them)"
            )
        if "@" in model:
            return self._alias(rest)
        if not is_version_name(rest):
            raise NotServed(
                f"{rest!r} is not a version name: letters, digits, '.', '_' and '-' (GET /v1/models lists them)",
                400,
            )
        return rest

    def _canary(self) -> str:
        """The canary alias's version; the deployment's own when the alias is gone (logged once a read)."""
        try:
            return self._alias(self.bounds.canary_alias)
        except NotServed:
            log.warning(
                "the canary alias %r is not set: answering with %s", self.bounds.canary_alias, self.name
            )
            return self.serving()

    def serving(self) -> str:
        """The version the deployment serves now: its alias's, the serves file's, else the one it started with."""
        if self.alias:
            return self._alias(self.alias)
        return self._served_file() or self.deployed

    def _served_file(self) -> str | None:
        """The version the serves file names, read again when its mtime changes (None: no such file)."""
        try:
            mtime = self.serves_file.stat().st_mtime_ns if self.serves_file else 0
        except FileNotFoundError:
            mtime = 0
        if mtime != self._serves[0]:
            version = self.serves_file.read_text().strip() if mtime else None
            if version is not None and not VERSION_RE.match(version):
                log.warning(
                    "%s names no version (%r): serving %s", self.serves_file, version[:80], self.deployed
                )
                version = None
            elif version is not None and version != self._serves[1]:
                log.info("%s now answers with %s:%s (%s)", self.name, self.name, version, self.serves_file)
            self._serves = (mtime, version)
        return self._serves[1]

    def _alias(self, alias: str) -> str:
        aliases = self._table()
        version = aliases.get(alias)
        if not isinstance(version, str):
            known = sorted(a for a, v in aliases.items() if isinstance(v, str))
            raise NotServed(
                f"model {self.name!r} has no alias {alias!r} (aliases: {', '.join(known) or 'none'})"
            )
        return version

    def _table(self) -> dict[str, object]:
        """The registry's aliases of the model, as :meth:`refresh` read them last."""
        return self._aliases[1]

    async def refresh(self) -> None:
        """Read the registry's aliases again once :data:`ALIAS_TTL_S` old, in a worker thread (a registry on
        S3 or behind the Data API is a network read, which must not hold the event loop)."""
        if time.monotonic() - self._aliases[0] > ALIAS_TTL_S:
            aliases = await asyncio.get_running_loop().run_in_executor(None, self._read_aliases)
            self._aliases = (time.monotonic(), aliases)

    def _read_aliases(self) -> dict[str, object]:
        try:
            aliases = json.loads(reader(self.folder)(self.folder, ALIASES))
        except (FileNotFoundError, FetchError, ValueError) as exc:
            log.warning("cannot read %s/%s (%s): using the aliases read before", self.folder, ALIASES, exc)
            return self._aliases[1]
        return aliases if isinstance(aliases, dict) else {}

    def listed(self) -> list[str]:
        """The names a client may send (``/v1/models``): the model, its aliases, the versions loaded."""
        aliases = sorted(a for a, v in self._table().items() if isinstance(v, str))
        versions = [f"{self.name}:{v}" for v in self.loaded]
        return [self.name, *[f"{self.name}@{a}" for a in aliases], *versions]

    async def answerer(self, model: str) -> tuple[str, str | None]:
        """The version that answers a request for ``model``, and its peft adapter (None: the model as
        deployed). ``<model>`` whose alias now names a version this deployment cannot serve (a full-weight
        version, another base: the deploy starts its own server for it) is answered by the one deployed."""
        await self.refresh()
        version = self.version_of(model)
        try:
            return version, await self.adapter_of(version)
        except NotServed as exc:
            if model != self.name or version == self.deployed:
                raise
            log.warning("%s: %s; answering with %s:%s", model, exc, self.name, self.deployed)
            return self.deployed, await self.adapter_of(self.deployed)

    # -- loading a version's adapter ------------------------------------------------------------------
    async def adapter_of(self, version: str) -> str | None:
        """The peft adapter that answers for ``version``, loaded if need be (None: the model as deployed)."""
        if version in self.loaded:
            self.loaded.move_to_end(version)
            return self.loaded[version] if self.peft is not None else None
        if self.peft is None:
            raise NotServed(
                f"{self.name}:{version} is not served here: this deployment serves {self.name}:{self.deployed}, "
                "a full-weight version, alone (only LoRA versions of one base share a deployment; "
                "GET /v1/models lists what it serves)"
            )
        if version in self._refused:  # a registered version never changes: refused once, refused again
            raise self._refused[version]
        if version not in self._loading:
            self._loading[version] = asyncio.ensure_future(self._load(version))
        try:
            return await asyncio.shield(self._loading[version])
        finally:
            if self._loading.get(version) is not None and self._loading[version].done():
                self._loading.pop(version, None)

    async def _load(self, version: str) -> str:
        uri = f"{self.folder}/{version}"
        folder = Path(self.core.cache_dir) / "adapters" / version
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._fetch, uri, folder)
        except NotServed as exc:
            if exc.status == 400:  # not an adapter on this base: it never will be
                self._refused[version] = exc
            raise
        loop = asyncio.get_running_loop()
        read = await loop.run_in_executor(None, _read_adapter, folder)  # the batch runs on meanwhile
        self._evict()
        paused, _ = await loop.run_in_executor(None, self._inject, version, *read)
        self.loaded[version] = version
        log.info(
            "loaded adapter %s:%s on the deployment's base (%d adapters loaded; the batch paused %.1f ms)",
            self.name,
            version,
            len(self.loaded),
            1000 * paused,
        )
        return version

    def _inject(self, version: str, config, weights) -> tuple[float, object]:
        """The adapter's modules and weights into the model (peft's ``add_adapter`` and
        ``set_peft_model_state_dict``, what ``load_adapter`` does once it has read the files), with the batch
        paused for that moment only: on a worker thread, so the event loop goes on sending the streams. The
        seconds the batch was paused, and peft's load result (the weights it took and left)."""
        from peft import set_peft_model_state_dict

        with self.engine.paused():
            began = time.perf_counter()
            self.peft.add_adapter(version, config)
            loaded = set_peft_model_state_dict(self.peft, weights, adapter_name=version)
            self.peft.eval()
            return time.perf_counter() - began, loaded

    def _fetch(self, uri: str, folder: Path) -> None:
        """The version's files, checked against its registration, into ``folder``: when it is an adapter on
        this deployment's base."""
        version = uri.rsplit("/", 1)[1]
        try:
            opened = open_folder(uri, FetchSource(uri))
        except (FileNotFoundError, NotAVersion):  # named, not where: the registry's place is the server's own
            raise NotServed(f"model {self.name!r} has no registered version {version!r}") from None
        except FetchError as exc:
            raise NotServed(str(exc), 503) from None
        if opened.manifest is None:
            raise NotServed(f"{self.name}:{version} is not registered (no commit marker): register it first")
        if opened.adapter_base is None:
            raise NotServed(
                f"{self.name}:{version} is not a LoRA adapter: serve it by its own deployment", 400
            )
        if opened.adapter_base != self.base:
            raise NotServed(
                f"{self.name}:{version} is an adapter on another base than this deployment's: serve it by its "
                "own deployment",
                400,
            )
        os.makedirs(folder, exist_ok=True)
        opened.verify(copy_to=folder)

    # -- adapters a client loads by name (runtime_adapters) ------------------------------------------
    async def load_named(self, name: str, path: str) -> None:
        """Load the LoRA adapter at ``path`` (a folder or URI this server reads) as ``<model>:<name>``."""
        if not self.bounds.runtime_adapters:
            raise NotServed(
                "loading adapters at runtime is off: deploy with generation.runtime_adapters: true (and a key)"
            )
        if self.peft is None:
            raise NotServed(
                f"{self.name}:{self.deployed} is a full-weight version: no adapter loads on it", 400
            )
        if not is_version_name(name):
            raise NotServed(f"lora_name {name!r}: letters, digits, '.', '_' and '-'", 400)
        loop = asyncio.get_running_loop()
        taken = await loop.run_in_executor(None, self._taken, name)
        if taken:
            raise NotServed(f"lora_name {name!r} {taken}: give the adapter a name of its own", 400)
        try:
            read = loop.run_in_executor(None, _read_named, path, self.weights_limit)
            config, weights = await asyncio.wait_for(read, READ_TIMEOUT_S)
        except TimeoutError:
            raise NotServed(f"{path}: reading the adapter took over {READ_TIMEOUT_S:.0f} s", 400) from None
        self._evict()
        try:
            paused, loaded = await loop.run_in_executor(None, self._inject, name, config, weights)
            _all_taken(name, loaded)
        except (RuntimeError, ValueError, KeyError) as exc:  # peft: modules or shapes of another base
            if name in getattr(self.peft, "peft_config", {}):
                self._drop(name)
            raise NotServed(f"{path} does not fit this deployment's base: {exc}", 400) from None
        self.loaded[name] = name
        self.runtime.add(name)
        log.info(
            "loaded adapter %s:%s from %s (the batch paused %.1f ms)", self.name, name, path, 1000 * paused
        )

    def _taken(self, name: str) -> str | None:
        """Why ``name`` cannot name a runtime adapter (None: it can): a name a request already means
        something by, the model's, an alias's, a version's (registered or loaded), is never taken over."""
        if name == self.name:
            return "is the model's own name"
        if name in self.loaded:
            return "is loaded already (unload it first)"
        if name in KNOWN_ALIASES or name in self._table():
            return "is an alias's name"
        try:
            reader(self.folder)(self.folder, f"{name}/{MARKER}")
        except (FileNotFoundError, FetchError, OSError):
            return None
        return f"is a registered version of {self.name!r}"

    async def unload_named(self, name: str) -> None:
        """Unload an adapter :meth:`load_named` loaded (waiting for none of its requests to run)."""
        if not self.bounds.runtime_adapters:
            raise NotServed(
                "loading adapters at runtime is off: deploy with generation.runtime_adapters: true"
            )
        if name not in self.runtime:
            raise NotServed(f"no adapter named {name!r} was loaded at runtime (GET /v1/models lists them)")
        engine = self.engine
        if {a for a, _ in engine.waiting} & {name} or (engine.running and engine.adapter == name):
            raise NotServed(
                f"{name!r} has requests running or waiting: unload it once they are answered", 409
            )
        self.runtime.discard(name)
        self._drop(self.loaded.pop(name))
        log.info("unloaded adapter %s:%s (asked for)", self.name, name)

    def _drop(self, adapter: str) -> None:
        engine = self.engine
        with engine.paused():
            if engine.adapter == adapter:  # idle, but active: the deployed version's takes its place
                engine.activate(DEPLOYED)
                engine.adapter = DEPLOYED
            self.peft.delete_adapter(adapter)

    def _evict(self) -> None:
        """Unload the least recently used versions past ``max_adapters``: never the deployed one, nor one
        with requests running or waiting."""
        engine = self.engine
        busy = {a for a, _ in engine.waiting} | ({engine.adapter} if engine.running else set())
        while len(self.loaded) >= self.bounds.max_adapters:
            victim = next((v for v, a in self.loaded.items() if a != DEPLOYED and a not in busy), None)
            if victim is None:
                return
            self.runtime.discard(victim)
            self._drop(self.loaded.pop(victim))
            log.info("unloaded adapter %s:%s (least recently used)", self.name, victim)


def _read_adapter(folder: Path):
    """A LoRA adapter's config and weights, read from its checked files (the slow part of a load, done while
    the batch runs)."""
    from peft import LoraConfig
    from peft.utils import load_peft_weights

    config = LoraConfig.from_pretrained(str(folder))
    config.inference_mode = True
    weights = load_peft_weights(str(folder), device="cpu")
    try:
        _finite(weights)
    except ValueError as exc:
        raise NotServed(f"{folder.name}: {exc}", 400) from None
    return config, weights


def _finite(weights) -> None:
    """ValueError naming the first weight that is not floating point or holds a NaN or an infinity."""
    import torch

    for key, tensor in weights.items():
        if not tensor.is_floating_point():
            raise ValueError(f"the weight {key!r} is {tensor.dtype}, not floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"the weight {key!r} holds NaN or infinite values: an adapter that would fail every "
                "answer is not loaded (train it again, or save it from a finite checkpoint)"
            )


def _all_taken(name: str, loaded) -> None:
    """ValueError unless the adapter's weights were every one of its modules' and nothing else (peft loads
    with ``strict=False``: an adapter of other modules would load as untrained zeros)."""
    unexpected = list(loaded.unexpected_keys)
    missing = [k for k in loaded.missing_keys if f".{name}." in k]
    if unexpected or missing:
        sample = (unexpected or missing)[:3]
        raise ValueError(
            f"{len(unexpected)} of its weights name no module of this base, and {len(missing)} of its modules "
            f"have no weights (e.g. {sample}): save the adapter of a model on this deployment's base"
        )


#: the files of an adapter loaded by name: its config and its weights as safetensors, nothing else
NAMED_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _read_named(path: str, weights_limit: int):
    """The config and weights of the adapter at ``path`` (a folder, or a URI the server's storage reads):
    only its JSON config and its safetensors, never a pickle, each a regular file within its bound
    (:func:`freestack_server.core.fetch.read_bounded`); NotServed (400) naming what is wrong."""
    from peft import LoraConfig

    files = {}
    for name, limit in zip(NAMED_FILES, (CONFIG_BYTES, weights_limit), strict=True):
        try:
            files[name] = read_bounded(path, name, limit)
        except FileNotFoundError:
            raise NotServed(
                f"{path} holds no {name}: an adapter is loaded from its adapter_config.json and "
                "adapter_model.safetensors (save it with peft's save_pretrained)",
                400,
            ) from None
        except (
            FetchError,
            OSError,
            ValueError,
        ) as exc:  # a folder, a FIFO, too large, a NUL byte in the path
            raise NotServed(f"{path!r} cannot be read: {name}: {exc}", 400) from None
    try:
        fields = json.loads(files["adapter_config.json"])
        if not isinstance(fields, dict):
            raise ValueError("it is not a JSON object")
        config = LoraConfig(**{k: v for k, v in fields.items() if k in LoraConfig.__dataclass_fields__})
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a config peft does not take
        raise NotServed(f"{path}: adapter_config.json is not a LoRA config peft reads: {exc}", 400) from None
    weights = _safetensors(path, files["adapter_model.safetensors"])
    config.inference_mode = True
    return config, weights


def _safetensors(path: str, data: bytes):
    """The tensors of a safetensors file's bytes, finite (:func:`_finite`); NotServed (400) naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        weights = load_safetensors(data)
        _finite(weights)
    except (SafetensorError, ValueError, TypeError, OverflowError) as exc:  # a pickle, truncated, bad offsets
        raise NotServed(
            f"{path}: adapter_model.safetensors is not an adapter's safetensors ({exc}): save it with "
            "peft's save_pretrained",
            400,
        ) from None
    return weights


__all__ = ["ALIAS_TTL_S", "Adapters", "NotServed"]
