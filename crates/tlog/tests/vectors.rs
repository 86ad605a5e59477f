//! Known answers from transparency-dev/merkle's `testdata/inclusion` and
//! `testdata/consistency`, read from the shared test vector folder beside
//! the repository. Skips with a message when that folder is absent.
//!
//! The vectors were written for transparency-dev's Go verifier, which
//! takes hashes as byte slices of any length: it rejects a leaf hash that is
//! not 32 bytes long outright, and otherwise treats roots and proof hashes
//! as opaque bytes that are hashed or compared. Several vectors carry such
//! values ("don't care" roots, garbage appended to a proof hash, an empty
//! leaf hash). This crate's API takes `[u8; 32]`, so the harness maps them
//! onto it the same way:
//! - a leaf hash that is not 32 bytes long cannot be passed at all; the
//!   vector counts as rejected before verification;
//! - a root or proof hash that is not 32 bytes long is replaced by a
//!   stand-in, SHA-256 of a fixed label and the value. Equal values get
//!   equal stand-ins, and a stand-in never equals a hash the tree computes,
//!   so the verifier sees what the Go one saw.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use flashgate_tlog::{
    consistency_proof, inclusion_proof, verify_consistency, verify_inclusion, Error, Hash, Tree,
};
use serde_json::Value;

mod common;
use sha2::{Digest, Sha256};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testvectors/rfc9162")
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "json") {
            out.push(path);
        }
    }
}

fn decode(v: &Value) -> Vec<u8> {
    STANDARD.decode(v.as_str().expect("base64 string")).unwrap()
}

/// A root or proof hash: values that are not 32 bytes long get a stand-in
/// (see the module comment).
fn opaque(v: &Value) -> Hash {
    let raw = decode(v);
    Hash::try_from(raw.as_slice()).unwrap_or_else(|_| {
        let mut d = Sha256::new();
        d.update(b"test vector value that is not 32 bytes long:");
        d.update(&raw);
        d.finalize().into()
    })
}

fn proof(v: &Value) -> Vec<Hash> {
    match v {
        // Go's encoding/json writes a nil slice as null.
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().map(opaque).collect(),
        other => panic!("proof is neither an array nor null: {other}"),
    }
}

/// What happened to one vector.
enum Outcome {
    Verified,
    Rejected(Error),
    /// A leaf hash that is not 32 bytes long: not expressible as a `Hash`.
    Unrepresentable,
}

#[derive(Default, Debug)]
struct Counts {
    positive: u32,
    negative: u32,
    /// Negative vectors rejected because the leaf hash is not 32 bytes.
    negative_unrepresentable: u32,
}

fn run(kind: &str, check: impl Fn(&Value) -> Outcome) -> Option<Counts> {
    let dir = vectors_dir().join(kind);
    if !dir.is_dir() {
        eprintln!(
            "SKIPPED: RFC 9162 {kind} test vectors not found at {}; these known-answer tests did not run",
            dir.display()
        );
        return None;
    }
    let mut files = Vec::new();
    json_files(&dir, &mut files);
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    for path in &files {
        let v: Value = serde_json::from_slice(&fs::read(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let want_err = v["wantErr"].as_bool().expect("wantErr");
        if want_err {
            counts.negative += 1;
        } else {
            counts.positive += 1;
        }
        match (want_err, check(&v)) {
            (false, Outcome::Verified) | (true, Outcome::Rejected(_)) => {}
            (true, Outcome::Unrepresentable) => counts.negative_unrepresentable += 1,
            (false, Outcome::Rejected(e)) => {
                failures.push(format!("{}: rejected: {e}", path.display()));
            }
            (false, Outcome::Unrepresentable) => {
                failures.push(format!("{}: leaf hash is not 32 bytes", path.display()));
            }
            (true, Outcome::Verified) => failures.push(format!("{}: accepted", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} vectors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("RFC 9162 {kind} vectors: {counts:?}");
    Some(counts)
}

fn outcome(r: Result<(), Error>) -> Outcome {
    match r {
        Ok(()) => Outcome::Verified,
        Err(e) => Outcome::Rejected(e),
    }
}

#[test]
fn inclusion_vectors() {
    let Some(counts) = run("inclusion", |v| {
        let Ok(leaf) = Hash::try_from(decode(&v["leafHash"]).as_slice()) else {
            return Outcome::Unrepresentable;
        };
        outcome(verify_inclusion(
            &leaf,
            v["leafIdx"].as_u64().unwrap(),
            v["treeSize"].as_u64().unwrap(),
            &proof(&v["proof"]),
            &opaque(&v["root"]),
        ))
    }) else {
        return;
    };
    assert!(counts.positive > 0, "no positive inclusion vectors");
    assert!(counts.negative > 0, "no negative inclusion vectors");
}

#[test]
fn consistency_vectors() {
    let Some(counts) = run("consistency", |v| {
        outcome(verify_consistency(
            v["size1"].as_u64().unwrap(),
            v["size2"].as_u64().unwrap(),
            &proof(&v["proof"]),
            &opaque(&v["root1"]),
            &opaque(&v["root2"]),
        ))
    }) else {
        return;
    };
    assert!(counts.positive > 0, "no positive consistency vectors");
    assert!(counts.negative > 0, "no negative consistency vectors");
    assert_eq!(counts.negative_unrepresentable, 0);
}

/// The happy-path vectors in the numbered folders come from the reference
/// tree of eight leaves: generating the same proofs from those leaves checks
/// generation, not only verification, against an outside implementation.
#[test]
fn generated_proofs_match_happy_path_vectors() {
    let dir = vectors_dir();
    if !dir.is_dir() {
        eprintln!(
            "SKIPPED: RFC 9162 test vectors not found at {}",
            dir.display()
        );
        return;
    }
    let leaves = common::leaves();
    let root_at = |size: u64| {
        let mut t = Tree::new();
        for l in &leaves[..size as usize] {
            t.push_leaf_hash(*l).unwrap();
        }
        t.root()
    };
    let mut compared = 0;
    for kind in ["inclusion", "consistency"] {
        for n in 0..=4 {
            let path = dir.join(kind).join(n.to_string()).join("happy-path.json");
            let v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            let want = proof(&v["proof"]);
            if kind == "inclusion" {
                let (index, size) = (
                    v["leafIdx"].as_u64().unwrap(),
                    v["treeSize"].as_u64().unwrap(),
                );
                assert_eq!(
                    opaque(&v["leafHash"]),
                    leaves[index as usize],
                    "{}",
                    path.display()
                );
                assert_eq!(opaque(&v["root"]), root_at(size), "{}", path.display());
                assert_eq!(
                    inclusion_proof(&leaves, index, size).unwrap(),
                    want,
                    "{}",
                    path.display()
                );
            } else {
                let (size1, size2) = (v["size1"].as_u64().unwrap(), v["size2"].as_u64().unwrap());
                assert_eq!(opaque(&v["root1"]), root_at(size1), "{}", path.display());
                assert_eq!(opaque(&v["root2"]), root_at(size2), "{}", path.display());
                assert_eq!(
                    consistency_proof(&leaves, size1, size2).unwrap(),
                    want,
                    "{}",
                    path.display()
                );
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 10);
}
