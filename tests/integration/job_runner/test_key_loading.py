"""Each stage fetches only its share of the tenant's server key from S3, checked against
the digest on the tenant row; a tenant without parts (made before them) loads the whole
key."""

from __future__ import annotations

import dataclasses

import pytest

from coprocessor.errors import UserError
from coprocessor.fhe.engine import KEY_PURPOSES
from coprocessor.storage import ObjectStore
from coprocessor.tenants import load_evaluator, load_key_part


def test_a_tenant_has_one_checked_part_per_stage(compute_settings, tenant):
    record, _ = tenant
    store = ObjectStore(compute_settings)
    assert set(record.key_parts) == set(KEY_PURPOSES)
    for purpose in KEY_PURPOSES:
        part = load_key_part(store, record, purpose)
        assert part is not None
        assert load_evaluator(store, record, purpose).key_digest == record.key_id[:8]
    with pytest.raises(ValueError, match="unknown key purpose"):
        load_key_part(store, record, "everything")


def test_a_part_that_is_not_what_the_row_says_is_refused(compute_settings, tenant):
    record, _ = tenant
    store = ObjectStore(compute_settings)
    tampered = dataclasses.replace(
        record,
        key_parts={
            **record.key_parts,
            "compute": {**record.key_parts["compute"], "sha256": "0" * 64},
        },
    )
    with pytest.raises(UserError, match=r"compute key of tenant .* does not match"):
        load_evaluator(store, tampered, "compute")


def test_a_tenant_without_parts_loads_the_whole_key(compute_settings, tenant):
    record, _ = tenant
    older = dataclasses.replace(record, key_parts={})
    store = ObjectStore(compute_settings)
    assert load_key_part(store, older, "compute") is None
    assert load_evaluator(store, older, "compute").key_digest == record.key_id[:8]
