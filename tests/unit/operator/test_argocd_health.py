"""The Argo CD health script, run by a real Lua interpreter on FheBatch objects."""

from pathlib import Path

import pytest
import yaml
from lupa import LuaRuntime

from tests.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "config" / "argocd" / "fhebatch-health.lua"
PATCH = REPO_ROOT / "config" / "argocd" / "argocd-cm-patch.yaml"
KEY = "resource.customizations.health.fhe.coprocessor.dev_FheBatch"


def health(obj: dict) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)

    def table(value):
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([table(v) for v in value])
        return value

    lua.globals().obj = table(obj)
    result = lua.execute(Path(SCRIPT).read_text())
    return result["status"], result["message"]


def batch(status=None, generation=1) -> dict:
    obj = {"metadata": {"name": "b", "generation": generation}, "spec": {"tenant": "acme"}}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (batch(), ("Progressing", "waiting for the operator")),
        (batch({"observedGeneration": 1}), ("Progressing", "waiting for the operator")),
        (
            batch({"phase": "Computing", "observedGeneration": 1, "message": "computing: 1/4"}),
            ("Progressing", "computing: 1/4"),
        ),
        (batch({"phase": "Admitted", "observedGeneration": 1}), ("Progressing", "Admitted")),
        (
            batch({"phase": "Succeeded", "observedGeneration": 1, "message": "all stages done"}),
            ("Healthy", "all stages done"),
        ),
        (
            batch({"phase": "Failed", "observedGeneration": 1, "message": "node 'x': bad"}),
            ("Degraded", "node 'x': bad"),
        ),
        (
            batch({"phase": "Suspended", "observedGeneration": 1, "message": "suspended"}),
            ("Suspended", "suspended"),
        ),
        # A Succeeded status of an older spec is not the health of the current one.
        (
            batch({"phase": "Succeeded", "observedGeneration": 1}, generation=2),
            ("Progressing", "the operator has not observed the current spec yet"),
        ),
        (
            batch({"phase": "Succeeded"}, generation=2),
            ("Progressing", "the operator has not observed the current spec yet"),
        ),
    ],
)
def test_phases_map_onto_argo_health(obj, expected):
    assert health(obj) == expected


def test_the_argocd_cm_patch_carries_the_same_script():
    patch = yaml.safe_load(PATCH.read_text())
    assert patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"][KEY] == SCRIPT.read_text()
