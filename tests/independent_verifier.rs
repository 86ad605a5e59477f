//! An independent implementation opens a package built with the standard
//! profile (`cose-ecdh-es-a256kw`): `tests/independent/open_package.py`
//! walks the outer CBOR with cbor2, verifies the manifest signature and opens
//! every `COSE_Encrypt` with pycose and `cryptography`, and checks the
//! firmware against the manifest and against the original file. It shares no
//! code with flashgate.
//!
//! Needs `python3` with `pycose`, `cbor2` and `cryptography`
//! (`scripts/setup.sh` installs them); without them the test says so and passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use flashgate::cose::{self, Es256Signer};
use flashgate::enrollment::{appliance_id, Enrollment, VerifiedEnrollment};
use flashgate::hsm::{Profile, TokenDescription};
use flashgate::oem::{KeyStore, Oem, OemSigner};
use flashgate::package::build::{build, JobInput};
use flashgate::package::{
    encode_image_element, encode_package, UnverifiedPackage, MANIFEST_CONTENT_TYPE,
};
use flashgate_firmware::Segment;
use flashgate_policy::Policy;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use sha2::{Digest, Sha256};

const FIRMWARE_SIZE: usize = 300_000;
const FIRMWARE_ADDRESS: u32 = 0x0800_0000;

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

/// An enrollment record for a host-made appliance that offers only the
/// standard profile, signed by its log key and parsed back.
fn enrollment(ka: &p256::SecretKey, log: &p256::SecretKey, now: u64) -> VerifiedEnrollment {
    let ka_public = cose::sec1_uncompressed(&ka.public_key());
    let log_public = cose::sec1_uncompressed(&log.public_key());
    let record = Enrollment {
        appliance_id: appliance_id(&ka_public, &log_public),
        ka_public,
        log_public,
        token: TokenDescription {
            manufacturer: "Test Manufacturer".to_owned(),
            model: "host keys".to_owned(),
            serial: "0000000000000001".to_owned(),
            label: "independent-verifier".to_owned(),
        },
        profiles: vec![Profile::CoseEcdhEsA256kw],
        created: now,
        pin_holder_extraction: Vec::new(),
        extraction_paths: Vec::new(),
        transport: None,
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

fn firmware() -> Vec<u8> {
    (0..FIRMWARE_SIZE)
        .map(|i| (i * 7 + i / 251 + (i >> 13)) as u8)
        .collect()
}

/// Builds a standard-profile package in `dir`; returns its path.
fn build_package(dir: &Path, ka: &p256::SecretKey, fw: &[u8]) -> PathBuf {
    let now = unix_now();
    let log = cose::random_secret_key().unwrap();
    let enrollment = enrollment(ka, &log, now);

    let oem_dir = dir.join("oem");
    flashgate::oem::init(&oem_dir, "Acme Corp", &KeyStore::Files, now).expect("oem init");
    let oem = Oem::load(&oem_dir).expect("load the OEM material");

    let policy_toml = std::fs::read_to_string(repo().join("policies/sim-secure-mcu.toml"))
        .expect("read the example policy");
    let policy = Policy::from_toml_str(&policy_toml).expect("the example policy parses");
    let images = [Segment {
        address: FIRMWARE_ADDRESS,
        data: fw.to_vec(),
    }];
    let job = build(&JobInput {
        policy_toml: &policy_toml,
        policy: &policy,
        images: &images,
        enrollment: &enrollment,
        oem: &oem,
        now,
        profile: None,
    })
    .expect("build the job");
    assert_eq!(job.manifest.profile, Profile::CoseEcdhEsA256kw);
    assert_eq!(job.manifest.images.len(), 1);

    // flashgate itself accepts what it built, with the OEM's signing key.
    let signing_public = oem.signing.public_key();
    UnverifiedPackage::parse(&job.bytes)
        .and_then(|p| p.verify(&[signing_public]))
        .expect("flashgate verifies its own package");

    let path = dir.join("job.fgj");
    std::fs::write(&path, &job.bytes).unwrap();
    path
}

/// What the verifier said: success, stdout, stderr.
struct Verdict {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run_verifier(package: &Path, ka_pem: &Path, oem_pub: &Path, fw: &Path) -> Verdict {
    let out = Command::new("python3")
        .arg(repo().join("tests/independent/open_package.py"))
        .arg(package)
        .arg(ka_pem)
        .arg(oem_pub)
        .arg(fw)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("--- open_package.py stdout ---\n{stdout}--- stderr ---\n{stderr}");
    Verdict {
        ok: out.status.success(),
        stdout,
        stderr,
    }
}

/// The package with one ciphertext bit of image 0 changed and the manifest
/// re-signed with the OEM key over the new object digest, so that only the
/// AES-GCM tag can catch it.
fn resigned_with_changed_chunk(bytes: &[u8], oem: &Oem) -> Vec<u8> {
    let package = UnverifiedPackage::parse(bytes).unwrap();
    let (mut manifest, _) = package.manifest_unverified().unwrap();
    let (_, master, ca, images) = package.parts();
    let mut elements: Vec<(Vec<u8>, Vec<Vec<u8>>)> = images
        .iter()
        .map(|im| {
            (
                im.header.to_vec(),
                im.chunks.iter().map(|c| c.to_vec()).collect(),
            )
        })
        .collect();
    elements[0].1[1][1000] ^= 0x80;
    let element = encode_image_element(&elements[0].0, &elements[0].1);
    manifest.images[0].object_digest = Sha256::digest(&element).into();
    let signed = cose::sign1(&oem.signing, MANIFEST_CONTENT_TYPE, manifest.encode()).unwrap();
    encode_package(&signed, master, ca, &elements)
}

#[test]
fn python_cose_opens_a_standard_profile_package() {
    if !python_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ka = cose::random_secret_key().unwrap();
    let fw = firmware();
    let package = build_package(dir.path(), &ka, &fw);

    let ka_pem = dir.path().join("ka-key.pem");
    std::fs::write(&ka_pem, ka.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
    let fw_path = dir.path().join("firmware.bin");
    std::fs::write(&fw_path, &fw).unwrap();
    let oem_pub = dir.path().join("oem/signing-key.pub.pem");

    let v = run_verifier(&package, &ka_pem, &oem_pub, &fw_path);
    assert!(
        v.ok,
        "the independent verifier refused the package:\n{}{}",
        v.stdout, v.stderr
    );
    assert!(
        v.stdout.lines().any(|l| l.trim() == "OK"),
        "no OK from the independent verifier:\n{}",
        v.stdout
    );

    // The verifier must also refuse: a wrong expected firmware, a changed
    // chunk (caught by the signed digest, and with the manifest re-signed by
    // the AES-GCM tag), and the wrong appliance key.
    let mut wrong_fw = fw.clone();
    wrong_fw[FIRMWARE_SIZE / 2] ^= 1;
    let wrong_fw_path = dir.path().join("wrong-firmware.bin");
    std::fs::write(&wrong_fw_path, &wrong_fw).unwrap();
    let v = run_verifier(&package, &ka_pem, &oem_pub, &wrong_fw_path);
    assert!(!v.ok, "the verifier accepted firmware that differs");
    assert!(
        v.stderr.contains("differs from the expected firmware"),
        "{}",
        v.stderr
    );

    let mut bytes = std::fs::read(&package).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    let tampered = dir.path().join("tampered.fgj");
    std::fs::write(&tampered, &bytes).unwrap();
    let v = run_verifier(&tampered, &ka_pem, &oem_pub, &fw_path);
    assert!(
        !v.ok,
        "the verifier accepted a package with a changed chunk"
    );
    assert!(v.stderr.contains("object digest"), "{}", v.stderr);

    let oem = Oem::load(&dir.path().join("oem")).unwrap();
    let resigned = dir.path().join("resigned.fgj");
    std::fs::write(
        &resigned,
        resigned_with_changed_chunk(&std::fs::read(&package).unwrap(), &oem),
    )
    .unwrap();
    let v = run_verifier(&resigned, &ka_pem, &oem_pub, &fw_path);
    assert!(!v.ok, "the verifier decrypted a changed chunk");
    assert!(v.stderr.contains("fails its AES-GCM tag"), "{}", v.stderr);

    let other = cose::random_secret_key().unwrap();
    let other_pem = dir.path().join("other-key.pem");
    std::fs::write(
        &other_pem,
        other.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let v = run_verifier(&package, &other_pem, &oem_pub, &fw_path);
    assert!(!v.ok, "the verifier opened the package with another key");
}
