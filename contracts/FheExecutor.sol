// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

import {ACL} from "./ACL.sol";

/// @notice Symbolic FHE operations: each call derives the result handle and emits one
/// event; the coprocessor's host listener turns the events into computations.
/// Handles are derived exactly as coprocessor/types.py `derive_handle` does:
///   prehandle = keccak256("fhe-coprocessor/computed" | op | (uint16 len | operand)* | caller)
///   handle    = prehandle[0..21] | 0xff | chain id (8 bytes) | result type | version
/// where a handle operand is its 32 bytes, a random seed its 16 bytes, and any other
/// plaintext operand (scalar, trivial value, bound) its minimal big-endian bytes.
/// The caller must be allowed (ACL) on every handle operand, and is granted the result.
contract FheExecutor {
    uint8 internal constant HANDLE_VERSION = 0;
    uint8 internal constant BOOL = 0;
    uint8 internal constant OP_NEG = 20;
    uint8 internal constant OP_NOT = 21;
    uint8 internal constant OP_CAST = 23;
    uint8 internal constant OP_TRIVIAL_ENCRYPT = 24;
    uint8 internal constant OP_IF_THEN_ELSE = 25;
    uint8 internal constant OP_RAND = 26;
    uint8 internal constant OP_RAND_BOUNDED = 27;

    event FheAdd(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheSub(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheMul(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheDiv(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheRem(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheBitAnd(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheBitOr(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheBitXor(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheShl(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheShr(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheRotl(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheRotr(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheEq(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheNe(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheGe(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheGt(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheLe(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheLt(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheMin(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheMax(address indexed caller, bytes32 lhs, bytes32 rhs, bytes1 scalarByte, bytes32 result);
    event FheNeg(address indexed caller, bytes32 ct, bytes32 result);
    event FheNot(address indexed caller, bytes32 ct, bytes32 result);
    event Cast(address indexed caller, bytes32 ct, uint8 toType, bytes32 result);
    event TrivialEncrypt(address indexed caller, uint256 pt, uint8 toType, bytes32 result);
    event FheIfThenElse(address indexed caller, bytes32 control, bytes32 ifTrue, bytes32 ifFalse, bytes32 result);
    event FheRand(address indexed caller, uint8 randType, bytes16 seed, bytes32 result);
    event FheRandBounded(address indexed caller, uint256 upperBound, uint8 randType, bytes16 seed, bytes32 result);

    error UnknownOperation(uint8 op);
    error ScalarNotAllowed(uint8 op);
    error TypeMismatch(uint8 lhsType, uint8 rhsType);
    error UnknownType(uint8 typeCode);
    error NotAllowed(bytes32 handle, address caller);

    ACL public immutable acl;

    constructor(ACL acl_) {
        acl = acl_;
    }

    uint8 internal constant MAX_TYPE = 11; // Bytes256

    uint256 private randCounter;

    /// @notice Binary operations 0..19 (Add .. Max); rhs is a handle, or a plaintext
    /// number when scalarByte is 0x01.
    function fheBinaryOp(uint8 op, bytes32 lhs, bytes32 rhs, bytes1 scalarByte) public returns (bytes32 result) {
        if (op > 19) revert UnknownOperation(op);
        bool scalar = scalarByte == 0x01;
        _checkType(typeOf(lhs));
        _use(lhs);
        if (!scalar) _use(rhs);
        if (!scalar && typeOf(lhs) != typeOf(rhs)) revert TypeMismatch(typeOf(lhs), typeOf(rhs));
        uint8 resultType = (op >= 12 && op <= 17) ? BOOL : typeOf(lhs);
        bytes memory operands = scalar
            ? abi.encodePacked(_operand(lhs), _operand(minimalBytes(uint256(rhs))))
            : abi.encodePacked(_operand(lhs), _operand(rhs));
        result = _result(op, operands, resultType);
        _emitBinary(op, lhs, rhs, scalarByte, result);
    }

    function fheNeg(bytes32 ct) external returns (bytes32 result) {
        _checkType(typeOf(ct));
        _use(ct);
        result = _result(OP_NEG, _operand(ct), typeOf(ct));
        emit FheNeg(msg.sender, ct, result);
    }

    function fheNot(bytes32 ct) external returns (bytes32 result) {
        _checkType(typeOf(ct));
        _use(ct);
        result = _result(OP_NOT, _operand(ct), typeOf(ct));
        emit FheNot(msg.sender, ct, result);
    }

    function cast(bytes32 ct, uint8 toType) external returns (bytes32 result) {
        _checkType(typeOf(ct));
        _checkType(toType);
        _use(ct);
        result = _result(OP_CAST, _operand(ct), toType);
        emit Cast(msg.sender, ct, toType, result);
    }

    function trivialEncrypt(uint256 pt, uint8 toType) external returns (bytes32 result) {
        _checkType(toType);
        result = _result(OP_TRIVIAL_ENCRYPT, _operand(minimalBytes(pt)), toType);
        emit TrivialEncrypt(msg.sender, pt, toType, result);
    }

    function fheIfThenElse(bytes32 control, bytes32 ifTrue, bytes32 ifFalse) external returns (bytes32 result) {
        if (typeOf(control) != BOOL) revert TypeMismatch(typeOf(control), BOOL);
        if (typeOf(ifTrue) != typeOf(ifFalse)) revert TypeMismatch(typeOf(ifTrue), typeOf(ifFalse));
        _checkType(typeOf(ifTrue));
        _use(control);
        _use(ifTrue);
        _use(ifFalse);
        bytes memory operands = abi.encodePacked(_operand(control), _operand(ifTrue), _operand(ifFalse));
        result = _result(OP_IF_THEN_ELSE, operands, typeOf(ifTrue));
        emit FheIfThenElse(msg.sender, control, ifTrue, ifFalse, result);
    }

    function fheRand(uint8 randType) external returns (bytes32 result) {
        _checkType(randType);
        bytes16 seed = _nextSeed();
        result = _result(OP_RAND, _seedOperand(seed), randType);
        emit FheRand(msg.sender, randType, seed, result);
    }

    function fheRandBounded(uint256 upperBound, uint8 randType) external returns (bytes32 result) {
        _checkType(randType);
        bytes16 seed = _nextSeed();
        bytes memory operands = abi.encodePacked(_operand(minimalBytes(upperBound)), _seedOperand(seed));
        result = _result(OP_RAND_BOUNDED, operands, randType);
        emit FheRandBounded(msg.sender, upperBound, randType, seed, result);
    }

    // --- handles ------------------------------------------------------------------------

    function typeOf(bytes32 handle) public pure returns (uint8) {
        return uint8(uint256(handle) >> 8);
    }

    function deriveHandle(uint8 op, bytes memory operands, address context, uint8 resultType)
        public view returns (bytes32)
    {
        bytes32 prehandle = keccak256(abi.encodePacked("fhe-coprocessor/computed", op, operands, context));
        uint256 value = uint256(prehandle) & (type(uint256).max << 88);
        value |= uint256(0xff) << 80;
        value |= uint256(uint64(block.chainid)) << 16;
        value |= uint256(resultType) << 8;
        value |= uint256(HANDLE_VERSION);
        return bytes32(value);
    }

    /// @notice The shortest big-endian bytes of `value` (one byte for zero).
    function minimalBytes(uint256 value) public pure returns (bytes memory out) {
        uint256 length = 1;
        while (length < 32 && (value >> (8 * length)) != 0) length++;
        out = new bytes(length);
        for (uint256 i = 0; i < length; i++) {
            out[length - 1 - i] = bytes1(uint8(value >> (8 * i)));
        }
    }

    function _operand(bytes32 handle) internal pure returns (bytes memory) {
        return abi.encodePacked(uint16(32), handle);
    }

    function _operand(bytes memory plaintext) internal pure returns (bytes memory) {
        return abi.encodePacked(uint16(plaintext.length), plaintext);
    }

    function _use(bytes32 handle) internal view {
        if (!acl.isAllowed(handle, msg.sender)) revert NotAllowed(handle, msg.sender);
    }

    function _result(uint8 op, bytes memory operands, uint8 resultType) internal returns (bytes32 result) {
        result = deriveHandle(op, operands, msg.sender, resultType);
        acl.allowFromExecutor(result, msg.sender);
    }

    function _checkType(uint8 typeCode) internal pure {
        if (typeCode > MAX_TYPE) revert UnknownType(typeCode);
    }

    function _seedOperand(bytes16 seed) internal pure returns (bytes memory) {
        return abi.encodePacked(uint16(16), seed);
    }

    function _nextSeed() internal returns (bytes16) {
        randCounter += 1;
        return bytes16(keccak256(abi.encodePacked(address(this), block.chainid, randCounter)));
    }

    function _emitBinary(uint8 op, bytes32 lhs, bytes32 rhs, bytes1 s, bytes32 r) internal {
        address c = msg.sender;
        if (op == 0) emit FheAdd(c, lhs, rhs, s, r);
        else if (op == 1) emit FheSub(c, lhs, rhs, s, r);
        else if (op == 2) emit FheMul(c, lhs, rhs, s, r);
        else if (op == 3) emit FheDiv(c, lhs, rhs, s, r);
        else if (op == 4) emit FheRem(c, lhs, rhs, s, r);
        else if (op == 5) emit FheBitAnd(c, lhs, rhs, s, r);
        else if (op == 6) emit FheBitOr(c, lhs, rhs, s, r);
        else if (op == 7) emit FheBitXor(c, lhs, rhs, s, r);
        else if (op == 8) emit FheShl(c, lhs, rhs, s, r);
        else if (op == 9) emit FheShr(c, lhs, rhs, s, r);
        else if (op == 10) emit FheRotl(c, lhs, rhs, s, r);
        else if (op == 11) emit FheRotr(c, lhs, rhs, s, r);
        else if (op == 12) emit FheEq(c, lhs, rhs, s, r);
        else if (op == 13) emit FheNe(c, lhs, rhs, s, r);
        else if (op == 14) emit FheGe(c, lhs, rhs, s, r);
        else if (op == 15) emit FheGt(c, lhs, rhs, s, r);
        else if (op == 16) emit FheLe(c, lhs, rhs, s, r);
        else if (op == 17) emit FheLt(c, lhs, rhs, s, r);
        else if (op == 18) emit FheMin(c, lhs, rhs, s, r);
        else emit FheMax(c, lhs, rhs, s, r);
    }
}
