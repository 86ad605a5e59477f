//! An enrolled appliance opened inside the test process (a PKCS#11 module
//! is initialised once per process, so there is one per token kind, and
//! tests on it take turns), and jobs built and imported on it directly.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use flashgate::appliance::{Appliance, ApplianceConfig};

use super::{init_token, now, repo, validity, Kind, PIN};

/// The appliance's directory (token, OEM keys, config, enrollment record).
#[derive(Debug)]
pub struct InProcess {
    pub dir: PathBuf,
}

/// The process's appliance on a `kind` token, set up on first use.
pub fn in_process(kind: Kind) -> MutexGuard<'static, InProcess> {
    static SOFT: OnceLock<Mutex<InProcess>> = OnceLock::new();
    static KRY: OnceLock<Mutex<InProcess>> = OnceLock::new();
    let cell = match kind {
        Kind::SoftHsm => &SOFT,
        Kind::Kryoptic => &KRY,
    };
    let m = cell.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("user-pin"), format!("{PIN}\n")).unwrap();
        let (k, v) = init_token(kind, &dir.join("token"), "in-process", &dir.join("user-pin"));
        std::env::set_var(k, v);
        std::fs::write(
            dir.join("appliance.toml"),
            format!(
                "state_dir = \"state\"\n[token]\nmodule = \"{}\"\nlabel = \"in-process\"\npin_file = \"user-pin\"\n[trust]\noem_keys = [\"oem/signing-key.pub.pem\"]\n",
                kind.module().display()
            ),
        )
        .unwrap();
        flashgate::oem::init(&dir.join("oem"), "Acme Corp", &flashgate::oem::KeyStore::Files, now()).unwrap();
        let a = Appliance::open(ApplianceConfig::load(&dir.join("appliance.toml")).unwrap()).unwrap();
        let (record, _) = a.enroll().unwrap();
        std::fs::write(dir.join("enrollment.cbor"), record).unwrap();
        Mutex::new(InProcess { dir })
    });
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InProcess {
    /// A job from `policies/<policy>` (validity moved around today, then
    /// `edit` applied) with one image at `address`, built and imported.
    /// Returns the appliance, the job id and the device master.
    pub fn job(
        &self,
        policy: &str,
        edit: impl Fn(String) -> String,
        firmware: &[u8],
        address: u32,
    ) -> (Arc<Appliance>, String, [u8; 32]) {
        let text = std::fs::read_to_string(repo().join("policies").join(policy)).unwrap();
        let text = edit(validity(&text, now() - 3600, now() + 86_400));
        let policy = flashgate_policy::Policy::from_toml_str(&text).unwrap();
        let enrollment = flashgate::enrollment::VerifiedEnrollment::parse(
            &std::fs::read(self.dir.join("enrollment.cbor")).unwrap(),
        )
        .unwrap();
        let oem = flashgate::oem::Oem::load(&self.dir.join("oem")).unwrap();
        let built = flashgate::oem::build::build(&flashgate::oem::build::JobInput {
            policy_toml: &text,
            policy: &policy,
            images: &[flashgate_firmware::Segment {
                address,
                data: firmware.to_vec(),
            }],
            enrollment: &enrollment.trust_on_first_use(),
            oem: &oem,
            now: now(),
            profile: None,
        })
        .unwrap();
        let path = self
            .dir
            .join(format!("{}.fgj", built.manifest.job_id_hex()));
        std::fs::write(&path, &built.bytes).unwrap();
        let a = Appliance::open(ApplianceConfig::load(&self.dir.join("appliance.toml")).unwrap())
            .unwrap();
        a.import(&path).unwrap();
        (
            Arc::new(a),
            built.manifest.job_id_hex(),
            *built.device_master,
        )
    }
}
