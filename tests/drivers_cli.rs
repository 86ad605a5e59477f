//! The whole secure flow through the real drivers, against the simulated
//! chips served on pseudo-terminals by `flashgate sim`, and read back by
//! avrdude and stm32flash (tools nobody here wrote). Skips with a message
//! where a tool is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::sim::{firmware, have, Sim, STATE};
use common::{Kind, Lab};

fn job(
    lab: &Lab,
    policy_file: &str,
    edit: impl Fn(String) -> String,
    firmware: &[u8],
    at: &str,
) -> String {
    let text = std::fs::read_to_string(common::repo().join("policies").join(policy_file)).unwrap();
    // job build refuses to overwrite the package of a job imported before.
    let _ = std::fs::remove_file(lab.path("j.fgj"));
    lab.import_policy(&edit(text), firmware, at)
}

/// The shipped AVR policy without its lock, so that avrdude can read back
/// what flashgate programmed.
fn unlocked_avr(policy: String) -> String {
    policy
        .replace("level = \"readout\"", "level = \"none\"")
        .replace("avr_lock_byte = 0xFC", "")
}

/// The shipped STM32 policy without readout protection, so that
/// stm32flash can read back what flashgate programmed.
fn unlocked_stm32(policy: String) -> String {
    policy.replace("level = \"readout\"", "level = \"none\"")
}

/// The avr-isp target of a simulated ArduinoISP, with its agent.
fn avr_target(sim: &Sim) -> String {
    format!("avr-isp:port={},agent={}", sim.pty(), sim.agent_pty())
}

/// The stm32-uart target of a simulated bootloader. A pty carries no
/// parity: 8N1 here, 8E1 on real ports.
fn stm32_target(sim: &Sim) -> String {
    format!("stm32-uart:port={},parity=none", sim.pty())
}

/// The ATmega328P's flash as avrdude reads it through the ArduinoISP on `pty`.
fn avrdude_reads_flash(lab: &Lab, pty: &str) -> Vec<u8> {
    let read = Command::new("avrdude")
        .args([
            "-c",
            "stk500v1",
            "-p",
            "m328p",
            "-P",
            pty,
            "-b",
            "19200",
            "-U",
            "flash:r:out.bin:r",
        ])
        .current_dir(lab.dir.path())
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    std::fs::read(lab.path("out.bin")).unwrap()
}

/// `len` bytes of the STM32's flash from 0x08000000, as stm32flash reads
/// them through the bootloader on `pty`.
fn stm32flash_reads_flash(lab: &Lab, pty: &str, len: usize) -> Vec<u8> {
    let read = Command::new("stm32flash")
        .args([
            "-m",
            "8n1",
            "-r",
            "out.bin",
            "-S",
            &format!("0x08000000:{len}"),
            pty,
        ])
        .current_dir(lab.dir.path())
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stdout)
    );
    std::fs::read(lab.path("out.bin")).unwrap()
}

/// Adds `[fixtures.NAME]` with one channel per target to the lab's config.
fn add_fixtures(lab: &Lab, name: &str, targets: &[String]) {
    let path = lab.path("appliance.toml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    let list: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    config.push_str(&format!(
        "[fixtures.{name}]\ntargets = [{}]\n",
        list.join(", ")
    ));
    std::fs::write(path, config).unwrap();
}

/// The `run-started` records in the lab's audit log.
fn runs_started(lab: &Lab) -> usize {
    if !lab.path("state/audit/audit.log").exists() {
        return 0;
    }
    lab.records()
        .iter()
        .filter(|r| r.kind.name() == "run-started")
        .count()
}

#[test]
fn avr_isp_secure_flow_then_avrdude_reads_the_unlocked_chip() {
    if !have("avrdude") {
        return;
    }
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let fw = firmware(3000);
    let id = job(&lab, "avr-atmega328p.toml", unlocked_avr, &fw, "0");
    let sim = Sim::avr_isp(&lab, "m328p", "timing=fast");
    let target = avr_target(&sim);
    let out = lab.fg(&["run", "--job", &id, "--target", &target, "--units", "1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let back = avrdude_reads_flash(&lab, sim.pty());
    assert_eq!(
        &back[..fw.len()],
        fw.as_slice(),
        "avrdude reads back the job's firmware"
    );
}

/// A gang of three ArduinoISPs, each its own chip on its own ptys, in one
/// run with one quota: every chip programmed, then read back by avrdude.
#[test]
fn a_gang_of_avr_isp_programmers_in_one_run() {
    if !have("avrdude") {
        return;
    }
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let fw = firmware(2000);
    let id = job(&lab, "avr-atmega328p.toml", unlocked_avr, &fw, "0");
    let sims: Vec<Sim> = (1..=3)
        .map(|n| {
            Sim::avr_isp_in(
                &lab,
                "m328p",
                &format!("timing=fast,serial={n:016x}"),
                &format!("chip-{n}.json"),
            )
        })
        .collect();
    let mut args = vec!["run".to_owned(), "--job".to_owned(), id.clone()];
    for sim in &sims {
        args.push("--target".to_owned());
        args.push(avr_target(sim));
    }
    args.extend(["--units".to_owned(), "3".to_owned(), "--json".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.fg(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = stdout
        .lines()
        .filter(|l| l.contains("\"unit-passed\""))
        .count();
    assert_eq!(passed, 3, "{stdout}");
    for ch in 0..3 {
        assert!(
            stdout.contains(&format!("\"channel\":{ch}")),
            "channel {ch} took part: {stdout}"
        );
    }
    // Several --target take one channel each; --channels with them is refused.
    let mut with_channels = args.clone();
    with_channels.extend(["--channels", "2"]);
    let refused = lab.fg(&with_channels);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("leave out --channels"));

    for sim in &sims {
        let back = avrdude_reads_flash(&lab, sim.pty());
        assert_eq!(
            &back[..fw.len()],
            fw.as_slice(),
            "each chip holds the job's firmware"
        );
    }
}

#[test]
fn avr_isp_secure_flow_locks_the_chip() {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let id = job(&lab, "avr-atmega328p.toml", |t| t, &firmware(2000), "0");
    let mut sim = Sim::avr_isp(&lab, "m328p", "timing=fast");
    let target = format!("avr-isp:port={},agent={}", sim.pty(), sim.agent_pty());
    let out = lab.fg(&[
        "run", "--job", &id, "--target", &target, "--units", "1", "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sim.stop();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path(STATE)).unwrap()).unwrap();
    assert_eq!(
        state["lock"], "fc",
        "the lock byte the policy names, read back: {state}"
    );
    // A second run on the same (now locked) chip refuses it at identify and never counts it.
    let mut sim = Sim::avr_isp(&lab, "m328p", "timing=fast");
    let target = format!("avr-isp:port={},agent={}", sim.pty(), sim.agent_pty());
    let out = lab.fg(&[
        "run", "--job", &id, "--target", &target, "--units", "1", "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"stage\":\"identify\"") && text.contains("\"counter\":null"),
        "{text}"
    );
    sim.stop();
    // A programmer port that is not there: no board was reached, so the run
    // exits 2 with the reason, not 0 with "unit count reached".
    let out = lab.fg(&[
        "run",
        "--job",
        &id,
        "--target",
        "avr-isp:port=/nonexistent/programmer,agent=/nonexistent/agent",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no board could be reached"), "{err}");
}

#[test]
fn stm32_uart_secure_flow_then_stm32flash_reads_the_unlocked_chip() {
    if !have("stm32flash") {
        return;
    }
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let fw = firmware(6000);
    let id = job(&lab, "stm32f103.toml", unlocked_stm32, &fw, "0x08000000");
    let sim = Sim::stm32_uart(&lab, "f103", "timing=fast");
    let target = stm32_target(&sim);
    let out = lab.fg(&["run", "--job", &id, "--target", &target, "--units", "1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stm32flash_reads_flash(&lab, sim.pty(), fw.len()),
        fw,
        "stm32flash reads back the job's firmware"
    );
}

/// Six programmers of two drivers in one fixture set of the appliance
/// config, four ArduinoISPs and two STM32 bootloaders, each its own chip
/// on its own ptys; an AVR job and an STM32 job (the shipped policies,
/// unlocked as the tests above, so that the tools can read back); one run
/// programs all six, then avrdude and stm32flash read every chip back.
#[test]
fn a_fixture_set_of_avr_and_stm32_programmers_runs_both_jobs() {
    if !have("avrdude") || !have("stm32flash") {
        return;
    }
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let avr_fw = firmware(2000);
    let avr = job(&lab, "avr-atmega328p.toml", unlocked_avr, &avr_fw, "0");
    let stm32_fw = firmware(6000);
    let stm32 = job(
        &lab,
        "stm32f103.toml",
        unlocked_stm32,
        &stm32_fw,
        "0x08000000",
    );
    let avrs: Vec<Sim> = (1..=4)
        .map(|n| {
            Sim::avr_isp_in(
                &lab,
                "m328p",
                &format!("timing=fast,serial={n:016x}"),
                &format!("avr-{n}.json"),
            )
        })
        .collect();
    let stm32s: Vec<Sim> = (1..=2)
        .map(|n| {
            Sim::stm32_uart_in(
                &lab,
                "f103",
                &format!("timing=fast,uid={n:024x}"),
                &format!("stm32-{n}.json"),
            )
        })
        .collect();
    let mut targets: Vec<String> = avrs.iter().map(avr_target).collect();
    targets.extend(stm32s.iter().map(stm32_target));
    add_fixtures(&lab, "line", &targets);

    let listed = lab.ok(&["fixtures", "list"]);
    assert!(
        listed.contains("line (config): 6 channel(s), avr-isp, stm32-uart"),
        "{listed}"
    );
    let out = lab.fg(&[
        "run",
        "--fixtures",
        "line",
        "--job",
        &avr,
        "--job",
        &stm32,
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every event names its job; channels are the set's.
    assert!(events.iter().all(|e| e["job"].is_string()), "{stdout}");
    let mut passed: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["event"] == "unit-passed")
        .map(|e| {
            assert_eq!(e["channel"], e["unit"]["channel"], "{e}");
            (
                e["channel"].as_u64().unwrap(),
                e["job"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    passed.sort();
    let expected: Vec<(u64, String)> = (0..6)
        .map(|ch| (ch, if ch < 4 { avr.clone() } else { stm32.clone() }))
        .collect();
    assert_eq!(passed, expected, "{stdout}");
    // One summary per job, at the end.
    let finished: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "run-finished")
        .collect();
    assert_eq!(finished.len(), 2, "{stdout}");
    assert!(events[events.len() - 2..]
        .iter()
        .all(|e| e["event"] == "run-finished"));
    for (f, (job, n)) in finished.iter().zip([(&avr, 4), (&stm32, 2)]) {
        assert_eq!(f["job"].as_str(), Some(job.as_str()), "{f}");
        assert_eq!(f["summary"]["passed"], n, "{f}");
    }

    for sim in &avrs {
        let back = avrdude_reads_flash(&lab, sim.pty());
        assert_eq!(
            &back[..avr_fw.len()],
            avr_fw.as_slice(),
            "each AVR holds the AVR job's firmware"
        );
    }
    for sim in &stm32s {
        assert_eq!(
            stm32flash_reads_flash(&lab, sim.pty(), stm32_fw.len()),
            stm32_fw,
            "each STM32 holds the STM32 job's firmware"
        );
    }
}

/// What `run --fixtures` and `--job` refuse, and that a set whose driver
/// has no job is refused before anything is recorded.
#[test]
fn run_refuses_jobs_that_do_not_match_the_fixture_set() {
    let (lab, id) = common::Lab::with_sim_job(|t| t, 4096);
    add_fixtures(
        &lab,
        "mixed",
        &[
            "sim:seed=1".to_owned(),
            "avr-isp:port=/nonexistent/programmer,agent=/nonexistent/agent".to_owned(),
        ],
    );

    let err = lab.fails(&["run", "--job", &id, "--job", &id]);
    assert!(err.contains("add --fixtures NAME"), "{err}");
    let err = lab.fails(&[
        "run",
        "--fixtures",
        "mixed",
        "--job",
        &id,
        "--target",
        "sim",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = lab.fails(&["run", "--fixtures", "nope", "--job", &id]);
    assert!(
        err.contains("no fixture set nope; the sets are mixed"),
        "{err}"
    );

    let before = runs_started(&lab);
    let out = lab.fg(&["run", "--fixtures", "mixed", "--job", &id, "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("has avr-isp channels but no job given is for avr-isp"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no event is written");
    assert_eq!(runs_started(&lab), before, "no run-started record");

    // A bad spec in a set is refused when the config is read, by any command.
    add_fixtures(
        &lab,
        "bad",
        &["stm32-uart:port=/dev/x,baud=fast".to_owned()],
    );
    let err = lab.fails(&["fixtures", "list"]);
    assert!(
        err.contains("fixtures.bad: channel 0: the stm32-uart target's baud=fast is not valid"),
        "{err}"
    );
}
