// Encrypted inputs made by Zama's own client SDK, @zama-fhe/relayer-sdk 0.4.3 (its
// bundled node-tfhe 1.4), the way a dapp front end makes them: createInstance, then
// createEncryptedInput(contract, user).add64(...). No Zama relayer is involved: the
// keys come from files, so the SDK never GETs `${relayerUrl}/keyurl`.
//
//   node sdk_input.js prove   COMMON --out FILE              Type:value...
//   node sdk_input.js encrypt COMMON --relayer-url URL
//                             [--network RPC | --signers A,B [--threshold K]] Type:value...
//   COMMON = --public-key FILE --crs FILE --contract A --user A --acl A --chain-id N
//            --gateway-chain-id N --input-verification A
//            [--input-verifier A --kms-verifier A --decryption A]
//
// prove:   writes ciphertextWithZKProof (the bytes the SDK would POST to the relayer)
//          to FILE; prints {handles, bytes, proveMs}, handles as the SDK computes them.
// encrypt: the SDK's real encrypt(): POST URL/input-proof, poll, check the signatures,
//          print {handles, inputProof}. URL is used as given (no /v2 appended);
//          --relayer-version 1 selects the old synchronous API. With --network (the host
//          chain's RPC) createInstance reads InputVerifier and KMSVerifier there and refuses
//          a config that differs: --input-verifier, --kms-verifier, --decryption,
//          --input-verification and --gateway-chain-id must then match the deployment.
//          Without it, --signers/--threshold (default 1) stand in for the chain's values.
// Types: Bool, Uint8, Uint16, Uint32, Uint64, Uint128, Uint256, Address (or Uint160).
// Needs NODE_PATH to hold @zama-fhe/relayer-sdk (and its ethers).
"use strict";
const fs = require("fs");
const path = require("path");
const sdk = require("@zama-fhe/relayer-sdk/node");
// The SDK's own ethers, not whichever one NODE_PATH finds first.
const ethers = require(require.resolve("ethers", {
  paths: [path.dirname(require.resolve("@zama-fhe/relayer-sdk/node"))],
}));

// createInstance insists on these host addresses even when only encrypting; the
// defaults are Zama's local deployment (FHEVM_WIRE.md), any distinct ones will do.
const DEFAULTS = {
  "input-verifier": "0x36772142b74871f255CbD7A3e89B401d3e45825f",
  "kms-verifier": "0x901F8942346f7AB3a01F6D7613119Bca447Bb030",
  decryption: "0x00000000000000000000000000000000000000dc",
  threshold: "1",
};

function parseArgs(argv) {
  const opts = { ...DEFAULTS };
  const items = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith("--")) opts[argv[i].slice(2)] = argv[++i];
    else items.push(argv[i]);
  }
  return { opts, items };
}

function usage(message) {
  console.error(`sdk_input.js: ${message}\n` +
    "usage: node sdk_input.js prove|encrypt --public-key F --crs F --contract A --user A " +
    "--acl A --chain-id N --gateway-chain-id N --input-verification A " +
    "(--out F | --relayer-url URL [--network RPC | --signers A,B --threshold K]) Type:value...");
  process.exit(2);
}

// createInstance always reads the host chain (eth_chainId, then eip712Domain(),
// getThreshold(), getCoprocessorSigners() on InputVerifier and the same with
// getKmsSigners() on KMSVerifier) and refuses a mismatch with its config. Without
// --network this in-process EIP-1193 provider answers those calls from our options.
function stubHost(opts, chainId, gatewayChainId) {
  const abi = new ethers.Interface([
    "function eip712Domain() view returns (bytes1, string, string, uint256, address, bytes32, uint256[])",
    "function getThreshold() view returns (uint256)",
    "function getCoprocessorSigners() view returns (address[])",
    "function getKmsSigners() view returns (address[])",
  ]);
  const signers = (opts.signers || "").split(",").filter(Boolean).map((a) => ethers.getAddress(a));
  const contracts = {
    [opts["input-verifier"].toLowerCase()]: ["InputVerification", opts["input-verification"], signers],
    [opts["kms-verifier"].toLowerCase()]: ["Decryption", opts.decryption, []],
  };
  const answer = (to, data) => {
    const [name, verifyingContract, list] = contracts[to.toLowerCase()] || [];
    const call = name && abi.parseTransaction({ data });
    if (!call) throw new Error(`stub host: no contract at ${to}`);
    const out = {
      eip712Domain: ["0x0f", name, "1", gatewayChainId, verifyingContract, ethers.ZeroHash, []],
      getThreshold: [BigInt(opts.threshold)],
      getCoprocessorSigners: [list],
      getKmsSigners: [list],
    }[call.name];
    return abi.encodeFunctionResult(call.fragment, out);
  };
  return {
    async request({ method, params }) {
      if (method === "eth_chainId") return ethers.toQuantity(chainId);
      if (method === "eth_call") return answer(params[0].to, params[0].data);
      throw new Error(`stub host: ${method} not served`);
    },
  };
}

function addValue(input, item) {
  const [type, raw] = item.split(":");
  switch (type) {
    case "Bool": return input.addBool(raw === "1" || raw === "true");
    case "Uint8": return input.add8(Number(raw));
    case "Uint16": return input.add16(Number(raw));
    case "Uint32": return input.add32(Number(raw));
    case "Uint64": return input.add64(BigInt(raw));
    case "Uint128": return input.add128(BigInt(raw));
    case "Uint256": return input.add256(BigInt(raw));
    case "Address": case "Uint160": // the SDK takes eaddress as a checksummed address
      return input.addAddress(ethers.getAddress(ethers.toBeHex(BigInt(raw), 20)));
    default: usage(`unknown type ${type}`);
  }
}

const hex = (bytes) => ethers.hexlify(bytes);

// tfhe 1.7 (our Rust side) writes the compact public key's CompactCiphertextListExpansionKind
// as version V1; the SDK's node-tfhe 1.4 knows only V0 and refuses the whole key ("expected
// variant index 0 <= i < 1"). For RequiresCasting, the only kind a key with dedicated
// compact-key parameters has, both versions encode alike, so setting that version index to
// 0 gives the very key 1.4 can read (and the lists it proves verify against the 1.7 bytes).
// The key ends with: kind version u32 | kind u32 | zk scheme version u32 | zk scheme u32 |
// tag version u32 | tag length u64 | tag. Anything else is left for the SDK to refuse.
function keyForSdk(bytes) {
  const view = Buffer.from(bytes);
  for (let tagLength = 0; tagLength <= 64 && tagLength + 28 <= view.length; tagLength++) {
    if (view.readBigUInt64LE(view.length - tagLength - 8) !== BigInt(tagLength)) continue;
    const at = view.length - tagLength - 28;
    const u32 = (offset) => view.readUInt32LE(at + offset);
    if (u32(0) === 1 && u32(4) === 0 && u32(8) === 0 && u32(12) <= 2 && u32(16) === 0) {
      const copy = new Uint8Array(view);
      copy[at] = 0;
      return copy;
    }
  }
  return new Uint8Array(view);
}

async function main() {
  const [mode, ...rest] = process.argv.slice(2);
  const { opts, items } = parseArgs(rest);
  if (mode !== "prove" && mode !== "encrypt") usage("mode must be prove or encrypt");
  for (const name of ["public-key", "crs", "contract", "user", "acl", "chain-id",
                      "gateway-chain-id", "input-verification"]) {
    if (!opts[name]) usage(`--${name} is required`);
  }
  if (mode === "prove" && !opts.out) usage("prove needs --out");
  if (mode === "encrypt" && !opts["relayer-url"]) usage("encrypt needs --relayer-url");
  if (items.length === 0) usage("give at least one Type:value");

  const chainId = Number(opts["chain-id"]);
  const gatewayChainId = Number(opts["gateway-chain-id"]);
  const address = (name) => ethers.getAddress(opts[name]); // the SDK wants checksummed ones
  const instance = await sdk.createInstance({
    aclContractAddress: address("acl"),
    inputVerifierContractAddress: address("input-verifier"),
    kmsContractAddress: address("kms-verifier"),
    verifyingContractAddressInputVerification: address("input-verification"),
    verifyingContractAddressDecryption: address("decryption"),
    chainId,
    gatewayChainId,
    network: opts.network || stubHost(opts, chainId, gatewayChainId),
    // prove never contacts it, but createInstance needs a well-formed URL.
    relayerUrl: opts["relayer-url"] || "http://127.0.0.1:9/unused",
    ...(opts["relayer-version"] ? { relayerRouteVersion: Number(opts["relayer-version"]) } : {}),
    // Exactly these shapes (Uint8Array data, string ids, the 2048 key): anything else
    // makes the SDK fall back, silently, to fetching the keys from the relayer.
    publicKey: { id: "local-public-key", data: keyForSdk(fs.readFileSync(opts["public-key"])) },
    publicParams: {
      2048: { publicParamsId: "local-crs-2048", publicParams: new Uint8Array(fs.readFileSync(opts.crs)) },
    },
  });

  const input = instance.createEncryptedInput(address("contract"), address("user"));
  for (const item of items) addValue(input, item);

  if (mode === "prove") {
    const started = Date.now();
    const zkProof = input.generateZKProof();
    const proveMs = Date.now() - started;
    fs.writeFileSync(opts.out, zkProof.ciphertextWithZKProof);
    // The handles encrypt() would expect back from the relayer (it refuses others).
    const handles = sdk.FhevmHandle.fromZKProof(zkProof).map((h) => h.toBytes32Hex());
    console.log(JSON.stringify({ handles, bytes: zkProof.ciphertextWithZKProof.length, proveMs }));
  } else {
    const { handles, inputProof } = await input.encrypt();
    console.log(JSON.stringify({ handles: handles.map(hex), inputProof: hex(inputProof) }));
  }
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : error);
  if (error && error.cause) console.error("cause:", error.cause);
  process.exit(1);
});
