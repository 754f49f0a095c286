// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

import {FHE, ebool, euint64, externalEuint64} from "@fhevm/solidity/lib/FHE.sol";
import {CoprocessorConfig} from "@fhevm/solidity/lib/Impl.sol";

/// @notice A confidential token written the way fhEVM dapps are: on Zama's FHE library,
/// against Zama's host contracts (ACL, FHEVMExecutor, KMSVerifier) at the addresses the
/// constructor is given. Balances are euint64 handles; a transfer larger than the
/// sender's balance moves nothing, without revealing it. Dev and test only.
contract ConfidentialToken {
    address public immutable owner;
    mapping(address holder => euint64) private _balances;

    event Mint(address indexed to, uint64 amount);
    event Transfer(address indexed from, address indexed to);

    error OnlyOwner();

    constructor(address acl, address executor, address kmsVerifier) {
        owner = msg.sender;
        FHE.setCoprocessor(
            CoprocessorConfig({ACLAddress: acl, CoprocessorAddress: executor, KMSVerifierAddress: kmsVerifier})
        );
    }

    /// @notice Add a plaintext amount (a scalar FheAdd on the balance) to `to`'s balance.
    function mint(address to, uint64 amount) external {
        if (msg.sender != owner) revert OnlyOwner();
        euint64 balance = FHE.add(_balances[to], amount);
        _setBalance(to, balance);
        emit Mint(to, amount);
    }

    /// @notice Transfer an amount the sender encrypted (input handle + proof from the gateway).
    function transfer(address to, externalEuint64 amount, bytes calldata inputProof) external {
        _transfer(msg.sender, to, FHE.fromExternal(amount, inputProof));
    }

    /// @notice Transfer a plaintext amount, trivially encrypted on chain (until inputs land).
    function transferTrivial(address to, uint64 amount) external {
        _transfer(msg.sender, to, FHE.asEuint64(amount));
    }

    /// @notice Let `viewer` decrypt the sender's balance: an ACL grant with no computation
    /// (the coprocessor publishes a handle however late it is allowed).
    function shareBalance(address viewer) external {
        FHE.allow(_balances[msg.sender], viewer);
    }

    function balanceOf(address holder) external view returns (euint64) {
        return _balances[holder];
    }

    function _transfer(address from, address to, euint64 amount) internal {
        ebool enough = FHE.le(amount, _balances[from]);
        euint64 moved = FHE.select(enough, amount, FHE.asEuint64(0));
        _setBalance(from, FHE.sub(_balances[from], moved));
        _setBalance(to, FHE.add(_balances[to], moved));
        emit Transfer(from, to);
    }

    function _setBalance(address holder, euint64 balance) internal {
        _balances[holder] = balance;
        FHE.allowThis(balance);
        FHE.allow(balance, holder);
    }
}
