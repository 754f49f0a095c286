import json
import logging

import pytest

from coprocessor import errors
from coprocessor.logs import JsonFormatter
from coprocessor.settings import load_settings


@pytest.fixture(autouse=True)
def fresh_settings():
    load_settings.cache_clear()
    yield
    load_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("FHE_DATABASE_URL", "mysql://x/y", "FHE_DATABASE_URL"),
        ("FHE_DATABASE_POOL_SIZE", "lots", "FHE_DATABASE_POOL_SIZE"),
        ("FHE_DATABASE_POOL_SIZE", "0", "FHE_DATABASE_POOL_SIZE"),
        ("FHE_S3_ENDPOINT", "127.0.0.1:9000", "FHE_S3_ENDPOINT"),
        ("FHE_S3_BUCKET", "x", "FHE_S3_BUCKET"),
        ("FHE_LOG_LEVEL", "LOUD", "FHE_LOG_LEVEL"),
    ],
)
def test_malformed_setting_names_the_variable(monkeypatch, variable, value, needle):
    monkeypatch.setenv(variable, value)
    with pytest.raises(errors.ConfigError, match=needle) as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def test_settings_read_the_fhe_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("FHE_DATABASE_URL", "postgresql://a@127.0.0.1:1/b")
    monkeypatch.setenv("FHE_CACHE_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.database_url.endswith(":1/b")
    assert settings.cache_dir == tmp_path


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.Recoverable("x"), 75),
        (errors.MissingInputs([b"\x01" * 32]), 75),
        (errors.ServiceUnavailable("s3", "down"), 75),
        (errors.Irrecoverable("x"), 3),
        (errors.UserError("x"), 3),
        (errors.InvalidRow("x"), 3),
        (errors.Fatal("x"), 1),
        (errors.SchemaTooNew("x"), 1),
        (RuntimeError("bug"), 1),
    ],
)
def test_error_classes_map_to_exit_codes(error, code):
    assert errors.exit_code_for(error) == code


def test_missing_inputs_names_handles():
    error = errors.MissingInputs([bytes([i]) * 32 for i in range(7)])
    assert "0x" + "01" * 32 in str(error) and "and 2 more" in str(error)


def test_json_log_is_one_line_with_fields():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "claimed\nwork", None, None)
    record.fields = {"batch": "b1", "count": 3}
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["batch"] == "b1" and parsed["count"] == 3 and parsed["level"] == "info"
    assert "boom" in parsed["error"]


def test_the_disk_preflight_names_the_place_and_the_shortfall(tmp_path):
    from tests.conftest import disk_shortfall

    assert disk_shortfall([tmp_path / "not" / "yet"], 1) is None
    why = disk_shortfall([tmp_path / "not" / "yet"], 2**60)
    assert why is not None and str(tmp_path / "not" / "yet") in why
    assert "the suite needs 1073741824 GiB" in why


def test_secrets_never_appear_in_the_settings_repr():
    from coprocessor.settings import Settings

    settings = Settings(
        database_url="postgresql://fhe:db-password@db.internal:5432/coprocessor",
        s3_secret_key="s3-secret-value",
        sender_private_key="0x" + "ab" * 32,
    )
    shown = repr(settings) + str(settings)
    for secret in ("db-password", "s3-secret-value", "ab" * 32):
        assert secret not in shown
    assert settings.database_url.endswith("/coprocessor")  # still usable
