-- Tenants belong to namespaces (#23): an FheBatch may name a tenant only from a namespace
-- the tenant is bound to, so whoever may create FheBatches in some namespace cannot
-- compute on (and have squashed, uploaded and committed) another tenant's ciphertexts.
-- Kubernetes RBAC decides who may create FheBatches in a namespace; this table decides
-- which tenants a namespace may use. A tenant bound nowhere can be used nowhere.
CREATE TABLE tenant_namespaces (
    tenant_id   INT NOT NULL REFERENCES tenants ON DELETE CASCADE,
    namespace   TEXT NOT NULL
                CHECK (namespace ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, namespace)
);
CREATE INDEX tenant_namespaces_by_namespace ON tenant_namespaces (namespace);
