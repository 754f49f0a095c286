// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

import {Coprocessor, HostChain} from "./Structs.sol";

/// @notice The gateway's source of truth for who may submit what: the coprocessors (their
/// transaction senders and signers), the threshold their submissions need, and the host
/// chains whose handles the gateway accepts. Function, event and error signatures are those
/// of Zama's IGatewayConfig (v0.11) for the part a coprocessor gateway uses, so Zama's
/// tooling reads ours unchanged. Unlike Zama's: no proxy, no pausing and no KMS nodes or
/// custodians; the deployer is the owner for good.
contract GatewayConfig {
    /// Handles carry their chain id in 8 bytes.
    uint256 private constant MAX_CHAIN_ID = type(uint64).max;

    address public immutable owner;

    mapping(address txSender => bool) private _isTxSender;
    mapping(address signer => bool) private _isSigner;
    mapping(address txSender => Coprocessor) private _coprocessors;
    address[] private _txSenders;
    address[] private _signers;
    uint256 private _coprocessorThreshold;

    mapping(uint256 chainId => bool) private _isHostChain;
    HostChain[] private _hostChains;

    event UpdateCoprocessors(Coprocessor[] newCoprocessors, uint256 newCoprocessorThreshold);
    event AddHostChain(HostChain hostChain);

    /// Zama's owner-only functions revert with OpenZeppelin's Ownable error; so do ours.
    error OwnableUnauthorizedAccount(address account);
    error EmptyCoprocessors();
    error CoprocessorTxSenderAlreadyRegistered(address coprocessorTxSenderAddress);
    error CoprocessorSignerAlreadyRegistered(address coprocessorSignerAddress);
    error InvalidNullCoprocessorThreshold();
    error InvalidHighCoprocessorThreshold(uint256 coprocessorThreshold, uint256 nCoprocessors);
    error HostChainAlreadyRegistered(uint256 chainId);
    error InvalidNullChainId();
    error ChainIdNotUint64(uint256 chainId);

    modifier onlyOwner() {
        if (msg.sender != owner) revert OwnableUnauthorizedAccount(msg.sender);
        _;
    }

    /// @notice The threshold starts as a majority of `coprocessors` (n/2 + 1): what Zama's
    /// gateway required before the threshold became configurable; `updateCoprocessors` sets
    /// another.
    constructor(Coprocessor[] memory coprocessors, HostChain[] memory hostChains) {
        owner = msg.sender;
        _setCoprocessors(coprocessors, coprocessors.length / 2 + 1);
        for (uint256 i = 0; i < hostChains.length; i++) {
            _addHostChain(hostChains[i]);
        }
    }

    /// @notice Replace the whole coprocessor set. Consensus counts in flight keep the votes
    /// already cast, so callers should change the set while no submissions are pending.
    function updateCoprocessors(Coprocessor[] calldata newCoprocessors, uint256 newCoprocessorThreshold)
        external
        onlyOwner
    {
        for (uint256 i = 0; i < _txSenders.length; i++) {
            _isTxSender[_txSenders[i]] = false;
            _isSigner[_signers[i]] = false;
            delete _coprocessors[_txSenders[i]];
        }
        delete _txSenders;
        delete _signers;
        _setCoprocessors(newCoprocessors, newCoprocessorThreshold);
    }

    /// @notice Let a host chain's handles in. Its id must fit the 8 bytes a handle has for it.
    function addHostChain(HostChain calldata hostChain) external onlyOwner {
        _addHostChain(hostChain);
    }

    function isCoprocessorTxSender(address coprocessorTxSenderAddress) external view returns (bool) {
        return _isTxSender[coprocessorTxSenderAddress];
    }

    function isCoprocessorSigner(address signerAddress) external view returns (bool) {
        return _isSigner[signerAddress];
    }

    function isHostChainRegistered(uint256 chainId) external view returns (bool) {
        return _isHostChain[chainId];
    }

    /// @notice How many coprocessors must agree before a submission takes effect.
    function getCoprocessorMajorityThreshold() external view returns (uint256) {
        return _coprocessorThreshold;
    }

    /// @notice The coprocessor with this transaction sender; all fields zero when none has it.
    function getCoprocessor(address coprocessorTxSenderAddress) external view returns (Coprocessor memory) {
        return _coprocessors[coprocessorTxSenderAddress];
    }

    function getCoprocessorTxSenders() external view returns (address[] memory) {
        return _txSenders;
    }

    function getCoprocessorSigners() external view returns (address[] memory) {
        return _signers;
    }

    function getHostChain(uint256 index) external view returns (HostChain memory) {
        return _hostChains[index];
    }

    function getHostChains() external view returns (HostChain[] memory) {
        return _hostChains;
    }

    /// @notice Zama's contract name and the version of its ABI that this contract implements.
    function getVersion() external pure returns (string memory) {
        return "GatewayConfig v0.4.0";
    }

    function _setCoprocessors(Coprocessor[] memory coprocessors, uint256 threshold) private {
        if (coprocessors.length == 0) revert EmptyCoprocessors();
        for (uint256 i = 0; i < coprocessors.length; i++) {
            address txSender = coprocessors[i].txSenderAddress;
            address signer = coprocessors[i].signerAddress;
            if (_isTxSender[txSender]) revert CoprocessorTxSenderAlreadyRegistered(txSender);
            if (_isSigner[signer]) revert CoprocessorSignerAlreadyRegistered(signer);
            _isTxSender[txSender] = true;
            _isSigner[signer] = true;
            _coprocessors[txSender] = coprocessors[i];
            _txSenders.push(txSender);
            _signers.push(signer);
        }
        if (threshold == 0) revert InvalidNullCoprocessorThreshold();
        if (threshold > coprocessors.length) revert InvalidHighCoprocessorThreshold(threshold, coprocessors.length);
        _coprocessorThreshold = threshold;
        emit UpdateCoprocessors(coprocessors, threshold);
    }

    function _addHostChain(HostChain memory hostChain) private {
        if (hostChain.chainId == 0) revert InvalidNullChainId();
        if (hostChain.chainId > MAX_CHAIN_ID) revert ChainIdNotUint64(hostChain.chainId);
        if (_isHostChain[hostChain.chainId]) revert HostChainAlreadyRegistered(hostChain.chainId);
        _isHostChain[hostChain.chainId] = true;
        _hostChains.push(hostChain);
        emit AddHostChain(hostChain);
    }
}
