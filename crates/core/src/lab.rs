//! A lab: a fresh appliance on a fresh token with OEM material beside it,
//! and a job built and imported on it. The demo, the benchmarks and the
//! tests set up through it, so that each sets up the same way the user's
//! commands do: through the station.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::appliance::ApplianceConfig;
use crate::station::Station;

/// The example policy, with its validity window moved around today.
const POLICY: &str = include_str!("../../../policies/sim-secure-mcu.toml");

/// Why a lab could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("lab: {0}")]
pub struct LabError(String);

fn err(e: impl std::fmt::Display) -> LabError {
    LabError(e.to_string())
}

/// Prints the heading of one step of the story.
pub fn step(s: &str) {
    eprintln!("\n== {s}");
}

/// A fresh appliance on a fresh token, with OEM material beside it.
#[derive(Debug)]
pub struct Setup {
    /// The directory holding everything.
    pub dir: PathBuf,
    /// The enrolled appliance, open with the writer lock.
    pub station: Station,
    /// The OEM directory (key files).
    pub oem_dir: PathBuf,
    /// The appliance's enrollment record, pinned (this lab made it).
    pub enrollment: crate::enrollment::PinnedEnrollment,
}

/// A job built and imported on a [`Setup`].
#[derive(Debug)]
pub struct ImportedLabJob {
    /// Job id (hex).
    pub id: String,
    /// The package file.
    pub path: PathBuf,
    /// The imported job (manifest and policy).
    pub imported: crate::appliance::ImportedJob,
}

/// Creates `dir` (emptied first), a fresh `token` ("softhsm" or "kryoptic"),
/// OEM keys, and enrolls an appliance. Once per process and module: a
/// PKCS#11 module reads its configuration (the token directory) once, and
/// two labs' stations on one module in one process break it.
pub fn setup(dir: &Path, token: &str, module: Option<PathBuf>) -> Result<Setup, LabError> {
    setup_for(dir, token, module, None)
}

/// [`setup`], with the OEM material copied from `oem_from` (an earlier
/// `oem init` directory) instead of made anew: a second appliance of the
/// same OEM.
pub fn setup_for(
    dir: &Path,
    token: &str,
    module: Option<PathBuf>,
    oem_from: Option<&Path>,
) -> Result<Setup, LabError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(err)?;
    }
    fs::create_dir_all(dir).map_err(err)?;
    let dir = fs::canonicalize(dir).map_err(err)?;
    let now = crate::appliance::unix_now();

    step("CM: a fresh token");
    let module = init_token(token, module, &dir)?;

    let oem_dir = dir.join("oem");
    match oem_from {
        Some(from) => {
            step("OEM: the same job-signing key and device-root CA as before");
            copy_files(from, &oem_dir)?;
        }
        None => {
            step("OEM: job-signing key and device-root CA (key files: development only)");
            crate::oem::init(&oem_dir, "Acme Corp", &crate::oem::KeyStore::Files, now)
                .map_err(err)?;
        }
    }
    eprintln!("   {}", oem_dir.display());

    step("CM: enroll the appliance (keys generated inside the HSM)");
    let config_path = dir.join("appliance.toml");
    fs::write(
        &config_path,
        format!(
            "state_dir = \"state\"\n[token]\nmodule = \"{}\"\nlabel = \"appliance\"\npin_file = \"user-pin\"\n[trust]\noem_keys = [\"oem/signing-key.pub.pem\"]\n",
            module.display()
        ),
    )
    .map_err(err)?;
    let station = Station::open_for_enrollment(ApplianceConfig::load(&config_path).map_err(err)?)
        .map_err(err)?;
    let (record, enrollment) = station.enroll().map_err(err)?;
    fs::write(dir.join("enrollment.cbor"), &record).map_err(err)?;
    eprintln!(
        "   appliance {} on {} {}, profiles: {}",
        enrollment.record().appliance_id,
        enrollment.record().token.manufacturer,
        enrollment.record().token.model,
        enrollment
            .record()
            .profiles
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("   fingerprint {}", enrollment.fingerprint());
    let fingerprint = enrollment.fingerprint();
    let enrollment = enrollment.pin(&fingerprint).map_err(err)?;
    Ok(Setup {
        dir,
        station,
        oem_dir,
        enrollment,
    })
}

/// Copies the files of `from` (and its subdirectories) into `to`.
fn copy_files(from: &Path, to: &Path) -> Result<(), LabError> {
    fs::create_dir_all(to).map_err(err)?;
    for entry in fs::read_dir(from).map_err(err)? {
        let entry = entry.map_err(err)?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(err)?.is_dir() {
            copy_files(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target).map_err(err)?;
        }
    }
    Ok(())
}

/// The example policy with its validity window moved around today.
pub fn example_policy() -> String {
    let now = crate::appliance::unix_now();
    with_validity(POLICY, now - 86_400, now + 180 * 86_400)
}

/// A policy text with its `[job]` validity window replaced (the first
/// `not_before` and `not_after` lines; a certificate's own `not_after`
/// stays).
pub fn with_validity(text: &str, from: u64, until: u64) -> String {
    let (mut seen_before, mut seen_after) = (false, false);
    text.lines()
        .map(|l| {
            if l.starts_with("not_before") && !seen_before {
                seen_before = true;
                format!("not_before = \"{}\"", crate::display::time(from))
            } else if l.starts_with("not_after") && !seen_after {
                seen_after = true;
                format!("not_after = \"{}\"", crate::display::time(until))
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The OEM builds a job from `policy_text` and one image at address 0; the
/// appliance imports it.
pub fn build_and_import(
    setup: &Setup,
    policy_text: &str,
    firmware: Vec<u8>,
) -> Result<ImportedLabJob, LabError> {
    step("OEM: build a job for this appliance");
    let dir = &setup.dir;
    fs::write(dir.join("policy.toml"), policy_text).map_err(err)?;
    let policy = flashgate_policy::Policy::from_toml_str(policy_text).map_err(err)?;
    fs::write(dir.join("firmware.bin"), &firmware).map_err(err)?;
    let oem = crate::oem::Oem::load(&setup.oem_dir).map_err(err)?;
    let job = crate::oem::build::build(&crate::oem::build::JobInput {
        policy_toml: policy_text,
        policy: &policy,
        images: &[flashgate_firmware::Segment {
            address: 0,
            data: firmware,
        }],
        enrollment: &setup.enrollment,
        oem: &oem,
        now: crate::appliance::unix_now(),
        profile: None,
    })
    .map_err(err)?;
    let path = dir.join("job.fgj");
    fs::write(&path, &job.bytes).map_err(err)?;
    let id = job.manifest.job_id_hex();
    fs::write(
        dir.join("job-ca.pem"),
        crate::x509::der_to_pem(&job.manifest.job_ca_cert, "CERTIFICATE"),
    )
    .map_err(err)?;
    eprintln!(
        "   job {id} ({}), {} bytes",
        job.manifest.profile,
        job.bytes.len()
    );

    step("CM: import the job (verify, unwrap into the HSM, decrypt and check in the HSM)");
    let imported = setup.station.import(&path).map_err(err)?;
    eprintln!("   imported; quota {}", imported.policy().job().quota);
    Ok(ImportedLabJob { id, path, imported })
}

/// Creates a fresh token under `dir` and points this process at it.
fn init_token(token: &str, module: Option<PathBuf>, dir: &Path) -> Result<PathBuf, LabError> {
    let mut pin = [0u8; 9];
    getrandom::fill(&mut pin).map_err(err)?;
    let pin = hex::encode(pin);
    write_secret(&dir.join("user-pin"), &pin)?;
    let mut so = [0u8; 9];
    getrandom::fill(&mut so).map_err(err)?;
    let so = hex::encode(so);
    let token_dir = dir.join("token");
    fs::create_dir_all(token_dir.join("objects")).map_err(err)?;
    let run = |cmd: &mut Command| -> Result<(), LabError> {
        let out = cmd.output().map_err(|e| {
            LabError(format!(
                "cannot run {cmd:?}: {e}; run scripts/setup.sh first"
            ))
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LabError(format!(
                "token set-up failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    match token {
        "softhsm" => {
            let conf = token_dir.join("softhsm2.conf");
            fs::write(
                &conf,
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                    token_dir.join("objects").display()
                ),
            )
            .map_err(err)?;
            // This process loads the module after this point; nothing else runs yet.
            std::env::set_var("SOFTHSM2_CONF", &conf);
            run(Command::new("softhsm2-util").args([
                "--init-token",
                "--free",
                "--label",
                "appliance",
                "--so-pin",
                &so,
                "--pin",
                &pin,
            ]))?;
            Ok(module.unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")))
        }
        "kryoptic" => {
            let module = module.unwrap_or_else(|| {
                PathBuf::from("tokens/kryoptic/target/release/libkryoptic_pkcs11.so")
            });
            let module = fs::canonicalize(&module).map_err(|_| {
                LabError(format!(
                    "no Kryoptic module at {}; run scripts/tokens.sh modules",
                    module.display()
                ))
            })?;
            let conf = token_dir.join("kryoptic.conf");
            fs::write(
                &conf,
                format!(
                    "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
                    token_dir.join("token.sql").display()
                ),
            )
            .map_err(err)?;
            std::env::set_var("KRYOPTIC_CONF", &conf);
            let m = module.to_string_lossy().into_owned();
            run(Command::new("pkcs11-tool").args([
                "--module",
                &m,
                "--init-token",
                "--label",
                "appliance",
                "--so-pin",
                &so,
            ]))?;
            run(Command::new("pkcs11-tool").args([
                "--module",
                &m,
                "--login",
                "--login-type",
                "so",
                "--so-pin",
                &so,
                "--init-pin",
                "--pin",
                &pin,
            ]))?;
            Ok(module)
        }
        other => Err(LabError(format!(
            "unknown token '{other}' (softhsm or kryoptic)"
        ))),
    }
}

fn write_secret(path: &Path, value: &str) -> Result<(), LabError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    writeln!(f, "{value}").map_err(err)
}
