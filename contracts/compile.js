// Compile every contracts/*.sol, contracts/gateway/*.sol and contracts/testing/*.sol with solc (the
// npm package, pinned in tools/versions.env) into coprocessor/chain/compiled/<Contract>.json =
// {abi, bytecode, solc} (package data of the product wheel); contracts/testing/ go to
// contracts/build/testing/ instead (tests only). Abstract contracts, interfaces and libraries (no
// bytecode) get no artifact: nothing deploys them, and their ABIs are in the contracts using them.
// Run by scripts/install:
//   NODE_PATH=<npm dir>/node_modules node contracts/compile.js
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const here = __dirname;
const sources = {};
for (const dir of [".", "gateway", "testing"]) {  // testing/: contracts only tests deploy
  for (const file of fs.readdirSync(path.join(here, dir)).filter((f) => f.endsWith(".sol")).sort()) {
    const name = dir === "." ? file : `${dir}/${file}`;
    sources[name] = { content: fs.readFileSync(path.join(here, name), "utf8") };
  }
}
// Sources are named by their path under contracts/, so solc resolves a relative import
// ("./Structs.sol" in gateway/) to another source itself, without the import callback; the
// callback reads OpenZeppelin's (pinned in tools/versions.env) from node_modules.
const nodeModules = path.resolve(path.dirname(require.resolve("solc/package.json")), "..");
function findImport(name) {
  if (sources[name]) return { contents: sources[name].content };
  const file = path.join(nodeModules, name);
  if (name.startsWith("@openzeppelin/") && fs.existsSync(file)) {
    return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: `not found: ${name}` };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const message of output.errors || []) console.error(message.formattedMessage);
if (errors.length) process.exit(1);
const product = path.join(here, "..", "coprocessor", "chain", "compiled");
const testing = path.join(here, "build", "testing");
for (const dir of [product, testing]) fs.mkdirSync(dir, { recursive: true });
const written = {};
for (const [file, contracts] of Object.entries(output.contracts)) {
  if (!sources[file]) continue;  // imported from node_modules (OpenZeppelin's libraries)
  const out = file.startsWith("testing/") ? testing : product;
  for (const [name, artifact] of Object.entries(contracts)) {
    if (!artifact.evm.bytecode.object) continue;
    // One artifact per name: a second contract of the same name would silently replace it.
    const key = path.join(out, name);
    if (written[key]) {
      console.error(`contract ${name} is defined in both ${written[key]} and ${file}`);
      process.exit(1);
    }
    written[key] = file;
    fs.writeFileSync(path.join(out, `${name}.json`), JSON.stringify({
      contract: name, source: file, solc: solc.version(),
      abi: artifact.abi, bytecode: "0x" + artifact.evm.bytecode.object,
    }, null, 1));
    console.log(`compiled ${name} (${artifact.evm.bytecode.object.length / 2} bytes)`);
  }
}
