"""`freestack serve status` reads a deployment DOWN when its process is gone, and when the process runs but
its model does not answer (an MLServer whose model was unloaded answers its own health, not the model's);
`freestack serve deploy` declares a running server current only once its version's files check."""

from __future__ import annotations

from pathlib import Path

from freestack.cli import main
from freestack.cli.serve import _status_lines

RECORD = {
    "model": "digits",
    "name": "digits",
    "version": "v3",
    "state": "serving",
    "predict_url": "http://127.0.0.1:9/v2",
    "metrics_url": "-",
    "pid": 42,
    "color": "blue",
    "workers": 1,
    "threads": 1,
    "deployed_at": "-",
    "log": "-",
}


def test_serving_only_when_the_process_runs_and_the_model_answers():
    assert _status_lines({**RECORD, "alive": True, "health": "ok"})[0] == "digits/digits: v3 serving"
    gone = _status_lines({**RECORD, "alive": False, "health": None})[0]
    assert "DOWN (the recorded process is gone" in gone
    unloaded = _status_lines({**RECORD, "alive": True, "health": "HTTP 404"})[0]
    assert unloaded.startswith(
        "digits/digits: v3 DOWN (the process runs but its model does not answer: health HTTP 404"
    )
    busy = _status_lines({**RECORD, "alive": True, "health": "unreachable (timed out)"})
    assert busy[0] == "digits/digits: v3 serving" and "(health: unreachable (timed out))" in busy[1]


def test_deploy_of_a_changed_version_already_served_fails_and_leaves_the_server(
    capsys, storage, tmp_path, monkeypatch
):
    """`freestack serve deploy` of the version a live server already serves (it answers its smoke test)
    declares that server current only once the version's files are checked as every load checks them:
    one byte of model.safetensors changed since registration is one error line naming the file and what
    to do, exit 1, and the deployment's record (the running server) as it was."""
    from freestack.serving import local as local_mod
    from freestack.serving.records import Deployments
    from tests.support.serving import make_version

    uri = make_version(storage, "digits", "v1", tmp_path)
    url = "http://127.0.0.1:9"
    deployments = Deployments(storage, "digits")
    deployments.write("digits", {"version": "v1", "url": url, "predict_url": f"{url}/p", "pid": 4242}, None)
    monkeypatch.setattr(local_mod, "process_alive", lambda record: record is not None)
    monkeypatch.setattr(local_mod, "_still_serves", lambda *args: True)  # it answers the version's smoke test
    assert main(["serve", "deploy", "digits", "--version", "v1"]) == 0
    assert f"digits v1 serves at {url}/p (pid 4242)" in capsys.readouterr().out
    weights = Path(uri.removeprefix("file://")) / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    before = deployments.get("digits")
    assert main(["serve", "deploy", "digits", "--version", "v1"]) == 1
    got = capsys.readouterr()
    assert (
        got.out == ""
        and got.err.count("\n") == 1
        and got.err.startswith("error: digits v1 was not deployed: ")
    )
    for said in (
        f"{uri}/model.safetensors does not match what was registered",
        "register the candidate again under a new version, or retrain",
        "The running server was left as it is; roll back (`freestack models rollback digits`)",
    ):
        assert said in got.err, (said, got.err)
    assert deployments.get("digits") == before
