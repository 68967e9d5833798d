"""The online driver: PPO, RLOO and GRPO over one rollout layer and the shared :class:`Engine`.

An iteration is four stages, each a function a test can call:

1. :func:`sample` — every process decodes its prompt *chunks* (``prompts_per_chunk`` prompts × ``num_samples``
   replies each) with :func:`alignkit.rollout.rollout`; chunk g of iteration i draws its noise from a generator
   seeded by (seed, i, g) only, so a run is a function of its seed, a resumed run samples what the uninterrupted
   one sampled, and 2 processes × 1 chunk sample what 1 process × 2 chunks samples.
2. :func:`make_experience` — the reward (a :data:`Scorer`: a reward model or any function of the rollout), the
   reference model's log-probs, the critic's values (PPO), and the advantages:
   PPO: per-token reward −β·KL_t plus the score at the last token, GAE;
   RLOO: sequence reward = score − β·Σ_t KL_t, the leave-one-out baseline over the prompt's k replies;
   GRPO: (score − group mean) / group std, the KL being a loss term instead (β·k3 per token).
   The "old" log-probs of the ratio are the ones recorded while sampling (same model, same temperature;
   ``tests/test_experience.py`` shows they equal a teacher-forced forward within 1e-5), which saves a forward.
3. :func:`whiten_advantages` — PPO whitens over the whole global batch (all processes, one all-reduce).
4. :func:`update` — ``update_epochs`` passes, each over ``num_minibatches`` minibatches of every chunk; one
   optimizer step per minibatch index, the chunks' minibatches being its micro-batches. The loss of every
   method is PPO's clipped surrogate (with one update epoch the ratio is 1 and its gradient is REINFORCE's).
   PPO and GRPO clip per token, add PPO's clipped value loss × ``vf_coef`` or GRPO's β·k3, and are
   **normalised by the response tokens of the global minibatch** (each token weighs the same, whatever its
   reply's length: DAPO's token-level normalisation, arXiv:2503.14476 §3.3, TRL's GRPO default, rather than
   GRPO's per-sequence mean, which weighs a token of a short reply more — Dr. GRPO, arXiv:2503.20783).
   RLOO treats the whole reply as one action (Ahmadian et al. 2024, arXiv:2402.14740): one ratio
   exp(Σ_t log π − log π_old) and one clip per reply, averaged over the replies (as TRL's ``RLOOTrainer``).

Replies that never reach EOS (``missing_eos``): ``"penalty"`` (default) replaces their score with
``eos_penalty`` (the TL;DR replication's "EOS trick", arXiv:2403.17031 §4: a cut reply is not a finished
answer, and a policy should not learn that rambling past the limit escapes the reward); ``"mask"`` drops them
from the loss (NeMo-Aligner's choice; they then teach nothing, and an iteration in which no reply ends fails);
``"keep"`` scores them like the rest.

A checkpoint is written at the end of an iteration (every ``checkpoint_every`` iterations and at the last); it
holds the model (both parts for PPO), the optimizer, the schedule and the iteration records (with the adaptive
KL coefficient), so a run killed at any point resumes at its last checkpoint and ends where an uninterrupted
run with the same seed ends.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from alignkit.losses import (gae, grpo_advantages, kl_penalty, ppo_policy_loss, ppo_value_loss,
                             rloo_advantages)
from alignkit.losses.policy_gradient import KL_KINDS
from alignkit.models.fused_head import fuse_lm_head, scoring
from alignkit.models.heads import head_at_columns, reply_scores
from alignkit.progress import progress
from alignkit.rollout import Rollout, rollout
from alignkit.trainers.engine import Engine, StepOutput, TrainConfig, TrainState, epoch_order
from alignkit.trainers.experience import packed_response_logps, response_logps, response_targets, token_rewards

ALGORITHMS = ("ppo", "rloo", "grpo")
MISSING_EOS = ("penalty", "mask", "keep")

Scorer = Callable[[Rollout], torch.Tensor]
"""A reward: a rollout → one score per row, (B,). In :func:`train_online` a rollout's ``prompt_index`` is the
index of each row's prompt in the list passed to it (so a task reward can look up the prompt it answers)."""


@dataclass
class OnlineConfig:
    """What an online run adds to :class:`TrainConfig` (which gives lr, schedule, clipping, precision, seed)."""

    algorithm: str = "ppo"
    """ppo, rloo or grpo"""
    iterations: int = 10
    """rollout-and-update iterations"""
    prompts_per_chunk: int = 8
    """prompts one process samples at a time"""
    chunks: int = 1
    """chunks per process per iteration (global prompts per iteration = prompts_per_chunk × chunks × processes)"""
    num_samples: int = 1
    """replies per prompt (k); RLOO and GRPO need k ≥ 2"""
    max_new_tokens: int = 48
    """response token limit"""
    max_prompt_tokens: int = 256
    """a longer prompt is an error"""
    temperature: float = 1.0
    """sampling temperature; the ratio's log-probs use it too"""
    top_p: float = 1.0
    kl_coef: float = 0.05
    """β: KL in the reward (PPO, RLOO) or in the loss (GRPO)"""
    kl_kind: str = ""
    """KL estimator per token: k1, abs or k3; empty = k1 for PPO and RLOO, k3 for GRPO"""
    kl_target: float = 0.0
    """> 0: adaptive β (Ziegler et al. 2019) towards this KL per reply (nats); 0 = fixed β"""
    kl_horizon: int = 10_000
    """adaptive β: replies over which β may move by a factor e^{±0.2}"""
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2
    """policy ratio clip"""
    value_clip_eps: float = 0.2
    vf_coef: float = 0.1
    """weight of the value loss"""
    update_epochs: int = 1
    """passes over each iteration's rollouts"""
    num_minibatches: int = 1
    """optimizer steps per pass (each chunk's rows split into this many)"""
    whiten_advantages: bool = True
    """PPO: whiten advantages over the global batch"""
    missing_eos: str = "penalty"
    """penalty, mask or keep (see the module docstring)"""
    eos_penalty: float = -1.0
    """the score of a reply without EOS when missing_eos='penalty'"""
    checkpoint_every: int = 0
    """save a checkpoint every N iterations; 0 = only at the end"""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.missing_eos not in MISSING_EOS:
            raise ValueError(f"missing_eos must be one of {', '.join(MISSING_EOS)}, got {self.missing_eos!r}")
        if not self.kl_kind:
            self.kl_kind = "k3" if self.algorithm == "grpo" else "k1"
        if self.kl_kind not in KL_KINDS:
            raise ValueError(f"kl_kind must be one of {', '.join(KL_KINDS)}, got {self.kl_kind!r}")
        for name in ("iterations", "prompts_per_chunk", "chunks", "num_samples", "max_new_tokens",
                     "max_prompt_tokens", "update_epochs", "num_minibatches", "kl_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.algorithm in ("rloo", "grpo") and self.num_samples < 2:
            raise ValueError(f"{self.algorithm} compares each reply with its siblings: set num_samples >= 2 "
                             f"(got {self.num_samples})")
        for name in ("kl_coef", "kl_target", "vf_coef", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if (self.prompts_per_chunk * self.num_samples) % self.num_minibatches:
            raise ValueError(f"a chunk's {self.prompts_per_chunk * self.num_samples} rows (prompts_per_chunk × "
                             f"num_samples) do not split into num_minibatches={self.num_minibatches} equal parts")

    @property
    def steps_per_iteration(self) -> int:
        return self.update_epochs * self.num_minibatches


@dataclass
class Experience:
    """One chunk's rollout and everything the update needs, row-aligned (B rows, T response columns)."""

    rollout: Rollout
    scores: torch.Tensor
    """(B,) the reward used (after the missing-EOS rule)"""
    raw_scores: torch.Tensor
    """(B,) the scorer's output"""
    ref_logps: torch.Tensor
    """(B, T) reference log-probs of the sampled tokens"""
    kl: torch.Tensor
    """(B, T) log π − log π_ref at the sampled tokens (k1), 0 off the mask"""
    advantages: torch.Tensor
    """(B, T)"""
    loss_mask: torch.Tensor
    """(B, T) bool: the tokens the loss is taken over"""
    values: torch.Tensor | None = None
    """(B, T) PPO: the critic's values when sampled"""
    returns: torch.Tensor | None = None
    """(B, T) PPO: GAE returns, the value loss's targets"""

    def rows(self, index: torch.Tensor) -> "Experience":
        """The experience of some rows (a minibatch)."""
        def take(value):
            return value[index.to(value.device)] if isinstance(value, torch.Tensor) else value

        picked = Rollout(**{f.name: take(getattr(self.rollout, f.name)) for f in fields(Rollout)})
        return Experience(**{f.name: take(getattr(self, f.name)) for f in fields(Experience) if f.name != "rollout"},
                          rollout=picked)


def reward_model_scorer(reward_model: torch.nn.Module, *, normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        reward_tokenizer: PreTrainedTokenizerBase | None = None,
                        policy_tokenizer: PreTrainedTokenizerBase | None = None) -> Scorer:
    """A :data:`Scorer` reading a head model's first output at each reply's last token, then ``normalize``
    (e.g. a fitted :class:`alignkit.trainers.reward.ScoreNormalizer`). The rollout's token ids are fed to the
    reward model as they are, so its tokenizer must be the policy's: pass both to have that checked."""
    if reward_tokenizer is not None and policy_tokenizer is not None:
        check_same_tokenizer(policy_tokenizer, reward_tokenizer)

    @torch.no_grad()
    def score(batch: Rollout) -> torch.Tensor:
        was_training = reward_model.training
        reward_model.eval()
        try:
            scores = reply_scores(reward_model, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                  batch.response_mask)[:, 0]
        finally:
            reward_model.train(was_training)
        return normalize(scores) if normalize is not None else scores

    return score


def check_same_tokenizer(policy_tokenizer: PreTrainedTokenizerBase, reward_tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise when the reward model would read the policy's token ids as other text."""
    if policy_tokenizer.get_vocab() != reward_tokenizer.get_vocab():
        raise ValueError("the reward model's tokenizer differs from the policy's (different vocabularies): it would "
                         "read the policy's token ids as other text; train the reward model from the policy's base "
                         "model, or score decoded text with a scorer that re-tokenizes")
    if getattr(policy_tokenizer, "chat_template", None) != getattr(reward_tokenizer, "chat_template", None):
        raise ValueError("the reward model's chat template differs from the policy's: the prompt it scores would "
                         "not be the one the policy answered; save both with the same tokenizer")


_SEED_MODULUS = 2 ** 61 - 1  # a prime: generators take seeds below 2**64, and products of 32-bit seeds overflow


def _chunk_seed(seed: int, iteration: int, chunk: int) -> int:
    return ((seed * 1_000_003 + iteration) * 10_007 + chunk) % _SEED_MODULUS


def chunk_prompts(num_prompts: int, *, config: OnlineConfig, seed: int, iteration: int, chunk: int,
                  global_chunks: int) -> list[int]:
    """Indices of the prompts of global chunk ``chunk`` in ``iteration``: the prompt list is read as a stream of
    epochs, each in the order :func:`epoch_order` gives (a function of seed and epoch only)."""
    per_iteration = config.prompts_per_chunk * global_chunks
    start = iteration * per_iteration + chunk * config.prompts_per_chunk
    picked = []
    for position in range(start, start + config.prompts_per_chunk):
        epoch, offset = divmod(position, num_prompts)
        picked.append(epoch_order(num_prompts, seed=seed, epoch=epoch)[offset])
    return picked


def sample(policy: torch.nn.Module, prompt_ids: list[list[int]], *, config: OnlineConfig,
           tokenizer: PreTrainedTokenizerBase, generator: torch.Generator) -> Rollout:
    """Stage 1: ``num_samples`` replies per prompt from the policy."""
    for index, ids in enumerate(prompt_ids):
        if len(ids) > config.max_prompt_tokens:
            raise ValueError(f"prompt {index} has {len(ids)} tokens, more than max_prompt_tokens="
                             f"{config.max_prompt_tokens}: shorten it or raise max_prompt_tokens")
    return rollout(policy, prompt_ids, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                   max_new_tokens=config.max_new_tokens, num_samples=config.num_samples,
                   temperature=config.temperature, top_p=config.top_p, generator=generator)


@contextmanager
def _reference(policy: torch.nn.Module, reference: torch.nn.Module | None):
    """The reference model: the one given, or the policy with its LoRA adapter disabled."""
    if reference is not None:
        yield reference
        return
    if not hasattr(policy, "disable_adapter"):
        raise ValueError("reference=None means the policy with its LoRA adapter disabled, but the policy has no "
                         "adapter: pass the frozen reference model")
    with policy.disable_adapter():
        yield policy


def _inputs(batch: Rollout, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    device = next(model.parameters()).device
    width, steps = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    inputs = {k: v.to(device) for k, v in batch.model_inputs().items()}
    return inputs, torch.arange(width - 1, width - 1 + steps, device=device)


@torch.no_grad()
def make_experience(batch: Rollout, *, scorer: Scorer, policy: torch.nn.Module, reference: torch.nn.Module | None,
                    critic: torch.nn.Module | None, config: OnlineConfig, kl_coef: float) -> Experience:
    """Stage 2: scores, reference log-probs, values and (unwhitened) advantages of one chunk's rollout."""
    raw = scorer(batch).detach().float().reshape(-1)
    if raw.shape[0] != batch.response_ids.shape[0]:
        raise ValueError(f"the scorer returned {raw.shape[0]} scores for {batch.response_ids.shape[0]} replies")
    if not torch.isfinite(raw).all():
        bad = torch.nonzero(~torch.isfinite(raw)).flatten().tolist()
        raise ValueError(f"the reward is NaN or infinite for rows {bad}: check the reward model or function")
    mask = batch.response_mask
    scores = raw.clone()
    loss_mask = mask.clone()
    if config.missing_eos == "penalty":
        scores[~batch.ended] = config.eos_penalty
    elif config.missing_eos == "mask":
        loss_mask &= batch.ended[:, None]
    with _reference(policy, reference) as ref_model:
        was_training = ref_model.training
        ref_model.eval()
        try:
            ref_logps = response_logps(ref_model, batch, temperature=config.temperature)
        finally:
            ref_model.train(was_training)
    kl = kl_penalty(batch.logps, ref_logps, "k1").masked_fill(~mask, 0.0)
    values = returns = None
    if config.algorithm == "ppo":
        if critic is None:
            raise ValueError("PPO needs a critic (a head model, e.g. initialised from the reward model)")
        was_training = critic.training
        critic.eval()
        try:
            inputs, columns = _inputs(batch, critic)
            values = head_at_columns(critic, inputs, columns).masked_fill(~mask, 0.0)
        finally:
            critic.train(was_training)
        rewards, _ = token_rewards(scores, batch.logps, ref_logps, mask, kl_coef=kl_coef, kl_kind=config.kl_kind)
        advantages, returns = gae(rewards, values, mask, gamma=config.gamma, lam=config.lam)
    else:
        groups = scores.view(-1, config.num_samples)
        if config.algorithm == "rloo":
            sequence_kl = kl_penalty(batch.logps, ref_logps, config.kl_kind).masked_fill(~mask, 0.0).sum(-1)
            groups = (scores - kl_coef * sequence_kl).view(-1, config.num_samples)
            per_reply = rloo_advantages(groups)
        else:
            per_reply = grpo_advantages(groups)
        advantages = per_reply.reshape(-1, 1).expand_as(batch.logps).masked_fill(~mask, 0.0).clone()
    return Experience(rollout=batch, scores=scores, raw_scores=raw, ref_logps=ref_logps, kl=kl,
                      advantages=advantages, loss_mask=loss_mask, values=values, returns=returns)


def whiten_advantages(experiences: Sequence[Experience], reduce_sum: Callable[[torch.Tensor], torch.Tensor],
                      eps: float = 1e-8) -> None:
    """Stage 3 (PPO): advantages ← (A − mean) / std over the loss tokens of every chunk on every process."""
    total = torch.zeros(3, dtype=torch.float64)
    for e in experiences:
        a = e.advantages.double()[e.loss_mask]
        total += torch.stack([a.sum(), (a * a).sum(), torch.tensor(float(a.numel()), dtype=torch.float64)]).cpu()
    total = reduce_sum(total).cpu()
    count = total[2].item()
    if count < 2:
        raise ValueError("whitening needs at least 2 loss tokens in the iteration")
    mean = total[0].item() / count
    variance = max((total[1].item() - count * mean * mean) / (count - 1), 0.0)
    for e in experiences:
        e.advantages = ((e.advantages - mean) / math.sqrt(variance + eps)).masked_fill(~e.loss_mask, 0.0)


def update_step(model: torch.nn.Module, batch: Experience, config: OnlineConfig, kl_coef: float) -> StepOutput:
    """Stage 4's loss on one minibatch: the summed per-token loss over its loss tokens, and metric sums."""
    if config.algorithm == "ppo":
        inputs, columns = _inputs(batch.rollout, model)
        targets = response_targets(batch.rollout)
        if not fuse_lm_head(model):
            raise TypeError("PPO's policy needs a linear LM head (a transformers causal LM)")
        with scoring(targets, config.temperature):
            scored, values = model(**inputs, columns=columns)  # (B, T, 2) = (log-prob, entropy), (B, T)
        logps, entropy = scored[..., 0], scored[..., 1]
    else:  # the rollout packed: each prompt once for its k replies, no padding
        logps, entropy = packed_response_logps(model, batch.rollout, temperature=config.temperature)
        values = None
    device = logps.device
    mask = batch.loss_mask.to(device)
    old = batch.rollout.logps.to(device)
    entropy = entropy.detach()
    with torch.no_grad():
        log_ratio = (logps - old).masked_fill(~mask, 0.0)
        approx_kl = (log_ratio.exp() - 1) - log_ratio  # k3 of π_old ‖ π per token (Schulman 2020)
    if config.algorithm == "rloo":
        # the whole reply is one action (Ahmadian et al. 2024): one ratio per reply, a mean over replies
        rows = mask.any(-1)
        sequence_ratio = ((logps - old) * mask).sum(-1, keepdim=True)  # (B, 1) log ρ_i
        per_reply = ppo_policy_loss(sequence_ratio, torch.zeros_like(sequence_ratio),
                                    batch.advantages.to(device)[:, :1], config.clip_eps)[:, 0]
        tokens = mask.sum(-1).clamp(min=1)
        with torch.no_grad():
            metrics = {"policy_loss": (per_reply.detach() * rows).sum(),
                       "clip_frac": (((sequence_ratio[:, 0].exp() - 1).abs() > config.clip_eps) & rows).sum().float(),
                       "approx_kl": ((approx_kl * mask).sum(-1) / tokens * rows).sum(),
                       "entropy": ((entropy * mask).sum(-1) / tokens * rows).sum()}
        return StepOutput((per_reply * rows).sum(), metrics)
    policy = ppo_policy_loss(logps, old, batch.advantages.to(device), config.clip_eps)
    loss = policy
    metrics: dict[str, torch.Tensor] = {}
    if config.algorithm == "grpo" and kl_coef > 0:
        kl_term = kl_penalty(logps, batch.ref_logps.to(device), config.kl_kind)
        loss = loss + kl_coef * kl_term
        metrics["kl_loss"] = (kl_term.detach() * mask).sum()
    if values is not None:
        value_loss = ppo_value_loss(values, batch.values.to(device), batch.returns.to(device), config.value_clip_eps)
        loss = loss + config.vf_coef * value_loss
        metrics["value_loss"] = (value_loss.detach() * mask).sum()
    metrics.update({
        "policy_loss": (policy.detach() * mask).sum(),
        "clip_frac": (((log_ratio.exp() - 1).abs() > config.clip_eps) & mask).sum().float(),
        "approx_kl": (approx_kl * mask).sum(),
        "entropy": (entropy * mask).sum(),
    })
    return StepOutput((loss * mask).sum(), metrics)


def loss_units(batch: Experience, config: OnlineConfig) -> int:
    """What the loss is averaged over: replies for RLOO, response tokens (of the global minibatch) otherwise."""
    if config.algorithm == "rloo":
        return int(batch.loss_mask.any(-1).sum())
    return int(batch.loss_mask.sum())


def minibatch_rows(rows: int, *, config: OnlineConfig, seed: int, iteration: int, epoch: int, chunk: int
                   ) -> list[torch.Tensor]:
    """A chunk's rows shuffled by (seed, iteration, epoch, chunk) and split into ``num_minibatches``."""
    generator = torch.Generator().manual_seed((_chunk_seed(seed, iteration, chunk) * 31 + epoch + 1) % _SEED_MODULUS)
    return list(torch.randperm(rows, generator=generator).chunk(config.num_minibatches))


def update(engine: Engine, experiences: Sequence[Experience], *, config: OnlineConfig, iteration: int,
           first_chunk: int, kl_coef: float) -> list[dict[str, float]]:
    """Stage 4: ``update_epochs`` × ``num_minibatches`` optimizer steps over this process's chunks."""
    records = []
    for epoch in range(config.update_epochs):
        splits = [minibatch_rows(e.scores.shape[0], config=config, seed=engine.config.seed, iteration=iteration,
                                 epoch=epoch, chunk=first_chunk + c) for c, e in enumerate(experiences)]
        for m in range(config.num_minibatches):
            batches = [e.rows(split[m]) for e, split in zip(experiences, splits)]
            records.append(engine.step(batches, lambda model, b: update_step(model, b, config, kl_coef),
                                       lambda b: loss_units(b, config)))
    return records


def _policy_and_critic(model: torch.nn.Module, algorithm: str) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    if algorithm == "ppo":
        parts = model.parts() if hasattr(model, "parts") else None
        if parts is None or set(parts) != {"policy", "critic"}:
            raise TypeError("PPO trains a PolicyAndCritic (alignkit.models.actor_critic): the policy and its critic "
                            "in one module")
        return parts["policy"], parts["critic"]
    return model, None


def _iteration_record(engine: Engine, experiences: Sequence[Experience], steps: Sequence[dict[str, float]],
                      gold: Scorer | None, kl_coef: float, iteration: int) -> dict[str, float]:
    """Global means over the iteration's replies (all processes) and its optimizer steps."""
    names = ["proxy", "score", "kl", "length", "ended", "gold", "rows"]
    total = torch.zeros(len(names) + 3, dtype=torch.float64)
    for e in experiences:
        rows = float(e.scores.shape[0])
        gold_sum = float(gold(e.rollout).double().sum()) if gold is not None else 0.0
        total[:7] += torch.tensor([float(e.raw_scores.double().sum()), float(e.scores.double().sum()),
                                   float(e.kl.double().sum()), float(e.rollout.lengths.double().sum()),
                                   float(e.rollout.ended.double().sum()), gold_sum, rows], dtype=torch.float64)
        if e.values is not None:  # explained variance of the critic over response tokens
            mask = e.rollout.response_mask
            residual, target = (e.returns - e.values).double()[mask], e.returns.double()[mask]
            total[7:] += torch.tensor([float((residual ** 2).sum() - residual.sum() ** 2 / residual.numel()),
                                       float((target ** 2).sum() - target.sum() ** 2 / target.numel()),
                                       float(mask.sum())], dtype=torch.float64)
    total = engine.reduce_sum(total).cpu()
    rows = total[6].item()
    record = {"iteration": iteration + 1, "step": engine.state.step, "kl_coef": kl_coef}
    for index, name in enumerate(names[:6]):
        record[name] = total[index].item() / rows
    if gold is None:
        record.pop("gold")
    if total[9] > 0:
        record["explained_variance"] = 1.0 - total[7].item() / max(total[8].item(), 1e-12)
    for key in steps[0]:
        if key not in ("step", "epoch", "lr", "units"):
            record[key] = sum(s[key] for s in steps) / len(steps)
    record["lr"] = steps[-1]["lr"]
    return record


def adapt_kl_coef(kl_coef: float, kl: float, *, config: OnlineConfig, replies: int) -> float:
    """Ziegler et al. 2019's proportional controller: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)."""
    if config.kl_target <= 0:
        return kl_coef
    error = min(max(kl / config.kl_target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * replies / config.kl_horizon)


@dataclass
class OnlineResult:
    state: TrainState

    @property
    def iterations(self) -> list[dict[str, float]]:
        return self.state.iterations


def train_online(model: torch.nn.Module, prompt_ids: Sequence[list[int]], *, scorer: Scorer,
                 tokenizer: PreTrainedTokenizerBase, online: OnlineConfig, config: TrainConfig,
                 reference: torch.nn.Module | None = None, gold: Scorer | None = None,
                 output_dir: str | Path | None = None, accelerator: Accelerator | None = None, resume: bool = True,
                 on_iteration: Callable[[TrainState, dict[str, float]], None] | None = None,
                 desc: str | None = None) -> OnlineResult:
    """Train ``model`` online on tokenized chat prompts ``prompt_ids`` (e.g. from
    :func:`alignkit.chat.chat_prompt_ids`).

    ``model``: the policy for RLOO/GRPO, a :class:`~alignkit.models.actor_critic.PolicyAndCritic` for PPO.
    ``reference``: the frozen reference policy; None = the policy with its LoRA adapter disabled. ``scorer``
    gives the reward; ``gold`` (optional) a second score logged beside it. Of ``config`` (:class:`TrainConfig`)
    the online driver uses lr, schedule, warm-up, clipping, weight decay, precision, seed and
    ``keep_checkpoints``; the sizes come from ``online``. ``on_iteration(state, record)`` runs after each
    iteration.
    """
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: pass the tokenized train prompts")
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available(),
                                             mixed_precision=config.mixed_precision)
    if accelerator.state.deepspeed_plugin is not None:
        raise ValueError("the online driver samples with the unwrapped model and does not run under DeepSpeed yet: "
                         "launch without a DeepSpeed config (DDP over processes works)")
    _policy_and_critic(model, online.algorithm)  # type check before anything is built
    engine = Engine(model, config, total_steps=online.iterations * online.steps_per_iteration,
                    accelerator=accelerator, output_dir=output_dir, resume=resume)
    state = engine.state
    if state.step % online.steps_per_iteration or len(state.iterations) * online.steps_per_iteration != state.step:
        raise RuntimeError(f"the checkpoint at step {state.step} was not written at an iteration boundary of this "
                           f"configuration ({online.steps_per_iteration} steps per iteration): resume with the "
                           f"OnlineConfig it was trained with")
    kl_coef = state.iterations[-1]["next_kl_coef"] if state.iterations else online.kl_coef
    global_chunks = online.chunks * engine.world_size
    first_chunk = engine.rank * online.chunks
    bar = progress(total=online.iterations, initial=len(state.iterations), desc=desc or online.algorithm,
                   unit="it", disable=not accelerator.is_main_process)
    while len(state.iterations) < online.iterations:
        iteration = len(state.iterations)
        policy, critic = _policy_and_critic(engine.unwrapped(), online.algorithm)
        experiences = []
        for c in range(online.chunks):
            chunk = first_chunk + c
            picked = chunk_prompts(len(prompt_ids), config=online, seed=config.seed, iteration=iteration,
                                   chunk=chunk, global_chunks=global_chunks)
            generator = torch.Generator(engine.device).manual_seed(_chunk_seed(config.seed, iteration, chunk))
            batch = sample(policy, [list(prompt_ids[i]) for i in picked], config=online, tokenizer=tokenizer,
                           generator=generator)
            batch.prompt_index = torch.tensor(picked, device=batch.prompt_index.device)[batch.prompt_index]
            experiences.append(make_experience(batch, scorer=scorer, policy=policy, reference=reference,
                                               critic=critic, config=online, kl_coef=kl_coef))
        loss_tokens = engine.reduce_sum(torch.tensor(float(sum(int(e.loss_mask.sum()) for e in experiences))))
        if loss_tokens.item() == 0:
            raise RuntimeError(f"iteration {iteration + 1}: no reply reached EOS, so missing_eos='mask' leaves nothing "
                               f"to learn from; raise max_new_tokens or use missing_eos='penalty'")
        if online.algorithm == "ppo" and online.whiten_advantages:
            whiten_advantages(experiences, engine.reduce_sum)
        engine.model.train()
        steps = update(engine, experiences, config=online, iteration=iteration, first_chunk=first_chunk,
                       kl_coef=kl_coef)
        engine.model.eval()
        record = _iteration_record(engine, experiences, steps, gold, kl_coef, iteration)
        replies = int(online.prompts_per_chunk * global_chunks * online.num_samples)
        kl_coef = adapt_kl_coef(kl_coef, record["kl"], config=online, replies=replies)
        record["next_kl_coef"] = kl_coef
        state.iterations.append(record)
        state.epoch = len(state.iterations)
        bar.update(1)
        bar.set_postfix(score=f"{record['score']:.3f}", kl=f"{record['kl']:.3f}")
        done = len(state.iterations)
        if output_dir is not None and ((online.checkpoint_every and done % online.checkpoint_every == 0)
                                       or done == online.iterations):
            engine.save()
        if on_iteration is not None:
            on_iteration(state, record)
    bar.close()
    engine.model.eval()
    return OnlineResult(state)
