-- The compute and verify stages load only their share of the tenant's server key (docs/design.md section 7):
-- the compute part is a tenth of the whole and loads in a second, where the whole key
-- (mostly noise squashing material only SNS uses) takes over ten. One S3 object per
-- part, named here with its SHA-256, which the loader checks: {"compute": {"object":
-- "keys/<tenant>/<key id>/compute_key", "sha256": "<hex>"}, "verify": ...}. SNS needs the
-- noise squashing material and loads the whole key.
-- Empty: the tenant has the whole key only (older tenants, backends that cannot split).
ALTER TABLE tenants ADD COLUMN key_parts JSONB NOT NULL DEFAULT '{}'::jsonb
    CHECK (jsonb_typeof(key_parts) = 'object');
