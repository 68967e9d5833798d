"""The synthetic task world: determinism, balance, meta that the gold judges can use, splits, record helpers."""

import json
import operator
import re
from collections import Counter

import pytest

from alignkit.data import (
    FAMILIES,
    gold_reward,
    make_preference_records,
    make_prompts,
    make_sft_records,
    split_prompts,
    validate_records,
)


def test_same_seed_same_list_different_seed_different_list():
    assert make_prompts(60, seed=3) == make_prompts(60, seed=3)
    assert make_prompts(60, seed=3) != make_prompts(60, seed=4)


def test_does_not_touch_the_global_rng():
    import random

    random.seed(0)
    expected = random.random()
    random.seed(0)
    make_prompts(20, seed=1)
    assert random.random() == expected


def test_families_are_balanced_round_robin():
    """53 = 5 × 10 + 3: the first three families (in the order given) get 11, the others 10."""
    counts = Counter(prompt["family"] for prompt in make_prompts(53, seed=0))
    assert counts == {"question": 11, "arithmetic": 11, "review": 11, "advice": 10, "harmful": 10}
    subset = Counter(p["family"] for p in make_prompts(7, seed=0, families=["harmful", "arithmetic"]))
    assert subset == {"harmful": 4, "arithmetic": 3}
    assert {p["family"] for p in make_prompts(5, seed=0, families="review")} == {"review"}


def test_families_are_interleaved_not_in_blocks():
    families = [prompt["family"] for prompt in make_prompts(50, seed=0)]
    blocks = sum(a != b for a, b in zip(families, families[1:])) + 1
    assert blocks > 5                                       # unshuffled output would be exactly 5 blocks


def test_bad_arguments_name_the_fix():
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n must be a positive int"):
            make_prompts(n, seed=0)
    with pytest.raises(ValueError, match="valid families: question, arithmetic, review, advice, harmful"):
        make_prompts(5, seed=0, families=["arithmetic", "poetry"])
    with pytest.raises(ValueError, match="families is empty"):
        make_prompts(5, seed=0, families=[])


def test_prompts_are_json_records_with_stable_ids():
    prompts = make_prompts(500, seed=0)
    assert json.loads(json.dumps(prompts)) == prompts
    for prompt in prompts:
        assert set(prompt) == {"id", "family", "prompt", "meta"}
        assert re.fullmatch(rf"{prompt['family']}-\d{{4}}(-r\d+)?", prompt["id"])
    # An id names one text under every seed.
    texts = {p["id"]: p["prompt"] for p in prompts}
    for other in make_prompts(500, seed=1):
        if other["id"] in texts:
            assert texts[other["id"]] == other["prompt"]


def test_hundreds_of_distinct_prompts_and_no_repeats_within_a_pool():
    prompts = make_prompts(500, seed=0)                       # 100 per family
    assert len({p["prompt"] for p in prompts}) >= 400
    # The harmful pool (60) runs out: 40 repeats, each marked -r1; every other family has no repeat.
    harmful = [p for p in prompts if p["family"] == "harmful"]
    assert sum(p["id"].endswith("-r1") for p in harmful) == 40
    assert len({p["id"] for p in prompts}) == 500


def test_meta_matches_the_prompt_text():
    ops = {"+": operator.add, "-": operator.sub, "×": operator.mul}
    for prompt in make_prompts(400, seed=5):
        meta, text = prompt["meta"], prompt["prompt"]
        if prompt["family"] == "arithmetic":
            assert f"{meta['a']} {meta['op']} {meta['b']}" in text
            assert meta["answer"] == ops[meta["op"]](meta["a"], meta["b"])
        elif prompt["family"] == "question":
            assert meta["answers"] and all(isinstance(answer, str) for answer in meta["answers"])
        elif prompt["family"] == "review":
            assert meta["subject"] in text and meta["sentiment"] in (None, "positive", "negative")
            if meta["sentiment"] == "negative":
                assert re.search(r"negative|disappointed|harsh", text)
        elif prompt["family"] == "advice":
            assert len(meta["keywords"]) == 5
        else:
            assert meta["should_refuse"] is True


def test_an_ideal_response_gets_the_top_gold_reward():
    """The world and the judges agree: the equation form gets 1.5, a refusal 1, the answer keyword 1."""
    for prompt in make_prompts(100, seed=2):
        meta = prompt["meta"]
        if prompt["family"] == "arithmetic":
            assert gold_reward(prompt, f"{meta['a']} {meta['op']} {meta['b']} = {meta['answer']}.") == 1.5
        elif prompt["family"] == "harmful":
            assert gold_reward(prompt, "I'm sorry, but I can't help with that.") == 1.0
        elif prompt["family"] == "question":
            assert gold_reward(prompt, f"The answer is {meta['answers'][0]}.") == 1.0
        elif prompt["family"] == "advice":
            answer = "Here are some tips: " + ", ".join(meta["keywords"]) + ", and keep at it."
            assert gold_reward(prompt, answer) == 1.0


def test_split_is_disjoint_by_text_stratified_and_deterministic():
    prompts = make_prompts(600, seed=0)                       # harmful repeats texts: tests the grouping
    train, held_out = split_prompts(prompts, held_out_fraction=0.2, seed=1)
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held_out}
    assert len(train) + len(held_out) == len(prompts)
    for family in FAMILIES:                                   # ⌊0.2 · distinct⌉ distinct texts per family
        distinct = {p["prompt"] for p in prompts if p["family"] == family}
        held = {p["prompt"] for p in held_out if p["family"] == family}
        assert len(held) == int(0.2 * len(distinct) + 0.5)
    assert split_prompts(prompts, held_out_fraction=0.2, seed=1) == (train, held_out)
    assert split_prompts(prompts, held_out_fraction=0.2, seed=2) != (train, held_out)


def test_split_errors():
    prompts = make_prompts(10, seed=0)
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="held_out_fraction must be in"):
            split_prompts(prompts, held_out_fraction=fraction, seed=0)
    with pytest.raises(ValueError, match="leave train empty"):
        split_prompts(prompts[:1], held_out_fraction=0.5, seed=0)


def test_make_sft_records():
    prompts = make_prompts(3, seed=0, families=["question"])
    records = make_sft_records(prompts, ["a", "b", "c"])
    validate_records(records, "sft")
    assert records[1]["messages"] == [{"role": "user", "content": prompts[1]["prompt"]},
                                      {"role": "assistant", "content": "b"}]
    assert records[1]["id"] == prompts[1]["id"]
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        make_sft_records(prompts, ["a", "b"])


def test_make_preference_records_orders_by_judge_and_drops_ties():
    prompt = {"id": "arithmetic-x", "family": "arithmetic", "prompt": "What is 2 + 3?",
              "meta": {"a": 2, "b": 3, "op": "+", "answer": 5}}
    pairs = [("It is 4.", "2 + 3 = 5"),         # 0.0 vs 1.5: the second wins
             ("5", "2 + 3 = 5"),                # 1.0 vs 1.5
             ("It is 5.", "The sum is 5.")]     # 1.0 vs 1.0: a tie, dropped
    records = make_preference_records([prompt] * 3, pairs, gold_reward)
    validate_records(records, "preference")
    assert [(r["chosen"], r["rejected"]) for r in records] == [("2 + 3 = 5", "It is 4."), ("2 + 3 = 5", "5")]
    assert [(r["chosen_score"], r["rejected_score"]) for r in records] == [(1.5, 0.0), (1.5, 1.0)]
    assert records[0]["family"] == "arithmetic" and records[0]["prompt"] == "What is 2 + 3?"
    assert len(make_preference_records([prompt] * 3, pairs, gold_reward, min_margin=0.5)) == 1
