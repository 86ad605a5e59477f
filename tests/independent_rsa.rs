//! An independent implementation opens packages built with the RSA-OAEP
//! key-transport profiles (`cose-rsaes-oaep-sha256`, COSE alg -41, and
//! `cose-rsaes-oaep-sha1`, alg -40): `tests/independent/open_rsa_package.py`
//! verifies the manifest signature with pycose, opens every image header
//! (`COSE_Encrypt` with an RSA-OAEP recipient) with pycose, decrypts the
//! chunked firmware with `cryptography`, and OAEP-decrypts the device master
//! and the job CA key (`COSE_Encrypt` with an empty body, private content
//! algorithm -65539) with `cryptography`, given the appliance's three RSA
//! transport private keys. It shares no code with flashgate.
//!
//! The transport keys are made on the host here (RSA-3072, `rsa` crate);
//! the appliance makes them in its token and never lets them out.
//!
//! Needs `python3` with `pycose`, `cbor2` and `cryptography`
//! (`scripts/setup.sh` installs them); without them the test says so and passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use flashgate::cose::{self, Es256Signer};
use flashgate::enrollment::{appliance_id, Enrollment, TransportKeys, VerifiedEnrollment};
use flashgate::hsm::{Profile, TokenDescription};
use flashgate::oem::{KeyStore, Oem, OemSigner};
use flashgate::package::build::{build, BuiltJob, JobInput};
use flashgate::package::encrypt::AnyRecipient;
use flashgate::package::{encode_package, EncryptObject, UnverifiedPackage, MANIFEST_CONTENT_TYPE};
use flashgate_firmware::Segment;
use flashgate_policy::Policy;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};

const TRANSPORT_BITS: usize = 3072;

/// The two images: one of several chunks, one whose last chunk is one byte.
const IMAGES: [(u32, usize); 2] = [(0x0800_0000, 300_000), (0x0810_0000, 65_537)];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `python3` can import what the script needs; says why not.
fn python_ready() -> bool {
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

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn host_signer(secret: &p256::SecretKey) -> OemSigner {
    OemSigner::File {
        key: p256::ecdsa::SigningKey::from(secret),
        public: cose::sec1_uncompressed(&secret.public_key()),
    }
}

/// The appliance's three transport key pairs (image, master, ca), made
/// once: RSA-3072 key generation is slow in a debug build, and both
/// profiles use the same keys.
fn transport_private_keys() -> &'static [rsa::PrivateKey; 3] {
    static KEYS: OnceLock<[rsa::PrivateKey; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = getrandom::SysRng;
        let mut key = || rsa::PrivateKey::new(&mut rng, TRANSPORT_BITS).unwrap();
        [key(), key(), key()]
    })
}

fn spki(key: &rsa::PrivateKey) -> Vec<u8> {
    key.to_public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// An enrollment record for a host-made appliance that lists `profile`
/// first, signed by its log key and parsed back.
fn enrollment(
    ka: &p256::SecretKey,
    log: &p256::SecretKey,
    profile: Profile,
    now: u64,
) -> VerifiedEnrollment {
    let [image, master, ca] = transport_private_keys();
    let ka_public = cose::sec1_uncompressed(&ka.public_key());
    let log_public = cose::sec1_uncompressed(&log.public_key());
    let record = Enrollment {
        appliance_id: appliance_id(&ka_public, &log_public),
        ka_public,
        log_public,
        token: TokenDescription {
            manufacturer: "Test Manufacturer".to_owned(),
            model: "host keys".to_owned(),
            serial: "0000000000000002".to_owned(),
            label: "independent-rsa".to_owned(),
        },
        profiles: vec![profile, Profile::CoseEcdhEsA256kw],
        created: now,
        pin_holder_extraction: Vec::new(),
        extraction_paths: Vec::new(),
        transport: Some(TransportKeys {
            image: spki(image),
            master: spki(master),
            ca: spki(ca),
        }),
    };
    let log_signer = host_signer(log);
    assert_eq!(log_signer.public_key(), log_public);
    let signed = record
        .sign(&log_signer)
        .expect("sign the enrollment record");
    let verified = VerifiedEnrollment::parse(&signed).expect("parse the enrollment record");
    assert_eq!(verified.record, record);
    verified
}

fn firmware(index: usize, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i * 7 + i / 251 + (i >> 13) + index * 101) as u8)
        .collect()
}

/// What one test works with.
struct Fixture {
    dir: tempfile::TempDir,
    profile: Profile,
    job: BuiltJob,
    package: PathBuf,
    /// image, master, ca private keys (PKCS#8 PEM files).
    keys: [PathBuf; 3],
    oem_pub: PathBuf,
    firmware: Vec<PathBuf>,
}

impl Fixture {
    fn new(profile: Profile) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let now = unix_now();
        let ka = cose::random_secret_key().unwrap();
        let log = cose::random_secret_key().unwrap();
        let enrollment = enrollment(&ka, &log, profile, now);

        let oem_dir = dir.path().join("oem");
        flashgate::oem::init(&oem_dir, "Acme Corp", &KeyStore::Files, now).expect("oem init");
        let oem = Oem::load(&oem_dir).expect("load the OEM material");

        let policy_toml = std::fs::read_to_string(repo().join("policies/sim-secure-mcu.toml"))
            .expect("read the example policy");
        let policy = Policy::from_toml_str(&policy_toml).expect("the example policy parses");
        let images: Vec<Segment> = IMAGES
            .iter()
            .enumerate()
            .map(|(i, &(address, size))| Segment {
                address,
                data: firmware(i, size),
            })
            .collect();
        let job = build(&JobInput {
            policy_toml: &policy_toml,
            policy: &policy,
            images: &images,
            enrollment: &enrollment,
            oem: &oem,
            now,
            profile: Some(profile),
        })
        .expect("build the job");
        assert_eq!(job.manifest.profile, profile);
        assert_eq!(job.manifest.images.len(), IMAGES.len());

        // flashgate itself accepts what it built, with the OEM's signing key.
        let signing_public = oem.signing.public_key();
        UnverifiedPackage::parse(&job.bytes)
            .and_then(|p| p.verify(&[signing_public]))
            .expect("flashgate verifies its own package");

        let package = dir.path().join("job.fgj");
        std::fs::write(&package, &job.bytes).unwrap();
        let keys = ["image", "master", "ca"].map(|role| dir.path().join(format!("{role}-key.pem")));
        for (path, key) in keys.iter().zip(transport_private_keys()) {
            let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
            std::fs::write(path, pem.as_bytes()).unwrap();
        }
        let firmware = images
            .iter()
            .enumerate()
            .map(|(i, seg)| {
                let path = dir.path().join(format!("firmware-{i}.bin"));
                std::fs::write(&path, &seg.data).unwrap();
                path
            })
            .collect();
        let oem_pub = dir.path().join("oem/signing-key.pub.pem");
        assert!(oem_pub.is_file(), "no {}", oem_pub.display());
        Self {
            dir,
            profile,
            job,
            package,
            keys,
            oem_pub,
            firmware,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn oem(&self) -> Oem {
        Oem::load(&self.path("oem")).unwrap()
    }

    /// Runs the script on `package` with the transport keys `keys`.
    fn run(&self, package: &Path, keys: [&Path; 3]) -> Verdict {
        let out = Command::new("python3")
            .arg(repo().join("tests/independent/open_rsa_package.py"))
            .arg(package)
            .arg(self.profile.name())
            .args(keys)
            .arg(&self.oem_pub)
            .args(&self.firmware)
            .output()
            .expect("run python3");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        println!("--- open_rsa_package.py stdout ---\n{stdout}--- stderr ---\n{stderr}");
        Verdict {
            ok: out.status.success(),
            stdout,
            stderr,
        }
    }

    fn run_with_keys(&self, package: &Path) -> Verdict {
        let [a, b, c] = &self.keys;
        self.run(package, [a, b, c])
    }
}

/// What the script said: success, stdout, stderr.
struct Verdict {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Verdict {
    fn line(&self, prefix: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{}", self.stdout))
    }

    fn refused(&self, what: &str, needle: &str) {
        assert!(!self.ok, "the script accepted {what}:\n{}", self.stdout);
        assert!(
            self.stderr.contains("REFUSED") && self.stderr.contains(needle),
            "for {what} expected a refusal naming {needle:?}, got:\n{}",
            self.stderr
        );
    }
}

/// Which per-job secret to alter.
#[derive(Clone, Copy)]
enum Secret {
    Master,
    Ca,
}

/// The package with one byte of a secret's OAEP ciphertext changed; with
/// `resign`, the manifest is re-signed with the OEM key over the new digest,
/// so that only OAEP decoding can catch it.
fn changed_secret_ciphertext(bytes: &[u8], oem: &Oem, secret: Secret, resign: bool) -> Vec<u8> {
    let package = UnverifiedPackage::parse(bytes).unwrap();
    let (manifest_sign1, master, ca, images) = package.parts();
    let original = match secret {
        Secret::Master => master,
        Secret::Ca => ca,
    };
    let mut obj = EncryptObject::parse(original, "secret").unwrap();
    match &mut obj.recipient {
        AnyRecipient::Oaep(r) => r.encrypted_key[200] ^= 0x01,
        AnyRecipient::Ecdh(_) => panic!("the secret has no RSA-OAEP recipient"),
    }
    let changed = obj.encode();
    assert_eq!(changed.len(), original.len());
    assert_ne!(changed, original);
    let signed = if resign {
        let (mut manifest, _) = package.manifest_unverified().unwrap();
        let digest = Sha256::digest(&changed).into();
        match secret {
            Secret::Master => manifest.device_master_digest = digest,
            Secret::Ca => manifest.job_ca_key_digest = digest,
        }
        cose::sign1(&oem.signing, MANIFEST_CONTENT_TYPE, manifest.encode()).unwrap()
    } else {
        manifest_sign1.to_vec()
    };
    let elements: Vec<(Vec<u8>, Vec<Vec<u8>>)> = images
        .iter()
        .map(|im| {
            (
                im.header.to_vec(),
                im.chunks.iter().map(|c| c.to_vec()).collect(),
            )
        })
        .collect();
    let (master, ca) = match secret {
        Secret::Master => (changed.as_slice(), ca),
        Secret::Ca => (master, changed.as_slice()),
    };
    encode_package(&signed, master, ca, &elements)
}

fn opens_a_package(profile: Profile, alg: i64, hash: &str) {
    if !python_ready() {
        return;
    }
    let f = Fixture::new(profile);
    let v = f.run_with_keys(&f.package);
    assert!(
        v.ok,
        "the independent verifier refused the package:\n{}{}",
        v.stdout, v.stderr
    );

    // What it says it checked.
    assert_eq!(
        v.line("manifest signature:"),
        "manifest signature: ES256, verified with pycose against the OEM signing key"
    );
    assert_eq!(
        v.line("manifest: "),
        format!(
            "manifest: job {}, appliance {}, profile {}",
            f.job.manifest.job_id_hex(),
            f.job.manifest.appliance_id,
            profile.name()
        )
    );
    assert_eq!(
        v.line("device master:"),
        format!(
            "device master: RSAES-OAEP (alg {alg}, {hash}) with the master key, 32 bytes, \
             SHA-256 {}",
            hex::encode(Sha256::digest(f.job.device_master.as_slice()))
        )
    );
    // The CA key the script decrypted has the public key the job CA
    // certificate in the manifest carries.
    let ca_line = v.line("job CA key:");
    let prefix = format!(
        "job CA key: RSAES-OAEP (alg {alg}, {hash}) with the ca key, P-256 PKCS#8, public key "
    );
    let rest = ca_line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("unexpected line {ca_line:?}"));
    let (point_hex, tail) = rest.split_once(' ').unwrap();
    assert_eq!(
        tail,
        "equals the job CA certificate's and the OEM root issued it"
    );
    let point = hex::decode(point_hex).unwrap();
    assert_eq!(point.len(), 65);
    assert!(
        f.job
            .manifest
            .job_ca_cert
            .windows(65)
            .any(|w| w == point.as_slice()),
        "the job CA certificate does not carry the public key {point_hex}"
    );
    for (i, entry) in f.job.manifest.images.iter().enumerate() {
        let n = entry.size.div_ceil(65_536);
        assert_eq!(
            v.line(&format!("image {i}: recipient")),
            format!(
                "image {i}: recipient RSAES-OAEP (alg {alg}, {hash}) with the image key, \
                 CEK by pycose equals CEK by cryptography"
            )
        );
        assert_eq!(
            v.line(&format!("image {i}: 0x")),
            format!(
                "image {i}: 0x{:08x}, {} bytes in {n} chunks, SHA-256 {} matches the manifest \
                 and the expected firmware",
                entry.address,
                entry.size,
                hex::encode(entry.digest)
            )
        );
    }
    assert_eq!(v.stdout.lines().last(), Some("OK"));

    // A changed byte of a secret's OAEP ciphertext: caught by the signed
    // digest, and with the manifest re-signed over the new digest by OAEP
    // decoding.
    let oem = f.oem();
    for (secret, name, digest_name, what) in [
        (
            Secret::Master,
            "master",
            "device-master digest",
            "device master",
        ),
        (Secret::Ca, "ca", "job-CA-key digest", "job CA key"),
    ] {
        let changed = f.path(&format!("changed-{name}.fgj"));
        std::fs::write(
            &changed,
            changed_secret_ciphertext(&f.job.bytes, &oem, secret, false),
        )
        .unwrap();
        f.run_with_keys(&changed)
            .refused(&format!("a changed {what}"), digest_name);
        let resigned = f.path(&format!("resigned-{name}.fgj"));
        std::fs::write(
            &resigned,
            changed_secret_ciphertext(&f.job.bytes, &oem, secret, true),
        )
        .unwrap();
        f.run_with_keys(&resigned).refused(
            &format!("a changed {what} OAEP ciphertext under a valid signature"),
            &format!("{what}: RSAES-OAEP decryption failed (not for this key, or altered)"),
        );
    }

    // Each role has its own key: swapping the image and master keys is
    // refused by kid, before any decryption.
    let [image, master, ca] = &f.keys;
    f.run(&f.package, [master, image, ca]).refused(
        "swapped transport keys",
        "recipient kid is not the transport key of the role",
    );
}

#[test]
fn python_opens_an_rsaes_oaep_sha256_package() {
    opens_a_package(Profile::CoseRsaesOaepSha256, -41, "SHA-256");
}

#[test]
fn python_opens_an_rsaes_oaep_sha1_package() {
    opens_a_package(Profile::CoseRsaesOaepSha1, -40, "SHA-1");
}
