// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

import {FHE, ebool, euint8, euint32, euint64} from "@fhevm/solidity/lib/FHE.sol";
import {CoprocessorConfig} from "@fhevm/solidity/lib/Impl.sol";

/// @notice Every operation kind Zama's host FHEVMExecutor (v0.10) emits, one function each,
/// so tests see each event from the real contracts. Operands are plaintext arguments,
/// trivially encrypted on chain; a binary op runs in its encrypted form (both operands
/// handles) and its scalar form (right operand plaintext), except Div and Rem, which the
/// host takes only with a scalar divisor. Every result is kept (`results`), allowed to
/// this contract (`Allowed`) and made publicly decryptable (`AllowedForDecryption`).
/// Dev and test only.
contract AllOps {
    bytes32[] public results;

    event Kept(bytes32 handle);

    constructor(address acl, address executor, address kmsVerifier) {
        FHE.setCoprocessor(
            CoprocessorConfig({ACLAddress: acl, CoprocessorAddress: executor, KMSVerifierAddress: kmsVerifier})
        );
    }

    function resultCount() external view returns (uint256) {
        return results.length;
    }

    // --- arithmetic ------------------------------------------------------------------

    function add(uint64 a, uint64 b) external {
        _keep(FHE.add(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.add(FHE.asEuint64(a), b));
    }

    function sub(uint64 a, uint64 b) external {
        _keep(FHE.sub(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.sub(FHE.asEuint64(a), b));
    }

    function mul(uint64 a, uint64 b) external {
        _keep(FHE.mul(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.mul(FHE.asEuint64(a), b));
    }

    /// `b` must not be 0 (the host refuses a zero divisor).
    function div(uint64 a, uint64 b) external {
        _keep(FHE.div(FHE.asEuint64(a), b));
    }

    function rem(uint64 a, uint64 b) external {
        _keep(FHE.rem(FHE.asEuint64(a), b));
    }

    // --- bitwise ---------------------------------------------------------------------

    function bitAnd(uint64 a, uint64 b) external {
        _keep(FHE.and(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.and(FHE.asEuint64(a), b));
    }

    function bitOr(uint64 a, uint64 b) external {
        _keep(FHE.or(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.or(FHE.asEuint64(a), b));
    }

    function bitXor(uint64 a, uint64 b) external {
        _keep(FHE.xor(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.xor(FHE.asEuint64(a), b));
    }

    // --- shifts and rotations (the encrypted amount is a euint8 the library casts) ------

    function shl(uint64 a, uint8 b) external {
        _keep(FHE.shl(FHE.asEuint64(a), FHE.asEuint8(b)));
        _keep(FHE.shl(FHE.asEuint64(a), b));
    }

    function shr(uint64 a, uint8 b) external {
        _keep(FHE.shr(FHE.asEuint64(a), FHE.asEuint8(b)));
        _keep(FHE.shr(FHE.asEuint64(a), b));
    }

    function rotl(uint64 a, uint8 b) external {
        _keep(FHE.rotl(FHE.asEuint64(a), FHE.asEuint8(b)));
        _keep(FHE.rotl(FHE.asEuint64(a), b));
    }

    function rotr(uint64 a, uint8 b) external {
        _keep(FHE.rotr(FHE.asEuint64(a), FHE.asEuint8(b)));
        _keep(FHE.rotr(FHE.asEuint64(a), b));
    }

    // --- comparisons (results are ebool) -------------------------------------------------

    function eq(uint64 a, uint64 b) external {
        _keep(FHE.eq(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.eq(FHE.asEuint64(a), b));
    }

    function ne(uint64 a, uint64 b) external {
        _keep(FHE.ne(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.ne(FHE.asEuint64(a), b));
    }

    function ge(uint64 a, uint64 b) external {
        _keep(FHE.ge(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.ge(FHE.asEuint64(a), b));
    }

    function gt(uint64 a, uint64 b) external {
        _keep(FHE.gt(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.gt(FHE.asEuint64(a), b));
    }

    function le(uint64 a, uint64 b) external {
        _keep(FHE.le(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.le(FHE.asEuint64(a), b));
    }

    function lt(uint64 a, uint64 b) external {
        _keep(FHE.lt(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.lt(FHE.asEuint64(a), b));
    }

    function min(uint64 a, uint64 b) external {
        _keep(FHE.min(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.min(FHE.asEuint64(a), b));
    }

    function max(uint64 a, uint64 b) external {
        _keep(FHE.max(FHE.asEuint64(a), FHE.asEuint64(b)));
        _keep(FHE.max(FHE.asEuint64(a), b));
    }

    // --- unary, cast, trivial encryption, select ----------------------------------------

    function neg(uint64 a) external {
        _keep(FHE.neg(FHE.asEuint64(a)));
    }

    function not(uint64 a) external {
        _keep(FHE.not(FHE.asEuint64(a)));
    }

    /// Uint64 -> Uint32 (narrowing) and Uint8 -> Uint64 (widening).
    function cast(uint64 a, uint8 b) external {
        _keep(FHE.asEuint32(FHE.asEuint64(a)));
        _keep(FHE.asEuint64(FHE.asEuint8(b)));
    }

    function trivialEncrypt(uint64 a) external {
        _keep(FHE.asEuint64(a));
    }

    function trivialEncryptBool(bool a) external {
        _keep(FHE.asEbool(a));
    }

    function select(bool control, uint64 a, uint64 b) external {
        _keep(FHE.select(FHE.asEbool(control), FHE.asEuint64(a), FHE.asEuint64(b)));
    }

    // --- randomness (the host seeds it from a counter and the previous block) -----------

    function rand() external {
        _keep(FHE.randEuint64());
        _keep(FHE.randEuint8());
    }

    /// `bound` must be a power of two.
    function randBounded(uint64 bound) external {
        _keep(FHE.randEuint64(bound));
    }

    // --- keeping results -------------------------------------------------------------------

    function _keep(euint64 value) internal {
        FHE.allowThis(value);
        FHE.makePubliclyDecryptable(value);
        _record(euint64.unwrap(value));
    }

    function _keep(euint32 value) internal {
        FHE.allowThis(value);
        FHE.makePubliclyDecryptable(value);
        _record(euint32.unwrap(value));
    }

    function _keep(euint8 value) internal {
        FHE.allowThis(value);
        FHE.makePubliclyDecryptable(value);
        _record(euint8.unwrap(value));
    }

    function _keep(ebool value) internal {
        FHE.allowThis(value);
        FHE.makePubliclyDecryptable(value);
        _record(ebool.unwrap(value));
    }

    function _record(bytes32 handle) internal {
        results.push(handle);
        emit Kept(handle);
    }
}
