"""`fhe-job` rejects bad arguments before touching any service."""

import pytest

from job_runner.__main__ import main


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["verify", "--batch", "fhe/b@1"], 2, "verify takes no --batch"),
        (["sns", "--batch", "fhe/b@1", "--follow"], 2, "--follow is for verify only"),
        (
            ["compute", "--batch", "fhe/b@1", "--index", "2", "--count", "2"],
            2,
            "--index 2 must be in 0..1",
        ),
        (["compute"], 2, "compute needs --batch"),
        (["paint", "--batch", "x"], 2, "unknown stage 'paint'"),
        (["sns,compute", "--batch", "x"], 2, "must be distinct and in the order"),
        (["compute,compute", "--batch", "x"], 2, "must be distinct and in the order"),
        (["compute,verify"], 2, "unknown stage 'verify'"),
        (["compute,", "--batch", "x"], 2, "unknown stage ''"),
        (["compute,sns", "--batch", "x", "--count", "2"], 2, "--count is for a compute stage"),
        (["compute,sns"], 2, "compute,sns needs --batch"),
    ],
)
def test_bad_arguments_exit_with_one_clear_line(argv, code, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == code
    assert message in capsys.readouterr().err


GATEWAY = {
    "FHE_GATEWAY_CONFIG_ADDRESS": "0x" + "21" * 20,
    "FHE_GATEWAY_COMMITS_ADDRESS": "0x" + "22" * 20,
    "FHE_GATEWAY_ACL_ADDRESS": "0x" + "23" * 20,
}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "FHE_GATEWAY_COMMITS_ADDRESS, FHE_GATEWAY_ACL_ADDRESS are not set"),
        (GATEWAY, "FHE_SENDER_PRIVATE_KEY is not set"),
        (
            {k: v for k, v in GATEWAY.items() if k != "FHE_GATEWAY_ACL_ADDRESS"},
            "setting FHE_GATEWAY_ACL_ADDRESS is not set",
        ),
        ({"FHE_GATEWAY_COMMITS_ADDRESS": "0x22"}, "FHE_GATEWAY_COMMITS_ADDRESS is invalid"),
    ],
)
def test_send_without_its_settings_exits_3_before_touching_anything(
    env, message, monkeypatch, tmp_path, capsys
):
    """No database, no chain is reachable at these URLs: the stage must not need them to
    say what is missing."""
    import json

    for name in (*GATEWAY, "FHE_SENDER_PRIVATE_KEY"):
        monkeypatch.delenv(name, raising=False)
    code = exit_code_without_services(["send", "--batch", "fhe/b@1"], env, monkeypatch, tmp_path)
    assert code == 3
    # A malformed setting stops the process before logging is set up (stderr); a
    # missing one is the stage's error, in its termination message too.
    summary = tmp_path / "summary"
    written = json.loads(summary.read_text())["error"] if summary.exists() else ""
    assert message in written + capsys.readouterr().err


def test_a_group_stops_at_the_stage_that_fails_and_reports_it(monkeypatch, tmp_path):
    """``fhe-job compute,sns,send`` with no database: compute exits 75 (recoverable),
    SNS and send never start, and the termination message says so in the shape the
    operator reads (coprocessor.api.summary.stages_message)."""
    import json

    from coprocessor.api.summary import read_termination_message

    argv = ["compute,sns,send", "--batch", "fhe/b@1"]
    assert exit_code_without_services(argv, {}, monkeypatch, tmp_path) == 75
    written = json.loads((tmp_path / "summary").read_text())
    assert written["stage"] == "compute" and written["exit_code"] == 75
    assert set(written["stages"]) == {"compute"}
    kept = read_termination_message(json.dumps(written))
    assert kept["stage"] == "compute" and kept["stages"]["compute"]["exit_code"] == 75
    assert "postgres" in kept["error"] and "error" not in kept["stages"]["compute"]  # once


def exit_code_without_services(argv, env, monkeypatch, tmp_path) -> int:
    """fhe-job's exit code with ``env``, a database nobody answers at, and the
    termination message in tmp_path/summary."""
    from coprocessor.settings import load_settings

    for name, value in {
        **env,
        "FHE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "FHE_TERMINATION_LOG": str(tmp_path / "summary"),
        "FHE_LOG_FORMAT": "text",
    }.items():
        monkeypatch.setenv(name, value)
    load_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            main(argv)
    finally:
        load_settings.cache_clear()
    return exited.value.code
