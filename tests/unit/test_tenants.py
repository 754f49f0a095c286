"""Tenant creation's checks that come before any service is touched."""

from __future__ import annotations

import pytest

from coprocessor.errors import UserError
from coprocessor.fhe.engine import Keyset
from coprocessor.settings import Settings
from coprocessor.tenants import create_tenant, key_dir


async def test_a_keyset_of_another_backend_is_refused_before_anything_is_stored(tmp_path):
    settings = Settings(cache_dir=tmp_path)
    foreign = Keyset("concrete", b"client", b"server", b"")
    with pytest.raises(UserError, match="keyset given is for backend 'concrete', not 'tfhe-rs'"):
        # No connection and no store: the check must come first.
        await create_tenant(None, None, settings, "acme", 1, "tfhe-rs", keyset=foreign)
    assert not key_dir(settings, "acme").exists()


@pytest.mark.parametrize("name", ["", "Acme", "-a", "a" * 64, "a_b"])
async def test_bad_names_are_refused_before_anything_is_stored(tmp_path, name):
    settings = Settings(cache_dir=tmp_path)
    with pytest.raises(UserError, match="tenant name"):
        await create_tenant(None, None, settings, name, 1, "tfhe-rs")
    assert not any(tmp_path.iterdir())
