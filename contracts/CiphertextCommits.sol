// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

/// @notice The gateway chain's record of published ciphertexts: for each handle, the
/// keccak256 digests of its two S3 objects (ct64 and the squashed ct128) and the key
/// they were made under. Several coprocessors compute the same deterministic handles;
/// each registered signer submits what it published, and the material is accepted once
/// `threshold` signers submitted the same (keyId, ct64Digest, ct128Digest). Decryption
/// services read only accepted material, so one faulty or malicious coprocessor cannot
/// decide what a handle decrypts to.
///
/// A signer submits a handle once: a second submission reverts with
/// `CoprocessorAlreadyAdded`, which a sender that lost track of a sent transaction reads
/// as "already done". Submissions after acceptance are recorded (the signer joins the
/// accepted list when it agrees) but emit no second acceptance event.
contract CiphertextCommits {
    /// One signer's submission, agreeing or not with the others.
    event CiphertextMaterialSubmitted(
        bytes32 indexed ctHandle, address indexed signer, uint256 keyId,
        bytes32 ciphertextDigest, bytes32 snsCiphertextDigest);
    /// Emitted once per handle, by the submission that reached the threshold.
    event AddCiphertextMaterial(
        bytes32 indexed ctHandle, uint256 keyId, bytes32 ciphertextDigest,
        bytes32 snsCiphertextDigest, address[] coprocessorTxSenders);

    error NotCoprocessorSigner(address caller);
    error CoprocessorAlreadyAdded(bytes32 ctHandle, address signer);
    error InvalidThreshold(uint256 threshold, uint256 signers);
    error InvalidSigner(address signer);
    error CiphertextMaterialNotFound(bytes32 ctHandle);

    struct Material {
        uint256 keyId;
        bytes32 ciphertextDigest;
        bytes32 snsCiphertextDigest;
    }

    uint256 public immutable threshold;
    address[] private signers;
    mapping(address => bool) public isCoprocessorSigner;

    mapping(bytes32 => mapping(address => bool)) private submitted;
    // handle => hash of (keyId, digests) => the signers who submitted exactly that
    mapping(bytes32 => mapping(bytes32 => address[])) private votes;
    mapping(bytes32 => bool) public isAccepted;
    mapping(bytes32 => bytes32) private acceptedVote;
    mapping(bytes32 => Material) private accepted;

    constructor(address[] memory signers_, uint256 threshold_) {
        if (threshold_ == 0 || threshold_ > signers_.length) {
            revert InvalidThreshold(threshold_, signers_.length);
        }
        for (uint256 i = 0; i < signers_.length; i++) {
            address signer = signers_[i];
            if (signer == address(0) || isCoprocessorSigner[signer]) revert InvalidSigner(signer);
            isCoprocessorSigner[signer] = true;
            signers.push(signer);
        }
        threshold = threshold_;
    }

    function getCoprocessorSigners() external view returns (address[] memory) {
        return signers;
    }

    /// @notice Submit the digests this coprocessor published for `ctHandle`.
    function addCiphertextMaterial(
        bytes32 ctHandle, uint256 keyId, bytes32 ciphertextDigest, bytes32 snsCiphertextDigest
    ) external {
        if (!isCoprocessorSigner[msg.sender]) revert NotCoprocessorSigner(msg.sender);
        if (submitted[ctHandle][msg.sender]) revert CoprocessorAlreadyAdded(ctHandle, msg.sender);
        _submit(ctHandle, keyId, ciphertextDigest, snsCiphertextDigest);
    }

    /// @notice Many handles in one transaction (the sender's batching). Handles this
    /// signer already submitted are skipped rather than reverting the whole batch, so a
    /// batch that raced another sender pod still lands the rest. Returns how many were new.
    function addCiphertextMaterials(
        bytes32[] calldata ctHandles, uint256[] calldata keyIds,
        bytes32[] calldata ciphertextDigests, bytes32[] calldata snsCiphertextDigests
    ) external returns (uint256 added) {
        if (!isCoprocessorSigner[msg.sender]) revert NotCoprocessorSigner(msg.sender);
        uint256 n = ctHandles.length;
        require(keyIds.length == n && ciphertextDigests.length == n
                && snsCiphertextDigests.length == n, "length mismatch");
        for (uint256 i = 0; i < n; i++) {
            if (submitted[ctHandles[i]][msg.sender]) continue;
            _submit(ctHandles[i], keyIds[i], ciphertextDigests[i], snsCiphertextDigests[i]);
            added++;
        }
    }

    function hasSubmitted(bytes32 ctHandle, address signer) external view returns (bool) {
        return submitted[ctHandle][signer];
    }

    /// @notice The accepted material and the signers who agreed on it.
    function getCiphertextMaterial(bytes32 ctHandle)
        external view returns (uint256 keyId, bytes32 ciphertextDigest,
                               bytes32 snsCiphertextDigest, address[] memory agreed)
    {
        if (!isAccepted[ctHandle]) revert CiphertextMaterialNotFound(ctHandle);
        Material storage material = accepted[ctHandle];
        return (material.keyId, material.ciphertextDigest, material.snsCiphertextDigest,
                votes[ctHandle][acceptedVote[ctHandle]]);
    }

    function _submit(bytes32 ctHandle, uint256 keyId, bytes32 ct64Digest, bytes32 ct128Digest)
        private
    {
        submitted[ctHandle][msg.sender] = true;
        bytes32 vote = keccak256(abi.encode(keyId, ct64Digest, ct128Digest));
        address[] storage agreeing = votes[ctHandle][vote];
        agreeing.push(msg.sender);
        emit CiphertextMaterialSubmitted(ctHandle, msg.sender, keyId, ct64Digest, ct128Digest);
        if (!isAccepted[ctHandle] && agreeing.length >= threshold) {
            isAccepted[ctHandle] = true;
            acceptedVote[ctHandle] = vote;
            accepted[ctHandle] = Material(keyId, ct64Digest, ct128Digest);
            emit AddCiphertextMaterial(ctHandle, keyId, ct64Digest, ct128Digest, agreeing);
        }
    }
}
