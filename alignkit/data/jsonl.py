"""JSON-lines files of records: read, validated against a record kind, every error naming the file and its line.

A JSON-lines file holds one JSON object per line. Blank lines are allowed and skipped, but lines are counted as
an editor counts them (1-based, blank ones included), so ``data.jsonl line 3`` is the third line of the file. A
UTF-8 byte-order mark (as some Windows editors write) is accepted.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.data.schemas import SchemaError, validate_records


class DataFileError(ValueError):
    """A data file that cannot be read as records; the message names the file (and line) and the fix."""


def read_jsonl(path: str | Path, *, kind: str | None = None, flag: str = "--data") -> list[dict]:
    """The records of a JSON-lines file, each checked against ``kind`` (``"sft"``, ``"preference"``,
    ``"attribute"``; None: only that each line is a JSON object). ``flag`` names where the path came from in the
    messages (a command-line flag, or a parameter)."""
    file = Path(path)
    if file.is_dir():
        raise DataFileError(f"{flag} '{path}' is a directory; pass a JSON-lines file (one record per line)")
    if not file.exists():
        raise DataFileError(f"{flag} '{path}' does not exist; pass a JSON-lines file (one record per line)")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataFileError(f"{flag} '{path}' is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    records, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFileError(f"{path} line {number}: not valid JSON ({error.msg} at column {error.colno}); "
                                f"each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise DataFileError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}; "
                                f"each line must be one record {{...}}")
        records.append(record)
        lines.append(number)
    if not records:
        raise DataFileError(f"{flag} '{path}' is empty; it needs one JSON record per line")
    if kind is not None:
        for record, number in zip(records, lines):
            try:
                validate_records([record], kind)
            except SchemaError as error:
                raise DataFileError(f"{path} line {number}: {str(error).removeprefix('record 0: ')}") from None
    return records
