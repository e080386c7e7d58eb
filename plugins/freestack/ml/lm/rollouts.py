"""GRPO's rollouts sampled by a deployed server (``train.grpo.rollouts: server``): a freestack deployment on
the ``mlserver`` runtime with ``deploy.generation.runtime_adapters``, or any server with vLLM's runtime
LoRA API. No Airflow here.

Each step, the LoRA adapter as it is being trained is written (peft's ``save_pretrained``: its
``adapter_config.json`` and ``adapter_model.safetensors``) into a folder the server reads, loaded there under
a name of the step (vLLM's ``POST /v1/load_lora_adapter``), and the step's prompts are sent as token ids to
``POST /v1/completions`` (``n``: the group, ``return_token_ids``), so the trainer learns from exactly the
tokens the server sampled. The previous step's adapter is unloaded (``/v1/unload_lora_adapter``) and its
folder removed; the last one when the run ends.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


class RolloutError(RuntimeError):
    """The rollout server refused or could not be reached; the message names it and what to do."""


@dataclass
class RolloutServer:
    """A deployed server that samples a training's completions from the adapter it is training."""

    url: str  #: the OpenAI API's base URL (``http://host:port/v1``)
    model: str  #: the deployment's model name (adapters are asked for as ``<model>:<name>``)
    api_key: str | None = None
    #: where each step's adapter is written for the server to read (a folder both see); default a temporary one
    adapter_dir: str | None = None
    concurrency: int = 4  #: prompts asked at once (one request each, its group as ``n``)
    timeout: float = 300.0
    _folder: Path | None = field(default=None, repr=False)
    _loaded: str | None = field(default=None, repr=False)
    _run: str = field(default_factory=lambda: uuid.uuid4().hex[:8], repr=False)
    _step: int = field(default=0, repr=False)

    def sample(self, model, prompts: list[list[int]], n: int, **sampling: Any) -> list[list[int]]:
        """Each prompt's ``n`` completions (token ids, the end of turn included), prompt by prompt, from
        ``model``'s adapter as it is now: pushed to the server first."""
        name = self._push(model)
        client = self._client()
        body = {
            "model": f"{self.model}:{name}",
            "n": n,
            "max_tokens": sampling["max_tokens"],
            "temperature": sampling["temperature"],
            "top_p": sampling["top_p"],
        }

        def ask(prompt: list[int]) -> list[list[int]]:
            try:
                answer = client.completions.create(
                    prompt=prompt, extra_body={"return_token_ids": True}, **body
                )
            except Exception as exc:  # noqa: BLE001 (openai's errors, a lost connection: named, not hidden)
                raise RolloutError(f"the rollout server {self.url} did not sample: {exc}") from None
            choices = [c.model_dump() for c in sorted(answer.choices, key=lambda c: c.index)]
            if any(c.get("prompt_token_ids") != prompt for c in choices):
                raise RolloutError(
                    f"the rollout server {self.url} did not sample from the prompt as sent ({len(prompt)} "
                    "tokens; cut to its deploy.generation.max_prompt_tokens?): raise that bound to the "
                    "model's max_length"
                )
            return [c["token_ids"] for c in choices]

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return [ids for group in pool.map(ask, prompts) for ids in group]

    def close(self) -> None:
        """Unload the last adapter from the server and remove the folders written for it."""
        if self._loaded is not None:
            self._unload(self._loaded)
        if self._folder is not None and self.adapter_dir is None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _push(self, model) -> str:
        """The adapter as it is now, written and loaded under the step's name; the previous one unloaded."""
        self._step += 1
        name = f"grpo-{self._run}-{self._step}"
        folder = self._root() / name
        model.save_pretrained(str(folder), safe_serialization=True)
        if self._loaded is not None:  # first: the server's bound on adapters is not spent on the old one
            self._unload(self._loaded)
        self._post("load_lora_adapter", {"lora_name": name, "lora_path": str(folder)})
        self._loaded = name
        return name

    def _unload(self, name: str) -> None:
        try:
            self._post("unload_lora_adapter", {"lora_name": name}, gone_ok=True)
        finally:
            self._loaded = None
            shutil.rmtree(self._root() / name, ignore_errors=True)

    def _root(self) -> Path:
        if self._folder is None:
            base = self.adapter_dir or tempfile.mkdtemp(prefix="freestack-rollouts-")
            self._folder = Path(base.removeprefix("file://"))
            self._folder.mkdir(parents=True, exist_ok=True)
        return self._folder

    def _post(self, route: str, body: dict[str, str], gone_ok: bool = False) -> None:
        """POST ``body`` to ``route``; RolloutError unless it answers 200 (or, ``gone_ok``, 404: the
        server had already unloaded that adapter, the least recently used past its bound)."""
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            got = httpx.post(
                f"{self.url.rstrip('/')}/{route}", json=body, headers=headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise RolloutError(f"the rollout server {self.url} cannot be reached ({exc})") from None
        if got.status_code != 200 and not (gone_ok and got.status_code == 404):
            raise RolloutError(
                f"the rollout server {self.url} refused {route} ({got.status_code}): {got.text[:500]}; it must "
                "serve the model's base on the mlserver runtime with deploy.generation.runtime_adapters"
            )

    def _client(self):
        """An openai client of the server's completions, one a step: the training copies the net that holds
        this server (a dag.test() training failed so), and a kept client's locks cannot be copied."""
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=self.api_key or "none", max_retries=2, timeout=self.timeout)


def right_padded(rows: list[list[int]], pad: int, like: torch.Tensor) -> torch.Tensor:
    """Completions as one right-padded tensor of ``like``'s dtype and device."""
    width = max((len(r) for r in rows), default=0) or 1
    out = torch.full((len(rows), width), pad, dtype=like.dtype)
    for row, ids in zip(out, rows, strict=True):
        row[: len(ids)] = torch.tensor(ids, dtype=like.dtype)
    return out.to(like.device)


__all__ = ["RolloutError", "RolloutServer", "right_padded"]
