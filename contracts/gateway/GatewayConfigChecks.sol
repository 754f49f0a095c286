// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

import {GatewayConfig} from "./GatewayConfig.sol";

/// @notice What the gateway's contracts ask GatewayConfig before they accept a call: is the
/// caller a coprocessor, is the handle's (or the call's) host chain registered, has a vote
/// reached the coprocessor threshold. The errors are Zama's (GatewayConfigChecks, v0.11).
/// The GatewayConfig address is a constructor argument (Zama's is a compile-time constant).
abstract contract GatewayConfigChecks {
    GatewayConfig internal immutable _gatewayConfig;

    error NotCoprocessorTxSender(address txSenderAddress);
    error NotCoprocessorSigner(address signerAddress);
    error HostChainNotRegistered(uint256 chainId);

    constructor(address gatewayConfig) {
        _gatewayConfig = GatewayConfig(gatewayConfig);
    }

    modifier onlyCoprocessorTxSender() {
        if (!_gatewayConfig.isCoprocessorTxSender(msg.sender)) revert NotCoprocessorTxSender(msg.sender);
        _;
    }

    modifier onlyRegisteredHostChain(uint256 chainId) {
        if (!_gatewayConfig.isHostChainRegistered(chainId)) revert HostChainNotRegistered(chainId);
        _;
    }

    /// @notice A handle names its host chain itself (bytes 22..29), so no chain id argument is
    /// needed to refuse a handle of a chain this gateway does not serve.
    modifier onlyHandleFromRegisteredHostChain(bytes32 handle) {
        uint256 chainId = _handleChainId(handle);
        if (!_gatewayConfig.isHostChainRegistered(chainId)) revert HostChainNotRegistered(chainId);
        _;
    }

    /// @notice For signed submissions (input proofs): the signature must be a coprocessor's.
    function _checkIsCoprocessorSigner(address signerAddress) internal view {
        if (!_gatewayConfig.isCoprocessorSigner(signerAddress)) revert NotCoprocessorSigner(signerAddress);
    }

    /// @notice Read at every vote, so a threshold GatewayConfig changes applies at once.
    function _isConsensusReached(uint256 votes) internal view returns (bool) {
        return votes >= _gatewayConfig.getCoprocessorMajorityThreshold();
    }

    /// @notice The host chain id in a handle: index 21 | chain id 22..29 | type 30 | version 31.
    function _handleChainId(bytes32 handle) internal pure returns (uint256) {
        return (uint256(handle) >> 16) & type(uint64).max;
    }
}
