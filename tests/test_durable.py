"""Durable writes: a folder is published whole (an old one swapped out in one step), temporary folders of killed
processes are removed on the next start and those of live ones kept, a killed model conversion leaves nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from alignkit.durable import exchange, publish_folder, remove_stale_siblings, staging_folder


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has this pid now (pids are not reused this quickly)


def test_publish_replaces_an_old_folder_and_leaves_no_sibling(tmp_path):
    final = tmp_path / "model"
    for content in ("old", "new"):
        staging = staging_folder(final)
        (staging / "weights").write_text(content)
        assert publish_folder(staging, final) == final
    assert (final / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    if exchange(a, b):  # Linux file systems that support RENAME_EXCHANGE (tmpfs, ext4, xfs, overlayfs)
        assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
    else:
        assert (a / "x").read_text() == "a"  # unsupported: nothing changed


def test_stale_siblings_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    final = tmp_path / "smollm2"
    dead, live = _dead_pid(), os.getpid()
    (tmp_path / f".smollm2.tmp-{dead}-0").mkdir()
    (tmp_path / f".smollm2.tmp-{dead}-0" / "model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / f".smollm2.old-{dead}-0").mkdir()
    (tmp_path / f".smollm2.tmp-{live}-7").mkdir()
    (tmp_path / ".other.tmp-1-0").mkdir()
    removed = remove_stale_siblings(final)
    assert sorted(p.name for p in removed) == [f".smollm2.old-{dead}-0", f".smollm2.tmp-{dead}-0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1-0", f".smollm2.tmp-{live}-7"]


def test_a_killed_model_build_is_cleaned_up_by_the_next_one(tmp_path):
    from alignkit.models import build_tiny_llama

    dead = _dead_pid()
    left = tmp_path / f".tiny.tmp-{dead}-0"  # what a SIGKILL during a conversion leaves (no `finally` runs)
    left.mkdir()
    (left / "config.json").write_text("{}")
    build_tiny_llama(tmp_path / "tiny", seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
