"""The Hugging Face Hub as the model library: push a registered version as one tagged commit, move the
``production`` ref there, and load a version back with nothing but ``huggingface_hub`` and safetensors.
A missing token is not an error: the registry stays local, and the log says why nothing was pushed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from freestack import version
from freestack.ml.contract import MODULE_FILE
from freestack.registry.core import ModelRegistry, RegistryError
from freestack.version import LoadedVersion
from freestack.version import files as F

log = logging.getLogger(__name__)


def push_to_hub(
    reg: ModelRegistry,
    version_or_alias: str,
    repo_id: str,
    token: str | None,
    *,
    endpoint: str | None = None,
    private: bool | None = None,
) -> dict[str, Any] | None:
    """Push a registered version to the Hub as **one commit** tagged with the version; return
    ``{"repo_id", "version", "commit", "commit_url", "tag"}``, or None (logged) without a token."""
    version = reg.resolve(version_or_alias)
    if not token:
        log.info(
            "not pushing %s %s to the Hugging Face Hub: no token (set a 'huggingface' connection with "
            "the token as password); the version stays local at %s",
            reg.model,
            version,
            reg.version_uri(version),
        )
        return None
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
    with tempfile.TemporaryDirectory(prefix="freestack-push-") as tmp:
        reg.local_copy(version, tmp)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            repo_type="model",
            commit_message=f"{reg.model} {version}",
            commit_description=f"freestack registry version {version} of model {reg.model}",
        )
    api.create_tag(repo_id, tag=version, revision=commit.oid, tag_message=f"{reg.model} {version}")
    log.info("pushed %s %s to %s as commit %s, tagged %s", reg.model, version, repo_id, commit.oid, version)
    return {
        "repo_id": repo_id,
        "version": version,
        "commit": commit.oid,
        "commit_url": str(commit.commit_url),
        "tag": version,
    }


def promote_on_hub(
    repo_id: str,
    version: str,
    token: str | None,
    *,
    endpoint: str | None = None,
    ref: str = "production",
    kind: str = "tag",
) -> bool:
    """Move the Hub ref ``production`` (a tag, or a branch with ``kind="branch"``) to the commit
    tagged ``version``: delete it if present, then create it. False (logged) without a token."""
    if not token:
        log.info("not moving %s on the Hugging Face Hub to %s: no token", ref, version)
        return False
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if kind not in ("tag", "branch"):
        raise RegistryError(f"kind must be 'tag' or 'branch', not {kind!r}")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        if kind == "tag":
            api.delete_tag(repo_id, tag=ref)
        else:
            api.delete_branch(repo_id, branch=ref)
    except HfHubHTTPError as exc:
        if exc.response is None or exc.response.status_code != 404:
            raise
    if kind == "tag":
        api.create_tag(repo_id, tag=ref, revision=version, tag_message=f"{ref}: {version}")
    else:
        api.create_branch(repo_id, branch=ref, revision=version)
    log.info("Hub %s: %s %s -> %s", repo_id, kind, ref, version)
    return True


def load_from_hub(
    repo_id: str,
    revision: str | None = None,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> LoadedVersion:
    """A version from a Hub repo at a revision (a version tag, ``production``, a branch or a commit),
    loaded (:meth:`freestack.version.ModelVersion.load`).

    Only ``config.json``, the files the model loads from (safetensors weights or a LoRA adapter, never a
    pickled ``.bin``; :func:`~freestack.version.files.weight_files`) and the preprocessing beside them are
    fetched, at the commit the config came from, so a tag moving in between cannot mix two versions. A
    custom model's version carries its own ``module.py``: running it is running the repo's code, so it
    is loaded only with ``trust_remote_code=True`` (as in transformers)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    kw: dict[str, Any] = {"repo_id": repo_id, "token": token, "endpoint": endpoint, "cache_dir": cache_dir}
    config = Path(hf_hub_download(filename=F.CONFIG, revision=revision, **kw))
    commit = config.parent.name  # .../snapshots/<commit>/config.json
    snapshot = version.open(str(config.parent))
    if snapshot.config.custom and not trust_remote_code:
        raise RegistryError(
            f"{repo_id}@{revision} is a custom model whose {MODULE_FILE} would run on loading; "
            "pass trust_remote_code=True if you trust the repo's code"
        )
    for name in snapshot.weight_files():
        if Path(hf_hub_download(filename=name, revision=commit, **kw)).parent != config.parent:
            raise RegistryError(f"{repo_id}@{revision}: config.json and {name} came from different commits")
    for name in (F.PREPROCESSING, F.TOKENIZER):  # the encoding of the inputs, where the version has one
        with contextlib.suppress(EntryNotFoundError):
            hf_hub_download(filename=name, revision=commit, **kw)
    return version.open(str(config.parent)).load(device)


__all__ = ["load_from_hub", "promote_on_hub", "push_to_hub"]
