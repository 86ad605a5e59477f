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

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::independent::{
    build_host_job, host_enrollment, host_token, owned_elements, python_ready, run_script, Verdict,
};
use flashgate::cose;
use flashgate::enrollment::{TransportKeys, VerifiedEnrollment};
use flashgate::hsm::Profile;
use flashgate::oem::build::BuiltJob;
use flashgate::oem::Oem;
use flashgate::package::encrypt::AnyRecipient;
use flashgate::package::{encode_package, EncryptObject, UnverifiedPackage, MANIFEST_CONTENT_TYPE};
use flashgate_firmware::Segment;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};

const TRANSPORT_BITS: usize = 3072;

/// The two images: one of several chunks, one whose last chunk is one byte.
const IMAGES: [(u32, usize); 2] = [(0x0800_0000, 300_000), (0x0810_0000, 65_537)];

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
    host_enrollment(
        ka,
        log,
        host_token("0000000000000002", "independent-rsa"),
        vec![profile, Profile::CoseEcdhEsA256kw],
        Some(TransportKeys {
            image: spki(image),
            master: spki(master),
            ca: spki(ca),
        }),
        now,
    )
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
        let now = common::now();
        let ka = cose::random_secret_key().unwrap();
        let log = cose::random_secret_key().unwrap();
        let enrollment = enrollment(&ka, &log, profile, now);

        let images: Vec<Segment> = IMAGES
            .iter()
            .enumerate()
            .map(|(i, &(address, size))| Segment {
                address,
                data: firmware(i, size),
            })
            .collect();
        let (job, _) = build_host_job(dir.path(), &enrollment, &images, Some(profile), now);
        assert_eq!(job.manifest.profile, profile);
        assert_eq!(job.manifest.images.len(), IMAGES.len());

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
        run_script(
            "open_rsa_package.py",
            [package.as_os_str(), OsStr::new(self.profile.name())]
                .into_iter()
                .chain(keys.map(Path::as_os_str))
                .chain([self.oem_pub.as_os_str()])
                .chain(self.firmware.iter().map(|p| p.as_os_str())),
        )
    }

    fn run_with_keys(&self, package: &Path) -> Verdict {
        let [a, b, c] = &self.keys;
        self.run(package, [a, b, c])
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
    let elements = owned_elements(images);
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
