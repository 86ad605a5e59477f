//! The OEM's fleet collector against a real PostgreSQL (a private cluster
//! per test, removed afterwards) and bundles from real runs on SoftHSM2 and
//! Kryoptic: idempotent and incremental ingest, duplicate UIDs across
//! appliances, forks and rollbacks kept as evidence, a changed enrollment
//! refused, device lookups whose proofs check with `audit check-proof`,
//! and an ingest killed at random points.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Kind, Lab};
use flashgate_fleet::cluster::{ClusterOptions, PrivateCluster};

/// A private cluster with one database, `fleet`.
struct Db {
    cluster: PrivateCluster,
    url: String,
}

impl Db {
    fn new() -> Self {
        let cluster = PrivateCluster::start(&ClusterOptions {
            no_fsync: true,
            ..ClusterOptions::default()
        })
        .expect("a private PostgreSQL cluster (scripts/setup.sh installs postgresql)");
        cluster.create_db("fleet").unwrap();
        let url = cluster.url("fleet");
        Db { cluster, url }
    }

    /// `flashgate fleet SUB --db URL ARGS`, from `lab`'s directory.
    fn fleet(&self, lab: &Lab, sub: &str, args: &[&str]) -> Output {
        let mut all = vec!["fleet", sub, "--db", &self.url];
        all.extend_from_slice(args);
        lab.fg(&all)
    }

    fn ok(&self, lab: &Lab, sub: &str, args: &[&str]) -> String {
        let out = self.fleet(lab, sub, args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "fleet {sub} {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs, expects exit status `code`; returns stdout and stderr.
    fn code(&self, lab: &Lab, sub: &str, args: &[&str], code: i32) -> String {
        let out = self.fleet(lab, sub, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "fleet {sub} {args:?}: {text}"
        );
        assert!(!text.contains("panicked"), "{text}");
        text
    }

    /// One SQL query's only value, through psql.
    fn scalar(&self, sql: &str) -> String {
        let out = std::process::Command::new("psql")
            .args(["-X", "-A", "-t", "-h"])
            .arg(self.cluster.socket_dir())
            .args(["-U", "flashgate", "-d", "fleet", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Row counts of every table that ingest writes, for "nothing changed".
    fn counts(&self) -> String {
        self.scalar(
            "SELECT (SELECT count(*) FROM units) || ',' || (SELECT count(*) FROM nodes) || ',' || \
             (SELECT count(*) FROM certificates) || ',' || (SELECT count(*) FROM jobs) || ',' || \
             (SELECT count(*) FROM runs) || ',' || (SELECT string_agg(size::text, ',' ORDER BY log_id) FROM logs) || ',' || \
             (SELECT coalesce(sum(n), 0) FROM unit_counts) || ',' || (SELECT coalesce(sum(reserved), 0) FROM jobs)",
        )
    }
}

/// A sim target whose boards' UIDs come from `seed`.
fn sim(seed: u64) -> String {
    format!("sim:timing=zero,seed={seed},flash-base=0x08000000")
}

fn lab(kind: Kind) -> (Lab, String) {
    Lab::with_job(
        kind,
        |t| t.replace("checkpoint_every_units = 100", "checkpoint_every_units = 5"),
        4096,
    )
}

fn run(lab: &Lab, id: &str, seed: u64, units: u32) {
    lab.ok(&[
        "run",
        "--job",
        id,
        "--target",
        &sim(seed),
        "--units",
        &units.to_string(),
    ]);
}

fn export(lab: &Lab, id: &str, name: &str) -> PathBuf {
    lab.ok(&["audit", "export", "--job", id, "-o", name]);
    lab.path(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn ingest_is_idempotent_and_incremental_and_devices_are_found_with_proofs() {
    let db = Db::new();
    let (lab, id) = lab(Kind::SoftHsm);
    run(&lab, &id, 11, 3);
    let b1 = export(&lab, &id, "b1");
    db.ok(&lab, "init", &["--oem", "oem/signing-key.pub.pem"]);
    // A second init is a no-op.
    let again = db.ok(&lab, "init", &[]);
    assert!(again.contains("schema is at version 2"), "{again}");

    let out = db.ok(&lab, "ingest", &[s(&b1), "--cm", "acme-ems", "--json"]);
    let r = json(&out);
    assert_eq!(r["outcome"], "merged", "{r}");
    let first = db.counts();
    assert!(first.starts_with("3,"), "three unit records: {first}");

    // The same bundle twice: no change.
    let out = db.ok(&lab, "ingest", &[s(&b1), "--json"]);
    assert_eq!(json(&out)["outcome"], "already-ingested");
    assert_eq!(db.counts(), first);

    // A later bundle extends the stored log: only its new records go in.
    run(&lab, &id, 12, 2);
    let b2 = export(&lab, &id, "b2");
    let out = db.ok(&lab, "ingest", &[s(&b2), "--json"]);
    let r = json(&out);
    assert_eq!(r["outcome"], "merged", "{r}");
    assert!(r["records_added"].as_u64().unwrap() > 2, "{r}");
    assert!(db.counts().starts_with("5,"), "{}", db.counts());
    // The stored tree answers the log's own root.
    let size: u64 = db.scalar("SELECT size FROM logs").parse().unwrap();
    assert_eq!(size, r["log_size"].as_u64().unwrap());

    // The report: one job, five passed, quota used.
    let report = json(&db.ok(&lab, "report", &["--json"]));
    let job = &report["jobs"][0];
    assert_eq!(job["passed"], 5, "{report}");
    assert_eq!(job["cm"], "acme-ems");
    assert_eq!(job["job_id"], id.as_str());
    assert!(job["quota_used"].as_i64().unwrap() >= 5, "{report}");
    assert_eq!(report["open_anomalies"], 0, "{report}");

    // A device by UID: where, when, who, and a proof that checks offline.
    let uid = db.scalar("SELECT encode(uid, 'hex') FROM units ORDER BY seq LIMIT 1");
    let out = db.ok(&lab, "device", &["--uid", &uid, "--out", "found"]);
    assert!(out.contains("ours: 1 record"), "{out}");
    let check = lab.ok(&[
        "audit",
        "check-proof",
        "found/record-1/proof.json",
        "--appliance",
        "found/record-1/enrollment.cbor",
    ]);
    assert!(check.contains("proof OK"), "{check}");
    // A tampered proof does not check.
    let mut proof = json(&std::fs::read_to_string(lab.path("found/record-1/proof.json")).unwrap());
    proof["index"] = serde_json::json!(proof["index"].as_u64().unwrap() + 1);
    std::fs::write(lab.path("bad-proof.json"), proof.to_string()).unwrap();
    lab.fails(&[
        "audit",
        "check-proof",
        "bad-proof.json",
        "--appliance",
        "found/record-1/enrollment.cbor",
    ]);

    // By certificate: every certificate of the bundle is ours, with proofs.
    let certs: Vec<PathBuf> = std::fs::read_dir(b2.join("certs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(certs.len(), 5);
    for c in &certs {
        let out = json(&db.ok(&lab, "device", &["--cert", s(c), "--json"]));
        assert_eq!(out["verdict"], "ours", "{out}");
        let rec = &out["records"][0];
        assert_eq!(rec["result"], "passed");
        assert_eq!(rec["job_id"], id.as_str());
        let proof = &rec["proof"];
        std::fs::write(lab.path("p.json"), proof.to_string()).unwrap();
        lab.ok(&[
            "audit",
            "check-proof",
            "p.json",
            "--appliance",
            "enrollment.cbor",
        ]);
    }
    // By serial.
    let serial = db.scalar("SELECT serial FROM units ORDER BY seq DESC LIMIT 1");
    let out = json(&db.ok(&lab, "device", &["--serial", &serial, "--json"]));
    assert_eq!(out["records"][0]["serial"], serial.as_str());
    // An unknown UID.
    let out = db.code(&lab, "device", &["--uid", "00ff00ff"], 1);
    assert!(out.contains("unknown"), "{out}");
    // A certificate from a CA no job of this fleet has: not ours.
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-subj",
            "/CN=someone else",
            "-days",
            "2",
        ])
        .current_dir(lab.path("."))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let out = json(&db.code(&lab, "device", &["--cert", "other.pem", "--json"], 1));
    assert_eq!(out["verdict"], "not-ours", "{out}");
    assert!(
        out["reason"].as_str().unwrap().contains("CN=someone else"),
        "{out}"
    );
    // A file that holds no certificate: a plain refusal, no panic.
    std::fs::write(
        lab.path("not-a-cert.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = db.code(&lab, "device", &["--cert", "not-a-cert.pem"], 2);
    assert!(err.contains("error:"), "{err}");

    // The inventory: five certificates, in CSV and JSON.
    let out = db.ok(&lab, "inventory", &["--job", &id, "--out", "inv.csv"]);
    assert!(out.contains("5 certificates"), "{out}");
    let csv = std::fs::read_to_string(lab.path("inv.csv")).unwrap();
    assert!(csv.starts_with("serial,uid,certificate_pem,job_id,appliance_id\n"));
    assert_eq!(csv.matches("-----BEGIN CERTIFICATE-----").count(), 5);
    let inv = json(&db.ok(
        &lab,
        "inventory",
        &[
            "--product",
            job["product"].as_str().unwrap(),
            "--format",
            "json",
        ],
    ));
    assert_eq!(inv.as_array().unwrap().len(), 5);
    assert_eq!(inv[0]["job_id"], id.as_str());
}

/// Copies a directory tree (`cp -a`).
fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The appliance's whole state (token and state directory) saved, or put back.
fn snapshot(lab: &Lab, name: &str) {
    let snap = lab.path(name);
    std::fs::create_dir_all(&snap).unwrap();
    copy_tree(&lab.path("token"), &snap.join("token"));
    copy_tree(&lab.path("state"), &snap.join("state"));
}

fn restore(lab: &Lab, name: &str) {
    for d in ["token", "state"] {
        std::fs::remove_dir_all(lab.path(d)).unwrap();
        copy_tree(&lab.path(name).join(d), &lab.path(d));
    }
}

#[test]
fn two_appliances_on_two_tokens_with_a_planted_duplicate_uid() {
    let db = Db::new();
    let (a, id_a) = lab(Kind::SoftHsm);
    let (b, id_b) = lab(Kind::Kryoptic);
    // Each lab has its own OEM key: one OEM database trusting both (rotation).
    let b_key = b.path("oem/signing-key.pub.pem");
    db.ok(
        &a,
        "init",
        &["--oem", "oem/signing-key.pub.pem", "--oem", s(&b_key)],
    );
    run(&a, &id_a, 41, 3);
    // The same sim seed: the same chip UIDs turn up at the second CM.
    run(&b, &id_b, 41, 2);
    let ba = export(&a, &id_a, "bundle");
    let bb = export(&b, &id_b, "bundle");
    let out = db.ok(&a, "ingest", &[s(&ba), "--cm", "cm-north", "--json"]);
    assert_eq!(json(&out)["outcome"], "merged");
    assert!(
        json(&out)["anomalies"].as_array().unwrap().is_empty(),
        "{out}"
    );
    let out = db.code(&a, "ingest", &[s(&bb), "--cm", "cm-south", "--json"], 1);
    let r = json(&out);
    assert_eq!(r["outcome"], "merged", "{r}");
    let found: Vec<&str> = r["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        found
            .iter()
            .filter(|a| a.starts_with("duplicate-uid:"))
            .count(),
        2,
        "the two shared UIDs: {found:?}"
    );
    // Stored as a query's result, not a scan at report time.
    assert_eq!(
        db.scalar("SELECT count(*) FROM anomalies WHERE kind = 'duplicate-uid' AND open"),
        "2"
    );
    let report = json(&db.ok(&a, "report", &["--json"]));
    assert_eq!(report["jobs"].as_array().unwrap().len(), 2, "{report}");
    let cms: Vec<&str> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["cm"].as_str().unwrap())
        .collect();
    assert!(
        cms.contains(&"cm-north") && cms.contains(&"cm-south"),
        "{cms:?}"
    );
    assert!(report["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["kind"] == "duplicate-uid"));
    // The lookup of a duplicated UID names both appliances, each with a proof.
    let uid = db.scalar(
        "SELECT encode(uid, 'hex') FROM units GROUP BY uid HAVING count(DISTINCT appliance_id) = 2 LIMIT 1",
    );
    let out = json(&db.ok(&a, "device", &["--uid", &uid, "--json"]));
    let recs = out["records"].as_array().unwrap();
    assert_eq!(recs.len(), 2, "{out}");
    assert_ne!(recs[0]["appliance_id"], recs[1]["appliance_id"]);
    // A later CM name for a known appliance is refused.
    let err = db.code(&a, "ingest", &[s(&ba), "--cm", "cm-east"], 0);
    assert!(err.contains("already-ingested"), "{err}");
    run(&a, &id_a, 42, 1);
    let ba2 = export(&a, &id_a, "bundle2");
    let err = db.code(&a, "ingest", &[s(&ba2), "--cm", "cm-east"], 2);
    assert!(err.contains("is recorded for CM \"cm-north\""), "{err}");
    // A bundle signed by an OEM key the database does not trust.
    let c = Lab::with_job(Kind::SoftHsm, |t| t, 1024).0;
    let cid = c.first_job_id();
    run(&c, &cid, 43, 1);
    let bc = export(&c, &cid, "bundle");
    let err = db.code(&a, "ingest", &[s(&bc)], 2);
    assert!(
        err.contains("not signed by any OEM key this fleet database trusts"),
        "{err}"
    );
}

#[test]
fn forks_and_rollbacks_are_kept_as_evidence_and_change_nothing() {
    let db = Db::new();
    let (lab, id) = lab(Kind::SoftHsm);
    db.ok(&lab, "init", &["--oem", "oem/signing-key.pub.pem"]);
    run(&lab, &id, 51, 2);
    let early = export(&lab, &id, "early");
    snapshot(&lab, "snap");
    run(&lab, &id, 52, 2);
    let later = export(&lab, &id, "later");
    let out = db.ok(&lab, "ingest", &[s(&later), "--json"]);
    assert_eq!(json(&out)["outcome"], "merged");
    let stored = db.counts();
    let stored_cp = db.scalar("SELECT encode(checkpoint, 'hex') FROM logs");

    // An earlier bundle after a later one: a rollback (or a stale export).
    let out = db.code(&lab, "ingest", &[s(&early), "--json"], 1);
    let r = json(&out);
    assert_eq!(r["outcome"], "rollback", "{r}");
    assert_eq!(db.counts(), stored);

    // The appliance's state put back and driven another way: a fork.
    restore(&lab, "snap");
    run(&lab, &id, 53, 3);
    let forked = export(&lab, &id, "forked");
    let out = db.code(&lab, "ingest", &[s(&forked), "--json"], 1);
    let r = json(&out);
    assert_eq!(r["outcome"], "fork", "{r}");
    assert!(
        r["anomalies"][0].as_str().unwrap().starts_with("log-fork:"),
        "{r}"
    );
    // Nothing merged; the stored checkpoint is the one before.
    assert_eq!(db.counts(), stored);
    assert_eq!(
        db.scalar("SELECT encode(checkpoint, 'hex') FROM logs"),
        stored_cp
    );
    // The evidence: the stored checkpoint and the conflicting one, both
    // signed by the appliance's log key.
    assert_eq!(
        db.scalar("SELECT string_agg(kind, ',' ORDER BY ingest_id) FROM evidence WHERE conflicting_checkpoint IS NOT NULL"),
        "rollback,fork"
    );
    let report = json(&db.ok(&lab, "report", &["--json"]));
    let kinds: Vec<&str> = report["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"log-fork") && kinds.contains(&"log-rollback"),
        "{kinds:?}"
    );
    assert_eq!(report["jobs"][0]["open_anomalies"], 2, "{report}");
}

/// A tampered bundle is refused whole; the stored data does not move.
#[test]
fn a_tampered_bundle_is_refused_and_stores_nothing() {
    let db = Db::new();
    let (lab, id) = lab(Kind::SoftHsm);
    db.ok(&lab, "init", &["--oem", "oem/signing-key.pub.pem"]);
    run(&lab, &id, 61, 3);
    let b = export(&lab, &id, "b");
    // One byte of a unit record changed (the serial's last digit).
    let path = b.join("records.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let out = db.code(&lab, "ingest", &[s(&b), "--json"], 1);
    let r = json(&out);
    assert_eq!(r["outcome"], "refused", "{r}");
    assert_eq!(db.scalar("SELECT count(*) FROM units"), "0");
    assert_eq!(db.scalar("SELECT count(*) FROM logs"), "0");
    assert_eq!(
        db.scalar("SELECT count(*) FROM anomalies WHERE kind = 'bundle-refused'"),
        "1"
    );
}

/// An ingest killed with SIGKILL at random points leaves all of the bundle
/// or none of it; the next ingest ends where an unbroken one does.
#[test]
fn an_ingest_killed_at_random_points_stores_all_or_nothing() {
    let db = Db::new();
    let reference = Db::new();
    let (lab, id) = lab(Kind::SoftHsm);
    run(&lab, &id, 71, 150);
    let b = export(&lab, &id, "b");
    db.ok(&lab, "init", &["--oem", "oem/signing-key.pub.pem"]);
    reference.ok(&lab, "init", &["--oem", "oem/signing-key.pub.pem"]);
    let started = std::time::Instant::now();
    reference.ok(&lab, "ingest", &[s(&b)]);
    let whole = reference.counts();
    let took = started.elapsed().as_micros().max(1000) as u64;
    let empty = db.counts();
    // Delays spread over the time a whole ingest takes, from a fixed seed.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    let mut merged = 0;
    for _ in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = x % took;
        let mut child = lab
            .command(&["fleet", "ingest", "--db", &db.url, s(&b)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(delay));
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        // The server ends the killed client's transaction; wait for it.
        for _ in 0..100 {
            if db.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = 'fleet' AND state LIKE 'idle in transaction%' OR (datname = 'fleet' AND state = 'active' AND query LIKE 'COPY%')") == "0" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let now = db.counts();
        assert!(
            now == empty || now == whole,
            "a partial ingest: {now} (whole {whole})"
        );
        let ingests = db.scalar("SELECT count(*) FROM ingests");
        assert_eq!(
            ingests == "1",
            now == whole,
            "{ingests} ingest rows with {now}"
        );
        if now == whole {
            merged += 1;
        }
    }
    eprintln!("{kills} of 12 ingests killed while running; the bundle was in after {merged}");
    assert!(kills > 0, "no kill landed during an ingest");
    // The bundle again: the same end state as the unbroken ingest.
    let _ = db.fleet(&lab, "ingest", &[s(&b)]);
    assert_eq!(db.counts(), whole);
    assert_eq!(
        db.scalar("SELECT encode(checkpoint, 'hex') FROM logs"),
        reference.scalar("SELECT encode(checkpoint, 'hex') FROM logs")
    );
}

/// Signs a prehash with a private key in the token, as any PIN holder can.
struct TokenSigner<'a> {
    holder: &'a common::PinHolder,
    key: cryptoki::object::ObjectHandle,
    public: p256::ecdsa::VerifyingKey,
}

impl TokenSigner<'_> {
    fn sign_digest(&self, digest: &[u8]) -> p256::ecdsa::Signature {
        let rs = self
            .holder
            .session
            .sign(&cryptoki::mechanism::Mechanism::Ecdsa, self.key, digest)
            .unwrap();
        p256::ecdsa::Signature::from_slice(&rs).unwrap()
    }
}

impl flashgate::cose::Keypair for TokenSigner<'_> {
    type VerifyingKey = p256::ecdsa::VerifyingKey;
    fn verifying_key(&self) -> p256::ecdsa::VerifyingKey {
        self.public
    }
}

impl flashgate::cose::PrehashSigner<p256::ecdsa::Signature> for TokenSigner<'_> {
    fn sign_prehash(
        &self,
        prehash: &[u8],
    ) -> Result<p256::ecdsa::Signature, flashgate::cose::SignatureError> {
        Ok(self.sign_digest(prehash))
    }
}

/// One DER element at the start of `b`: (whole element, content, rest).
fn tlv(b: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let (len, head) = match b[1] {
        n if n < 0x80 => (usize::from(n), 2),
        0x81 => (usize::from(b[2]), 3),
        0x82 => (usize::from(b[2]) << 8 | usize::from(b[3]), 4),
        n => panic!("length form {n:#x}"),
    };
    (&b[..head + len], &b[head..head + len], &b[head + len..])
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

#[test]
fn a_pin_holder_can_slip_in_neither_an_enrollment_nor_a_certificate() {
    use sha2::Digest as _;
    let db = Db::new();
    let (lab, id) = lab(Kind::SoftHsm);
    db.ok(&lab, "init", &["--oem", "oem/signing-key.pub.pem"]);
    run(&lab, &id, 81, 2);
    let b = export(&lab, &id, "b");
    db.ok(&lab, "ingest", &[s(&b)]);
    let stored = db.counts();
    let holder = lab.pin_holder();

    // The enrollment record re-signed with the appliance's own log key,
    // one field changed, and the bundle's index made to match.
    let enrollment = flashgate::enrollment::VerifiedEnrollment::parse(
        &std::fs::read(b.join("enrollment.cbor")).unwrap(),
    )
    .unwrap();
    let log = TokenSigner {
        holder: &holder,
        key: holder.object(
            "flashgate-appliance-log",
            cryptoki::object::ObjectClass::PRIVATE_KEY,
        ),
        public: p256::ecdsa::VerifyingKey::from_sec1_bytes(&enrollment.record().log_public)
            .unwrap(),
    };
    let mut record = enrollment.record().clone();
    record.created += 1;
    let changed = record.sign(&log).unwrap();
    assert_eq!(
        flashgate::enrollment::VerifiedEnrollment::parse(&changed)
            .unwrap()
            .record()
            .appliance_id,
        enrollment.record().appliance_id
    );
    let forged = lab.path("forged");
    copy_tree(&b, &forged);
    std::fs::write(forged.join("enrollment.cbor"), &changed).unwrap();
    let mut index = json(&std::fs::read_to_string(forged.join("bundle.json")).unwrap());
    index["files"]["enrollment.cbor"]["sha256"] =
        hex::encode(sha2::Sha256::digest(&changed)).into();
    index["files"]["enrollment.cbor"]["bytes"] = changed.len().into();
    std::fs::write(forged.join("bundle.json"), index.to_string()).unwrap();
    let err = db.code(&lab, "ingest", &[s(&forged)], 2);
    assert!(
        err.contains("is pinned with enrollment fingerprint"),
        "{err}"
    );
    assert_eq!(db.counts(), stored);
    assert_eq!(
        db.scalar("SELECT count(*) FROM anomalies WHERE kind = 'enrollment-changed'"),
        "1"
    );

    // A device certificate minted with the job CA's key in the HSM, with
    // no unit record: issued outside the log.
    let cert_path = std::fs::read_dir(b.join("certs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let cert = std::fs::read(&cert_path).unwrap();
    let (_, body, _) = tlv(&cert);
    let (tbs, tbs_content, rest) = tlv(body);
    let (alg, _, _) = tlv(rest);
    // The serial is the element after the version: change its last byte.
    let (version, _, after_version) = tlv(tbs_content);
    let (serial, _, after_serial) = tlv(after_version);
    let mut serial = serial.to_vec();
    *serial.last_mut().unwrap() ^= 0x5a;
    let mut new_tbs_content = version.to_vec();
    new_tbs_content.extend_from_slice(&serial);
    new_tbs_content.extend_from_slice(after_serial);
    let new_tbs = der(0x30, &new_tbs_content);
    assert_eq!(new_tbs.len(), tbs.len());
    let ca = TokenSigner {
        holder: &holder,
        key: holder.object(
            &format!("fg-job:{id}:ca"),
            cryptoki::object::ObjectClass::PRIVATE_KEY,
        ),
        public: log.public,
    };
    let sig = ca.sign_digest(&sha2::Sha256::digest(&new_tbs));
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig.to_der().as_bytes());
    let mut body = new_tbs.clone();
    body.extend_from_slice(alg);
    body.extend_from_slice(&der(0x03, &bits));
    std::fs::write(lab.path("minted.der"), der(0x30, &body)).unwrap();
    let out = json(&db.code(&lab, "device", &["--cert", "minted.der", "--json"], 1));
    assert_eq!(out["verdict"], "issued-outside-log", "{out}");
    assert_eq!(out["job_id"], id.as_str());
    // The real certificate is ours.
    let out = json(&db.ok(&lab, "device", &["--cert", s(&cert_path), "--json"]));
    assert_eq!(out["verdict"], "ours");
}
