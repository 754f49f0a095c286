"""What a published handle looks like to the rest of the protocol (FHEVM_WIRE "Outputs").

The SNS stage uploads two objects per handle, as Zama's sns-worker does, so a KMS (or
another coprocessor's tooling) can read them without knowing anything of ours:

* ct64  - raw TFHE-rs bytes of a one-element ``CompressedCiphertextList``, in the ct64
          bucket;
* ct128 - raw TFHE-rs bytes of the squashed form (a one-element
          ``CompressedSquashedNoiseCiphertextList``, or a bare squashed ciphertext where
          that is smaller), in the ct128 bucket, with ``Ct-Format`` metadata saying which.

Each object's key is the hex keccak256 of its bytes (no 0x): the same digest the sender
commits on the gateway, so a reader fetches by digest and checks what it got. Our
envelope (``fhe.envelope``) never leaves the database.
"""

from __future__ import annotations

from eth_hash.auto import keccak

from .fhe.engine import SquashedFormat

CT_FORMAT_METADATA = "Ct-Format"

_FORMAT_NAMES = {
    SquashedFormat.UNCOMPRESSED_ON_CPU: "uncompressed_on_cpu",
    SquashedFormat.COMPRESSED_ON_CPU: "compressed_on_cpu",
    SquashedFormat.UNCOMPRESSED_ON_GPU: "uncompressed_on_gpu",
    SquashedFormat.COMPRESSED_ON_GPU: "compressed_on_gpu",
}


def digest(data: bytes) -> bytes:
    """keccak256 of a published object: its S3 key (in hex) and what is committed."""
    return keccak(data)


def object_key(data: bytes) -> str:
    return digest(data).hex()


def ct_format_name(squashed_format: SquashedFormat) -> str:
    """The ``Ct-Format`` metadata value of a ct128 object (Zama's names)."""
    if squashed_format not in _FORMAT_NAMES:
        raise ValueError(f"no Ct-Format for {squashed_format!r}")
    return _FORMAT_NAMES[squashed_format]


def ct128_metadata(squashed_format: SquashedFormat) -> dict[str, str]:
    return {CT_FORMAT_METADATA: ct_format_name(squashed_format)}
