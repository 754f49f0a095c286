"""`fhe-listener` refuses what it cannot run with one clear line."""

import pytest

from coprocessor.settings import load_settings
from listeners.__main__ import main

GATEWAY = {
    "FHE_GATEWAY_CONFIG_ADDRESS": "0x" + "11" * 20,
    "FHE_GATEWAY_COMMITS_ADDRESS": "0x" + "12" * 20,
    "FHE_GATEWAY_ACL_ADDRESS": "0x" + "13" * 20,
}


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    for name in (
        "FHE_HOST_EXECUTOR_ADDRESS",
        "FHE_HOST_ACL_ADDRESS",
        *GATEWAY,
        "FHE_GATEWAY_INPUT_VERIFICATION_ADDRESS",
        "FHE_GATEWAY_KMS_GENERATION_ADDRESS",
        "FHE_SENDER_PRIVATE_KEY",
        "FHE_SIGNER_PRIVATE_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    load_settings.cache_clear()
    yield
    load_settings.cache_clear()


@pytest.mark.parametrize(
    ("argv", "env", "code", "message"),
    [
        (
            ["gateway"],
            {},
            3,
            "FHE_GATEWAY_CONFIG_ADDRESS, FHE_GATEWAY_INPUT_VERIFICATION_ADDRESS, "
            "FHE_GATEWAY_KMS_GENERATION_ADDRESS not set",
        ),
        (
            ["gateway"],
            {"FHE_GATEWAY_INPUT_VERIFICATION_ADDRESS": "0xabc"},
            3,
            "setting FHE_GATEWAY_INPUT_VERIFICATION_ADDRESS is invalid",
        ),
        (["host"], {}, 1, "FHE_HOST_EXECUTOR_ADDRESS and FHE_HOST_ACL_ADDRESS are required"),
        (
            ["host"],
            {"FHE_HOST_EXECUTOR_ADDRESS": "0x12"},
            3,
            "setting FHE_HOST_EXECUTOR_ADDRESS is invalid",
        ),
        (["teleport"], {}, 2, "invalid choice: 'teleport'"),
        (["sender"], {}, 3, "FHE_GATEWAY_COMMITS_ADDRESS, FHE_GATEWAY_ACL_ADDRESS are not set"),
        (["sender"], GATEWAY, 3, "FHE_SENDER_PRIVATE_KEY is not set"),
        (
            ["sender"],
            {**GATEWAY, "FHE_SENDER_PRIVATE_KEY": "0x1234"},
            3,
            "setting FHE_SENDER_PRIVATE_KEY is invalid: must be 64 hex digits",
        ),
        (
            ["sender"],
            {**GATEWAY, "FHE_SIGNER_PRIVATE_KEY": "0x" + "00" * 32},
            3,
            "setting FHE_SIGNER_PRIVATE_KEY is invalid: must not be zero",
        ),
    ],
)
def test_bad_invocations(argv, env, code, message, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FHE_LOG_FORMAT", "text")
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == code
    captured = capsys.readouterr()
    assert message in captured.err + captured.out
