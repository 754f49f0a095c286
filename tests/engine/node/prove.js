// A real fhEVM client: node-tfhe (TFHE-rs compiled to WASM, from npm) encrypts values
// under a tenant's compact public key and proves the list, bound to the metadata.
//
//   node prove.js <public key file> <crs file> <metadata hex> <out file> Type:value...
//
// Types: Bool, Uint8, Uint16, Uint32, Uint64, Uint128, Uint160, Uint256.
"use strict";
const fs = require("fs");
const tfhe = require("node-tfhe");

const LIMIT = 1n << 31n;
const [publicKeyPath, crsPath, metadataHex, outPath, ...items] = process.argv.slice(2);
if (!outPath || items.length === 0) {
  console.error("usage: node prove.js <public key> <crs> <metadata hex> <out> Type:value...");
  process.exit(2);
}
const publicKey = tfhe.TfheCompactPublicKey.safe_deserialize(fs.readFileSync(publicKeyPath), LIMIT);
const crs = tfhe.CompactPkeCrs.safe_deserialize(fs.readFileSync(crsPath), LIMIT);
const builder = tfhe.ProvenCompactCiphertextList.builder(publicKey);
for (const item of items) {
  const [type, value] = item.split(":");
  switch (type) {
    case "Bool": builder.push_boolean(value === "1"); break;
    case "Uint8": builder.push_u8(Number(value)); break;
    case "Uint16": builder.push_u16(Number(value)); break;
    case "Uint32": builder.push_u32(Number(value)); break;
    case "Uint64": builder.push_u64(BigInt(value)); break;
    case "Uint128": builder.push_u128(BigInt(value)); break;
    case "Uint160": builder.push_u160(BigInt(value)); break;
    case "Uint256": builder.push_u256(BigInt(value)); break;
    default: console.error(`unknown type ${type}`); process.exit(2);
  }
}
const list = builder.build_with_proof_packed(crs, Buffer.from(metadataHex, "hex"),
                                             tfhe.ZkComputeLoad.Verify);
fs.writeFileSync(outPath, list.safe_serialize(LIMIT));
