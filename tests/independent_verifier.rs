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

mod common;

use std::path::{Path, PathBuf};

use common::independent::{
    build_host_job, host_enrollment, host_token, owned_elements, python_ready, run_script, Verdict,
};
use flashgate::cose;
use flashgate::enrollment::VerifiedEnrollment;
use flashgate::hsm::Profile;
use flashgate::oem::Oem;
use flashgate::package::{
    encode_image_element, encode_package, UnverifiedPackage, MANIFEST_CONTENT_TYPE,
};
use flashgate_firmware::Segment;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use sha2::{Digest, Sha256};

const FIRMWARE_SIZE: usize = 300_000;
const FIRMWARE_ADDRESS: u32 = 0x0800_0000;

/// An enrollment record for a host-made appliance that offers only the
/// standard profile, signed by its log key and parsed back.
fn enrollment(ka: &p256::SecretKey, log: &p256::SecretKey, now: u64) -> VerifiedEnrollment {
    host_enrollment(
        ka,
        log,
        host_token("0000000000000001", "independent-verifier"),
        vec![Profile::CoseEcdhEsA256kw],
        None,
        now,
    )
}

fn firmware() -> Vec<u8> {
    (0..FIRMWARE_SIZE)
        .map(|i| (i * 7 + i / 251 + (i >> 13)) as u8)
        .collect()
}

/// Builds a standard-profile package in `dir`; returns its path.
fn build_package(dir: &Path, ka: &p256::SecretKey, fw: &[u8]) -> PathBuf {
    let now = common::now();
    let log = cose::random_secret_key().unwrap();
    let enrollment = enrollment(ka, &log, now);

    let images = [Segment {
        address: FIRMWARE_ADDRESS,
        data: fw.to_vec(),
    }];
    let (job, _) = build_host_job(dir, &enrollment, &images, None, now);
    assert_eq!(job.manifest.profile, Profile::CoseEcdhEsA256kw);
    assert_eq!(job.manifest.images.len(), 1);

    let path = dir.join("job.fgj");
    std::fs::write(&path, &job.bytes).unwrap();
    path
}

fn run_verifier(package: &Path, ka_pem: &Path, oem_pub: &Path, fw: &Path) -> Verdict {
    run_script("open_package.py", [package, ka_pem, oem_pub, fw])
}

/// The package with one ciphertext bit of image 0 changed and the manifest
/// re-signed with the OEM key over the new object digest, so that only the
/// AES-GCM tag can catch it.
fn resigned_with_changed_chunk(bytes: &[u8], oem: &Oem) -> Vec<u8> {
    let package = UnverifiedPackage::parse(bytes).unwrap();
    let (mut manifest, _) = package.manifest_unverified().unwrap();
    let (_, master, ca, images) = package.parts();
    let mut elements = owned_elements(images);
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
