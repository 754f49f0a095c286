// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

import {ACL} from "./ACL.sol";
import {FheExecutor} from "./FheExecutor.sol";

/// @notice A confidential token: balances are Uint64 handles. `transfer` is the demo and
/// benchmark workload: Ge, Sub, Add and two IfThenElse per call (an insufficient
/// balance moves nothing, without revealing it).
contract ConfidentialERC20 {
    uint8 internal constant UINT64 = 5;
    uint8 internal constant OP_ADD = 0;
    uint8 internal constant OP_SUB = 1;
    uint8 internal constant OP_GE = 14;

    FheExecutor public immutable executor;
    ACL public immutable acl;
    address public immutable owner;
    mapping(address => bytes32) public balanceOf;

    event Transfer(address indexed from, address indexed to);

    error OnlyOwner();
    error NotAllowed(bytes32 handle);
    error SelfTransfer();

    constructor(FheExecutor executor_, ACL acl_) {
        executor = executor_;
        acl = acl_;
        owner = msg.sender;
    }

    /// @notice Give `to` a plaintext amount (trivially encrypted) on top of its balance.
    function mint(address to, uint64 amount) external {
        if (msg.sender != owner) revert OnlyOwner();
        bytes32 minted = executor.trivialEncrypt(amount, UINT64);
        bytes32 balance = _balance(to);
        _setBalance(to, executor.fheBinaryOp(OP_ADD, balance, minted, 0x00));
    }

    /// @notice Move an encrypted `amount` to `to`. The caller must hold the amount and
    /// have shared it with this contract (`acl.allow(amount, token)`).
    function transfer(address to, bytes32 amount) external {
        // Both balances are read before either is written: to == sender would credit
        // the amount on top of the debit.
        if (to == msg.sender) revert SelfTransfer();
        if (!acl.isAllowed(amount, msg.sender)) revert NotAllowed(amount);
        bytes32 fromBalance = _balance(msg.sender);
        bytes32 toBalance = _balance(to);
        bytes32 enough = executor.fheBinaryOp(OP_GE, fromBalance, amount, 0x00);
        bytes32 debited = executor.fheBinaryOp(OP_SUB, fromBalance, amount, 0x00);
        bytes32 credited = executor.fheBinaryOp(OP_ADD, toBalance, amount, 0x00);
        _setBalance(msg.sender, executor.fheIfThenElse(enough, debited, fromBalance));
        _setBalance(to, executor.fheIfThenElse(enough, credited, toBalance));
        emit Transfer(msg.sender, to);
    }

    function _balance(address account) internal returns (bytes32 balance) {
        balance = balanceOf[account];
        if (balance == bytes32(0)) {
            balance = executor.trivialEncrypt(0, UINT64);
        }
    }

    function _setBalance(address account, bytes32 balance) internal {
        balanceOf[account] = balance;
        acl.allow(balance, account);
        bytes32[] memory handles = new bytes32[](1);
        handles[0] = balance;
        acl.allowForDecryption(handles);
    }
}
