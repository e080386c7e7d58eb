"""The text signals of a text-generation model (freestack.monitor.text_drift) on a tiny random encoder built
here: 20 unshifted days of prompts stay quiet, a day with a new kind of prompt alerts through the monitor's
alert; the empty, refusal and truncation rates; a missing encoder names its spec field."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from freestack.monitor import text_drift
from freestack.monitor.core import alerts_of, build_reference, judge_version
from freestack.monitor.report import render
from freestack.monitor.spec import TextDrift
from freestack.registry.core import registry_for
from freestack.spec import load_spec, spec_file
from freestack.storage import join, to_path
from tests.support.hf_tiny import tiny_text_model

DAYS, ROWS, REFERENCE = 20, 200, 64
NUMBERS = [str(i) for i in range(10)]
WORDS = ["what", "is", "plus", "minus", "times", "add", "and", "to", "write", "a", "poem", "about", "the"]
TOPICS = ["sea", "moon", "love", "tree", "night", "rain"]


def tiny_encoder(folder, seed: int = 0):
    """A bare BERT (2 layers, width 32, random weights) with a WordPiece tokenizer over the tests' words."""
    return tiny_text_model(folder, seed, head="bare", words=NUMBERS + WORDS + TOPICS)


def arithmetic(rng) -> tuple[str, str]:
    a, b = rng.integers(0, 10, 2)
    op = rng.choice(["plus", "minus", "times"])
    return (f"what is {a} {op} {b}", str({"plus": a + b, "minus": a - b, "times": a * b}[op]))


def poem(rng) -> tuple[str, str]:
    return f"write a poem about the {rng.choice(TOPICS)}", str(rng.integers(0, 10))


def day(rng, rows: int = ROWS, shifted: float = 0.0) -> pd.DataFrame:
    """A day's logged rows as the model server writes them (input.prompt, prediction, finish_reason, ...);
    a ``shifted`` share of the prompts ask for poems instead of arithmetic (the answers stay alike)."""
    pairs = [poem(rng) if rng.random() < shifted else arithmetic(rng) for _ in range(rows)]
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(rows)],
            "row": 0,
            "input.prompt": [p for p, _ in pairs],
            "prediction": [a for _, a in pairs],
            "completion_chars": [len(a) for _, a in pairs],
            "finish_reason": "stop",
            "truncated": False,
        }
    )


def evaluated(spec, version: str) -> dict:
    """Write ``version``'s evaluation sample (:data:`REFERENCE` arithmetic prompts as chats, and their
    answers) into the registry as evaluate does; return its monitoring reference (not written)."""
    ref = day(np.random.default_rng(0), REFERENCE)
    sample = {
        "chats": [[{"role": "user", "content": p}] for p in ref["input.prompt"]],
        "outputs": ref["prediction"].tolist(),
    }
    path = join(to_path(registry_for(spec).version_uri(version)), text_drift.SAMPLE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sample))
    frame = pd.DataFrame({"prompt": ref["input.prompt"]})
    predicted = ref["completion_chars"].astype(float).tolist()
    return build_reference(spec, frame, predicted, version=version, metric=None, source="window")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The arith_tiny spec with a storage root of its own, the tiny encoder in monitor.text, and version v1's
    evaluation sample (64 arithmetic prompts as chats, and their answers) in the registry."""
    tmp = tmp_path_factory.mktemp("text-drift")
    base = load_spec(spec_file("arith_tiny"))
    text = TextDrift(encoder=str(tiny_encoder(tmp / "encoder")))
    spec = base.model_copy(
        update={"storage_root": tmp.as_uri(), "monitor": base.monitor.model_copy(update={"text": text})}
    )
    return spec, evaluated(spec, "v1")


def test_unshifted_days_stay_quiet_and_a_shifted_day_alerts(setup):
    spec, _ = setup
    rng = np.random.default_rng(7)
    quiet = [text_drift.judge(spec, "v1", day(rng)) for _ in range(DAYS)]
    alarms = sum(bool(v["drifted"]) for v in quiet)
    prompts = [next(s for s in v["signals"] if s["name"] == "prompts") for v in quiet]
    shifted = text_drift.judge(spec, "v1", day(np.random.default_rng(8), shifted=0.3))
    got = next(s for s in shifted["signals"] if s["name"] == "prompts")
    print(
        f"\nunshifted: {alarms} alarm(s) in {DAYS} days of {ROWS} prompts; prompts MMD² max "
        f"{max(s['value'] for s in prompts):.4f}, p-value min {min(s['p_value'] for s in prompts):.3f}; "
        f"30% poems: MMD² {got['value']:.4f}, p-value {got['p_value']:.3f}, drifted {shifted['drifted']}"
    )
    assert alarms <= 1
    assert got["drifted"] and "prompts" in shifted["drifted"]


def test_a_shifted_day_raises_the_monitor_alert_and_reports_it(setup):
    spec, reference = setup
    verdict = judge_version(reference, day(np.random.default_rng(9), shifted=0.3), pd.DataFrame(), spec)
    assert verdict["status"] == "drift"
    lines = alerts_of([verdict], spec, "report.html")
    assert any(a["series"] == "text.prompts" and "MMD²" in a["message"] for a in lines)
    summary = {
        "model": "arith_tiny",
        "interval": {"start": "2026-11-01", "end": "2026-11-02"},
        "status": "drift",
        "rows": ROWS,
        "files": 1,
        "labels": 0,
        "alerts": lines,
        "notes": [],
        "problems": [],
        "thresholds": spec.monitor.thresholds.model_dump(),
        "versions": [verdict],
    }
    page, _ = render(summary)
    assert "text signals" in page and "prompts" in page and "stop 100.0%" in page
    quiet = judge_version(reference, day(np.random.default_rng(10)), pd.DataFrame(), spec)
    assert not quiet["text"]["drifted"]


def test_rates_against_the_evaluation(setup):
    spec, _ = setup
    spec = spec.model_copy(
        update={"monitor": spec.monitor.model_copy(update={"text": TextDrift(alert_on=["refusal", "empty"])})}
    )
    rows = day(np.random.default_rng(11))
    rows.loc[:59, "prediction"] = "I cannot help with that"
    rows.loc[60:69, "prediction"] = ""
    rows.loc[70:119, "finish_reason"] = "length"
    got = {s["name"]: s for s in text_drift.judge(spec, "v1", rows)["signals"]}
    assert set(got) == {"empty", "refusal", "truncation"}  # no encoder: the rates only
    assert got["refusal"]["value"] == 0.3 and got["refusal"]["reference"] == 0 and got["refusal"]["alerts"]
    assert got["empty"]["value"] == 0.05 and not got["empty"]["drifted"]  # under the +0.1 increase
    # the evaluation kept no finish reasons: the ceiling (0.2) judges; drifted, but not among alert_on
    assert got["truncation"]["reference"] is None and got["truncation"]["drifted"]
    assert not got["truncation"]["alerts"]


def test_a_missing_encoder_names_the_field(setup, tmp_path):
    spec, _ = setup
    cfg = TextDrift(encoder=str(tmp_path / "no-such-encoder"))
    with pytest.raises(text_drift.TextDriftError, match=r"monitor\.text\.encoder .*does not exist"):
        text_drift.encoder_folder(cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(text_drift.TextDriftError, match="holds no config.json"):
        text_drift.encoder_folder(TextDrift(encoder=str(empty)))


def test_prompt_text_and_mmd():
    chat = json.dumps([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert text_drift.prompt_text(chat) == "hi" and text_drift.prompt_text("[not json") == "[not json"
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(80, 4))
    same = text_drift.mmd_test(x, y, 200)
    moved = text_drift.mmd_test(x, y + 1.0, 200)
    assert same["p_value"] > 0.05 and moved["p_value"] < 0.01 and moved["mmd2"] > same["mmd2"]


def test_an_unreachable_hub_encoder_names_the_field(monkeypatch):
    from freestack.ml import pretrained

    def unreachable(repo, revision="main", **_):  # what fetch_base says of a Hub it cannot reach
        raise pretrained.PretrainedError(
            f"model.base {repo!r} (revision {revision}) cannot be fetched from the Hub"
        )

    monkeypatch.setattr(pretrained, "fetch_base", unreachable)
    with pytest.raises(
        text_drift.TextDriftError, match=r"^monitor\.text\.encoder 'team/no-encoder' .*cannot be fetched"
    ):
        text_drift.encoder_folder(TextDrift(encoder="team/no-encoder"))


def test_the_monitor_judges_served_generations_and_keeps_the_signals(setup):
    """The server's request log (RequestLog.add_generated) through monitor(): summary.json holds the text
    signals, and the shifted day's alert line names the prompts."""
    from datetime import UTC, datetime, timedelta

    from freestack.ml.lm.answers import Completion
    from freestack.monitor.core import REFERENCE_FILE, monitor
    from freestack.storage import write_json
    from freestack.tracking.wandb import WandbSettings
    from freestack_server.core.requestlog import RequestLog, monitoring_uri

    spec, reference = setup
    write_json(join(to_path(registry_for(spec).version_uri("v1")), REFERENCE_FILE), reference)
    log = RequestLog(
        monitoring_uri(spec.root, spec.model_name),
        rate=1.0,
        model=spec.model_name,
        version="v1",
        deployment=spec.model_name,
        columns=[("prompt", "text")],
        classes=[],
    )
    start = datetime(2026, 11, 10, tzinfo=UTC)
    rows = day(np.random.default_rng(12), shifted=0.3)
    for i, (p, a) in enumerate(zip(rows["input.prompt"], rows["prediction"], strict=True)):
        log.add_generated(f"r{i}", [p], [Completion(a, 8, 2, "stop")], ts=start + timedelta(minutes=i))
    log.flush()
    summary = monitor(
        spec, start, start + timedelta(days=1), tracking_settings=WandbSettings(mode="disabled")
    )
    (version,) = summary["versions"]
    assert summary["alert"] and {s["name"] for s in version["text"]["signals"]} >= {"prompts", "refusal"}
    assert any(a["series"] == "text.prompts" for a in summary["alerts"])
    kept = json.loads(to_path(summary["report"]).parent.joinpath("summary.json").read_text())
    assert kept["versions"][0]["text"]["drifted"] == version["text"]["drifted"]
