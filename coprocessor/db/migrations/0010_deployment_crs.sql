-- The CRS a deployment without a KMS generated for itself (crs/<backend>-<bits> in S3),
-- pinned by its SHA-256 when it is first made or first seen: the verify stage and
-- `fhectl input params` refuse an S3 object that is not these bytes.
CREATE TABLE deployment_crs (
    backend     TEXT NOT NULL,
    max_bits    INT NOT NULL CHECK (max_bits > 0),
    object_key  TEXT NOT NULL,
    digest      BYTEA NOT NULL CHECK (length(digest) = 32),
    pinned_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (backend, max_bits)
);
