// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

// The gateway's structs, field for field as Zama's gateway contracts (v0.11) lay them out:
// they are part of the ABI (tuples in calls, returns and events), so Zama's tooling and ours
// encode and decode the same bytes.

/// @notice A coprocessor as the gateway knows it: the key that sends its transactions, the
/// key that signs its input proofs, and where it publishes ciphertexts.
struct Coprocessor {
    address txSenderAddress;
    address signerAddress;
    string s3BucketUrl;
}

/// @notice A host chain served by this gateway. Handles carry their chain id (bytes 22..29),
/// so a registered chain id is what lets its handles in.
struct HostChain {
    uint256 chainId;
    address fhevmExecutorAddress;
    address aclAddress;
    string name;
    string website;
}

/// @notice A handle's agreed regular (64-bit) ciphertext digest and who agreed on it.
struct CiphertextMaterial {
    bytes32 ctHandle;
    uint256 keyId;
    bytes32 ciphertextDigest;
    address[] coprocessorTxSenderAddresses;
}

/// @notice A handle's agreed Switch-and-Squash (128-bit) ciphertext digest and who agreed on
/// it: what KMS nodes decrypt.
struct SnsCiphertextMaterial {
    bytes32 ctHandle;
    uint256 keyId;
    bytes32 snsCiphertextDigest;
    address[] coprocessorTxSenderAddresses;
}

/// @notice A delegation after consensus: until when it holds, and the counter that orders
/// delegations and revocations of the same (delegator, delegate, contract).
struct UserDecryptionDelegation {
    uint64 expirationDate;
    uint64 delegationCounter;
}
