// SPDX-License-Identifier: BSD-3-Clause-Clear
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {GatewayConfigChecks} from "./GatewayConfigChecks.sol";

/// @notice Where input proofs meet the coprocessors' verdicts. A relayer posts a user's
/// ciphertext list with its ZK proof (`verifyProofRequest`); every coprocessor verifies it and
/// answers with the handles it derived, signed by its signer key over EIP-712
/// `CiphertextVerification`, or with a rejection. Once the coprocessor threshold of
/// GatewayConfig agreed, `VerifyProofResponse` carries the handles and the agreeing
/// signatures: the input proof a host chain's InputVerifier checks, so no single coprocessor
/// decides which handles a user's input becomes. The ABI is Zama's IInputVerification (v0.11),
/// with the errors Zama's implementation raises (its signer checks, OpenZeppelin's ECDSA) and
/// its ERC-5267 `eip712Domain`. Unlike Zama's: no proxy, no pausing and no request fee.
///
/// Responses are counted per EIP-712 digest, so only coprocessors that signed the same
/// handles (and extraData) agree. Each coprocessor answers a request once, verdict either way;
/// answers after a verdict was reached are recorded but emit no second consensus event, and
/// a request that reached one verdict never reaches the other.
contract InputVerification is GatewayConfigChecks {
    /// What a response is signed against: the request's parties, kept from the request.
    struct ZKProofInput {
        uint256 contractChainId;
        address contractAddress;
        address userAddress;
    }

    enum Response {
        None,
        Verified,
        Rejected
    }

    bytes32 private constant DOMAIN_TYPE_HASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant CIPHERTEXT_VERIFICATION_TYPE_HASH = keccak256(
        "CiphertextVerification(bytes32[] ctHandles,address userAddress,address contractAddress,uint256 contractChainId,bytes extraData)"
    );
    string private constant DOMAIN_NAME = "InputVerification";
    string private constant DOMAIN_VERSION = "1";

    /// The domain separator of the chain deployed on; recomputed on a fork with another id.
    bytes32 private immutable _cachedDomainSeparator;
    uint256 private immutable _cachedChainId;

    uint256 private _zkProofIdCounter;
    mapping(uint256 zkProofId => ZKProofInput) private _inputs;
    mapping(uint256 zkProofId => mapping(address signer => Response)) private _responses;
    mapping(uint256 zkProofId => mapping(bytes32 digest => bytes[] signatures)) private _signatures;
    mapping(uint256 zkProofId => mapping(bytes32 digest => address[] txSenders)) private _verifyTxSenders;
    mapping(uint256 zkProofId => address[] txSenders) private _rejectTxSenders;
    mapping(uint256 zkProofId => bool) private _verified;
    mapping(uint256 zkProofId => bool) private _rejected;
    mapping(uint256 zkProofId => bytes32 digest) private _verifiedDigest;

    event VerifyProofRequest(
        uint256 indexed zkProofId,
        uint256 indexed contractChainId,
        address contractAddress,
        address userAddress,
        bytes ciphertextWithZKProof,
        bytes extraData
    );
    event VerifyProofResponseCall(
        uint256 indexed zkProofId, bytes32[] ctHandles, bytes signature, address coprocessorTxSender, bytes extraData
    );
    event VerifyProofResponse(uint256 indexed zkProofId, bytes32[] ctHandles, bytes[] signatures);
    event RejectProofResponseCall(uint256 indexed zkProofId, bytes extraData);
    event RejectProofResponse(uint256 indexed zkProofId);
    /// ERC-5267's; never emitted: the domain does not change.
    event EIP712DomainChanged();

    error CoprocessorAlreadyVerified(uint256 zkProofId, address txSender, address signer);
    error CoprocessorAlreadyRejected(uint256 zkProofId, address txSender, address signer);
    error VerifyProofNotRequested(uint256 zkProofId);
    error CoprocessorSignerDoesNotMatchTxSender(address signerAddress, address txSenderAddress);

    constructor(address gatewayConfig) GatewayConfigChecks(gatewayConfig) {
        _cachedChainId = block.chainid;
        _cachedDomainSeparator = _buildDomainSeparator();
    }

    /// @notice Ask the coprocessors to verify a proven ciphertext list; its id (1, 2, ...) is
    /// in the event. Anyone may ask (in Zama's network the relayer does, paying a fee); the
    /// contract's host chain must be one this gateway serves.
    function verifyProofRequest(
        uint256 contractChainId,
        address contractAddress,
        address userAddress,
        bytes calldata ciphertextWithZKProof,
        bytes calldata extraData
    ) external onlyRegisteredHostChain(contractChainId) {
        uint256 zkProofId = ++_zkProofIdCounter;
        _inputs[zkProofId] = ZKProofInput(contractChainId, contractAddress, userAddress);
        emit VerifyProofRequest(zkProofId, contractChainId, contractAddress, userAddress, ciphertextWithZKProof, extraData);
    }

    /// @notice A coprocessor's "valid": the handles it derived, signed by its registered signer.
    /// Only its tx sender may send it, so nobody replays a coprocessor's signature (after a
    /// reorg, say) to count a vote it did not cast. An empty handle list is valid (so is an
    /// empty input list).
    function verifyProofResponse(
        uint256 zkProofId,
        bytes32[] calldata ctHandles,
        bytes calldata signature,
        bytes calldata extraData
    ) external onlyCoprocessorTxSender {
        ZKProofInput storage input = _requested(zkProofId);
        bytes32 digest = _hashCiphertextVerification(
            ctHandles, input.userAddress, input.contractAddress, input.contractChainId, extraData
        );
        address signer = ECDSA.recover(digest, signature);
        _checkIsCoprocessorSigner(signer);
        if (_gatewayConfig.getCoprocessor(msg.sender).signerAddress != signer) {
            revert CoprocessorSignerDoesNotMatchTxSender(signer, msg.sender);
        }
        _checkNotResponded(zkProofId, signer);
        _responses[zkProofId][signer] = Response.Verified;
        bytes[] storage signatures = _signatures[zkProofId][digest];
        signatures.push(signature);
        _verifyTxSenders[zkProofId][digest].push(msg.sender);
        emit VerifyProofResponseCall(zkProofId, ctHandles, signature, msg.sender, extraData);
        if (!_verified[zkProofId] && !_rejected[zkProofId] && _isConsensusReached(signatures.length)) {
            _verified[zkProofId] = true;
            _verifiedDigest[zkProofId] = digest;
            emit VerifyProofResponse(zkProofId, ctHandles, signatures);
        }
    }

    /// @notice A coprocessor's "invalid". Unsigned: a rejection produces nothing a host chain
    /// checks, and `msg.sender` already says who rejects. Counted against the coprocessor's
    /// signer, like its verdicts, so it cannot both verify and reject.
    function rejectProofResponse(uint256 zkProofId, bytes calldata extraData) external onlyCoprocessorTxSender {
        _requested(zkProofId);
        address signer = _gatewayConfig.getCoprocessor(msg.sender).signerAddress;
        _checkNotResponded(zkProofId, signer);
        _responses[zkProofId][signer] = Response.Rejected;
        address[] storage rejecting = _rejectTxSenders[zkProofId];
        rejecting.push(msg.sender);
        emit RejectProofResponseCall(zkProofId, extraData);
        if (!_verified[zkProofId] && !_rejected[zkProofId] && _isConsensusReached(rejecting.length)) {
            _rejected[zkProofId] = true;
            emit RejectProofResponse(zkProofId);
        }
    }

    function isProofVerified(uint256 zkProofId) external view returns (bool) {
        return _verified[zkProofId];
    }

    function isProofRejected(uint256 zkProofId) external view returns (bool) {
        return _rejected[zkProofId];
    }

    /// @notice Those who signed the agreed handles, late ones included; empty before consensus.
    function getVerifyProofConsensusTxSenders(uint256 zkProofId) external view returns (address[] memory) {
        if (!_verified[zkProofId]) return new address[](0);
        return _verifyTxSenders[zkProofId][_verifiedDigest[zkProofId]];
    }

    /// @notice Those who rejected the proof so far, before consensus too (as Zama's).
    function getRejectProofConsensusTxSenders(uint256 zkProofId) external view returns (address[] memory) {
        return _rejectTxSenders[zkProofId];
    }

    /// @notice ERC-5267: the EIP-712 domain responses are signed in (name, version, chain id
    /// and this contract), so a signer can read it instead of assuming it.
    function eip712Domain()
        external
        view
        returns (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        )
    {
        return (hex"0f", DOMAIN_NAME, DOMAIN_VERSION, block.chainid, address(this), bytes32(0), new uint256[](0));
    }

    /// @notice Zama's contract name and the version of its ABI that this contract implements.
    function getVersion() external pure returns (string memory) {
        return "InputVerification v0.3.0";
    }

    function _requested(uint256 zkProofId) private view returns (ZKProofInput storage) {
        if (zkProofId == 0 || zkProofId > _zkProofIdCounter) revert VerifyProofNotRequested(zkProofId);
        return _inputs[zkProofId];
    }

    function _checkNotResponded(uint256 zkProofId, address signer) private view {
        Response response = _responses[zkProofId][signer];
        if (response == Response.Verified) revert CoprocessorAlreadyVerified(zkProofId, msg.sender, signer);
        if (response == Response.Rejected) revert CoprocessorAlreadyRejected(zkProofId, msg.sender, signer);
    }

    /// EIP-712: "\x19\x01" | domain separator | hashStruct(CiphertextVerification), where the
    /// bytes32[] and bytes members are hashed as keccak256 of their packed contents.
    function _hashCiphertextVerification(
        bytes32[] calldata ctHandles,
        address userAddress,
        address contractAddress,
        uint256 contractChainId,
        bytes calldata extraData
    ) private view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                CIPHERTEXT_VERIFICATION_TYPE_HASH,
                keccak256(abi.encodePacked(ctHandles)),
                userAddress,
                contractAddress,
                contractChainId,
                keccak256(extraData)
            )
        );
        bytes32 domainSeparator = block.chainid == _cachedChainId ? _cachedDomainSeparator : _buildDomainSeparator();
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator, structHash));
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN_TYPE_HASH,
                keccak256(bytes(DOMAIN_NAME)),
                keccak256(bytes(DOMAIN_VERSION)),
                block.chainid,
                address(this)
            )
        );
    }
}
