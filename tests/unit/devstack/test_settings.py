"""The dev stack's own settings: where its servers keep their data."""

import pytest

from coprocessor.settings import load_settings
from devstack.settings import default_state_dir


@pytest.fixture(autouse=True)
def fresh_settings():
    load_settings.cache_clear()
    yield
    load_settings.cache_clear()


def test_the_state_dir_defaults_to_dev_under_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FHE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FHE_STATE_DIR", raising=False)  # set by a running dev stack
    assert default_state_dir() == tmp_path / "dev"


def test_fhe_state_dir_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("FHE_STATE_DIR", str(tmp_path / "elsewhere"))
    assert default_state_dir() == tmp_path / "elsewhere"


def test_the_product_settings_know_no_state_dir():
    assert "state_dir" not in type(load_settings()).model_fields
