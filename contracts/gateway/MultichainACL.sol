// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

import {GatewayConfigChecks} from "./GatewayConfigChecks.sol";
import {UserDecryptionDelegation} from "./Structs.sol";

/// @notice The gateway's copy of the host chains' ACLs, as the coprocessors relay them: which
/// handles may be publicly decrypted, which accounts may use a handle, and who may
/// user-decrypt on a delegator's behalf. Each grant takes effect once the coprocessor threshold
/// of GatewayConfig relayed it, so KMS nodes never trust a single coprocessor's word. The ABI
/// is Zama's IMultichainACL (v0.11).
///
/// Each coprocessor relays a grant once (a repeat reverts with the matching "already" error);
/// relays after consensus join the list of relayers but emit no second consensus event.
contract MultichainACL is GatewayConfigChecks {
    /// One grant's relays: who relayed it, and whether they already reached the threshold.
    struct Votes {
        address[] txSenders;
        mapping(address txSender => bool) cast;
        bool reached;
    }

    mapping(bytes32 ctHandle => Votes) private _publicDecrypt;
    mapping(bytes32 ctHandle => mapping(address account => Votes)) private _accounts;
    /// Delegations and revocations are voted on per hash of all their arguments. One that
    /// reached consensus decides its hash for good: the same arguments never apply twice.
    mapping(bytes32 delegationHash => Votes) private _delegations;
    mapping(bytes32 delegationHash => Votes) private _revocations;
    mapping(uint256 chainId => mapping(address delegator => mapping(address delegate => mapping(address contractAddress => UserDecryptionDelegation))))
        private _delegated;

    event AllowPublicDecrypt(bytes32 indexed ctHandle, address coprocessorTxSender, bytes extraData);
    event AllowPublicDecryptConsensus(bytes32 indexed ctHandle, bytes extraData);
    event AllowAccount(bytes32 indexed ctHandle, address accountAddress, address coprocessorTxSender, bytes extraData);
    event AllowAccountConsensus(bytes32 indexed ctHandle, address accountAddress, bytes extraData);
    event DelegateUserDecryption(
        uint256 indexed chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 expirationDate
    );
    event DelegateUserDecryptionConsensus(
        uint256 indexed chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 oldExpirationDate,
        uint64 newExpirationDate
    );
    event RevokeUserDecryptionDelegation(
        uint256 indexed chainId, address delegator, address delegate, address contractAddress, uint64 delegationCounter
    );
    event RevokeUserDecryptionDelegationConsensusReached(
        uint256 indexed chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 oldExpirationDate
    );

    error CoprocessorAlreadyAllowedPublicDecrypt(bytes32 ctHandle, address txSender);
    error CoprocessorAlreadyAllowedAccount(bytes32 ctHandle, address account, address txSender);
    error CoprocessorAlreadyDelegatedUserDecryption(
        uint256 chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 expirationDate,
        address txSender
    );
    error CoprocessorAlreadyRevokedUserDecryption(
        uint256 chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 expirationDate,
        address txSender
    );
    // Declared by Zama's interface (for batched delegations); no function here reverts with them.
    error EmptyContractAddresses();
    error ContractsMaxLengthExceeded(uint256 maxLength, uint256 actualLength);
    error UserDecryptionDelegationCounterTooLow(uint64 delegationCounter);

    constructor(address gatewayConfig) GatewayConfigChecks(gatewayConfig) {}

    /// @notice Relay a host chain's "publicly decryptable" for `ctHandle`. `extraData` is
    /// not voted on: the consensus event carries the one of the relay that reached it.
    function allowPublicDecrypt(bytes32 ctHandle, bytes calldata extraData)
        external
        onlyCoprocessorTxSender
        onlyHandleFromRegisteredHostChain(ctHandle)
    {
        Votes storage votes = _publicDecrypt[ctHandle];
        if (votes.cast[msg.sender]) revert CoprocessorAlreadyAllowedPublicDecrypt(ctHandle, msg.sender);
        _cast(votes);
        emit AllowPublicDecrypt(ctHandle, msg.sender, extraData);
        if (_reachesConsensus(votes)) emit AllowPublicDecryptConsensus(ctHandle, extraData);
    }

    /// @notice Relay a host chain's permission for `accountAddress` to use `ctHandle`.
    function allowAccount(bytes32 ctHandle, address accountAddress, bytes calldata extraData)
        external
        onlyCoprocessorTxSender
        onlyHandleFromRegisteredHostChain(ctHandle)
    {
        Votes storage votes = _accounts[ctHandle][accountAddress];
        if (votes.cast[msg.sender]) revert CoprocessorAlreadyAllowedAccount(ctHandle, accountAddress, msg.sender);
        _cast(votes);
        emit AllowAccount(ctHandle, accountAddress, msg.sender, extraData);
        if (_reachesConsensus(votes)) emit AllowAccountConsensus(ctHandle, accountAddress, extraData);
    }

    /// @notice Relay a host chain's user decryption delegation. The counter is checked only at
    /// consensus: relays of different delegations may land in any order, and the threshold's
    /// agreement, not a single relay, decides which one is stale.
    function delegateUserDecryption(
        uint256 chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 expirationDate
    ) external onlyCoprocessorTxSender onlyRegisteredHostChain(chainId) {
        bytes32 hash = _delegationHash(chainId, delegator, delegate, contractAddress, delegationCounter, expirationDate);
        _checkNotRelayed(hash, chainId, delegator, delegate, contractAddress, delegationCounter, expirationDate);
        Votes storage votes = _delegations[hash];
        _cast(votes);
        emit DelegateUserDecryption(chainId, delegator, delegate, contractAddress, delegationCounter, expirationDate);
        if (_revocations[hash].reached || !_reachesConsensus(votes)) return;
        uint64 oldExpirationDate = _apply(chainId, delegator, delegate, contractAddress, delegationCounter, expirationDate);
        emit DelegateUserDecryptionConsensus(
            chainId, delegator, delegate, contractAddress, delegationCounter, oldExpirationDate, expirationDate
        );
    }

    /// @notice Relay a host chain's revocation of a delegation: at consensus the delegation
    /// expires at once (expiration date 0). Counters order it with the delegations.
    function revokeUserDecryptionDelegation(
        uint256 chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 expirationDate
    ) external onlyCoprocessorTxSender onlyRegisteredHostChain(chainId) {
        bytes32 hash = _delegationHash(chainId, delegator, delegate, contractAddress, delegationCounter, expirationDate);
        _checkNotRelayed(hash, chainId, delegator, delegate, contractAddress, delegationCounter, expirationDate);
        Votes storage votes = _revocations[hash];
        _cast(votes);
        emit RevokeUserDecryptionDelegation(chainId, delegator, delegate, contractAddress, delegationCounter);
        if (_delegations[hash].reached || !_reachesConsensus(votes)) return;
        uint64 oldExpirationDate = _apply(chainId, delegator, delegate, contractAddress, delegationCounter, 0);
        emit RevokeUserDecryptionDelegationConsensusReached(
            chainId, delegator, delegate, contractAddress, delegationCounter, oldExpirationDate
        );
    }

    function isPublicDecryptAllowed(bytes32 ctHandle) external view returns (bool) {
        return _publicDecrypt[ctHandle].reached;
    }

    function isAccountAllowed(bytes32 ctHandle, address accountAddress) external view returns (bool) {
        return _accounts[ctHandle][accountAddress].reached;
    }

    /// @notice Whether the last delegation that reached consensus still holds now (its
    /// expiration date is not past). False when none did, or a revocation came after it.
    function isUserDecryptionDelegated(uint256 chainId, address delegator, address delegate, address contractAddress)
        external
        view
        returns (bool)
    {
        return _delegated[chainId][delegator][delegate][contractAddress].expirationDate >= block.timestamp;
    }

    /// @notice Those who relayed it so far, before consensus too.
    function getAllowPublicDecryptConsensusTxSenders(bytes32 ctHandle) external view returns (address[] memory) {
        return _publicDecrypt[ctHandle].txSenders;
    }

    /// @notice Those who relayed it so far, before consensus too.
    function getAllowAccountConsensusTxSenders(bytes32 ctHandle, address accountAddress)
        external
        view
        returns (address[] memory)
    {
        return _accounts[ctHandle][accountAddress].txSenders;
    }

    /// @notice Those who relayed this exact delegation so far, before consensus too.
    function getDelegateUserDecryptionConsensusTxSenders(
        uint256 chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 expirationDate
    ) external view returns (address[] memory) {
        return _delegations[_delegationHash(chainId, delegator, delegate, contractAddress, delegationCounter, expirationDate)]
            .txSenders;
    }

    /// @notice Those who relayed this exact revocation so far, before consensus too.
    function getRevokeUserDecryptionDelegationConsensusTxSenders(
        uint256 chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 expirationDate
    ) external view returns (address[] memory) {
        return _revocations[_delegationHash(chainId, delegator, delegate, contractAddress, delegationCounter, expirationDate)]
            .txSenders;
    }

    /// @notice Zama's contract name and the version of its ABI that this contract implements.
    function getVersion() external pure returns (string memory) {
        return "MultichainACL v0.3.0";
    }

    function _cast(Votes storage votes) private {
        votes.cast[msg.sender] = true;
        votes.txSenders.push(msg.sender);
    }

    /// True exactly once: for the vote that brings the count to the threshold.
    function _reachesConsensus(Votes storage votes) private returns (bool) {
        if (votes.reached || !_isConsensusReached(votes.txSenders.length)) return false;
        votes.reached = true;
        return true;
    }

    /// A coprocessor relays given arguments once, as a delegation or as a revocation.
    function _checkNotRelayed(
        bytes32 hash,
        uint256 chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 expirationDate
    ) private view {
        if (_delegations[hash].cast[msg.sender]) {
            revert CoprocessorAlreadyDelegatedUserDecryption(
                chainId, delegator, delegate, contractAddress, delegationCounter, expirationDate, msg.sender
            );
        }
        if (_revocations[hash].cast[msg.sender]) {
            revert CoprocessorAlreadyRevokedUserDecryption(
                chainId, delegator, delegate, contractAddress, delegationCounter, expirationDate, msg.sender
            );
        }
    }

    /// Record a delegation or revocation that reached consensus; returns the expiration date
    /// it replaces. A counter not above the last applied one means it is stale.
    function _apply(
        uint256 chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 expirationDate
    ) private returns (uint64 oldExpirationDate) {
        UserDecryptionDelegation storage delegation = _delegated[chainId][delegator][delegate][contractAddress];
        if (delegationCounter <= delegation.delegationCounter) {
            revert UserDecryptionDelegationCounterTooLow(delegationCounter);
        }
        oldExpirationDate = delegation.expirationDate;
        delegation.delegationCounter = delegationCounter;
        delegation.expirationDate = expirationDate;
    }

    function _delegationHash(
        uint256 chainId,
        address delegator,
        address delegate,
        address contractAddress,
        uint64 delegationCounter,
        uint64 expirationDate
    ) private pure returns (bytes32) {
        return keccak256(abi.encode(chainId, delegator, delegate, contractAddress, delegationCounter, expirationDate));
    }
}
