-- The real input flow (#21): requests come from the gateway's InputVerification, verdicts
-- go back to it, and keys and the CRS come from the KMS's KMSGeneration.

-- What a request's proof is bound to besides contract, user and chain: the host chain's
-- ACL address (the 92-byte auxiliary data and the input handles hash it). NULL for rows
-- queued before this migration or by hand: the verify stage then uses FHE_HOST_ACL_ADDRESS.
ALTER TABLE verify_proofs ADD COLUMN acl_address BYTEA CHECK (length(acl_address) = 20);
ALTER TABLE verify_proofs ADD COLUMN extra_data BYTEA NOT NULL DEFAULT '\x00';
-- The gateway block the request was read from (a reorg that drops it leaves it unanswered).
ALTER TABLE verify_proofs ADD COLUMN gateway_block_hash BYTEA
    CHECK (length(gateway_block_hash) = 32);

-- The verdict's outbox, with the write-ahead discipline of ciphertext_digest and
-- gateway_acl_calls: verifyProofResponse (verified) or rejectProofResponse (rejected) from
-- this coprocessor's tx sender. Rows answered before this migration owe nothing: nobody
-- on the gateway asked for them.
ALTER TABLE verify_proofs ADD COLUMN txn_is_sent      BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE verify_proofs ADD COLUMN txn_retry_count  INT NOT NULL DEFAULT 0;
ALTER TABLE verify_proofs ADD COLUMN txn_last_error   TEXT;
ALTER TABLE verify_proofs ADD COLUMN txn_hash         BYTEA;
ALTER TABLE verify_proofs ADD COLUMN txn_signer       BYTEA CHECK (length(txn_signer) = 20);
ALTER TABLE verify_proofs ADD COLUMN txn_nonce        BIGINT;
ALTER TABLE verify_proofs ADD COLUMN txn_block_number BIGINT;
ALTER TABLE verify_proofs ADD COLUMN txn_sent_at      TIMESTAMPTZ;
ALTER TABLE verify_proofs ADD COLUMN from_gateway     BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX verify_proofs_unanswered ON verify_proofs (verified_at)
    WHERE verified IS NOT NULL AND from_gateway AND NOT txn_is_sent;

-- The gateway listener's cursor and reorg window: the gateway chain may be the host chain
-- itself (the dev stack runs both on one anvil), so not the host listener's `blocks`.
CREATE TABLE gateway_blocks (
    chain_id      BIGINT NOT NULL,
    block_number  BIGINT NOT NULL CHECK (block_number >= 0),
    block_hash    BYTEA NOT NULL CHECK (length(block_hash) = 32),
    processed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, block_number)
);

-- Activations read from the gateway, queued in the block's transaction so the cursor
-- never waits on KMS storage: applied (or refused) by the listener apart, with backoff.
-- The same id announced again with other digests is a row of its own (and refused: a
-- key id names one keyset).
CREATE TABLE kms_activations (
    activation_id    BIGSERIAL PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('key', 'crs')),
    material_id      NUMERIC(78) NOT NULL
                     CHECK (material_id >= 0 AND material_id < 2::numeric ^ 256),
    storage_urls     TEXT[] NOT NULL,
    digests          JSONB NOT NULL,    -- {"ServerKey": "hex", "PublicKey": "hex"} / {"CRS": "hex"}
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'applied', 'refused')),
    attempts         INT NOT NULL DEFAULT 0,
    last_error       TEXT,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (kind, material_id, digests)
);
CREATE INDEX kms_activations_pending ON kms_activations (next_attempt_at)
    WHERE state = 'pending';

-- Key material the KMS activated (ActivateKey / ActivateCrs), applied once each: a row
-- exists only after every object was fetched and matched its digest.
CREATE TABLE kms_keys (
    kms_key_id    NUMERIC(78) PRIMARY KEY
                  CHECK (kms_key_id >= 0 AND kms_key_id < 2::numeric ^ 256),
    tenant_id     INT NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    digests       JSONB NOT NULL,       -- {"ServerKey": "hex", "PublicKey": "hex"}
    storage_urls  TEXT[] NOT NULL,
    activated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE kms_crs (
    crs_id        NUMERIC(78) PRIMARY KEY CHECK (crs_id >= 0 AND crs_id < 2::numeric ^ 256),
    object_key    TEXT NOT NULL,        -- where this deployment keeps it (its S3 bucket)
    digest        BYTEA NOT NULL CHECK (length(digest) = 32),
    storage_urls  TEXT[] NOT NULL,
    activated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
