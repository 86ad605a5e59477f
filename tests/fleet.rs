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

/// A database of a private cluster (`fleet` for [`Db::new`]).
struct Db {
    cluster: std::rc::Rc<PrivateCluster>,
    name: String,
    url: String,
}

impl Db {
    fn new() -> Self {
        let cluster = PrivateCluster::start(&ClusterOptions {
            no_fsync: true,
            ..ClusterOptions::default()
        })
        .expect("a private PostgreSQL cluster (scripts/setup.sh installs postgresql)");
        Self::in_cluster(std::rc::Rc::new(cluster), "fleet")
    }

    /// Another database `name` in the same cluster.
    fn sibling(&self, name: &str) -> Self {
        Self::in_cluster(self.cluster.clone(), name)
    }

    fn in_cluster(cluster: std::rc::Rc<PrivateCluster>, name: &str) -> Self {
        cluster.create_db(name).unwrap();
        let url = cluster.url(name);
        Db {
            cluster,
            name: name.to_owned(),
            url,
        }
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
            .args(["-U", "flashgate", "-d", &self.name, "-c", sql])
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
             (SELECT count(cert_der) FROM units) || ',' || (SELECT count(*) FROM jobs) || ',' || \
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

/// A fresh database that trusts the lab's OEM key, beside the lab.
fn trusting((lab, id): (Lab, String)) -> (Db, Lab, String) {
    let db = Db::new();
    db.ok(&lab, "init", &["--oem", "oem/signing-key.pub.pem"]);
    (db, lab, id)
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
    assert!(again.contains("schema is at version 5"), "{again}");

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
    // The counts kept at ingest, over both ingests, are the stored rows'.
    let by_outcome = |sql: &str| {
        db.scalar(&format!(
            "SELECT string_agg(encode(job_id, 'hex') || ' ' || o || ' ' || n, ', ' ORDER BY job_id, o) FROM ({sql}) c"
        ))
    };
    let kept = by_outcome("SELECT job_id, outcome AS o, n FROM unit_counts");
    assert!(kept.contains(" passed 5"), "{kept}");
    assert_eq!(
        kept,
        by_outcome(
            "SELECT job_id, CASE WHEN result = 'failed' THEN stage ELSE result END AS o, count(*) AS n FROM units GROUP BY 1, 2"
        )
    );
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
    // Two records planted among the first appliance's stored ones, as if
    // it had issued them: one names a certificate of the second bundle,
    // the other a certificate of its own with a device key of the second
    // bundle's.
    let mut certs: Vec<PathBuf> = std::fs::read_dir(bb.join("certs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    certs.sort();
    let cert_hex = |p: &Path| p.file_stem().unwrap().to_str().unwrap().to_owned();
    let spki = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -inform DER -in {} -pubkey -noout | openssl pkey -pubin -outform DER",
            s(&certs[1])
        ))
        .output()
        .unwrap();
    assert!(spki.status.success() && !spki.stdout.is_empty());
    let spki_hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&spki.stdout));
    let plant = |seq: u32, cert: &str, spki: &str| {
        format!(
            "INSERT INTO units (log_id, seq, appliance_id, job_id, product, run_id, counter, result, stage, uid, serial, cert_sha256, time_ms, record, ingest_id, spki_sha256) \
             SELECT log_id, {seq}, appliance_id, job_id, product, run_id, {seq}, 'failed', 'verify', NULL, NULL, decode('{cert}', 'hex'), time_ms, record, ingest_id, {spki} \
             FROM units WHERE result = 'passed' LIMIT 1;"
        )
    };
    db.scalar(&format!(
        "{}{}SELECT 1",
        plant(1_000_000, &cert_hex(&certs[0]), "NULL"),
        plant(
            1_000_001,
            &"ab".repeat(32),
            &format!("decode('{spki_hex}', 'hex')")
        ),
    ));
    let out = db.code(&a, "ingest", &[s(&bb), "--cm", "cm-south", "--json"], 1);
    let r = json(&out);
    assert_eq!(r["outcome"], "merged", "{r}");
    let found: Vec<&str> = r["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let of_kind = |kind: &str| -> Vec<&str> {
        found
            .iter()
            .copied()
            .filter(|a| a.starts_with(&format!("{kind}: ")))
            .collect()
    };
    // The same policy at both: both issued its first two serials.
    assert_eq!(of_kind("duplicate-serial").len(), 2, "{found:#?}");
    assert!(of_kind("duplicate-serial")[0].contains("serial ACME-TH-00000"));
    let dup_cert = of_kind("duplicate-certificate");
    assert_eq!(dup_cert.len(), 1, "{found:#?}");
    assert!(
        dup_cert[0].contains(&format!(
            "certificate {} issued 2 times",
            cert_hex(&certs[0])
        )),
        "{dup_cert:?}"
    );
    let dup_key = of_kind("duplicate-device-key");
    assert_eq!(dup_key.len(), 1, "{found:#?}");
    assert!(
        dup_key[0].contains(&format!("SPKI SHA-256 {spki_hex}) in 2 certificates"))
            && dup_key[0].contains(&"ab".repeat(32))
            && dup_key[0].contains(&cert_hex(&certs[1])),
        "{dup_key:?}"
    );
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

/// Two collectors at once, each ingesting another appliance's bundle with
/// the same planted UIDs: the duplicates are found whichever commits first
/// (each ingest's cross-check must see the other's rows), and nothing is
/// stored twice. Several rounds, each on a fresh database.
#[test]
fn two_ingests_at_once_still_find_the_duplicates_between_them() {
    let (a, id_a) = lab(Kind::SoftHsm);
    let (b, id_b) = lab(Kind::SoftHsm);
    run(&a, &id_a, 71, 3);
    run(&b, &id_b, 71, 3);
    let ba = export(&a, &id_a, "bundle");
    let bb = export(&b, &id_b, "bundle");
    let b_key = b.path("oem/signing-key.pub.pem");
    let cluster = PrivateCluster::start(&ClusterOptions {
        no_fsync: true,
        ..ClusterOptions::default()
    })
    .unwrap();
    for round in 0..4 {
        let name = format!("race{round}");
        cluster.create_db(&name).unwrap();
        let url = cluster.url(&name);
        let init = a.fg(&[
            "fleet",
            "init",
            "--db",
            &url,
            "--oem",
            "oem/signing-key.pub.pem",
            "--oem",
            s(&b_key),
        ]);
        assert!(init.status.success(), "{init:?}");
        let children: Vec<_> = [&ba, &bb]
            .iter()
            .map(|bundle| {
                a.command(&["fleet", "ingest", "--db", &url, s(bundle), "--json"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                matches!(out.status.code(), Some(0 | 1)),
                "round {round}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(json(&text)["outcome"], "merged", "round {round}: {text}");
        }
        let psql = |sql: &str| {
            let out = std::process::Command::new("psql")
                .args(["-X", "-A", "-t", "-h"])
                .arg(cluster.socket_dir())
                .args(["-U", "flashgate", "-d", &name, "-c", sql])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(
            psql("SELECT count(*) FROM anomalies WHERE kind = 'duplicate-uid' AND open"),
            "3",
            "round {round}: the three shared UIDs"
        );
        assert_eq!(psql("SELECT count(*) FROM units"), "6", "round {round}");
        assert_eq!(psql("SELECT count(*) FROM logs"), "2", "round {round}");
    }
}

/// `fleet serve`: the report page and the read API over mutual TLS, with
/// the OEM's own CA and the roles in the subject OU. A viewer reads, an
/// admin also changes; a station role, a stranger's CA or no certificate
/// gets no connection; a fingerprint put on the deny-list is refused at
/// once, without a restart.
#[test]
fn the_read_api_and_page_serve_fleet_roles_over_mutual_tls() {
    use common::station::{make_ca, make_leaf, CLIENT_EXT};
    use std::io::BufRead as _;
    let (db, lab, id) = trusting(lab(Kind::SoftHsm));
    run(&lab, &id, 81, 3);
    let bundle = export(&lab, &id, "bundle");
    db.ok(&lab, "ingest", &[s(&bundle), "--cm", "cm-north"]);

    let certs = lab.path("fleet-certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_ca(&certs, "oem-ca");
    make_leaf(
        &certs,
        "oem-ca",
        "server",
        "/CN=fleet.acme.example/O=Acme",
        30,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    for (name, ou) in [
        ("admin", "fleet-admin"),
        ("viewer", "fleet-viewer"),
        ("operator", "operator"),
        ("revoked", "fleet-viewer"),
    ] {
        make_leaf(
            &certs,
            "oem-ca",
            name,
            &format!("/CN={name}/OU={ou}/O=Acme"),
            30,
            CLIENT_EXT,
        );
    }
    make_ca(&certs, "other-ca");
    make_leaf(
        &certs,
        "other-ca",
        "stranger",
        "/CN=mallory/OU=fleet-admin/O=Evil",
        30,
        CLIENT_EXT,
    );

    let mut child = lab
        .command(&[
            "fleet",
            "serve",
            "--db",
            &db.url,
            "--listen",
            "127.0.0.1:0",
            "--server-cert",
            "fleet-certs/server.pem",
            "--server-key",
            "fleet-certs/server.key.pem",
            "--client-ca",
            "fleet-certs/oem-ca.pem",
            "--deny-list",
            "fleet-certs/deny-list",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("fleet serve did not start: {line:?}"))
        .to_owned();
    let read = |p: &str| std::fs::read(certs.join(p)).unwrap();
    let client = |who: Option<&str>| {
        let mut b = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&read("oem-ca.pem")).unwrap())
            .timeout(std::time::Duration::from_secs(30));
        if let Some(n) = who {
            let mut pem = read(&format!("{n}.pem"));
            pem.extend(read(&format!("{n}.key.pem")));
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    };
    let url = |p: &str| format!("{base}{p}");

    // The viewer reads what the command line reads.
    let viewer = client(Some("viewer"));
    let me: serde_json::Value = viewer
        .get(url("/api/v1/whoami"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(me["role"], "fleet-viewer", "{me}");
    assert_eq!(me["common_name"], "viewer", "{me}");
    let api: serde_json::Value = viewer
        .get(url("/api/v1/report"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let cli = json(&db.ok(&lab, "report", &["--json"]));
    // The two are read a moment apart: a checkpoint's age may differ by a
    // second between them, nothing else may.
    let jobs_at_rest = |report: &serde_json::Value| {
        let mut jobs = report["jobs"].clone();
        for j in jobs.as_array_mut().unwrap() {
            j.as_object_mut()
                .unwrap()
                .remove("last_checkpoint_age_seconds");
        }
        jobs
    };
    assert_eq!(
        jobs_at_rest(&api),
        jobs_at_rest(&cli),
        "the API's report is the command's"
    );
    assert_eq!(api["jobs"][0]["passed"], 3, "{api}");
    let serial = db.scalar("SELECT serial FROM units ORDER BY serial LIMIT 1");
    let dev: serde_json::Value = viewer
        .get(url(&format!("/api/v1/devices?serial={serial}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(dev["verdict"], "ours", "{dev}");
    assert_eq!(dev["records"][0]["cm"], "cm-north", "{dev}");
    let r = viewer.get(url("/api/v1/devices?uid=zz")).send().unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("UID in hex"));
    let csv = viewer
        .get(url(&format!("/api/v1/inventory?job={id}")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(csv.matches("BEGIN CERTIFICATE").count(), 3, "{csv}");
    assert!(csv.contains(&serial), "{csv}");
    let page = viewer.get(url("/")).send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().unwrap();
    assert!(
        page.contains("Signed in as viewer (fleet-viewer)") && page.contains("cm-north"),
        "{page}"
    );

    // Changes need the admin.
    let new_key = lab.path("second-oem");
    lab.ok(&["oem", "init", "--out", "second-oem", "--name", "Acme Labs"]);
    let pem = std::fs::read_to_string(new_key.join("signing-key.pub.pem")).unwrap();
    let r = viewer
        .post(url("/api/v1/oem-keys"))
        .body(pem.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().unwrap().contains("needs the fleet-admin role"));
    let admin = client(Some("admin"));
    let r: serde_json::Value = admin
        .post(url("/api/v1/oem-keys"))
        .body(pem)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r["added"], true, "{r}");
    assert_eq!(db.scalar("SELECT count(*) FROM oem_keys"), "2");
    let r = admin
        .post(url("/api/v1/oem-keys"))
        .body("not a key")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = admin
        .put(url("/api/v1/settings/silent-after"))
        .json(&serde_json::json!({ "seconds": 60 }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let report: serde_json::Value = viewer
        .get(url("/api/v1/report"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(report["silent_after_seconds"], 60, "{report}");

    // No connection for a station role, another CA, or no certificate.
    for who in [Some("operator"), Some("stranger"), None] {
        let r = client(who).get(url("/api/v1/whoami")).send();
        assert!(r.is_err(), "{who:?} got an answer: {r:?}");
    }
    // The deny-list takes effect at the next connection.
    let revoked = client(Some("revoked"));
    assert!(revoked.get(url("/api/v1/whoami")).send().is_ok());
    let der = {
        use base64::Engine as _;
        let text = String::from_utf8(read("revoked.pem")).unwrap();
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    let fp = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(der))
    };
    std::fs::write(
        certs.join("deny-list"),
        format!("# left the company\n{fp}\n"),
    )
    .unwrap();
    let r = client(Some("revoked")).get(url("/api/v1/whoami")).send();
    assert!(r.is_err(), "a denied certificate got an answer: {r:?}");
    common::terminate(&mut child);
}

/// `fleet witness init --out OUT` with the key made in the lab's token
/// (standing in for the OEM's).
fn witness_in_token(lab: &Lab, out: &str) -> Output {
    let uri = format!(
        "pkcs11:token=appliance;object=fleet-witness?module-path={}&pin-source=user-pin",
        lab.kind.module().display()
    );
    lab.fg(&[
        "fleet",
        "witness",
        "init",
        "--out",
        out,
        "--name",
        "acme.example/hsm",
        "--pkcs11-uri",
        &uri,
    ])
}

/// The witness key in a PKCS#11 token (SoftHSM; Kryoptic built against
/// Debian 12's OpenSSL 3.0 has no EdDSA, and says so): made inside, it
/// cosigns at ingest and the CM's verify accepts the cosignature; a PIN
/// holder can read it out, widen it or use it for anything else by no path
/// tried here.
#[test]
fn a_witness_key_in_a_token_cosigns_and_stays_there() {
    use cryptoki::mechanism::{Mechanism, MechanismType};
    use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
    {
        let (lab, _) = lab(Kind::Kryoptic);
        let out = witness_in_token(&lab, "tw");
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("the token does not offer")
                && err.contains("which an Ed25519 witness key needs"),
            "{err}"
        );
        assert!(!lab.path("tw/witness.vkey").exists());
    }
    for kind in [Kind::SoftHsm] {
        let (db, lab, id) = trusting(lab(kind));
        run(&lab, &id, 91, 2);
        let bundle = export(&lab, &id, "bundle");
        let out = witness_in_token(&lab, "tw");
        assert!(out.status.success(), "{out:?}");
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains("acme.example/hsm+"), "{kind:?}: {out}");
        assert!(
            !lab.path("tw/witness.key.pem").exists(),
            "{kind:?}: a key file was written"
        );
        let again = witness_in_token(&lab, "tw2");
        assert!(!again.status.success());
        let again = String::from_utf8_lossy(&again.stderr);
        assert!(
            again.contains("already holds an object labelled 'fleet-witness'"),
            "{kind:?}: {again}"
        );
        let out = db.ok(
            &lab,
            "ingest",
            &[s(&bundle), "--witness", "tw", "--cosigned-out", "cosigned"],
        );
        let kept = out
            .lines()
            .find_map(|l| {
                l.split_once("written to ")
                    .map(|(_, p)| p.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("{kind:?}: no cosigned checkpoint: {out}"));
        let v = lab.ok(&[
            "audit",
            "verify",
            s(&bundle),
            "--oem",
            "oem/signing-key.pub.pem",
            "--previous-checkpoint",
            &kept,
            "--witness",
            "tw/witness.vkey",
        ]);
        assert!(
            v.contains("cosigned by acme.example/hsm at") && v.contains("verified"),
            "{kind:?}: {v}"
        );

        let a = lab.pin_holder();
        let key = a.object("fleet-witness", ObjectClass::PRIVATE_KEY);
        let attrs = a
            .session
            .get_attributes(
                key,
                &[
                    AttributeType::KeyType,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Modifiable,
                    AttributeType::Derive,
                    AttributeType::Decrypt,
                    AttributeType::Unwrap,
                ],
            )
            .unwrap();
        for at in attrs {
            match at {
                Attribute::KeyType(t) => assert_eq!(t, KeyType::EC_EDWARDS, "{kind:?}"),
                Attribute::Sensitive(v) => assert!(v, "{kind:?}: not sensitive"),
                Attribute::Extractable(v) => assert!(!v, "{kind:?}: extractable"),
                Attribute::Modifiable(v) => assert!(!v, "{kind:?}: modifiable"),
                Attribute::Derive(v) | Attribute::Decrypt(v) | Attribute::Unwrap(v) => {
                    assert!(!v, "{kind:?}: a usage beyond signing");
                }
                other => panic!("{kind:?}: {other:?}"),
            }
        }
        // Its value, in clear.
        let value = a.session.get_attributes(key, &[AttributeType::Value]);
        assert!(
            !matches!(value.as_deref(), Ok([Attribute::Value(v)]) if !v.is_empty()),
            "{kind:?}: the private key's value was read"
        );
        // Made extractable in place, or copied as extractable.
        assert!(
            a.session
                .update_attributes(key, &[Attribute::Extractable(true)])
                .is_err(),
            "{kind:?}: the key was made extractable"
        );
        assert!(
            a.session
                .copy_object(
                    key,
                    &[Attribute::Extractable(true), Attribute::Sensitive(false)]
                )
                .is_err(),
            "{kind:?}: the key was copied as extractable"
        );
        // Wrapped out under a key the PIN holder makes.
        let out = a.wrapped_out(key);
        assert!(
            out.is_empty(),
            "{kind:?}: C_WrapKey {out:?} gave the witness key"
        );
        // Used with another mechanism than EdDSA.
        assert!(
            a.session.sign(&Mechanism::Ecdsa, key, &[0u8; 32]).is_err(),
            "{kind:?}: the key signed with ECDSA"
        );
        let allowed = a
            .session
            .get_attributes(key, &[AttributeType::AllowedMechanisms])
            .unwrap();
        assert!(
            matches!(allowed.as_slice(), [Attribute::AllowedMechanisms(m)] if m == &[MechanismType::EDDSA]),
            "{kind:?}: allowed mechanisms {allowed:?}"
        );
    }
}

#[test]
fn forks_and_rollbacks_are_kept_as_evidence_and_change_nothing() {
    let (db, lab, id) = trusting(lab(Kind::SoftHsm));
    run(&lab, &id, 51, 2);
    let early = export(&lab, &id, "early");
    snapshot(&lab, "snap");
    run(&lab, &id, 52, 2);
    let later = export(&lab, &id, "later");
    // The collector witnesses what it found consistent.
    lab.ok(&[
        "fleet",
        "witness",
        "init",
        "--out",
        "witness",
        "--name",
        "acme.example/fleet",
    ]);
    let again = lab.fails(&[
        "fleet",
        "witness",
        "init",
        "--out",
        "witness",
        "--name",
        "x.example/w",
    ]);
    assert!(again.contains("already holds a witness key"), "{again}");
    let witnessed = ["--witness", "witness", "--cosigned-out", "cosigned"];
    let mut args = vec![s(&later), "--json"];
    args.extend_from_slice(&witnessed);
    let out = db.ok(&lab, "ingest", &args);
    assert_eq!(json(&out)["outcome"], "merged");
    let cosigned = std::fs::read_dir(lab.path("cosigned"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect::<Vec<_>>();
    assert_eq!(cosigned.len(), 1, "{cosigned:?}");
    let cosigned = cosigned[0].clone();
    let note = std::fs::read_to_string(&cosigned).unwrap();
    // The same bundle again: the same cosigned checkpoint, not a second one.
    db.ok(&lab, "ingest", &args);
    assert_eq!(std::fs::read_to_string(&cosigned).unwrap(), note);
    assert_eq!(db.scalar("SELECT count(*) FROM cosignatures"), "1");
    // The CM's side: the cosigned checkpoint is a kept checkpoint, and the
    // witness's signature on it verifies.
    let verify = |bundle: &Path, kept: &Path, code: i32| {
        let out = lab.fg(&[
            "audit",
            "verify",
            s(bundle),
            "--oem",
            "oem/signing-key.pub.pem",
            "--previous-checkpoint",
            s(kept),
            "--witness",
            "witness/witness.vkey",
        ]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(code), "{text}");
        text
    };
    let out = verify(&later, &cosigned, 0);
    assert!(
        out.contains("cosigned by acme.example/fleet at") && out.contains("verified"),
        "{out}"
    );
    // A cosigned checkpoint with its size changed: neither the appliance's
    // signature nor the witness's covers it.
    let size_line = note.lines().nth(1).unwrap().to_owned();
    let bigger = (size_line.parse::<u64>().unwrap() + 1).to_string();
    let tampered = lab.path("tampered.checkpoint");
    std::fs::write(
        &tampered,
        note.replacen(&format!("\n{size_line}\n"), &format!("\n{bigger}\n"), 1),
    )
    .unwrap();
    let out = verify(&later, &tampered, 2);
    assert!(out.contains("does not verify"), "{out}");
    let out = lab.fg(&[
        "audit",
        "verify",
        s(&later),
        "--oem",
        "oem/signing-key.pub.pem",
        "--previous-checkpoint",
        s(&tampered),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("previous-checkpoint-invalid"), "{text}");
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
    // The CM, holding the cosigned checkpoint, proves the fork on its own.
    let out = verify(&forked, &cosigned, 1);
    assert!(out.contains("cosigned by acme.example/fleet"), "{out}");
    assert!(
        out.contains("previous-checkpoint-mismatch") && out.contains("forked or rewritten"),
        "{out}"
    );
    let mut args = vec![s(&forked), "--json"];
    args.extend_from_slice(&witnessed);
    let out = db.code(&lab, "ingest", &args, 1);
    let r = json(&out);
    assert_eq!(r["outcome"], "fork", "{r}");
    assert!(
        r["anomalies"][0].as_str().unwrap().starts_with("log-fork:"),
        "{r}"
    );
    // Nothing merged or cosigned; the stored checkpoint is the one before.
    assert_eq!(db.counts(), stored);
    assert_eq!(db.scalar("SELECT count(*) FROM cosignatures"), "1");
    assert_eq!(std::fs::read_to_string(&cosigned).unwrap(), note);
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
    let (db, lab, id) = trusting(lab(Kind::SoftHsm));
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

/// A checkpoint whose signature was changed, with `bundle.json` made to
/// match so that only the signature is wrong: the collector verifies only
/// the largest checkpoint itself and leaves the rest to the verifier, so
/// both an earlier checkpoint and the largest are tried. Either is refused
/// whole, and the ingest names the checkpoint.
#[test]
fn a_checkpoint_with_a_changed_signature_is_refused_whichever_it_is() {
    use sha2::{Digest as _, Sha256};
    let (db, lab, id) = trusting(lab(Kind::SoftHsm));
    run(&lab, &id, 62, 3);
    run(&lab, &id, 63, 3);
    let b = export(&lab, &id, "b");
    let cps = std::fs::read(b.join("checkpoints.log")).unwrap();
    // Frames: u32be length || tagged COSE_Sign1, whose last bytes are the
    // signature.
    let mut ends = Vec::new();
    let mut at = 0;
    while at + 4 <= cps.len() {
        let n = u32::from_be_bytes(cps[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + n;
        ends.push(at);
    }
    assert!(ends.len() >= 2, "{} checkpoints", ends.len());
    assert_eq!(at, cps.len());
    for (which, end) in [("first", ends[0]), ("last", *ends.last().unwrap())] {
        let t = export(&lab, &id, &format!("t-{which}"));
        let mut bytes = cps.clone();
        bytes[end - 1] ^= 0x01;
        std::fs::write(t.join("checkpoints.log"), &bytes).unwrap();
        let index_path = t.join("bundle.json");
        let mut index = json(&std::fs::read_to_string(&index_path).unwrap());
        index["files"]["checkpoints.log"]["sha256"] = hex::encode(Sha256::digest(&bytes)).into();
        std::fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
        let out = db.code(&lab, "ingest", &[s(&t), "--json"], 1);
        let r = json(&out);
        assert_eq!(r["outcome"], "refused", "{which}: {r}");
        assert!(
            r.to_string()
                .contains("the checkpoint signature does not verify"),
            "{which}: the refusal names the signature: {r}"
        );
        assert_eq!(db.scalar("SELECT count(*) FROM units"), "0", "{which}");
        assert_eq!(db.scalar("SELECT count(*) FROM logs"), "0", "{which}");
    }
    // The untouched bundle still goes in whole.
    let r = json(&db.ok(&lab, "ingest", &[s(&b), "--json"]));
    assert_eq!(r["outcome"], "merged", "{r}");
    assert_eq!(db.scalar("SELECT count(*) FROM units"), "6");
}

/// An ingest killed with SIGKILL at random points leaves all of the bundle
/// or none of it; the next ingest ends where an unbroken one does. Each
/// kill is on a database of its own, so that every one meets a whole
/// ingest (not the quick "already ingested" of an earlier one).
#[test]
fn an_ingest_killed_at_random_points_stores_all_or_nothing() {
    let reference = Db::new();
    let (lab, id) = lab(Kind::SoftHsm);
    run(&lab, &id, 71, 150);
    let b = export(&lab, &id, "b");
    reference.ok(&lab, "init", &["--oem", "oem/signing-key.pub.pem"]);
    let started = std::time::Instant::now();
    reference.ok(&lab, "ingest", &[s(&b)]);
    let whole = reference.counts();
    let whole_cp = reference.scalar("SELECT encode(checkpoint, 'hex') FROM logs");
    let took = started.elapsed().as_micros().max(1000) as u64;
    // Delays spread over the time a whole ingest takes, from a fixed seed.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    let mut merged = 0;
    for round in 0..12 {
        let db = reference.sibling(&format!("kill{round}"));
        db.ok(&lab, "init", &["--oem", "oem/signing-key.pub.pem"]);
        let empty = db.counts();
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
            if db.scalar(&format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{0}' AND state LIKE 'idle in transaction%' OR (datname = '{0}' AND state = 'active' AND query LIKE 'COPY%')", db.name)) == "0" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let now = db.counts();
        assert!(
            now == empty || now == whole,
            "round {round}: a partial ingest: {now} (whole {whole})"
        );
        let ingests = db.scalar("SELECT count(*) FROM ingests");
        assert_eq!(
            ingests == "1",
            now == whole,
            "round {round}: {ingests} ingest rows with {now}"
        );
        if now == whole {
            merged += 1;
        }
        // The bundle again: the same end state as the unbroken ingest.
        let _ = db.fleet(&lab, "ingest", &[s(&b)]);
        assert_eq!(db.counts(), whole, "round {round}");
        assert_eq!(
            db.scalar("SELECT encode(checkpoint, 'hex') FROM logs"),
            whole_cp,
            "round {round}"
        );
    }
    eprintln!("{kills} of 12 ingests killed while running; the bundle was in after {merged}");
    assert!(kills > 0, "no kill landed during an ingest");
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
    let (db, lab, id) = trusting(lab(Kind::SoftHsm));
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

/// A database left at schema version 2 keeps each certificate when `fleet
/// init` moves it onto its unit row (version 3); a certificate no unit
/// names goes with the old table, as nothing could reach it. Version 4's
/// UID index is built on the way.
#[test]
fn migrating_a_version_2_database_keeps_every_units_certificate() {
    let db = Db::new();
    let v2 = format!(
        "CREATE TABLE fleet_schema (version bigint PRIMARY KEY, name text NOT NULL, applied_ms bigint NOT NULL); \
         {} {} \
         INSERT INTO fleet_schema VALUES (1, 'fleet', 0), (2, 'certificates_ingest', 0); \
         INSERT INTO units (log_id, seq, appliance_id, job_id, product, counter, result, uid, serial, cert_sha256, time_ms, record, ingest_id) \
           VALUES (1, 0, 'a', '\\x01', 'p', 0, 'passed', '\\xaa', 'S-1', '\\xc1', 0, '\\x00', 1), \
                  (1, 1, 'a', '\\x01', 'p', 1, 'failed', '\\xbb', 'S-2', NULL, 0, '\\x00', 1); \
         INSERT INTO certificates VALUES ('\\xc1', '\\x51', '\\x01', '\\xde', 1), ('\\xc2', '\\x52', '\\x01', '\\xdf', 1); \
         SELECT 'v2'",
        include_str!("../crates/fleet/migrations/0001_fleet.sql"),
        include_str!("../crates/fleet/migrations/0002_certificates_ingest.sql"),
    );
    // psql prints each statement's tag, then the last query's value.
    assert!(db.scalar(&v2).ends_with("INSERT 0 2\nv2"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(["fleet", "init", "--db", &db.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(db.scalar("SELECT max(version) FROM fleet_schema"), "5");
    // Versions 4 and 5: each cross-checked value's index carries the
    // ingest, and replaces the old one.
    assert_eq!(
        db.scalar("SELECT string_agg(indexname || ' ' || substring(indexdef from '\\(.*\\)'), ', ' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'units' AND indexname <> 'units_pkey'"),
        "units_cert_ingest (cert_sha256, ingest_id) WHERE (cert_sha256 IS NOT NULL), \
         units_ingest (ingest_id), \
         units_serial_product_ingest (serial, product, ingest_id) WHERE (serial IS NOT NULL), \
         units_spki_ingest (spki_sha256, ingest_id) WHERE (spki_sha256 IS NOT NULL), \
         units_uid_ingest (uid, ingest_id) WHERE (uid IS NOT NULL)"
    );
    assert_eq!(
        db.scalar(
            "SELECT string_agg(seq || ':' || coalesce(encode(cert_der, 'hex'), '-') || ':' || coalesce(encode(spki_sha256, 'hex'), '-'), ' ' ORDER BY seq) FROM units"
        ),
        "0:de:51 1:-:-"
    );
    assert_eq!(db.scalar("SELECT to_regclass('certificates') IS NULL"), "t");
}
