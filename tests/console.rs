//! The operator console of `flashgate serve` in a real browser: Debian's
//! Chromium, driven by `tests/console/console.mjs` (Node and
//! `playwright-core`, installed by scripts/setup.sh), over mutual TLS with
//! the operator's and the auditor's certificates. The operator starts a run
//! on eight simulated channels from the page, watches every tile pass a
//! unit, stops the run from the page; the totals the page shows must be the
//! run's summary. The auditor sees the same run live, has no start or stop
//! button, and downloads a job's audit bundle from the page.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::station::Served;
use common::Lab;
use serde_json::Value;

/// Boards the run may take: far more than pass before the test stops it.
const UNITS: u64 = 600;

const SETUP: &str = "run scripts/setup.sh (it installs Debian's chromium and nodejs and, in tests/console/, playwright-core)";

/// Node, Chromium and playwright-core: the test fails (it is not skipped)
/// when one is missing.
fn browser_tools(script_dir: &Path) -> (PathBuf, PathBuf) {
    let node = std::env::var_os("NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let version = Command::new(&node).arg("--version").output();
    match version {
        Ok(out) if out.status.success() => {}
        _ => panic!("`{}` cannot be run: {SETUP}", node.display()),
    }
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        chromium.is_file(),
        "there is no Chromium at {}: {SETUP}",
        chromium.display()
    );
    let playwright = script_dir.join("node_modules/playwright-core/package.json");
    assert!(
        playwright.is_file(),
        "playwright-core is not installed in {}: {SETUP}",
        script_dir.display()
    );
    (node, chromium)
}

/// Runs `node console.mjs` with `env`, at most `limit`; returns the JSON
/// document it printed last on stdout.
fn run_script(node: &Path, script_dir: &Path, env: &[(&str, String)], limit: Duration) -> Value {
    let mut cmd = Command::new(node);
    cmd.arg(script_dir.join("console.mjs"))
        .current_dir(script_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start node");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s).unwrap_or_default()
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).map(|_| s).unwrap_or_default()
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    eprintln!("--- console.mjs ---\n{err}");
    let Some(status) = status else {
        panic!("console.mjs did not finish within {limit:?}\n{out}");
    };
    assert!(status.success(), "console.mjs failed ({status}):\n{out}");
    let last = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("console.mjs printed no JSON:\n{out}"));
    serde_json::from_str(last).unwrap()
}

fn totals(summary: &Value) -> (u64, u64) {
    let jobs = summary.as_array().unwrap();
    let passed = jobs
        .iter()
        .map(|j| j["summary"]["passed"].as_u64().unwrap())
        .sum();
    let failed = jobs
        .iter()
        .flat_map(|j| {
            j["summary"]["failed_by_stage"]
                .as_object()
                .unwrap()
                .values()
        })
        .map(|v| v.as_u64().unwrap())
        .sum();
    (passed, failed)
}

#[test]
fn console_in_chromium_with_operator_and_auditor() {
    let script_dir = common::repo().join("tests/console");
    let (node, chromium) = browser_tools(&script_dir);
    let out_dir = common::repo().join("target/console");
    std::fs::create_dir_all(&out_dir).unwrap();

    let (lab, job) = Lab::with_sim_job(|p| p, 4096);
    let served = Served::start(&lab, &[]);
    // Realistic timing (about a second a unit) and a few faults, so that
    // the run is still going when it is stopped and has failures to show.
    let fixtures = served.sim_fixtures(8, ",timing=realistic,fault-rate=0.05");
    let cert = |role: &str, ext: &str| {
        served
            .certs
            .path(&format!("{role}{ext}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let env = [
        ("CONSOLE_URL", served.url("/")),
        ("CHROMIUM", chromium.to_str().unwrap().to_owned()),
        ("OPERATOR_CERT", cert("operator", ".pem")),
        ("OPERATOR_KEY", cert("operator", ".key.pem")),
        ("AUDITOR_CERT", cert("auditor", ".pem")),
        ("AUDITOR_KEY", cert("auditor", ".key.pem")),
        ("FIXTURES", fixtures.clone()),
        ("JOB", job.clone()),
        ("UNITS", UNITS.to_string()),
        ("OUT_DIR", out_dir.to_str().unwrap().to_owned()),
    ];
    let report = run_script(&node, &script_dir, &env, Duration::from_secs(240));
    println!(
        "console report: {}",
        serde_json::to_string_pretty(&report).unwrap()
    );

    // What the page showed is what the service says.
    let id = report["run_id"].as_str().expect("the run's id").to_owned();
    let op = served.client(Some("operator"));
    let summary: Value = op
        .get(served.url(&format!("/api/v1/runs/{id}/summary")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let (passed, failed) = totals(&summary);
    let page = &report["operator"]["totals"];
    assert_eq!(
        (page["passed"].as_u64(), page["failed"].as_u64()),
        (Some(passed), Some(failed)),
        "the operator's page shows other totals than the summary {summary}"
    );
    assert_eq!(
        report["operator"]["tiles_passed_sum"].as_u64(),
        Some(passed),
        "the tiles' counts do not add up to the run's"
    );
    let seen = &report["auditor"]["totals"];
    assert_eq!(
        (seen["passed"].as_u64(), seen["failed"].as_u64()),
        (Some(passed), Some(failed)),
        "the auditor's page shows other totals than the summary"
    );
    assert!(passed >= 8, "{summary}");
    assert!(
        passed + failed < UNITS,
        "the run ended before it was stopped: {summary}"
    );
    assert_eq!(summary[0]["summary"]["stopped_because"], "operator stop");
    let status: Value = op
        .get(served.url(&format!("/api/v1/runs/{id}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        status["stop_requested_by"]
            .as_str()
            .unwrap()
            .contains("OU=operator"),
        "{status}"
    );
    // The failures list holds the unit-failed events (at most 50).
    let shown = report["operator"]["failures_shown"].as_u64().unwrap();
    assert_eq!(shown, failed.min(50), "failures listed");

    // The auditor's download was the job's bundle.
    assert_eq!(
        report["auditor"]["bundle"]["name"].as_str(),
        Some(format!("bundle-{job}.tar").as_str())
    );
    assert!(report["auditor"]["bundle"]["bytes"].as_u64().unwrap() > 1024);

    // The page shows the API's own sentence when a start is refused.
    let refused = report["operator"]["start_error"].as_str().unwrap();
    assert!(refused.contains("live run"), "{refused}");

    // The figures for the record.
    for who in ["operator", "auditor"] {
        let load = &report[who]["first_load"];
        println!(
            "{who}: first load {} bytes of response bodies in {} responses, ready after {} ms",
            load["bytes"], load["responses"], load["ready_ms"]
        );
    }
    println!(
        "operator: start pressed to first live tile update: {} ms",
        report["operator"]["start_to_first_tile_ms"]
    );
    println!(
        "auditor (opened during the run): navigation to first live tile update: {} ms",
        report["auditor"]["first_tile_ms"]
    );
    // For comparison, the same first load from a plain client on one fresh
    // connection (the browser reaches the station through Playwright's
    // client-certificate proxy, which adds its own latency).
    let plain = served.client(Some("auditor"));
    let t0 = Instant::now();
    let mut bytes = 0;
    for path in [
        "/",
        "/console.js",
        "/console.css",
        "/api/v1/whoami",
        "/api/v1/runs",
    ] {
        let r = plain.get(served.url(path)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        bytes += r.bytes().unwrap().len();
    }
    println!(
        "reqwest, one connection: page, script, style, whoami and runs ({bytes} bytes) in {} ms",
        t0.elapsed().as_millis()
    );

    let (exit, log) = served.stop();
    assert!(exit.success(), "{log}");
    assert!(
        !log.contains("BEGIN") && !log.contains("PRIVATE"),
        "key material in the service log"
    );
}
