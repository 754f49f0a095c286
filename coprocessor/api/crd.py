"""The FheBatch CustomResourceDefinition, generated from the pydantic spec model.

pydantic's JSON schema is turned into a *structural* OpenAPI schema (every node typed,
no ``$ref``), so the API server itself rejects wrongly shaped resources: unknown
fields, wrong types, values out of range, bad patterns. The one union of the spec
(an argument is a name or ``{scalar: ...}``) cannot be expressed structurally; it is
kept as an untyped item and checked by the operator.
"""

from __future__ import annotations

from typing import Any

import yaml

from .batch import CATEGORY, GROUP, KIND, PLURAL, SHORT_NAME, SINGULAR, VERSION, FheBatchSpec

_KEEP = (
    "type",
    "description",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "enum",
    "default",
)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Done",
        "type": "string",
        "jsonPath": ".status.done",
        "description": "computations completed / total",
    },
    {"name": "Device", "type": "string", "jsonPath": ".status.device"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message"},
]


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        resolved = dict(defs[node["$ref"].rsplit("/", 1)[1]])
        if "description" in node:
            resolved["description"] = node["description"]
        if "default" in node:
            resolved["default"] = node["default"]
        return _structural(resolved, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) == 1:  # Optional[X]: X, absent when not given
            described = {"description": node["description"]} if "description" in node else {}
            return _structural({**branches[0], **described}, defs)
        out: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
        if "description" in node:
            out["description"] = node["description"]
        return out
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    out = {key: node[key] for key in _KEEP if key in node and node[key] is not None}
    if node.get("default") is None:
        out.pop("default", None)
    kind = node.get("type")
    if kind == "object":
        if "properties" in node:
            out["properties"] = {k: _structural(v, defs) for k, v in node["properties"].items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = _structural(node["additionalProperties"], defs)
        elif node.get("patternProperties"):  # dict[Name, X]: values typed, keys checked
            (value,) = node["patternProperties"].values()
            out["additionalProperties"] = _structural(value, defs)
    elif kind == "array":
        out["items"] = _structural(node["items"], defs)
    return out


def spec_schema() -> dict[str, Any]:
    schema = FheBatchSpec.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    structural = _structural(schema, defs)
    structural["description"] = "What to compute, for whom, where and in which stages."
    structural["x-kubernetes-validations"] = [
        {
            "rule": "has(self.graph) != has(self.source)",
            "message": "exactly one of spec.graph and spec.source must be given",
        }
    ]
    return structural


DESCRIPTION = "One FHE computation graph, run as Jobs by the operator."


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            # Argo CD syncs the CRD before the operator (wave 0) and any FheBatch.
            "annotations": {"argocd.argoproj.io/sync-wave": "-2"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": DESCRIPTION,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": {
                                    "type": "object",
                                    "description": "Written by the operator only.",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = (
    "# Generated from coprocessor/api/batch.py by `fhectl crd generate`; do not edit.\n"
    "# tests/unit/operator/test_crd.py keeps this file equal to the generated one.\n"
)


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100)
