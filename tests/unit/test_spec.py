from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from freestack.errors import SpecError
from freestack.spec import discover_specs, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "include" / "pipelines" / "digits.yaml"


def _base() -> dict:
    return {
        "name": "p",
        "source": {
            "schema": {
                "key": "id",
                "columns": [{"name": "id", "nullable": False}, {"name": "x", "type": "float"}],
            }
        },
    }


def test_demo_spec_loads_and_expands_repeated_columns():
    spec = load_spec(DIGITS)
    names = [c.name for c in spec.source.schema_.fields]
    assert names[:3] == ["id", "captured_at", "px_0"]
    assert names[-1] == "label" and len(names) == 67
    assert spec.source.schema_.key == "id" and spec.source.schema_.target == "label"
    assert len(spec.spec_hash()) == 64


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda d: d["source"].update(format="xml"), "source.format", "csv"),
        (
            lambda d: d["source"]["schema"]["columns"][1].update(type="decimal"),
            "source.schema.columns[1].type",
            "float",
        ),
        (
            lambda d: d["source"]["schema"].update(key="nope"),
            "source.schema",
            "not one of the declared columns",
        ),
        (lambda d: d["source"].update(landing="landing/{pipeline}/"), "source.landing", "{ds}"),
        (
            lambda d: d["source"].update(landing="landing/{bogus}/{ds}"),
            "source.landing",
            "unknown placeholder",
        ),
        (
            lambda d: d["source"]["schema"]["columns"][1].update(min=5, max=1),
            "source.schema.columns[1]",
            "greater than max",
        ),
        (
            lambda d: (
                d["source"]["policy"] if False else d["source"].update(policy={"max_quarantine_fraction": 2})
            ),
            "source.policy.max_quarantine_fraction",
            "1",
        ),
        (lambda d: d.update(storage_root="ftp://x"), "storage_root", "s3://"),
        (lambda d: d.update(colour="blue"), "colour", "Extra inputs"),
        (lambda d: d.update(deploy={"target": "cloud"}), "deploy", "'local' or 'kubernetes'"),
        (
            lambda d: d.update(deploy={"local": {"worker_class": "eventlet"}}),
            "deploy",
            "'freestack', 'gthread' or 'sync'",
        ),
        (lambda d: d.update(deploy={"local": {"threads": 4}}), "deploy", "needs worker_class: gthread"),
        (
            lambda d: d.update(deploy={"kubernetes": {"canary": {"traffic": 100}}}),
            "deploy",
            "kubernetes.canary.traffic",
        ),
        (lambda d: d.update(train={"queue": "gpu queue"}), "train.queue", "pattern"),
    ],
)
def test_invalid_specs_name_file_and_field(mutate, field, words):
    data = _base()
    mutate(data)
    with pytest.raises(SpecError) as info:
        parse_spec(data, "include/pipelines/p.yaml")
    msg = str(info.value)
    assert msg.startswith(f"include/pipelines/p.yaml: {field}"), msg
    assert words in msg


def test_name_must_match_file(tmp_path):
    with pytest.raises(SpecError, match="must equal the file name"):
        parse_spec(_base(), str(tmp_path / "other.yaml"))


def test_yaml_syntax_error_has_line(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("name: p\nsource: [unclosed\n")
    with pytest.raises(SpecError, match=r"p.yaml: invalid YAML at line \d+"):
        load_spec(p)


def test_non_utf8_spec(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_bytes(b"name: p\ndescription: \xff\xfe\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(p)


def test_discover_keeps_good_specs_beside_broken_ones(tmp_path):
    shutil.copy(DIGITS, tmp_path / "digits.yaml")
    (tmp_path / "broken.yaml").write_text("name: broken\nsource: {format: csv}\n")
    found = discover_specs(tmp_path)
    assert not isinstance(found["digits"], SpecError)
    assert isinstance(found["broken"], SpecError)
    assert "broken.yaml: source.schema" in str(found["broken"])


def test_max_active_runs_bounds_the_ingest_days_at_once():
    import yaml
    from pydantic import ValidationError

    from freestack.dags import ingest_dag

    assert ingest_dag(load_spec(DIGITS), str(DIGITS)).max_active_runs == 8
    data = yaml.safe_load(DIGITS.read_text())
    data["max_active_runs"] = 2
    assert ingest_dag(parse_spec(data, str(DIGITS)), str(DIGITS)).max_active_runs == 2
    data["max_active_runs"] = 0
    with pytest.raises((SpecError, ValidationError), match="max_active_runs"):
        parse_spec(data, str(DIGITS))


def test_train_queue_puts_the_training_tasks_on_it():
    """``train.queue: gpu`` sends ``train`` and the sweep agents to the gpu queue (Celery workers that
    consume it, or the Helm values' GPU pod template); every other task stays on the default queue."""
    import yaml

    from freestack.dags import train_dag

    data = yaml.safe_load(DIGITS.read_text())
    data["train"]["queue"] = "gpu"
    dag = train_dag(parse_spec(data, str(DIGITS)), str(DIGITS))
    queues = {t.task_id: t.queue for t in dag.tasks}
    assert queues["train"] == queues["agent"] == "gpu"
    assert {q for tid, q in queues.items() if tid not in ("train", "agent")} == {"default"}
    plain = train_dag(load_spec(DIGITS), str(DIGITS))
    assert {t.queue for t in plain.tasks} == {"default"}


def _with_target(target_type: str, **blocks) -> dict:
    d = _base()
    d["source"]["schema"]["columns"].append({"name": "y", "type": target_type})
    d["source"]["schema"]["target"] = "y"
    d.update(blocks)
    return d


@pytest.mark.parametrize(
    "target_type, blocks, field, words",
    [
        (
            "float",
            {"gate": {"metric": "accuracy"}},
            "gate.metric",
            "is not a regression metric (model.task is auto and 'y' is a float target); use one of rmse, mae, r2",
        ),
        (
            "string",
            {"gate": {"max_regression": {"rmse": 0.1}}},
            "gate.max_regression",
            "is not a classification metric",
        ),
        (
            "float",
            {
                "sweep": {
                    "method": "grid",
                    "metric": {"name": "val_accuracy", "goal": "maximize"},
                    "parameters": {"learning_rate": {"values": [0.01]}},
                }
            },
            "sweep.metric.name",
            "use one of val_loss, val_rmse, val_mae, val_r2, train_loss",
        ),
    ],
)
def test_metrics_are_checked_against_the_task_when_the_spec_is_read(target_type, blocks, field, words):
    """A regression pipeline that names a classification metric fails when its spec is read, listing the
    metrics it can use, not late in a gate or a sweep."""
    with pytest.raises(SpecError) as info:
        parse_spec(_with_target(target_type, **blocks), "p.yaml")
    assert field in str(info.value) and words in str(info.value)


def test_an_int_target_names_its_task_before_naming_one_tasks_metric():
    """An int target's task is decided by the data (few distinct values: classification), so a metric of
    one task alone (val_accuracy on a regression of counts, say) would fail late, at the gate or in the
    sweep: the spec must say the task, and the error says how. Metrics of both tasks (val_loss) need not."""
    sweep = {
        "method": "grid",
        "metric": {"name": "val_accuracy", "goal": "maximize"},
        "parameters": {"learning_rate": {"values": [0.01]}},
    }
    with pytest.raises(SpecError) as info:
        parse_spec(_with_target("int", sweep=sweep), "p.yaml")
    assert info.value.field == "sweep.metric.name"
    assert "'val_accuracy' is a classification metric" in str(
        info.value
    ) and "set model.task: classification" in str(info.value)
    with pytest.raises(
        SpecError, match="gate.metric: 'rmse' is a regression metric.*set model.task: regression"
    ):
        parse_spec(_with_target("int", gate={"metric": "rmse"}), "p.yaml")
    data = _with_target("int", gate={"metric": "rmse"}, sweep=sweep)
    data["model"] = {"task": "regression"}
    with pytest.raises(
        SpecError, match="sweep.metric.name: 'val_accuracy' is not a regression metric.*val_rmse"
    ):
        parse_spec(data, "p.yaml")
    data["sweep"]["metric"] = {"name": "val_rmse", "goal": "minimize"}
    assert parse_spec(data, "p.yaml").task == "regression"
    both = parse_spec(_with_target("int", sweep={**sweep, "metric": {"name": "val_loss"}}), "p.yaml")
    assert both.task is None
    # an int target that lists its classes (allowed:) is classification, as the demo's digits are
    classes = _with_target("int", gate={"metric": "rmse"})
    classes["source"]["schema"]["columns"][-1]["allowed"] = [0, 1, 2]
    with pytest.raises(SpecError, match="'rmse' is not a classification metric .*with allowed: classes"):
        parse_spec(classes, "p.yaml")
    assert load_spec(DIGITS).task == "classification"


def test_lineage_spec_hash_is_the_sha256_of_the_file(tmp_path):
    """``sha256sum include/pipelines/x.yaml`` matches a model's ``spec_hash``; a comment changes it, the
    normalized hash (of the validated spec) does not."""
    import hashlib

    spec = load_spec(DIGITS)
    assert spec.file_sha256 == spec.spec_hash() == hashlib.sha256(DIGITS.read_bytes()).hexdigest()
    copy = tmp_path / "digits.yaml"
    copy.write_bytes(DIGITS.read_bytes() + b"# a comment\n")
    other = load_spec(copy)
    assert other.spec_hash() != spec.spec_hash() and other.normalized_hash() == spec.normalized_hash()


def test_the_blocks_are_typed():
    """sweep, gate and deploy are pydantic models, not mappings; the sweep gives W&B's config back."""
    from freestack.evaluate.spec import GateSpec
    from freestack.serving.spec import DeploySpec
    from freestack.sweeps.spec import SweepSpec

    spec = load_spec(DIGITS)
    assert (
        isinstance(spec.sweep, SweepSpec)
        and isinstance(spec.gate, GateSpec)
        and isinstance(spec.deploy, DeploySpec)
    )
    config = spec.sweep.config()
    assert config["method"] == spec.sweep.method and "run_cap" in config and "strict" not in str(config)
    assert SweepSpec.model_validate(config).config() == config  # the W&B form round-trips
    # int bounds stay ints: W&B's int_uniform refuses floats
    sweep = SweepSpec.model_validate(
        {"method": "grid", "parameters": {"epochs": {"distribution": "int_uniform", "min": 2, "max": 4}}}
    )
    assert sweep.config()["parameters"]["epochs"] == {"distribution": "int_uniform", "min": 2, "max": 4}


def test_a_copied_wandb_config_keeps_its_program_and_command_but_unknown_keys_fail():
    sweep = {
        "method": "grid",
        "parameters": {"learning_rate": {"values": [0.01]}},
        "program": "train.py",
        "command": ["${env}", "python", "${program}"],
    }
    assert parse_spec({**_base(), "sweep": sweep}, "p.yaml").sweep.program == "train.py"
    with pytest.raises(
        SpecError, match=r"sweep: Additional properties are not allowed \('tries' was unexpected\)"
    ):
        parse_spec({**_base(), "sweep": {**sweep, "tries": 3}}, "p.yaml")


def test_a_key_written_twice_is_an_error_naming_it_and_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys without a word: a second ``deploy:`` block would replace
    the first. The spec loader refuses it at any depth, naming the field and both lines; a merge
    (``<<:``) may still be overridden, and the broken spec fails alone."""
    text = DIGITS.read_text()
    two = tmp_path / "digits.yaml"
    two.write_text(text + "deploy:\n  local: {port: 9300}\n")
    first = 1 + text.splitlines().index("deploy:")
    second = 1 + len(text.splitlines())
    with pytest.raises(SpecError) as info:
        load_spec(two)
    assert str(info.value).startswith(f"{two}: deploy: 'deploy' is written twice in one mapping ")
    assert f"(lines {first} and {second})" in str(info.value)
    nested = tmp_path / "p.yaml"
    nested.write_text(
        "name: p\nsource:\n  schema:\n    key: id\n    columns:\n      - {name: id, nullable: false}\n"
        "      - name: x\n        type: float\n        type: int\n"
    )
    with pytest.raises(
        SpecError,
        match=r"p.yaml: source.schema.columns\[1\].type: 'type' is written twice .*"
        r"\(lines 8 and 9\)",
    ):
        load_spec(nested)
    merged = tmp_path / "q.yaml"
    merged.write_text(
        "name: q\nsource:\n  schema:\n    key: id\n    columns:\n      - &id {name: id, nullable: false}\n"
        "      - {<<: *id, name: x, type: float}\n"
    )
    assert [c.name for c in load_spec(merged).source.schema_.fields] == ["id", "x"]
    found = discover_specs(tmp_path)
    assert isinstance(found["digits"], SpecError) and isinstance(found["p"], SpecError)
    assert not isinstance(found["q"], SpecError)


def test_a_local_deployment_takes_its_port_and_the_next_two():
    """``port_overlap``: a deployment's address within another's three ports (or theirs within its own)
    is named; the same address (taking turns), another host, a Kubernetes target or the same deployment
    is not an overlap."""
    from freestack.spec import port_overlap

    def spec(pipeline: str, port: int, **deploy) -> object:
        local = {"port": port, **deploy.pop("local", {})}
        data = {**_base(), "name": pipeline, "deploy": {"local": local, **deploy}}
        return parse_spec(data, f"{pipeline}.yaml")

    a = spec("a", 9000)
    problem = port_overlap(spec("b", 9002), a, "include/pipelines/a.yaml")
    assert problem == (
        "9002 (this deployment 'b' takes 9002-9004: its address, then its blue and green servers) overlaps "
        "the ports of deployment 'a' of include/pipelines/a.yaml (deploy.local.port 9000: 9000-9002); "
        "choose a port at least 3 away from 9000, such as 9005"
    )
    assert "deployment 'b'" in port_overlap(a, spec("b", 8998), "b.yaml")
    assert port_overlap(spec("b", 9001, local={"host": "0.0.0.0"}), a, "a.yaml")  # every address
    for other in (
        spec("b", 9003),
        spec("b", 8997),
        spec("b", 9000),
        spec("b", 9001, local={"host": "10.0.0.5"}),
        spec("b", 9001, target="kubernetes"),
        spec("b", 9001, name="a"),
    ):
        assert port_overlap(other, a, "a.yaml") is None
