-- Zama's host contracts (docs/design.md section 2). VerifyInput names an input handle
-- the verify stage must store before anything computes on it: the listener records
-- each one so a computation waiting on a never-verified input can say why. The ACL's
-- user-decryption delegations are kept for the gateway's MultichainACL.
CREATE TABLE host_verified_inputs (
    tenant_id         INT NOT NULL REFERENCES tenants ON DELETE RESTRICT,
    handle            BYTEA NOT NULL CHECK (length(handle) = 32),
    transaction_id    BYTEA NOT NULL CHECK (length(transaction_id) = 32),
    contract_address  BYTEA NOT NULL CHECK (length(contract_address) = 20),
    user_address      BYTEA NOT NULL CHECK (length(user_address) = 20),
    input_type        SMALLINT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, handle, transaction_id)
);

CREATE TABLE user_decryption_delegations (
    chain_id            BIGINT NOT NULL,
    delegator           BYTEA NOT NULL CHECK (length(delegator) = 20),
    delegate            BYTEA NOT NULL CHECK (length(delegate) = 20),
    contract_address    BYTEA NOT NULL CHECK (length(contract_address) = 20),
    delegation_counter  NUMERIC(20) NOT NULL,
    old_expiration      NUMERIC(20) NOT NULL,
    new_expiration      NUMERIC(20),            -- NULL: a revocation
    transaction_id      BYTEA NOT NULL CHECK (length(transaction_id) = 32),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, delegator, delegate, contract_address, delegation_counter,
                 transaction_id)
);
