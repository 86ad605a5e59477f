//! A test lab: a fresh token of a given kind, OEM material and an appliance
//! config in a temporary directory, driven through the real `flashgate`
//! binary so that every process loads the PKCS#11 module on its own.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod in_process;
pub mod independent;
pub mod sim;
pub mod station;

/// The user PIN of every lab token.
pub const PIN: &str = "4711-test-pin";

/// A hostile PIN holder's session. Field order matters: the session closes
/// before the module is finalised, and the module is finalised before the
/// next test of the process takes its turn.
pub struct PinHolder {
    pub session: cryptoki::session::Session,
    pub pkcs11: cryptoki::context::Pkcs11,
    pub turn: std::sync::MutexGuard<'static, ()>,
}

/// One PIN holder per module and process at a time. A module reads its
/// configuration variable once, at C_Initialize, and its C_Finalize ends
/// every session in the process: two tests' holders side by side would
/// share (and pull away) one module's state, on whichever lab's token it
/// was initialised with.
pub fn token_turn(kind: Kind) -> std::sync::MutexGuard<'static, ()> {
    static SOFT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static KRY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let m = match kind {
        Kind::SoftHsm => &SOFT,
        Kind::Kryoptic => &KRY,
    };
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PinHolder {
    /// Tries to wrap `key` out under an AES key the PIN holder makes, with
    /// RFC 3394 and RFC 5649; the mechanisms that gave something.
    pub fn wrapped_out(
        &self,
        key: cryptoki::object::ObjectHandle,
    ) -> Vec<cryptoki::mechanism::MechanismType> {
        use cryptoki::mechanism::Mechanism;
        use cryptoki::object::Attribute;
        let wrapping = self
            .session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(false),
                    Attribute::ValueLen(32.into()),
                    Attribute::Wrap(true),
                    Attribute::Encrypt(true),
                ],
            )
            .unwrap();
        let out = [Mechanism::AesKeyWrapPad, Mechanism::AesKeyWrap]
            .into_iter()
            .filter(|m| self.session.wrap_key(m, wrapping, key).is_ok())
            .map(|m| m.mechanism_type())
            .collect();
        self.session.destroy_object(wrapping).unwrap();
        out
    }

    /// The one object with `label` and `class`.
    pub fn object(
        &self,
        label: &str,
        class: cryptoki::object::ObjectClass,
    ) -> cryptoki::object::ObjectHandle {
        use cryptoki::object::Attribute;
        let found = self
            .session
            .find_objects(&[
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Class(class),
            ])
            .unwrap();
        assert_eq!(found.len(), 1, "{label}: {found:?}");
        found[0]
    }
}

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

/// Longer than any one command of the tests takes on a loaded machine.
pub const COMMAND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs `command` (stdin empty, stdout and stderr captured) as
/// `Command::output` does, but kills it and panics, with what it printed,
/// once it has run for `limit`.
pub fn output_within(mut command: Command, limit: std::time::Duration, what: &str) -> Output {
    use std::io::Read as _;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let started = std::time::Instant::now();
    let mut nap = std::time::Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = (
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default(),
            );
            panic!(
                "{what} did not end within {} s and was killed (a hang?)\nstdout:\n{}\nstderr:\n{}",
                limit.as_secs(),
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
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
        std::fs::write(&pin, format!("{PIN}\n")).unwrap();
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

    /// A logged-in session on the lab's token, opened in this process the
    /// way anyone with the user PIN could (each module is loaded once per
    /// process, after its configuration variable is set).
    pub fn pin_holder(&self) -> PinHolder {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        let turn = token_turn(self.kind);
        std::env::set_var(&self.env.0, &self.env.1);
        let pkcs11 = Pkcs11::new(self.kind.module()).unwrap();
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            )) => {}
            Err(e) => panic!("initialise: {e}"),
        }
        let slot = pkcs11
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| pkcs11.get_token_info(*s).unwrap().label().trim() == "appliance")
            .expect("the appliance token");
        let session = pkcs11.open_rw_session(slot).unwrap();
        session
            .login(cryptoki::session::UserType::User, Some(&PIN.into()))
            .unwrap();
        PinHolder {
            session,
            pkcs11,
            turn,
        }
    }

    /// The environment variable that selects the lab's token, and its value.
    pub fn token_env(&self) -> (&str, &str) {
        (&self.env.0, &self.env.1)
    }

    /// `flashgate ARGS` in the lab directory, not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flashgate"));
        c.args(args)
            .current_dir(self.dir.path())
            .env(&self.env.0, &self.env.1)
            .env_remove("FLASHGATE_CONFIG");
        c
    }

    /// Runs flashgate in the lab directory. A command that has not ended
    /// after [`COMMAND_DEADLINE`] is killed and fails the test, so a hang
    /// is a failure that names the command, not a CI timeout.
    pub fn fg(&self, args: &[&str]) -> Output {
        output_within(
            self.command(args),
            COMMAND_DEADLINE,
            &format!("flashgate {args:?}"),
        )
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
        self.ok(&job_build_args(
            policy,
            &["fw.bin@0x08000000"],
            &["-o", out],
        ));
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

    /// An enrolled appliance of `kind` with one imported sim job, job.fgj
    /// (`edit` applied to policy.toml, `size` bytes of firmware); returns
    /// the job id.
    pub fn with_job(kind: Kind, edit: impl FnOnce(String) -> String, size: usize) -> (Lab, String) {
        let lab = Lab::new(kind);
        lab.enroll();
        let policy = lab.policy("policy.toml", edit);
        lab.build_job("job.fgj", &policy, size);
        lab.ok(&["job", "import", "job.fgj"]);
        let id = lab.first_job_id();
        (lab, id)
    }

    /// [`Lab::with_job`] on SoftHSM.
    pub fn with_sim_job(edit: impl FnOnce(String) -> String, size: usize) -> (Lab, String) {
        Lab::with_job(Kind::SoftHsm, edit, size)
    }

    /// Builds `p.toml` with `fw.bin@ADDRESS` (as `firmware`) into `j.fgj`,
    /// imports it and returns the job id `job import` printed.
    pub fn build_and_import(&self, firmware: &str) -> String {
        self.ok(&job_build_args("p.toml", &[firmware], &["-o", "j.fgj"]));
        let out = self.ok(&["job", "import", "j.fgj"]);
        out.split_whitespace()
            .nth(2)
            .expect("job import names the job")
            .trim_end_matches(':')
            .to_owned()
    }

    /// Writes `policy` as p.toml, its validity moved to the hour before
    /// now until a day after, and `firmware` as fw.bin; builds the job with
    /// fw.bin at `at` and imports it ([`Lab::build_and_import`]). Returns
    /// the job id.
    pub fn import_policy(&self, policy: &str, firmware: &[u8], at: &str) -> String {
        let text = validity(policy, now() - 3600, now() + 86_400);
        std::fs::write(self.path("p.toml"), text).unwrap();
        std::fs::write(self.path("fw.bin"), firmware).unwrap();
        self.build_and_import(&format!("fw.bin@{at}"))
    }

    /// The records of the appliance's log.
    pub fn records(&self) -> Vec<flashgate_audit::Record> {
        frames(&self.path("state/audit/audit.log"))
            .iter()
            .map(|f| flashgate_audit::Record::decode(f).expect("every record decodes"))
            .collect()
    }

    /// `audit verify --json` of the bundle in `bundle` against the OEM key;
    /// asserts exit status 0 and a clean verdict, returns the JSON document.
    pub fn verify_bundle(&self, bundle: &str) -> serde_json::Value {
        let v = self.fg(&[
            "audit",
            "verify",
            bundle,
            "--oem",
            "oem/signing-key.pub.pem",
            "--json",
        ]);
        let text = String::from_utf8_lossy(&v.stdout).into_owned();
        assert_eq!(
            v.status.code(),
            Some(0),
            "{text}{}",
            String::from_utf8_lossy(&v.stderr)
        );
        let doc: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(doc["verdict"], "clean", "{doc}");
        doc
    }

    /// Exports the job's bundle into `out` and verifies it
    /// ([`Lab::verify_bundle`]); returns the JSON document.
    pub fn export_and_verify(&self, id: &str, out: &str) -> serde_json::Value {
        self.ok(&["audit", "export", "--job", id, "-o", out]);
        self.verify_bundle(out)
    }

    pub fn job_dirs(&self) -> usize {
        std::fs::read_dir(self.path("state/jobs"))
            .map(|r| r.count())
            .unwrap_or(0)
    }
}

/// `job build` with the lab's OEM material and enrollment record, `policy`,
/// one `--firmware` per entry of `firmware`, then `extra` (`-o OUT`, ...).
pub fn job_build_args<'a>(
    policy: &'a str,
    firmware: &[&'a str],
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["job", "build", "--oem", "oem", "--policy", policy];
    for f in firmware {
        args.extend(["--firmware", f]);
    }
    args.extend(["--appliance", "enrollment.cbor"]);
    args.extend_from_slice(extra);
    args
}

/// The frames of a log file (4-byte big-endian length, then the record).
pub fn frames(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push(bytes[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    out
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
    flashgate::lab::with_validity(text, from, until)
}

pub fn both() -> [Kind; 2] {
    [Kind::SoftHsm, Kind::Kryoptic]
}

/// Stops a child process the way an operator would: SIGTERM (so that a
/// simulator saves its state and removes its sockets), then a kill if it
/// has not gone within ten seconds.
pub fn terminate(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..200 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
