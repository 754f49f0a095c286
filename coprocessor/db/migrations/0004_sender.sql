-- The send stage (DESIGN.md section 2): each published handle's digests are committed
-- to the gateway chain's CiphertextCommits by this coprocessor's signer. The sender
-- records a transaction's hash before broadcasting it (write-ahead), so a sender that
-- dies between sending and marking finds the transaction on chain and sends nothing
-- twice. txn_hash of an unsent row is such a pending transaction.
ALTER TABLE ciphertext_digest ADD COLUMN txn_signer BYTEA CHECK (length(txn_signer) = 20);
ALTER TABLE ciphertext_digest ADD COLUMN txn_nonce BIGINT;
ALTER TABLE ciphertext_digest ADD COLUMN txn_block_number BIGINT;
ALTER TABLE ciphertext_digest ADD COLUMN txn_sent_at TIMESTAMPTZ;
-- Rows waiting for (or pending in) a transaction, per tenant, oldest first.
CREATE INDEX ciphertext_digest_unsent_by_tenant ON ciphertext_digest (tenant_id, created_at)
    WHERE NOT txn_is_sent;
