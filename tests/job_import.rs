//! Job packages end to end on both tokens: enrollment, build, import, the
//! key attributes the token reports, and every way a package or a command
//! can be wrong (each must fail with a clear sentence and leave nothing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{both, Kind, Lab};
use flashgate::cose;
use flashgate::oem::load_signer;
use flashgate::package::{
    encode_image_element, encode_package, Manifest, UnverifiedPackage, MANIFEST_CONTENT_TYPE,
};
use sha2::{Digest, Sha256};

/// The sim policy, valid around today, written once per process.
fn policy_path() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let p = dir.join("sim-policy.toml");
        std::fs::write(&p, common::sim_policy_text()).unwrap();
        p.to_string_lossy().into_owned()
    })
    .clone()
}

fn assert_nothing_left(lab: &Lab) {
    assert!(
        lab.job_objects().is_empty(),
        "job objects left in the token: {:?}",
        lab.job_objects()
    );
    assert_eq!(lab.job_dirs(), 0, "a job directory was left behind");
}

#[test]
fn round_trip_and_key_attributes_on_both_tokens() {
    for kind in both() {
        let lab = Lab::new(kind);
        lab.enroll();
        let show = lab.ok(&["appliance", "show"]);
        let profile = match kind {
            Kind::SoftHsm => "p11v2-ecdh-aes-kdf",
            Kind::Kryoptic => "cose-ecdh-es-a256kw",
        };
        // The RSA-OAEP transport comes first; the ECDH profile the mechanism list allows follows.
        assert!(show.contains(&format!(", {profile}")), "{show}");
        // Appliance keys: private halves sensitive, never extractable, one use each.
        assert!(show.contains("flashgate-appliance-ka  class=CKO_PRIVATE_KEY sensitive=true extractable=false usage=derive"), "{show}");
        assert!(show.contains("flashgate-appliance-log  class=CKO_PRIVATE_KEY sensitive=true extractable=false usage=sign"), "{show}");

        // Enrolling twice is refused.
        let err = lab.fails(&["appliance", "init"]);
        assert!(err.contains("already holds appliance keys"), "{err}");

        lab.build_job("job.fgj", &policy_path(), 300_000);
        let out = lab.ok(&["job", "import", "job.fgj"]);
        assert!(out.contains("imported job"), "{out}");
        let show = lab.ok(&["appliance", "show"]);
        for (name, class, usage) in [
            ("master", "CKO_SECRET_KEY", "sign"),
            ("ca", "CKO_PRIVATE_KEY", "sign"),
            ("image0", "CKO_SECRET_KEY", "decrypt"),
        ] {
            let line = show
                .lines()
                .find(|l| l.contains(&format!(":{name} ")))
                .unwrap_or_else(|| panic!("{kind:?}: no {name} key in {show}"));
            assert!(
                line.ends_with(&format!(
                    "class={class} sensitive=true extractable=false usage={usage}"
                )),
                "{kind:?}: {line}"
            );
        }
        let list = lab.ok(&["job", "list"]);
        assert!(list.contains("acme-thermo  svn 3  quota 1000"), "{list}");

        // The same job again is refused, also after removal.
        let err = lab.fails(&["job", "import", "job.fgj"]);
        assert!(err.contains("already imported"), "{err}");
        let id = list.split_whitespace().next().unwrap().to_owned();
        lab.ok(&["job", "remove", &id]);
        assert!(
            lab.job_objects()
                .iter()
                .all(|l| l.starts_with("fg-imported:")),
            "{:?}",
            lab.job_objects()
        );
        assert_eq!(lab.job_dirs(), 0);
        let err = lab.fails(&["job", "import", "job.fgj"]);
        assert!(err.contains("already imported"), "{err}");
    }
}

/// Offsets of the parts of a package, for flipping bytes inside each.
fn parts(bytes: &[u8]) -> Vec<(&'static str, usize)> {
    let p = UnverifiedPackage::parse(bytes).unwrap();
    let (manifest, master, ca, images) = p.parts();
    let off = |s: &[u8]| s.as_ptr() as usize - bytes.as_ptr() as usize;
    vec![
        ("signature", off(manifest) + manifest.len() - 5),
        ("manifest", off(manifest) + manifest.len() / 2),
        (
            "recipient header",
            off(images[0].header) + images[0].header.len() - 50,
        ),
        ("wrapped key", off(master) + master.len() - 3),
        ("job CA key", off(ca) + ca.len() / 2),
        ("ciphertext chunk", off(images[0].chunks[1]) + 100),
        (
            "last chunk tag",
            off(images[0].chunks[4]) + images[0].chunks[4].len() - 1,
        ),
    ]
}

#[test]
fn tampered_packages_are_refused_and_leave_nothing() {
    for kind in both() {
        let lab = Lab::new(kind);
        lab.enroll();
        lab.build_job("job.fgj", &policy_path(), 300_000);
        let good = std::fs::read(lab.path("job.fgj")).unwrap();
        for (what, at) in parts(&good) {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(lab.path("bad.fgj"), &bad).unwrap();
            let err = lab.fails(&["job", "import", "bad.fgj"]);
            assert!(
                err.contains("altered")
                    || err.contains("does not verify")
                    || err.contains("damaged"),
                "{kind:?} {what}: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "one sentence, got: {err}");
            assert_nothing_left(&lab);
        }
        // Truncation, a removed chunk, swapped chunks, trailing data.
        let p = UnverifiedPackage::parse(&good).unwrap();
        let (m, dm, ca, images) = p.parts();
        let chunks: Vec<Vec<u8>> = images[0].chunks.iter().map(|c| c.to_vec()).collect();
        let mut variants: Vec<(&str, Vec<u8>)> =
            vec![("truncated", good[..good.len() - 1000].to_vec())];
        let mut removed = chunks.clone();
        removed.remove(2);
        variants.push((
            "chunk removed",
            encode_package(m, dm, ca, &[(images[0].header.to_vec(), removed)]),
        ));
        let mut swapped = chunks.clone();
        swapped.swap(1, 2);
        variants.push((
            "chunks reordered",
            encode_package(m, dm, ca, &[(images[0].header.to_vec(), swapped)]),
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        variants.push(("trailing byte", trailing));
        // The high-S twin of the manifest signature: valid ECDSA, but not
        // the one encoding flashgate accepts (FORMATS.md §3.3).
        let mut twin = m.to_vec();
        let at = twin.len() - 64;
        let sig = p256::ecdsa::Signature::from_slice(&twin[at..]).unwrap();
        let (r, s) = sig.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        twin[at..].copy_from_slice(&high.to_bytes());
        variants.push((
            "high-S signature",
            encode_package(
                &twin,
                dm,
                ca,
                &[(images[0].header.to_vec(), chunks.clone())],
            ),
        ));
        for (what, bytes) in variants {
            std::fs::write(lab.path("bad.fgj"), &bytes).unwrap();
            let err = lab.fails(&["job", "import", "bad.fgj"]);
            assert!(
                err.contains("altered") || err.contains("damaged"),
                "{kind:?} {what}: {err}"
            );
            assert_nothing_left(&lab);
        }
        // The good package still imports afterwards.
        lab.ok(&["job", "import", "job.fgj"]);
    }
}

/// Someone holding the OEM key re-signs a manifest over an altered chunk or
/// wrapped key: the digests match, so the token's own integrity checks must
/// catch it, and the keys unwrapped before the failure must be destroyed.
#[test]
fn resigned_alterations_are_caught_in_the_token() {
    for kind in both() {
        let lab = Lab::new(kind);
        lab.enroll();
        lab.build_job("job.fgj", &policy_path(), 200_000);
        let good = std::fs::read(lab.path("job.fgj")).unwrap();
        let signer = load_signer("signing-key.pem", &lab.path("oem")).unwrap();
        let p = UnverifiedPackage::parse(&good).unwrap();
        let (m_bytes, dm, ca, images) = p.parts();
        let (manifest, _) = p.manifest_unverified().unwrap();
        let _ = m_bytes;

        for case in ["chunk", "job CA key"] {
            let mut manifest: Manifest = manifest.clone();
            let mut chunks: Vec<Vec<u8>> = images[0].chunks.iter().map(|c| c.to_vec()).collect();
            let mut ca_obj = ca.to_vec();
            match case {
                "chunk" => chunks[2][10] ^= 0x80,
                _ => {
                    // Flip a byte inside the wrapped ciphertext (before the recipient).
                    let at = ca_obj.len() / 3;
                    ca_obj[at] ^= 0x01;
                    manifest.job_ca_key_digest = Sha256::digest(&ca_obj).into();
                }
            }
            let element = encode_image_element(images[0].header, &chunks);
            manifest.images[0].object_digest = Sha256::digest(&element).into();
            let signed = cose::sign1(&signer, MANIFEST_CONTENT_TYPE, manifest.encode()).unwrap();
            let bytes =
                encode_package(&signed, dm, &ca_obj, &[(images[0].header.to_vec(), chunks)]);
            std::fs::write(lab.path("resigned.fgj"), bytes).unwrap();
            let err = lab.fails(&["job", "import", "resigned.fgj"]);
            assert!(
                err.contains("altered") || err.contains("damaged"),
                "{kind:?} {case}: {err}"
            );
            assert_nothing_left(&lab);
        }
    }
}

#[test]
fn wrong_appliance_untrusted_oem_and_validity() {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    // Another appliance (its own token) builds... the job is for it, not us.
    let other = Lab::new(Kind::SoftHsm);
    other.enroll();
    std::fs::copy(
        other.path("enrollment.cbor"),
        lab.path("other-enrollment.cbor"),
    )
    .unwrap();
    std::fs::write(lab.path("fw.bin"), vec![0x5a; 70_000]).unwrap();
    lab.ok(&[
        "job",
        "build",
        "--oem",
        "oem",
        "--policy",
        &policy_path(),
        "--firmware",
        "fw.bin@0x0",
        "--appliance",
        "other-enrollment.cbor",
        "-o",
        "other.fgj",
    ]);
    let err = lab.fails(&["job", "import", "other.fgj"]);
    assert!(err.contains("built for appliance"), "{err}");
    assert_nothing_left(&lab);

    // A job signed by an OEM key the appliance does not trust.
    other.build_job("foreign.fgj", &policy_path(), 1000);
    std::fs::copy(other.path("foreign.fgj"), lab.path("foreign.fgj")).unwrap();
    let err = lab.fails(&["job", "import", "foreign.fgj"]);
    assert!(err.contains("does not trust"), "{err}");

    // Expired and not yet valid.
    let expired = lab.policy("expired.toml", |t| {
        common::validity(&t, 1_577_836_800, 1_609_459_200)
    });
    lab.build_job("expired.fgj", &expired, 1000);
    let err = lab.fails(&["job", "import", "expired.fgj"]);
    assert!(err.contains("expired"), "{err}");
    let future = lab.policy("future.toml", |t| {
        common::validity(&t, 4_070_908_800, 4_081_276_800)
    });
    lab.build_job("future.fgj", &future, 1000);
    let err = lab.fails(&["job", "import", "future.fgj"]);
    assert!(err.contains("not valid until"), "{err}");
    assert_nothing_left(&lab);
}

#[test]
fn security_version_never_goes_down() {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let v5 = lab.policy("v5.toml", |t| {
        t.replace("security_version = 3", "security_version = 5")
    });
    lab.build_job("v5.fgj", &v5, 1000);
    lab.build_job("v3.fgj", &policy_path(), 1000);
    lab.ok(&["job", "import", "v5.fgj"]);
    let err = lab.fails(&["job", "import", "v3.fgj"]);
    assert!(
        err.contains("security version 3") && err.contains("version 5 was already imported"),
        "{err}"
    );
    // Removing the newer job does not lower the floor.
    let id = lab.first_job_id();
    lab.ok(&["job", "remove", &id]);
    let err = lab.fails(&["job", "import", "v3.fgj"]);
    assert!(err.contains("anti-rollback"), "{err}");
}

#[test]
fn wrong_pin_missing_token_and_bad_build_inputs() {
    let lab = Lab::new(Kind::SoftHsm);
    std::fs::write(lab.path("wrong-pin"), "0000\n").unwrap();
    lab.write_config("wrong.toml", "appliance", "wrong-pin");
    let err = lab.fails(&["--config", "wrong.toml", "appliance", "init"]);
    assert!(err.contains("refused the PIN"), "{err}");
    lab.write_config("absent.toml", "no-such-token", "user-pin");
    let err = lab.fails(&["--config", "absent.toml", "appliance", "init"]);
    assert!(err.contains("no token labelled 'no-such-token'"), "{err}");
    lab.enroll();

    // A malformed policy names the line.
    std::fs::write(
        lab.path("broken.toml"),
        "[job]\nproduct = \"x\"\nquota = \n",
    )
    .unwrap();
    std::fs::write(lab.path("fw.bin"), vec![1u8; 100]).unwrap();
    let err = lab.fails(&common::job_build_args(
        "broken.toml",
        &["fw.bin@0"],
        &["-o", "x.fgj"],
    ));
    assert!(err.contains("line 3"), "{err}");
    // A malformed Intel HEX file names the line.
    std::fs::write(
        lab.path("bad.hex"),
        ":0400000001020304F1\n:0400040001020304EE\n:00000001FF\n",
    )
    .unwrap();
    let err = lab.fails(&common::job_build_args(
        &policy_path(),
        &["bad.hex"],
        &["-o", "x.fgj"],
    ));
    assert!(err.contains("line 1") || err.contains("line 2"), "{err}");
    // A pinned fingerprint that does not match.
    let err = lab.fails(&common::job_build_args(
        &policy_path(),
        &["fw.bin@0"],
        &["--fingerprint", "00", "-o", "x.fgj"],
    ));
    assert!(err.contains("fingerprint"), "{err}");
    // A profile the appliance cannot run.
    let err = lab.fails(&common::job_build_args(
        &policy_path(),
        &["fw.bin@0"],
        &["--profile", "cose-ecdh-es-a256kw", "-o", "x.fgj"],
    ));
    assert!(
        err.contains("cannot run the cose-ecdh-es-a256kw profile"),
        "{err}"
    );
    // Not a package at all.
    std::fs::write(lab.path("junk.fgj"), b"hello").unwrap();
    let err = lab.fails(&["job", "import", "junk.fgj"]);
    assert!(err.contains("not a flashgate job package"), "{err}");
}

#[test]
fn job_ca_chains_to_the_oem_root_with_openssl() {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    lab.build_job("job.fgj", &policy_path(), 1000);
    let bytes = std::fs::read(lab.path("job.fgj")).unwrap();
    let (m, _) = UnverifiedPackage::parse(&bytes)
        .unwrap()
        .manifest_unverified()
        .unwrap();
    std::fs::write(lab.path("job-ca.der"), &m.job_ca_cert).unwrap();
    let pem = std::process::Command::new("openssl")
        .args([
            "x509",
            "-inform",
            "DER",
            "-in",
            "job-ca.der",
            "-out",
            "job-ca.pem",
        ])
        .current_dir(lab.dir.path())
        .status()
        .unwrap();
    assert!(pem.success());
    let out = std::process::Command::new("openssl")
        .args([
            "verify",
            "-x509_strict",
            "-CAfile",
            "oem/root-cert.pem",
            "job-ca.pem",
        ])
        .current_dir(lab.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", "job-ca.pem"])
        .current_dir(lab.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(
        text.contains("X509v3 Subject Key Identifier")
            && text.contains("X509v3 Authority Key Identifier"),
        "{text}"
    );
    // Valid as long as the last device certificate it can issue: the job's
    // not_after plus the policy's 7300 days of device validity.
    let until = time::OffsetDateTime::from_unix_timestamp(
        i64::try_from(common::now() + 180 * 86_400 + 7300 * 86_400).unwrap(),
    )
    .unwrap();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][usize::from(u8::from(until.month())) - 1];
    assert!(
        text.contains(&format!("Not After : {month} {:>2}", until.day()))
            && text.contains(&format!("{} GMT", until.year())),
        "{text}"
    );
}

/// The OEM keeps its keys in its own PKCS#11 token, named by an RFC 7512 URI.
#[test]
fn oem_keys_in_a_pkcs11_token() {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    // The OEM's token lives in the same SoftHSM directory, under another label.
    let oem_pin = lab.path("oem-pin");
    std::fs::write(&oem_pin, "oem-pin-0000\n").unwrap();
    let conf = lab.path("token/softhsm2.conf");
    let init = std::process::Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "oem-keys",
            "--so-pin",
            "so-pin-0000",
            "--pin",
            "oem-pin-0000",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let uri = format!(
        "pkcs11:token=oem-keys?module-path={}&pin-source=file:{}",
        Kind::SoftHsm.module().display(),
        oem_pin.display()
    );
    let out = lab.ok(&[
        "oem",
        "init",
        "--out",
        "oem-hsm",
        "--name",
        "Acme Corp",
        "--pkcs11-uri",
        &uri,
    ]);
    assert!(
        out.contains("pkcs11:token=oem-keys;object=flashgate-oem-signing"),
        "{out}"
    );
    // No private key file was written.
    assert!(!lab.path("oem-hsm/signing-key.pem").exists());
    // A PIN on the command line is refused.
    let err = lab.fails(&[
        "oem",
        "init",
        "--out",
        "x",
        "--name",
        "A",
        "--pkcs11-uri",
        "pkcs11:token=oem-keys?module-path=/m.so&pin-value=1",
    ]);
    assert!(err.contains("pin-value is refused"), "{err}");

    std::fs::write(lab.path("fw.bin"), vec![0xa5u8; 5000]).unwrap();
    lab.ok(&[
        "job",
        "build",
        "--oem",
        "oem-hsm",
        "--policy",
        &policy_path(),
        "--firmware",
        "fw.bin@0x0",
        "--appliance",
        "enrollment.cbor",
        "-o",
        "hsm.fgj",
    ]);
    // The appliance trusts only the file-based OEM key so far: refused...
    let err = lab.fails(&["job", "import", "hsm.fgj"]);
    assert!(err.contains("does not trust"), "{err}");
    // ...until the token-held key is added to the trust anchors.
    let cfg = std::fs::read_to_string(lab.path("appliance.toml")).unwrap();
    std::fs::write(
        lab.path("appliance.toml"),
        cfg.replace(
            "oem_keys = [\"oem/signing-key.pub.pem\"]",
            "oem_keys = [\"oem/signing-key.pub.pem\", \"oem-hsm/signing-key.pub.pem\"]",
        ),
    )
    .unwrap();
    lab.ok(&["job", "import", "hsm.fgj"]);
}

/// Two images that share addresses would make every board fail at verify
/// (the later overwrites the earlier): `job build` refuses them naming both,
/// and a package whose signed manifest has them is refused at import with
/// nothing left behind.
#[test]
fn overlapping_images_are_refused_at_build_and_at_import() {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    std::fs::write(lab.path("a.bin"), vec![0x11u8; 0x100]).unwrap();
    std::fs::write(lab.path("b.bin"), vec![0x22u8; 0x40]).unwrap();
    let build = |a: &str, b: &str| {
        lab.fg(&common::job_build_args(
            &policy_path(),
            &[a, b],
            &["-o", "two.fgj"],
        ))
    };
    let out = build("a.bin@0x08090000", "b.bin@0x08090010");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("images 1 and 2 overlap at 0x08090010..0x08090050 (64 bytes)"),
        "{err}"
    );
    assert!(!lab.path("two.fgj").exists());

    // Built apart, then re-signed by the OEM key with the second image moved
    // onto the first.
    let out = build("a.bin@0x08090000", "b.bin@0x080a0000");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = std::fs::read(lab.path("two.fgj")).unwrap();
    let signer = load_signer("signing-key.pem", &lab.path("oem")).unwrap();
    let p = UnverifiedPackage::parse(&good).unwrap();
    let (_, dm, ca, images) = p.parts();
    let (mut manifest, _) = p.manifest_unverified().unwrap();
    manifest.images[1].address = 0x0809_0080;
    let signed = cose::sign1(&signer, MANIFEST_CONTENT_TYPE, manifest.encode()).unwrap();
    let elements: Vec<(Vec<u8>, Vec<Vec<u8>>)> = images
        .iter()
        .map(|i| {
            (
                i.header.to_vec(),
                i.chunks.iter().map(|c| c.to_vec()).collect(),
            )
        })
        .collect();
    std::fs::write(
        lab.path("overlap.fgj"),
        encode_package(&signed, dm, ca, &elements),
    )
    .unwrap();
    let err = lab.fails(&["job", "import", "overlap.fgj"]);
    assert!(err.contains("images 1 and 2 overlap"), "{err}");
    assert_nothing_left(&lab);
}

/// Operator-facing sentences: a build without a pinned fingerprint warns that
/// the record is trusted on first use; a Kryoptic module started without its
/// configuration says which variable to set, not a PKCS#11 function name.
#[test]
fn trust_on_first_use_is_warned_and_a_module_without_its_config_is_named() {
    let lab = Lab::new(Kind::Kryoptic);
    lab.enroll();
    std::fs::write(lab.path("fw.bin"), vec![0x5au8; 1024]).unwrap();
    let policy = policy_path();
    let build = |extra: &[&str]| {
        lab.fg(&common::job_build_args(
            &policy,
            &["fw.bin@0x08000000"],
            extra,
        ))
    };
    let out = build(&["-o", "a.fgj"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("trusted on first use"), "{err}");
    let fp = lab
        .ok(&["appliance", "show"])
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint:").map(|f| f.trim().to_owned()))
        .unwrap();
    let out = build(&["-o", "b.fgj", "--fingerprint", &fp]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("trusted on first use"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(["job", "list"])
        .current_dir(lab.path(""))
        .env_remove("KRYOPTIC_CONF")
        .env_remove("FLASHGATE_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("KRYOPTIC_CONF (not set in this environment)"),
        "{err}"
    );
    assert!(!err.contains("Function::"), "{err}");
}
