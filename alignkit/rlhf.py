"""One online RLHF method of the study, from the SFT model to its measurement on test prompts: what notebooks
02b (PPO) and 02c (RLOO, GRPO) do for every method, in one place so that every method is built, trained and
measured the same way.

:func:`train_method` builds a fresh LoRA policy on the SFT model (with PPO, a critic from the reward model),
trains it with :func:`alignkit.trainers.online.train_online` and measures it with :func:`measure`: greedy
replies to the test prompts scored by the gold judge against the SFT model's, prompt by prompt (the paired
statistics of :mod:`alignkit.evaluate`), gold on the common scale, the KL to the SFT model on sampled replies and
reply length. :func:`save_results` / :func:`load_results` carry one notebook's measured methods to the next
(02b's PPO is drawn beside 02c's RLOO and GRPO, and all three on notebook 05's β frontier), refusing results
measured on other test prompts or with another budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# What makes two methods' runs comparable: the same number of replies per iteration for as many iterations,
# the same β, learning rate, passes, reply length and cut-reply rule.
BUDGET_KEYS = ("iterations", "replies_per_iteration", "kl_coef", "lr", "lora_r", "update_epochs", "max_new_tokens",
               "missing_eos")


def budget(settings: dict, method: str) -> dict:
    """The budget of ``method`` (``ppo``: ``ppo_prompts`` replies of one prompt each per iteration; ``rloo`` /
    ``grpo``: ``group_prompts`` × ``num_samples``) under a notebook's settings, as :data:`BUDGET_KEYS`."""
    per_iteration = (settings["ppo_prompts"] if method == "ppo"
                     else settings["group_prompts"] * settings["num_samples"])
    return {"replies_per_iteration": per_iteration, **{k: settings[k] for k in BUDGET_KEYS if k in settings}}


def online_config(method: str, settings: dict):
    """The :class:`~alignkit.trainers.online.OnlineConfig` of ``method`` under a notebook's settings."""
    from alignkit.trainers.online import OnlineConfig

    grouped = method != "ppo"
    return OnlineConfig(algorithm=method, iterations=settings["iterations"],
                        prompts_per_chunk=settings["group_prompts"] if grouped else settings["ppo_prompts"],
                        num_samples=settings["num_samples"] if grouped else 1,
                        max_new_tokens=settings["max_new_tokens"], kl_coef=settings["kl_coef"],
                        update_epochs=settings["update_epochs"], missing_eos=settings["missing_eos"])


def build_model(method: str, sft_dir: str | Path, reward_dir: str | Path, settings: dict):
    """``(policy, model)``: a fresh policy from the SFT model (LoRA of rank ``lora_r``, 0 trains every weight) and
    what the trainer updates: the policy, or for PPO the policy with a critic initialised from the reward model
    (LoRA of rank ``critic_lora_r`` on its trunk, its head in full) learning at ``critic_lr_scale`` × lr."""
    from alignkit import models
    from alignkit.models.actor_critic import PolicyAndCritic
    from alignkit.models.lora import apply_lora
    from alignkit.trainers.reward import load_reward_model

    policy = models.load_model(str(sft_dir))[0]
    if settings["lora_r"]:
        policy = apply_lora(policy, settings["lora_r"], 2 * settings["lora_r"], 0.0)
    if method != "ppo":
        return policy, policy
    critic = load_reward_model(reward_dir)[0]
    if settings["critic_lora_r"]:
        critic = apply_lora(critic, settings["critic_lora_r"], 2 * settings["critic_lora_r"], 0.0)
    return policy, PolicyAndCritic(policy, critic, critic_lr_scale=settings["critic_lr_scale"])


def measure(policy, sft_model, tokenizer, eval_prompts: Sequence[dict], kl_prompts: Sequence[dict],
            sft_gold: Sequence[float], *, max_new_tokens: int, kl_seed: int, bootstrap_seed: int) -> dict:
    """A trained policy on test prompts: ``replies`` (greedy) and their ``gold`` scores, the ``comparison`` with the
    SFT model's gold scores ``sft_gold`` prompt by prompt (:func:`alignkit.evaluate.paired_comparison`, by family),
    ``common`` (gold on the common scale), ``kl`` (KL to the SFT model summed over a sampled reply to each of
    ``kl_prompts``, sampling seeded by ``kl_seed``) and ``length`` (words), each ``[mean, low, high]`` (95%)."""
    from alignkit import evaluate, generation, tasks

    families = [p["family"] for p in eval_prompts]
    replies = generation.chat_generate(policy, tokenizer, [p["prompt"] for p in eval_prompts],
                                       max_new_tokens=max_new_tokens, batch_size=32)
    gold = tasks.gold_scores(eval_prompts, replies)
    kl_texts = [p["prompt"] for p in kl_prompts]
    sampled, ended = generation.sample_replies(policy, tokenizer, kl_texts, num_samples=1, seed=kl_seed,
                                               max_new_tokens=max_new_tokens, batch_size=32)
    kl = evaluate.kl_per_prompt(policy, sft_model, tokenizer, kl_texts, [s[0] for s in sampled],
                                ended=[e[0] for e in ended])
    return {"replies": replies, "gold": list(gold),
            "comparison": evaluate.paired_comparison(gold, sft_gold, groups=families, seed=bootstrap_seed),
            "common": list(evaluate.mean_ci(tasks.common_scale(eval_prompts, gold), seed=bootstrap_seed)),
            "kl": list(evaluate.mean_ci(kl, seed=bootstrap_seed)),
            "length": list(evaluate.mean_ci([tasks.mean_words([r]) for r in replies], seed=bootstrap_seed))}


def train_method(method: str, settings: dict, *, sft_dir: str | Path, reward_dir: str | Path, sft_model, tokenizer,
                 prompt_ids, scorer, gold, eval_prompts: Sequence[dict], kl_prompts: Sequence[dict],
                 sft_gold: Sequence[float], train_seed: int, kl_seed: int, bootstrap_seed: int,
                 probe: Callable | None = None) -> dict:
    """Train ``method`` (``ppo``, ``rloo``, ``grpo``) from the SFT model on ``prompt_ids`` against ``scorer`` (the
    proxy; ``gold`` is logged, never optimised) with the frozen SFT model as reference, then :func:`measure` it.
    ``probe(policy)``, if given, is called every ``probe_every`` iterations (checkpoints on Gao et al.'s axes).

    Returns :func:`measure`'s dict plus ``history`` (the trainer's per-iteration records), ``checkpoints`` (the
    probes, ``{"iteration", **probe(policy)}``), ``budget`` (:func:`budget`) and ``train_s`` / ``eval_s``."""
    from alignkit import overoptimization
    from alignkit.trainers.engine import TrainConfig
    from alignkit.trainers.online import train_online

    started = time.perf_counter()
    policy, model = build_model(method, sft_dir, reward_dir, settings)
    checkpoints: list[dict] = []
    on_iteration = (overoptimization.probe_every(settings["probe_every"], checkpoints, lambda: probe(policy))
                    if probe is not None else None)
    trained = train_online(model, prompt_ids, scorer=scorer, tokenizer=tokenizer,
                           online=online_config(method, settings), config=TrainConfig(lr=settings["lr"], seed=train_seed),
                           reference=sft_model, gold=gold, on_iteration=on_iteration, desc=method)
    train_s = time.perf_counter() - started
    if settings["lora_r"]:
        policy = policy.merge_and_unload()  # plain weights: generation at full speed
    result = measure(policy, sft_model, tokenizer, eval_prompts, kl_prompts, sft_gold,
                     max_new_tokens=settings["max_new_tokens"], kl_seed=kl_seed, bootstrap_seed=bootstrap_seed)
    return {**result, "history": trained.iterations, "checkpoints": checkpoints, "budget": budget(settings, method),
            "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - started - train_s, 1)}


def sft_summary(eval_prompts: Sequence[dict], sft_replies: Sequence[str], sft_gold: Sequence[float], *,
                bootstrap_seed: int) -> dict:
    """The SFT model's ``common`` (gold on the common scale) and ``length`` (words) intervals on the test prompts,
    measured as :func:`measure` measures a trained method."""
    from alignkit import evaluate, tasks

    return {"common": list(evaluate.mean_ci(tasks.common_scale(eval_prompts, sft_gold), seed=bootstrap_seed)),
            "length": list(evaluate.mean_ci([tasks.mean_words([r]) for r in sft_replies], seed=bootstrap_seed))}


def summary_table(results: dict[str, dict], sft: dict):
    """A table of the methods against the SFT model (``sft``: ``{"common", "length"}`` intervals): wins / ties /
    losses, win-rate with its interval, sign-test p, gold, KL, reply words and train / eval seconds."""
    import pandas as pd

    def interval(v, digits):
        return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"

    columns = {}
    for name, r in results.items():
        c = r["comparison"]
        columns[name.upper()] = {
            "wins / ties / losses vs SFT": f"{c['wins']} / {c['ties']} / {c['losses']}",
            "win-rate [95% CI]": interval([c["win_rate"], *c["win_rate_ci"]], 3),
            "sign-test p": f"{c['p']:.2g}", "gold (common scale)": interval(r["common"], 3),
            "KL to SFT (nats)": interval(r["kl"], 2), "reply words": f"{r['length'][0]:.1f}",
            "train / eval s": f"{r['train_s']:.0f} / {r['eval_s']:.0f}" if "train_s" in r else ""}
    columns["SFT"] = {"gold (common scale)": interval(sft["common"], 3), "KL to SFT (nats)": "0",
                      "reply words": f"{sft['length'][0]:.1f}"}
    return pd.DataFrame(columns).fillna("")


def method_metrics(result: dict, *, name: str, alpha: float) -> dict:
    """What ``metrics.json`` keeps of one measured method: the paired comparison with its verdict, gold, KL and
    length (means and intervals)."""
    from alignkit import evaluate

    c = result["comparison"]
    return {"win_rate": c["win_rate"], "win_rate_ci": c["win_rate_ci"], "wins": c["wins"], "ties": c["ties"],
            "losses": c["losses"], "p": c["p"],
            "verdict": evaluate.comparison_verdict(c, treatment=name, baseline="SFT", alpha=alpha),
            "gold": result["common"][0], "gold_ci": list(result["common"][1:]), "kl": result["kl"][0],
            "kl_ci": list(result["kl"][1:]), "length": round(result["length"][0], 2)}


def frontier_points(results: dict[str, dict]) -> dict[str, dict]:
    """The (KL, gold) point of every method, as notebook 05 draws them on its β frontier."""
    return {name.upper(): {"kl": r["kl"][0], "kl_ci": list(r["kl"][1:]), "gold": r["common"][0],
                           "gold_ci": list(r["common"][1:])} for name, r in results.items()}


KEPT = ("replies", "gold", "comparison", "common", "kl", "length", "budget")


def save_results(path: str | Path, results: dict[str, dict], eval_prompts: Sequence[dict]) -> Path:
    """Write measured methods (``{name: train_method's dict}``, without the training history) with the test items
    they were measured on, atomically, for :func:`load_results`."""
    from alignkit.runs import write_json_atomic

    path = Path(path)
    write_json_atomic(path, {"items": [p["item"] for p in eval_prompts],
                             "methods": {name: {k: r[k] for k in KEPT} for name, r in results.items()}})
    return path


def load_results(path: str | Path, eval_prompts: Sequence[dict], budget_of: dict | None = None) -> dict[str, dict]:
    """The methods :func:`save_results` wrote, checked to be measured on the same test items as ``eval_prompts``
    (in order) and, if ``budget_of`` is given, with that budget: results of another run are not comparable
    prompt by prompt, and the error says which setting differs."""
    path = Path(path)
    saved = json.loads(path.read_text())
    items = [p["item"] for p in eval_prompts]
    if saved["items"] != items:
        raise ValueError(f"{path} was measured on other test prompts ({len(saved['items'])} items) than this notebook's "
                         f"{len(items)}: run both notebooks with the same profile, seed and num_eval")
    for name, r in saved["methods"].items():
        if budget_of is not None:
            differ = {k: (r["budget"].get(k), v) for k, v in budget_of.items() if r["budget"].get(k) != v}
            if differ:
                raise ValueError(f"{path}: {name}'s budget differs from this notebook's: "
                                 + ", ".join(f"{k} {a} there, {b} here" for k, (a, b) in differ.items())
                                 + "; give both notebooks the same settings")
    return saved["methods"]
