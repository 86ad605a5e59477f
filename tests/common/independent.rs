//! What the tests that hand packages to an independent implementation
//! (`tests/independent/*.py`) share: host-made appliance keys and enrollment
//! records, a job built in-process, and running a script with `python3`.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use flashgate::cose::{self, Es256Signer};
use flashgate::enrollment::{appliance_id, Enrollment, TransportKeys, VerifiedEnrollment};
use flashgate::hsm::{Profile, TokenDescription};
use flashgate::oem::build::{build, BuiltJob, JobInput};
use flashgate::oem::{KeyStore, Oem, OemSigner};
use flashgate::package::{RawImage, UnverifiedPackage};
use flashgate_firmware::Segment;
use flashgate_policy::Policy;

use super::repo;

/// Whether `python3` can import what the scripts need; says why not.
pub fn python_ready() -> bool {
    match Command::new("python3")
        .args(["-c", "import pycose, cbor2, cryptography"])
        .output()
    {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "SKIP: the independent verifier needs Python packages pycose, cbor2 and \
                 cryptography (scripts/setup.sh installs them): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("SKIP: the independent verifier needs python3: {e}");
            false
        }
    }
}

pub fn host_signer(secret: &p256::SecretKey) -> OemSigner {
    OemSigner::File(p256::ecdsa::SigningKey::from(secret))
}

/// The token a host-made appliance describes in its enrollment record.
pub fn host_token(serial: &str, label: &str) -> TokenDescription {
    TokenDescription {
        manufacturer: "Test Manufacturer".to_owned(),
        model: "host keys".to_owned(),
        serial: serial.to_owned(),
        label: label.to_owned(),
    }
}

/// An enrollment record for a host-made appliance with key-agreement key
/// `ka` that offers `profiles` (and the RSA `transport` keys, if any),
/// signed by its log key `log` and parsed back.
pub fn host_enrollment(
    ka: &p256::SecretKey,
    log: &p256::SecretKey,
    token: TokenDescription,
    profiles: Vec<Profile>,
    transport: Option<TransportKeys>,
    now: u64,
) -> VerifiedEnrollment {
    let ka_public = cose::sec1_uncompressed(&ka.public_key());
    let log_public = cose::sec1_uncompressed(&log.public_key());
    let record = Enrollment {
        appliance_id: appliance_id(&ka_public, &log_public),
        ka_public,
        log_public,
        token,
        profiles,
        created: now,
        pin_holder_extraction: Vec::new(),
        extraction_paths: Vec::new(),
        transport,
    };
    let log_signer = host_signer(log);
    assert_eq!(log_signer.public_key(), log_public);
    let signed = record
        .sign(&log_signer)
        .expect("sign the enrollment record");
    let verified = VerifiedEnrollment::parse(&signed).expect("parse the enrollment record");
    assert_eq!(verified.record(), &record);
    verified
}

/// Makes file-based OEM material in `dir/oem` and builds a job of the
/// example sim policy with `images` for `enrollment` (`profile`, or the one
/// job build chooses); checks that flashgate verifies its own package.
pub fn build_host_job(
    dir: &Path,
    enrollment: &VerifiedEnrollment,
    images: &[Segment],
    profile: Option<Profile>,
    now: u64,
) -> (BuiltJob, Oem) {
    let oem_dir = dir.join("oem");
    flashgate::oem::init(&oem_dir, "Acme Corp", &KeyStore::Files, now).expect("oem init");
    let oem = Oem::load(&oem_dir).expect("load the OEM material");

    let policy_toml = std::fs::read_to_string(repo().join("policies/sim-secure-mcu.toml"))
        .expect("read the example policy");
    let policy = Policy::from_toml_str(&policy_toml).expect("the example policy parses");
    let job = build(&JobInput {
        policy_toml: &policy_toml,
        policy: &policy,
        images,
        enrollment: &enrollment.clone().trust_on_first_use(),
        oem: &oem,
        now,
        profile,
    })
    .expect("build the job");

    // flashgate itself accepts what it built, with the OEM's signing key.
    let signing_public = oem.signing.public_key();
    UnverifiedPackage::parse(&job.bytes)
        .and_then(|p| p.verify(&[signing_public]))
        .expect("flashgate verifies its own package");
    (job, oem)
}

/// The image elements of a parsed package as owned (header, chunks) pairs,
/// to alter and encode again.
pub fn owned_elements(images: &[RawImage<'_>]) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
    images
        .iter()
        .map(|im| {
            (
                im.header.to_vec(),
                im.chunks.iter().map(|c| c.to_vec()).collect(),
            )
        })
        .collect()
}

/// What a script said: success, stdout, stderr.
pub struct Verdict {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Verdict {
    /// The first stdout line starting with `prefix`.
    pub fn line(&self, prefix: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{}", self.stdout))
    }

    /// Asserts that the script refused `what` with a message naming `needle`.
    pub fn refused(&self, what: &str, needle: &str) {
        assert!(!self.ok, "the script accepted {what}:\n{}", self.stdout);
        assert!(
            self.stderr.contains("REFUSED") && self.stderr.contains(needle),
            "for {what} expected a refusal naming {needle:?}, got:\n{}",
            self.stderr
        );
    }
}

/// Runs `python3 tests/independent/SCRIPT ARGS...` and prints what it said.
pub fn run_script<I, S>(script: &str, args: I) -> Verdict
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new("python3")
        .arg(repo().join("tests/independent").join(script))
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("--- {script} stdout ---\n{stdout}--- stderr ---\n{stderr}");
    Verdict {
        ok: out.status.success(),
        stdout,
        stderr,
    }
}
