"""The ``freestack`` command: one-line errors and exit codes, ``--json``, ``models show`` on a screen,
the commands it wires to the lead's functions, ``airflow`` passthrough, uploads."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import airflow  # noqa: F401  (Airflow sets up logging when imported: here, not on a test's captured output)
import pytest

from freestack.cli import main
from tests.support.registry import make_model_folder

GATE = {"promote": True, "decision": "promote", "reasons": [f"reason {i}" for i in range(7)]}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


def one_error_line(err: str, *parts: str) -> None:
    """``err`` is one line, ``error: ...``, naming every part, and no traceback."""
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, (part, err)


@pytest.fixture
def store(tmp_path):
    """A registry with digits v1 (production) and v2, whose metrics and gate reasons overflow a screen."""
    from freestack.registry.core import ModelRegistry

    reg = ModelRegistry((tmp_path / "store").as_uri(), "digits")
    for i, v in enumerate(("v1", "v2")):
        folder = make_model_folder(tmp_path / v, seed=i, accuracy=0.8 + i / 10)
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics.update({f"test_extra_{k:02d}": k / 100 for k in range(15)})
        (folder / "metrics.json").write_text(json.dumps(metrics))
        reg.register(folder.as_uri(), v, lineage_updates={"gate": GATE})
    reg.promote("v1")
    return (tmp_path / "store").as_uri()


# -- errors: one line, what was wrong and what exists, exit 1 (2 for usage) ---------------------------------


def test_unknown_pipeline_names_the_pipelines(capsys):
    code, out, err = run(capsys, "lake", "nosuch")
    assert code == 1 and out == ""
    one_error_line(
        err,
        "no pipeline 'nosuch'",
        "pipelines: arith, arith_tiny, arith_tiny_grpo, digits, reviews, tools_tiny",
    )


def test_unknown_model_names_the_models(capsys, store):
    code, _, err = run(capsys, "models", "list", "nosuch", "--root", store)
    assert code == 1
    one_error_line(err, "no model 'nosuch' under", "/store/registry", "models: digits")


def test_models_list_without_a_model_lists_every_model_under_the_root(capsys, store):
    code, out, _ = run(capsys, "models", "list", "--root", store, "--json")
    assert code == 0
    assert json.loads(out)["models"] == [
        {"model": "digits", "versions": 2, "latest": "v2", "production": "v1"}
    ]
    code, out, _ = run(capsys, "models", "list", "--root", store)
    assert code == 0 and "digits" in out and "registry: " in out


def test_unknown_version_names_versions_and_aliases(capsys, store):
    code, _, err = run(capsys, "models", "show", "digits", "v9", "--root", store)
    assert code == 1
    one_error_line(err, "'v9' is not registered", "v1, v2", "aliases: production")


def test_invalid_spec_names_file_and_field(capsys, tmp_path, monkeypatch):
    (tmp_path / "broken.yaml").write_text("name: broken\nsource: {}\n")
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(tmp_path))
    code, _, err = run(capsys, "lake", "broken")
    assert code == 1
    one_error_line(err, "broken.yaml", "source")


def test_validate_names_each_broken_spec_and_exits_1(capsys, tmp_path, monkeypatch):
    """``freestack validate`` reads every spec as the DAG processor does: the valid ones get a line on
    stdout, each invalid one the import error's message on stderr (file, field, fix), and exit 1."""
    from tests.unit.test_spec import DIGITS

    (tmp_path / "digits.yaml").write_bytes(DIGITS.read_bytes())
    text = DIGITS.read_text().replace("name: digits", "name: counts", 1)
    (tmp_path / "counts.yaml").write_text(text.replace("allowed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", "min: 0"))
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(tmp_path))
    code, out, err = run(capsys, "validate")
    assert code == 1 and out.startswith(f"ok {tmp_path / 'digits.yaml'}: DAGs digits_ingest, digits_train")
    one_error_line(
        err,
        "counts.yaml: gate.metric: 'accuracy' is a classification metric",
        "set model.task: classification",
    )
    code, out, err = run(capsys, "validate", "digits")
    assert code == 0 and err == "" and "task classification" in out
    code, out, _ = run(capsys, "validate", "--json", str(tmp_path / "counts.yaml"))
    (result,) = json.loads(out)
    assert code == 1 and result["ok"] is False and "gate.metric" in result["error"]


def test_validate_refuses_a_deployment_on_another_ones_blue_or_green_port(capsys, tmp_path, monkeypatch):
    """A local deployment takes port, port + 1 and port + 2: a second spec whose address is digits's
    blue server (9001) is refused naming both specs and ports; one at digits's own address (taking turns
    there, as the demo's pipelines do) or 3 ports away is not. (The ports are written out: the suite's
    serve_port setting, the default, is not 9000.)"""
    from tests.unit.test_spec import DIGITS

    for name, port in (("digits", 9000), ("blue", 9001), ("turns", 9000), ("next", 9003)):
        text = DIGITS.read_text().replace("name: digits", f"name: {name}", 1)
        (tmp_path / f"{name}.yaml").write_text(
            text.replace("deploy:\n", f"deploy:\n  local: {{port: {port}}}\n")
        )
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(tmp_path))
    code, out, err = run(capsys, "validate", "blue")
    assert code == 1 and out == ""
    one_error_line(
        err,
        f"{tmp_path / 'blue.yaml'}: deploy.local.port: 9001 (this deployment 'blue' takes 9001-9003",
        f"deployment 'digits' of {tmp_path / 'digits.yaml'} (deploy.local.port 9000: 9000-9002)",
        "choose a port at least 3 away from 9000",
    )
    code, out, err = run(capsys, "validate", "--json")
    results = {Path(r["file"]).stem: r for r in json.loads(out)}
    assert code == 1 and not any(r["ok"] for r in results.values())  # each overlaps blue's 9001-9003
    assert all("deployment 'blue' of" in results[n]["error"] for n in ("digits", "turns", "next"))
    (tmp_path / "blue.yaml").unlink()
    code, _, err = run(capsys, "validate")
    assert code == 0 and err == ""


def test_unreachable_data_api(capsys, tmp_path, monkeypatch, clean_stores):
    (tmp_path / "x.txt").write_text("x")
    monkeypatch.setenv(
        "AIRFLOW_CONN_D_DOWN",
        json.dumps(
            {"conn_type": "freestack_data", "host": f"http://127.0.0.1:{_dead_port()}", "password": "fsk_x"}
        ),
    )
    code, _, err = run(capsys, "data", "put", str(tmp_path / "x.txt"), "data://d_down@alice/c/x.txt")
    assert code == 1
    one_error_line(err, "cannot be reached", "freestack data-api")


def test_unreachable_airflow_says_make_up(capsys, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{_dead_port()}")
    code, _, err = run(capsys, "backfill", "digits", "--start", "2026-11-01", "--end", "2026-11-02")
    assert code == 1
    one_error_line(err, "Airflow is not reachable", "make up")


def test_deployment_errors(capsys, tmp_path):
    root = (tmp_path / "empty").as_uri()
    code, _, err = run(capsys, "serve", "--root", root, "stop", "nosuch")
    assert code == 1
    one_error_line(err, "no deployment named 'nosuch'", "freestack serve deploy")
    code, _, err = run(capsys, "serve", "canary", "digits", "promote")
    assert code == 1
    one_error_line(err, "deploys locally", "canaries are a Kubernetes feature")


@pytest.mark.parametrize(
    "exc_name",
    [
        "RegistryError",
        "DeployError",
        "SpecError",
        "SettingsError",
        "AclError",
        "DataApiUnavailable",
        "FileNotFoundError",
        "KeyError_",
    ],
)
def test_every_known_error_class_is_one_line(capsys, monkeypatch, exc_name):
    from freestack.cli import models
    from freestack.dataapi.keys import KeyError_
    from freestack.errors import DeployError, SpecError
    from freestack.registry.core import RegistryError
    from freestack.settings import SettingsError
    from freestack.storage.acl import AclError
    from freestack.storage.httpfs import DataApiUnavailable

    made = {
        "RegistryError": RegistryError("r is wrong; do r"),
        "DeployError": DeployError("d is wrong\nsecond line"),
        "SpecError": SpecError("x.yaml", "gate", "bad"),
        "SettingsError": SettingsError("invalid setting: FREESTACK_X"),
        "AclError": AclError("a is wrong"),
        "DataApiUnavailable": DataApiUnavailable("down; start it"),
        "FileNotFoundError": FileNotFoundError(2, "No such file or directory", "/nope"),
        "KeyError_": KeyError_("k"),
    }[exc_name]

    def fail(*a, **k):
        raise made

    monkeypatch.setattr(models, "registry", fail)
    code, _, err = run(capsys, "models", "list", "digits")
    assert code == 1
    one_error_line(err)
    assert "unexpected" not in err


def test_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    from freestack.cli import models

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(models, "registry", boom)
    code, _, err = run(capsys, "models", "list", "digits")
    assert code == 1
    one_error_line(err, "unexpected RuntimeError: boom", "--debug")
    code, _, err = run(capsys, "--debug", "models", "list", "digits")
    assert code == 1 and "Traceback" in err and err.rstrip().endswith("error: unexpected RuntimeError: boom")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["nosuch"], "No such command 'nosuch'"),
        (["lake", "digits", "--jsn"], "--jsn"),
        (["backfill", "digits", "--start", "2026-13-01", "--end", "2026-11-02"], "2026-13-01"),
        (["backfill", "digits", "--start", "2026-11-05", "--end", "2026-11-01"], "before --start"),
        (["serve", "canary", "digits", "nope"], "nope"),
        (["acl", "set", "data://alice/c"], "exactly one of --public, --private, --team"),
        (["serve", "predict", "m", "{not json"], "not valid JSON"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    one_error_line(err, needle, "--help")


def test_no_subcommand_prints_the_help(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 2 and "list" in out and "promote" in out


# -- --json: machine-readable only ---------------------------------------------------------------------------


def test_json_outputs_parse(capsys, store, tmp_path):
    code, out, _ = run(capsys, "models", "list", "digits", "--root", store, "--json")
    assert code == 0 and [v["version"] for v in json.loads(out)["versions"]] == ["v1", "v2"]
    code, out, _ = run(capsys, "models", "show", "digits", "production", "--root", store, "--json")
    assert code == 0 and json.loads(out)["version"] == "v1"
    code, out, _ = run(capsys, "serve", "--root", store, "status", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run(capsys, "lake", "digits", "--json")
    assert code == 0 and json.loads(out)["pipeline"] == "digits"
    keys = str(tmp_path / "keys.sqlite")
    assert main(["keys", "create", "dana", "--keys", keys]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "keys", "list", "--keys", keys, "--json")
    assert code == 0 and [k["user"] for k in json.loads(out)] == ["dana"]


# -- models show: a screen, the rest behind --details ------------------------------------------------------


def test_models_show_fits_a_screen(capsys, store):
    code, out, _ = run(capsys, "models", "show", "digits", "production", "--root", store)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) <= 25, out
    assert lines[0] == "digits v1" and "\x1b[" not in out  # plain text when not on a terminal
    for part in (
        "created",
        "aliases",
        "production",
        "promoted",
        "reason 0",
        "3 more",
        "test_accuracy",
        "0.8000",
        "--details",
    ):
        assert part in out, part
    assert "model-index:" not in out and "best_val_accuracy" not in out


def test_models_show_details(capsys, store):
    code, out, _ = run(capsys, "models", "show", "digits", "v2", "--root", store, "--details")
    assert code == 0
    for part in (
        "digits v2",
        "reason 6",
        "best_val_accuracy",
        "spec_hash",
        "model.safetensors",
        "model-index:",
    ):
        assert part in out, part


# -- the lead's commands, wired -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["version"],
        ["dags", "list", "-o", "json"],
        ["--help"],
        ["-h"],
        [
            "backfill",
            "create",
            "--dag-id",
            "digits_ingest",
            "--from-date",
            "2026-11-01",
            "--reprocess-behavior",
            "completed",
        ],
        ["tasks", "test", "--", "x"],
        [],
    ],
)
def test_airflow_args_pass_through_untouched(capsys, monkeypatch, argv):
    from freestack.cli import stack

    seen = []
    monkeypatch.setattr(stack, "airflow", lambda args: seen.append(args) or 7)
    assert main(["airflow", *argv]) == 7
    assert seen == [argv]


def test_demo_up_down_are_wired(monkeypatch):
    from freestack.cli import demo, stack

    calls = []
    monkeypatch.setattr(demo, "demo", lambda: calls.append("demo") or 0)
    monkeypatch.setattr(stack, "up", lambda timeout: calls.append(("up", timeout)) or 0)
    monkeypatch.setattr(stack, "down", lambda grace: calls.append(("down", grace)) or 3)
    assert (
        main(["demo"]) == 0
        and main(["up", "--timeout", "5"]) == 0
        and main(["up"]) == 0
        and main(["down"]) == 3
    )
    assert main(["down", "--grace", "2"]) == 3
    assert calls == ["demo", ("up", 5.0), ("up", 240.0), ("down", 30.0), ("down", 2.0)]


# -- uploads ---------------------------------------------------------------------------------------------------


def test_data_put_and_get(capsys, tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(bytes(range(256)) * 10_000)
    code, out, _ = run(capsys, "data", "put", str(src), (tmp_path / "up").as_uri() + "/")
    assert code == 0 and "uploaded" in out and "\x1b[" not in out  # no progress bar off a terminal
    assert (tmp_path / "up" / "blob.bin").read_bytes() == src.read_bytes()
    code, out, _ = run(
        capsys, "data", "get", (tmp_path / "up" / "blob.bin").as_uri(), str(tmp_path / "back.bin")
    )
    assert code == 0 and (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    code, _, err = run(capsys, "data", "get", (tmp_path / "up" / "nope.bin").as_uri(), str(tmp_path))
    assert code == 1
    one_error_line(err, "is not a file", "holds: blob.bin")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once closed


def test_models_push_to_the_hub(capsys, store, monkeypatch):
    from tests.fakes.hub import FakeHub

    hub = FakeHub().start()
    try:
        monkeypatch.setenv(
            "AIRFLOW_CONN_HF_TEST",
            json.dumps(
                {"conn_type": "huggingface", "password": "hf_fake", "extra": {"endpoint": hub.endpoint}}
            ),
        )
        code, out, err = run(
            capsys,
            "models",
            "push",
            "digits",
            "production",
            "--repo",
            "me/digits",
            "--conn",
            "hf_test",
            "--root",
            store,
            "--promote",
        )
    finally:
        hub.stop()
    assert code == 0, err
    assert out.startswith("pushed digits v1 to me/digits: commit ") and "moved tag production -> v1" in out
    assert "\x1b[" not in out  # no spinner off a terminal
    code, _, err = run(capsys, "models", "push", "digits", "v1", "--repo", "me/digits", "--root", store)
    assert code == 0 and "not pushed: connection 'huggingface_default' has no token" in err


def test_later_demo_rounds_shift_the_digits_one_or_two_pixels_never_more():
    from freestack.cli.demo import round_shift

    shifts = [round_shift(n) for n in range(1, 12)]
    assert shifts[:4] == [1, 2, 1, 2] and set(shifts) == {1, 2}
