"""No notebook trains on a test item: every prompt plan of alignkit.tasks, every profile, several seeds.

Items are compared by ``item_key`` and, for arithmetic, also by ``(a, op, b)`` read two ways: from the meta and
from the prompt text itself (a regular expression), so a wrong meta could not hide a leak; the text's problem is
put in a normal form here (operands sorted for + and ×), independently of ``item_key``, so a training prompt whose
commuted twin is a test item counts as a leak.
"""

from __future__ import annotations

import re

import pytest

from alignkit import profiles, tasks
from alignkit.data import FAMILIES, item_key, make_prompts, split_items

_PROBLEM = re.compile(r"(\d+) ([-+×]) (\d+)")


def _problem_from_text(prompt: dict) -> tuple[int, str, int]:
    a, op, b = _PROBLEM.search(prompt["prompt"]).groups()
    return int(a), op, int(b)


def _commuted(problems: set) -> set:
    """The problems with their commuted twins for the operators that commute."""
    return problems | {(b, op, a) for a, op, b in problems if op in "+×"}


@pytest.fixture(scope="module")
def test_side():
    """Every test item, and every arithmetic test problem as (a, op, b), from the whole test split."""
    items = {key for family in FAMILIES for key in split_items("test", family)}
    every_test_prompt = make_prompts(10_000, seed=0, split="test", families="arithmetic")
    problems = {(p["meta"]["a"], p["meta"]["op"], p["meta"]["b"]) for p in every_test_prompt}
    assert len({item_key(p) for p in every_test_prompt}) == len(split_items("test", "arithmetic"))
    return items, _commuted(problems)


def _settings(notebook: str, profile: str) -> dict:
    if notebook in profiles.NOTEBOOK_DEFAULTS:
        return profiles.notebook_settings(notebook, profile)
    return {"num_eval": 50}


def _leaks(notebook: str, settings: dict, seed: int, items: set, problems: set) -> list[str]:
    """What is wrong with one notebook's prompts: test items in a training purpose, train items in an
    evaluation purpose, or meta that disagrees with the text."""
    found = []
    for purpose, prompts in tasks.notebook_prompts(notebook, settings, seed).items():
        split = tasks.PROMPT_PLANS[notebook][purpose][0]
        keys = {item_key(p) for p in prompts}
        arithmetic = [p for p in prompts if p["family"] == "arithmetic"]
        from_meta = {(p["meta"]["a"], p["meta"]["op"], p["meta"]["b"]) for p in arithmetic}
        from_text = {_problem_from_text(p) for p in arithmetic}
        if from_meta != from_text or any(p["item"] != item_key(p) for p in prompts):
            found.append(f"{notebook}/{purpose}: meta and text disagree")
        if split == "train" and (keys & items or _commuted(from_text) & problems):
            found.append(f"{notebook}/{purpose}: test items in training data: {sorted(keys & items)[:3]}")
        if split == "test" and not (keys <= items and from_text <= problems):
            found.append(f"{notebook}/{purpose}: train items in evaluation data")
    return found


@pytest.mark.parametrize("notebook", list(tasks.PROMPT_PLANS))
@pytest.mark.parametrize("profile", ["smoke", "cpu"])
@pytest.mark.parametrize("seed", [0, 1, 2, 7, 123])
def test_training_prompts_hold_no_test_item(notebook, profile, seed, test_side):
    assert _leaks(notebook, _settings(notebook, profile), seed, *test_side) == []


def test_purposes_draw_from_their_own_streams():
    """01's and 05's training prompts differ although both take the run seed 0 (the old code shared one list)."""
    cpu = {nb: profiles.notebook_settings(nb, "cpu") for nb in ("01_sft", "05_dpo")}
    sft = tasks.notebook_prompts("01_sft", cpu["01_sft"], 0)
    dpo = tasks.notebook_prompts("05_dpo", cpu["05_dpo"], 0)
    sft_ids = [p["id"] for p in sft["train arithmetic"]]
    dpo_ids = [p["id"] for p in dpo["train"] if p["family"] == "arithmetic"]
    assert sft_ids[:len(dpo_ids)] != dpo_ids
    assert tasks.notebook_prompts("05_dpo", cpu["05_dpo"], 0) == dpo  # and each stream is reproducible


def test_a_leaking_plan_is_caught(test_side, monkeypatch):
    """Negative control: a plan whose training purpose draws from the test split is reported."""
    leaky = {"train": ("test", None, "num_prompts"), "eval": ("test", None, "num_eval")}
    monkeypatch.setitem(tasks.PROMPT_PLANS, "05_dpo", leaky)
    settings = profiles.notebook_settings("05_dpo", "cpu")
    # the check reads the split from the plan, so relabel the leaking purpose as training after drawing
    drawn = tasks.notebook_prompts("05_dpo", settings, 0)
    monkeypatch.setitem(tasks.PROMPT_PLANS, "05_dpo", {**leaky, "train": ("train", None, "num_prompts")})
    monkeypatch.setattr(tasks, "notebook_prompts", lambda *args: drawn)
    assert any("test items in training data" in leak for leak in _leaks("05_dpo", settings, 0, *test_side))


def test_a_commuted_twin_of_a_test_problem_is_caught(test_side):
    """Negative control: a training prompt "b + a" whose twin "a + b" is a test item is a leak, even when the
    item key is computed the old way (order kept), which would not see it."""
    items, problems = test_side
    a, op, b = next((a, op, b) for a, op, b in sorted(problems) if op == "+" and a < b)
    twin = {"family": "arithmetic", "prompt": f"What is {b} + {a}?", "meta": {"a": b, "op": "+", "b": a}}
    assert _commuted({_problem_from_text(twin)}) & problems
    assert f"arithmetic:{b}+{a}" not in items  # the test side keys the item as a + b
