"""``fhectl fhe ops``: generated from the backends' own ``support``, with reasons."""

from __future__ import annotations

import json
import subprocess
import sys

from coprocessor.types import FheType, Op


def fhectl_ops(*extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fhectl", "fhe", "ops", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_json_names_every_op_and_type_for_both_backends_with_reasons():
    done = fhectl_ops("-o", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"concrete", "tfhe-rs"}
    for entry in report.values():
        assert "per bootstrap" in entry["failure_probability"]
        assert set(entry["ops"]) == {op.event_name for op in Op}
        for row in entry["ops"].values():
            assert set(row) == {t.name for t in FheType}
    concrete = report["concrete"]["ops"]
    assert concrete["FheAdd"]["Uint256"] == "supported"
    assert "FHE_CONCRETE_MAX_PBS" in concrete["FheMul"]["Uint256"]
    assert "pseudo-random" in concrete["FheRand"]["Uint8"]
    assert "2^-64" in report["concrete"]["failure_probability"]


def test_settings_move_the_matrix_and_the_failure_probability():
    import os

    env = {**os.environ, "FHE_CONCRETE_MAX_PBS": "100", "FHE_CONCRETE_P_ERROR": str(2.0**-40)}
    report = json.loads(fhectl_ops("--backend", "concrete", "-o", "json", env=env).stdout)
    assert report["concrete"]["ops"]["FheMul"]["Uint16"] != "supported"
    assert report["concrete"]["ops"]["FheAdd"]["Uint8"] == "supported"
    assert "2^-40" in report["concrete"]["failure_probability"]


def test_a_too_loose_failure_probability_is_refused_naming_the_setting():
    import os

    env = {**os.environ, "FHE_CONCRETE_P_ERROR": "0.01"}
    done = fhectl_ops("--backend", "concrete", env=env)
    assert done.returncode != 0
    assert "concrete_p_error" in (done.stderr + done.stdout).lower()
