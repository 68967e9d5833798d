"""Task helpers the notebooks use: SFT targets and the arithmetic summary, on hand-made replies."""

import pytest

from alignkit import tasks
from alignkit.profiles import notebook_settings

PROMPT = {"family": "arithmetic", "prompt": "What is 2 × 11?", "meta": {"a": 2, "b": 11, "op": "×", "answer": 22}}


def _prompt(family: str, item: str, **meta) -> dict:
    return {"id": f"{family}-x", "family": family, "item": item, "prompt": "?", "meta": meta}


HARMFUL = _prompt("harmful", "harmful:x", request="x", category="theft", should_refuse=True)
QUESTION = _prompt("question", "question:France", topic="capital", subject="France", answers=["Paris"])


def test_arithmetic_target_and_records():
    prompt = {**PROMPT, "item": "arithmetic:2×11"}
    assert tasks.arithmetic_target(prompt) == "2 × 11 = 22"
    (record,) = tasks.sft_records([prompt], ["2 × 11 = 22"])
    assert record["messages"][1] == {"role": "assistant", "content": "2 × 11 = 22"}
    assert record["item"] == "arithmetic:2×11" and record["family"] == "arithmetic"


def test_arithmetic_summary_by_hand():
    """Before: wrong equation (shaped), prose with the answer, wrong prose. After: right equation, wrong
    equation, right equation. Accuracy 1/3 → 2/3: gained at 0 and 2, lost at 1 → McNemar p = sign test (2, 1)
    = 2·(1 + 3)/8 = 1.0. Format (bare-equation shape, right or wrong): 1/3 → 3/3."""
    prompts = [{**PROMPT, "item": "arithmetic:2×11"}] * 3
    summary = tasks.arithmetic_summary(prompts, ["2 × 11 = 21", "It is 22", "It is 3"],
                                       ["2 × 11 = 22.", "2 × 11 = 20", "2×11=22"])
    assert summary["accuracy_before"] == pytest.approx(0.3333) and summary["accuracy_after"] == pytest.approx(0.6667)
    assert (summary["accuracy_gained"], summary["accuracy_lost"]) == (2, 1) and summary["accuracy_p"] == 1.0
    assert summary["format_before"] == pytest.approx(0.3333) and summary["format_after"] == 1.0


def test_best_of_k_keeps_the_best_positive_sample():
    samples = [["Sure, here's how.", "I'm sorry, but I can't help with that."],  # refusal (+1) wins
               ["Sure.", "Okay, here you go."],                                # both −1: dropped
               ["It is Lyon.", "Paris, of course.", "Paris."]]                  # first of the tied best
    ended = [[True, False], [True, True], [True, True, False]]
    kept = tasks.best_of_k([HARMFUL, HARMFUL, QUESTION], samples, ended=ended)
    assert [(k.prompt["family"], k.reply, k.score, k.ended) for k in kept] == [
        ("harmful", "I'm sorry, but I can't help with that.", 1.0, False), ("question", "Paris, of course.", 1.0, True)]
    assert all(k.ended for k in tasks.best_of_k([HARMFUL, HARMFUL, QUESTION], samples))  # no flags: all ended


def test_a_target_cut_at_the_sampling_limit_is_learnt_without_an_end_token(tiny_dir):
    from alignkit.models import load_model
    from alignkit.trainers.pairs import tokenize_pairs
    from alignkit.trainers.sft import tokenize_sft

    tokenizer = load_model(str(tiny_dir))[1]
    records = tasks.sft_records([QUESTION, QUESTION], ["Paris is the", "Paris."], ended=[False, True])
    assert records[0]["truncated"] is True and "truncated" not in records[1]
    cut, whole = tokenize_sft(tokenizer, records, 256)
    text_ids = tokenizer("Paris is the", add_special_tokens=False)["input_ids"]
    assert cut.response_ids == text_ids  # no end-of-turn token
    assert whole.response_ids[-1] == tokenizer.eos_token_id
    pairs = tasks.best_worst_pairs([QUESTION], [["Paris.", "Lyon is a"]], ended=[[True, False]])
    assert pairs[0]["chosen_truncated"] is False and pairs[0]["rejected_truncated"] is True
    (example,) = tokenize_pairs(tokenizer, pairs, 256)
    assert example.chosen_ids[-1] == tokenizer.eos_token_id and example.rejected_ids[-1] != tokenizer.eos_token_id


def test_best_worst_pairs_drop_ties_unless_asked():
    samples = [["Lyon.", "Paris.", "Rome."], ["Sure.", "Fine, here."]]
    records = tasks.best_worst_pairs([QUESTION, HARMFUL], samples)
    assert [(r["chosen"], r["rejected"], r["chosen_score"], r["rejected_score"]) for r in records] == [
        ("Paris.", "Lyon.", 1.0, 0.0)]
    kept = tasks.best_worst_pairs([QUESTION, HARMFUL], samples, keep_ties=True)
    assert [(r["chosen"], r["rejected"]) for r in kept] == [("Paris.", "Lyon."), ("Sure.", "Fine, here.")]


def test_common_scale_maps_each_family_range_to_unit_interval():
    assert tasks.common_scale([HARMFUL, HARMFUL, PROMPT, QUESTION], [-1.0, 1.0, 1.5, 0.0]) == [0.0, 1.0, 1.0, 0.5]


def test_compare_by_family_pairs_before_and_after():
    prompts = [QUESTION] * 4 + [HARMFUL] * 2
    summary = tasks.compare_by_family(prompts, [0, 0, 1, 1, -1, -1], [1, 1, 1, 1, -1, 1], seed=0)
    assert summary["question"]["before"] == 0.5 and summary["question"]["after"] == 1.0
    assert (summary["question"]["wins"], summary["question"]["ties"], summary["question"]["losses"]) == (2, 2, 0)
    assert summary["harmful"]["change"] == 1.0 and summary["harmful"]["n"] == 2


def test_notebook_settings_fill_defaults_and_reject_typos():
    settings = notebook_settings("01_sft", "smoke", lr=0.5, num_train=None)
    assert settings["lr"] == 0.5 and settings["num_train"] == 24
    with pytest.raises(ValueError, match=r"01_sft has no knob \['learning_rate'\]"):
        notebook_settings("01_sft", "cpu", learning_rate=1e-5)


def test_ranked_groups_keep_prompts_whose_samples_differ():
    from alignkit.data import make_prompts

    prompts = make_prompts(2, seed=0, split="train", families=("harmful",))
    samples = [["I can't help with that.", "Sure, here is how.", "I won't help."], ["Sure.", "Okay, here."]]
    records = tasks.ranked_groups(prompts, samples, ended=[[True, False, True], [True, True]])
    assert len(records) == 1 and records[0]["replies"] == samples[0]
    assert records[0]["scores"] == [1.0, -1.0, 1.0] and records[0]["truncated"] == [False, True, False]
    kept = tasks.ranked_groups(prompts, samples, keep_ties=True)  # smoke: an all-tied prompt, first over last
    assert len(kept) == 2 and kept[1]["tied"] and kept[1]["replies"] == ["Sure.", "Okay, here."]
    assert kept[1]["scores"][0] > kept[1]["scores"][1] and not kept[0]["tied"]


def test_sampled_gold_is_the_mean_common_scale_gold_of_a_prompts_replies():
    from alignkit.data import make_prompts

    prompt = make_prompts(1, seed=0, split="test", families="arithmetic")[0]
    answer = prompt["meta"]["answer"]
    # arithmetic gold: the bare equation 1.5, the right number in words 1.0, no number 0 → common scale /1.5
    replies = [tasks.arithmetic_target(prompt), f"The answer is {answer}.", "I do not know."]
    assert tasks.sampled_gold([prompt], [replies]) == pytest.approx([(1.0 + 1.0 / 1.5 + 0.0) / 3])
    with pytest.raises(ValueError, match="no sampled replies"):
        tasks.sampled_gold([prompt], [[]])
