"""Shared fixtures: tiny offline material (see tests/tiny.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_tiny_beir, make_tiny_encoder  # noqa: E402


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A random 2-layer BERT folder (hidden 32) with its tokenizer."""
    return make_tiny_encoder(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    """A tiny BEIR collection with train and test splits."""
    return make_tiny_beir(tmp_path / "tiny-beir")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's embedding cache from a test."""
    monkeypatch.setenv("SBMOE_CACHE", str(tmp_path / "cache"))


def shared_datasets() -> Path:
    """The real collections: $SBMOE_DATA, else ../shared/datasets beside the repository."""
    import os

    return Path(os.environ.get("SBMOE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
