// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

import {GatewayConfigChecks} from "./GatewayConfigChecks.sol";

/// @notice A stand-in for the KMS's key management on the gateway: which FHE key and CRS are
/// active, and where their materials are published (with their digests). In Zama's network
/// the KMS is a threshold MPC network whose nodes generate keys and CRS and vote their
/// results in; that network cannot run here, so the GatewayConfig owner records the outcome
/// itself (`activateKey`, `activateCrs`) and this contract emits what the KMS's consensus
/// would. Coprocessors see the same events and read the same views as on Zama's gateway.
///
/// The events, the KeyDigest struct, the views and the errors used are Zama's IKMSGeneration
/// (v0.11); `activateKey` and `activateCrs` are this stand-in's own and replace Zama's whole
/// request/response flow (keygen, crsgen, their responses, PRSS init, resharing). Zama's key
/// ids are `4 << 248 | n` and its CRS ids `5 << 248 | n`; any nonzero id is accepted here.
contract KMSGeneration is GatewayConfigChecks {
    enum KeyType {
        Server,
        Public
    }

    /// @notice One published part of a key (its server or its public key) and its digest.
    struct KeyDigest {
        KeyType keyType;
        bytes digest;
    }

    struct KeyMaterials {
        bool activated;
        string[] storageUrls;
        KeyDigest[] keyDigests;
    }

    struct CrsMaterials {
        bool activated;
        string[] storageUrls;
        bytes crsDigest;
    }

    uint256 private _activeKeyId;
    uint256 private _activeCrsId;
    mapping(uint256 keyId => KeyMaterials) private _keys;
    mapping(uint256 crsId => CrsMaterials) private _crs;

    event ActivateKey(uint256 keyId, string[] kmsNodeStorageUrls, KeyDigest[] keyDigests);
    event ActivateCrs(uint256 crsId, string[] kmsNodeStorageUrls, bytes crsDigest);

    /// Zama's owner-only functions are the GatewayConfig owner's, with this error.
    error NotGatewayOwner(address sender);
    error KeygenNotRequested(uint256 keyId);
    error EmptyKeyDigests(uint256 keyId);
    error CrsgenNotRequested(uint256 crsId);
    error KeyNotGenerated(uint256 keyId);
    error CrsNotGenerated(uint256 crsId);

    modifier onlyGatewayOwner() {
        if (msg.sender != _gatewayConfig.owner()) revert NotGatewayOwner(msg.sender);
        _;
    }

    constructor(address gatewayConfig) GatewayConfigChecks(gatewayConfig) {}

    /// @notice Make `keyId` the active key, its materials published at `kmsNodeStorageUrls`.
    /// Id 0 is refused (it means "none" in `getActiveKeyId`), as are empty digests (a key
    /// always has at least one part). Activating an id again replaces its materials.
    function activateKey(uint256 keyId, string[] calldata kmsNodeStorageUrls, KeyDigest[] calldata keyDigests)
        external
        onlyGatewayOwner
    {
        if (keyId == 0) revert KeygenNotRequested(keyId);
        if (keyDigests.length == 0) revert EmptyKeyDigests(keyId);
        KeyMaterials storage key = _keys[keyId];
        key.activated = true;
        _store(key.storageUrls, kmsNodeStorageUrls);
        delete key.keyDigests; // likewise
        for (uint256 i = 0; i < keyDigests.length; i++) {
            key.keyDigests.push(keyDigests[i]);
        }
        _activeKeyId = keyId;
        emit ActivateKey(keyId, kmsNodeStorageUrls, keyDigests);
    }

    /// @notice Make `crsId` the active CRS, published at `kmsNodeStorageUrls`. Id 0 is refused;
    /// activating an id again replaces its materials.
    function activateCrs(uint256 crsId, string[] calldata kmsNodeStorageUrls, bytes calldata crsDigest)
        external
        onlyGatewayOwner
    {
        if (crsId == 0) revert CrsgenNotRequested(crsId);
        CrsMaterials storage crs = _crs[crsId];
        crs.activated = true;
        _store(crs.storageUrls, kmsNodeStorageUrls);
        crs.crsDigest = crsDigest;
        _activeCrsId = crsId;
        emit ActivateCrs(crsId, kmsNodeStorageUrls, crsDigest);
    }

    /// @notice The key activated last; 0 before any.
    function getActiveKeyId() external view returns (uint256) {
        return _activeKeyId;
    }

    /// @notice The CRS activated last; 0 before any.
    function getActiveCrsId() external view returns (uint256) {
        return _activeCrsId;
    }

    /// @notice Where the key's materials are published, and their digests; reverts for a key
    /// never activated.
    function getKeyMaterials(uint256 keyId) external view returns (string[] memory, KeyDigest[] memory) {
        KeyMaterials storage key = _keys[keyId];
        if (!key.activated) revert KeyNotGenerated(keyId);
        return (key.storageUrls, key.keyDigests);
    }

    /// @notice Where the CRS is published, and its digest; reverts for a CRS never activated.
    function getCrsMaterials(uint256 crsId) external view returns (string[] memory, bytes memory) {
        CrsMaterials storage crs = _crs[crsId];
        if (!crs.activated) revert CrsNotGenerated(crsId);
        return (crs.storageUrls, crs.crsDigest);
    }

    /// @notice Zama's contract name and the version of its ABI whose events and views this
    /// stand-in implements.
    function getVersion() external pure returns (string memory) {
        return "KMSGeneration v0.4.0";
    }

    /// solc copies no calldata array of dynamic items (strings, structs with bytes) to storage
    /// at once: item by item.
    function _store(string[] storage stored, string[] calldata urls) private {
        while (stored.length > 0) stored.pop();
        for (uint256 i = 0; i < urls.length; i++) {
            stored.push(urls[i]);
        }
    }
}
