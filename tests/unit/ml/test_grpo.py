"""GRPO (freestack.ml.lm.grpo, train.objective: grpo): its advantages and loss as TRL's GRPOTrainer defines
them, the rewards (freestack.ml.lm.rewards), and a careless instruction-tuned tiny model whose exact match the
exact-match reward raises."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from freestack.ml.lm.chat import ChatColumns
from freestack.ml.lm.grpo import GrpoEncoding, GrpoSettings, group_advantages, grpo_loss
from freestack.ml.lm.prompts import load_tokenizer
from freestack.ml.lm.rewards import (
    RewardError,
    Sample,
    call_user,
    exact_match,
    json_schema,
    length,
    regex,
    user_function,
)
from freestack.ml.lm.rollout_sources import grpo_splits, up_to_end
from tests.support.checkpoints import MemoryCheckpoints

COLUMNS = ChatColumns(prompt="prompt", response="chosen")


def test_advantages_are_the_rewards_against_their_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4)
    first = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (torch.tensor([1.0, 0, 0, 0]).std() + 1e-4)
    assert torch.allclose(adv[:4], first) and torch.equal(adv[4:], torch.zeros(4))  # an even group: nothing
    assert torch.allclose(group_advantages(rewards, 4, "none")[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert torch.allclose(
        group_advantages(rewards, 4, "batch"),
        (rewards - rewards.view(2, 4).mean(1).repeat_interleave(4)) / (rewards.std() + 1e-4),
    )


def _by_hand(logps, old, ref, adv, mask, s: GrpoSettings) -> float:
    """TRL's GRPOTrainer._compute_loss, written out token by token."""
    per = []
    for i in range(logps.shape[0]):
        row = []
        for t in range(logps.shape[1]):
            ratio = math.exp(logps[i, t] - old[i, t])
            clip = min(max(ratio, 1 - s.epsilon), 1 + s.epsilon)
            loss = -min(ratio * adv[i], clip * adv[i])
            d = ref[i, t] - logps[i, t]
            row.append(loss + s.beta * (math.exp(d) - d - 1))
        per.append(row)
    per, mask = np.array(per), mask.numpy().astype(float)
    if s.loss == "grpo":
        return float(np.mean((per * mask).sum(1) / mask.sum(1)))
    if s.loss == "dr_grpo":
        return float((per * mask).sum() / (logps.shape[0] * s.max_completion_length))
    return float((per * mask).sum() / mask.sum())


@pytest.mark.parametrize("loss", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_the_clipped_loss_with_its_kl_term_is_trls(loss):
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(4, 5, generator=g) * 3
    old = logps + (torch.rand(4, 5, generator=g) - 0.5)  # a ratio away from 1: some tokens clipped
    ref = logps + (torch.rand(4, 5, generator=g) - 0.5)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    s = GrpoSettings(beta=0.04, epsilon=0.2, loss=loss, max_completion_length=5)
    got, stats = grpo_loss(logps, old, ref, adv, mask, s)
    assert float(got) == pytest.approx(_by_hand(logps, old, ref, adv, mask, s), rel=1e-5)
    assert 0 < stats["clip_ratio"] < 1 and stats["kl"] > 0
    same, stats = grpo_loss(logps, logps, None, adv, mask, GrpoSettings(loss=loss))  # one step a rollout
    assert stats == {"kl": 0.0, "clip_ratio": 0.0}
    # -A on every token: rows of 3, 5, 1 and 2 tokens summing -3 + 5 - 0.5 + 1
    want = {"grpo": (-1 + 1 - 0.5 + 0.5) / 4, "dr_grpo": 2.5 / (4 * 64)}.get(loss, 2.5 / 11)
    assert float(same) == pytest.approx(want)


def test_the_built_in_rewards_and_a_users_own(tmp_path):
    s = Sample("What is 3 + 4?", " 7 ", 2, {"chosen": "7", "other": 3})
    assert exact_match("chosen")(s) == 1.0 and exact_match("other")(s) == 0.0
    assert regex(r"\d+")(s) == 1.0 and regex(r"<answer>\d+</answer>")(s) == 0.0
    schema = {"type": "object", "required": ["a"]}
    assert json_schema(schema)(Sample("p", '{"a": 1}', 5, {})) == 1.0
    assert json_schema(schema)(Sample("p", '{"b": 1}', 5, {})) == json_schema(schema)(s) == 0.0
    assert length(4)(Sample("p", "x", 6, {})) == -0.5 and length(4)(s) == 0.0
    (tmp_path / "rewards.py").write_text(
        "def closeness(prompt, completion, chosen, **row):\n"
        "    return -abs(int(completion) - int(chosen)) if completion.strip().isdigit() else -10\n"
        "def broken(prompt, completion, **row):\n    return 'high'\n"
    )
    fn, lineage = user_function("rewards.py:closeness", tmp_path)
    assert call_user(fn, "rewards.py:closeness")(Sample("p", "9", 1, {"chosen": "7"})) == -2.0
    assert lineage["function"] == "rewards.py:closeness" and len(lineage["sha256"]) == 64
    broken, _ = user_function("rewards.py:broken", tmp_path)
    with pytest.raises(RewardError, match="returned 'high' .* a reward is a finite number"):
        call_user(broken, "rewards.py:broken")(s)
    with pytest.raises(RewardError, match="defines no function 'missing'"):
        user_function("rewards.py:missing", tmp_path)
    with pytest.raises(RewardError, match="is not a file"):
        user_function("nowhere.py:f", tmp_path)


def test_a_users_reward_takes_a_prompt_column_named_prompt(tmp_path):
    """train.md's example: ``model.data: {prompt: prompt, response: answer}`` and its own
    ``include/rewards.py:close_enough`` (the page's code). The row holds the ``prompt`` column; the
    function gets it once, as the ``prompt=`` keyword, and the row's other columns by name."""
    import textwrap

    from tests.unit.test_docs_pages import DOCS

    page = (DOCS / "stages" / "train.md").read_text()
    code = (
        page.split("The example's `include/rewards.py`:", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    )
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "rewards.py").write_text(textwrap.dedent(code))
    fn, _ = user_function("include/rewards.py:close_enough", tmp_path)
    reward = call_user(fn, "include/rewards.py:close_enough")
    row = {"id": "r1", "prompt": "What is 3 + 4?", "answer": "7"}
    assert reward(Sample("What is 3 + 4?", " 7 ", 2, row)) == 1.0
    assert reward(Sample("What is 3 + 4?", "9", 1, row)) == pytest.approx(1 / 3)
    assert reward(Sample("What is 3 + 4?", "seven", 1, row)) == -1.0
    seen: list[dict] = []

    def echo(**given) -> float:
        seen.append(given)
        return 0.0

    call_user(echo, "echo.py:echo")(Sample("p", "c", 1, {**row, "completion": "a column"}))
    assert seen == [{"id": "r1", "prompt": "p", "answer": "7", "completion": "c"}]


def test_the_spec_names_what_a_reward_lacks(tmp_path):
    from pydantic import ValidationError

    from freestack.train.spec import GrpoSpec

    own = tmp_path / "r.py"
    own.write_text(
        "import math\nfrom functools import partial\ndef ok(**kw):\n    return 1.0\nhalf = partial(ok)\n"
    )

    with pytest.raises(ValidationError, match="reward regex needs pattern"):
        GrpoSpec(rewards=[{"function": "regex"}])
    with pytest.raises(ValidationError, match="'mystery' is not a reward function"):
        GrpoSpec(rewards=[{"function": "mystery"}])
    with pytest.raises(ValidationError, match="two rewards are called the same"):
        GrpoSpec(rewards=[{"function": "exact_match"}, {"function": "exact_match", "weight": 2}])
    spec = GrpoSpec(
        rewards=[{"function": "json_schema", "schema": {"type": "object"}}, {"function": f"{own}:ok"}]
    )
    assert spec.reward_labels == ["json_schema", "ok"] and spec.rewards[0].schema_ == {"type": "object"}
    # a file's reference is checked when the spec is read (the file parsed, not run); a module's at import
    assert GrpoSpec(rewards=[{"function": f"{own}:half"}, {"function": "no_such_pkg.rewards:f"}])
    with pytest.raises(
        ValidationError, match=r"r.py defines no 'nosuch' at its top level \(its functions: ok\)"
    ):
        GrpoSpec(rewards=[{"function": f"{own}:nosuch"}])
    with pytest.raises(ValidationError, match="'include/nowhere.py:f': no such file"):
        GrpoSpec(rewards=[{"function": "include/nowhere.py:f"}])
    with pytest.raises(ValidationError, match="must be a .py file"):
        GrpoSpec(rewards=[{"function": f"{tmp_path}:ok"}])
    own.write_text("def ok(:\n")
    with pytest.raises(ValidationError, match="r.py, line 1: .*the file does not parse"):
        GrpoSpec(rewards=[{"function": f"{own}:ok"}])
    assert spec.rollouts == "auto"  # padded on a CPU, the engine on an accelerator
    with pytest.raises(ValidationError, match="'auto', 'continuous', 'padded' or 'server'"):
        GrpoSpec(rewards=[{"function": "exact_match"}], rollouts="remote")
    with pytest.raises(ValidationError, match="train.grpo.server names the deployment that samples"):
        GrpoSpec(rewards=[{"function": "exact_match"}], rollouts="server")


def test_rollouts_from_a_server_push_an_adapter_of_one_process(tmp_path):
    """``rollouts: server`` pushes the LoRA adapter being trained: full weights, or ranks, are refused."""
    from pydantic import ValidationError

    from freestack.spec import PipelineSpec
    from tests.dags.test_preference_dag import grpo_spec

    data = grpo_spec(tmp_path)
    server = {"url": "http://127.0.0.1:9010/v1", "model": "arith_tiny", "api_key": {"conn_id": "rollouts"}}
    data["train"]["grpo"].update(rollouts="server", server=server)
    with pytest.raises(ValidationError, match="rollouts: server pushes the LoRA adapter being trained"):
        PipelineSpec.model_validate(data)
    data["model"]["peft"] = {"r": 4, "alpha": 8}
    spec = PipelineSpec.model_validate(data)
    assert (
        spec.train.grpo.server.model == "arith_tiny" and spec.train.grpo.server.api_key.conn_id == "rollouts"
    )
    data["train"]["distributed"] = {"processes_per_node": 2}
    with pytest.raises(ValidationError, match="samples for one training process"):
        PipelineSpec.model_validate(data)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from tests.support.hf_tiny import tiny_causal_lm

    return load_tokenizer(tiny_causal_lm(tmp_path_factory.mktemp("lm"), pretrain_steps=0))


def test_prompts_are_left_padded_with_their_rows(tok):
    enc = GrpoEncoding(tok, COLUMNS, 48)
    rows = pd.DataFrame(
        [{"prompt": "What is 3 + 4?", "chosen": "7", "day": 1}, {"prompt": "Hi", "chosen": "x", "day": 2}]
    )
    out = enc.encode_frame(rows)
    ids, mask = out.x["input_ids"], out.x["attention_mask"]
    assert mask[1, 0] == 0 and mask[0].all() and mask[1, -1] == 1  # the shorter prompt padded on the left
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")
    assert [enc.table[i][1]["day"] for i in out.x["row"]] == [1, 2] and enc.table[0][0] == "What is 3 + 4?"
    assert enc.as_dict()["chat"]["columns"]["response"] == "chosen"  # what evaluation compares with


def test_grpo_rewarded_by_the_judge_raises_a_careless_models_exact_match(tmp_path):
    """The starting point is the tiny base instruction-tuned on answers of which 30% are wrong (as the DPO
    test's); GRPO samples 4 answers a prompt, the LLM judge rewards them (``function: judge``: the stand-in
    judge on 127.0.0.1 scores 5 an answer equal to the reference, 1 another, over HTTP, each completion a
    request), and the held-out exact match rises, with the reward on validation (the run's metric)."""
    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.grpo import GrpoNet
    from freestack.ml.lm.prompts import eos_ids
    from freestack.ml.lm.rewards import RewardSet
    from freestack.ml.loop import TrainConfig, fit_source
    from freestack.ml.stream import InMemory
    from freestack.train.objectives import judge_reward
    from tests.support.hf_tiny import tiny_causal_lm
    from tests.support.preference import careless_sft, preference_pairs
    from tests.unit.evaluate.judge_standin import StandinJudge
    from tests.unit.ml.test_preference import _exact_match
    from tests.unit.train.test_judge_reward import _spec

    base = tiny_causal_lm(tmp_path / "lm")
    tok, model = load_tokenizer(base), load_causal_lm(str(base))
    pairs = preference_pairs(400, seed=1)
    train, held_out = pairs.iloc[:240], pairs.iloc[240:]
    careless_sft(model, tok, train)
    before = _exact_match(model, tok, held_out)

    judge = StandinJudge()
    spec = _spec(judge.url)
    rewards = RewardSet((judge_reward(spec, spec.train.grpo.rewards[0], "sk-judge"),))
    settings = GrpoSettings(num_generations=4, max_completion_length=12, beta=0.0)
    net = GrpoNet(
        model, grpo=settings, reward_names=tuple(rewards.names), base={}, columns=COLUMNS, max_length=48
    )
    enc = GrpoEncoding(tok, COLUMNS, 48)
    splits = {name: enc.encode_frame(rows) for name, rows in (("train", train), ("val", held_out))}
    plain = {
        k: InMemory({n: torch.tensor(v) for n, v in e.x.items()}, torch.tensor(e.y))
        for k, e in splits.items()
    }
    sources = grpo_splits(net, plain, enc, rewards, eos_ids(tok, model.generation_config.to_dict()))
    start = sources["val"].scores(net, torch.device("cpu"))
    # 4 epochs: the first step's policy moves away, and the reward climbs past its start from the second
    # (0.475 -> 0.24, 0.36, 0.58, 0.61 here; the held-out exact match 0.24 -> 0.31)
    config = TrainConfig(epochs=4, learning_rate=1e-3, batch_size=16, warmup_epochs=0, device="cpu")
    try:
        result = fit_source(net, sources["train"], sources["val"], config, task="grpo")
    finally:
        judge.stop()
    after = _exact_match(model, tok, held_out)
    print(f"exact match on 160 held-out prompts: sft {before:.3f}, after grpo {after:.3f}")
    assert start["reward_judge"] == pytest.approx(before, abs=0.02), start  # greedy answers, judged
    assert result.metric == "reward" and result.best_metric > start["reward"]
    row = result.history[-1]
    assert {
        "train_reward",
        "train_reward_std",
        "train_reward_judge",
        "train_kl",
        "train_clip_ratio",
    } <= set(row)
    assert 0 < row["train_reward"] < 1 and row["train_completion_length"] > 1
    assert after >= before + 0.05, (before, after)


def test_a_killed_grpo_run_resumes_to_the_same_steps_history_and_weights(tmp_path):
    """A run killed after its first epoch's checkpoint is retried: the loop resumes from the checkpoint
    with the steps it had kept, samples the same rollouts (every epoch is seeded), and ends with the
    steps, history and weights of a run never killed."""
    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.grpo import GrpoNet
    from freestack.ml.lm.prompts import eos_ids
    from freestack.ml.lm.rewards import Reward, RewardSet
    from freestack.ml.loop import TrainConfig, fit_source
    from freestack.ml.stream import InMemory
    from tests.support.hf_tiny import tiny_causal_lm
    from tests.support.preference import preference_pairs

    base = tiny_causal_lm(tmp_path / "lm", pretrain_steps=0)
    tok = load_tokenizer(base)
    pairs = preference_pairs(24, seed=3)
    config = TrainConfig(epochs=3, batch_size=8, learning_rate=1e-3, warmup_epochs=0, device="cpu")
    settings = GrpoSettings(num_generations=4, max_completion_length=6, beta=0.04)
    rewards = RewardSet((Reward("exact_match", 1.0, exact_match("chosen")), Reward("short", 0.1, length(3))))

    def run(store, kill_at=None):
        model = load_causal_lm(str(base))
        names = tuple(rewards.names)
        net = GrpoNet(model, grpo=settings, reward_names=names, base={}, columns=COLUMNS, max_length=48)
        enc = GrpoEncoding(tok, COLUMNS, 48)
        e = enc.encode_frame(pairs)
        plain = {
            s: InMemory({n: torch.tensor(v) for n, v in e.x.items()}, torch.tensor(e.y))
            for s in ("train", "val")
        }
        splits = grpo_splits(net, plain, enc, rewards, eos_ids(tok, model.generation_config.to_dict()))
        train, val = splits["train"], splits["val"]

        def killed(row):
            if row["epoch"] == kill_at:
                raise RuntimeError("killed")

        return fit_source(net, train, val, config, task="grpo", checkpoints=store, on_epoch=killed)

    whole = run(MemoryCheckpoints())
    store = MemoryCheckpoints()
    with pytest.raises(RuntimeError, match="killed"):
        run(store, kill_at=2)
    again = run(store)
    assert again.resumed_from == 1 and len(whole.steps) == 9 and whole.steps[-1]["epoch"] == 3
    timeless = lambda h: [{k: v for k, v in r.items() if k != "samples_per_s"} for r in h]  # noqa: E731
    assert again.steps == whole.steps and timeless(again.history) == timeless(whole.history)
    want, got = whole.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_rollouts_from_the_continuous_batching_engine(tmp_path):
    """``rollouts: continuous``: the completions come from freestack's engine on the model as it is at each
    step. Its greedy answers score as ``generate``'s; a run's sampled reward rises; the attention the
    batching switched the model to (paged, for an eager model) is the rollouts' only, never the training
    forward's; the engine is stopped when the run ends."""
    import threading

    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.grpo import GrpoNet
    from freestack.ml.lm.prompts import eos_ids
    from freestack.ml.lm.rewards import Reward, RewardSet
    from freestack.ml.loop import TrainConfig, fit_source
    from freestack.ml.stream import InMemory
    from tests.support.hf_tiny import tiny_causal_lm
    from tests.support.preference import careless_sft, preference_pairs

    base = tiny_causal_lm(tmp_path / "lm")
    tok, model = load_tokenizer(base), load_causal_lm(str(base))
    pairs = preference_pairs(400, seed=1)
    careless_sft(model, tok, pairs.iloc[:240])
    model.set_attn_implementation("eager")
    rewards = RewardSet((Reward("exact_match", 1.0, exact_match("chosen")),))
    enc = GrpoEncoding(tok, COLUMNS, 48)
    raw = {
        name: InMemory({n: torch.tensor(v) for n, v in e.x.items()}, torch.tensor(e.y))
        for name, e in (
            ("train", enc.encode_frame(pairs.iloc[:240])),
            ("val", enc.encode_frame(pairs.iloc[240:])),
        )
    }
    settings = GrpoSettings(num_generations=4, max_completion_length=12, rollouts="continuous")
    net = GrpoNet(
        model, grpo=settings, reward_names=("exact_match",), base={}, columns=COLUMNS, max_length=48
    )
    eos = eos_ids(tok, model.generation_config.to_dict())
    splits = grpo_splits(net, raw, enc, rewards, eos)
    train, val = splits["train"], splits["val"]
    xb, _ = next(
        iter(raw["val"].ordered(32, torch.device("cpu")))
    )  # greedy: the engine's tokens are generate's
    width = int(xb["attention_mask"].sum(dim=1).max())
    ids, mask = xb["input_ids"][:, -width:], xb["attention_mask"][:, -width:]
    engine_sampler = train.samplers["continuous"]
    batched = engine_sampler.sample(ids, mask, 0.0, 1.0)
    pad = tok.pad_token_id
    plain = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=pad
    )
    ends = lambda rows: zip(rows, up_to_end(rows, eos).sum(dim=1), strict=True)  # noqa: E731
    cut = lambda rows: [r[: int(n)].tolist() for r, n in ends(rows)]  # noqa: E731
    assert cut(batched) == cut(plain[:, width:]) and model.config._attn_implementation == "eager"
    engine = engine_sampler.running[0]
    assert engine.attention == "paged|eager" and engine.alive()
    start = val.scores(net, torch.device("cpu"))  # validation answers by generate, the engine idle

    config = TrainConfig(epochs=3, learning_rate=1e-3, batch_size=16, warmup_epochs=0, device="cpu")
    result = fit_source(net, train, val, config, task="grpo")
    first, last = (r["train_reward"] for r in (result.history[0], result.history[-1]))
    print(f"sampled reward by epoch: {first:.3f} -> {last:.3f}; greedy before {start['reward']:.3f}")
    assert last > first and len(result.steps) == 45
    # its tokens: every step's prompts, once per generation, and their sampled completions
    g = settings.num_generations  # 240 rows in batches of 16: every step's 16 prompts, g completions each
    prompts = int(raw["train"].x["attention_mask"].sum()) * g * config.epochs
    completions = sum(s["completion_length"] for s in result.steps) * 16 * g
    assert result.tokens == pytest.approx(prompts + completions, abs=1), (result.tokens, prompts, completions)
    assert not engine_sampler.running and not engine.alive() and model.config._attn_implementation == "eager"
    val.scores(net, torch.device("cpu"))  # the test split's answers, after the loop: no engine again
    assert not engine_sampler.running
    alive = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon]
    assert alive == [threading.main_thread().name], alive
