// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

/// @notice For tests only: emits events shaped exactly like Zama's FHEVMExecutor's and
/// ACL's (same signatures, so the same topics: tests/integration/chain/test_host_chain.py
/// checks them against the compiled host ABIs) with whatever the caller says, from an
/// address that is neither. The host listener must refuse them (not the executor, wrong
/// handles, bad type bytes, an event it does not know) next to good ones.
contract RogueExecutor {
    // FHEVMExecutor's (@fhevm/host-contracts FHEEvents)
    event FheAdd(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event TrivialEncrypt(address indexed caller, uint256 pt, uint8 toType, bytes32 result);
    event FheIfThenElse(address indexed caller, bytes32 control, bytes32 ifTrue, bytes32 ifFalse, bytes32 result);
    // ACL's (@fhevm/host-contracts ACLEvents)
    event Allowed(address indexed caller, address indexed account, bytes32 handle);
    event AllowedForDecryption(address indexed caller, bytes32[] handlesList);
    // No host emits this one.
    event FheTeleport(address indexed caller, bytes32 ct, bytes32 result);

    function emitAdd(bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result) external {
        emit FheAdd(msg.sender, lhs, rhs, scalarByte, result);
    }

    /// Two events in one transaction: the listener must refuse the transaction whole
    /// when one of them is bad.
    function emitAddPair(bytes32 lhs, bytes32 rhs, bytes32 first, bytes32 second) external {
        emit FheAdd(msg.sender, lhs, rhs, 0x00, first);
        emit FheAdd(msg.sender, rhs, lhs, 0x00, second);
    }

    function emitTrivialEncrypt(uint256 pt, uint8 toType, bytes32 result) external {
        emit TrivialEncrypt(msg.sender, pt, toType, result);
    }

    function emitIfThenElse(bytes32 control, bytes32 ifTrue, bytes32 ifFalse, bytes32 result) external {
        emit FheIfThenElse(msg.sender, control, ifTrue, ifFalse, result);
    }

    function emitAllowed(address account, bytes32 handle) external {
        emit Allowed(msg.sender, account, handle);
    }

    function emitAllowedForDecryption(bytes32[] calldata handlesList) external {
        emit AllowedForDecryption(msg.sender, handlesList);
    }

    function emitTeleport(bytes32 ct, bytes32 result) external {
        emit FheTeleport(msg.sender, ct, result);
    }
}
