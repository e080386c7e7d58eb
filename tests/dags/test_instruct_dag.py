"""Instruction-tuning a causal LM through every stage under dag.test(): a tiny Llama-style model,
pretrained here on its own text and published on the local Hub stand-in, is fetched through
huggingface_hub, instruction-tuned with LoRA on the tutorial's templated instructions
(include/demo/instructions.py), evaluated (perplexity, exact match, answers side by side), gated,
registered, served for text generation, and loads from the Hub with plain transformers + peft."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from tests.support.serving import needs_serving_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("airflow_db"), needs_serving_env]
DAYS = 3
LM_BASE, PLAIN_BASE = "team/tiny-lm", "team/tiny-lm-plain"


def arith_spec(name: str = "arith", base: str = LM_BASE) -> dict:
    """The tutorial's spec (include/pipelines/arith.yaml) on the tiny base, trained for a CPU minute."""
    spec = yaml.safe_load((ROOT / "include" / "pipelines" / "arith.yaml").read_text())
    spec.update(name=name, retries=0)
    spec["model"].update(
        base=base,
        max_length=48,
        generation={"metric": "exact_match", "max_new_tokens": 12, "samples": 6},
        peft={
            "r": 8,
            "alpha": 16,
            "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
    )
    spec["train"] = {"epochs": 20, "learning_rate": 1e-2, "batch_size": 16, "window_days": 30, "patience": 5}
    spec["gate"] = {"metric": "exact_match", "threshold": 0.5, "max_regression": {"perplexity": 5.0}}
    # Seldon's protocol here (the tutorial deploys on mlserver: its OpenAI API is the docs test's and
    # tests/integration/test_serving_openai.py's)
    spec["deploy"]["runtime"] = "seldon"
    return spec


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The Hub stand-in with the tiny pretrained LM, and a copy of it without a chat template."""
    from tests.fakes.hub import FakeHub
    from tests.support.hf_tiny import publish, tiny_causal_lm

    hub = FakeHub().start()
    folder = tmp_path_factory.mktemp("bases")
    commits = {
        LM_BASE: publish(hub.endpoint, LM_BASE, tiny_causal_lm(folder / "lm")),
        PLAIN_BASE: publish(
            hub.endpoint, PLAIN_BASE, tiny_causal_lm(folder / "plain", chat_template=False, pretrain_steps=0)
        ),
    }
    yield hub, commits, folder / "lm"
    hub.stop()


@pytest.fixture
def pipelines(tmp_path, storage, monkeypatch, hub):
    from airflow.dag_processing.dagbag import DagBag

    from demo.instructions import make_landing

    specs = tmp_path / "pipelines"
    specs.mkdir()
    ranks = arith_spec("ranks")
    ranks["train"]["distributed"] = {"processes_per_node": 2, "threads_per_process": 1}
    tuned = arith_spec("tuned")
    tuned["sweep"] = {
        "method": "grid",
        "metric": {"name": "val_perplexity", "goal": "minimize"},
        "parameters": {"learning_rate": {"values": [3e-3, 1e-2]}},
    }
    # what the sweep keeps, not how much it learns (the first test's gate asks 0.5 exact match): 4 epochs
    # a trial, and a gate any evaluated trial passes
    tuned["train"]["epochs"] = 4
    tuned["gate"]["threshold"] = 0.0
    for spec in (arith_spec(), arith_spec("plain", PLAIN_BASE), ranks, tuned):
        (specs / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    monkeypatch.setenv("HF_ENDPOINT", hub[0].endpoint)
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = Path(storage.removeprefix("file://"))
    for name in ("arith", "plain", "ranks", "tuned"):
        make_landing(root.as_uri(), date(2026, 11, 1), DAYS, rows=200, pipeline=name)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return {"bag": bag, "root": root, "commits": hub[1], "hub": hub[0], "base": hub[2]}


def _ingest(p, name: str) -> None:
    dag = p["bag"].get_dag(f"{name}_ingest")
    for d in range(1, DAYS + 1):
        assert dag.test(logical_date=datetime(2026, 11, d, tzinfo=UTC)).state == "success"


def _base_exact_match(folder: Path, smoke: dict) -> float:
    """The pretrained base's exact match on the evaluation's smoke prompts (greedy, same budget)."""
    from freestack.evaluate.text_generation import exact_match
    from freestack.ml.lm.answers import GenerationSettings
    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.prompts import load_tokenizer
    from freestack.ml.lm.sampling import generate

    model, tok = load_causal_lm(str(folder)).eval(), load_tokenizer(folder)
    answers = generate(model, tok, smoke["chats"], GenerationSettings(max_new_tokens=smoke["max_new_tokens"]))
    return exact_match(smoke["labels"], [a.text for a in answers])


def test_an_llm_is_instruction_tuned_with_lora_gated_served_and_loads_without_freestack(
    pipelines, monkeypatch
):
    from freestack.cli.serve import sample_request
    from freestack.serving.local import stop_local
    from freestack.serving.records import Deployments
    from freestack.serving.smoke import http_json

    p = pipelines
    _ingest(p, "arith")
    monkeypatch.setenv("FREESTACK_MEASURE_SERVING", "true")  # off for the rest of the session
    try:
        run = p["bag"].get_dag("arith_train").test(run_conf={"end_ds": "2026-11-03", "sweep": False})
        assert run.state == "success"
        rec = Deployments(p["root"].as_uri(), "arith").get("arith")
        version = p["root"] / "registry" / "arith" / rec["version"]
        names = {f.name for f in version.iterdir()}
        assert {
            "adapter_config.json",
            "adapter_model.safetensors",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
        } <= names, names
        lineage = json.loads((version / "lineage.json").read_text())
        assert lineage["base"] == {
            "repo": LM_BASE,
            "revision": "main",
            "commit": p["commits"][LM_BASE],
            "task": "text-generation",
        }
        assert (
            lineage["chat"]["template"] == "base tokenizer"
            and lineage["data"]["conversations"]["train"]["cut"] == 0
        )
        evaluation = json.loads((version / "evaluation" / "metrics.json").read_text())
        cand = evaluation["candidate"]
        smoke = json.loads((version / "evaluation" / "smoke.json").read_text())
        base_em = _base_exact_match(p["base"], smoke)
        assert cand["exact_match"] >= 0.5 and cand["exact_match"] >= base_em + 0.4, (cand, base_em)
        assert cand["perplexity"] < 3 and len(evaluation["samples"]) == 6
        assert "sample answers" in (version / "evaluation" / "report.html").read_text()
        # what serving it costs, measured by evaluate in the deploy's server: whole answers on Seldon's runtime
        serving = lineage["costs"]["serving"]
        assert serving["runtime"] == "seldon" and serving["errors"] == 0 and serving["batch_rows"] == 1, (
            serving
        )
        assert 0 < serving["latency_p50_ms"] <= serving["latency_p99_ms"] and serving["tokens_per_s"] > 0, (
            serving
        )
        assert serving["ttft_p50_ms"] is None and evaluation["costs"]["candidate"]["serving"] == serving
        trained = lineage["costs"]["train"]  # a language model's training counts its tokens
        assert trained["tokens"] > 2 * trained["samples"] > 0, trained
        monkeypatch.setenv("FREESTACK_MEASURE_SERVING", "false")  # the retraining below need not be measured
        card = (version / "README.md").read_text()
        assert f"| training tokens | {trained['tokens']:,} |" in card
        assert (
            f"base_model: {LM_BASE}" in card
            and "library_name: peft" in card
            and "pipeline_tag: text-generation" in card
        )

        # served: the smoke prompts answered as evaluation answered them; a prompt as strData
        code, body = http_json(
            rec["predict_url"],
            {
                "jsonData": {
                    "messages": smoke["chats"][0],
                    "parameters": {"max_new_tokens": smoke["max_new_tokens"]},
                }
            },
        )
        assert code == 200, body
        assert body["jsonData"]["completions"][0]["text"] == smoke["outputs"][0]
        code, body = http_json(rec["predict_url"], {"strData": smoke["chats"][1][-1]["content"]})
        assert code == 200 and isinstance(body["strData"], str), body
        request, expected = sample_request(rec)  # what `freestack serve predict arith` sends
        code, body = http_json(rec["predict_url"], request)
        assert code == 200 and body["jsonData"]["completions"][0]["text"] == expected[0], body

        _loads_with_plain_transformers(p, version, smoke)
        _second_version_is_gated_against_production(p, rec["version"])
    finally:
        stop_local(p["root"].as_uri(), "arith", "arith")


PLAIN_GENERATE = """
import json, sys
try:
    import freestack  # noqa: F401
    sys.exit("freestack is importable here; the check needs an environment without it")
except ImportError:
    pass
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

repo, version, base, commit, chats, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]), int(sys.argv[6])
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, revision=commit), repo, revision=version).eval()
tokenizer = AutoTokenizer.from_pretrained(repo, revision=version)
out = []
for chat in chats:
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    new = model.generate(**ids, max_new_tokens=n, do_sample=False)[0, ids["input_ids"].shape[1]:]
    out.append(tokenizer.decode(new, skip_special_tokens=True).strip())
print(json.dumps(out))
"""


def _loads_with_plain_transformers(p, version: Path, smoke: dict) -> None:
    """Pushed to the Hub, the version loads with AutoModelForCausalLM + PeftModel + AutoTokenizer alone (the
    serving environment, where freestack is not installed) and answers what evaluation answered."""
    from freestack.registry.core import ModelRegistry
    from freestack.registry.hub import push_to_hub

    pushed = push_to_hub(
        ModelRegistry(p["root"].as_uri(), "arith"),
        version.name,
        "team/arith-lora",
        "hf_fake",
        endpoint=p["hub"].endpoint,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_ENDPOINT": p["hub"].endpoint}
    python = os.environ.get("FREESTACK_SERVING_PYTHON") or str(ROOT / ".venv-serving" / "bin" / "python")
    chats = smoke["chats"][:6]
    out = subprocess.run(
        [
            python,
            "-c",
            PLAIN_GENERATE,
            "team/arith-lora",
            pushed["tag"],
            LM_BASE,
            p["commits"][LM_BASE],
            json.dumps(chats),
            str(smoke["max_new_tokens"]),
        ],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == smoke["outputs"][:6]


def _second_version_is_gated_against_production(p, first: str) -> None:
    """A retraining is scored beside production on the same rows: both models' metrics and answers."""
    run = p["bag"].get_dag("arith_train").test(run_conf={"end_ds": "2026-11-03", "sweep": False, "epochs": 2})
    second = [
        f for f in (p["root"] / "registry" / "arith").iterdir() if f.name.startswith("v") and f.name != first
    ]
    assert run.state == "success" and len(second) == 1, second
    evaluation = json.loads((second[0] / "evaluation" / "metrics.json").read_text())
    assert evaluation["champion_version"] == first, evaluation
    assert evaluation["champion"]["rows"] == evaluation["candidate"]["rows"]
    assert all("champion" in s and "candidate" in s for s in evaluation["samples"])
    gate = json.loads((second[0] / "lineage.json").read_text())["gate"]
    assert gate["champion_version"] == first and any(r.startswith("perplexity") for r in gate["reasons"]), (
        gate
    )
    # the ML views read both versions: their perplexity and exact match, the report with the answers
    from freestack.spec import load_spec
    from freestack.ui.catalog.model_pages import model_page, version_page

    spec = load_spec(Path(os.environ["FREESTACK_PIPELINES_DIR"]) / "arith.yaml")
    rows = {r.version: r for r in model_page("arith", spec).versions}
    assert {first, second[0].name} <= set(rows) and "test_perplexity" in rows[first].metrics, rows
    page = version_page("arith", spec, first)
    assert page.report == "evaluation/report.html" and "pipeline_tag: text-generation" in page.card


def test_a_base_without_a_chat_template_is_refused_before_any_data_is_read(pipelines):
    from demo.instructions import TOOLS
    from freestack.spec import load_spec, parse_spec
    from freestack.train.core import check_trainable
    from freestack.train.request import TrainingError

    spec = load_spec(Path(os.environ["FREESTACK_PIPELINES_DIR"]) / "plain.yaml")
    with pytest.raises(TrainingError, match="no chat template.*model.chat_template"):
        check_trainable(spec)
    # tools for a template that never lays them out: the model would never see them
    data = yaml.safe_load((Path(os.environ["FREESTACK_PIPELINES_DIR"]) / "plain.yaml").read_text())
    data["model"]["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    data["model"]["data"] = {"prompt": "prompt", "response": "response", "tools": TOOLS}
    with pytest.raises(TrainingError, match="model.data.tools: the chat template lays out no tools"):
        check_trainable(parse_spec(data, "plain.yaml"))


def test_two_ranks_instruction_tune_one_model_that_learns_the_task(pipelines):
    """train.distributed with 2 local ranks (DDP, gloo): each rank takes its share of every global batch of
    conversations; rank 0 validates, writes the version, and it gates and serves like one process's."""
    from freestack.serving.local import stop_local
    from freestack.serving.records import Deployments

    p = pipelines
    _ingest(p, "ranks")
    try:
        run = p["bag"].get_dag("ranks_train").test(run_conf={"end_ds": "2026-11-03", "sweep": False})
        assert run.state == "success"
        rec = Deployments(p["root"].as_uri(), "ranks").get("ranks")
        version = p["root"] / "registry" / "ranks" / rec["version"]
        lineage = json.loads((version / "lineage.json").read_text())
        assert lineage["distributed"]["world_size"] == 2 and lineage["distributed"]["strategy"] == "ddp"
        assert (
            json.loads((version / "evaluation" / "metrics.json").read_text())["candidate"]["exact_match"]
            >= 0.5
        )
    finally:
        stop_local(p["root"].as_uri(), "ranks", "ranks")


def test_a_sweep_of_instruction_tunings_keeps_the_lowest_validation_perplexity(pipelines):
    """A grid over the learning rate, judged on val_perplexity: select_best keeps the trial with the lowest,
    which is evaluated, gated and registered with the sweep in its lineage."""
    from freestack.serving.local import stop_local

    p = pipelines
    _ingest(p, "tuned")
    try:
        run = p["bag"].get_dag("tuned_train").test(run_conf={"end_ds": "2026-11-03", "sweep_agents": 1})
        assert run.state == "success"
        folder = next((p["root"] / "runs" / "tuned").glob("sweep-*/best.json")).parent
        table = json.loads((folder / "results.json").read_text())
        best = json.loads((folder / "best.json").read_text())
        assert table["metric"] == "val_perplexity" and len(table["trials"]) == 2
        assert best["best_value"] == min(r["val_perplexity"] for r in table["trials"])
        name = best["version_uri"].rstrip("/").rsplit("/", 1)[-1]
        lineage = json.loads((p["root"] / "registry" / "tuned" / name / "lineage.json").read_text())
        assert lineage["sweep"]["trial"] == best["best_trial"] and lineage["gate"]["decision"] == "promote", (
            lineage["gate"]
        )
    finally:
        stop_local(p["root"].as_uri(), "tuned", "tuned")
