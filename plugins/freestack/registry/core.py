"""The model registry: immutable versions in Hugging Face layout, CAS-moved aliases, model cards.

Layout under a storage root (``file://``, ``s3://conn@bucket/prefix`` or ``data://``)::

    registry/<model>/<version>/            a model version folder in Hugging Face layout (its files:
                                           freestack.version.files), _REGISTERED.json committing it
    registry/<model>/aliases.json          {"production": v, "staging": v, "previous": v, "history": [...]}
    candidates/<model>/<version>/          a candidate: trained (or published by a sweep) and being
                                           evaluated, not registered yet; outside the registry

**Versions are immutable, and only complete ones are in the registry.** A candidate is written and
evaluated under ``candidates/``; registering copies its files into ``registry/<model>/<version>/`` and
then creates ``_REGISTERED.json`` with create-if-absent (:func:`freestack.storage.cas.create`): that
marker is the commit point. A registration that fails removes everything it wrote, so a failure leaves
no version folder behind; one killed outright (``kill -9``) leaves a folder without the marker, which
is not a version: listings ignore it and a retry of the registration replaces it. Once the marker
exists, registering the same version again fails with :class:`VersionExists`. The marker holds a
manifest (sha256 and size of every file), so :meth:`ModelRegistry.verify` and :meth:`load` (through
:mod:`freestack.version`) notice a file changed behind the registry's back.

**Aliases move atomically**: ``aliases.json`` is read with its token and replaced with
compare-and-swap (``If-Match`` on S3, a locked compare on local disk); a lost race reads again and
retries, so concurrent promotions serialise and the history keeps every move.

**The gate's decision holds**: ``latest`` is the newest version the gate did not block, and an alias moves
to a version the gate blocked only with an override that says why (``allow_blocked``), which the move's
history event records with the gate's reasons (:class:`VersionBlocked` otherwise). A version registered
with no gate decision (by hand, or trained with ``register=True``) was blocked by nothing. A rollback to a
version that was production before needs no override: it served already.

No Airflow import happens at module level: the registry is plain Python usable from a notebook.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freestack.errors import FreestackError
from freestack.registry.card import CardInfo, metrics_summary, render_card
from freestack.registry.names import ALIAS_RE, ALIASES, RESERVED, VERSION_RE, is_version_name
from freestack.storage import cas, check_relative, join, sha256_of, storage_root, to_path, write_bytes
from freestack.storage.objects import TMP_MARK, subfolders
from freestack.version import LoadedVersion, Manifest, ManifestFile, ModelVersion
from freestack.version import open as open_version
from freestack.version.files import CARD, LINEAGE, MARKER, METRICS, missing_model_files
from freestack.version.write import read_lineage, write_lineage

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)


class RegistryError(FreestackError):
    """A registry operation could not be done."""


class VersionExists(RegistryError):  # noqa: N818  (reads as the condition)
    """The version is already registered: versions are immutable."""


class VersionNotFound(RegistryError):  # noqa: N818
    """No committed version (or alias) of that name."""


class VersionBlocked(RegistryError):  # noqa: N818  (reads as the condition)
    """The gate blocked the version an alias was to point at, and no override said why it may anyway:
    ``version`` and the gate's ``reasons`` name it."""

    def __init__(self, message: str, version: str, reasons: list[str]) -> None:
        super().__init__(message)
        self.version, self.reasons = version, reasons


class AliasMoved(RegistryError):  # noqa: N818  (reads as the condition)
    """The alias no longer points where the caller judged it from: someone moved it meanwhile.
    ``expected`` is where the caller saw it, ``current`` where it is, ``move`` that move in words."""

    def __init__(
        self, message: str, current: str | None, expected: str | None = None, move: str | None = None
    ) -> None:
        super().__init__(message)
        self.current, self.expected, self.move = current, expected, move


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def check_version(version: str) -> str:
    if not is_version_name(version):
        raise RegistryError(
            f"version {version!r} is not a valid version name: use letters, digits, '.', '_' or '-' "
            "(at most 128, starting with a letter or digit), e.g. v20240105-1a2b3c4d"
        )
    return version


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias) or alias in RESERVED:
        raise RegistryError(
            f"alias {alias!r} is not valid: lower-case letters, digits, '_' or '-', starting with a letter "
            f"(not {sorted(RESERVED)}); e.g. production, staging, previous"
        )
    return alias


def walk_files(folder: ObjectStoragePath) -> list[tuple[str, ObjectStoragePath]]:
    """(relative path, path) of every file under ``folder``, recursively, sorted; hides dot-files and
    temporaries at any depth."""
    fs = folder.fs
    base = folder.path.rstrip("/")
    fs.invalidate_cache(base)
    try:
        found = fs.find(base)
    except FileNotFoundError:
        return []
    # data:// lists paths under the owner's name where the folder was named through ".my"
    owner = getattr(fs, "owner", None) if base.startswith(".my/") else None
    bases = [base] + ([f"{owner}/{base[4:]}"] if owner else [])
    out = []
    for full in found:
        full = str(full)
        prefix = next((b for b in bases if full.startswith(b + "/")), None)
        if prefix is None:
            continue
        rel = full[len(prefix) + 1 :]
        parts = rel.split("/")
        if any(p.startswith(".") or TMP_MARK in p for p in parts):
            continue
        out.append((rel, join(folder, rel)))
    return sorted(out)


def remove_tree(folder: ObjectStoragePath) -> None:
    """Remove ``folder`` and everything under it, on any backend (nothing there is fine)."""
    fs = folder.fs
    fs.invalidate_cache(folder.path)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(folder.path):
            fs.rm(folder.path, recursive=True)
    fs.invalidate_cache(folder.path)


class ModelRegistry:
    """Versions and aliases of one model under ``<root>/registry/<model>/``."""

    def __init__(self, root_uri: str | ObjectStoragePath, model: str):
        self.model = check_relative(model, what="model name")
        if not self.model or "/" in self.model:
            raise RegistryError(f"model name {model!r} must be one plain path segment")
        self.root = to_path(root_uri)
        self.folder = join(self.root, "registry", self.model)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r}, {self.model!r})"

    # -- paths ----------------------------------------------------------------------------------------
    def version_path(self, version: str) -> ObjectStoragePath:
        return join(self.folder, check_version(version))

    def version_uri(self, version: str) -> str:
        return str(self.version_path(version))

    def _marker(self, version: str) -> ObjectStoragePath:
        return join(self.version_path(version), MARKER)

    def _aliases_path(self) -> ObjectStoragePath:
        return join(self.folder, ALIASES)

    def _read_marker(self, version: str) -> dict[str, Any] | None:
        got = cas.read(self._marker(version))
        return json.loads(got.data) if got is not None else None

    def is_registered(self, version: str) -> bool:
        return self._read_marker(version) is not None

    # -- registration -----------------------------------------------------------------------------------
    def candidate_path(self, version: str) -> ObjectStoragePath:
        """Where a candidate of ``version`` is written and evaluated before it is registered:
        ``candidates/<model>/<version>/`` beside the registry, never inside it."""
        return join(self.root, "candidates", self.model, check_version(version))

    def remove_candidate(self, version: str) -> None:
        """Remove the candidate folder of ``version`` (after its registration copied it)."""
        remove_tree(self.candidate_path(version))

    def register(
        self,
        src_uri: str | ObjectStoragePath,
        version: str,
        *,
        lineage_updates: dict[str, Any] | None = None,
        card: CardInfo | dict[str, Any] | None = None,
    ) -> str:
        """Copy the model folder ``src_uri`` (with its subfolders) to ``registry/<model>/<version>/``
        and commit it; return the version's URI. :class:`VersionExists` if it is registered already.
        All or nothing: a registration that fails removes what it wrote, and raises.

        ``lineage_updates`` are merged (top-level keys) into the copied lineage (e.g. the
        gate decision); the model card ``README.md`` is rendered from ``card`` plus the version's
        metrics and lineage."""
        check_version(version)
        self._refuse_existing(version)
        src = to_path(src_uri)
        files = walk_files(src)
        names = {rel for rel, _ in files}
        missing = missing_model_files(names)
        if missing:
            raise RegistryError(
                f"{src} is not a model folder in Hugging Face layout: {', '.join(missing)} missing "
                f"(found: {sorted(names) or 'nothing'})"
            )
        dest = self.version_path(version)
        if str(dest).rstrip("/") == str(src).rstrip("/"):
            raise RegistryError(
                f"{src} is the folder of version {version!r} itself; register from the candidate's folder "
                f"(e.g. {self.candidate_path(version)})"
            )
        remove_tree(dest)  # no marker (checked above): left over by a registration killed outright
        try:
            lineage = self._copy(src, files, version)
            self._finish(version, lineage, lineage_updates, card)
            return self._commit(version, source=str(src), expected=(names - {MARKER}) | {CARD, LINEAGE})
        except BaseException:
            self._discard(version)
            raise

    def _copy(
        self, src: ObjectStoragePath, files: list[tuple[str, ObjectStoragePath]], version: str
    ) -> dict[str, Any]:
        """Copy the model files into the version folder; return the source's lineage."""
        dest = self.version_path(version)
        for rel, path in files:
            if rel in (MARKER, CARD, LINEAGE):
                continue
            write_bytes(join(dest, rel), path.read_bytes())
        lineage = read_lineage(src).as_dict() if any(rel == LINEAGE for rel, _ in files) else {}
        lineage.setdefault("registered_from", str(src))
        return lineage

    def _discard(self, version: str) -> None:
        """Remove what a failed registration wrote, unless the version got committed (by this attempt
        before it failed, or by a concurrent one): a failure leaves no version folder behind."""
        try:
            if self.is_registered(version):
                return
            remove_tree(self.version_path(version))
        except Exception as exc:  # the failure that got here is the one to report
            log.warning(
                "could not remove %s after its registration failed: %s", self.version_path(version), exc
            )

    def _refuse_existing(self, version: str) -> None:
        marker = self._read_marker(version)
        if marker is not None:
            raise VersionExists(
                f"version {version!r} of model {self.model!r} is already registered (at "
                f"{marker.get('registered_at')}) and versions are immutable; register under a new version"
            )

    def _finish(
        self,
        version: str,
        lineage: dict[str, Any],
        lineage_updates: dict[str, Any] | None,
        card: CardInfo | dict[str, Any] | None,
    ) -> None:
        lineage = {**lineage, **(lineage_updates or {})}
        lineage["model"] = lineage.get("model") or self.model
        lineage["version"] = version
        write_lineage(self.version_path(version), lineage)
        self.write_card(version, card)  # always ours: replaces the generic card save_pretrained writes

    def _commit(self, version: str, *, source: str, expected: set[str]) -> str:
        files = {
            rel: ManifestFile(sha256=sha256_of(path), size=path.stat().st_size)
            for rel, path in walk_files(self.version_path(version))
            if rel != MARKER
        }
        if set(files) != expected:
            raise RegistryError(
                f"{self.version_path(version)} changed while {version!r} was being registered (missing: "
                f"{sorted(expected - set(files)) or 'none'}; unexpected: {sorted(set(files) - expected) or 'none'}); "
                "register it again"
            )
        marker = Manifest(model=self.model, version=version, registered_at=_now(), source=source, files=files)
        try:
            cas.create(self._marker(version), _dumps(marker.as_dict()))
        except cas.CasConflict:
            raise VersionExists(
                f"version {version!r} of model {self.model!r} was registered by someone else meanwhile; "
                "versions are immutable: register under a new version"
            ) from None
        log.info(
            "registered %s %s at %s (%d files)", self.model, version, self.version_path(version), len(files)
        )
        return self.version_uri(version)

    # -- reading ------------------------------------------------------------------------------------------
    def _read_json(self, version: str, name: str) -> Any:
        p = join(self.version_path(version), name)
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            return None

    def versions(self) -> list[dict[str, Any]]:
        """The committed versions, oldest first: version, created, uri, metrics summary, aliases."""
        names = [n for n in subfolders(self.folder) if not n.startswith(".") and VERSION_RE.match(n)]
        aliases = self.aliases() if names else {}  # no versions: nothing more to read
        out = []
        for name in names:
            marker = self._read_marker(name)
            if marker is None:
                continue  # a crashed or unfinished registration: not a version
            out.append(self._summary(name, marker, aliases))
        return sorted(out, key=lambda v: (v["created"], v["version"]))

    def lineage(self, version: str) -> dict[str, Any] | None:
        """A committed version's lineage (None for an unknown version or one without it)."""
        return self._read_json(check_version(version), LINEAGE)

    def _summary(self, version: str, marker: dict[str, Any], aliases: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": version,
            "created": marker.get("registered_at"),
            "uri": self.version_uri(version),
            "metrics": metrics_summary(self._read_json(version, METRICS) or {}),
            "aliases": sorted(a for a, v in aliases.items() if a != "history" and v == version),
        }

    def get(self, version_or_alias: str) -> dict[str, Any]:
        """One committed version: the summary plus its full metrics, lineage, files and card text."""
        version = self.resolve(version_or_alias)
        marker = self._read_marker(version)
        assert marker is not None
        out = self._summary(version, marker, self.aliases())
        readme = join(self.version_path(version), CARD)
        out.update(
            metrics_full=self._read_json(version, METRICS) or {},
            lineage=self._read_json(version, LINEAGE) or {},
            files=marker.get("files", {}),
            source=marker.get("source"),
            card=readme.read_text() if readme.exists() else None,
        )
        return out

    def resolve(self, version_or_alias: str) -> str:
        """The committed version an alias (``production``...), ``latest`` or a version name means."""
        if version_or_alias == "latest":
            return self.latest()
        if ALIAS_RE.match(version_or_alias) and version_or_alias not in RESERVED:
            target = self.aliases().get(version_or_alias)
            if isinstance(target, str):
                return target
        if is_version_name(version_or_alias) and self.is_registered(version_or_alias):
            return version_or_alias
        known = ", ".join(v["version"] for v in self.versions()[-5:]) or "none"
        raise VersionNotFound(
            f"{version_or_alias!r} is not registered as a version or alias of model {self.model!r} (recent "
            f"versions: {known}; "
            f"aliases: {', '.join(a for a in self.aliases() if a != 'history') or 'none'})"
        )

    def latest(self) -> str:
        """What ``latest`` means: the newest committed version the gate did not block (one it passed, or one
        registered with no gate decision); :class:`VersionNotFound` saying so when it blocked every one."""
        versions = self.versions()
        if not versions:
            raise VersionNotFound(f"model {self.model!r} has no registered version yet")
        aliases = self.aliases()
        for v in reversed(versions):
            if not is_blocked(self.gate_of(v["version"], aliases=aliases)):
                return v["version"]
        newest = versions[-1]["version"]
        raise VersionNotFound(
            f"model {self.model!r} has no version its gate passed: 'latest' is the newest one the gate did not "
            f"block, and it blocked all {len(versions)} registered (the newest: {newest}). Name a version to use "
            "a blocked one (pointing an alias at it takes an override, allow_blocked), or train a candidate "
            "that passes the gate"
        )

    def open(self, version_or_alias: str) -> ModelVersion:
        """The committed version an alias or a version name means, its records read
        (:func:`freestack.version.open`)."""
        return open_version(self.version_uri(self.resolve(version_or_alias)))

    def verify(self, version: str) -> None:
        """Raise :class:`~freestack.version.VersionCorrupt` unless every file matches the registration
        manifest (:meth:`freestack.version.ModelVersion.verify`)."""
        opened = open_version(self.version_uri(version))
        if not opened.registered:
            raise VersionNotFound(f"version {version!r} of model {self.model!r} is not registered")
        opened.verify()

    # -- aliases ------------------------------------------------------------------------------------------
    def aliases(self) -> dict[str, Any]:
        got = cas.read(self._aliases_path())
        return json.loads(got.data) if got is not None else {}

    def _move(self, change, *, attempts: int = 200) -> dict[str, Any]:
        """Apply ``change(aliases) -> aliases`` with compare-and-swap, retrying lost races."""
        path = self._aliases_path()
        for attempt in range(attempts):
            got = cas.read(path)
            new = change(json.loads(got.data) if got is not None else {})  # a fresh copy to change
            try:
                if got is None:
                    cas.create(path, _dumps(new))
                else:
                    cas.replace(path, _dumps(new), got.token)
                return new
            except cas.CasConflict:
                time.sleep(min(0.002 * (attempt + 1), 0.05))
        raise RegistryError(f"{path}: gave up after {attempts} lost races to move an alias")

    def _require_committed(self, version: str) -> str:
        check_version(version)
        if not self.is_registered(version):
            raise VersionNotFound(
                f"version {version!r} of model {self.model!r} is not registered; aliases may only point at "
                "registered versions (register it first)"
            )
        return version

    def _still(self, alias: str, a: dict[str, Any], expect: str | None | bool, version: str | None) -> None:
        """:class:`AliasMoved` unless ``alias`` is still ``expect`` (False: no check) in the aliases ``a``;
        an alias that points at ``version`` already passes (a retry of the same move finds it done)."""
        old = a.get(alias)
        if expect is False or old == expect or (version is not None and old == version):
            return
        move = self.last_move(alias, a)
        raise AliasMoved(
            f"{alias} of {self.model!r} is {old or 'unset'}, no longer {expect or 'unset'}: "
            f"{move or 'moved meanwhile'}",
            old,
            expect or None,
            move,
        )

    def promote(
        self,
        version_or_alias: str,
        *,
        reason: str | None = None,
        by: str | None = None,
        expect: str | None | bool = False,
        allow_blocked: str | None = None,
    ) -> dict[str, Any]:
        """production ← version and previous ← the old production, atomically; return the aliases.
        ``by`` (who or what moved it: the gate, an approver, a user's DAG run) goes into the history.
        With ``expect`` (a version, or None for "no production yet"), the move happens only while
        production is still that version, in the same compare-and-swap: else :class:`AliasMoved`.
        A version the gate blocked moves only with ``allow_blocked`` saying why (:meth:`_override`)."""
        return self.set_alias(
            "production", version_or_alias, reason=reason, by=by, expect=expect, allow_blocked=allow_blocked
        )

    def set_alias(
        self,
        alias: str,
        version_or_alias: str,
        *,
        reason: str | None = None,
        by: str | None = None,
        expect: str | None | bool = False,
        allow_blocked: str | None = None,
    ) -> dict[str, Any]:
        """Point ``alias`` at a registered version (``production`` behaves as :meth:`promote`: previous ←
        the old production); with ``expect``, only while the alias is still that version (else
        :class:`AliasMoved`). A version the gate blocked takes it only with ``allow_blocked`` saying why
        (:meth:`_override`)."""
        check_alias(alias)
        version = self._require_committed(self.resolve(version_or_alias))
        lineage = self.lineage(version)
        production = alias == "production"

        def change(a: dict[str, Any]) -> dict[str, Any]:
            self._still(alias, a, expect, version)
            old = a.get(alias)
            if old == version:
                return a
            override = self._override(alias, version, a, lineage, allow_blocked)
            if production and old:
                a["previous"] = old
            a[alias] = version
            a.setdefault("history", []).append(
                _event("promote" if production else "set", alias, version, old, reason, by, override)
            )
            return a

        out = self._move(change)
        if production:
            log.info("model %s: production -> %s (previous %s)", self.model, version, out.get("previous"))
        return out

    def rollback(
        self,
        *,
        to: str | None = None,
        reason: str | None = None,
        by: str | None = None,
        expect: str | None | bool = False,
        allow_blocked: str | None = None,
    ) -> dict[str, Any]:
        """production ← ``to`` (default: previous) and previous ← the rolled-back version; return the
        aliases. With ``expect``, only while production is still that version, in the same
        compare-and-swap (else :class:`AliasMoved`, and nothing changes). A version that was production
        before goes back whatever its gate decided; one the gate blocked that never was takes
        ``allow_blocked`` saying why, as :meth:`promote` does."""
        target = self._require_committed(self.resolve(to)) if to else None

        def change(a: dict[str, Any]) -> dict[str, Any]:
            self._still("production", a, expect, target)
            prev, cur = target or a.get("previous"), a.get("production")
            if not prev:
                raise RegistryError(
                    f"model {self.model!r} has no 'previous' version to roll back to "
                    f"(production: {cur or 'none'})"
                )
            if prev == cur:
                return a  # there already (a retry of this rollback)
            override = None if served(a, prev) else self._override("production", prev, a, None, allow_blocked)
            a["production"], a["previous"] = prev, cur
            a.setdefault("history", []).append(
                _event("rollback", "production", prev, cur, reason, by, override)
            )
            return a

        out = self._move(change)
        log.info("model %s: rolled back production to %s", self.model, out["production"])
        return out

    def _override(
        self,
        alias: str,
        version: str,
        aliases: dict[str, Any],
        lineage: dict[str, Any] | None,
        allow_blocked: str | None,
    ) -> dict[str, Any] | None:
        """None when the gate did not block ``version`` (:meth:`gate_of`, against ``aliases``); when it did,
        the override the move's history event records (``allow_blocked``'s why and the gate's reasons), or
        :class:`VersionBlocked` when ``allow_blocked`` is empty."""
        decision = self.gate_of(version, lineage, aliases)
        if not is_blocked(decision):
            return None
        reasons = [str(r) for r in decision.get("reasons") or []]
        why = (allow_blocked or "").strip()
        if why:
            return {"why": why[:500], "gate_reasons": reasons}
        again = " when promote decided it again" if decision.get("decided_again") else ""
        raise VersionBlocked(
            f"version {version!r} of model {self.model!r} was blocked by its gate{again} "
            f"({'; '.join(reasons) or 'no reason recorded'}), so {alias} was not moved to it. A blocked "
            "version takes an alias only with an override that says why: allow_blocked='<why>' (the promote "
            "operators' argument, the <pipeline>_promote form's field, freestack models promote "
            "--allow-blocked '<why>'); the move's history then records it with the gate's reasons",
            version,
            reasons,
        )

    def block(self, version: str, decision: dict[str, Any], *, by: str | None = "gate") -> dict[str, Any]:
        """Record that the gate, deciding again at promotion time, blocked ``version``: a ``blocked`` event
        in the aliases' history (no alias moves) holding the decision, which :meth:`gate_of` then reads
        instead of the one registered with the version."""
        self._require_committed(version)
        against = decision.get("champion_version")
        reason = f"decided again against production {against or '(none)'}: {'; '.join(decision.get('reasons') or [])}"

        def change(a: dict[str, Any]) -> dict[str, Any]:
            ev = _event("blocked", "production", version, a.get("production"), reason[:500], by)
            a.setdefault("history", []).append(
                {**ev, "decision": {k: v for k, v in decision.items() if k != "gate"}}
            )
            return a

        return self._move(change)

    def gate_of(
        self, version: str, lineage: dict[str, Any] | None = None, aliases: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The gate decision that holds for ``version``: the newest one recorded when it was decided again
        (:meth:`block`), else the one registered with it (its lineage's ``gate``)."""
        again = redecisions(self.aliases() if aliases is None else aliases).get(version)
        if again is not None:
            return again
        got = self.lineage(version) if lineage is None else lineage
        return (got or {}).get("gate") or {}

    def last_move(self, alias: str, aliases: dict[str, Any] | None = None) -> str | None:
        """The newest move of ``alias`` in words: "<action> to <version> by <who> at <when> (<reason>)"."""
        history = (self.aliases() if aliases is None else aliases).get("history") or []
        for ev in reversed(history):
            if ev.get("alias") == alias and ev.get("action") not in NOT_MOVES:
                why = f" ({ev['reason']})" if ev.get("reason") else ""
                return f"{ev.get('action')} to {ev.get('version')} by {ev.get('by') or '?'} at {ev.get('at')}{why}"
        return None

    # -- model card -----------------------------------------------------------------------------------------
    def write_card(self, version: str, info: CardInfo | dict[str, Any] | None = None) -> str:
        """Render ``README.md`` (a Hugging Face model card) for a version that is not committed yet;
        return its text. Committed versions are immutable: :class:`VersionExists`."""
        self._refuse_existing(version)
        card = render_card(
            self.model,
            version,
            CardInfo.coerce(info),
            metrics=self._read_json(version, METRICS) or {},
            lineage=self._read_json(version, LINEAGE) or {},
        )
        write_bytes(join(self.version_path(version), CARD), card.encode())
        return card

    # -- loading ----------------------------------------------------------------------------------------------
    def local_copy(self, version: str, dest: str | os.PathLike) -> Path:
        """Download the committed version's files (without the marker) to the local folder ``dest``, each
        checked against the registration manifest."""
        if self._read_marker(check_version(version)) is None:
            raise VersionNotFound(f"version {version!r} of model {self.model!r} is not registered")
        open_version(self.version_uri(version)).verify(copy_to=dest)
        return Path(dest)

    def load(self, version_or_alias: str = "production", *, device: str = "cpu") -> LoadedVersion:
        """The registered version, verified and loaded (:meth:`freestack.version.ModelVersion.load`): its
        model, preprocessing, lineage, metrics, from local disk or (via a temporary folder) from S3."""
        return self.open(version_or_alias).load(device)


#: history events that record a decision, not a move of the alias
NOT_MOVES = frozenset({"blocked"})


def is_blocked(decision: dict[str, Any]) -> bool:
    """Whether a gate decision (:meth:`ModelRegistry.gate_of`) blocked its version; no decision at all (a
    version registered by hand, or trained with ``register=True``) blocks nothing."""
    return bool(decision) and not decision.get("promote", decision.get("decision") == "promote")


def served(aliases: dict[str, Any], version: str) -> bool:
    """Whether ``version`` is or was production (or is ``previous``) in ``aliases``: any gate override it
    needed was recorded when it first got there."""
    if version in (aliases.get("production"), aliases.get("previous")):
        return True
    return any(
        ev.get("alias") == "production" and ev.get("version") == version and ev.get("action") not in NOT_MOVES
        for ev in aliases.get("history") or []
    )


def redecisions(aliases: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """version -> the newest gate decision recorded when it was decided again (:meth:`ModelRegistry.block`)."""
    return {
        ev["version"]: ev["decision"]
        for ev in aliases.get("history") or []
        if ev.get("action") == "blocked" and isinstance(ev.get("decision"), dict) and ev.get("version")
    }


def registry_for(spec: PipelineSpec) -> ModelRegistry:
    """The registry of a pipeline's model, under the pipeline's storage root."""
    return ModelRegistry(storage_root(spec.storage_root), spec.model_name)


def registered_models(root_uri: str | ObjectStoragePath) -> list[str]:
    """The models with a folder under ``<root>/registry``, whoever registered them (a pipeline, a reusable
    operator, a notebook); ``freestack models list`` and the ML views list these."""
    return subfolders(join(to_path(root_uri), "registry"))


def _event(
    action: str,
    alias: str,
    version: str,
    old: str | None,
    reason: str | None,
    by: str | None = None,
    override: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A history event; ``override``: why a version the gate blocked moved anyway, and the gate's reasons."""
    ev = {"at": _now(), "action": action, "alias": alias, "version": version, "from": old, "pid": os.getpid()}
    if reason:
        ev["reason"] = reason
    if by:
        ev["by"] = by
    if override:
        ev["override"] = override
    return ev


__all__ = [
    "AliasMoved",
    "ModelRegistry",
    "NOT_MOVES",
    "RegistryError",
    "VersionBlocked",
    "VersionExists",
    "VersionNotFound",
    "check_alias",
    "check_version",
    "is_blocked",
    "redecisions",
    "registered_models",
    "registry_for",
    "remove_tree",
    "served",
    "walk_files",
]
