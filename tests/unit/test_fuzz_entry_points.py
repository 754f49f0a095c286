"""Fuzz tests of the entry points that take outside bytes (pure functions, no services).

Every entry point gets garbage and mutations of valid input, and the property is always
the same: a well-formed result, or the project's own error for that input with a
message; never another exception, never a hang (``deadline`` bounds one example, the
module's timeout a hang).

Leaks these tests found (an OverflowError, a MemoryError or a RecursionError where
the caller expects the module's own error) are fixed; the smallest input of each is kept
at the end of this file as a regression test, with what used to escape. Should a new
leak turn up, name its type in a ``KNOWN_*_LEAKS`` tuple and pin it there with
``xfail(strict=True, raises=...)`` until it is fixed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from coprocessor.api.batch import MAX_ARGS, FheBatchSpec, describe_error
from coprocessor.api.stages import BATCH_STAGES
from coprocessor.api.summary import MAX_ERROR_CHARS, STATUS_KEYS, read_termination_message
from coprocessor.db.rows import check_batch, check_row
from coprocessor.fhe.engine import get_backend
from coprocessor.fhe.envelope import BACKEND_IDS, BadCiphertext, Envelope, Kind
from coprocessor.kms import CRS_DIR, OBJECT_DIRS
from coprocessor.types import HANDLE_LENGTH, FheType, Handle, Op, make_handle
from fhe_operator.controller import job_view
from fhe_operator.reconcile import JobView
from fhe_operator.validation import Bounds, InvalidSpec, check_bounds, check_stages, plan_graph
from listeners.gateway import _activation, _Skip
from listeners.host_events import (
    ALLOWED_FOR_DECRYPTION,
    BINARY_OPS,
    DELEGATED,
    IGNORED_EVENTS,
    REVOKED,
    VERIFY_INPUT,
    UndecodableEvent,
    allowed_rows,
    check_derivation,
    computation_row,
    delegation_row,
    verified_input,
)

pytestmark = pytest.mark.timeout(120)  # a hang fails its test instead of stalling the run

FUZZ = settings(max_examples=250, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=500, deadline=1000, suppress_health_check=[HealthCheck.too_slow])

# What the callers catch around each entry point (read from the callers, not assumed).
PLAN_CATCHES = (InvalidSpec, ValueError)  # fhe_operator/controller.py, around plan_graph
HOST_CATCHES = (UndecodableEvent, KeyError, TypeError, ValueError)  # listeners/host.py _decode

# Exception types known to escape today (none: the leaks found are fixed).
KNOWN_HOST_LEAKS: tuple[type[BaseException], ...] = ()
KNOWN_GATEWAY_LEAKS: tuple[type[BaseException], ...] = ()
KNOWN_SUMMARY_LEAKS: tuple[type[BaseException], ...] = ()

CHAIN = 12345
TX = bytes.fromhex("ab" * 32)
BACKEND = get_backend("tfhe-rs")
REFUSED = object()  # what `attempt` returns when the call raised an accepted error


def attempt(
    call: Callable[[], Any],
    allowed: tuple[type[BaseException], ...],
    known: tuple[type[BaseException], ...] = (),
) -> Any:
    """The call's result, or REFUSED when it raised one of ``allowed`` with a message (or
    a pinned leak of ``known``). Any other exception escapes and fails the test with its
    own traceback."""
    try:
        return call()
    except allowed as error:
        assert str(error).strip(), f"{type(error).__name__} raised without a message"
        event(f"refused: {type(error).__name__}")
        return REFUSED
    except known as error:
        event(f"known leak: {type(error).__name__}")
        return REFUSED


# --- values -----------------------------------------------------------------------------

# Ints stay out of 301 .. 2**62: where bytes are expected, bytes(n) allocates n bytes, so a
# mid-sized int costs memory and time rather than raising (see the report, and the
# MemoryError pinned below for 2**62).
INTS = st.one_of(
    st.integers(-300, 300),
    st.integers(2**63, 2**300),
    st.integers(-(2**300), -(2**63)),
    st.sampled_from([2**63 - 1, 2**64 - 1, 2**256 - 1, 2**256, -(2**255)]),
)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    st.floats(),
    st.text(max_size=24),
    st.binary(max_size=40),
)
GARBAGE = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=24),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON-like value: the root, then each dict value and list item."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutated(
    draw,
    base: Any,
    replacements: st.SearchStrategy,
    keys: st.SearchStrategy,
    *,
    whole: bool = False,
) -> Any:
    """``base`` with one to three edits: a value replaced, a key or item deleted, a key or
    item inserted, an item duplicated (duplicate names, repeated handles)."""
    value = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(value)))
        action = draw(st.sampled_from(["replace", "delete", "insert", "duplicate"]))
        if not path:
            if action == "replace" and whole:  # only where the caller may pass anything
                value = draw(replacements)
            continue
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, tuple):  # immutable (a web3 struct): left as it is
            continue
        last = path[-1]
        if action == "replace":
            parent[last] = draw(replacements)
        elif action == "delete":
            del parent[last]
        elif action == "insert" and isinstance(parent, dict):
            parent[draw(keys)] = draw(replacements)
        elif action == "insert":
            parent.insert(last, draw(replacements))
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    return value


@st.composite
def reshaped(draw, mapping: dict[str, Any]) -> dict[str, Any]:
    """``mapping`` with keys sometimes missing and sometimes an unknown key added."""
    out = {k: v for k, v in mapping.items() if draw(st.sampled_from([True] * 7 + [False]))}
    if draw(st.sampled_from([False] * 7 + [True])):
        out[draw(st.text(max_size=10))] = draw(LEAVES)
    return out


# --- 1. FheBatch specs ------------------------------------------------------------------


def handle_text(n: int, fhe_type: FheType = FheType.Uint8, chain: int = CHAIN) -> str:
    return make_handle(n.to_bytes(21, "big"), 0, chain, fhe_type).hex()


INPUTS = {
    "a": handle_text(1),
    "b": handle_text(2),
    "w": handle_text(3, FheType.Uint16),
    "c": handle_text(4, FheType.Bool),
}
GOOD_NODES = [
    {"name": "ok", "op": "FheGe", "args": ["a", "b"]},
    {"name": "dec", "op": "FheSub", "args": ["a", "b"]},
    {"name": "new", "op": "FheIfThenElse", "args": ["ok", "dec", "a"], "output": True},
    {"name": "s", "op": "FheAdd", "args": ["b", {"scalar": "0x2a"}]},
    {"name": "k", "op": "FheTrivialEncrypt", "args": [{"scalar": "7"}], "type": "Uint8"},
    {"name": "x", "op": "FheCast", "args": ["k"], "type": "Uint64", "output": True},
    {"name": "r", "op": "FheRand", "type": "Uint16"},
    {"name": "rb", "op": "FheRandBounded", "args": [{"scalar": "16"}], "type": "Uint8"},
    {"name": "total", "op": "FheSum", "args": ["a", "b", "dec"]},
    {"name": "found", "op": "FheIsIn", "args": ["a", "b", {"scalar": "3"}]},
    {"name": "pick", "op": "FheIfThenElse", "args": ["c", "w", "w"]},
]
VALID_BODIES = [
    {
        "tenant": "acme",
        "stages": ["compute", "sns", "send"],
        "priority": 5,
        "graph": {"inputs": INPUTS, "nodes": GOOD_NODES},
    },
    {
        "tenant": "acme",
        "parallelism": 2,
        "resources": {"gpus": 0, "cpu": "500m", "memory": "2Gi"},
        "retries": {"backoffLimit": 1},
        "graph": {
            "inputs": {"a": INPUTS["a"]},
            "nodes": [{"name": "n", "op": "FheNot", "args": ["a"]}],
        },
    },
    {"tenant": "acme", "device": "gpu", "source": {"transactions": ["0x" + "ab" * 32]}},
]


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` four times in five: enough well-shaped fields that the semantic checks
    behind the model (plan_graph and on) are reached, enough garbage that each is wrong."""
    return st.sampled_from([True, True, True, True, False]).flatmap(
        lambda well: good if well else bad
    )


NAMES = st.sampled_from(["a", "b", "c", "w", "x", "y", "z"])  # inputs and nodes collide
BAD_NAMES = st.sampled_from(["_", "a" * 63, "a" * 64, "0x", "Fhe", "-a", "a b"]) | st.text(
    max_size=10
)
NAME_TEXT = mostly(NAMES, BAD_NAMES | LEAVES)
OP_NAMES = mostly(
    st.sampled_from([op.event_name for op in Op]),
    st.sampled_from(["FheFoo", "Add", "FheAddd", "Fhe", "FheFhe", "fheadd", "FheMULDIV", ""])
    | LEAVES,
)
TYPE_NAMES = mostly(
    st.sampled_from([t.name for t in FheType]),
    st.sampled_from(["euint8", "ebool", " Uint8 ", "uint64", "Uint999", "bytes", "", "0"]) | LEAVES,
)
SCALAR_TEXT = mostly(
    st.integers(0, 2**64).map(str) | st.integers(0, 2**260).map(hex),
    st.integers(0, 10**80).map(str)
    | st.sampled_from(["-1", "0x", "1" * 78, "1" * 79, "0x" + "f" * 65, "\u0663", "1_000", " 1"])
    | st.text(max_size=8)
    | LEAVES,
)
SCALARS = mostly(
    st.fixed_dictionaries({"scalar": SCALAR_TEXT}),
    st.dictionaries(st.sampled_from(["scalar", "value", "Scalar"]), SCALAR_TEXT, max_size=2),
)
ARG_LISTS = mostly(
    st.lists(mostly(NAMES, SCALARS), max_size=4),
    st.lists(NAMES | SCALARS | BAD_NAMES | LEAVES, max_size=5)
    | st.lists(NAMES, min_size=MAX_ARGS, max_size=MAX_ARGS + 1),
)
INPUT_HANDLES = mostly(
    st.builds(
        handle_text,
        st.integers(0, 2**20),
        st.sampled_from(FheType),
        st.sampled_from([CHAIN, CHAIN, CHAIN, 1, 0, 2**64 - 1]),
    ),
    # Any 32 bytes: a type byte past Bool..Bytes256 included.
    st.binary(min_size=32, max_size=32).map(lambda raw: "0x" + raw.hex())
    | st.sampled_from(["0x12", "0x" + "g" * 64, "0X" + "00" * 32, "00" * 32])
    | LEAVES,
)


@st.composite
def graph_nodes(draw) -> dict[str, Any]:
    node: dict[str, Any] = {"name": draw(NAME_TEXT), "op": draw(OP_NAMES), "args": draw(ARG_LISTS)}
    if draw(st.booleans()):
        node["type"] = draw(mostly(TYPE_NAMES, st.none()))
    if draw(st.booleans()):
        node["output"] = draw(mostly(st.booleans(), LEAVES))
    return draw(reshaped(node))


@st.composite
def spec_bodies(draw) -> dict[str, Any]:
    """Specs with the right shape and wrong content: real op names among garbage,
    arguments that are names, scalars with garbage values, missing and extra keys,
    cycles and duplicate names (the name pools are small and shared)."""
    body: dict[str, Any] = {"tenant": draw(mostly(st.just("acme"), st.text(max_size=10) | LEAVES))}
    optional = {
        "stages": mostly(
            st.sampled_from([["compute"], ["compute", "sns"], ["compute", "sns", "send"]]),
            st.lists(st.sampled_from(["compute", "sns", "send", "verify", "Compute"])) | LEAVES,
        ),
        "priority": mostly(st.integers(-1000, 1000), INTS | LEAVES),
        "device": mostly(st.sampled_from(["auto", "gpu", "cpu"]), st.just("tpu") | LEAVES),
        "suspend": mostly(st.booleans(), LEAVES),
        "deadlineSeconds": mostly(st.integers(1, 3600), INTS | LEAVES),
        "parallelism": mostly(st.integers(1, 64), INTS | LEAVES),
        "retries": st.fixed_dictionaries({"backoffLimit": mostly(st.integers(0, 20), INTS)}),
        "resources": st.dictionaries(st.sampled_from(["gpus", "cpu", "memory"]), LEAVES),
    }
    for key, values in optional.items():
        if draw(st.sampled_from([False, False, True])):
            body[key] = draw(values)
    origin = draw(st.sampled_from(["graph"] * 6 + ["source", "both", "none"]))
    if origin in ("graph", "both"):
        graph = {
            "inputs": draw(st.dictionaries(NAME_TEXT, INPUT_HANDLES, max_size=4)),
            "nodes": draw(st.lists(graph_nodes(), max_size=8)),
        }
        body["graph"] = draw(reshaped(graph))
    if origin in ("source", "both"):
        transactions = st.binary(min_size=32, max_size=32).map(lambda raw: "0x" + raw.hex())
        body["source"] = {"transactions": draw(st.lists(mostly(transactions, LEAVES), max_size=3))}
    return draw(reshaped(body))


VALID_SCALARS = st.fixed_dictionaries(
    {"scalar": st.integers(0, 2**260).map(str) | st.integers(0, 2**256 - 1).map(hex)}
)
NODE_NAMES = mostly(st.sampled_from(["x", "y", "z", "p", "q"]), NAMES)


@st.composite
def semantic_nodes(draw) -> dict[str, Any]:
    """A node of a real op with, mostly, the argument count and scalar place it takes."""
    op = draw(st.sampled_from(list(Op)))
    signature = op.signature
    if op in (Op.TrivialEncrypt, Op.RandBounded):
        shape = ["scalar"]
    elif op is Op.Rand:
        shape = []
    else:
        count = signature.arity or draw(st.integers(signature.min_args, 4))
        shape = ["ref"] * count
        if signature.scalar_rhs and draw(st.booleans()):
            shape[-1] = "scalar"
    shape = draw(mostly(st.just(shape), st.lists(st.sampled_from(["ref", "scalar"]), max_size=4)))
    refs = mostly(st.sampled_from(["a", "b", "x", "y"]), NAMES)
    node: dict[str, Any] = {
        "name": draw(NODE_NAMES),
        "op": op.event_name,
        "args": [draw(refs if kind == "ref" else VALID_SCALARS) for kind in shape],
    }
    explicit = op in (Op.TrivialEncrypt, Op.Cast, Op.Rand, Op.RandBounded)
    if explicit or draw(st.sampled_from([False, False, False, True])):
        node["type"] = draw(mostly(st.sampled_from(["Uint8", "Uint16", "Bool"]), TYPE_NAMES))
    if draw(st.booleans()):
        node["output"] = draw(st.booleans())
    return node


SEMANTIC_INPUTS = mostly(
    st.just(INPUTS),
    st.dictionaries(
        NAMES,
        mostly(
            st.builds(handle_text, st.integers(0, 99), st.sampled_from(FheType)),
            INPUT_HANDLES.filter(lambda h: isinstance(h, str) and len(h) == 66),
        ),
        max_size=4,
    ),
)
# Specs the model accepts, wrong in what they mean: unknown or cyclic names, duplicate
# nodes, operand types that differ, scalars where none may be or past 256 bits, missing
# or contradicting `type`, inputs of another chain or with a type byte past Bytes256.
SEMANTIC_SPECS = st.fixed_dictionaries(
    {
        "tenant": st.just("acme"),
        "graph": st.fixed_dictionaries(
            {"inputs": SEMANTIC_INPUTS, "nodes": st.lists(semantic_nodes(), min_size=1, max_size=6)}
        ),
    },
    optional={
        "stages": st.sampled_from([["compute"], ["compute", "sns"], ["compute", "sns", "send"]]),
        "priority": st.integers(-1000, 1000),
    },
)
SPEC_REPLACEMENTS = st.one_of(NAMES, SCALARS, OP_NAMES, TYPE_NAMES, INPUT_HANDLES, JSON)
SPEC_KEYS = st.sampled_from(["name", "op", "args", "type", "output", "inputs", "nodes", "scalar"])
MUTATED_BODIES = st.one_of(
    *(
        mutated(body, SPEC_REPLACEMENTS, SPEC_KEYS | st.text(max_size=8), whole=True)
        for body in VALID_BODIES
    )
)
BOUNDS = st.builds(
    Bounds,
    max_cost=st.integers(0, 10**6),
    max_outputs=st.integers(0, 12),
    max_priority=st.integers(-1000, 1000),
    priority_namespaces=st.frozensets(st.sampled_from(["fhe", "ops", ""]), max_size=2),
)


def admit(body: Any, bounds: Bounds) -> None:
    """What the operator does with a resource's spec, in its order: validate the model,
    check the stages, plan the graph, check the rows and the bounds."""
    try:
        spec = FheBatchSpec.model_validate(body)
    except ValidationError as error:
        message = describe_error(error)
        assert isinstance(message, str) and message.strip()
        assert message.startswith("spec")
        event("refused: ValidationError")
        return
    assert len(spec.spec_hash()) == 16
    attempt(lambda: check_stages(spec.stages, BATCH_STAGES, spec.graph), (InvalidSpec,))
    if spec.graph is None:
        event("source batch")
        return
    graph = spec.graph
    planned = attempt(
        lambda: plan_graph(graph, namespace="fhe", name="fuzz", chain_id=CHAIN, backend=BACKEND),
        PLAN_CATCHES,
    )
    if planned is REFUSED:
        return
    event("planned")
    assert set(planned.handles) == {node.name for node in graph.nodes}
    assert set(planned.outputs) == {node.name for node in graph.nodes if node.output}
    for text in planned.handles.values():
        assert Handle.parse(text).chain_id == CHAIN
    assert set(planned.inputs) == {bytes.fromhex(text[2:]) for text in graph.inputs.values()}
    # What admission writes must pass the checks the database makes: no InvalidRow here.
    ordered = check_batch(planned.rows)
    assert sorted(r.output_handle for r in ordered) == sorted(r.output_handle for r in planned.rows)
    assert planned.cost >= 0
    attempt(lambda: check_bounds(spec, planned, "fhe", bounds), (InvalidSpec,))


def test_the_fuzzed_bases_are_valid():
    """The valid specs the mutations start from are admitted whole, so a mutation is what
    makes a fuzzed spec wrong."""
    for body in VALID_BODIES:
        spec = FheBatchSpec.model_validate(body)
        check_stages(spec.stages, BATCH_STAGES, spec.graph)
        if spec.graph is not None:
            planned = plan_graph(
                spec.graph, namespace="fhe", name="fuzz", chain_id=CHAIN, backend=BACKEND
            )
            check_batch(planned.rows)


@FUZZ
@given(SEMANTIC_SPECS | spec_bodies(), BOUNDS)
def test_structured_but_wrong_specs_get_one_line_errors(body, bounds):
    """FheBatchSpec.model_validate -> describe_error, check_stages, plan_graph,
    check_batch and check_bounds: anyone who may create an FheBatch writes these bytes,
    and an exception other than ValidationError / InvalidSpec (or the ValueError the
    controller also catches around plan_graph) would break the batch's reconcile
    instead of showing one line in its status."""
    admit(body, bounds)


@FUZZ
@given(MUTATED_BODIES, BOUNDS)
def test_mutated_valid_specs_get_one_line_errors(body, bounds):
    """The same pipeline on valid specs with one to three edits (a value replaced, a key
    dropped or added, a node duplicated): the near misses a person makes."""
    admit(body, bounds)


@FUZZ
@given(JSON | st.fixed_dictionaries({"tenant": st.just("acme"), "graph": JSON}), BOUNDS)
def test_arbitrary_json_specs_get_one_line_errors(body, bounds):
    """The same pipeline on any JSON value (kopf hands the operator whatever the API
    server stored: the CRD schema is the only filter before it)."""
    admit(body, bounds)


# --- 2. Host chain events -----------------------------------------------------------------

VECTORS = json.loads((Path(__file__).parent / "vectors" / "host_handles.json").read_text())
VECTOR_CHAIN = VECTORS["chain_id"]
ACL = bytes.fromhex(VECTORS["acl"][2:])
BYTES_FIELDS = {"lhs", "rhs", "scalarByte", "result", "ct", "control", "ifTrue", "ifFalse", "seed"}

# The ABI names of each event's fields (FHEVMExecutor and ACL of @fhevm/host-contracts).
ABI_KEYS: dict[str, tuple[str, ...]] = {
    **{name: ("caller", "lhs", "rhs", "scalarByte", "result") for name in BINARY_OPS},
    "FheNeg": ("caller", "ct", "result"),
    "FheNot": ("caller", "ct", "result"),
    "Cast": ("caller", "ct", "toType", "result"),
    "TrivialEncrypt": ("caller", "pt", "toType", "result"),
    "FheIfThenElse": ("caller", "control", "ifTrue", "ifFalse", "result"),
    "FheRand": ("caller", "randType", "seed", "result"),
    "FheRandBounded": ("caller", "upperBound", "randType", "seed", "result"),
    VERIFY_INPUT: ("caller", "inputHandle", "userAddress", "inputProof", "inputType", "result"),
}
ACL_KEYS: dict[str, tuple[str, ...]] = {
    "Allowed": ("caller", "account", "handle"),
    "AllowedForDecryption": ("caller", "handlesList"),
    DELEGATED: (
        "delegator",
        "delegate",
        "contractAddress",
        "delegationCounter",
        "oldExpirationDate",
        "newExpirationDate",
    ),
    REVOKED: ("delegator", "delegate", "contractAddress", "delegationCounter", "oldExpirationDate"),
    **{name: ("account",) for name in IGNORED_EVENTS},
}


def host_handle(fhe_type: FheType = FheType.Uint64, n: int = 9) -> bytes:
    return make_handle(n.to_bytes(21, "big"), 0, VECTOR_CHAIN, fhe_type).raw


def as_decoded(args: dict[str, Any]) -> dict[str, Any]:
    """A vector's JSON args as web3 decodes the log: bytes for bytesN, ints, addresses."""
    return {k: bytes.fromhex(v[2:]) if k in BYTES_FIELDS else v for k, v in args.items()}


ADDRESS_A, ADDRESS_B = "0x" + "22" * 20, "0x" + "33" * 20
VALID_EXECUTOR_EVENTS = [(v["event"], as_decoded(v["args"])) for v in VECTORS["vectors"]] + [
    (
        VERIFY_INPUT,
        {
            "caller": ADDRESS_A,
            "inputHandle": host_handle(),
            "userAddress": ADDRESS_B,
            "inputProof": b"proof",
            "inputType": int(FheType.Uint64),
            "result": host_handle(),
        },
    )
]
DELEGATION_ARGS = {
    "delegator": "0x" + "44" * 20,
    "delegate": "0x" + "55" * 20,
    "contractAddress": "0x" + "66" * 20,
    "delegationCounter": 3,
    "oldExpirationDate": 0,
    "newExpirationDate": 2**40,
}
VALID_ACL_EVENTS = [
    ("Allowed", {"caller": ADDRESS_A, "account": ADDRESS_B, "handle": host_handle()}),
    ("AllowedForDecryption", {"caller": ADDRESS_A, "handlesList": [host_handle(), host_handle()]}),
    (DELEGATED, DELEGATION_ARGS),
    (REVOKED, {k: v for k, v in DELEGATION_ARGS.items() if k != "newExpirationDate"}),
]

HANDLE_BYTES = st.builds(
    lambda prefix, fhe_type, chain: make_handle(prefix, 0, chain, fhe_type).raw,
    st.binary(min_size=21, max_size=21),
    st.sampled_from(FheType),
    st.sampled_from([VECTOR_CHAIN, 1]),
)
ADDRESSES = st.binary(min_size=20, max_size=20).map(lambda raw: "0x" + raw.hex())
FIELD_VALUES = st.one_of(
    HANDLE_BYTES,
    st.binary(min_size=32, max_size=32),  # any type byte
    st.binary(max_size=40),  # wrong lengths
    ADDRESSES,
    st.sampled_from([b"\x00", b"\x01", b"\x02", b"", ADDRESS_A[:10], "0x" + "zz" * 20]),
    st.lists(HANDLE_BYTES | st.binary(max_size=33), max_size=3),
    INTS,
    GARBAGE,
)


@st.composite
def garbage_events(draw, keys_by_name: dict[str, tuple[str, ...]]) -> tuple[str, dict]:
    """A real event name with its real field names, each field any value (or missing),
    and sometimes fields the event does not have."""
    name = draw(st.sampled_from(sorted(keys_by_name)) | st.text(max_size=12))
    keys = keys_by_name.get(name) or draw(st.sampled_from(sorted(set(ABI_KEYS.values()))))
    args = {key: draw(FIELD_VALUES) for key in keys if draw(st.sampled_from([True] * 5 + [False]))}
    extra = draw(st.dictionaries(st.text(max_size=10), GARBAGE, max_size=2))
    return name, {**extra, **args}


def mutated_events(valid: list[tuple[str, dict]]) -> st.SearchStrategy:
    keys = st.sampled_from(
        sorted({k for ks in (*ABI_KEYS.values(), *ACL_KEYS.values()) for k in ks})
    )
    return st.one_of(
        *(
            st.tuples(st.just(name), mutated(args, FIELD_VALUES, keys | st.text(max_size=8)))
            for name, args in valid
        )
    )


EXECUTOR_EVENTS = garbage_events(ABI_KEYS) | mutated_events(VALID_EXECUTOR_EVENTS)
ACL_EVENTS = garbage_events(ACL_KEYS) | mutated_events(VALID_ACL_EVENTS)


def decoded(call: Callable[[], Any]) -> Any:
    """A host decoder's result, or REFUSED where the listener would skip the log."""
    return attempt(call, HOST_CATCHES, KNOWN_HOST_LEAKS)


def executor_event(name: str, args: dict[str, Any]) -> None:
    """What the host listener's ``_decode`` does with one executor log. The checks of
    what it returns run outside ``attempt``, so that a TypeError in them is a failure,
    never taken for a refusal."""
    if name == VERIFY_INPUT:
        found = decoded(lambda: verified_input(name, args, TX))
        if found is not REFUSED:
            assert len(found.handle) == HANDLE_LENGTH and found.handle[30] == found.input_type
            assert len(found.contract_address) == 20 and len(found.user_address) == 20
            assert found.transaction_id == TX
        return
    row = decoded(lambda: computation_row(name, args, TX))
    if row is REFUSED:
        return
    assert isinstance(row.output_handle, bytes) and len(row.output_handle) == HANDLE_LENGTH
    assert Op(row.fhe_operation).event_name in (name, f"Fhe{name}")
    assert row.output_type == row.output_handle[30] and row.transaction_id == TX
    if decoded(lambda: check_derivation(row, ACL, VECTOR_CHAIN)) is REFUSED:
        return
    event("derived")
    check_row(row)  # a row whose handle re-derives is one the database accepts


def acl_event(name: str, args: dict[str, Any]) -> None:
    """What the host listener's ``_decode`` does with one ACL log (checks outside
    ``attempt`` too)."""
    if name in (DELEGATED, REVOKED):
        delegation = decoded(lambda: delegation_row(name, args, TX))
        if delegation is not REFUSED:
            for address in (delegation.delegator, delegation.delegate, delegation.contract_address):
                assert isinstance(address, bytes) and len(address) == 20
            assert isinstance(delegation.delegation_counter, int)
            assert isinstance(delegation.old_expiration, int)
            assert (delegation.new_expiration is None) == (name == REVOKED)
        return
    rows = decoded(lambda: allowed_rows(name, args, TX))
    if rows is REFUSED:
        return
    for row in rows:
        assert Handle(row.handle).raw == row.handle
        assert len(row.account_address) == 20 and row.transaction_id == TX
        assert row.event_type in (0, ALLOWED_FOR_DECRYPTION)
    assert rows == [] or name in ("Allowed", "AllowedForDecryption")


@FUZZ
@given(EXECUTOR_EVENTS)
def test_executor_events_are_rows_or_undecodable(event_args):
    """listeners/host_events.py computation_row / verified_input (then check_derivation
    and check_row, as the listener goes on): a log the listener cannot use must be
    skipped. ``_decode`` catches UndecodableEvent, KeyError, TypeError and ValueError;
    anything else is not Recoverable, so it ends the listener's run loop, and the
    restarted listener meets the same block again."""
    executor_event(*event_args)


@FUZZ
@given(ACL_EVENTS)
def test_acl_events_are_rows_or_undecodable(event_args):
    """listeners/host_events.py allowed_rows / delegation_row: the same contract for the
    ACL's logs (who may use a handle, delegations of user decryption)."""
    acl_event(*event_args)


@FUZZ
@given(
    st.sampled_from([computation_row, verified_input, allowed_rows, delegation_row]),
    EXECUTOR_EVENTS | ACL_EVENTS,
)
def test_each_host_decoder_refuses_any_event(decoder, event_args):
    """Each of the four decoders fed any event, its own or another's: a name a decoder
    does not know is an UndecodableEvent too, never a crash."""
    name, args = event_args
    decoded(lambda: decoder(name, args, TX))


# --- 3. Gateway events --------------------------------------------------------------------

VALID_ACTIVATIONS = [
    (
        "ActivateKey",
        {
            "keyId": 2**255 + 7,
            "kmsNodeStorageUrls": ["http://kms-1:9000/kms", "http://kms-2:9000/kms"],
            "keyDigests": [
                {"keyType": 0, "digest": b"\x01" * 32},
                {"keyType": 1, "digest": b"\x02" * 32},
            ],
        },
    ),
    (
        "ActivateKey",  # structs as web3 gives them where it cannot name the members
        {"keyId": 1, "kmsNodeStorageUrls": ["s3://kms"], "keyDigests": [[0, b"\x01" * 32]]},
    ),
    (
        "ActivateCrs",
        {"crsId": 3, "kmsNodeStorageUrls": ["http://kms-1"], "crsDigest": b"\x03" * 32},
    ),
]
ACTIVATION_KEYS = st.sampled_from(
    ["keyId", "crsId", "kmsNodeStorageUrls", "keyDigests", "crsDigest", "keyType", "digest"]
)
ACTIVATIONS = st.one_of(
    st.tuples(
        st.sampled_from(["ActivateKey", "ActivateCrs"]),
        st.dictionaries(ACTIVATION_KEYS | st.text(max_size=8), FIELD_VALUES, max_size=4),
    ),
    *(
        st.tuples(st.just(name), mutated(args, FIELD_VALUES, ACTIVATION_KEYS))
        for name, args in VALID_ACTIVATIONS
    ),
)


@FUZZ
@given(ACTIVATIONS)
def test_gateway_activations_are_parsed_or_skipped(activation):
    """listeners/gateway.py _activation (ActivateKey / ActivateCrs of KMSGeneration): the
    gateway listener catches only _Skip around it, so any other exception ends its run
    loop (not Recoverable) on that block, again after every restart."""
    name, args = activation
    parsed = attempt(lambda: _activation(name, args), (_Skip,), KNOWN_GATEWAY_LEAKS)
    if parsed is REFUSED:
        return
    kind, material_id, urls, digests = parsed
    assert kind == ("crs" if name == "ActivateCrs" else "key")
    assert isinstance(material_id, int)
    assert isinstance(urls, tuple) and all(isinstance(u, str) for u in urls)
    allowed_dirs = {CRS_DIR} if kind == "crs" else set(OBJECT_DIRS.values())
    assert set(digests) <= allowed_dirs
    for digest in digests.values():
        bytes.fromhex(digest)


# --- 4. Ciphertext envelopes ----------------------------------------------------------------

ENVELOPES = st.builds(
    Envelope,
    backend=st.sampled_from(sorted(BACKEND_IDS)),
    fhe_type=st.sampled_from(FheType),
    kind=st.sampled_from(Kind),
    key_digest=st.binary(min_size=8, max_size=8),
    payload=st.binary(max_size=48),
)


@st.composite
def mutated_bytes(draw, data: bytes) -> bytes:
    """Bit flips, header bytes set to anything, truncation and extension."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "header", "truncate", "extend"]))
        if action == "flip" and out:
            out[draw(st.integers(0, len(out) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif action == "header" and out:
            out[draw(st.integers(0, min(len(out), 15) - 1))] = draw(st.integers(0, 255))
        elif action == "truncate":
            del out[draw(st.integers(0, len(out))) :]
        elif action == "extend":
            out += draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


ENVELOPE_INPUTS = st.one_of(
    st.binary(max_size=64),
    ENVELOPES.map(Envelope.to_bytes).flatmap(mutated_bytes),
    ENVELOPES.map(Envelope.to_bytes).map(bytearray),
    ENVELOPES.map(Envelope.to_bytes).map(memoryview),
    LEAVES,
)


@QUICK
@given(
    ENVELOPE_INPUTS,
    st.sampled_from(sorted(BACKEND_IDS)),
    st.binary(min_size=0, max_size=9),
    st.none() | st.sampled_from(FheType),
    st.sampled_from(Kind),
)
def test_envelopes_parse_round_trip_or_are_bad_ciphertext(data, backend, digest, fhe_type, kind):
    """coprocessor.fhe.envelope Envelope.from_bytes (and expect): stored objects, S3
    downloads and client uploads all go through it, and the job runner marks a
    computation failed on BadCiphertext; any other exception fails the whole pod."""
    envelope = attempt(lambda: Envelope.from_bytes(data), (BadCiphertext,))
    if envelope is REFUSED:
        return
    assert isinstance(envelope, Envelope)
    assert envelope.to_bytes() == bytes(data)  # nothing is lost or invented
    assert len(envelope.key_digest) == 8
    checked = attempt(
        lambda: envelope.expect(backend=backend, digest=digest, fhe_type=fhe_type, kind=kind),
        (BadCiphertext,),
    )
    assert checked is REFUSED or checked is envelope


# --- 5. Termination messages of the stage pods ---------------------------------------------

SUMMARY_KEYS = st.sampled_from([*STATUS_KEYS, "error", "failures", "signer", "gas_used"])
SUMMARY_VALUES = st.one_of(
    st.integers(-(2**80), 2**80),
    st.integers(-(10**400), 10**400),  # past a float's range
    st.floats(),
    JSON,
)
SUMMARIES = st.dictionaries(SUMMARY_KEYS | st.text(max_size=8), SUMMARY_VALUES, max_size=8)
# A pod that ran several stages (coprocessor.api.summary.stages_message): its stage
# reports under "stages", where anything may stand instead of a stage or a report.
STAGE_NAMES = st.sampled_from(["compute", "sns", "send", "verify"]) | st.text(max_size=8)
SUMMARIES = SUMMARIES | st.builds(
    lambda top, stages, ended: {**top, "stages": stages, "stage": ended},
    SUMMARIES,
    st.dictionaries(STAGE_NAMES, SUMMARIES | SUMMARY_VALUES, max_size=4) | SUMMARY_VALUES,
    STAGE_NAMES | SUMMARY_VALUES,
)
MESSAGES = st.one_of(
    st.text(),  # a traceback's tail, nothing, anything
    JSON.map(json.dumps),
    SUMMARIES.map(json.dumps),  # json.dumps writes NaN and Infinity, which json.loads reads
    SUMMARIES.map(json.dumps).flatmap(
        lambda text: st.integers(0, len(text)).map(lambda n: text[:n])
    ),
    st.tuples(st.text(max_size=200), SUMMARIES.map(json.dumps)).map("\n".join),
)


def assert_kept(kept: Any) -> None:
    """What read_termination_message promises: shown counters as finite numbers, an
    error as a trimmed string, nothing else; and it can be written to a status."""
    assert isinstance(kept, dict)
    assert set(kept) <= {*STATUS_KEYS, "error", "stages", "stage"}
    for key, value in kept.items():
        if key == "stages":
            assert isinstance(value, dict) and set(value) <= {"compute", "sns", "send"}
            for report in value.values():
                assert not {"stages", "stage"} & set(report)
                assert_kept(report)
        elif key == "stage":
            assert value in ("compute", "sns", "send")
        elif key == "error":
            assert isinstance(value, str) and len(value) <= MAX_ERROR_CHARS
        else:
            assert isinstance(value, int | float) and not isinstance(value, bool)
            assert math.isfinite(value)
    json.dumps(kept, allow_nan=False)


@QUICK
@given(MESSAGES)
def test_termination_messages_are_read_never_raise(text):
    """coprocessor.api.summary.read_termination_message: the message is whatever a stage
    pod left (or the tail of its log), and the operator copies the result into the
    batch's status on every reconcile: it must never raise, and never let a NaN, a
    bool, a list or a novel through."""
    kept = attempt(lambda: read_termination_message(text), (), KNOWN_SUMMARY_LEAKS)
    if kept is not REFUSED:
        assert_kept(kept)


TIMES = st.none() | st.sampled_from(["2024-05-01T10:00:00Z", "2024-05-01T10:00:01Z"])
TIMES |= st.text(max_size=20)
CONDITIONS = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["Failed", "Complete", "Suspended", "PodScheduled", "Ready"]),
            "status": st.sampled_from(["True", "False", "Unknown"]),
        },
        optional={
            "reason": st.none() | st.sampled_from(["Unschedulable", "BackoffLimitExceeded"]),
            "message": st.none() | st.text(max_size=40),
            "lastTransitionTime": TIMES,
        },
    ),
    max_size=3,
)
TERMINATED = st.fixed_dictionaries(
    {},
    optional={
        "exitCode": st.integers(0, 255),
        "reason": st.sampled_from(["Completed", "Error", "OOMKilled"]),
        "finishedAt": TIMES,
        "message": st.none() | MESSAGES,
    },
)
CONTAINER_STATUSES = st.lists(
    st.fixed_dictionaries(
        {"name": st.just("stage")},
        optional={
            "state": st.none()
            | st.fixed_dictionaries(
                {},
                optional={
                    "terminated": st.none() | TERMINATED,
                    "running": st.just({"startedAt": "2024-05-01T10:00:00Z"}),
                    "waiting": st.just({"reason": "ContainerCreating"}),
                },
            )
        },
    ),
    max_size=2,
)
PODS = st.lists(
    st.fixed_dictionaries(
        {"metadata": st.just({"name": "b-compute-x"})},
        optional={
            "status": st.none()
            | st.fixed_dictionaries(
                {},
                optional={
                    "containerStatuses": st.none() | CONTAINER_STATUSES,
                    "conditions": CONDITIONS,
                },
            )
        },
    ),
    max_size=3,
)
COUNTS = st.none() | st.integers(0, 6)
JOBS = st.fixed_dictionaries(
    {"metadata": st.just({"name": "b-compute"})},
    optional={
        "status": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "active": COUNTS,
                "failed": COUNTS,
                "succeeded": COUNTS,
                "startTime": TIMES,
                "completionTime": TIMES,
                "conditions": st.none() | CONDITIONS,
            },
        )
    },
)


@FUZZ
@given(JOBS, PODS)
def test_job_view_reads_any_termination_message(job, pods):
    """fhe_operator.controller.job_view on API-shaped Job and pod dicts carrying any
    termination message: it runs on every reconcile of a running batch, so a message
    that raised would stall the batch's status; the summary it keeps must be JSON a
    status patch can carry."""
    view = attempt(lambda: job_view(job, pods), (), KNOWN_SUMMARY_LEAKS)
    if view is REFUSED:
        return
    assert isinstance(view, JobView) and view.attempts >= 1
    if view.summary is not None:
        assert_kept(view.summary)
    json.dumps(view.summary, allow_nan=False)
    json.dumps(dataclasses.asdict(view), allow_nan=False)


# --- 6. Handles -------------------------------------------------------------------------------

HEX_TEXT = "0123456789abcdefABCDEF"
VALID_HANDLE_TEXTS = st.builds(
    lambda prefix, index, chain, fhe_type: make_handle(prefix, index, chain, fhe_type).hex(),
    st.binary(min_size=21, max_size=21),
    st.integers(0, 255),
    st.integers(0, 2**64 - 1),
    st.sampled_from(FheType),
)


@st.composite
def mutated_text(draw, text: str) -> str:
    out = list(text)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "delete", "insert"]))
        where = draw(st.integers(0, len(out)))
        if action == "replace" and where < len(out):
            out[where] = draw(st.characters())
        elif action == "delete" and where < len(out):
            del out[where]
        elif action == "insert":
            out.insert(where, draw(st.sampled_from([*HEX_TEXT, " ", "\n", "x", "\u0663"])))
    return "".join(out)


HANDLE_TEXTS = st.one_of(
    st.text(),
    st.text(alphabet=HEX_TEXT + " \t\nxXg", max_size=70).map(lambda body: "0x" + body),
    VALID_HANDLE_TEXTS,
    VALID_HANDLE_TEXTS.map(str.upper).map(lambda text: "0x" + text[2:]),
    st.binary(min_size=32, max_size=32).map(lambda raw: "0x" + raw.hex()),  # any type byte
    VALID_HANDLE_TEXTS.flatmap(mutated_text),
    LEAVES,  # not a str at all: Handle.parse says so too
)


@QUICK
@given(HANDLE_TEXTS)
def test_handle_parse_gives_a_handle_or_value_error(text):
    """coprocessor.types.Handle.parse: CLI arguments, graph inputs and API requests name
    ciphertexts by 0x-hex; its documented error is ValueError (the callers catch it and
    show the message)."""
    handle = attempt(lambda: Handle.parse(text), (ValueError,))
    if handle is REFUSED:
        return
    assert isinstance(handle.raw, bytes) and len(handle.raw) == HANDLE_LENGTH
    assert isinstance(handle.fhe_type, FheType)
    assert 0 <= handle.chain_id < 2**64 and 0 <= handle.index <= 255
    assert Handle.parse(handle.hex()) == handle


# --- the leaks found, fixed: each input once escaped with ``raises`` ----------------------

H = host_handle()


def leak(*values: Any, raises: type[BaseException] | tuple, reason: str) -> Any:
    """A fixed leak's input; ``raises`` and ``reason`` say what it did before the fix."""
    del raises, reason  # documentation only
    return pytest.param(*values)


NEGATIVE = "plaintext_operand(negative) raises OverflowError, outside _malformed's catch"
HUGE_BYTES = "bytes(huge int) raises OverflowError, outside the (KeyError, TypeError, ValueError)"
INFINITE = "int(float('inf')) raises OverflowError, outside the caught types"


@pytest.mark.parametrize(
    ("decoder", "name", "args"),
    [
        leak(
            computation_row,
            "TrivialEncrypt",
            {"pt": -1, "toType": 5, "result": H},
            raises=OverflowError,
            reason=NEGATIVE,
        ),
        leak(
            computation_row,
            "FheRandBounded",
            {"upperBound": -1, "randType": 5, "seed": bytes(16), "result": H},
            raises=OverflowError,
            reason=NEGATIVE,
        ),
        leak(
            computation_row,
            "FheRand",
            {"randType": 5, "seed": 2**64, "result": H},
            raises=OverflowError,
            reason=HUGE_BYTES,
        ),
        leak(
            computation_row,
            "FheRand",
            {"randType": 5, "seed": 2**62, "result": H},
            raises=MemoryError,
            reason="bytes(2**62) raises MemoryError: an int where bytes are due is allocated",
        ),
        leak(
            computation_row,
            "FheAdd",
            {"lhs": H, "rhs": H, "scalarByte": b"\x00", "result": 2**64},
            raises=OverflowError,
            reason="_handle catches TypeError/ValueError only: " + HUGE_BYTES,
        ),
        leak(
            computation_row,
            "FheAdd",
            {"lhs": H, "rhs": 2**64, "scalarByte": b"\x01", "result": H},
            raises=OverflowError,
            reason=HUGE_BYTES,
        ),
        leak(
            computation_row,
            "FheAdd",
            {"lhs": H, "rhs": H, "scalarByte": 2**64, "result": H},
            raises=OverflowError,
            reason=HUGE_BYTES,
        ),
        leak(
            computation_row,
            "Cast",
            {"ct": H, "toType": float("inf"), "result": H},
            raises=OverflowError,
            reason="_type catches TypeError/ValueError only: " + INFINITE,
        ),
        leak(
            computation_row,
            "TrivialEncrypt",
            {"pt": float("inf"), "toType": 5, "result": H},
            raises=OverflowError,
            reason=INFINITE,
        ),
        leak(
            verified_input,
            VERIFY_INPUT,
            {"caller": ADDRESS_A, "userAddress": ADDRESS_B, "inputType": float("inf"), "result": H},
            raises=OverflowError,
            reason=INFINITE,
        ),
        leak(
            allowed_rows,
            "Allowed",
            {"caller": ADDRESS_A, "account": ADDRESS_B, "handle": 2**64},
            raises=OverflowError,
            reason=HUGE_BYTES,
        ),
        leak(
            allowed_rows,
            "AllowedForDecryption",
            {"caller": ADDRESS_A, "handlesList": [2**64]},
            raises=OverflowError,
            reason=HUGE_BYTES,
        ),
        leak(
            delegation_row,
            DELEGATED,
            {**DELEGATION_ARGS, "delegationCounter": float("inf")},
            raises=OverflowError,
            reason=INFINITE,
        ),
    ],
)
def test_pinned_host_event_leaks(decoder, name, args):
    """listeners/host_events.py: each input is a malformed log that is one
    UndecodableEvent (counted, logged, skipped). It used to escape as OverflowError or
    MemoryError, which listeners/host.py _decode does not catch: the listener exited
    and met the same block after its restart. web3's ABI decoding does not yield these
    values (negative uints, ints for bytesN, floats): it takes a decoder change or a
    hand-built log."""
    with pytest.raises(UndecodableEvent, match="tx 0x"):
        decoder(name, args, TX)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        leak(
            "ActivateCrs",
            {"crsId": float("inf"), "kmsNodeStorageUrls": [], "crsDigest": b""},
            raises=OverflowError,
            reason="_activation catches ValueError/KeyError/IndexError/TypeError: " + INFINITE,
        ),
        leak(
            "ActivateCrs",
            {"crsId": 1, "kmsNodeStorageUrls": [], "crsDigest": 2**64},
            raises=OverflowError,
            reason=HUGE_BYTES,
        ),
        leak(
            "ActivateKey",
            {"keyId": 1, "kmsNodeStorageUrls": [], "keyDigests": [{"keyType": float("inf")}]},
            raises=OverflowError,
            reason=INFINITE,
        ),
        leak(
            "ActivateKey",
            {"keyId": 1, "kmsNodeStorageUrls": [], "keyDigests": [{"keyType": 0, "digest": 2**64}]},
            raises=OverflowError,
            reason=HUGE_BYTES,
        ),
    ],
)
def test_pinned_gateway_activation_leaks(name, args):
    """listeners/gateway.py _activation: these are _Skip (the listener catches only that
    around it); they used to escape as OverflowError."""
    with pytest.raises(_Skip):
        _activation(name, args)


@contextmanager
def operator_recursion_limit():
    """Python's default recursion limit, the one the operator runs with (this test
    process imports web3, whose py_ecc raises the limit to 100000)."""
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(saved)


HUGE_COUNTER = '{"total": 1' + "0" * 400 + "}"  # an int past a float's range
DEEP_LIST = "[" * 2000 + "]" * 2000  # 4000 bytes: fits the 4 KiB termination message
DEEP_ERROR = '{"error": ' + "[" * 1500 + "]" * 1500 + "}"
PINNED_MESSAGES = [
    leak(
        HUGE_COUNTER,
        raises=OverflowError,
        reason="float(value) of an int past 1.8e308 raises OverflowError",
    ),
    leak(
        DEEP_LIST,
        raises=RecursionError,
        reason="json.loads of deep nesting raises RecursionError, not ValueError",
    ),
    leak(
        DEEP_ERROR,
        raises=RecursionError,
        reason="json.loads of deep nesting raises RecursionError, not ValueError",
    ),
]


@pytest.mark.parametrize("text", PINNED_MESSAGES)
def test_pinned_termination_message_leaks(text):
    """coprocessor.api.summary.read_termination_message reads any text; these used to
    raise (the reconcile of the batch raised on every event and timer while the pod was
    there, and its status was never updated)."""
    with operator_recursion_limit():
        kept = read_termination_message(text)
    assert_kept(kept)


@pytest.mark.parametrize("text", PINNED_MESSAGES)
def test_pinned_job_view_leaks(text):
    """fhe_operator.controller.job_view passes the same messages on: the reconcile shows
    the error in the batch's status instead of raising."""
    pod = {"status": {"containerStatuses": [{"state": {"terminated": {"message": text}}}]}}
    with operator_recursion_limit():
        view = job_view({"metadata": {"name": "b-compute"}}, [pod])
    assert view.summary is not None
    assert_kept(view.summary)


def test_pinned_plan_graph_input_with_a_bad_type_byte():
    """fhe_operator.validation.plan_graph: an input handle whose type byte is past
    Bytes256 passes the CRD's pattern; it is one InvalidSpec line naming the input (it
    was a bare ValueError, 'handle type byte 255 is out of range 0..11', naming none)."""
    bad = "0x" + "00" * 30 + "ff00"
    spec = FheBatchSpec.model_validate(
        {
            "tenant": "acme",
            "graph": {
                "inputs": {"a": bad},
                "nodes": [{"name": "n", "op": "FheNot", "args": ["a"]}],
            },
        }
    )
    with pytest.raises(InvalidSpec, match="input 'a'"):
        plan_graph(spec.graph, namespace="fhe", name="fuzz", chain_id=CHAIN, backend=BACKEND)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        leak(
            {
                "tenant": "acme",
                "graph": {
                    "inputs": {"Alice": "0x12"},
                    "nodes": [{"name": "n", "op": "FheNot", "args": ["Alice"]}],
                },
            },
            "spec.graph.inputs.Alice:",
            raises=AssertionError,
            reason="describe_error drops location parts that start upper-case (union tags)",
        ),
        leak(
            {"tenant": "acme", "Colour": 1, "graph": {"nodes": [{"name": "n", "op": "FheRand"}]}},
            "spec.Colour:",
            raises=AssertionError,
            reason="describe_error drops location parts that start upper-case (union tags)",
        ),
    ],
)
def test_pinned_describe_error_names_user_keys(body, where):
    """coprocessor.api.batch.describe_error says where the error is; a key the user chose
    (an input name, an unknown field) that starts with a capital letter, or is 'str',
    was once taken for a pydantic union tag and dropped from the location."""
    with pytest.raises(ValidationError) as rejected:
        FheBatchSpec.model_validate(body)
    assert where in describe_error(rejected.value)
