"""scripts/check-test-results: the second verdict `make test` asks for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "check-test-results"


def run(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    ("xml", "code", "message"),
    [
        ('<testsuites><testsuite tests="5" failures="0" errors="0"/></testsuites>', 0, "green"),
        (
            '<testsuites><testsuite tests="5" failures="0" errors="2"/></testsuites>',
            1,
            "0 failed and 2 errored of 5",
        ),
        ('<testsuite tests="3" failures="1" errors="0"/>', 1, "1 failed and 0 errored of 3"),
        (
            '<testsuites><testsuite tests="0" failures="0" errors="0"/></testsuites>',
            1,
            "no test ran",
        ),
        ("<testsuites><testsuite", 1, "no readable test report"),
    ],
)
def test_only_a_report_with_tests_and_no_failures_is_green(tmp_path, xml, code, message):
    report = tmp_path / "pytest.xml"
    report.write_text(xml)
    done = run(report)
    assert done.returncode == code
    assert message in (done.stdout + done.stderr)


def test_a_missing_report_is_red(tmp_path):
    done = run(tmp_path / "absent.xml")
    assert done.returncode == 1 and "no readable test report" in done.stderr


def test_each_checkout_has_its_own_pytest_temp_root(tmp_path):
    """Two checkouts' sessions never share the directory pytest's retention prunes."""
    import os

    from tests.conftest import checkout_temp_root

    one = checkout_temp_root(tmp_path / "main", tmp_path)
    other = checkout_temp_root(tmp_path / "clone" / "main", tmp_path)
    assert one != other and one == checkout_temp_root(tmp_path / "main", tmp_path)
    assert "fhe-" in os.environ["PYTEST_DEBUG_TEMPROOT"]  # this run uses one
    assert len(one.name) <= 10  # PostgreSQL's socket path limit leaves little room
    assert str(tmp_path).startswith(os.environ["PYTEST_DEBUG_TEMPROOT"])
