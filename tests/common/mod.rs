//! A test lab: a fresh token of a given kind, OEM material and an appliance
//! config in a temporary directory, driven through the real `flashgate`
//! binary so that every process loads the PKCS#11 module on its own.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SoftHsm,
    Kryoptic,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::SoftHsm => "softhsm",
            Kind::Kryoptic => "kryoptic",
        }
    }
    pub fn module(self) -> PathBuf {
        match self {
            Kind::SoftHsm => PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
            Kind::Kryoptic => repo().join("tokens/kryoptic/target/release/libkryoptic_pkcs11.so"),
        }
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub kind: Kind,
    env: (String, String),
}

/// Creates a token of `kind` labelled `label` in `dir`, returning the env var that selects it.
pub fn init_token(kind: Kind, dir: &Path, label: &str, pin_file: &Path) -> (String, String) {
    let out = Command::new(repo().join("scripts/tokens.sh"))
        .args(["init", kind.name()])
        .arg(dir)
        .arg(label)
        .arg(pin_file)
        .output()
        .expect("run scripts/tokens.sh");
    assert!(
        out.status.success(),
        "token set-up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let (k, v) = line
        .trim()
        .split_once('=')
        .expect("KEY=VALUE from tokens.sh");
    (k.to_owned(), v.to_owned())
}

impl Lab {
    /// Token, OEM keys (files), appliance config; not enrolled yet.
    pub fn new(kind: Kind) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("user-pin");
        std::fs::write(&pin, "4711-test-pin\n").unwrap();
        let env = init_token(kind, &dir.path().join("token"), "appliance", &pin);
        let lab = Lab { dir, kind, env };
        lab.write_config("appliance.toml", "appliance", "user-pin");
        let out = lab.fg(&["oem", "init", "--out", "oem", "--name", "Acme Corp"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    pub fn write_config(&self, name: &str, label: &str, pin: &str) {
        std::fs::write(
            self.path(name),
            format!(
                "state_dir = \"state\"\n[token]\nmodule = \"{}\"\nlabel = \"{label}\"\npin_file = \"{pin}\"\n[trust]\noem_keys = [\"oem/signing-key.pub.pem\"]\n",
                self.kind.module().display()
            ),
        )
        .unwrap();
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Runs flashgate in the lab directory.
    pub fn fg(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_flashgate"))
            .args(args)
            .current_dir(self.dir.path())
            .env(&self.env.0, &self.env.1)
            .env_remove("FLASHGATE_CONFIG")
            .output()
            .expect("run flashgate")
    }

    /// Runs flashgate and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.fg(args);
        assert!(
            out.status.success(),
            "flashgate {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs flashgate, asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.fg(args);
        assert!(
            !out.status.success(),
            "flashgate {args:?} unexpectedly succeeded"
        );
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!err.contains("panicked"), "flashgate panicked: {err}");
        err
    }

    pub fn enroll(&self) {
        self.ok(&["appliance", "init", "-o", "enrollment.cbor"]);
    }

    /// Writes a firmware file of `size` deterministic bytes and builds a job from `policy`.
    pub fn build_job(&self, out: &str, policy: &str, size: usize) {
        let fw: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(self.path("fw.bin"), fw).unwrap();
        self.ok(&[
            "job",
            "build",
            "--oem",
            "oem",
            "--policy",
            policy,
            "--firmware",
            "fw.bin@0x08000000",
            "--appliance",
            "enrollment.cbor",
            "-o",
            out,
        ]);
    }

    /// Writes the sim policy, valid from yesterday for 180 days, with `edit` applied.
    pub fn policy(&self, name: &str, edit: impl FnOnce(String) -> String) -> String {
        std::fs::write(self.path(name), edit(sim_policy_text())).unwrap();
        name.to_owned()
    }

    /// Labels of the job objects (`fg-job:` and `fg-imported:`) in the token.
    pub fn job_objects(&self) -> Vec<String> {
        self.ok(&["appliance", "show"])
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("fg-job:") || l.starts_with("fg-imported:"))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
            .collect()
    }

    /// The id of the first job `job list` shows.
    pub fn first_job_id(&self) -> String {
        self.ok(&["job", "list"])
            .split_whitespace()
            .next()
            .expect("a job is listed")
            .to_owned()
    }

    /// An enrolled SoftHSM appliance with one imported sim job (`edit`
    /// applied to the policy, `size` bytes of firmware); returns the job id.
    pub fn with_sim_job(edit: impl FnOnce(String) -> String, size: usize) -> (Lab, String) {
        let lab = Lab::new(Kind::SoftHsm);
        lab.enroll();
        let policy = lab.policy("policy.toml", edit);
        lab.build_job("job.fgj", &policy, size);
        lab.ok(&["job", "import", "job.fgj"]);
        let id = lab.first_job_id();
        (lab, id)
    }

    pub fn job_dirs(&self) -> usize {
        std::fs::read_dir(self.path("state/jobs"))
            .map(|r| r.count())
            .unwrap_or(0)
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `policies/sim-secure-mcu.toml` with its validity moved around today, so
/// that tests do not expire with the example file.
pub fn sim_policy_text() -> String {
    validity(
        &std::fs::read_to_string(repo().join("policies/sim-secure-mcu.toml")).unwrap(),
        now() - 86_400,
        now() + 180 * 86_400,
    )
}

/// Replaces the policy's `[job]` validity window.
pub fn validity(text: &str, from: u64, until: u64) -> String {
    flashgate::demo::with_validity(text, from, until)
}

pub fn both() -> [Kind; 2] {
    [Kind::SoftHsm, Kind::Kryoptic]
}
