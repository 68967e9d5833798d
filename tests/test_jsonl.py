"""Reading JSON-lines data: every error names the file and its 1-based line (blank lines counted, as an editor
counts them), a UTF-8 BOM is accepted, an empty file says so, a folder is called a folder."""

from __future__ import annotations

import json

import pytest

from alignkit.data.jsonl import DataFileError, read_jsonl

SFT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def _write(tmp_path, text: str, name: str = "data.jsonl", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def test_records_are_read_with_blank_lines_and_a_bom(tmp_path):
    path = _write(tmp_path, "\ufeff" + json.dumps(SFT) + "\n\n" + json.dumps(SFT) + "\n")
    assert read_jsonl(path, kind="sft") == [SFT, SFT]


@pytest.mark.parametrize("text, message", [
    (json.dumps(SFT) + "\n\n{oops\n", "data.jsonl line 3: not valid JSON"),  # line 3 of the file, not "record 1"
    (json.dumps(SFT) + "\n[1, 2]\n", "data.jsonl line 2: expected a JSON object, got list"),
    ("", "is empty; it needs one JSON record per line"),
    ("\n  \n", "is empty"),
    (json.dumps(SFT) + "\n\n" + json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n",
     "data.jsonl line 3: field 'messages' must end with a assistant message"),
    (json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}),
     "data.jsonl line 1: the assistant reply (field 'messages[1]') is empty"),
])
def test_bad_files_name_the_file_and_line(tmp_path, text, message):
    with pytest.raises(DataFileError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")) as caught:
        read_jsonl(_write(tmp_path, text), kind="sft")
    assert "\n" not in str(caught.value)


def test_a_folder_a_missing_file_and_other_encodings(tmp_path):
    with pytest.raises(DataFileError, match=r"--data '.*' is a directory; pass a JSON-lines file"):
        read_jsonl(tmp_path, kind="sft")
    with pytest.raises(DataFileError, match=r"--data '.*nope.jsonl' does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataFileError, match="is not UTF-8 text"):
        read_jsonl(_write(tmp_path, '{"prompt": "café"}', encoding="latin-1"))
