//! The driver against stock OpenOCD where no target can answer: each way
//! of failing before the first board gets its own sentence, with the stage
//! and OpenOCD's words, and no OpenOCD process is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use flashgate_openocd::openocd::{OpenOcdConfig, Script};
use flashgate_openocd::{OpenOcdOptions, OpenOcdTarget};
use flashgate_target::Target as _;

fn openocd() -> PathBuf {
    let p = PathBuf::from("/usr/bin/openocd");
    assert!(
        p.is_file(),
        "OpenOCD is not installed: apt-get install openocd (scripts/setup.sh does)"
    );
    p
}

/// Processes named openocd, by pid.
fn openocd_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "openocd")
        })
        .collect()
}

fn connect_error(interface: &str, program: Option<PathBuf>) -> String {
    let mut config = OpenOcdConfig::new(vec![
        Script::File(interface.to_owned()),
        Script::File("target/stm32f1x.cfg".to_owned()),
    ]);
    config.program = program.unwrap_or_else(openocd);
    let mut t = OpenOcdTarget::new(config, None, OpenOcdOptions::default()).unwrap();
    let e = t.connect().unwrap_err().to_string();
    eprintln!("{interface}: {e}");
    drop(t);
    e
}

#[test]
fn failures_before_the_first_board_are_told_apart() {
    let before = openocd_pids();

    let e = connect_error(
        "interface/dummy.cfg",
        Some(PathBuf::from("/nonexistent/openocd")),
    );
    assert!(
        e.contains("OpenOCD (/nonexistent/openocd) cannot be run")
            && e.contains("apt-get install openocd"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("openocd");
    std::fs::write(&old, "#!/bin/sh\necho 'Open On-Chip Debugger 0.10.0' >&2\n").unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let e = connect_error("interface/dummy.cfg", Some(old));
    assert!(
        e.contains("OpenOCD 0.10.0 is too old") && e.contains("0.12.0"),
        "{e}"
    );

    let e = connect_error("interface/cmsis-dap.cfg", None);
    assert!(
        e.contains("during connect") && e.contains("no debug probe was found"),
        "{e}"
    );
    assert!(e.contains("CMSIS-DAP"), "OpenOCD's own words are kept: {e}");

    // The dummy adapter: a probe, but nothing on the wires.
    let e = connect_error("interface/dummy.cfg", None);
    assert!(
        e.contains("the target does not respond on the debug port"),
        "{e}"
    );

    let e = connect_error("/nonexistent/interface.cfg", None);
    assert!(e.contains("OpenOCD"), "{e}");

    std::thread::sleep(std::time::Duration::from_millis(200));
    let left: Vec<u32> = openocd_pids()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(left.is_empty(), "OpenOCD processes left behind: {left:?}");
}
