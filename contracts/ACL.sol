// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

/// @notice Who may use or decrypt a handle. The coprocessor's host listener records the
/// events in `allowed_handles`; the SNS stage publishes handles allowed for decryption.
contract ACL {
    event Allowed(address indexed caller, address indexed account, bytes32 handle);
    event AllowedForDecryption(address indexed caller, bytes32[] handlesList);

    error NotAllowed(address caller, bytes32 handle);

    mapping(bytes32 => mapping(address => bool)) private persisted;

    /// @notice Grant `account` use of `handle`. The first grant of a handle is made by
    /// whoever produced it; after that only an account that holds it may share it.
    function allow(bytes32 handle, address account) external {
        if (!persisted[handle][msg.sender] && _hasHolder(handle)) revert NotAllowed(msg.sender, handle);
        persisted[handle][account] = true;
        persisted[handle][msg.sender] = true;
        holders[handle] = true;
        emit Allowed(msg.sender, account, handle);
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

    mapping(bytes32 => bool) private holders;

    function _hasHolder(bytes32 handle) internal view returns (bool) {
        return holders[handle];
    }
}
