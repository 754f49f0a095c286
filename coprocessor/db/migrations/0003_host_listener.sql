-- The host listener (DESIGN.md section 2): which transactions each seen block held, and
-- the FheBatch made for it. A block row, its computations and its transactions are
-- written in one transaction; the batch is created after the commit and then stamped,
-- so a listener that dies in between creates it on restart.
ALTER TABLE blocks ADD COLUMN batch_name TEXT;             -- NULL: no FHE work in the block
ALTER TABLE blocks ADD COLUMN batch_created_at TIMESTAMPTZ;
ALTER TABLE blocks ADD COLUMN batch_cancelled_at TIMESTAMPTZ;  -- deleted after a reorg

CREATE TABLE block_transactions (
    chain_id        BIGINT NOT NULL,
    block_hash      BYTEA NOT NULL CHECK (length(block_hash) = 32),
    transaction_id  BYTEA NOT NULL CHECK (length(transaction_id) = 32),
    batch_part      INT NOT NULL DEFAULT 0 CHECK (batch_part >= 0),  -- which of the
                    -- block's FheBatches holds it (FHE_HOST_BATCH_MAX_COMPUTATIONS)
    PRIMARY KEY (chain_id, block_hash, transaction_id),
    FOREIGN KEY (chain_id, block_hash) REFERENCES blocks ON DELETE CASCADE
);
CREATE INDEX block_transactions_by_transaction ON block_transactions (transaction_id);
CREATE INDEX computations_by_transaction ON computations (transaction_id);

-- Handles are deterministic, so two transactions can emit the same computation (two
-- mints of one amount). The computation is stored once; this links it to every
-- transaction that emitted it, so each transaction's batch and reorg see it.
CREATE TABLE transaction_computations (
    tenant_id       INT NOT NULL,
    transaction_id  BYTEA NOT NULL CHECK (length(transaction_id) = 32),
    output_handle   BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, transaction_id, output_handle),
    FOREIGN KEY (tenant_id, output_handle) REFERENCES computations ON DELETE CASCADE
);
CREATE INDEX transaction_computations_by_computation
    ON transaction_computations (tenant_id, output_handle);
