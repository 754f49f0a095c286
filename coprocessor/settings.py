"""The one settings model of the product, read from ``FHE_*`` environment variables.

Every deployable (CLI, operator, job runner, listeners) loads it once through
``load_settings()``. Defaults point at the local dev stack so a newcomer needs no
configuration; ``fhectl dev env`` prints the exports that match a running stack.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

# Shipped inside the package (package data), so an installed wheel migrates without the
# source checkout.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "db" / "migrations"


def default_cache_dir() -> Path:
    """Keys, compiled circuits and (in development) builds and the dev stack's state
    live under one directory."""
    return Path.home() / ".cache" / "fhe-coprocessor"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHE_", extra="ignore", frozen=True)

    database_url: str = Field(
        "postgresql://fhe@127.0.0.1:5432/coprocessor",
        description="PostgreSQL DSN used by every component (it may hold a password: "
        "never in repr or logs).",
        repr=False,
    )
    database_pool_size: int = Field(8, ge=1, le=256, description="Connections per process.")
    database_connect_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Longest wait to open one PostgreSQL connection."
    )
    database_command_timeout_s: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="Longest one SQL statement may run before it is cancelled and the call "
        "fails as 'postgres unavailable' (a server that stops answering never hangs a "
        "process).",
    )
    database_sslmode: (
        Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None
    ) = Field(
        None,
        description="libpq's sslmode for every connection; unset: what database_url says "
        "(its ?sslmode=, else prefer). verify-ca/verify-full check the server against "
        "~/.postgresql/root.crt or the URL's sslrootcert.",
    )

    s3_endpoint: str = Field("http://127.0.0.1:9000", description="S3 API endpoint URL.")
    s3_bucket: str = Field(
        "fhe-ciphertexts",
        min_length=3,
        max_length=63,
        description="Bucket of the coprocessor's own objects (server keys, CRS).",
    )
    s3_bucket_ct64: str = Field(
        "fhe-ct64",
        min_length=3,
        max_length=63,
        description="Bucket of published ct64 objects (raw TFHE-rs bytes, named by their "
        "keccak256).",
    )
    s3_bucket_ct128: str = Field(
        "fhe-ct128",
        min_length=3,
        max_length=63,
        description="Bucket of published ct128 (squashed) objects, named by their "
        "keccak256; its URL is what the coprocessor registers in GatewayConfig (the KMS "
        "fetches ct128 by digest).",
    )
    s3_access_key: str = Field("fheadmin", description="S3 access key id.")
    s3_secret_key: str = Field(
        "fheadmin-secret", description="S3 secret key (never in repr or logs).", repr=False
    )
    s3_region: str = Field("us-east-1")
    s3_connect_timeout_s: float = Field(5.0, gt=0, le=300, description="S3 connect timeout.")
    s3_read_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Longest wait for S3 to answer one request."
    )

    host_rpc_url: str = Field("http://127.0.0.1:8545", description="Host chain JSON-RPC.")
    gateway_rpc_url: str = Field("http://127.0.0.1:8545", description="Gateway chain JSON-RPC.")
    rpc_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Longest wait for one JSON-RPC request to either chain."
    )

    kubeconfig: Path | None = Field(None, description="Kubeconfig; None = in-cluster or default.")
    namespace: str = Field("fhe", description="Namespace the operator and its Jobs use.")
    kube_request_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Longest wait for one Kubernetes API call."
    )

    cache_dir: Path = Field(default_factory=default_cache_dir)
    migrations_dir: Path = Field(MIGRATIONS_DIR)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    metrics_host: str = Field(
        "0.0.0.0",
        description="Address the long-running components (listeners, sender, verify "
        "--follow) serve /metrics, /healthz and /readyz on.",
    )
    metrics_port: int = Field(
        9090,
        ge=0,
        le=65535,
        description="Port of /metrics, /healthz and /readyz; 0 = serve nothing. Stage "
        "Jobs' pods never serve.",
    )

    notify_poll_interval_s: float = Field(
        5.0, gt=0, description="Waiters poll this often even without a NOTIFY."
    )

    compute_workers: int = Field(
        0,
        ge=0,
        le=1024,
        description="Operations a compute pod runs at once; 0 = one per usable core.",
    )
    compute_strategy: Literal["max_parallelism", "max_locality"] = Field(
        "max_parallelism", description="How a compute pod orders ready work."
    )
    compute_input_wait_s: float = Field(
        120.0,
        gt=0,
        description="How long a compute pod waits for inputs another batch "
        "has not produced yet before exiting recoverably (75).",
    )
    termination_log: Path = Field(
        Path("/dev/termination-log"),
        description="Where a Job's pod writes its JSON summary for the operator.",
    )

    sns_workers: int = Field(
        0,
        ge=0,
        le=1024,
        description="Squashes an SNS pod runs at once; 1 = sequential, 0 = one per usable "
        "core (the reference's Sequential / RayonParallel schedule policy).",
    )
    sns_upload_concurrency: int = Field(
        8, ge=1, le=256, description="S3 uploads an SNS pod keeps in flight."
    )
    sns_upload_attempts: int = Field(
        5,
        ge=1,
        le=50,
        description="Tries per S3 upload before the handle is given up "
        "on for this run (recoverable).",
    )
    sns_backoff_s: float = Field(
        0.2, gt=0, description="First retry delay of an S3 upload; doubles each time."
    )
    sns_backoff_cap_s: float = Field(
        5.0, gt=0, description="Longest delay between two tries of an S3 upload."
    )
    sns_breaker_threshold: int = Field(
        10,
        ge=1,
        description="Consecutive failed S3 requests after which an SNS pod stops "
        "trying (circuit open) and exits recoverably (75).",
    )

    host_tenant: str | None = Field(
        None,
        description="Tenant whose keys the host chain's ciphertexts use; default: the "
        "tenant created for the chain id the host RPC serves (one listener per chain).",
    )
    host_executor_address: str | None = Field(
        None, description="Zama's FHEVMExecutor proxy on the host chain (0x address)."
    )
    host_acl_address: str | None = Field(
        None,
        description="Zama's ACL proxy on the host chain (0x address); the handle rule hashes it.",
    )
    host_start_block: int = Field(
        0, ge=0, description="First block the listener reads when it has no cursor in the database."
    )
    host_finality_depth: int = Field(
        0,
        ge=0,
        description="Blocks behind the head the listener stays (0 = follow the "
        "head and rely on the reorg window).",
    )
    host_reorg_window: int = Field(
        64, ge=1, description="Recent blocks re-checked for a reorg on every poll."
    )
    host_poll_interval_s: float = Field(
        1.0,
        gt=0,
        description="Head polling period; with a newHeads subscription this is only the fallback.",
    )
    host_ws_url: str | None = Field(
        None,
        description="WebSocket RPC for the newHeads subscription; default: "
        "FHE_HOST_RPC_URL with ws:// (anvil and most nodes serve both on one port); "
        "'off' polls only.",
    )
    host_batch_max_computations: int = Field(
        0,
        ge=0,
        description="Split a block's work into FheBatches of at most this many "
        "computations (whole transactions; 0 = one FheBatch per block).",
    )
    host_batch_stages: list[str] = Field(
        ["compute", "sns"], description="Stages of the FheBatches the listener creates."
    )

    gateway_config_address: str | None = Field(
        None,
        description="GatewayConfig contract on the gateway chain (0x address): who may "
        "send; required by the send stage.",
    )
    gateway_commits_address: str | None = Field(
        None,
        description="CiphertextCommits contract on the gateway chain (0x address); "
        "required by the send stage.",
    )
    gateway_acl_address: str | None = Field(
        None,
        description="MultichainACL contract on the gateway chain (0x address); "
        "required by the send stage (the host ACL events it relays).",
    )
    gateway_input_verification_address: str | None = Field(
        None,
        description="InputVerification contract on the gateway chain (0x address): "
        "where input proof requests come from and verdicts go; required by the gateway "
        "listener and the proof-response sender.",
    )
    gateway_kms_generation_address: str | None = Field(
        None,
        description="KMSGeneration contract on the gateway chain (0x address): its "
        "ActivateKey / ActivateCrs events bring the KMS's keys and CRS.",
    )
    gateway_start_block: int | None = Field(
        None,
        ge=0,
        description="First gateway block the gateway listener reads without a cursor; "
        "default: the head (requests made before it started are not its to answer).",
    )
    kms_storage_url_prefixes: list[str] = Field(
        [],
        description="KMS storage URLs the gateway listener fetches keys and CRSs from "
        "(prefixes; empty = any http(s) URL): the URLs come from chain events.",
    )
    kms_fetch_backoff_s: float = Field(
        5.0, gt=0, description="First retry delay of a KMS activation whose storage is down."
    )
    gateway_finality_depth: int = Field(
        0, ge=0, description="Blocks behind the gateway head the gateway listener stays."
    )
    gateway_reorg_window: int = Field(
        64, ge=1, description="Recent gateway blocks re-read when the cursor's block was reorged."
    )
    gateway_poll_interval_s: float = Field(
        1.0, gt=0, description="Gateway head polling period (the fallback of newHeads)."
    )
    gateway_ws_url: str | None = Field(
        None,
        description="WebSocket RPC of the gateway chain for newHeads; default: "
        "FHE_GATEWAY_RPC_URL with ws://; 'off' polls only.",
    )
    gateway_tenant_chain_id: int | None = Field(
        None,
        ge=1,
        lt=2**63,
        description="Host chain whose tenant a keyset the KMS activates becomes (when "
        "no tenant holds that keyset yet); default: the chain FHE_HOST_RPC_URL serves.",
    )
    signer_private_key: SecretStr | None = Field(
        None,
        description="This coprocessor's signer key (0x + 64 hex digits): signs the "
        "EIP-712 CiphertextVerification of verified input lists; registered in "
        "GatewayConfig and the host InputVerifier. Separate from the tx sender key; give "
        "it through a Secret; it is never logged.",
    )
    input_max_bytes: int = Field(
        1 << 20,
        ge=1024,
        le=64 << 20,
        description="Largest ciphertextWithZKProof accepted; a larger one is rejected "
        "before any deserialisation.",
    )
    sender_private_key: SecretStr | None = Field(
        None,
        description="This coprocessor's tx sender key (0x + 64 hex digits) for the "
        "gateway chain, registered in its GatewayConfig. Give it through the Job Secret "
        "(FHE_JOB_SECRET), never a CR; it is never logged.",
    )
    sender_max_in_flight: int = Field(
        16,
        ge=1,
        le=1024,
        description="Transactions sent before waiting for receipts (consecutive "
        "nonces of the one tx sender; one handle or ACL call per transaction).",
    )
    sender_attempts: int = Field(
        5,
        ge=1,
        le=50,
        description="Tries of a gateway RPC call before the stage exits recoverably (75).",
    )
    sender_backoff_s: float = Field(
        0.5, gt=0, description="First retry delay of a gateway RPC call; doubles each time."
    )
    sender_backoff_cap_s: float = Field(
        8.0, gt=0, description="Longest delay between two tries of a gateway RPC call."
    )
    sender_receipt_timeout_s: float = Field(
        120.0,
        gt=0,
        description="How long to wait for a sent transaction's receipt before "
        "leaving it for the next run (recoverable).",
    )
    sender_gas_margin: float = Field(
        1.2, ge=1.0, le=10.0, description="Gas limit = estimate x this margin."
    )

    operator_resync_s: float = Field(
        5.0,
        gt=0,
        description="Every batch is reconciled at least this often, so a lost "
        "watch event only adds latency.",
    )
    operator_leader_election: bool = Field(
        False,
        description="Reconcile only while holding the coordination.k8s.io Lease "
        "`operator_lease_name` in `namespace`: several replicas, one active.",
    )
    operator_lease_name: str = Field("fhe-operator", min_length=1, max_length=253)
    operator_lease_duration_s: float = Field(
        15.0,
        ge=2,
        le=600,
        description="A standby takes the Lease over once its holder has not renewed "
        "it for this long (client-go's leaseDuration).",
    )
    operator_lease_renew_s: float = Field(
        5.0, gt=0, le=300, description="The holder renews the Lease this often."
    )
    operator_lease_renew_deadline_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="The holder stops reconciling when it could not renew for this "
        "long; must stay below the lease duration, so two leaders never overlap.",
    )
    job_image: str = Field(
        "ghcr.io/fhe-coprocessor/fhe-coprocessor:0.1.0",
        description="Image of the stage Jobs' pods.",
    )
    job_config_map: str = Field(
        "fhe-coprocessor-config", description="ConfigMap of FHE_* settings given to stage pods."
    )
    job_secret: str = Field(
        "fhe-coprocessor-secrets",
        description="Secret of credentials every stage pod gets (envFrom, in the batch's "
        "namespace): FHE_DATABASE_URL, FHE_S3_ACCESS_KEY, FHE_S3_SECRET_KEY.",
    )
    job_send_secret: str = Field(
        "fhe-coprocessor-keys",
        description="Secret only the send stage's pods get (envFrom): the gateway "
        "transaction key FHE_SENDER_PRIVATE_KEY (and FHE_SIGNER_PRIVATE_KEY).",
    )
    job_service_account: str | None = Field(
        None,
        description="ServiceAccount of stage pods (no API access needed; its token is "
        "never mounted); None = the namespace's default.",
    )
    job_ttl_s: int = Field(86400, ge=0, description="ttlSecondsAfterFinished of stage Jobs.")
    job_fuse_stages: bool = Field(
        True,
        description="One pod runs a batch's consecutive stages (compute, then SNS, then "
        "send) instead of one Job per stage: no pod start, key load or Job hand-over "
        "between them, and SNS's key loads while compute runs. A compute stage spread "
        "over several pods (parallelism > 1) still runs alone. false = one Job per "
        "stage, which keeps the gateway keys (the send stage's Secret) off compute nodes.",
    )
    job_key_cache_host_path: str | None = Field(
        None,
        description="A directory on each node (hostPath) that stage pods mount at the "
        "same path and use as FHE_KEY_CACHE_DIR: expanded keys are read from it instead "
        "of being decompressed in every pod. Must exist and be writable by the stage "
        "pods' user; None = no cache.",
    )
    key_cache_dir: Path | None = Field(
        None,
        description="The node-local cache of expanded server keys (coprocessor/keycache.py); "
        "None = every process decompresses its keys.",
    )
    key_cache_secret: SecretStr | None = Field(
        None,
        description="HMAC key of the key cache's file names (a file without the right "
        "HMAC is never loaded); unset: derived from s3_secret_key.",
    )
    key_cache_max_bytes: int = Field(
        16 * 2**30,
        ge=0,
        description="Largest total size of the key cache; least recently used files go first.",
    )
    batch_max_cost: int = Field(
        2_000_000,
        ge=1,
        description="Estimated PBS (coprocessor/costs.py) one FheBatch may ask for; a "
        "costlier batch is refused at validation with its cost and this limit.",
    )
    batch_max_outputs: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Outputs one FheBatch may mark (each is squashed, uploaded twice and "
        "committed on the gateway).",
    )
    namespace_max_running_cost: int | None = Field(
        None,
        ge=1,
        description="Estimated PBS of the batches computing at once in one namespace; a "
        "batch that would exceed it waits (Admitted) until others finish. None = no limit.",
    )
    max_priority: int = Field(
        100,
        ge=-1000,
        le=1000,
        description="Highest spec.priority outside `priority_namespaces` (the operator's "
        "own namespace, where the listener creates batches, is always one of them).",
    )
    priority_namespaces: list[str] = Field(
        default_factory=list, description="Namespaces whose batches may use any priority."
    )
    max_running_batches_gpu: int | None = Field(
        None, ge=1, description="Batches computing at once on GPU nodes; None = no limit."
    )
    max_running_batches_cpu: int | None = Field(
        None, ge=1, description="Batches computing at once on CPU nodes; None = no limit."
    )

    concrete_p_error: float = Field(
        2.0**-64,
        gt=0,
        le=2.0**-20,
        description="concrete backend: failure probability "
        "of one bootstrap (2^-64 like the reference's classic parameters; concrete's own "
        "default, ~1e-5 per circuit, is too loose for balances).",
    )
    concrete_max_pbs: int = Field(
        1024,
        ge=1,
        description="concrete backend: an op estimated to need more bootstraps "
        "than this is reported unsupported. It bounds the first compile too, which grows "
        "faster than the bootstraps (measured: Mul Uint32, ~570, 24 s; Mul Uint64, ~2000, "
        "over 11 min).",
    )
    gpu_memory_headroom: float = Field(
        0.1, ge=0, lt=1, description="Fraction of each GPU's memory never reserved."
    )
    compute_device: Literal["cpu", "gpu"] = Field(
        "cpu",
        description="Where a stage pod's FHE work runs. The operator sets `gpu` in the "
        "compute and SNS Jobs of batches placed on GPU nodes: the pod then expands its key "
        "onto every GPU it was allocated and runs each op on one of them (round-robin, "
        "memory reserved first), on the CPU where none has room or the op has no GPU form.",
    )
    crs_max_bits: int = Field(
        2048,
        ge=1,
        le=2048,
        description="Bits one proven input list may carry; names the "
        "deployment's CRS in S3 (crs/<backend>-<bits>). Clients must prove against the "
        "same CRS.",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// or postgres://")
        return value

    @field_validator(
        "host_executor_address",
        "host_acl_address",
        "gateway_config_address",
        "gateway_commits_address",
        "gateway_acl_address",
        "gateway_input_verification_address",
        "gateway_kms_generation_address",
    )
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("0x") and len(value) == 42):
            raise ValueError("must be a 0x-prefixed 20-byte address")
        return value

    @field_validator("sender_private_key", "signer_private_key")
    @classmethod
    def _private_key(cls, value: SecretStr | None) -> SecretStr | None:
        """Checked here so a mistyped key fails at start, naming the setting, not the key."""
        if value is None:
            return None
        text = value.get_secret_value().strip()
        digits = text[2:] if text.startswith("0x") else text
        if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise ValueError(
                "must be 64 hex digits (a secp256k1 private key), optionally 0x-prefixed"
            )
        if int(digits, 16) == 0:
            raise ValueError("must not be zero")
        return SecretStr("0x" + digits.lower())

    @field_validator("s3_endpoint", "host_rpc_url", "gateway_rpc_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError("must be an http(s):// or ws(s):// URL")
        return value

    @model_validator(mode="after")
    def _lease_timings(self) -> Settings:
        if self.operator_leader_election and not (
            self.operator_lease_renew_s
            < self.operator_lease_renew_deadline_s
            < self.operator_lease_duration_s
        ):
            raise ValueError(
                "operator lease timings must satisfy renew_s < renew_deadline_s < "
                "duration_s (FHE_OPERATOR_LEASE_*), or two replicas could both reconcile"
            )
        return self


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if not field:  # a rule across several settings names them in its message
        return f"settings are inconsistent: {message}"
    return f"setting FHE_{field.upper()} is invalid: {message}"


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    """Load once per process; a malformed variable becomes one ConfigError line."""
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
