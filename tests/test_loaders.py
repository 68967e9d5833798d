"""Loaders on tiny local files written in the real datasets' formats (jsonl, parquet, csv)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignkit.data import (
    DataSourceError,
    SchemaError,
    load_helpsteer2,
    load_hh_rlhf,
    load_ultrafeedback,
)
from alignkit.data.loaders import split_hh_transcript

# Anthropic/hh-rlhf rows: full transcripts that share everything up to the last "\n\nAssistant:".
HH_ROWS = [
    {"chosen": "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
     "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant: I don't know. "},
    {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke."
               "\n\nAssistant: Why did the chicken cross the road?",
     "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke."
                 "\n\nAssistant: No."},
    {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"},  # prompts differ
]
HH_EXPECTED = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "chosen": "Paris.", "rejected": "I don't know."},
    {"prompt": [{"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Tell me a joke."}],
     "chosen": "Why did the chicken cross the road?", "rejected": "No."},
]
HELPSTEER_ROWS = [
    {"prompt": "Name a colour.", "response": "Blue.", "helpfulness": 3, "correctness": 4, "coherence": 4,
     "complexity": 0, "verbosity": 0},
    {"prompt": "Explain rain.", "response": "Water falls.", "helpfulness": 1, "correctness": 2, "coherence": 3,
     "complexity": 1, "verbosity": 1},
]


def _chat(user, assistant):
    return [{"content": user, "role": "user"}, {"content": assistant, "role": "assistant"}]


# HuggingFaceH4/ultrafeedback_binarized (train_prefs) rows.
ULTRA_ROWS = [
    {"prompt": "Say hi.", "prompt_id": "p0", "chosen": _chat("Say hi.", "Hi!"), "rejected": _chat("Say hi.", "No."),
     "messages": _chat("Say hi.", "Hi!"), "score_chosen": 8.0, "score_rejected": 5.5},
    {"prompt": "2+2?", "prompt_id": "p1", "chosen": _chat("2+2?", "4"), "rejected": _chat("2+2?", "5"),
     "messages": _chat("2+2?", "4"), "score_chosen": 10.0, "score_rejected": 1.0},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet], ids=["jsonl", "parquet"])
def test_hh_rlhf_splits_transcripts_and_skips_mismatched_prompts(tmp_path, writer):
    source = writer(tmp_path / ("hh.jsonl" if writer is write_jsonl else "hh.parquet"), HH_ROWS)
    with pytest.warns(UserWarning, match=r"skipped rows \(1 prompts differ\)"):
        records = load_hh_rlhf(source)
    assert records == HH_EXPECTED


def test_hh_rlhf_limit_counts_records(tmp_path):
    source = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS)
    assert load_hh_rlhf(source, limit=1) == HH_EXPECTED[:1]      # stops before the mismatched row: no warning
    with pytest.raises(ValueError, match="limit must be a positive int"):
        load_hh_rlhf(source, limit=0)


def test_split_hh_transcript_edge_cases():
    assert split_hh_transcript("Human: Hi\n\nAssistant: Yo") == ([{"role": "user", "content": "Hi"}], "Yo")
    assert split_hh_transcript("\n\nHuman: Hi") is None                       # no assistant turn
    assert split_hh_transcript("preamble\n\nHuman: Hi\n\nAssistant: Yo") is None


def test_hh_rlhf_missing_column(tmp_path):
    source = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": row["chosen"]} for row in HH_ROWS])
    with pytest.raises(SchemaError) as caught:
        load_hh_rlhf(source)
    message = str(caught.value)
    assert "column 'rejected' is missing" in message and source in message and "HH-RLHF format" in message


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet], ids=["jsonl", "parquet"])
def test_helpsteer2(tmp_path, writer):
    source = writer(tmp_path / ("hs.jsonl" if writer is write_jsonl else "hs.parquet"), HELPSTEER_ROWS)
    assert load_helpsteer2(source) == HELPSTEER_ROWS


def test_helpsteer2_csv_and_float_ratings(tmp_path):
    path = tmp_path / "hs.csv"
    path.write_text("prompt,response,helpfulness,correctness,coherence,complexity,verbosity\n"
                    "Name a colour.,Blue.,3.0,4,4,0,0\n")
    assert load_helpsteer2(str(path)) == HELPSTEER_ROWS[:1]


def test_helpsteer2_errors_name_source_and_field(tmp_path):
    row_without_verbosity = {k: v for k, v in HELPSTEER_ROWS[0].items() if k != "verbosity"}
    missing = write_jsonl(tmp_path / "missing.jsonl", [row_without_verbosity])
    with pytest.raises(SchemaError, match=r"column 'verbosity' is missing .*nvidia/HelpSteer2 format"):
        load_helpsteer2(missing)
    bad = write_jsonl(tmp_path / "bad.jsonl", [HELPSTEER_ROWS[0], {**HELPSTEER_ROWS[1], "coherence": 7}])
    with pytest.raises(SchemaError, match=r"bad.jsonl: record 1: field 'coherence' is 7, outside 0..4"):
        load_helpsteer2(bad)


def test_folder_source_picks_the_split_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", HELPSTEER_ROWS[:1])
    write_jsonl(tmp_path / "validation.jsonl", HELPSTEER_ROWS[1:])
    assert load_helpsteer2(str(tmp_path), split="validation") == HELPSTEER_ROWS[1:]
    assert load_helpsteer2(str(tmp_path)) == HELPSTEER_ROWS[:1]


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet], ids=["jsonl", "parquet"])
def test_ultrafeedback(tmp_path, writer):
    source = writer(tmp_path / ("uf.jsonl" if writer is write_jsonl else "uf.parquet"), ULTRA_ROWS)
    records = load_ultrafeedback(source)
    assert records == [
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "chosen_score": 8.0, "rejected_score": 5.5,
         "id": "p0"},
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "chosen_score": 10.0, "rejected_score": 1.0, "id": "p1"},
    ]


def test_ultrafeedback_missing_column(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "chosen"} for row in ULTRA_ROWS]
    source = write_parquet(tmp_path / "uf.parquet", rows)
    with pytest.raises(SchemaError, match=r"column 'chosen' is missing .*ultrafeedback_binarized format"):
        load_ultrafeedback(source)


def test_missing_local_file_and_unreachable_hub(tmp_path, monkeypatch):
    with pytest.raises(DataSourceError, match="no such file or folder"):
        load_hh_rlhf(str(tmp_path / "nope.jsonl"))

    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Anthropic/hh-rlhf' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError) as caught:
        load_hh_rlhf("Anthropic/hh-rlhf")
    message = str(caught.value)
    assert "'Anthropic/hh-rlhf'" in message and "hub could not be reached" in message
    assert "pass a local .json/.jsonl/.parquet/.csv file" in message
