"""What docs pages promise that can be checked without the demo: links into the generated reference land
on a section it has, and the distributed-training page has a sequence to try on the demo (run as printed
by tests/e2e/test_docs_commands.py)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.S | re.M)


def spec_reference_anchors() -> set[str]:
    """The section anchors of reference/spec.md: one per model reachable from the spec, as
    docs/gen_reference.py writes them (``## <Model>``, which mkdocs' toc makes ``#<model>``)."""
    from typing import get_args

    from freestack.spec import PipelineSpec

    def models(annotation) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for a in get_args(annotation) for m in models(a)]

    seen, queue = set(), [PipelineSpec]
    while queue:
        model = queue.pop()
        if model not in seen:
            seen.add(model)
            queue += [m for f in model.model_fields.values() for m in models(f.annotation)]
    return {m.__name__.lower() for m in seen}


def test_links_into_the_spec_reference_name_a_section_it_has():
    anchors = spec_reference_anchors()
    links = [
        (p.relative_to(DOCS), a)
        for p in DOCS.rglob("*.md")
        for a in re.findall(r"reference/spec\.md#([\w-]+)", p.read_text())
    ]
    assert all(a in anchors for _, a in links), [link for link in links if link[1] not in anchors]
    page = (DOCS / "operating" / "distributed.md").read_text()
    assert "reference/spec.md#distributedspec" in page  # train.distributed's own section, not the page's top


def test_distributed_training_can_be_tried_on_the_demo():
    page = (DOCS / "operating" / "distributed.md").read_text()
    assert "## Try it on the demo" in page
    section = page.split("## Try it on the demo", 1)[1].split("\n## ", 1)[0]
    blocks = FENCE.findall(section)
    assert blocks and "include/pipelines/digits.yaml" in blocks[0] and "launch(" in blocks[0], section
    assert "docs-test: skip" not in section  # it runs, as printed, on the documented-commands test's demo


def test_every_documented_shell_block_splits_into_commands():
    """Each shell block of README.md and docs/ (the documented-commands test's pages and blocks, skipped ones
    too) splits into commands as that test splits them: none loses its last commands inside an open quote."""
    from tests.e2e.test_docs_commands import BLOCKS
    from tests.support.demo_sandbox import RefusedBlock, _commands

    refused = []
    for block_id, text, _skipped in BLOCKS:
        try:
            _commands(text, block_id)
        except RefusedBlock as exc:
            refused.append(str(exc))
    assert BLOCKS
    assert not refused, "\n".join(refused)


def test_a_block_that_would_lose_or_join_commands_is_refused_by_name():
    import pytest

    from tests.support.demo_sandbox import RefusedBlock, _commands

    block = "# the model's own comment line\nmake a  # first\necho 'x\ny'\nmake b \\\n  --flag\n"
    assert _commands(block) == ["make a  # first", "echo 'x\ny'", "make b \\\n  --flag"]
    assert _commands('echo "a # b" "c#"  # fine\n') == ['echo "a # b" "c#"  # fine']
    with pytest.raises(
        RefusedBlock, match=r"page\.md#2: the comment of .make x  # the model's. opens a quote"
    ):
        _commands("make x  # the model's\nmake y\n", "page.md#2")
    with pytest.raises(RefusedBlock, match=r"page\.md#1 ends inside a quote.*echo 'x"):
        _commands("make a\necho 'x\n", "page.md#1")
    with pytest.raises(RefusedBlock, match=r"ends inside a continuation.*make b"):
        _commands("make b \\\n", "page.md#1")
