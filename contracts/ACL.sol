// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

/// @notice Who may use or decrypt a handle. The coprocessor's host listener records the
/// events in `allowed_handles`; the SNS stage publishes handles allowed for decryption.
///
/// A computed handle is granted by the executor to the contract that computed it;
/// after that only a holder may share it. An input handle (index byte != 0xff) is
/// claimed by the first account that calls `claimInput` - the stand-in for fhEVM's
/// input verifier until on-chain ZK input proofs exist.
contract ACL {
    event Allowed(address indexed caller, address indexed account, bytes32 handle);
    event AllowedForDecryption(address indexed caller, bytes32[] handlesList);

    error NotAllowed(address caller, bytes32 handle);
    error NotExecutor(address caller);
    error ExecutorAlreadySet();
    error NotAnInput(bytes32 handle);
    error AlreadyClaimed(bytes32 handle);

    address public immutable deployer;
    address public executor;
    mapping(bytes32 => mapping(address => bool)) private persisted;
    mapping(bytes32 => bool) private held;

    constructor() {
        deployer = msg.sender;
    }

    /// @notice Set once, by the deployer, right after deploying the executor.
    function setExecutor(address executor_) external {
        if (msg.sender != deployer) revert NotAllowed(msg.sender, bytes32(0));
        if (executor != address(0)) revert ExecutorAlreadySet();
        executor = executor_;
    }

    /// @notice The executor grants a computed handle to the contract that computed it.
    function allowFromExecutor(bytes32 handle, address account) external {
        if (msg.sender != executor) revert NotExecutor(msg.sender);
        _grant(handle, account);
    }

    /// @notice Claim a never-seen input handle for the caller.
    function claimInput(bytes32 handle) external {
        if (uint8(uint256(handle) >> 80) == 0xff) revert NotAnInput(handle);
        if (held[handle]) revert AlreadyClaimed(handle);
        _grant(handle, msg.sender);
    }

    /// @notice A holder shares a handle with `account`.
    function allow(bytes32 handle, address account) external {
        if (!persisted[handle][msg.sender]) revert NotAllowed(msg.sender, handle);
        _grant(handle, account);
    }

    function allowForDecryption(bytes32[] calldata handlesList) external {
        for (uint256 i = 0; i < handlesList.length; i++) {
            if (!persisted[handlesList[i]][msg.sender]) revert NotAllowed(msg.sender, handlesList[i]);
        }
        emit AllowedForDecryption(msg.sender, handlesList);
    }

    function isAllowed(bytes32 handle, address account) external view returns (bool) {
        return persisted[handle][account];
    }

    function _grant(bytes32 handle, address account) internal {
        persisted[handle][account] = true;
        held[handle] = true;
        emit Allowed(msg.sender, account, handle);
    }
}
