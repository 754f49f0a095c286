"""Dev signer keys on disk: one 0x-hex private key per file, readable by its owner only
(0600), as the dev stack's gateway and host chain keep them."""

from __future__ import annotations

import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount


def save_key(path: Path, account: LocalAccount, *, replace: bool = False) -> None:
    """Write ``account``'s key to ``path`` (0600 from the start, never world-readable);
    without ``replace`` an existing file is an error rather than overwritten."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    descriptor = os.open(path, flags, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("0x" + bytes(account.key).hex())


def key_at(path: Path) -> LocalAccount:
    """The key in ``path``, created on first use."""
    if path.is_file():
        return Account.from_key(path.read_text().strip())
    account = Account.create()
    save_key(path, account)
    return account
