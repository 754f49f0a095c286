"""The write-ahead verbs of an outbox table keyed by one BIGINT column.

``gateway_acl_calls`` (by call_id) and ``verify_proofs`` (by zk_proof_id, its verdicts)
carry the same ``txn_*`` columns as ``ciphertext_digest``: a row is *unsent*, then
*pending* in a recorded transaction (hash, signer, nonce written before the broadcast),
then *sent* (or back to unsent, with a retry counted and the reason kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from .queries import storable_reason


@dataclass(frozen=True)
class Outbox:
    table: str  # a constant of this package, never user input
    key: str

    async def record_pending(
        self,
        connection: asyncpg.Connection,
        keys: Sequence[int],
        tx_hash: bytes,
        signer: bytes,
        nonce: int,
    ) -> None:
        """Write-ahead: remember the signed transaction before it is broadcast."""
        await connection.execute(
            f"""UPDATE {self.table} SET txn_hash = $2, txn_signer = $3, txn_nonce = $4
                WHERE {self.key} = ANY($1::bigint[]) AND NOT txn_is_sent""",
            list(keys),
            tx_hash,
            signer,
            nonce,
        )

    async def mark_sent(
        self,
        connection: asyncpg.Connection,
        keys: Sequence[int],
        tx_hash: bytes | None,
        block_number: int | None,
    ) -> None:
        """The call is on chain; ``tx_hash`` None when found there, not sent by us."""
        await connection.execute(
            f"""UPDATE {self.table}
                SET txn_is_sent = true, txn_hash = $2, txn_block_number = $3,
                    txn_sent_at = now(), txn_last_error = NULL
                WHERE {self.key} = ANY($1::bigint[])""",
            list(keys),
            tx_hash,
            block_number,
        )

    async def reset_unsent(
        self, connection: asyncpg.Connection, keys: Sequence[int], reason: str
    ) -> None:
        await connection.execute(
            f"""UPDATE {self.table}
                SET txn_hash = NULL, txn_nonce = NULL, txn_retry_count = txn_retry_count + 1,
                    txn_last_error = $2
                WHERE {self.key} = ANY($1::bigint[]) AND NOT txn_is_sent""",
            list(keys),
            storable_reason(reason),
        )
