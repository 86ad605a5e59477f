//! Fleet collector benchmark (run on purpose, not in the tests):
//!
//! ```sh
//! cargo build --release --example fleet_bench --locked
//! target/release/examples/fleet_bench                 # generate (if not cached), then measure
//! target/release/examples/fleet_bench generate        # only the bundles
//! target/release/examples/fleet_bench measure         # only the database figures
//! target/release/examples/fleet_bench --appliances 3 --units 20000 --regenerate
//! target/release/examples/fleet_bench measure --fsync off   # one server setting: on, off or both
//! ```
//!
//! 1. generate (cached under `target/fleet-bench/`, skipped when the
//!    bundles are there; `--regenerate` forces it): one OEM, `--appliances`
//!    (10) appliances with `--units` (100,000) unit records each in one job,
//!    as genuine bundles. Each appliance runs in a child process of this
//!    program (`fleet_bench generate-one ...`), because SoftHSM is loaded
//!    once per process and each appliance has a token of its own: a fresh
//!    SoftHSM token and enrollment (`lab::setup_for`), a job built and
//!    signed by the OEM and imported, then `--threads` (8) threads driving
//!    the appliance's real `RunLedger` (HSM counter reservations of 16,
//!    the fsynced log with its group commit, checkpoints signed by the log
//!    key in the token at the policy's cadence) with device certificates
//!    issued by the job CA key in the token through
//!    `DeviceCertificateIssuer::issue`, for P-256 keys made in software (a
//!    simulated device makes its own key). Serial ranges follow the
//!    appliance (`[serial] start`); UIDs are distinct across the fleet but
//!    for 10 planted ones seen at two appliances. The bundle is exported as
//!    `audit export` does; the appliance's own copy of the certificates is
//!    then removed (the bundle holds them).
//! 2. measure, per server setting (`fsync` on, then off), each in a child
//!    process of its own (`fleet_bench measure-one ...`) so that its peak
//!    RSS is its own: a private PostgreSQL cluster, `init`, the OEM key,
//!    then every bundle ingested in turn (records/s with verification, peak
//!    RSS after the first and the last; each bundle is read once just
//!    before, as one just received is in the page cache, and that read is
//!    timed apart; the CPU time of this process, the verifier's thread
//!    included, and of the whole PostgreSQL cluster is counted per bundle,
//!    which bounds what the cores could do), the ingest's duplicate-UID query
//!    (20 runs through psql), device lookups by serial, UID and certificate
//!    hash (1,000 each through `Fleet::device`), the full report (20 runs),
//!    and `EXPLAIN ANALYZE` of the duplicate-UID query and of one lookup
//!    of each kind. A table of each figure against its target ends it.
//!
//! Needs SoftHSM2 and PostgreSQL (`scripts/setup.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "common/proc_stat.rs"]
mod proc_stat;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashgate::appliance::{ApplianceConfig, RunLedger};
use flashgate::identity::{DeviceCertificateIssuer, DeviceCertificateRequest};
use flashgate::station::{Access, JobId, Station};
use flashgate::unit::ledger::Ledger as _;
use flashgate::unit::{UnitRecord, UnitResult};
use flashgate_fleet::cluster::{ClusterOptions, PrivateCluster};
use flashgate_fleet::device::{DeviceAnswer, DeviceQuery};
use flashgate_fleet::ingest::IngestOptions;
use flashgate_fleet::Fleet;
use sha2::{Digest as _, Sha256};

/// UIDs planted at two appliances each.
const PLANTED: u64 = 10;
/// Counter values reserved at a time, as a station's channel does.
const BLOCK: u64 = 16;
const DEVICE_TYPE: &str = "sim-secure-mcu";

#[derive(Debug, Clone)]
struct Args {
    command: String,
    appliances: u64,
    units: u64,
    threads: u32,
    regenerate: bool,
    fsync: String,
    lookups: usize,
    runs: usize,
    index: u64,
    dir: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        command: "all".to_owned(),
        appliances: 10,
        units: 100_000,
        threads: 8,
        regenerate: false,
        fsync: "both".to_owned(),
        lookups: 1000,
        runs: 20,
        index: 0,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--appliances" => a.appliances = value().parse().unwrap(),
            "--units" => a.units = value().parse().unwrap(),
            "--threads" => a.threads = value().parse().unwrap(),
            "--regenerate" => a.regenerate = true,
            "--fsync" => a.fsync = value(),
            "--lookups" => a.lookups = value().parse().unwrap(),
            "--runs" => a.runs = value().parse().unwrap(),
            "--index" => a.index = value().parse().unwrap(),
            "--dir" => a.dir = Some(PathBuf::from(value())),
            c if !c.starts_with('-') => a.command = c.to_owned(),
            other => usage(&format!("unknown option {other}")),
        }
    }
    assert!(a.appliances >= 1 && a.units >= 1 && a.threads >= 1);
    a
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "fleet_bench: {problem}\nusage: fleet_bench [generate|measure] [--appliances N] [--units M] [--threads T] [--regenerate] [--fsync on|off|both] [--lookups N] [--runs N]"
    );
    std::process::exit(2)
}

/// `target/fleet-bench/<appliances>x<units>`, from where this program is
/// (`target/release/examples/fleet_bench`).
fn cache_dir(a: &Args) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the example runs from target/<profile>/examples")
        .to_owned();
    target
        .join("fleet-bench")
        .join(format!("{}x{}", a.appliances, a.units))
}

fn appliance_dir(base: &Path, i: u64) -> PathBuf {
    base.join(format!("appliance-{i:02}"))
}

fn bundle_dir(base: &Path, i: u64) -> PathBuf {
    base.join("bundles").join(format!("appliance-{i:02}"))
}

fn done_file(base: &Path, i: u64) -> PathBuf {
    base.join(format!("appliance-{i:02}.done"))
}

fn main() {
    let a = args();
    match a.command.as_str() {
        "generate-one" => generate_one(&a),
        "measure-one" => measure_one(&a),
        "generate" => generate(&a),
        "measure" => measure(&a),
        "all" => {
            generate(&a);
            measure(&a);
        }
        other => usage(&format!("unknown command {other}")),
    }
}

// ---------------------------------------------------------------- generate

fn generate(a: &Args) {
    let base = cache_dir(a);
    if a.regenerate && base.exists() {
        std::fs::remove_dir_all(&base).unwrap();
    }
    let all_there = (0..a.appliances)
        .all(|i| done_file(&base, i).exists() && bundle_dir(&base, i).join("bundle.json").exists());
    if all_there {
        println!(
            "generate: {} bundles of {} units cached in {} (--regenerate to make them again)",
            a.appliances,
            a.units,
            base.display()
        );
        return;
    }
    std::fs::create_dir_all(base.join("bundles")).unwrap();
    // The OEM's material, shared by every appliance (key files: development only).
    let oem = base.join("oem");
    if !oem.join("signing-key.pub.pem").exists() {
        if oem.exists() {
            std::fs::remove_dir_all(&oem).unwrap();
        }
        flashgate::oem::init(
            &oem,
            "Acme Corp",
            &flashgate::oem::KeyStore::Files,
            unix_now(),
        )
        .unwrap();
    }
    println!(
        "generate: {} appliances x {} units, {} threads each, into {}",
        a.appliances,
        a.units,
        a.threads,
        base.display()
    );
    let t0 = Instant::now();
    let exe = std::env::current_exe().unwrap();
    for i in 0..a.appliances {
        if done_file(&base, i).exists() && bundle_dir(&base, i).join("bundle.json").exists() {
            println!("  appliance {i:02}: cached");
            continue;
        }
        let log = base.join(format!("appliance-{i:02}.log"));
        let t = Instant::now();
        let status = Command::new(&exe)
            .args(["generate-one", "--index", &i.to_string()])
            .args(["--appliances", &a.appliances.to_string()])
            .args(["--units", &a.units.to_string()])
            .args(["--threads", &a.threads.to_string()])
            .arg("--dir")
            .arg(&base)
            .stderr(std::fs::File::create(&log).unwrap())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "appliance {i} failed; see {}",
            log.display()
        );
        let done = std::fs::read_to_string(done_file(&base, i)).unwrap();
        println!(
            "  appliance {i:02}: {:.1} s ({})",
            t.elapsed().as_secs_f64(),
            done.trim()
        );
    }
    println!(
        "generate: {:.1} s for {} units",
        t0.elapsed().as_secs_f64(),
        a.appliances * a.units
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The UID of the unit with counter `counter` at appliance `i`: 12 bytes,
/// distinct across the fleet, except that the first [`PLANTED`] units are
/// spread over appliances 1.. and each reuses the UID of the same counter
/// at the appliance before it.
fn uid_for(i: u64, appliances: u64, counter: u64) -> Vec<u8> {
    let owner = if appliances > 1 && counter < PLANTED && i == 1 + counter % (appliances - 1) {
        i - 1
    } else {
        i
    };
    let mut uid = u32::try_from(owner).unwrap().to_be_bytes().to_vec();
    uid.extend_from_slice(&counter.to_be_bytes());
    uid
}

/// The example policy for appliance `i`: quota `units`, its own serial
/// range, the identity key made on the device.
fn policy_for(i: u64, appliances: u64, units: u64) -> String {
    let text = flashgate::lab::example_policy();
    let width = (appliances * units).to_string().len().max(6);
    let replace = |text: String, from: &str, to: String| {
        assert!(text.contains(from), "the example policy has no {from:?}");
        text.replacen(from, &to, 1)
    };
    let text = replace(text, "quota = 1000 ", format!("quota = {units} "));
    let text = replace(
        text,
        "start = 1\nend = 1000 ",
        format!("start = {}\nend = {} ", i * units + 1, (i + 1) * units),
    );
    let text = replace(text, "width = 6 ", format!("width = {width} "));
    replace(
        text,
        "source = \"derived\" ",
        "source = \"on-chip\" ".to_owned(),
    )
}

/// A device's own identity key pair, made in software: the public half.
fn device_key() -> [u8; 65] {
    loop {
        let mut scalar = [0u8; 32];
        getrandom::fill(&mut scalar).unwrap();
        if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&scalar) {
            let point = key.verifying_key().to_sec1_point(false);
            return point.as_bytes().try_into().unwrap();
        }
    }
}

fn generate_one(a: &Args) {
    let base = a.dir.clone().expect("--dir");
    let i = a.index;
    let t0 = Instant::now();
    let dir = appliance_dir(&base, i);
    let setup = flashgate::lab::setup_for(&dir, "softhsm", None, Some(&base.join("oem"))).unwrap();
    let firmware: Vec<u8> = (0..16 * 1024u32)
        .map(|x| (x.wrapping_mul(31) ^ (x >> 9)) as u8)
        .collect();
    let job =
        flashgate::lab::build_and_import(&setup, &policy_for(i, a.appliances, a.units), firmware)
            .unwrap();
    let setup_s = t0.elapsed().as_secs_f64();
    let station = setup.station;
    let appliance = station.appliance();
    let manifest = job.imported.manifest();
    let policy = job.imported.policy().clone();
    let job_id = manifest.job_id;
    let firmware_sha256 = hex::encode(manifest.images[0].digest);

    // The run: the appliance's durable ledger, as a station's run opens it.
    let (ledger, _) =
        RunLedger::start(appliance, job_id, &policy, "fleet-bench", a.threads).unwrap();
    // The job CA key in the token, on a token handle of this process (the
    // module is loaded and logged in already).
    let token = flashgate::hsm::Token::open(&appliance.config.token).unwrap();
    let ca = token
        .find_by_label(&format!(
            "{}{}:ca",
            flashgate::appliance::JOB_KEY_PREFIX,
            job.id
        ))
        .unwrap()
        .into_iter()
        .find(|h| token.object_class(*h).ok() == Some(cryptoki::object::ObjectClass::PRIVATE_KEY))
        .expect("the job CA key in the token");
    let ca_public = flashgate::x509::certificate_public_key(&manifest.job_ca_cert).unwrap();
    let issuer = DeviceCertificateIssuer::new(&manifest.job_ca_cert).unwrap();
    let signer = flashgate::hsm::TokenKey::new(&token, ca, &ca_public).unwrap();

    let claimed = AtomicU64::new(0);
    let t_run = Instant::now();
    std::thread::scope(|s| {
        for channel in 0..a.threads {
            let (ledger, claimed, policy) = (&ledger, &claimed, &policy);
            let (issuer, signer, token) = (&issuer, &signer, &token);
            let firmware_sha256 = &firmware_sha256;
            s.spawn(move || loop {
                let first = claimed.fetch_add(BLOCK, Ordering::SeqCst);
                if first >= a.units {
                    break;
                }
                let n = BLOCK.min(a.units - first);
                for counter in ledger.reserve(n).unwrap() {
                    let mut timings = BTreeMap::new();
                    let serial = policy.serial_for(counter).unwrap();
                    let uid = uid_for(i, a.appliances, counter);
                    let s = Instant::now();
                    let public_key = device_key();
                    timings.insert("derive".to_owned(), micros(s.elapsed()));
                    let s = Instant::now();
                    let mut certificate_serial = [0u8; 16];
                    token.random(&mut certificate_serial).unwrap();
                    let cert = issuer
                        .issue(
                            signer,
                            policy.certificate(),
                            &DeviceCertificateRequest {
                                serial: &serial,
                                uid: &uid,
                                public_key: &public_key,
                                certificate_serial,
                                now: appliance.now(),
                            },
                        )
                        .unwrap();
                    ledger.certificate_issued(counter, &cert).unwrap();
                    timings.insert("certificate".to_owned(), micros(s.elapsed()));
                    let record = UnitRecord {
                        channel,
                        counter: Some(counter),
                        serial: Some(serial),
                        device_type: Some(DEVICE_TYPE.to_owned()),
                        uid: Some(hex::encode(&uid)),
                        cert_sha256: Some(hex::encode(Sha256::digest(&cert))),
                        certificate: Some(cert),
                        firmware_sha256: firmware_sha256.clone(),
                        lock: Some("readout (01)".to_owned()),
                        lock_level: Some("readout".to_owned()),
                        lock_raw: vec![0x01],
                        secrets_injected: true,
                        rework_of: None,
                        timings_us: timings,
                        result: UnitResult::Passed,
                    };
                    ledger.record(&record).unwrap();
                }
            });
        }
    });
    ledger.run_finished("unit count reached").unwrap();
    let run_s = t_run.elapsed().as_secs_f64();
    drop(token);
    drop(ledger);
    drop(station);

    // `audit export`, as the command line does it.
    let t_export = Instant::now();
    let config = ApplianceConfig::load(&dir.join("appliance.toml")).unwrap();
    let station = Station::open(config, Access::Read).unwrap();
    let out = bundle_dir(&base, i);
    if out.exists() {
        std::fs::remove_dir_all(&out).unwrap();
    }
    let report = station
        .export_bundle(&JobId::from_bytes(job_id), &out)
        .unwrap();
    assert_eq!(report.certificates, a.units as usize);
    // The bundle holds the certificates; the appliance's copy is not needed.
    std::fs::remove_dir_all(station.appliance().certificate_dir(&job_id)).unwrap();
    let export_s = t_export.elapsed().as_secs_f64();
    std::fs::write(
        done_file(&base, i),
        format!(
            "job {}, setup {setup_s:.1} s, {} units in {run_s:.1} s ({:.0} units/s), export {export_s:.1} s\n",
            job.id,
            a.units,
            a.units as f64 / run_s
        ),
    )
    .unwrap();
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

// ----------------------------------------------------------------- measure

/// Server settings beside `fsync` (which `ClusterOptions::no_fsync` turns
/// off with `synchronous_commit` and `full_page_writes`).
fn server_settings() -> Vec<(String, String)> {
    [
        ("shared_buffers", "1GB"),
        ("work_mem", "64MB"),
        ("maintenance_work_mem", "256MB"),
        ("effective_cache_size", "8GB"),
        ("max_wal_size", "8GB"),
        ("checkpoint_timeout", "30min"),
        ("log_min_duration_statement", "100"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// The targets: (name, target, higher is better).
const TARGETS: &[(&str, f64, bool)] = &[
    ("ingest records/s (overall)", 100_000.0, true),
    ("duplicate-UID query, median ms", 100.0, false),
    ("duplicate-UID query, max ms", 100.0, false),
    ("lookup by serial, median ms", 10.0, false),
    ("lookup by serial, p99 ms", 10.0, false),
    ("lookup by UID, median ms", 10.0, false),
    ("lookup by UID, p99 ms", 10.0, false),
    ("lookup by cert hash, median ms", 10.0, false),
    ("lookup by cert hash, p99 ms", 10.0, false),
    ("report, median ms", 1000.0, false),
    ("report, max ms", 1000.0, false),
];

fn measure(a: &Args) {
    let base = cache_dir(a);
    assert!(
        (0..a.appliances).all(|i| bundle_dir(&base, i).join("bundle.json").exists()),
        "no bundles in {}: run the generate phase first",
        base.display()
    );
    let variants: Vec<bool> = match a.fsync.as_str() {
        "on" => vec![true],
        "off" => vec![false],
        "both" => vec![true, false],
        other => usage(&format!("--fsync on, off or both, not {other}")),
    };
    let exe = std::env::current_exe().unwrap();
    let mut results: Vec<(bool, BTreeMap<String, f64>)> = Vec::new();
    for fsync in variants {
        let status = Command::new(&exe)
            .arg("measure-one")
            .args(["--fsync", if fsync { "on" } else { "off" }])
            .args(["--appliances", &a.appliances.to_string()])
            .args(["--units", &a.units.to_string()])
            .args(["--lookups", &a.lookups.to_string()])
            .args(["--runs", &a.runs.to_string()])
            .arg("--dir")
            .arg(&base)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the measurement with fsync {fsync} failed"
        );
        let text = std::fs::read_to_string(result_file(&base, fsync)).unwrap();
        results.push((fsync, serde_json::from_str(&text).unwrap()));
    }

    println!(
        "\n== fleet collector: {} bundles x {} units, machine: {} cores",
        a.appliances,
        a.units,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut header = format!("{:<42} {:>12}", "figure", "target");
    for (fsync, _) in &results {
        header.push_str(&format!(
            " {:>18}",
            if *fsync { "fsync on" } else { "fsync off" }
        ));
    }
    println!("{header}");
    let extra = [
        "ingest units/s (overall)",
        "ingest records/s, slowest bundle",
        "ingest records/s, fastest bundle",
        "verification alone, bundle 1, s",
        "peak RSS after 1 bundle, MiB",
        "peak RSS after all bundles, MiB",
        "duplicate UIDs found",
        "fleet-wide duplicate-UID scan, median ms",
    ];
    for (name, target, higher) in TARGETS {
        let mut line = format!(
            "{:<42} {:>12}",
            name,
            format!("{} {}", if *higher { ">=" } else { "<" }, target)
        );
        for (_, r) in &results {
            let v = r.get(*name).copied().unwrap_or(f64::NAN);
            let ok = if *higher { v >= *target } else { v < *target };
            line.push_str(&format!(
                " {:>13.1} {:<4}",
                v,
                if ok { "ok" } else { "MISS" }
            ));
        }
        println!("{line}");
    }
    for name in extra {
        let mut line = format!("{:<42} {:>12}", name, "-");
        for (_, r) in &results {
            let v = r.get(name).copied().unwrap_or(f64::NAN);
            line.push_str(&format!(" {v:>13.1}     "));
        }
        println!("{line}");
    }
}

fn result_file(base: &Path, fsync: bool) -> PathBuf {
    base.join(format!(
        "results-fsync-{}.json",
        if fsync { "on" } else { "off" }
    ))
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// VmHWM of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) of process `pid`, with those of its
/// children it has waited for when `reaped`.
fn cpu_seconds(pid: &str, reaped: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    proc_stat::cpu_ticks(&stat, reaped) as f64 / proc_stat::TICKS_PER_SECOND
}

/// CPU seconds spent so far by the whole cluster: the postmaster, the
/// children it reaped (autovacuum workers that ended count there) and the
/// live ones (the backend, WAL writer, checkpointer).
fn cluster_cpu_seconds(postmaster: &str) -> f64 {
    let mut total = cpu_seconds(postmaster, true);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if proc_stat::fields(&stat).get(1) == Some(&postmaster) {
            total += proc_stat::cpu_ticks(&stat, false) as f64 / proc_stat::TICKS_PER_SECOND;
        }
    }
    total
}

/// Runs `script` through psql against the cluster's `fleet` database;
/// returns its standard output.
fn psql(cluster: &PrivateCluster, script: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("psql")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(cluster.socket_dir())
        .args(["-U", "flashgate", "-d", "fleet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Times `sql` `runs` times in one psql session (`\timing`: planning,
/// execution and the rows' transfer, as a client sees it); in ms.
fn psql_times(cluster: &PrivateCluster, session: &str, sql: &str, runs: usize) -> Vec<f64> {
    let mut script = format!("{session}\\o /dev/null\n\\timing on\n");
    for _ in 0..runs {
        script.push_str(sql);
        script.push_str(";\n");
    }
    let out = psql(cluster, &script);
    let times: Vec<f64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Time: "))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse().ok())
        .collect();
    assert_eq!(times.len(), runs, "psql timing output: {out}");
    times
}

/// The session setting the ingest's cross-checks run with.
const CROSS_CHECK_SESSION: &str = "SET jit = off;\n";

/// The session of the duplicate-UID query: the cross-checks' setting, and
/// the ingest's passed UIDs, sorted, as the collector sends them.
fn duplicate_uid_session(ingest_id: i64) -> String {
    format!(
        "{CROSS_CHECK_SESSION}CREATE TEMP TABLE bench_uids AS SELECT array_agg(DISTINCT uid ORDER BY uid) AS a \
         FROM units WHERE ingest_id = {ingest_id} AND result = 'passed';\n"
    )
}

/// The ingest's duplicate-UID SELECT for one ingest, its parameters
/// written in: the UIDs from [`duplicate_uid_session`], no repeats within
/// the bundle.
fn duplicate_uid_sql(ingest_id: i64) -> String {
    flashgate_fleet::ingest::duplicate_uid_select()
        .replace("$3::bytea[]", "(SELECT a FROM bench_uids)")
        .replace("$4::bytea[]", "'{}'::bytea[]")
        .replace("$1", &ingest_id.to_string())
}

/// The lookup of `Fleet::device` (`crates/fleet/src/device.rs`), for one
/// condition.
fn device_sql(condition: &str) -> String {
    format!(
        "SELECT u.log_id, u.seq, u.appliance_id, a.cm, u.job_id, u.product, r.operator, u.result, u.stage, \
           u.time_ms, u.uid, u.serial, u.cert_sha256, u.counter, u.record, a.enrollment \
         FROM units u JOIN appliances a USING (appliance_id) LEFT JOIN runs r ON r.run_id = u.run_id \
         WHERE {condition} ORDER BY u.time_ms DESC"
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Index names an EXPLAIN output uses.
fn indexes_in(plan: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for l in plan.lines() {
        for key in ["Scan using ", "Index Scan on "] {
            if let Some(rest) = l.split(key).nth(1) {
                if let Some(name) = rest.split_whitespace().next() {
                    if !found.iter().any(|f| f == name) {
                        found.push(name.to_owned());
                    }
                }
            }
        }
    }
    found
}

fn measure_one(a: &Args) {
    let base = a.dir.clone().expect("--dir");
    let fsync = a.fsync == "on";
    let mut results: BTreeMap<String, f64> = BTreeMap::new();
    let settings = server_settings();
    let cluster = PrivateCluster::start(&ClusterOptions {
        no_fsync: !fsync,
        settings: settings.clone(),
    })
    .expect("a private PostgreSQL cluster (scripts/setup.sh installs postgresql)");
    cluster.create_db("fleet").unwrap();
    let url = cluster.url("fleet");
    println!(
        "\n== measure, fsync {}: private cluster at {}",
        if fsync { "on" } else { "off" },
        cluster.socket_dir().display()
    );
    println!(
        "   settings: {}{}",
        if fsync {
            String::new()
        } else {
            "fsync=off synchronous_commit=off full_page_writes=off ".to_owned()
        },
        settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("   server: {}", psql(&cluster, "SELECT version();").trim());
    println!(
        "   load average (the machine is shared): {}",
        load_average()
    );

    // As `flashgate fleet` runs: a current-thread runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let oem_key =
        flashgate::oem::read_public_key_pem(&base.join("oem").join("signing-key.pub.pem")).unwrap();
    let mut fleet = rt.block_on(async {
        let mut fleet = Fleet::connect(&url).await.unwrap();
        fleet.init().await.unwrap();
        fleet.add_oem_key(&oem_key).await.unwrap();
        fleet
    });

    // The verifier alone on the first bundle, for the share of the ingest
    // it takes. Each bundle is read once just before it is used, so that
    // the figures are of the collector and the database rather than of
    // this shared machine's disk: a bundle just received is in the page
    // cache (this machine's page cache does not keep all ten for long).
    let (files, bytes, read_s) = read_all_timed(&bundle_dir(&base, 0));
    println!(
        "   bundle 1 read into the page cache: {files} files, {} MiB, {read_s:.1} s",
        bytes >> 20
    );
    let t = Instant::now();
    let v = flashgate::bundle::verify_bundle(&bundle_dir(&base, 0), &oem_key, None, None).unwrap();
    assert!(v.report.is_clean(), "{}", v.report);
    let verify_s = t.elapsed().as_secs_f64();
    results.insert("verification alone, bundle 1, s".to_owned(), verify_s);
    println!("   verification alone of bundle 1: {verify_s:.2} s");

    println!("   peak RSS before ingest: {:.1} MiB", peak_rss_mib());
    let data_dir = psql(&cluster, "SHOW data_directory;");
    let postmaster = std::fs::read_to_string(Path::new(data_dir.trim()).join("postmaster.pid"))
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut total_records = 0u64;
    let mut total_s = 0.0;
    let mut total_cpu = (0.0, 0.0);
    let mut rates = Vec::new();
    for i in 0..a.appliances {
        let dir = bundle_dir(&base, i);
        let (_, _, read_s) = read_all_timed(&dir);
        let cpu_before = (cpu_seconds("self", false), cluster_cpu_seconds(&postmaster));
        let t = Instant::now();
        let r = rt
            .block_on(fleet.ingest(
                &dir,
                &IngestOptions {
                    cm: Some(format!("cm-{}", i % 3)),
                },
            ))
            .unwrap();
        let s = t.elapsed().as_secs_f64();
        let cpu = (
            cpu_seconds("self", false) - cpu_before.0,
            cluster_cpu_seconds(&postmaster) - cpu_before.1,
        );
        total_cpu = (total_cpu.0 + cpu.0, total_cpu.1 + cpu.1);
        assert!(r.outcome.merged(), "{r}");
        total_records += r.records_added;
        total_s += s;
        let rate = r.records_added as f64 / s;
        rates.push(rate);
        let rss = peak_rss_mib();
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for an in &r.anomalies {
            *kinds.entry(an.split(':').next().unwrap_or("")).or_default() += 1;
        }
        println!(
            "   ingest {:>2}: {} records in {s:.2} s = {rate:.0} records/s (read first in {read_s:.1} s), peak RSS {rss:.1} MiB, anomalies {kinds:?}",
            i + 1,
            r.records_added,
        );
        println!(
            "      CPU: collector and verifier {:.2} s, PostgreSQL {:.2} s; {:.0}% of {cores} cores over the ingest",
            cpu.0,
            cpu.1,
            100.0 * (cpu.0 + cpu.1) / (s * cores as f64)
        );
        println!(
            "      phases: {}",
            r.phases
                .iter()
                .map(|(p, d)| format!("{p} {:.2} s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if i == 0 {
            results.insert("peak RSS after 1 bundle, MiB".to_owned(), rss);
        }
        results.insert("peak RSS after all bundles, MiB".to_owned(), rss);
    }
    let units = (a.appliances * a.units) as f64;
    results.insert(
        "ingest records/s (overall)".to_owned(),
        total_records as f64 / total_s,
    );
    results.insert("ingest units/s (overall)".to_owned(), units / total_s);
    results.insert(
        "ingest records/s, slowest bundle".to_owned(),
        rates.iter().copied().fold(f64::INFINITY, f64::min),
    );
    results.insert(
        "ingest records/s, fastest bundle".to_owned(),
        rates.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "   ingest: {total_records} records ({units} units) in {total_s:.1} s = {:.0} records/s",
        total_records as f64 / total_s
    );
    // With every core busy the whole time, the ingest could go no faster
    // than the CPU it needs allows.
    let per_100k = |c: f64| c * 100_000.0 / total_records as f64;
    let bound = total_records as f64 / ((total_cpu.0 + total_cpu.1) / cores as f64);
    println!(
        "   ingest CPU per 100,000 records: collector and verifier {:.2} s, PostgreSQL {:.2} s; on {cores} cores fully used, at most {bound:.0} records/s",
        per_100k(total_cpu.0),
        per_100k(total_cpu.1),
    );
    results.insert(
        "ingest CPU per 100,000 records, collector and verifier, s".to_owned(),
        per_100k(total_cpu.0),
    );
    results.insert(
        "ingest CPU per 100,000 records, PostgreSQL, s".to_owned(),
        per_100k(total_cpu.1),
    );
    results.insert("ingest records/s bound by its CPU".to_owned(), bound);
    let last_ingest: i64 = psql(
        &cluster,
        "SELECT max(ingest_id) FROM ingests WHERE outcome = 'merged';",
    )
    .trim()
    .parse()
    .unwrap();
    let dups: f64 = psql(
        &cluster,
        "SELECT count(*) FROM anomalies WHERE kind = 'duplicate-uid';",
    )
    .trim()
    .parse()
    .unwrap();
    results.insert("duplicate UIDs found".to_owned(), dups);
    println!(
        "   open anomalies by kind: {}",
        psql(
            &cluster,
            "SELECT string_agg(kind || ' ' || n, ', ') FROM (SELECT kind, count(*) AS n FROM anomalies WHERE open GROUP BY kind ORDER BY kind) k;",
        )
        .trim()
    );
    // The statements the server logged as slow during the ingests.
    slow_statements(&cluster);
    psql(&cluster, "VACUUM ANALYZE;");

    // The duplicate-UID query of the last ingest: its UIDs against every record.
    let dup_sql = duplicate_uid_sql(last_ingest);
    let times = sorted(psql_times(
        &cluster,
        &duplicate_uid_session(last_ingest),
        &dup_sql,
        a.runs,
    ));
    let (med, max) = (percentile(&times, 50.0), percentile(&times, 100.0));
    println!(
        "   duplicate-UID query (ingest {last_ingest}'s UIDs against all records), {} runs: median {med:.1} ms, max {max:.1} ms",
        a.runs
    );
    results.insert("duplicate-UID query, median ms".to_owned(), med);
    results.insert("duplicate-UID query, max ms".to_owned(), max);
    let fleet_wide = "SELECT encode(uid, 'hex'), count(*) FROM units WHERE result = 'passed' AND uid IS NOT NULL GROUP BY uid HAVING count(*) > 1";
    let times = sorted(psql_times(&cluster, "", fleet_wide, 5));
    println!(
        "   fleet-wide duplicate-UID scan (every record, no ingest filter), 5 runs: median {:.1} ms",
        percentile(&times, 50.0)
    );
    results.insert(
        "fleet-wide duplicate-UID scan, median ms".to_owned(),
        percentile(&times, 50.0),
    );

    // Lookups at random known devices: a different sample for each kind.
    let sample = psql(
        &cluster,
        &format!(
            "SELECT serial || ',' || encode(uid, 'hex') || ',' || encode(cert_sha256, 'hex') FROM units WHERE result = 'passed' ORDER BY random() LIMIT {};",
            3 * a.lookups
        ),
    );
    let rows: Vec<Vec<String>> = sample
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    assert_eq!(rows.len(), 3 * a.lookups);
    let kinds: [(&str, usize); 3] = [("serial", 0), ("UID", 1), ("cert hash", 2)];
    for (k, (kind, col)) in kinds.iter().enumerate() {
        let mut times = Vec::with_capacity(a.lookups);
        for row in &rows[k * a.lookups..(k + 1) * a.lookups] {
            let q = match *col {
                0 => DeviceQuery::Serial(row[0].clone()),
                1 => DeviceQuery::Uid(hex::decode(&row[1]).unwrap()),
                _ => {
                    DeviceQuery::CertificateHash(hex::decode(&row[2]).unwrap().try_into().unwrap())
                }
            };
            let t = Instant::now();
            let answer = rt.block_on(fleet.device(&q)).unwrap();
            times.push(ms(t.elapsed()));
            assert!(
                matches!(&answer, DeviceAnswer::Ours { records } if !records.is_empty()),
                "a known device not found: {answer:?}"
            );
        }
        let times = sorted(times);
        let (med, p99) = (percentile(&times, 50.0), percentile(&times, 99.0));
        println!(
            "   lookup by {kind}, {} devices: median {med:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
            a.lookups,
            percentile(&times, 100.0)
        );
        results.insert(format!("lookup by {kind}, median ms"), med);
        results.insert(format!("lookup by {kind}, p99 ms"), p99);
    }

    // The report.
    let mut times = Vec::new();
    let mut jobs = 0;
    for _ in 0..a.runs {
        let t = Instant::now();
        let r = rt.block_on(fleet.report(None)).unwrap();
        times.push(ms(t.elapsed()));
        jobs = r.jobs.len();
    }
    let times = sorted(times);
    let (med, max) = (percentile(&times, 50.0), percentile(&times, 100.0));
    println!(
        "   report ({jobs} jobs), {} runs: median {med:.1} ms, max {max:.1} ms",
        a.runs
    );
    results.insert("report, median ms".to_owned(), med);
    results.insert("report, max ms".to_owned(), max);

    // The plans.
    let row = &rows[0];
    let plans = [
        (
            "duplicate-UID query".to_owned(),
            format!(
                "{}EXPLAIN (ANALYZE, BUFFERS) {dup_sql}",
                duplicate_uid_session(last_ingest)
            ),
        ),
        (
            "lookup by serial".to_owned(),
            format!(
                "EXPLAIN (ANALYZE, BUFFERS) {}",
                device_sql(&format!("u.serial = '{}'", row[0]))
            ),
        ),
        (
            "lookup by UID".to_owned(),
            format!(
                "EXPLAIN (ANALYZE, BUFFERS) {}",
                device_sql(&format!("u.uid = '\\x{}'::bytea", row[1]))
            ),
        ),
        (
            "lookup by cert hash".to_owned(),
            format!(
                "EXPLAIN (ANALYZE, BUFFERS) {}",
                device_sql(&format!("u.cert_sha256 = '\\x{}'::bytea", row[2]))
            ),
        ),
    ];
    let mut used = Vec::new();
    for (name, sql) in &plans {
        let plan = psql(&cluster, &format!("{sql};"));
        println!("\n-- EXPLAIN ANALYZE, {name}:\n{}", plan.trim_end());
        used.push(format!("{name}: {}", indexes_in(&plan).join(", ")));
    }
    println!("\n   indexes used:");
    for u in &used {
        println!("     {u}");
    }
    println!("\n   load average at the end: {}", load_average());
    std::fs::write(
        result_file(&base, fsync),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
    drop(fleet);
    drop(cluster);
}

/// [`read_all`], timed: (files, bytes, seconds).
fn read_all_timed(dir: &Path) -> (u64, u64, f64) {
    let t = Instant::now();
    let (files, bytes) = read_all(dir);
    (files, bytes, t.elapsed().as_secs_f64())
}

/// Reads every file under `dir`; returns (files, bytes).
fn read_all(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if e.file_type().unwrap().is_dir() {
            let (f, b) = read_all(&path);
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += std::fs::read(&path).unwrap().len() as u64;
        }
    }
    (files, bytes)
}

/// Prints the statements the server logged (`log_min_duration_statement`)
/// during the ingests, summed by their first words.
fn slow_statements(cluster: &PrivateCluster) {
    let log = cluster.socket_dir().parent().unwrap().join("server.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut by: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for l in text.lines() {
        let Some(rest) = l.split("duration: ").nth(1) else {
            continue;
        };
        let Some((num, stmt)) = rest.split_once(" ms") else {
            continue;
        };
        let Ok(d) = num.trim().parse::<f64>() else {
            continue;
        };
        let stmt = stmt
            .split_once(": ")
            .map_or(stmt, |(_, s)| s)
            .chars()
            .take(70)
            .collect::<String>();
        let e = by.entry(stmt).or_default();
        e.0 += 1;
        e.1 += d;
    }
    if by.is_empty() {
        return;
    }
    println!("   statements over 100 ms during the ingests (count, total):");
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|x, y| y.1 .1.total_cmp(&x.1 .1));
    for (stmt, (n, total)) in v.iter().take(12) {
        println!("     {n:>3} x {:>9.0} ms  {stmt}", total);
    }
}
