"""The FheBatch spec as a pydantic model: the one source of the CRD schema and of the
operator's structural validation.

It lives in the library because three deployables speak it: the operator reconciles
batches, the host listener creates them and fhectl submits them.
``crds/fhebatch.yaml`` is generated from ``FheBatchSpec`` (``fhectl crd generate``); a
test keeps the checked-in file equal to the generated one. Semantic checks that need
the whole graph (types, arity, cycles) or the database (tenant, input handles) live in
the operator's ``validation.py``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .names import GROUP
from .stages import BATCH_STAGES

VERSION = "v1alpha1"
KIND = "FheBatch"
PLURAL = "fhebatches"
SINGULAR = "fhebatch"
SHORT_NAME = "fheb"
CATEGORY = "fhe"
API_VERSION = f"{GROUP}/{VERSION}"
BatchStage = Literal["compute", "sns", "send"]  # = BATCH_STAGES, spelled for the schema

MAX_INLINE_NODES = 500  # keeps a resource far below etcd's 1.5 MiB object limit
MAX_ARGS = 16
STAGE_ORDER = BATCH_STAGES

HandleText = Annotated[
    str, Field(pattern=r"^0x[0-9a-fA-F]{64}$", description="A 32-byte ciphertext handle, 0x-hex.")
]
NodeName = Annotated[
    str,
    Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$", description="A name other nodes refer to."),
]
TransactionText = Annotated[
    str, Field(pattern=r"^0x[0-9a-fA-F]{64}$", description="A 32-byte transaction hash, 0x-hex.")
]
ScalarText = Annotated[
    str,
    Field(
        pattern=r"^(0x[0-9a-fA-F]{1,64}|[0-9]{1,78})$",
        description="A plaintext: decimal or 0x-hex.",
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Scalar(_Model):
    scalar: ScalarText

    @property
    def value(self) -> int:
        return int(self.scalar, 0) if self.scalar.startswith("0x") else int(self.scalar)


class GraphNode(_Model):
    name: NodeName
    op: str = Field(pattern=r"^Fhe[A-Za-z]+$", description="FheAdd, FheIfThenElse, ...")
    args: list[str | Scalar] = Field(
        default_factory=list,
        max_length=MAX_ARGS,
        description='Input or node names; a plaintext is {scalar: "42"} (last only).',
    )
    type: str | None = Field(
        None,
        description="Result type; required for FheTrivialEncrypt, FheCast, FheRand, "
        "FheRandBounded, otherwise inferred and checked.",
    )
    output: bool = Field(False, description="Report this node's handle in status.outputs.")


class Graph(_Model):
    inputs: dict[NodeName, HandleText] = Field(
        default_factory=dict, description="Existing ciphertexts by name."
    )
    nodes: list[GraphNode] = Field(min_length=1, max_length=MAX_INLINE_NODES)


class Source(_Model):
    transactions: list[TransactionText] = Field(
        min_length=1,
        max_length=MAX_INLINE_NODES,
        description="Transactions whose computations (already in the database) to run.",
    )


class Retries(_Model):
    backoff_limit: int = Field(3, ge=0, le=20, alias="backoffLimit")


class Resources(_Model):
    gpus: int = Field(1, ge=0, le=8, description="nvidia.com/gpu per pod (gpu device).")
    cpu: str = Field("2", pattern=r"^[0-9]+(\.[0-9]+|m)?$")
    memory: str = Field("8Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$")


class FheBatchSpec(_Model):
    tenant: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Whose keys; the tenant must exist.",
    )
    device: Literal["auto", "gpu", "cpu"] = "auto"
    priority: int = Field(0, ge=-1000, le=1000, description="Higher first when capacity is short.")
    stages: list[BatchStage] = Field(
        default_factory=lambda: list[BatchStage](["compute"]),
        min_length=1,
        max_length=3,
        description="Ordered subset of compute, sns, send.",
    )
    suspend: bool = Field(False, description="Start no new Job; resume continues.")
    deadline_seconds: int = Field(3600, ge=1, le=7 * 86400, alias="deadlineSeconds")
    retries: Retries = Field(default_factory=Retries)
    resources: Resources = Field(default_factory=Resources)
    parallelism: int = Field(
        1, ge=1, le=64, description="Compute pods; >1 splits by dependence chain."
    )
    graph: Graph | None = None
    source: Source | None = None

    @model_validator(mode="after")
    def _one_origin_and_ordered_stages(self) -> FheBatchSpec:
        if (self.graph is None) == (self.source is None):
            raise ValueError("exactly one of spec.graph and spec.source must be given")
        positions = [STAGE_ORDER.index(s) for s in self.stages]
        if positions != sorted(set(positions)):
            raise ValueError(
                f"stages {self.stages} must be distinct and in the order {', '.join(STAGE_ORDER)}"
            )
        return self

    def spec_hash(self) -> str:
        """What admission is keyed by (with namespace/name): the computation (tenant and
        graph or source), not how it runs, so a re-created identical resource (GitOps)
        or a changed priority is recognised as the same batch."""
        canonical = json.dumps(
            self.model_dump(mode="json", by_alias=True, include={"tenant", "graph", "source"}),
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def batch_id(namespace: str, name: str, spec: FheBatchSpec) -> str:
    return f"{namespace}/{name}@{spec.spec_hash()}"


# Where pydantic tags the branch of GraphNode.args' union in an error's location
# (..., "args", 1, "Scalar", "scalar"): not a field name, left out of the path shown.
_ARG_BRANCHES = frozenset({"str", "Scalar"})


def describe_error(error: Exception) -> str:
    """One line from a pydantic ValidationError: where, and what is wrong."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        # With a union (an argument is a name or {scalar}), the deepest error is the
        # branch the user meant; union branch tags (str, Scalar) are not field names.
        first = max(error.errors(), key=lambda e: len(e["loc"]))
        loc = first["loc"]
        where = ".".join(
            str(part)
            for i, part in enumerate(loc)
            if not (part in _ARG_BRANCHES and i >= 2 and loc[i - 2] == "args")
        )
        extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        return f"spec.{where}: {first['msg']}{extra}" if where else f"spec: {first['msg']}"
    return str(error)
