//! The RSAES-OAEP key transport on both tokens: enrollment lists the
//! profile, a job imports and runs; then a hostile PIN holder, with the real
//! package in hand and direct `cryptoki` calls, tries every path against the
//! real transport keys and the imported job keys, and gets no secret out.
//! Tampered recipients are refused and leave nothing. (An independent COSE
//! library opening a package of this profile: `tests/independent_rsa.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Kind, Lab};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use flashgate::cose;
use flashgate::oem::load_signer;
use flashgate::package::encrypt::AnyRecipient;
use flashgate::package::{
    encode_package, EncryptObject, Manifest, UnverifiedPackage, MANIFEST_CONTENT_TYPE,
};
use sha2::{Digest, Sha256};

fn policy(lab: &Lab) -> String {
    lab.policy("policy.toml", |t| t)
}

/// The three RSA-OAEP ciphertexts of a package: (role, blob).
fn blobs(bytes: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let p = UnverifiedPackage::parse(bytes).unwrap();
    let (_, master, ca, images) = p.parts();
    let oaep = |b: &[u8]| match EncryptObject::parse(b, "test").unwrap().recipient {
        AnyRecipient::Oaep(r) => r.encrypted_key,
        AnyRecipient::Ecdh(_) => panic!("not an RSA-OAEP recipient"),
    };
    vec![
        ("image", oaep(images[0].header)),
        ("master", oaep(master)),
        ("ca", oaep(ca)),
    ]
}

/// True if the object's CKA_VALUE came back.
fn readable(session: &Session, h: ObjectHandle) -> bool {
    session
        .get_attributes(h, &[AttributeType::Value])
        .is_ok_and(|v| {
            v.iter()
                .any(|a| matches!(a, Attribute::Value(x) if !x.is_empty()))
        })
}

fn oaep(kind: Kind) -> Mechanism<'static> {
    let (h, m) = match kind {
        Kind::Kryoptic => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        Kind::SoftHsm => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(h, m, PkcsOaepSource::empty()))
}

/// Everything a PIN holder can try with the real keys and the real package.
/// Returns the paths that yielded a secret (must be none).
fn hostile_pin_holder(
    kind: Kind,
    holder: &common::PinHolder,
    id: &str,
    package: &[u8],
) -> Vec<String> {
    let session = &holder.session;
    let mut leaks = Vec::new();
    let blobs = blobs(package);
    let transport: Vec<(&str, ObjectHandle)> = ["image", "master", "ca"]
        .into_iter()
        .map(|r| {
            (
                r,
                holder.object(
                    &format!("flashgate-appliance-transport-{r}"),
                    ObjectClass::PRIVATE_KEY,
                ),
            )
        })
        .collect();
    let templates: Vec<(&str, Vec<Attribute>)> = vec![
        (
            "extractable AES",
            vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Decrypt(true),
            ],
        ),
        (
            "extractable generic secret",
            vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        ),
        (
            "derivable generic secret",
            vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Derive(true),
                Attribute::Sign(true),
            ],
        ),
        (
            "extractable EC key",
            vec![
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Sign(true),
            ],
        ),
        ("no template", vec![]),
    ];
    for (role, key) in &transport {
        for (blob_role, blob) in &blobs {
            for (what, t) in &templates {
                let mut t = t.clone();
                t.push(Attribute::Token(false));
                for m in [oaep(kind), Mechanism::RsaX509, Mechanism::RsaPkcs] {
                    if let Ok(h) = session.unwrap_key(&m, *key, blob, &t) {
                        if readable(session, h) {
                            leaks.push(format!(
                                "C_UnwrapKey {blob_role} blob under {role} key into {what}"
                            ));
                        }
                        let _ = session.destroy_object(h);
                    }
                }
            }
            for m in [oaep(kind), Mechanism::RsaX509] {
                if session.decrypt(&m, *key, blob).is_ok() {
                    leaks.push(format!("C_Decrypt {blob_role} blob with {role} key"));
                }
                if session.sign(&m, *key, blob).is_ok() {
                    leaks.push(format!("C_Sign {blob_role} blob with {role} key"));
                }
            }
        }
        for attr in [
            Attribute::Decrypt(true),
            Attribute::Sign(true),
            Attribute::Extractable(true),
            Attribute::Sensitive(false),
            Attribute::AllowedMechanisms(vec![MechanismType::RSA_X_509]),
        ] {
            if session
                .update_attributes(*key, std::slice::from_ref(&attr))
                .is_ok()
            {
                leaks.push(format!("C_SetAttributeValue {attr:?} on the {role} key"));
            }
        }
        if let Ok(copy) = session.copy_object(
            *key,
            &[
                Attribute::Token(false),
                Attribute::Decrypt(true),
                Attribute::Sign(true),
            ],
        ) {
            leaks.push(format!("C_CopyObject of the {role} key"));
            let _ = session.destroy_object(copy);
        }
    }
    // The imported job keys.
    let attacker_kek = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        )
        .unwrap();
    for (name, class) in [
        ("master", ObjectClass::SECRET_KEY),
        ("ca", ObjectClass::PRIVATE_KEY),
        ("image0", ObjectClass::SECRET_KEY),
    ] {
        let key = holder.object(&format!("fg-job:{id}:{name}"), class);
        if readable(session, key) {
            leaks.push(format!("CKA_VALUE of {name}"));
        }
        for attr in [Attribute::Extractable(true), Attribute::Sensitive(false)] {
            let _ = session.update_attributes(key, &[attr]);
        }
        // A token that let usages change must still keep the value in.
        for attr in [
            Attribute::Derive(true),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
        ] {
            let _ = session.update_attributes(key, &[attr]);
        }
        if readable(session, key) {
            leaks.push(format!("CKA_VALUE of {name} after C_SetAttributeValue"));
        }
        if let Ok(copy) = session.copy_object(
            key,
            &[
                Attribute::Token(false),
                Attribute::Extractable(true),
                Attribute::Sensitive(false),
            ],
        ) {
            if readable(session, copy) {
                leaks.push(format!("C_CopyObject of {name}"));
            }
            let _ = session.destroy_object(copy);
        }
        for m in [Mechanism::AesKeyWrapPad, Mechanism::AesKeyWrap] {
            if session.wrap_key(&m, attacker_kek, key).is_ok() {
                leaks.push(format!("C_WrapKey of {name}"));
            }
        }
        // An imported key used as an intermediate: unwrap the next blob into something readable.
        for (_, blob) in &blobs {
            for m in [Mechanism::AesKeyWrapPad, Mechanism::AesKeyWrap] {
                if let Ok(h) = session.unwrap_key(
                    &m,
                    key,
                    &blob[..40],
                    &[
                        Attribute::Token(false),
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::GENERIC_SECRET),
                        Attribute::Extractable(true),
                        Attribute::Sensitive(false),
                    ],
                ) {
                    if readable(session, h) {
                        leaks.push(format!("C_UnwrapKey with {name}"));
                    }
                    let _ = session.destroy_object(h);
                }
            }
        }
    }
    let _ = session.destroy_object(attacker_kek);
    leaks
}

fn end_to_end_and_hostile_pin_holder(kind: Kind) {
    let lab = Lab::new(kind);
    lab.enroll();
    let show = lab.ok(&["appliance", "show"]);
    let profile = match kind {
        Kind::SoftHsm => "cose-rsaes-oaep-sha1",
        Kind::Kryoptic => "cose-rsaes-oaep-sha256",
    };
    assert!(
        show.contains(&format!("profiles:     {profile}, ")),
        "{kind:?}: {show}"
    );
    for role in ["image", "master", "ca"] {
        assert!(
            show.contains(&format!("flashgate-appliance-transport-{role}  class=CKO_PRIVATE_KEY sensitive=true extractable=false usage=unwrap")),
            "{kind:?}: {show}"
        );
    }
    let policy = policy(&lab);
    lab.build_job("job.fgj", &policy, 300_000);
    let package = std::fs::read(lab.path("job.fgj")).unwrap();
    let (m, _) = UnverifiedPackage::parse(&package)
        .unwrap()
        .manifest_unverified()
        .unwrap();
    assert_eq!(m.profile.name(), profile, "the builder prefers RSA-OAEP");
    lab.ok(&["job", "import", "job.fgj"]);
    let id = lab.first_job_id();
    let out = lab.ok(&[
        "run",
        "--job",
        &id,
        "--target",
        "sim:timing=zero,seed=5,flash-base=0x08000000",
        "--units",
        "3",
        "--json",
    ]);
    let passed = out
        .lines()
        .filter(|l| l.contains("\"event\":\"unit-passed\""))
        .count();
    assert_eq!(passed, 3, "{kind:?}: {out}");

    // The PIN holder, in this process, with the package in hand.
    let holder = lab.pin_holder();
    let leaks = hostile_pin_holder(kind, &holder, &id, &package);
    assert!(leaks.is_empty(), "{kind:?}: secrets came out: {leaks:?}");
    drop(holder);

    // The probe flashgate runs on throwaway keys agrees, and leaves no object behind.
    let before = lab.ok(&["appliance", "show"]);
    let token = flashgate::hsm::Token::open(&flashgate::hsm::TokenConfig {
        module: kind.module(),
        label: "appliance".to_owned(),
        pin: flashgate::hsm::PinSource::File(lab.path("user-pin")),
    })
    .unwrap();
    let support = token
        .transport_support()
        .expect("the token runs the transport");
    let findings = token.probe_transport(support).unwrap();
    assert!(findings.len() > 60, "{findings:?}");
    let extracted: Vec<_> = findings.iter().filter(|f| f.1).collect();
    assert!(extracted.is_empty(), "{kind:?}: {extracted:?}");
    drop(token);
    assert_eq!(before, lab.ok(&["appliance", "show"]));
    // The job still runs after all that.
    lab.ok(&[
        "run",
        "--job",
        &id,
        "--target",
        "sim:timing=zero,seed=6,flash-base=0x08000000",
        "--units",
        "1",
    ]);
}

#[test]
fn softhsm_end_to_end_and_hostile_pin_holder() {
    end_to_end_and_hostile_pin_holder(Kind::SoftHsm);
}

#[test]
fn kryoptic_end_to_end_and_hostile_pin_holder() {
    end_to_end_and_hostile_pin_holder(Kind::Kryoptic);
}

fn assert_nothing_left(lab: &Lab) {
    assert!(lab.job_objects().is_empty(), "{:?}", lab.job_objects());
    assert_eq!(lab.job_dirs(), 0, "a job directory was left behind");
}

/// The package with the secrets and first image header replaced, re-signed
/// with the OEM key so that the digests match and only the recipient checks
/// and the token can refuse.
fn resigned(lab: &Lab, good: &[u8], master: &[u8], ca: &[u8], header: &[u8]) -> Vec<u8> {
    let signer = load_signer("signing-key.pem", &lab.path("oem")).unwrap();
    let p = UnverifiedPackage::parse(good).unwrap();
    let (_, _, _, images) = p.parts();
    let (manifest, _) = p.manifest_unverified().unwrap();
    let mut manifest: Manifest = manifest;
    let mut elements: Vec<(Vec<u8>, Vec<Vec<u8>>)> = images
        .iter()
        .map(|im| {
            (
                im.header.to_vec(),
                im.chunks.iter().map(|c| c.to_vec()).collect(),
            )
        })
        .collect();
    elements[0].0 = header.to_vec();
    manifest.images[0].object_digest = Sha256::digest(flashgate::package::encode_image_element(
        &elements[0].0,
        &elements[0].1,
    ))
    .into();
    manifest.device_master_digest = Sha256::digest(master).into();
    manifest.job_ca_key_digest = Sha256::digest(ca).into();
    let signed = cose::sign1(&signer, MANIFEST_CONTENT_TYPE, manifest.encode()).unwrap();
    encode_package(&signed, master, ca, &elements)
}

/// A tampered package: what, master object, CA object, image header.
type Case = (&'static str, Vec<u8>, Vec<u8>, Vec<u8>);

fn edit_oaep(
    obj: &[u8],
    f: impl FnOnce(&mut flashgate::package::encrypt::OaepRecipient),
) -> Vec<u8> {
    let mut o = EncryptObject::parse(obj, "test").unwrap();
    match &mut o.recipient {
        AnyRecipient::Oaep(r) => f(r),
        AnyRecipient::Ecdh(_) => panic!("not RSA-OAEP"),
    }
    o.encode()
}

#[test]
fn tampered_rsa_recipients_are_refused_and_leave_nothing() {
    for kind in common::both() {
        let lab = Lab::new(kind);
        lab.enroll();
        let policy = policy(&lab);
        lab.build_job("job.fgj", &policy, 100_000);
        let good = std::fs::read(lab.path("job.fgj")).unwrap();
        let p = UnverifiedPackage::parse(&good).unwrap();
        let (_, master, ca, images) = p.parts();
        let header = images[0].header;
        let kid_of = |b: &[u8]| *EncryptObject::parse(b, "t").unwrap().recipient.kid();
        let master_kid = kid_of(master);
        let flip = |r: &mut flashgate::package::encrypt::OaepRecipient| r.encrypted_key[200] ^= 1;
        let cases: Vec<Case> = vec![
            (
                "flipped master ciphertext",
                edit_oaep(master, flip),
                ca.to_vec(),
                header.to_vec(),
            ),
            (
                "flipped CA ciphertext",
                master.to_vec(),
                edit_oaep(ca, flip),
                header.to_vec(),
            ),
            (
                "flipped image ciphertext",
                master.to_vec(),
                ca.to_vec(),
                edit_oaep(header, flip),
            ),
            // The CA blob where the master goes, with its kid relabelled: the
            // kid check passes, the master key cannot decrypt it.
            (
                "wrong role",
                edit_oaep(ca, |r| r.kid = master_kid),
                ca.to_vec(),
                header.to_vec(),
            ),
            (
                "wrong kid",
                edit_oaep(master, |r| r.kid = [0x42; 16]),
                ca.to_vec(),
                header.to_vec(),
            ),
        ];
        for (what, m, c, h) in cases {
            std::fs::write(lab.path("bad.fgj"), resigned(&lab, &good, &m, &c, &h)).unwrap();
            let err = lab.fails(&["job", "import", "bad.fgj"]);
            assert!(
                err.contains("not made for this appliance, or was altered"),
                "{kind:?} {what}: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
            assert_nothing_left(&lab);
        }
        // A flipped byte without re-signing: the digests catch it first.
        let mut bad = good.clone();
        let at = master.as_ptr() as usize - good.as_ptr() as usize + 100;
        bad[at] ^= 1;
        std::fs::write(lab.path("bad.fgj"), &bad).unwrap();
        let err = lab.fails(&["job", "import", "bad.fgj"]);
        assert!(err.contains("altered"), "{kind:?}: {err}");
        assert_nothing_left(&lab);
        lab.ok(&["job", "import", "job.fgj"]);
    }
}
