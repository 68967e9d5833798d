"""The online driver (PPO, RLOO, GRPO): each raises a toy reward on the tiny model; its stages against hand-computed
values; bad input named; SIGKILL resume ends where an uninterrupted run ends; 2 processes = 1 with twice the chunks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from alignkit.chat import chat_prompt_ids
from alignkit.losses import gae, whiten
from alignkit.models import load_model
from alignkit.models.actor_critic import PolicyAndCritic
from alignkit.models.heads import load_head_model
from alignkit.trainers.engine import TrainConfig
from alignkit.trainers.experience import token_rewards
from alignkit.trainers.online import (OnlineConfig, adapt_kl_coef, check_same_tokenizer, chunk_prompts,
                                      make_experience, sample, train_online, whiten_advantages)

SCRIPT = Path(__file__).parent / "scripts" / "online_tiny.py"


def upper_half(batch):
    """The toy reward: the share of reply tokens in the upper half of the tiny vocabulary (259 byte tokens)."""
    return ((batch.response_ids >= 130) & batch.response_mask).sum(-1).float() / batch.response_mask.sum(-1).clamp(min=1)


@pytest.fixture()
def tiny(tiny_dir):
    return load_model(str(tiny_dir))


def _prompts(tokenizer, n=16):
    return chat_prompt_ids(tokenizer, [f"say {i} " * (1 + i % 3) for i in range(n)])


def _mean_reward(policy, tokenizer, prompts) -> float:
    config = OnlineConfig(max_new_tokens=6, num_samples=8, prompts_per_chunk=len(prompts))
    batch = sample(policy, prompts, config=config, tokenizer=tokenizer, generator=torch.Generator().manual_seed(99))
    return upper_half(batch).mean().item()


@pytest.mark.parametrize("algorithm", ["ppo", "rloo", "grpo"])
def test_each_method_raises_a_toy_reward(tiny_dir, algorithm):
    torch.manual_seed(0)
    policy, tokenizer = load_model(str(tiny_dir))
    reference, _ = load_model(str(tiny_dir))
    model = PolicyAndCritic(policy, load_head_model(str(tiny_dir), seed=1)) if algorithm == "ppo" else policy
    prompts = _prompts(tokenizer)
    before = _mean_reward(policy, tokenizer, prompts)
    online = OnlineConfig(algorithm=algorithm, iterations=10, prompts_per_chunk=8,
                          num_samples=1 if algorithm == "ppo" else 4, max_new_tokens=6, kl_coef=0.01,
                          update_epochs=2, num_minibatches=2, missing_eos="keep")
    result = train_online(model, prompts, scorer=upper_half, tokenizer=tokenizer, online=online,
                          config=TrainConfig(lr=1e-2, seed=0), reference=reference)
    after = _mean_reward(policy, tokenizer, prompts)
    # a near-uniform start scores ~0.5 (measured: 0.50 → 0.91 PPO, 0.99 RLOO, 0.99 GRPO)
    assert before == pytest.approx(0.5, abs=0.05)
    assert after > before + 0.25
    records = result.iterations
    assert len(records) == 10 and records[-1]["step"] == 10 * online.steps_per_iteration
    for key in ("proxy", "kl", "entropy", "clip_frac", "approx_kl", "length", "ended", "lr"):
        assert all(key in r for r in records)
    assert ("value_loss" in records[0] and "explained_variance" in records[0]) == (algorithm == "ppo")


def _fixed_rollout(tiny, n_prompts=2, k=3, seed=5, max_new_tokens=5):
    model, tokenizer = tiny
    config = OnlineConfig(algorithm="rloo", num_samples=k, prompts_per_chunk=n_prompts, max_new_tokens=max_new_tokens,
                          missing_eos="keep", kl_coef=0.3)
    batch = sample(model, _prompts(tokenizer, n_prompts), config=config, tokenizer=tokenizer,
                   generator=torch.Generator().manual_seed(seed))
    return model, tokenizer, config, batch


def test_rloo_and_grpo_advantages_by_hand(tiny, tiny_dir):
    model, tokenizer, config, batch = _fixed_rollout(tiny)
    reference, _ = load_model(str(tiny_dir), seed=0)
    with torch.no_grad():  # a reference that differs from the policy, so the KL term is not 0
        for p in reference.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    scores = torch.tensor([1.0, 0.0, 4.0, -2.0, 2.0, 3.0])
    e = make_experience(batch, scorer=lambda b: scores, policy=model, reference=reference, critic=None,
                        config=config, kl_coef=0.3)
    kl_sum = (batch.logps - e.ref_logps).masked_fill(~batch.response_mask, 0).sum(-1).tolist()
    assert abs(sum(kl_sum)) > 1e-3
    reward = [s - 0.3 * k for s, k in zip(scores.tolist(), kl_sum)]
    for row in range(6):
        group = range(3 * (row // 3), 3 * (row // 3) + 3)
        others = [reward[j] for j in group if j != row]
        expected = reward[row] - sum(others) / 2
        assert e.advantages[row][batch.response_mask[row]].tolist() == pytest.approx(
            [expected] * int(batch.response_mask[row].sum()), abs=1e-5)
    assert (e.advantages[~batch.response_mask] == 0).all()

    grpo = OnlineConfig(algorithm="grpo", num_samples=3, prompts_per_chunk=2, missing_eos="keep")
    g = make_experience(batch, scorer=lambda b: scores, policy=model, reference=reference, critic=None,
                        config=grpo, kl_coef=0.3)
    first = [1.0, 0.0, 4.0]
    mean = sum(first) / 3
    std = (sum((x - mean) ** 2 for x in first) / 2) ** 0.5
    assert g.advantages[0, 0].item() == pytest.approx((1.0 - mean) / (std + 1e-4), rel=1e-5)


def test_ppo_experience_is_gae_of_the_kl_shaped_reward(tiny, tiny_dir):
    model, tokenizer = tiny
    critic = load_head_model(str(tiny_dir), seed=3)
    config = OnlineConfig(algorithm="ppo", num_samples=2, prompts_per_chunk=3, max_new_tokens=5, missing_eos="keep",
                          lam=0.9, gamma=0.99)
    batch = sample(model, _prompts(tokenizer, 3), config=config, tokenizer=tokenizer,
                   generator=torch.Generator().manual_seed(2))
    reference, _ = load_model(str(tiny_dir))
    scores = torch.arange(6, dtype=torch.float32)
    e = make_experience(batch, scorer=lambda b: scores, policy=model, reference=reference, critic=critic,
                        config=config, kl_coef=0.2)
    rewards, _ = token_rewards(scores, batch.logps, e.ref_logps, batch.response_mask, kl_coef=0.2)
    advantages, returns = gae(rewards, e.values, batch.response_mask, gamma=0.99, lam=0.9)
    assert torch.allclose(e.advantages, advantages) and torch.allclose(e.returns, returns)
    assert e.values.abs().sum() > 0 and (e.values[~batch.response_mask] == 0).all()


def test_whitening_spans_every_chunk_like_one_batch(tiny):
    *_, batch = _fixed_rollout(tiny)
    mask = batch.response_mask
    a, b = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)), torch.randn(mask.shape)
    chunks = [type("E", (), {"advantages": a.clone(), "loss_mask": mask})(),
              type("E", (), {"advantages": b.clone(), "loss_mask": mask})()]
    whiten_advantages(chunks, lambda t: t)
    expected = whiten(torch.cat([a, b]), torch.cat([mask, mask]))
    assert torch.allclose(torch.cat([c.advantages for c in chunks]), expected, atol=1e-6)


def test_missing_eos_rules(tiny):
    model, tokenizer, _, batch = _fixed_rollout(tiny, max_new_tokens=3)
    assert not batch.ended.all()
    scores = torch.ones(6)
    kwargs = dict(scorer=lambda b: scores, policy=model, reference=model, critic=None, kl_coef=0.0)
    penalty = make_experience(batch, config=OnlineConfig(algorithm="rloo", num_samples=3, prompts_per_chunk=2,
                                                         eos_penalty=-2.0), **kwargs)
    assert penalty.scores.tolist() == [1.0 if e else -2.0 for e in batch.ended.tolist()]
    assert penalty.raw_scores.tolist() == [1.0] * 6
    masked = make_experience(batch, config=OnlineConfig(algorithm="rloo", num_samples=3, prompts_per_chunk=2,
                                                        missing_eos="mask"), **kwargs)
    assert masked.scores.tolist() == [1.0] * 6
    assert (masked.loss_mask.any(-1) == batch.ended).all()


def test_rollout_noise_follows_seed_iteration_and_chunk(tiny):
    model, tokenizer = tiny
    config = OnlineConfig(algorithm="ppo", prompts_per_chunk=4, max_new_tokens=6)
    prompts = _prompts(tokenizer, 4)

    def draw(seed):
        return sample(model, prompts, config=config, tokenizer=tokenizer,
                      generator=torch.Generator().manual_seed(seed)).response_ids

    from alignkit.trainers.online import _chunk_seed

    assert torch.equal(draw(_chunk_seed(0, 3, 1)), draw(_chunk_seed(0, 3, 1)))
    assert not torch.equal(draw(_chunk_seed(0, 3, 1)), draw(_chunk_seed(0, 4, 1)))
    assert not torch.equal(draw(_chunk_seed(0, 3, 1)), draw(_chunk_seed(0, 3, 2)))
    # prompts are read as a stream of epochs: each prompt once per epoch
    online = OnlineConfig(prompts_per_chunk=3, chunks=2)
    seen = [i for it in range(2) for c in range(4)
            for i in chunk_prompts(8, config=online, seed=0, iteration=it, chunk=c, global_chunks=4)]
    assert sorted(seen[:8]) == list(range(8)) and sorted(seen[8:16]) == list(range(8))


def test_adaptive_kl_coefficient_by_hand():
    config = OnlineConfig(kl_target=1.0, kl_horizon=100)
    assert adapt_kl_coef(0.1, 1.5, config=config, replies=10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    assert adapt_kl_coef(0.1, 0.9, config=config, replies=10) == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))
    assert adapt_kl_coef(0.1, 5.0, config=OnlineConfig(), replies=10) == 0.1  # fixed by default


def test_bad_input_is_named(tiny, tiny_dir, tmp_path):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer, 4)
    online = OnlineConfig(algorithm="rloo", num_samples=2, prompts_per_chunk=2, iterations=1, max_new_tokens=3)
    with pytest.raises(ValueError, match=r"NaN or infinite for rows \[1\]"):
        train_online(model, prompts, scorer=lambda b: torch.tensor([0.0, float("nan"), 0.0, 0.0]),
                     tokenizer=tokenizer, online=online, config=TrainConfig(), reference=model,
                     output_dir=tmp_path / "nan")
    assert not (tmp_path / "nan" / "checkpoints").exists() or not any((tmp_path / "nan" / "checkpoints").iterdir())
    too_long = OnlineConfig(algorithm="rloo", num_samples=2, prompts_per_chunk=2, max_prompt_tokens=5)
    with pytest.raises(ValueError, match="prompt 0 has .* tokens, more than max_prompt_tokens=5"):
        train_online(model, prompts, scorer=upper_half, tokenizer=tokenizer, online=too_long, config=TrainConfig(),
                     reference=model)
    with pytest.raises(ValueError, match="set num_samples >= 2"):
        OnlineConfig(algorithm="grpo", num_samples=1)
    with pytest.raises(TypeError, match="PolicyAndCritic"):
        train_online(model, prompts, scorer=upper_half, tokenizer=tokenizer, online=OnlineConfig(algorithm="ppo"),
                     config=TrainConfig(), reference=model)
    other = AutoTokenizer.from_pretrained(str(tiny_dir))
    other.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="tokenizer differs from the policy's"):
        check_same_tokenizer(tokenizer, other)
    with pytest.raises(RuntimeError, match="no reply reached EOS"):
        train_online(model, prompts, scorer=upper_half, tokenizer=tokenizer, reference=model, config=TrainConfig(),
                     online=OnlineConfig(algorithm="rloo", num_samples=2, prompts_per_chunk=2, max_new_tokens=1,
                                         missing_eos="mask"))


def test_checkpoint_holds_policy_and_a_loadable_critic(tiny_dir, tmp_path):
    policy, tokenizer = load_model(str(tiny_dir))
    model = PolicyAndCritic(policy, load_head_model(str(tiny_dir), seed=1))
    online = OnlineConfig(algorithm="ppo", iterations=1, prompts_per_chunk=4, max_new_tokens=4, missing_eos="keep")
    train_online(model, _prompts(tokenizer, 4), scorer=upper_half, tokenizer=tokenizer, online=online,
                 config=TrainConfig(lr=1e-3), reference=load_model(str(tiny_dir))[0], output_dir=tmp_path)
    folder = tmp_path / "checkpoints" / "step-1" / "model"
    critic = AutoModelForSequenceClassification.from_pretrained(folder / "critic")
    assert torch.equal(critic.score.weight, model.critic.score.weight)
    assert (folder / "policy" / "model.safetensors").is_file()


def test_a_lora_critic_trains_its_adapter_and_head_and_reloads_from_a_checkpoint(tiny_dir, tmp_path):
    from alignkit.models.heads import head_at_columns, score_head
    from alignkit.models.lora import apply_lora
    from alignkit.trainers.engine import load_weights

    policy, tokenizer = load_model(str(tiny_dir))
    critic = apply_lora(load_head_model(str(tiny_dir), seed=1), 4, 8, 0.0)
    head_before = score_head(critic).modules_to_save["default"].weight.detach().clone()
    trunk_before = {n: p.detach().clone() for n, p in critic.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in critic.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    model = PolicyAndCritic(apply_lora(policy, 4, 8, 0.0), critic)
    online = OnlineConfig(algorithm="ppo", iterations=2, prompts_per_chunk=4, max_new_tokens=4, missing_eos="keep")
    train_online(model, _prompts(tokenizer, 4), scorer=upper_half, tokenizer=tokenizer, online=online,
                 config=TrainConfig(lr=1e-2), output_dir=tmp_path)
    assert not torch.equal(score_head(critic).modules_to_save["default"].weight, head_before)  # the head learned
    assert all(torch.equal(p, trunk_before[n]) for n, p in critic.named_parameters() if not p.requires_grad)
    fresh = apply_lora(load_head_model(str(tiny_dir), seed=2), 4, 8, 0.0)
    folder = tmp_path / "checkpoints" / "step-2" / "model" / "critic"
    load_weights(fresh, folder, checkpoint=folder)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(5)[None]}
    with torch.no_grad():
        assert torch.allclose(head_at_columns(fresh, inputs, torch.arange(4)),
                              head_at_columns(critic, inputs, torch.arange(4)), atol=1e-6)


def run_script(*args: str, launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = (launcher or [sys.executable]) + [str(SCRIPT), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def _iterations(folder: Path, rank: int = 0) -> dict:
    return json.loads((folder / f"iterations-rank{rank}.json").read_text())


def test_ppo_resumes_after_sigkill_where_an_uninterrupted_run_ends(tmp_path, tiny_dir):
    init = str(tiny_dir)
    run_script(str(tmp_path / "straight"), "ppo", "4", "1", "5", "--init", init)
    killed = run_script(str(tmp_path / "resumed"), "ppo", "4", "1", "5", "--init", init, "--checkpoint-every", "2",
                        "--kill-at", "3", check=False)
    assert killed.returncode == -9  # SIGKILL after iteration 3: the newest checkpoint is iteration 2 (step 8)
    assert sorted(p.name for p in (tmp_path / "resumed" / "run" / "checkpoints").iterdir()) == ["step-8"]
    resumed = run_script(str(tmp_path / "resumed"), "ppo", "4", "1", "5", "--init", init, "--checkpoint-every", "2")
    assert "resumed from" in resumed.stdout + resumed.stderr
    straight, again = _iterations(tmp_path / "straight")["iterations"], _iterations(tmp_path / "resumed")["iterations"]
    assert len(again) == 5
    for key in ("score", "kl", "loss", "value_loss", "grad_norm"):
        assert [r[key] for r in again] == pytest.approx([r[key] for r in straight], rel=1e-5, abs=1e-7), key
    # negative control: the same run without resuming (from the initial weights again) ends elsewhere
    naive = run_script(str(tmp_path / "naive"), "ppo", "4", "1", "3", "--init", init)
    assert naive.returncode == 0
    assert _iterations(tmp_path / "naive")["iterations"][-1]["loss"] != pytest.approx(straight[-1]["loss"], rel=1e-3)


def test_two_processes_match_one_process_with_twice_the_chunks(tmp_path, tiny_dir):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port)]
    run_script(str(tmp_path / "two"), "ppo", "4", "1", "3", "--init", str(tiny_dir), launcher=launcher)
    run_script(str(tmp_path / "one"), "ppo", "4", "2", "3", "--init", str(tiny_dir))
    two, one = _iterations(tmp_path / "two"), _iterations(tmp_path / "one")
    assert (two["world_size"], one["world_size"]) == (2, 1)
    # iteration 1 samples from the same weights on both sides: the rollouts, scores and KL are identical
    assert two["iterations"][0]["score"] == one["iterations"][0]["score"]
    assert [h["units"] for h in two["history"]] == [h["units"] for h in one["history"]][:len(two["history"])]
    assert two["history"][0]["loss"] == pytest.approx(one["history"][0]["loss"], rel=1e-5)
    assert two["history"][0]["grad_norm"] == pytest.approx(one["history"][0]["grad_norm"], rel=1e-4)
    # later steps: gloo's summation order moves near-zero gradient entries by up to 2·lr under Adam (see the
    # offline loop's test), so they get a tolerance above that noise
    assert [h["loss"] for h in two["history"]] == pytest.approx([h["loss"] for h in one["history"]], rel=1e-3,
                                                                 abs=1e-5)


def test_rloo_loss_is_per_reply_and_grpo_per_token(tiny, tiny_dir):
    model, tokenizer, config, batch = _fixed_rollout(tiny)
    scores = torch.tensor([1.0, 0.0, 4.0, -2.0, 2.0, 3.0])
    e = make_experience(batch, scorer=lambda b: scores, policy=model, reference=model, critic=None, config=config,
                        kl_coef=0.0)
    from alignkit.trainers.online import loss_units, update_step

    # at the sampling weights the ratio is 1: RLOO's loss is −Σ_i A_i over replies, its units the replies
    out = update_step(model, e, config, 0.0)
    assert out.loss_sum.item() == pytest.approx(-e.advantages[:, 0].sum().item(), abs=1e-4)
    assert loss_units(e, config) == 6
    # REINFORCE's gradient: ∇ of −Σ_i A_i Σ_t log π(y_it)
    out.loss_sum.backward()
    grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    from alignkit.losses import per_token_logps

    inputs = batch.model_inputs()
    width = batch.prompt_ids.shape[1]
    logits = model(**inputs, use_cache=False).logits[:, width - 1:width - 1 + batch.response_ids.shape[1]]
    reference = -(e.advantages[:, 0] * (per_token_logps(logits, batch.response_ids) * batch.response_mask).sum(-1)).sum()
    reference.backward()
    assert torch.allclose(grad, model.lm_head.weight.grad, atol=1e-5)
    model.zero_grad()
    grpo = OnlineConfig(algorithm="grpo", num_samples=3, prompts_per_chunk=2, missing_eos="keep")
    g = make_experience(batch, scorer=lambda b: scores, policy=model, reference=model, critic=None, config=grpo,
                        kl_coef=0.0)
    assert loss_units(g, grpo) == int(batch.response_mask.sum())
    assert update_step(model, g, grpo, 0.0).loss_sum.item() == pytest.approx(
        -(g.advantages * batch.response_mask).sum().item(), abs=1e-4)


def test_a_scorer_sees_which_prompt_each_row_answers(tiny_dir):
    policy, tokenizer = load_model(str(tiny_dir))
    prompts = _prompts(tokenizer, 6)
    seen = []

    def record(batch):
        seen.append((batch.prompt_index.tolist(), batch.prompt_ids.tolist(), batch.prompt_mask.tolist()))
        return torch.zeros(batch.response_ids.shape[0])

    online = OnlineConfig(algorithm="rloo", iterations=2, prompts_per_chunk=3, num_samples=2, max_new_tokens=2,
                          missing_eos="keep")
    train_online(policy, prompts, scorer=record, tokenizer=tokenizer, online=online, config=TrainConfig(lr=1e-3),
                 reference=load_model(str(tiny_dir))[0])
    for index, ids, mask in seen:
        for row, prompt in enumerate(index):
            assert [t for t, m in zip(ids[row], mask[row]) if m] == prompts[prompt]
    assert sorted(i for index, _, _ in seen for i in index[::2]) == list(range(6))


def test_the_critic_learns_at_its_own_rate(tiny_dir):
    """PolicyAndCritic(critic_lr_scale=s): one AdamW step moves the critic's weights s times as far as at s = 1
    (Adam's first step is lr · sign-like, so the step is proportional to the group's rate)."""
    from alignkit.trainers.engine import Engine, StepOutput

    moves = {}
    for scale in (1.0, 0.1):
        torch.manual_seed(0)
        policy, tokenizer = load_model(str(tiny_dir))
        critic = load_head_model(str(tiny_dir), seed=1)
        model = PolicyAndCritic(policy, critic, critic_lr_scale=scale)
        engine = Engine(model, TrainConfig(lr=1e-3, seed=0, max_grad_norm=0.0), total_steps=1)
        assert [g["lr"] for g in engine.optimizer.param_groups] == pytest.approx([1e-3, 1e-3 * scale])
        before = critic.score.weight.detach().clone()
        ids = torch.tensor([[5, 6, 7, 8]])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(4)[None]}
        engine.step([None], lambda m, _: StepOutput(sum(x.float().sum() for x in m(**inputs, columns=torch.arange(3)))
                                                   , {}), lambda _: 1)
        moves[scale] = (critic.score.weight.detach() - before).abs().max().item()
    assert moves[0.1] == pytest.approx(0.1 * moves[1.0], rel=1e-3)
    with pytest.raises(ValueError, match="critic_lr_scale must be > 0"):
        PolicyAndCritic(policy, critic, critic_lr_scale=0.0)


def test_a_32_bit_run_seed_reaches_every_generator():
    """Notebooks seed runs with derive_seed (32-bit): the per-chunk and per-minibatch generators must accept it."""
    from alignkit.trainers.online import _chunk_seed, minibatch_rows

    seed = 2 ** 32 - 1
    assert 0 <= _chunk_seed(seed, 10 ** 6, 7) < 2 ** 63
    torch.Generator().manual_seed(_chunk_seed(seed, 10 ** 6, 7))
    rows = minibatch_rows(8, config=OnlineConfig(prompts_per_chunk=8, num_minibatches=2), seed=seed, iteration=3,
                          epoch=1, chunk=2)
    assert sorted(torch.cat(rows).tolist()) == list(range(8))
    assert _chunk_seed(seed, 1, 0) != _chunk_seed(seed, 2, 0) != _chunk_seed(seed, 1, 1)
