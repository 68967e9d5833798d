"""Record schemas shared by the synthetic task world and the real datasets, with validators.

Every record is a plain, JSON-serialisable ``dict``, the same shape the Hugging Face datasets use, so
the trainers never need to know where a record came from. Three kinds:

=============  =====================================================================================
kind           fields
=============  =====================================================================================
``sft``        ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``;
               the last message is the assistant turn the model learns to produce.
``preference`` ``{"prompt": str | [messages], "chosen": str, "rejected": str}``; ``prompt`` is the
               user turn (the chat template is applied later) or, for multi-turn data such as
               HH-RLHF, a list of messages ending with a user turn; ``chosen``/``rejected`` are the
               two assistant responses. Optional numeric ``chosen_score``/``rejected_score``.
``attribute``  ``{"prompt": str, "response": str, "helpfulness": int, "correctness": int,
               "coherence": int, "complexity": int, "verbosity": int}``, each attribute in 0..4
               (HelpSteer, arXiv:2311.09528; HelpSteer2, arXiv:2406.08673).
=============  =====================================================================================

Extra keys (``id``, ``family``, ...) are allowed in every kind and ignored by the validators.
A bad record raises :class:`SchemaError` whose message names the record index, the field and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

ATTRIBUTES: tuple[str, ...] = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
"""The five HelpSteer attributes, in the order the dataset lists them."""

ATTRIBUTE_MIN, ATTRIBUTE_MAX = 0, 4
ROLES: tuple[str, ...] = ("system", "user", "assistant")
RECORD_KINDS: tuple[str, ...] = ("sft", "preference", "attribute")

_SFT_NEEDS = "an sft record needs 'messages': a list of {'role', 'content'} dicts ending with an assistant turn"
_PREFERENCE_NEEDS = (
    "a preference record needs 'prompt', 'chosen', 'rejected' (strings; 'prompt' may also be a list of messages)"
)
_ATTRIBUTE_NEEDS = (
    "an attribute record needs 'prompt', 'response' (strings) and "
    + ", ".join(f"'{name}'" for name in ATTRIBUTES)
    + f" (ints in {ATTRIBUTE_MIN}..{ATTRIBUTE_MAX})"
)


class SchemaError(ValueError):
    """A record (or a dataset column) does not match the schema; the message names the field and the fix."""


def _fail(index: int | None, message: str) -> SchemaError:
    prefix = f"record {index}: " if index is not None else ""
    return SchemaError(prefix + message)


def _check_dict(record: Any, index: int | None, needs: str) -> None:
    if not isinstance(record, dict):
        raise _fail(index, f"expected a dict, got {type(record).__name__}; {needs}")


def _check_string(record: dict, field: str, index: int | None, needs: str, *, non_empty: bool = False) -> None:
    if field not in record:
        raise _fail(index, f"field '{field}' is missing; {needs}")
    value = record[field]
    if not isinstance(value, str):
        raise _fail(index, f"field '{field}' must be a string, got {type(value).__name__}; {needs}")
    if non_empty and not value.strip():
        raise _fail(index, f"field '{field}' is empty; give it the text of the turn")


def _check_messages(messages: Any, field: str, index: int | None, *, last_role: str) -> None:
    """Check a chat: a non-empty list of ``{"role", "content"}`` dicts whose last role is ``last_role``."""
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if isinstance(messages, list) else type(messages).__name__
        raise _fail(
            index,
            f"field '{field}' must be a non-empty list of messages, got {got}; "
            f"give a list of {{'role', 'content'}} dicts ending with a {last_role} turn",
        )
    for position, message in enumerate(messages):
        where = f"field '{field}[{position}]'"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _fail(index, f"{where} must be a dict with 'role' and 'content', got {message!r:.80}")
        if message["role"] not in ROLES:
            raise _fail(index, f"{where} has role {message['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise _fail(index, f"{where} content must be a string, got {type(message['content']).__name__}")
    if messages[-1]["role"] != last_role:
        raise _fail(
            index,
            f"field '{field}' must end with a {last_role} message, got {messages[-1]['role']!r}; "
            f"append the {last_role} turn or drop the trailing turns",
        )


def validate_sft(record: Any, *, index: int | None = None) -> dict:
    """Check one SFT record ``{"messages": [...]}`` (last message from the assistant); return it unchanged."""
    _check_dict(record, index, _SFT_NEEDS)
    if "messages" not in record:
        raise _fail(index, f"field 'messages' is missing; {_SFT_NEEDS}")
    _check_messages(record["messages"], "messages", index, last_role="assistant")
    if not record["messages"][-1]["content"].strip():
        raise _fail(index, f"the assistant reply (field 'messages[{len(record['messages']) - 1}]') is empty: there is "
                           f"nothing to learn but the end-of-turn token; drop the record or give the reply")
    _check_flag(record, "truncated", index)
    return record


def _check_flag(record: dict, field: str, index: int | None) -> None:
    """An optional boolean: ``truncated`` marks a reply cut at a token limit (it gets no end-of-turn token)."""
    value = record.get(field)
    if value is not None and not isinstance(value, bool):
        raise _fail(index, f"field '{field}' must be true, false or absent, got {value!r:.40}; it marks a reply "
                           f"that was cut at a token limit")


def _check_score(record: dict, field: str, index: int | None) -> None:
    value = record.get(field)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise _fail(index, f"field '{field}' must be a number (or absent), got {value!r:.40}")


def validate_preference(record: Any, *, index: int | None = None) -> dict:
    """Check one preference record ``{"prompt", "chosen", "rejected"}``; return it unchanged.

    ``prompt`` is a non-empty string, or a list of messages ending with a user turn (multi-turn data).
    ``chosen``/``rejected`` are strings (an empty response is allowed: models do produce them).
    """
    _check_dict(record, index, _PREFERENCE_NEEDS)
    if "prompt" not in record:
        raise _fail(index, f"field 'prompt' is missing; {_PREFERENCE_NEEDS}")
    if isinstance(record["prompt"], list):
        _check_messages(record["prompt"], "prompt", index, last_role="user")
    else:
        _check_string(record, "prompt", index, _PREFERENCE_NEEDS, non_empty=True)
    for field in ("chosen", "rejected"):
        _check_string(record, field, index, _PREFERENCE_NEEDS)
    for field in ("chosen_score", "rejected_score"):
        _check_score(record, field, index)
    for field in ("chosen_truncated", "rejected_truncated"):
        _check_flag(record, field, index)
    return record


def validate_attribute(record: Any, *, index: int | None = None) -> dict:
    """Check one HelpSteer-style record: prompt, response and five ints in 0..4; return it unchanged."""
    _check_dict(record, index, _ATTRIBUTE_NEEDS)
    _check_string(record, "prompt", index, _ATTRIBUTE_NEEDS, non_empty=True)
    _check_string(record, "response", index, _ATTRIBUTE_NEEDS)
    for name in ATTRIBUTES:
        if name not in record:
            raise _fail(index, f"field '{name}' is missing; {_ATTRIBUTE_NEEDS}")
        value = record[name]
        # bool is a subclass of int in Python; True is not a rating.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(index, f"field '{name}' must be an int in {ATTRIBUTE_MIN}..{ATTRIBUTE_MAX}, got {value!r}")
        if not ATTRIBUTE_MIN <= value <= ATTRIBUTE_MAX:
            raise _fail(
                index,
                f"field '{name}' is {value}, outside {ATTRIBUTE_MIN}..{ATTRIBUTE_MAX}; "
                "clip or rescale it to the HelpSteer 0-4 scale",
            )
    return record


_VALIDATORS: dict[str, Callable[..., dict]] = {
    "sft": validate_sft,
    "preference": validate_preference,
    "attribute": validate_attribute,
}


def validate_records(records: Sequence[Any], kind: str) -> list[dict]:
    """Validate every record of one ``kind`` (``"sft"``, ``"preference"`` or ``"attribute"``).

    Returns the records as a list; raises :class:`SchemaError` at the first bad one, naming its index.
    """
    if kind not in _VALIDATORS:
        raise ValueError(f"unknown record kind {kind!r}; use one of {', '.join(RECORD_KINDS)}")
    if isinstance(records, (dict, str)):
        raise SchemaError(f"records must be a list of {kind} records, got a single {type(records).__name__}")
    validator = _VALIDATORS[kind]
    return [validator(record, index=index) for index, record in enumerate(records)]
