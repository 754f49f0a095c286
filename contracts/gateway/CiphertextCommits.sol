// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

import {GatewayConfigChecks} from "./GatewayConfigChecks.sol";
import {CiphertextMaterial, SnsCiphertextMaterial} from "./Structs.sol";

/// @notice The gateway's record of published ciphertexts: for each handle, the digests of its
/// regular and its Switch-and-Squash ciphertexts and the key they were made under. Every
/// coprocessor computes the same deterministic handles and submits what it published; the
/// material counts once the coprocessor threshold of GatewayConfig submitted exactly the same
/// (keyId, digests), so one faulty or malicious coprocessor cannot decide what a handle
/// decrypts to. The ABI is Zama's ICiphertextCommits (v0.11).
///
/// A coprocessor submits a handle once; a second submission reverts with
/// `CoprocessorAlreadyAdded`, which a sender that lost track of a transaction reads as "done".
/// Submissions after consensus still join the list of those who agreed (when they agree) but
/// emit no second consensus event.
contract CiphertextCommits is GatewayConfigChecks {
    struct Material {
        uint256 keyId;
        bytes32 ciphertextDigest;
        bytes32 snsCiphertextDigest;
    }

    mapping(bytes32 ctHandle => mapping(address txSender => bool)) private _submitted;
    /// Votes are kept per hash of all the arguments: only identical submissions agree.
    mapping(bytes32 submissionHash => address[] txSenders) private _agreeing;
    mapping(bytes32 ctHandle => bool) private _hasConsensus;
    mapping(bytes32 ctHandle => bytes32 submissionHash) private _consensusHash;
    mapping(bytes32 ctHandle => Material) private _materials;

    event AddCiphertextMaterial(
        bytes32 indexed ctHandle,
        uint256 keyId,
        bytes32 ciphertextDigest,
        bytes32 snsCiphertextDigest,
        address coprocessorTxSender
    );
    event AddCiphertextMaterialConsensus(
        bytes32 indexed ctHandle,
        uint256 keyId,
        bytes32 ciphertextDigest,
        bytes32 snsCiphertextDigest,
        address[] coprocessorTxSenders
    );

    error CoprocessorAlreadyAdded(bytes32 ctHandle, address txSender);
    error EmptyCtHandles();
    error CiphertextMaterialNotFound(bytes32 ctHandle);

    constructor(address gatewayConfig) GatewayConfigChecks(gatewayConfig) {}

    /// @notice Submit the digests this coprocessor published for `ctHandle`.
    function addCiphertextMaterial(bytes32 ctHandle, uint256 keyId, bytes32 ciphertextDigest, bytes32 snsCiphertextDigest)
        external
        onlyCoprocessorTxSender
        onlyHandleFromRegisteredHostChain(ctHandle)
    {
        if (_submitted[ctHandle][msg.sender]) revert CoprocessorAlreadyAdded(ctHandle, msg.sender);
        _submitted[ctHandle][msg.sender] = true;
        bytes32 submissionHash = keccak256(abi.encode(ctHandle, keyId, ciphertextDigest, snsCiphertextDigest));
        address[] storage agreeing = _agreeing[submissionHash];
        agreeing.push(msg.sender);
        emit AddCiphertextMaterial(ctHandle, keyId, ciphertextDigest, snsCiphertextDigest, msg.sender);
        if (!_hasConsensus[ctHandle] && _isConsensusReached(agreeing.length)) {
            _hasConsensus[ctHandle] = true;
            _consensusHash[ctHandle] = submissionHash;
            _materials[ctHandle] = Material(keyId, ciphertextDigest, snsCiphertextDigest);
            emit AddCiphertextMaterialConsensus(ctHandle, keyId, ciphertextDigest, snsCiphertextDigest, agreeing);
        }
    }

    /// @notice The agreed regular ciphertext digests; reverts for a handle without consensus.
    function getCiphertextMaterials(bytes32[] calldata ctHandles)
        external
        view
        returns (CiphertextMaterial[] memory materials)
    {
        if (ctHandles.length == 0) revert EmptyCtHandles();
        materials = new CiphertextMaterial[](ctHandles.length);
        for (uint256 i = 0; i < ctHandles.length; i++) {
            Material storage material = _agreedMaterial(ctHandles[i]);
            materials[i] = CiphertextMaterial(
                ctHandles[i], material.keyId, material.ciphertextDigest, _agreeing[_consensusHash[ctHandles[i]]]
            );
        }
    }

    /// @notice The agreed SNS ciphertext digests (what KMS nodes decrypt); reverts for a handle
    /// without consensus.
    function getSnsCiphertextMaterials(bytes32[] calldata ctHandles)
        external
        view
        returns (SnsCiphertextMaterial[] memory materials)
    {
        if (ctHandles.length == 0) revert EmptyCtHandles();
        materials = new SnsCiphertextMaterial[](ctHandles.length);
        for (uint256 i = 0; i < ctHandles.length; i++) {
            Material storage material = _agreedMaterial(ctHandles[i]);
            materials[i] = SnsCiphertextMaterial(
                ctHandles[i], material.keyId, material.snsCiphertextDigest, _agreeing[_consensusHash[ctHandles[i]]]
            );
        }
    }

    /// @notice Whether the handle's material reached consensus.
    function isCiphertextMaterialAdded(bytes32 ctHandle) external view returns (bool) {
        return _hasConsensus[ctHandle];
    }

    /// @notice Those who submitted the agreed material, late ones included; empty before
    /// consensus.
    function getAddCiphertextMaterialConsensusTxSenders(bytes32 ctHandle) external view returns (address[] memory) {
        if (!_hasConsensus[ctHandle]) return new address[](0);
        return _agreeing[_consensusHash[ctHandle]];
    }

    /// @notice Zama's contract name and the version of its ABI that this contract implements.
    function getVersion() external pure returns (string memory) {
        return "CiphertextCommits v0.3.0";
    }

    function _agreedMaterial(bytes32 ctHandle) private view returns (Material storage) {
        if (!_hasConsensus[ctHandle]) revert CiphertextMaterialNotFound(ctHandle);
        return _materials[ctHandle];
    }
}
