"""A fault in the model server's generation engine, for the tests: a Python process started with this
folder first on ``PYTHONPATH`` (Python imports ``sitecustomize`` as it starts) and
``FREESTACK_TEST_ENGINE_FAULT=N`` has transformers' continuous-batching loop raise at its next step once a
request asks for exactly ``N`` new tokens, as a library bug or memory run out would end that loop. The
module is patched as it is imported (a finder on ``sys.meta_path``): nothing is imported early."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

TARGET = "transformers.generation.continuous_batching.continuous_api"
FAULT = int(os.environ.get("FREESTACK_TEST_ENGINE_FAULT") or 0)


def _patch(module) -> None:
    manager = module.ContinuousBatchingManager
    add, step = manager.add_request, manager._generation_step

    def add_request(self, *args, **kw):
        if kw.get("max_new_tokens") == FAULT:
            self.fault = True
        return add(self, *args, **kw)

    def _generation_step(self):
        if getattr(self, "fault", False):
            raise RuntimeError("an injected fault in the generation loop")
        return step(self)

    manager.add_request, manager._generation_step = add_request, _generation_step


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if FAULT:
    sys.meta_path.insert(0, _PatchOnImport())
