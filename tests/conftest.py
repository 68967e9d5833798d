"""Shared fixtures: every test gets its own ALIGNKIT_HOME and runs offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def session_home(tmp_path_factory):
    """One cache folder for the whole session, so the tiny model is built once."""
    return tmp_path_factory.mktemp("alignkit_home")


@pytest.fixture(autouse=True)
def alignkit_home(session_home, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_HOME", str(session_home))
    return session_home


@pytest.fixture(scope="session")
def tiny_dir(session_home):
    from alignkit.models import build_tiny_llama

    return build_tiny_llama(session_home / "tiny", seed=0)
