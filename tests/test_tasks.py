"""Task helpers the notebooks use: SFT targets and the arithmetic summary, on hand-made replies."""

import pytest

from alignkit import tasks
from alignkit.profiles import notebook_settings

PROMPT = {"family": "arithmetic", "prompt": "What is 2 × 11?", "meta": {"a": 2, "b": 11, "op": "×", "answer": 22}}


def test_arithmetic_target_and_records():
    assert tasks.arithmetic_target(PROMPT) == "2 × 11 = 22"
    (record,) = tasks.sft_records([PROMPT], ["2 × 11 = 22"])
    assert record["messages"][1] == {"role": "assistant", "content": "2 × 11 = 22"}


def test_score_arithmetic_by_hand():
    """Replies: wrong equation (gold 0, shaped), exact equation (1 + ½), prose with the answer (1, not shaped).
    gold mean = (0 + 1.5 + 1)/3 = 0.8333; accuracy 2/3; format (bare-equation shape) 2/3."""
    summary = tasks.score_arithmetic([PROMPT] * 3, ["2 × 11 = 21", "2 × 11 = 22.", "It is 22"])
    assert summary["gold"] == pytest.approx(0.8333)
    assert summary["accuracy"] == pytest.approx(0.6667) and summary["format"] == pytest.approx(0.6667)


def test_notebook_settings_fill_defaults_and_reject_typos():
    settings = notebook_settings("01_sft", "smoke", lr=0.5, num_train=None)
    assert settings["lr"] == 0.5 and settings["num_train"] == 24
    with pytest.raises(ValueError, match=r"01_sft has no knob \['learning_rate'\]"):
        notebook_settings("01_sft", "cpu", learning_rate=1e-5)
