"""`fhectl batch submit` checks a manifest before it reaches the API server."""

import pytest

from fhectl.__main__ import run


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: [", "cannot read"),
        ("kind: Deployment\n", "is not a FheBatch manifest"),
        ("kind: FheBatch\nspec: {tenant: acme}\n", "exactly one of spec.graph and spec.source"),
        (
            "kind: FheBatch\nspec: {tenant: acme, graph: {nodes: [{name: x, op: Add}]}}\n",
            "spec.graph.nodes.0.op: String should match",
        ),
    ],
)
def test_bad_manifests_get_one_line_and_exit_3(tmp_path, capsys, content, message):
    path = tmp_path / "batch.yaml"
    path.write_text(content)
    assert run(["batch", "submit", str(path)]) == 3
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_missing_file_is_a_clear_error(capsys):
    assert run(["batch", "submit", "/nonexistent/batch.yaml"]) == 3
    assert "cannot read /nonexistent/batch.yaml" in capsys.readouterr().err


def test_crd_generate_prints_the_checked_in_crd(capsys):
    from tests.paths import REPO_ROOT

    assert run(["crd", "generate"]) == 0
    assert capsys.readouterr().out == (REPO_ROOT / "crds" / "fhebatch.yaml").read_text()
