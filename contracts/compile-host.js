// Compile Zama's fhEVM host contracts, unmodified, from node_modules (@fhevm/host-contracts,
// pinned in tools/versions.env) and our dapps on @fhevm/solidity (contracts/dapps/*.sol).
// Run by scripts/install after compile.js:
//   NODE_PATH=<npm dir>/node_modules node contracts/compile-host.js --deployer 0x<address>
//
// The host contracts read each other's addresses from compile-time constants in
// addresses/FHEVMHostAddresses.sol, a file the package does not ship. We generate it from
// the deployer's future nonces (docs: /work/shared/FHEVM_WIRE.md, "Deploying the host
// contracts"): EmptyUUPSProxyACL implementation (nonce 0), ACL proxy (1), EmptyUUPSProxy
// implementation (2), FHEVMExecutor, KMSVerifier, InputVerifier, HCULimit proxies (3-6),
// PauserSet (7). CREATE addresses depend on the deployer and the nonce only, not on the
// chain id, so the same file serves any chain the deployer starts fresh on.
//
// Outputs, {contract, source, package, solc, abi, bytecode} per contract as compile.js writes:
//   coprocessor/chain/compiled/host/   what a coprocessor reads at run time (package data):
//                                      ACL, FHEVMExecutor, InputVerifier, KMSVerifier, and
//                                      addresses.json (the addresses their bytecode assumes)
//   contracts/build/host/              what only deploying them needs: the empty proxies,
//                                      ERC1967Proxy, HCULimit, PauserSet, the generated
//                                      FHEVMHostAddresses.sol and addresses.json again
//   contracts/build/dapps/             contracts/dapps/*.sol (dev and tests only)
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");
const { keccak256 } = require("js-sha3"); // solc's own dependency

const here = __dirname;
const nodeModules = path.resolve(path.dirname(require.resolve("solc/package.json")), "..");
const HOST_PACKAGE = "@fhevm/host-contracts";
const ADDRESSES_SOURCE = `${HOST_PACKAGE}/addresses/FHEVMHostAddresses.sol`;
const SETTINGS = {
  optimizer: { enabled: true, runs: 800 },
  evmVersion: "cancun",
  viaIR: false,
};

// [constant in FHEVMHostAddresses.sol, name in addresses.json, deployer nonce]
const ADDRESS_NONCES = [
  ["aclAdd", "ACL", 1],
  ["fhevmExecutorAdd", "FHEVMExecutor", 3],
  ["kmsVerifierAdd", "KMSVerifier", 4],
  ["inputVerifierAdd", "InputVerifier", 5],
  ["hcuLimitAdd", "HCULimit", 6],
  ["pauserSetAdd", "PauserSet", 7],
];

// [source unit, contract, product (true) or dev build (false)]
const HOST_CONTRACTS = [
  [`${HOST_PACKAGE}/contracts/ACL.sol`, "ACL", true],
  [`${HOST_PACKAGE}/contracts/FHEVMExecutor.sol`, "FHEVMExecutor", true],
  [`${HOST_PACKAGE}/contracts/InputVerifier.sol`, "InputVerifier", true],
  [`${HOST_PACKAGE}/contracts/KMSVerifier.sol`, "KMSVerifier", true],
  [`${HOST_PACKAGE}/contracts/HCULimit.sol`, "HCULimit", false],
  [`${HOST_PACKAGE}/contracts/immutable/PauserSet.sol`, "PauserSet", false],
  [`${HOST_PACKAGE}/contracts/emptyProxy/EmptyUUPSProxy.sol`, "EmptyUUPSProxy", false],
  [`${HOST_PACKAGE}/contracts/emptyProxyACL/EmptyUUPSProxyACL.sol`, "EmptyUUPSProxyACL", false],
  ["@openzeppelin/contracts/proxy/ERC1967/ERC1967Proxy.sol", "ERC1967Proxy", false],
];

function fail(message) {
  console.error(`compile-host: ${message}`);
  process.exit(1);
}

function argument(name) {
  const at = process.argv.indexOf(name);
  return at >= 0 ? process.argv[at + 1] : undefined;
}

function checksum(hex40) {
  const lower = hex40.toLowerCase();
  const hash = keccak256(lower);
  let out = "0x";
  for (let i = 0; i < 40; i++) out += parseInt(hash[i], 16) >= 8 ? lower[i].toUpperCase() : lower[i];
  return out;
}

/** The address CREATE gives the nonce-th contract of `deployer`: keccak256(rlp([deployer, nonce]))[12:]. */
function createAddress(deployer, nonce) {
  if (!(nonce >= 0 && nonce < 0x80)) throw new Error("nonces above 127 are not needed here");
  const nonceRlp = nonce === 0 ? [0x80] : [nonce];
  const payload = [0x94, ...Buffer.from(deployer.slice(2), "hex"), ...nonceRlp];
  const encoded = Buffer.from([0xc0 + payload.length, ...payload]);
  return checksum(keccak256(encoded).slice(24));
}

function packageVersion(name) {
  return JSON.parse(fs.readFileSync(path.join(nodeModules, name, "package.json"), "utf8")).version;
}

function packageOf(sourceUnit) {
  const parts = sourceUnit.split("/");
  return sourceUnit.startsWith("@") ? `${parts[0]}/${parts[1]}` : parts[0];
}

/** Compiles `sources`; imports are read from node_modules and nowhere else. */
function compile(sources, selection) {
  const input = {
    language: "Solidity",
    sources,
    settings: { ...SETTINGS, outputSelection: selection },
  };
  const findImports = (name) => {
    const file = path.resolve(nodeModules, name);
    if (!file.startsWith(nodeModules + path.sep) || !fs.existsSync(file)) {
      return { error: `not found in ${nodeModules}: ${name}` };
    }
    return { contents: fs.readFileSync(file, "utf8") };
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  for (const message of output.errors || []) {
    if (message.severity === "error") console.error(message.formattedMessage);
  }
  if ((output.errors || []).some((e) => e.severity === "error")) fail("solc reported errors");
  return output.contracts;
}

function write(dir, name, sourceUnit, artifact) {
  const runtime = artifact.evm.deployedBytecode.object.length / 2;
  if (runtime > 24576) fail(`${name}'s runtime is ${runtime} bytes, above EIP-170's 24576`);
  const pkg = packageOf(sourceUnit);
  fs.writeFileSync(path.join(dir, `${name}.json`), JSON.stringify({
    contract: name,
    source: sourceUnit,
    package: fs.existsSync(path.join(nodeModules, pkg, "package.json"))
      ? `${pkg}@${packageVersion(pkg)}` : null,
    solc: solc.version(),
    settings: SETTINGS,
    abi: artifact.abi,
    bytecode: "0x" + artifact.evm.bytecode.object,
  }, null, 1));
  console.log(`compiled ${name} (${artifact.evm.bytecode.object.length / 2} bytes, runtime ${runtime})`);
}

function main() {
  const deployer = argument("--deployer");
  if (!deployer || !/^0x[0-9a-fA-F]{40}$/.test(deployer)) {
    fail("usage: compile-host.js --deployer 0x<20-byte address of the host deployer>");
  }
  const product = path.join(here, "..", "coprocessor", "chain", "compiled", "host");
  const devHost = path.join(here, "build", "host");
  const dapps = path.join(here, "build", "dapps");
  for (const dir of [product, devHost, dapps]) fs.mkdirSync(dir, { recursive: true });

  // The addresses, as a Solidity file for the compiler and as JSON for Python.
  const addresses = {};
  let constants = "";
  for (const [constant, name, nonce] of ADDRESS_NONCES) {
    addresses[name] = createAddress(deployer, nonce);
    constants += `address constant ${constant} = ${addresses[name]};\n`;
  }
  const addressesSol =
    "// SPDX-License-Identifier: BSD-3-Clause-Clear\n" +
    `// Generated by contracts/compile-host.js for deployer ${checksum(deployer.slice(2))}: do not edit.\n` +
    "pragma solidity ^0.8.24;\n\n" + constants;
  const record = JSON.stringify({
    deployer: checksum(deployer.slice(2)),
    // CREATE addresses do not depend on the chain: any chain where the deployer starts at nonce 0.
    chain_id: null,
    nonces: Object.fromEntries(ADDRESS_NONCES.map(([, name, nonce]) => [name, nonce])),
    addresses,
    // The implementations the proxies start on (nonces 0 and 2), before the real ones.
    empty_implementations: {
      EmptyUUPSProxyACL: createAddress(deployer, 0),
      EmptyUUPSProxy: createAddress(deployer, 2),
    },
    host_contracts: `${HOST_PACKAGE}@${packageVersion(HOST_PACKAGE)}`,
  }, null, 1);
  fs.writeFileSync(path.join(devHost, "FHEVMHostAddresses.sol"), addressesSol);
  fs.writeFileSync(path.join(devHost, "addresses.json"), record);
  fs.writeFileSync(path.join(product, "addresses.json"), record);

  // The host contracts: their own files from node_modules, plus the generated addresses.
  const hostSources = { [ADDRESSES_SOURCE]: { content: addressesSol } };
  const hostSelection = {};
  for (const [unit, name] of HOST_CONTRACTS) {
    hostSources[unit] = { content: fs.readFileSync(path.join(nodeModules, unit), "utf8") };
    hostSelection[unit] = { [name]: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] };
  }
  const host = compile(hostSources, hostSelection);
  for (const [unit, name, isProduct] of HOST_CONTRACTS) {
    if (!host[unit] || !host[unit][name]) fail(`solc gave no ${name} from ${unit}`);
    write(isProduct ? product : devHost, name, unit, host[unit][name]);
  }

  // Our dapps on @fhevm/solidity, same settings.
  const dappSources = {};
  const dappSelection = {};
  const dappDir = path.join(here, "dapps");
  const dappFiles = fs.existsSync(dappDir) ? fs.readdirSync(dappDir) : [];
  for (const file of dappFiles.filter((f) => f.endsWith(".sol")).sort()) {
    const unit = `dapps/${file}`;
    dappSources[unit] = { content: fs.readFileSync(path.join(dappDir, file), "utf8") };
    dappSelection[unit] = { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] };
  }
  const dappOutput = Object.keys(dappSources).length ? compile(dappSources, dappSelection) : {};
  for (const [unit, contracts] of Object.entries(dappOutput)) {
    if (!unit.startsWith("dapps/")) continue;
    for (const [name, artifact] of Object.entries(contracts)) {
      if (artifact.evm.bytecode.object.length) write(dapps, name, unit, artifact);
    }
  }
}

main();
