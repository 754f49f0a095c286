-- Gateway outputs a KMS can use (docs/design.md section 2).
--
-- The key id committed with each ciphertext is the KMS's id of the tenant's keyset
-- (uint256, KMSGeneration's ActivateKey), not our own digest of the server key, which
-- stays in tenants.key_id and names the keyset inside our envelopes. NULL: the KMS has
-- not activated this keyset yet, so nothing of the tenant can be committed.
ALTER TABLE tenants ADD COLUMN kms_key_id NUMERIC(78)
    CHECK (kms_key_id >= 0 AND kms_key_id < 2::numeric ^ 256 AND kms_key_id = trunc(kms_key_id));
CREATE UNIQUE INDEX tenants_by_kms_key_id ON tenants (kms_key_id) WHERE kms_key_id IS NOT NULL;

-- The S3 objects as the protocol lays them out: raw TFHE-rs bytes in two buckets, each
-- named by the hex keccak256 of its bytes (ciphertext_digest.ciphertext/ciphertext128).
-- The buckets are recorded so a KMS-side reader (and a re-run) knows where they went.
ALTER TABLE ciphertext_digest ADD COLUMN ct64_bucket TEXT;
ALTER TABLE ciphertext_digest ADD COLUMN ct128_bucket TEXT;

-- The gateway's MultichainACL must hear every host ACL event, or the KMS decrypts
-- nothing: one row per MultichainACL call this coprocessor owes, written with the host
-- event it comes from (host listener, same transaction as the block), sent exactly once
-- per tx sender with the write-ahead discipline of ciphertext_digest (0004).
CREATE TABLE gateway_acl_calls (
    call_id             BIGSERIAL PRIMARY KEY,
    -- What identifies the call on the gateway: a second host event asking for the same
    -- call (another transaction allowing the same handle) adds no second row.
    call_key            TEXT NOT NULL UNIQUE,
    tenant_id           INT NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    kind                TEXT NOT NULL CHECK (kind IN ('allow_account', 'allow_public_decrypt',
                                                      'delegate', 'revoke')),
    handle              BYTEA CHECK (length(handle) = 32),              -- allow_*
    account_address     BYTEA CHECK (length(account_address) = 20),     -- allow_account
    chain_id            BIGINT,                                         -- delegate, revoke
    delegator           BYTEA CHECK (length(delegator) = 20),
    delegate            BYTEA CHECK (length(delegate) = 20),
    contract_address    BYTEA CHECK (length(contract_address) = 20),
    delegation_counter  NUMERIC(20),
    expiration_date     NUMERIC(20),
    transaction_id      BYTEA CHECK (length(transaction_id) = 32),      -- the host event's
    -- The block of that event: a call whose block a reorg orphaned is not sent (a grant
    -- the canonical chain never made must not reach the gateway) unless the block
    -- comes back or another canonical block asks for the same call.
    host_block_hash     BYTEA CHECK (length(host_block_hash) = 32),
    txn_is_sent         BOOLEAN NOT NULL DEFAULT false,
    txn_retry_count     INT NOT NULL DEFAULT 0,
    txn_last_error      TEXT,
    txn_hash            BYTEA,
    txn_signer          BYTEA CHECK (length(txn_signer) = 20),
    txn_nonce           BIGINT,
    txn_block_number    BIGINT,
    txn_sent_at         TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind IN ('allow_account', 'allow_public_decrypt')) = (handle IS NOT NULL)),
    CHECK ((kind = 'allow_account') = (account_address IS NOT NULL)),
    CHECK ((kind IN ('delegate', 'revoke')) = (delegator IS NOT NULL AND delegate IS NOT NULL
           AND contract_address IS NOT NULL AND chain_id IS NOT NULL
           AND delegation_counter IS NOT NULL AND expiration_date IS NOT NULL))
);
CREATE INDEX gateway_acl_calls_unsent ON gateway_acl_calls (created_at) WHERE NOT txn_is_sent;
CREATE INDEX gateway_acl_calls_by_handle ON gateway_acl_calls (tenant_id, handle);

-- Host events stored before this migration are owed too.
INSERT INTO gateway_acl_calls (call_key, tenant_id, kind, handle, account_address, transaction_id)
SELECT CASE WHEN a.event_type = 0
            THEN 'allow_account:' || encode(a.handle, 'hex') || ':' || encode(a.account_address, 'hex')
            ELSE 'allow_public_decrypt:' || encode(a.handle, 'hex') END,
       a.tenant_id,
       CASE WHEN a.event_type = 0 THEN 'allow_account' ELSE 'allow_public_decrypt' END,
       a.handle,
       CASE WHEN a.event_type = 0 THEN a.account_address END,
       a.transaction_id
FROM allowed_handles a WHERE a.event_type IN (0, 1)
ON CONFLICT (call_key) DO NOTHING;

INSERT INTO gateway_acl_calls (call_key, tenant_id, kind, chain_id, delegator, delegate,
                               contract_address, delegation_counter, expiration_date,
                               transaction_id)
SELECT CASE WHEN d.new_expiration IS NULL THEN 'revoke:' ELSE 'delegate:' END
           || d.chain_id || ':' || encode(d.delegator, 'hex') || ':' || encode(d.delegate, 'hex')
           || ':' || encode(d.contract_address, 'hex') || ':' || d.delegation_counter
           || ':' || coalesce(d.new_expiration, d.old_expiration),
       t.tenant_id,
       CASE WHEN d.new_expiration IS NULL THEN 'revoke' ELSE 'delegate' END,
       d.chain_id, d.delegator, d.delegate, d.contract_address, d.delegation_counter,
       coalesce(d.new_expiration, d.old_expiration), d.transaction_id
FROM user_decryption_delegations d
JOIN LATERAL (SELECT min(tenant_id) AS tenant_id FROM tenants
              WHERE chain_id = d.chain_id) t ON t.tenant_id IS NOT NULL
ON CONFLICT (call_key) DO NOTHING;
