"""The RLHF study's shared pieces (alignkit.rlhf): notebooks 02b (PPO) and 02c (RLOO, GRPO) compare methods at one
budget on one set of prompts, and 02c reads 02b's measured PPO only when that holds."""

from __future__ import annotations

import json

import pytest

from alignkit import profiles, rlhf, tasks
from alignkit.evaluate import paired_comparison


@pytest.mark.parametrize("profile", profiles.PROFILES)
def test_ppo_and_group_methods_get_the_same_budget_in_every_profile(profile):
    ppo = profiles.notebook_settings("02b_ppo", profile)
    group = profiles.notebook_settings("02c_rloo_grpo", profile)
    assert rlhf.budget(ppo, "ppo") == rlhf.budget(group, "rloo") == rlhf.budget(group, "grpo")
    assert set(rlhf.budget(ppo, "ppo")) == set(rlhf.BUDGET_KEYS)
    for key in ("num_prompts", "num_eval", "num_kl"):
        assert ppo[key] == group[key], key


def test_the_group_methods_train_and_are_measured_on_ppos_prompts():
    settings = profiles.notebook_settings("02b_ppo", "smoke")
    for seed in (0, 3):
        ppo = tasks.notebook_prompts("02b_ppo", settings, seed)
        group = tasks.notebook_prompts("02c_rloo_grpo", profiles.notebook_settings("02c_rloo_grpo", "smoke"), seed)
        assert [p["item"] for p in ppo["train"]] == [p["item"] for p in group["train"]]
        assert [p["item"] for p in ppo["eval"]] == [p["item"] for p in group["eval"]]
        dpo = tasks.notebook_prompts("05_dpo", profiles.notebook_settings("05_dpo", "smoke"), seed)
        assert [p["item"] for p in ppo["eval"]] == [p["item"] for p in dpo["eval"]]


def test_budget_counts_the_replies_of_an_iteration():
    settings = {"ppo_prompts": 16, "group_prompts": 4, "num_samples": 4, "iterations": 3, "lr": 1e-4}
    assert rlhf.budget(settings, "ppo")["replies_per_iteration"] == 16
    assert rlhf.budget({**settings, "num_samples": 2}, "grpo")["replies_per_iteration"] == 8
    assert rlhf.online_config("rloo", {**settings, "max_new_tokens": 8, "kl_coef": 0.1, "update_epochs": 2,
                                       "missing_eos": "keep"}).num_samples == 4
    assert rlhf.online_config("ppo", {**settings, "max_new_tokens": 8, "kl_coef": 0.1, "update_epochs": 2,
                                      "missing_eos": "keep"}).prompts_per_chunk == 16


def _measured(prompts, gold, sft_gold, settings):
    comparison = paired_comparison(gold, sft_gold, groups=[p["family"] for p in prompts], seed=0)
    return {"replies": ["a reply"] * len(prompts), "gold": gold, "comparison": comparison,
            "common": [0.5, 0.4, 0.6], "kl": [1.0, 0.8, 1.2], "length": [3.0, 2.5, 3.5],
            "budget": rlhf.budget(settings, "ppo"), "history": [{"proxy": 0.0}], "train_s": 1.0, "eval_s": 0.5}


def test_saved_results_load_back_on_the_same_prompts_and_budget(tmp_path):
    settings = profiles.notebook_settings("02b_ppo", "smoke")
    prompts = tasks.make_prompts(6, seed=1, split="test")
    gold, sft_gold = [1.0, 0.0, 1.0, 0.5, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    path = rlhf.save_results(tmp_path / "ppo.json", {"ppo": _measured(prompts, gold, sft_gold, settings)}, prompts)
    loaded = rlhf.load_results(path, prompts, budget_of=rlhf.budget(
        profiles.notebook_settings("02c_rloo_grpo", "smoke"), "rloo"))
    assert loaded["ppo"]["gold"] == gold and "history" not in loaded["ppo"]
    c = loaded["ppo"]["comparison"]
    assert (c["wins"], c["ties"], c["losses"]) == (3, 2, 1)
    points = rlhf.frontier_points(loaded)
    assert points == {"PPO": {"kl": 1.0, "kl_ci": [0.8, 1.2], "gold": 0.5, "gold_ci": [0.4, 0.6]}}
    assert "SFT" in rlhf.method_metrics(loaded["ppo"], name="PPO", alpha=0.01)["verdict"]


def test_results_of_other_prompts_or_another_budget_are_refused(tmp_path):
    settings = profiles.notebook_settings("02b_ppo", "smoke")
    prompts = tasks.make_prompts(6, seed=1, split="test")
    path = rlhf.save_results(tmp_path / "ppo.json",
                             {"ppo": _measured(prompts, [1.0] * 6, [0.0] * 6, settings)}, prompts)
    with pytest.raises(ValueError, match=r"measured on other test prompts \(6 items\) than this notebook's 5"):
        rlhf.load_results(path, prompts[:5])
    with pytest.raises(ValueError, match=r"ppo's budget differs.*iterations 2 there, 3 here.*same settings"):
        rlhf.load_results(path, prompts, budget_of={**rlhf.budget(settings, "ppo"), "iterations": 3})
    assert json.loads(path.read_text())["items"] == [p["item"] for p in prompts]  # untouched


def test_summary_table_lists_every_method_and_the_sft_model():
    settings = profiles.notebook_settings("02b_ppo", "smoke")
    prompts = tasks.make_prompts(4, seed=2, split="test")
    result = _measured(prompts, [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], settings)
    table = rlhf.summary_table({"ppo": result, "rloo": {**result, "train_s": 2.0}},
                               {"common": [0.3, 0.2, 0.4], "length": [2.0, 1.0, 3.0]})
    assert list(table.columns) == ["PPO", "RLOO", "SFT"]
    assert table.loc["wins / ties / losses vs SFT", "PPO"] == "2 / 2 / 0"
    assert table.loc["train / eval s", "RLOO"] == "2 / 0"
    assert table.loc["KL to SFT (nats)", "SFT"] == "0"
