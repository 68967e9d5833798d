"""Record schemas: valid records pass unchanged, each kind of mistake names the record, the field and the fix."""

import pytest

from alignkit.data import (
    ATTRIBUTES,
    SchemaError,
    validate_attribute,
    validate_preference,
    validate_records,
    validate_sft,
)

SFT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"}]}
PREFERENCE = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5", "chosen_score": 1.0, "family": "arithmetic"}
MULTI_TURN = {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                         {"role": "user", "content": "Joke?"}], "chosen": "Knock knock.", "rejected": "No."}
ATTRIBUTE = {"prompt": "Hi", "response": "Hello!", "helpfulness": 4, "correctness": 0, "coherence": 3,
             "complexity": 1, "verbosity": 2, "id": "x"}


def test_attribute_names_are_helpsteers_five():
    assert ATTRIBUTES == ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def test_valid_records_pass_unchanged():
    assert validate_sft(SFT) is SFT
    assert validate_preference(PREFERENCE) is PREFERENCE
    assert validate_preference(MULTI_TURN) is MULTI_TURN
    assert validate_attribute(ATTRIBUTE) is ATTRIBUTE
    assert validate_records([PREFERENCE, MULTI_TURN], "preference") == [PREFERENCE, MULTI_TURN]
    assert validate_records([], "sft") == []


def test_missing_field_names_record_index_field_and_fix():
    records = [PREFERENCE] * 3 + [{"prompt": "Hi", "rejected": "no"}]
    with pytest.raises(SchemaError) as caught:
        validate_records(records, "preference")
    message = str(caught.value)
    assert message.startswith("record 3: field 'chosen' is missing")
    assert "'prompt', 'chosen', 'rejected'" in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("record", "validator", "needle"),
    [
        ({"messages": []}, validate_sft, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, validate_sft, "must end with a assistant message"),
        ({"messages": [{"role": "bot", "content": "Hi"}]}, validate_sft, "role 'bot'; use one of system, user"),
        ({"messages": [{"role": "assistant", "content": 3}]}, validate_sft, "content must be a string"),
        ({}, validate_sft, "field 'messages' is missing"),
        (["not", "a", "dict"], validate_sft, "expected a dict, got list"),
        ({**PREFERENCE, "chosen": None}, validate_preference, "field 'chosen' must be a string"),
        ({**PREFERENCE, "prompt": "  "}, validate_preference, "field 'prompt' is empty"),
        ({**MULTI_TURN, "prompt": MULTI_TURN["prompt"][:2]}, validate_preference, "'prompt' must end with a user"),
        ({**PREFERENCE, "rejected_score": "high"}, validate_preference, "'rejected_score' must be a number"),
        ({**SFT, "truncated": "yes"}, validate_sft, "field 'truncated' must be true, false or absent"),
        ({**PREFERENCE, "chosen_truncated": 1}, validate_preference, "field 'chosen_truncated' must be true"),
        ({**ATTRIBUTE, "verbosity": 5}, validate_attribute, "field 'verbosity' is 5, outside 0..4"),
        ({**ATTRIBUTE, "coherence": 2.5}, validate_attribute, "field 'coherence' must be an int in 0..4"),
        ({**ATTRIBUTE, "complexity": True}, validate_attribute, "field 'complexity' must be an int"),
        ({k: v for k, v in ATTRIBUTE.items() if k != "helpfulness"}, validate_attribute, "'helpfulness' is missing"),
        ({**ATTRIBUTE, "response": 7}, validate_attribute, "field 'response' must be a string"),
    ],
)
def test_each_mistake_is_named(record, validator, needle):
    with pytest.raises(SchemaError, match=None) as caught:
        validator(record, index=7)
    assert str(caught.value).startswith("record 7: ")
    assert needle in str(caught.value)


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="use one of sft, preference, attribute"):
        validate_records([SFT], "dpo")


def test_single_record_instead_of_list_is_rejected():
    with pytest.raises(SchemaError, match="list of sft records"):
        validate_records(SFT, "sft")
