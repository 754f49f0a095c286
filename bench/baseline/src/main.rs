//! Bare TFHE-rs: the same parameters as the coprocessor's keysets, the same graph as
//! `bench/graph.py` (read from its JSON), the same parallelism (one rayon thread per
//! core, every ready node at once), and the per-op table of the transfer's ops plus the
//! noise squashing of one output. No Python, no database, no S3: what is left when
//! everything around the FHE operations is taken away.
//!
//!     fhe-baseline GRAPH.json [--repeat N] [--squash]   -> one JSON object on stdout
//!
//! `--squash`: after the graph, the noise squashing of its outputs, all at once (what
//! the SNS stage does with a batch's outputs): `squash_wall_s`; then, timed apart, what
//! the protocol publishes of each output, all at once: its ct64 compressed list, its
//! squashed form and that form's compressed list (`publish_wall_s`: the FHE work of the
//! SNS stage, without its S3 and database). `--repeat 0` skips the
//! per-op table. `--compressed`: the server key generated compressed and decompressed,
//! as the coprocessor gets its tenants' keys.

use std::collections::HashMap;
use std::time::Instant;

use rayon::prelude::*;
use serde::Deserialize;
use tfhe::prelude::*;
use tfhe::shortint::parameters::{
    COMP_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    NOISE_SQUASHING_COMP_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    NOISE_SQUASHING_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    PARAM_KEYSWITCH_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
    PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
};
use tfhe::{
    set_server_key, ClientKey, CompressedCiphertextListBuilder,
    CompressedSquashedNoiseCiphertextList, ConfigBuilder, FheBool, FheUint64, ServerKey,
};

#[derive(Deserialize)]
struct Graph {
    /// Plaintext inputs (values 0..inputs.len()).
    inputs: Vec<u64>,
    /// Inputs that are trivially encrypted, as a dapp's plaintext amounts are on chain
    /// (`FHE.asEuint64`): TFHE-rs computes on them without bootstrapping their blocks.
    #[serde(default)]
    trivial: Vec<usize>,
    /// Nodes in a topological order; operands index inputs, then earlier nodes.
    nodes: Vec<Node>,
    /// Value indices of the final balances, and what they must decrypt to.
    outputs: Vec<usize>,
    expected: Vec<u64>,
}

#[derive(Deserialize)]
struct Node {
    op: String,
    args: Vec<usize>,
}

enum Value {
    Int(FheUint64),
    Bool(FheBool),
}

impl Value {
    fn int(&self) -> &FheUint64 {
        match self {
            Value::Int(v) => v,
            Value::Bool(_) => panic!("an integer operand is a bool"),
        }
    }
    fn bool(&self) -> &FheBool {
        match self {
            Value::Bool(v) => v,
            Value::Int(_) => panic!("a condition is an integer"),
        }
    }
}

fn evaluate(op: &str, args: Vec<&Value>) -> Value {
    match op {
        "FheGe" => Value::Bool(args[0].int().ge(args[1].int())),
        "FheLe" => Value::Bool(args[0].int().le(args[1].int())),
        "FheSub" => Value::Int(args[0].int() - args[1].int()),
        "FheAdd" => Value::Int(args[0].int() + args[1].int()),
        "FheIfThenElse" => Value::Int(args[0].bool().select(args[1].int(), args[2].int())),
        other => panic!("op {other} is not in the transfer graph"),
    }
}

fn keys(compressed: bool) -> (ClientKey, ServerKey) {
    let config =
        ConfigBuilder::with_custom_parameters(PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128)
            .use_dedicated_compact_public_key_parameters((
                PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
                PARAM_KEYSWITCH_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
            ))
            .enable_compression(COMP_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128)
            .enable_noise_squashing(NOISE_SQUASHING_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128)
            .enable_noise_squashing_compression(
                NOISE_SQUASHING_COMP_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
            )
            .build();
    let client = ClientKey::generate(config);
    let server = if compressed {
        tfhe::CompressedServerKey::new(&client).decompress()
    } else {
        ServerKey::new(&client)
    };
    (client, server)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

fn time<F: FnMut()>(repeat: usize, mut f: F) -> f64 {
    median(
        (0..repeat)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: fhe-baseline GRAPH.json [--repeat N]");
    let repeat = args
        .iter()
        .position(|a| a == "--repeat")
        .map(|i| args[i + 1].parse().expect("--repeat N"))
        .unwrap_or(3);
    let squash = args.iter().any(|a| a == "--squash");
    // `--compressed`: the server key made the way tenants' keys reach the coprocessor
    // (a CompressedServerKey, decompressed), instead of generated expanded.
    let compressed = args.iter().any(|a| a == "--compressed");
    let graph: Graph = serde_json::from_str(&std::fs::read_to_string(path).expect("graph file"))
        .expect("graph JSON");

    let started = Instant::now();
    let (client, server) = keys(compressed);
    let keygen_s = started.elapsed().as_secs_f64();
    // The high-level API's key is per thread: every rayon worker gets it.
    set_server_key(server.clone());
    rayon::broadcast(|_| set_server_key(server.clone()));

    // Per-op table (all cores, inside each op).
    let a = FheUint64::encrypt(200u64, &client);
    let b = FheUint64::encrypt(30u64, &client);
    let condition = a.ge(&b);
    let mut ops = HashMap::new();
    if repeat > 0 {
        ops.insert("FheGe", time(repeat, || drop(a.ge(&b))));
        ops.insert("FheSub", time(repeat, || drop(&a - &b)));
        ops.insert("FheAdd", time(repeat, || drop(&a + &b)));
        ops.insert(
            "FheIfThenElse",
            time(repeat, || drop(condition.select(&a, &b))),
        );
        ops.insert(
            "SquashNoise",
            time(repeat, || drop(a.squash_noise().expect("squash"))),
        );
    }

    // The graph: encrypt the inputs, then every ready node at once, level by level.
    let mut values: Vec<Option<Value>> = graph
        .inputs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Some(Value::Int(if graph.trivial.contains(&i) {
                FheUint64::encrypt_trivial(*v)
            } else {
                FheUint64::encrypt(*v, &client)
            }))
        })
        .collect();
    let first_node = values.len();
    let mut level = vec![0usize; graph.inputs.len() + graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        level[first_node + i] = 1 + node.args.iter().map(|&a| level[a]).max().unwrap_or(0);
    }
    values.extend(graph.nodes.iter().map(|_| None));
    let depth = level.iter().copied().max().unwrap_or(0);
    let started = Instant::now();
    for current in 1..=depth {
        let ready: Vec<usize> = (0..graph.nodes.len())
            .filter(|&i| level[first_node + i] == current)
            .collect();
        let computed: Vec<(usize, Value)> = ready
            .par_iter()
            .map(|&i| {
                let node = &graph.nodes[i];
                let operands = node
                    .args
                    .iter()
                    .map(|&a| values[a].as_ref().unwrap())
                    .collect();
                (first_node + i, evaluate(&node.op, operands))
            })
            .collect();
        for (index, value) in computed {
            values[index] = Some(value);
        }
    }
    let graph_wall_s = started.elapsed().as_secs_f64();
    let squash_wall_s = squash.then(|| {
        let started = Instant::now();
        let squashed: Vec<_> = graph
            .outputs
            .par_iter()
            .map(|&i| {
                values[i]
                    .as_ref()
                    .unwrap()
                    .int()
                    .squash_noise()
                    .expect("squash")
            })
            .collect();
        assert_eq!(squashed.len(), graph.outputs.len());
        started.elapsed().as_secs_f64()
    });
    let publish_wall_s = squash.then(|| {
        let started = Instant::now();
        let published: Vec<_> = graph
            .outputs
            .par_iter()
            .map(|&i| {
                let value = values[i].as_ref().unwrap().int();
                let ct64 = CompressedCiphertextListBuilder::new()
                    .push(value.clone())
                    .build()
                    .expect("ct64 list");
                let ct128 = CompressedSquashedNoiseCiphertextList::builder()
                    .push(value.squash_noise().expect("squash"))
                    .build()
                    .expect("ct128 list");
                (ct64, ct128)
            })
            .collect();
        assert_eq!(published.len(), graph.outputs.len());
        started.elapsed().as_secs_f64()
    });
    let decrypted: Vec<u64> = graph
        .outputs
        .iter()
        .map(|&i| values[i].as_ref().unwrap().int().decrypt(&client))
        .collect();
    assert_eq!(
        decrypted, graph.expected,
        "bare TFHE-rs got the graph wrong"
    );
    println!(
        "{}",
        serde_json::json!({
            "threads": rayon::current_num_threads(),
            "keygen_s": keygen_s,
            "single_op_s": ops,
            "nodes": graph.nodes.len(),
            "depth": depth,
            "graph_wall_s": graph_wall_s,
            "squash_wall_s": squash_wall_s,
            "publish_wall_s": publish_wall_s,
            "correct": true,
        })
    );
}
