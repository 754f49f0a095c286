// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

/// @notice For tests only: emits executor-shaped events with whatever the caller says,
/// so the host listener can be shown logs it must refuse (wrong handles, bad type
/// bytes, an event it does not know) next to good ones.
contract RogueExecutor {
    event FheAdd(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
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

    function emitTeleport(bytes32 ct, bytes32 result) external {
        emit FheTeleport(msg.sender, ct, result);
    }
}
