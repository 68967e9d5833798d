"""Loaders for real alignment datasets, turning their rows into our record schemas (:mod:`schemas`).

``source`` is a Hugging Face hub id (``"Anthropic/hh-rlhf"``) or a local file or folder of
.json/.jsonl/.parquet/.csv files (optionally .gz). Everything goes through ``datasets.load_dataset``:
``load_dataset("json"|"parquet"|"csv", data_files={split: files}, split=split)`` for local data,
``load_dataset(source, split=split)`` for a hub id. In a folder, files named after the split
(``train.jsonl``, ``train-00000-of-00001.parquet``) are used when there are any; otherwise every data file.

=====================  =======================================================  ===================
loader                 rows                                                     records
=====================  =======================================================  ===================
``load_hh_rlhf``       Anthropic/hh-rlhf (arXiv:2204.05862): ``chosen``,        preference, prompt
                       ``rejected`` full transcripts "\\n\\nHuman: …\\n\\nAssistant: …"  as a message list
``load_helpsteer2``    nvidia/HelpSteer2 (arXiv:2406.08673): ``prompt``,        attribute
                       ``response`` and the five 0-4 attributes
``load_ultrafeedback`` HuggingFaceH4/ultrafeedback_binarized (arXiv:2310.01377):  preference with
                       ``prompt``, ``chosen``/``rejected`` message lists,          chosen_score /
                       ``score_chosen``/``score_rejected``                       rejected_score
=====================  =======================================================  ===================

``limit`` caps the number of records returned (rows are read lazily until it is reached).
"""

from __future__ import annotations

import itertools
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

from alignkit.data.schemas import ATTRIBUTES, SchemaError, validate_records

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_HH_FORMAT = "the Anthropic HH-RLHF format: 'chosen' and 'rejected' transcripts '\\n\\nHuman: ...\\n\\nAssistant: ...'"
_HELPSTEER_FORMAT = "the nvidia/HelpSteer2 format: 'prompt', 'response', " + ", ".join(map(repr, ATTRIBUTES))
_ULTRAFEEDBACK_FORMAT = (
    "the HuggingFaceH4/ultrafeedback_binarized format: 'prompt' (string), 'chosen' and 'rejected' "
    "(lists of messages), optional 'score_chosen', 'score_rejected'"
)


class DataSourceError(RuntimeError):
    """A dataset source could not be read (not a local file, and the hub could not be reached or lacks it)."""


def _builder(path: Path) -> str | None:
    suffixes = [suffix for suffix in path.suffixes if suffix != ".gz"]
    return _BUILDERS.get(suffixes[-1].lower()) if suffixes else None


def _local_files(root: Path, split: str) -> tuple[str, list[str]]:
    """The ``datasets`` builder name and the data files of a local file or folder."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and _builder(p))
    if not files:
        raise DataSourceError(f"{root}: no .json/.jsonl/.parquet/.csv files found; point source at a data file")
    named_after_split = [p for p in files if re.match(rf"{re.escape(split)}([.-]|$)", p.name)]
    files = named_after_split or files
    builders = {_builder(p) for p in files}
    if None in builders or len(builders) > 1:
        raise DataSourceError(
            f"{root}: cannot mix or guess file types {sorted(str(b) for b in builders)}; "
            "use one of .json, .jsonl, .parquet, .csv (optionally .gz)"
        )
    return builders.pop(), [str(p) for p in files]


def _open(source: str, split: str) -> Any:
    """The ``datasets.Dataset`` for ``source`` (local path or hub id) and ``split``."""
    import datasets  # deferred: importing datasets takes about a second

    path = Path(source).expanduser()
    if path.exists():
        builder, files = _local_files(path, split)
        return datasets.load_dataset(builder, data_files={split: files}, split=split)
    if _builder(path) or source.startswith((".", "/", "~")):
        raise DataSourceError(f"{source}: no such file or folder; check the path")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as error:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ...)
        raise DataSourceError(
            f"could not load {source!r} (split {split!r}) from the Hugging Face hub: it is not a local file "
            f"or folder, and the hub could not be reached or has no such dataset/split "
            f"({type(error).__name__}: {error}). Fix: pass a local .json/.jsonl/.parquet/.csv file or folder, "
            "or download the dataset once with network access so it is in the HF cache "
            "(then set HF_DATASETS_OFFLINE=1 to use the cache offline)."
        ) from error


def _rows(
    source: str, split: str, limit: int | None, required: tuple[str, ...], expected: str, loader: str
) -> Iterator[dict]:
    """The rows of ``source`` after checking ``limit`` and that every ``required`` column is there."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    dataset = _open(source, split)
    for column in required:
        if column not in dataset.column_names:
            raise SchemaError(
                f"{source}: column '{column}' is missing (found {dataset.column_names}); "
                f"{loader} expects {expected}"
            )
    return iter(dataset)


def _take(records: Iterator[dict], limit: int | None, kind: str, source: str) -> list[dict]:
    """The first ``limit`` records (all if None), validated; a bad one raises SchemaError naming ``source``."""
    try:
        return validate_records(list(itertools.islice(records, limit)), kind)
    except SchemaError as error:
        raise SchemaError(f"{source}: {error}") from None


_TURN_RE = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def split_hh_transcript(transcript: str) -> tuple[list[dict], str] | None:
    """Split an HH-RLHF transcript at its last "\\n\\nAssistant:" into (prompt messages, final response).

    "\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: Bye\\n\\nAssistant: See you." →
    ([user "Hi", assistant "Hello!", user "Bye"], "See you."). Contents are stripped. None when the text
    has no assistant turn, the prompt has text outside a turn, or it does not end with a human turn.
    """
    if transcript.startswith(("Human:", "Assistant:")):
        transcript = "\n\n" + transcript
    cut = transcript.rfind("\n\nAssistant:")
    if cut < 0:
        return None
    response = transcript[cut + len("\n\nAssistant:"):].strip()
    pieces = _TURN_RE.split(transcript[:cut])  # [text before the first turn, speaker, text, speaker, text, ...]
    if pieces[0].strip() or len(pieces) < 3 or pieces[-2] != "Human":
        return None
    messages = [{"role": _ROLES[speaker], "content": text.strip()} for speaker, text in zip(pieces[1::2], pieces[2::2])]
    return messages, response


def load_hh_rlhf(source: str = "Anthropic/hh-rlhf", *, split: str = "train", limit: int | None = None) -> list[dict]:
    """Preference records ``{"prompt": [messages], "chosen", "rejected"}`` from HH-RLHF transcripts.

    Rows whose chosen and rejected transcripts do not share the same prompt, or that cannot be parsed,
    are skipped with one warning giving the counts.
    """
    rows = _rows(source, split, limit, ("chosen", "rejected"), _HH_FORMAT, "load_hh_rlhf")
    skipped = {"prompts differ": 0, "unparsable": 0}

    def records() -> Iterator[dict]:
        for row in rows:
            chosen, rejected = split_hh_transcript(row["chosen"] or ""), split_hh_transcript(row["rejected"] or "")
            if chosen is None or rejected is None:
                skipped["unparsable"] += 1
            elif chosen[0] != rejected[0]:
                skipped["prompts differ"] += 1
            else:
                yield {"prompt": chosen[0], "chosen": chosen[1], "rejected": rejected[1]}

    out = _take(records(), limit, "preference", source)
    if any(skipped.values()):
        details = ", ".join(f"{count} {why}" for why, count in skipped.items() if count)
        warnings.warn(f"load_hh_rlhf({source!r}): skipped rows ({details})", stacklevel=2)
    return out


def _attribute_int(value: Any) -> Any:
    # Parquet/CSV may store the ratings as floats (3.0); keep exact integers as int, leave the rest to the validator.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def load_helpsteer2(source: str = "nvidia/HelpSteer2", *, split: str = "train", limit: int | None = None) -> list[dict]:
    """Attribute records ``{"prompt", "response", helpfulness, …, verbosity}`` from HelpSteer2 rows.

    The prompt is kept as the dataset's string (HelpSteer2's multi-turn prompts embed their turns in it).
    """
    rows = _rows(source, split, limit, ("prompt", "response", *ATTRIBUTES), _HELPSTEER_FORMAT, "load_helpsteer2")
    records = (
        {"prompt": row["prompt"], "response": row["response"],
         **{name: _attribute_int(row[name]) for name in ATTRIBUTES}}
        for row in rows
    )
    return _take(records, limit, "attribute", source)


def _last_assistant(value: Any) -> Any:
    """The content of the last assistant message of a chat; a plain string passes through unchanged."""
    if isinstance(value, list):
        for message in reversed(value):
            if isinstance(message, dict) and message.get("role") == "assistant":
                return message.get("content")
    return value


def load_ultrafeedback(
    source: str = "HuggingFaceH4/ultrafeedback_binarized", *, split: str = "train_prefs", limit: int | None = None
) -> list[dict]:
    """Preference records from UltraFeedback-binarized rows, keeping ``score_*`` as ``chosen_score``/``rejected_score``.

    ``chosen``/``rejected`` become the content of their last assistant message. The default split is
    ``train_prefs``: the hub dataset has no ``train`` split.
    """
    rows = _rows(source, split, limit, ("prompt", "chosen", "rejected"), _ULTRAFEEDBACK_FORMAT, "load_ultrafeedback")

    def records() -> Iterator[dict]:
        for row in rows:
            record = {"prompt": row["prompt"], "chosen": _last_assistant(row["chosen"]),
                      "rejected": _last_assistant(row["rejected"])}
            for column, field in (("score_chosen", "chosen_score"), ("score_rejected", "rejected_score")):
                if row.get(column) is not None:
                    record[field] = float(row[column])
            if row.get("prompt_id") is not None:
                record["id"] = row["prompt_id"]
            yield record

    return _take(records(), limit, "preference", source)
