"""The maps at the top of the DAG factory and the monitor name what exists: every kind of DAG the factory
builds, and the modules that write the files the monitor reads."""

from __future__ import annotations

import importlib
import re

import pytest


def test_the_dag_factorys_map_names_every_kind_of_dag_it_builds():
    import freestack.dags as dags

    doc = dags.__doc__ or ""
    listed = set(re.findall(r"^\s+<p>_(\w+)\s", doc, flags=re.M))
    assert listed == set(dags._BUILDERS), sorted(set(dags._BUILDERS) ^ listed)
    texts = (dags._only_for_task.__doc__ or "") + doc
    counted = re.findall(r"\b(one|two|three|four|five|six|seven|eight) DAGs\b", texts)
    assert not counted, counted  # a count goes stale when a kind is added


@pytest.mark.parametrize("module", ["freestack.monitor.core"])
def test_the_modules_a_stages_map_names_exist(module):
    doc = importlib.import_module(module).__doc__ or ""
    named = re.findall(r"\((\w+(?:\.\w+)+)\)", doc)
    assert named, doc
    for name in named:
        importlib.import_module(name)
