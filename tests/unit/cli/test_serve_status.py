"""`freestack serve status` reads a deployment DOWN when its process is gone, and when the process runs but
its model does not answer (an MLServer whose model was unloaded answers its own health, not the model's)."""

from __future__ import annotations

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
