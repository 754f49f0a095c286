-- The coprocessor's data (DESIGN.md section 6). Every key includes the tenant.

CREATE TABLE tenants (
    tenant_id      SERIAL PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE
                   CHECK (name ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'),
    chain_id       BIGINT NOT NULL CHECK (chain_id > 0),
    key_id         BYTEA NOT NULL,
    backend        TEXT NOT NULL,
    keys_location  TEXT,            -- s3://bucket/key of the server keys when not inline
    server_key     BYTEA,
    public_params  BYTEA,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (chain_id, key_id)
);

-- One row per admitted FheBatch. batch_id is namespace/name@spec-hash so that a
-- re-created identical resource (GitOps) is recognised as already admitted.
CREATE TABLE batches (
    batch_id       TEXT PRIMARY KEY,
    tenant_id      INT NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    namespace      TEXT NOT NULL,
    name           TEXT NOT NULL,
    spec_hash      TEXT NOT NULL,
    uid            TEXT,            -- uid of the resource last seen admitting it
    total          INT NOT NULL CHECK (total >= 0),
    admitted_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at    TIMESTAMPTZ      -- set by the finalizer when the resource is deleted
);
CREATE INDEX batches_by_resource ON batches (namespace, name);

CREATE TABLE computations (
    tenant_id             INT NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    output_handle         BYTEA NOT NULL CHECK (length(output_handle) = 32),
    output_type           SMALLINT NOT NULL CHECK (output_type BETWEEN 0 AND 11),
    fhe_operation         SMALLINT NOT NULL
                          CHECK (fhe_operation BETWEEN 0 AND 30 AND fhe_operation <> 22),
    -- operand handles in order; when is_scalar the last element is the scalar's bytes
    dependencies          BYTEA[] NOT NULL,
    is_scalar             BOOLEAN NOT NULL DEFAULT false,
    transaction_id        BYTEA,
    schedule_order        BIGINT NOT NULL,
    dependence_chain_id   BYTEA,
    is_completed          BOOLEAN NOT NULL DEFAULT false,
    is_error              BOOLEAN NOT NULL DEFAULT false,
    error_message         TEXT,
    uncomputable_counter  INT NOT NULL DEFAULT 0,
    retry_after           TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at          TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, output_handle)
);
-- Hot query: ready work in schedule order.
CREATE INDEX computations_pending ON computations (schedule_order, dependence_chain_id)
    WHERE NOT is_completed AND NOT is_error;
-- Who depends on a handle (unblocking, cross-batch waits).
CREATE INDEX computations_dependencies ON computations USING GIN (dependencies);
CREATE SEQUENCE computations_schedule_order;

CREATE TABLE ciphertexts (
    tenant_id             INT NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    handle                BYTEA NOT NULL CHECK (length(handle) = 32),
    ciphertext            BYTEA NOT NULL,
    ciphertext_version    SMALLINT NOT NULL,
    ciphertext_type       SMALLINT NOT NULL CHECK (ciphertext_type BETWEEN 0 AND 11),
    ciphertext128         BYTEA,
    ciphertext128_format  SMALLINT,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, handle)
);

CREATE TABLE ciphertext_digest (
    tenant_id             INT NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    handle                BYTEA NOT NULL CHECK (length(handle) = 32),
    key_id                BYTEA NOT NULL,
    ciphertext            BYTEA CHECK (length(ciphertext) = 32),       -- keccak256 of ct64
    ciphertext128         BYTEA CHECK (length(ciphertext128) = 32),    -- keccak256 of ct128
    ciphertext128_format  SMALLINT,
    txn_is_sent           BOOLEAN NOT NULL DEFAULT false,
    txn_retry_count       INT NOT NULL DEFAULT 0,
    txn_last_error        TEXT,
    txn_hash              BYTEA,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, handle)
);
-- Hot query: unsent digests, oldest first.
CREATE INDEX ciphertext_digest_unsent ON ciphertext_digest (created_at)
    WHERE NOT txn_is_sent AND ciphertext IS NOT NULL AND ciphertext128 IS NOT NULL;

CREATE TABLE pbs_computations (
    tenant_id     INT NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    handle        BYTEA NOT NULL CHECK (length(handle) = 32),
    batch_id      TEXT REFERENCES batches ON DELETE SET NULL,
    is_completed  BOOLEAN NOT NULL DEFAULT false,
    is_error      BOOLEAN NOT NULL DEFAULT false,
    error_message TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at  TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, handle)
);
CREATE INDEX pbs_computations_pending ON pbs_computations (created_at)
    WHERE NOT is_completed AND NOT is_error;

CREATE TABLE allowed_handles (
    tenant_id        INT NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    handle           BYTEA NOT NULL CHECK (length(handle) = 32),
    account_address  BYTEA NOT NULL CHECK (length(account_address) = 20),
    event_type       SMALLINT NOT NULL,   -- 0 Allowed, 1 AllowedForDecryption
    transaction_id   BYTEA,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, handle, account_address, event_type)
);

CREATE TABLE verify_proofs (
    zk_proof_id       BIGINT PRIMARY KEY,
    chain_id          BIGINT NOT NULL,
    contract_address  BYTEA NOT NULL CHECK (length(contract_address) = 20),
    user_address      BYTEA NOT NULL CHECK (length(user_address) = 20),
    input             BYTEA,
    handles           BYTEA,
    verified          BOOLEAN,           -- NULL while pending
    error_message     TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    verified_at       TIMESTAMPTZ
);
CREATE INDEX verify_proofs_pending ON verify_proofs (created_at) WHERE verified IS NULL;

-- Listener cursor and reorg window: one row per seen block.
CREATE TABLE blocks (
    chain_id       BIGINT NOT NULL,
    block_number   BIGINT NOT NULL CHECK (block_number >= 0),
    block_hash     BYTEA NOT NULL CHECK (length(block_hash) = 32),
    parent_hash    BYTEA NOT NULL CHECK (length(parent_hash) = 32),
    is_orphaned    BOOLEAN NOT NULL DEFAULT false,
    processed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, block_hash)
);
CREATE UNIQUE INDEX blocks_canonical ON blocks (chain_id, block_number) WHERE NOT is_orphaned;

-- Which computations belong to which batch. A computation shared by two batches
-- (same deterministic handle) is stored once and linked twice.
CREATE TABLE batch_computations (
    batch_id       TEXT NOT NULL REFERENCES batches ON DELETE CASCADE,
    tenant_id      INT NOT NULL,
    output_handle  BYTEA NOT NULL,
    position       INT NOT NULL,
    PRIMARY KEY (batch_id, tenant_id, output_handle),
    FOREIGN KEY (tenant_id, output_handle) REFERENCES computations ON DELETE CASCADE
);
CREATE INDEX batch_computations_by_computation ON batch_computations (tenant_id, output_handle);
