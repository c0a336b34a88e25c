"""Shared fixtures."""

import pytest

import mixq.paths as paths


@pytest.fixture
def demo_only(monkeypatch, tmp_path):
    """No ../shared anywhere and no environment variables: the embedded demo is used."""
    monkeypatch.setattr(paths, "_shared_candidates", lambda: [])
    monkeypatch.delenv("MIXQ_DATA", raising=False)
    monkeypatch.delenv("MIXQ_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
