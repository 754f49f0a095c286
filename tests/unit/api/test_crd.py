"""The checked-in CRD is the generated one, and it is a structural schema."""

from coprocessor.api.crd import crd, crd_yaml
from tests.paths import REPO_ROOT


def test_checked_in_crds_equal_the_generated_one():
    """The repository's copy and the chart's (Helm installs crds/ before templates)."""
    for path in ("crds/fhebatch.yaml", "charts/fhe-coprocessor/crds/fhebatch.yaml"):
        checked_in = (REPO_ROOT / path).read_text()
        assert checked_in == crd_yaml(), f"run `fhectl crd generate > {path}`"


def _walk(node, path="spec"):
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_every_node_is_typed_or_explicitly_open():
    version = crd()["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in _walk(spec):
        assert "$ref" not in node and "anyOf" not in node, path
        assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), path
    names = crd()["spec"]["names"]
    assert (names["shortNames"], names["categories"]) == (["fheb"], ["fhe"])
    columns = [c["name"].upper() for c in version["additionalPrinterColumns"]]
    assert columns == ["PHASE", "DONE", "DEVICE", "AGE", "MESSAGE"]
    assert version["subresources"] == {"status": {}}
