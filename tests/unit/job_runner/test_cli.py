"""`fhe-job` rejects bad arguments before touching any service."""

import pytest

from job_runner.__main__ import main


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["verify", "--batch", "fhe/b@1"], 3, "stage 'verify' is not available in this release"),
    (["compute", "--batch", "fhe/b@1", "--index", "2", "--count", "2"], 2,
     "--index 2 must be in 0..1"),
    (["compute"], 2, "the following arguments are required: --batch"),
    (["paint", "--batch", "x"], 2, "invalid choice: 'paint'"),
])
def test_bad_arguments_exit_with_one_clear_line(argv, code, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == code
    assert message in capsys.readouterr().err
