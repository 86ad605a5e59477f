//! A hostile PIN holder against a real appliance, on both tokens: after
//! `appliance init` and after `job import`, every extraction path the
//! enrollment probe measures is tried with direct PKCS#11 calls against the
//! real objects (key-agreement key, device master, image key, job CA key),
//! and each outcome must be the one the signed enrollment record claims.
//! Every object flashgate created is checked for its role's attributes;
//! `appliance show` prints them; `job build` honours
//! `[job] require_pin_holder_safe`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Kind, Lab};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::misc::{ExtractParams, KeyDerivationStringData};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use flashgate::enrollment::VerifiedEnrollment;
use flashgate::hsm::probe::Extraction;

/// The PIN holder's session, with what these attacks need.
struct Attacker(common::PinHolder);

impl std::ops::Deref for Attacker {
    type Target = common::PinHolder;
    fn deref(&self) -> &common::PinHolder {
        &self.0
    }
}

impl Attacker {
    fn open(lab: &Lab) -> Self {
        Self(lab.pin_holder())
    }

    fn label_and_class(&self, h: ObjectHandle) -> (String, ObjectClass) {
        let attrs = self
            .session
            .get_attributes(h, &[AttributeType::Label, AttributeType::Class])
            .unwrap();
        let mut label = String::new();
        let mut class = None;
        for a in attrs {
            match a {
                Attribute::Label(l) => label = String::from_utf8(l).unwrap(),
                Attribute::Class(c) => class = Some(c),
                _ => {}
            }
        }
        (label, class.unwrap())
    }

    fn bool_attr(&self, h: ObjectHandle, t: AttributeType) -> bool {
        match self.session.get_attributes(h, &[t]).unwrap().as_slice() {
            [Attribute::Sign(v)
            | Attribute::SignRecover(v)
            | Attribute::Verify(v)
            | Attribute::VerifyRecover(v)
            | Attribute::Encrypt(v)
            | Attribute::Decrypt(v)
            | Attribute::Wrap(v)
            | Attribute::Unwrap(v)
            | Attribute::Derive(v)
            | Attribute::Sensitive(v)
            | Attribute::Extractable(v)
            | Attribute::Modifiable(v)
            | Attribute::Copyable(v)] => *v,
            other => panic!("{t}: {other:?}"),
        }
    }

    fn allowed(&self, h: ObjectHandle) -> Vec<MechanismType> {
        match self
            .session
            .get_attributes(h, &[AttributeType::AllowedMechanisms])
            .unwrap()
            .as_slice()
        {
            [Attribute::AllowedMechanisms(m)] => m.clone(),
            other => panic!("allowed mechanisms: {other:?}"),
        }
    }

    fn offers(&self, m: MechanismType) -> bool {
        let slot = self.session.get_session_info().unwrap().slot_id();
        self.pkcs11.get_mechanism_list(slot).unwrap().contains(&m)
    }

    /// Derives from `base` into a secret asking to be readable; the bytes if it worked.
    fn derive_readable(&self, m: &Mechanism<'_>, base: ObjectHandle, len: u64) -> Option<Vec<u8>> {
        let h = self
            .session
            .derive_key(
                m,
                base,
                &[
                    Attribute::Token(false),
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::ValueLen(len.into()),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                ],
            )
            .ok()?;
        let value = match self.session.get_attributes(h, &[AttributeType::Value]) {
            Ok(a) => a.into_iter().find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            }),
            Err(_) => None,
        };
        let _ = self.session.destroy_object(h);
        value
    }
}

/// The ECDH profile the record lists (the RSA-OAEP profile, listed first,
/// has its own attacks in `tests/rsa_transport.rs`).
fn ecdh_profile(record: &VerifiedEnrollment) -> flashgate::hsm::Profile {
    *record
        .record()
        .profiles
        .iter()
        .find(|p| p.oaep_hash().is_none())
        .expect("an ECDH profile")
}

/// Builds a job for the token's ECDH profile, whose keys these attacks target.
fn build_ecdh_job(lab: &Lab, rec: &VerifiedEnrollment, out: &str, policy: &str, size: usize) {
    std::fs::write(lab.path("fw.bin"), vec![0x3cu8; size]).unwrap();
    lab.ok(&common::job_build_args(
        policy,
        &["fw.bin@0x08000000"],
        &["--profile", ecdh_profile(rec).name(), "-o", out],
    ));
}

/// The outcome text the record gives for `path` under the ECDH profile.
fn claimed(record: &VerifiedEnrollment, key: &str, path: &str) -> String {
    let full = format!("{}/{key}/{path}", ecdh_profile(record).name());
    record
        .record()
        .extraction_paths
        .iter()
        .find(|(p, _)| *p == full)
        .unwrap_or_else(|| panic!("the record has no path {full}"))
        .1
        .clone()
}

fn record(lab: &Lab) -> VerifiedEnrollment {
    VerifiedEnrollment::parse(&std::fs::read(lab.path("enrollment.cbor")).unwrap()).unwrap()
}

/// ECDH with the real KA key into a readable secret gives the true shared
/// secret Z on both tokens, and the record says so.
fn ecdh_gives_z(lab: &Lab, a: &Attacker, rec: &VerifiedEnrollment) {
    let ka = a.object("flashgate-appliance-ka", ObjectClass::PRIVATE_KEY);
    let eph = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
    let point = flashgate::cose::sec1_uncompressed(&eph.public_key());
    let z = a.derive_readable(
        &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &point)),
        ka,
        32,
    );
    let host = flashgate::cose::ecdh_x(&eph, &rec.record().ka_public).unwrap();
    assert_eq!(
        z.as_deref(),
        Some(host.as_slice()),
        "{:?}: ECDH into a readable secret should give Z",
        lab.kind
    );
    assert!(
        claimed(rec, "ka", "ecdh-into-extractable").starts_with("possible"),
        "{:?}",
        lab.kind
    );
    assert_eq!(
        rec.record().extraction(ecdh_profile(rec)),
        Some(Extraction::Possible),
        "{:?}",
        lab.kind
    );
    // The profile job build prefers is the unwrap transport, and the record
    // says a PIN holder gets nothing out of it.
    let first = rec.record().profiles[0];
    assert!(first.oaep_hash().is_some(), "{:?}: {first}", lab.kind);
    assert_eq!(rec.record().extraction(first), Some(Extraction::Refused));
}

/// `C_SetAttributeValue` and `C_CopyObject` against one real key, in the
/// probe's order, each outcome as the record claims it.
fn set_and_copy(lab: &Lab, a: &Attacker, rec: &VerifiedEnrollment, h: ObjectHandle, key: &str) {
    let kind = lab.kind;
    for (path, attr, has) in [
        ("set-extractable", Attribute::Extractable(true), None),
        ("set-sensitive-false", Attribute::Sensitive(false), None),
        (
            "set-derive",
            Attribute::Derive(true),
            Some(AttributeType::Derive),
        ),
        (
            "set-decrypt",
            Attribute::Decrypt(true),
            Some(AttributeType::Decrypt),
        ),
    ] {
        let claim = claimed(rec, key, path);
        if has.is_some_and(|t| a.bool_attr(h, t)) {
            assert!(
                claim.starts_with("unavailable"),
                "{kind:?} {key} {path}: {claim}"
            );
            continue;
        }
        let accepted = a.session.update_attributes(h, &[attr]).is_ok();
        let exposes = matches!(path, "set-extractable" | "set-sensitive-false");
        // Job secrets never become readable, on either token.
        if exposes {
            assert!(!accepted, "{kind:?}: {key} {path} was accepted");
        }
        let expected = match (accepted, exposes) {
            (false, _) => "refused",
            (true, true) => "possible",
            (true, false) => "widened",
        };
        assert!(
            claim.starts_with(expected),
            "{kind:?} {key} {path}: live {expected}, record {claim}"
        );
    }
    let copy = a.session.copy_object(
        h,
        &[Attribute::Extractable(true), Attribute::Sensitive(false)],
    );
    assert!(copy.is_err(), "{kind:?}: {key} was copied as extractable");
    let claim = claimed(rec, key, "copy-extractable");
    assert!(claim.starts_with("refused"), "{kind:?} {key}: {claim}");
}

/// The derive-based read-outs against one real secret key.
fn derive_out(lab: &Lab, a: &Attacker, rec: &VerifiedEnrollment, h: ObjectHandle, key: &str) {
    let zeros = [0u8; 32];
    let one = [0u8; 1];
    for (path, m) in [
        (
            "extract-key-from-key",
            Mechanism::ExtractKeyFromKey(ExtractParams::new(0)),
        ),
        (
            "xor-base-and-data",
            Mechanism::XorBaseAndData(KeyDerivationStringData::new(&zeros)),
        ),
        (
            "concatenate-base-and-data",
            Mechanism::ConcatenateBaseAndData(KeyDerivationStringData::new(&one)),
        ),
    ] {
        let claim = claimed(rec, key, path);
        if !a.offers(m.mechanism_type()) {
            assert!(
                claim.starts_with("unavailable"),
                "{:?} {key} {path}: {claim}",
                lab.kind
            );
            continue;
        }
        let out = a.derive_readable(&m, h, 16);
        assert!(
            out.is_none(),
            "{:?}: {key} read out through {path}",
            lab.kind
        );
        assert!(
            claim.starts_with("refused"),
            "{:?} {key} {path}: {claim}",
            lab.kind
        );
    }
}

/// Every object flashgate created, checked against its role.
fn attributes_match_roles(lab: &Lab, a: &Attacker, job: &str) {
    let kind = lab.kind;
    // SoftHSM 2.6.1 cannot make an unwrapped key unmodifiable (measured).
    let unwrapped_modifiable = kind == Kind::SoftHsm;
    let mut seen = Vec::new();
    for h in a.session.find_objects(&[Attribute::Token(true)]).unwrap() {
        let (label, class) = a.label_and_class(h);
        if class == ObjectClass::DATA {
            assert!(
                label.starts_with("fg-"),
                "{kind:?}: unexpected data object {label}"
            );
            continue;
        }
        let name = label
            .strip_prefix(&format!("fg-job:{job}:"))
            .unwrap_or(&label);
        let (usage, mechanism, modifiable): (&[AttributeType], MechanismType, bool) =
            match (name, class) {
                ("flashgate-appliance-ka", ObjectClass::PRIVATE_KEY)
                | ("flashgate-appliance-ka", ObjectClass::PUBLIC_KEY) => {
                    (&[AttributeType::Derive], MechanismType::ECDH1_DERIVE, false)
                }
                ("flashgate-appliance-log", ObjectClass::PRIVATE_KEY) => {
                    (&[AttributeType::Sign], MechanismType::ECDSA, false)
                }
                ("flashgate-appliance-log", ObjectClass::PUBLIC_KEY) => {
                    (&[AttributeType::Verify], MechanismType::ECDSA, false)
                }
                ("master", ObjectClass::SECRET_KEY) => (
                    &[AttributeType::Sign],
                    MechanismType::SHA256_HMAC,
                    unwrapped_modifiable,
                ),
                ("image0", ObjectClass::SECRET_KEY) => (
                    &[AttributeType::Decrypt],
                    MechanismType::AES_GCM,
                    unwrapped_modifiable,
                ),
                ("ca", ObjectClass::PRIVATE_KEY) => (
                    &[AttributeType::Sign],
                    MechanismType::ECDSA,
                    unwrapped_modifiable,
                ),
                (
                    "flashgate-appliance-transport-image"
                    | "flashgate-appliance-transport-master"
                    | "flashgate-appliance-transport-ca",
                    ObjectClass::PRIVATE_KEY,
                ) => (
                    &[AttributeType::Unwrap],
                    MechanismType::RSA_PKCS_OAEP,
                    false,
                ),
                // The host encrypts to it; in the token it does nothing.
                (
                    "flashgate-appliance-transport-image"
                    | "flashgate-appliance-transport-master"
                    | "flashgate-appliance-transport-ca",
                    ObjectClass::PUBLIC_KEY,
                ) => (&[], MechanismType::RSA_PKCS_OAEP, false),
                _ => panic!("{kind:?}: unexpected object {label} ({class})"),
            };
        seen.push(format!("{name}/{class}"));
        let flags: &[AttributeType] = if class == ObjectClass::PRIVATE_KEY {
            &[
                AttributeType::Sign,
                AttributeType::SignRecover,
                AttributeType::Decrypt,
                AttributeType::Unwrap,
                AttributeType::Derive,
            ]
        } else if class == ObjectClass::PUBLIC_KEY {
            &[
                AttributeType::Verify,
                AttributeType::VerifyRecover,
                AttributeType::Encrypt,
                AttributeType::Wrap,
                AttributeType::Derive,
            ]
        } else {
            &[
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Sign,
                AttributeType::Verify,
                AttributeType::Wrap,
                AttributeType::Unwrap,
                AttributeType::Derive,
            ]
        };
        for f in flags {
            assert_eq!(
                a.bool_attr(h, *f),
                usage.contains(f),
                "{kind:?}: {label} ({class}) {f}"
            );
        }
        if class != ObjectClass::PUBLIC_KEY {
            assert!(
                a.bool_attr(h, AttributeType::Sensitive),
                "{kind:?}: {label}"
            );
            assert!(
                !a.bool_attr(h, AttributeType::Extractable),
                "{kind:?}: {label}"
            );
        }
        assert_eq!(a.allowed(h), vec![mechanism], "{kind:?}: {label} ({class})");
        assert_eq!(
            a.bool_attr(h, AttributeType::Modifiable),
            modifiable,
            "{kind:?}: {label} ({class}) modifiable"
        );
        assert!(
            !a.bool_attr(h, AttributeType::Copyable),
            "{kind:?}: {label} copyable"
        );
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "ca/CKO_PRIVATE_KEY",
            "flashgate-appliance-ka/CKO_PRIVATE_KEY",
            "flashgate-appliance-ka/CKO_PUBLIC_KEY",
            "flashgate-appliance-log/CKO_PRIVATE_KEY",
            "flashgate-appliance-log/CKO_PUBLIC_KEY",
            "flashgate-appliance-transport-ca/CKO_PRIVATE_KEY",
            "flashgate-appliance-transport-ca/CKO_PUBLIC_KEY",
            "flashgate-appliance-transport-image/CKO_PRIVATE_KEY",
            "flashgate-appliance-transport-image/CKO_PUBLIC_KEY",
            "flashgate-appliance-transport-master/CKO_PRIVATE_KEY",
            "flashgate-appliance-transport-master/CKO_PUBLIC_KEY",
            "image0/CKO_SECRET_KEY",
            "master/CKO_SECRET_KEY",
        ],
        "{kind:?}"
    );
}

#[test]
fn a_hostile_pin_holder_gets_exactly_what_the_enrollment_record_claims() {
    for kind in common::both() {
        let lab = Lab::new(kind);
        lab.enroll();
        let rec = record(&lab);
        let a = Attacker::open(&lab);

        // After enrollment: the appliance keys.
        ecdh_gives_z(&lab, &a, &rec);
        let ka = a.object("flashgate-appliance-ka", ObjectClass::PRIVATE_KEY);
        set_and_copy(&lab, &a, &rec, ka, "ka");

        // After import: the job's secrets. Import and runs are unaffected by
        // what was tried above, since every attempt was refused or harmless.
        let policy = lab.policy("policy.toml", |p| p);
        build_ecdh_job(&lab, &rec, "job.fgj", &policy, 70_000);
        lab.ok(&["job", "import", "job.fgj"]);
        let id = lab.first_job_id();
        let label = |n: &str| format!("fg-job:{id}:{n}");
        attributes_match_roles(&lab, &a, &id);
        for (name, class, key) in [
            ("master", ObjectClass::SECRET_KEY, "device-master"),
            ("image0", ObjectClass::SECRET_KEY, "image-key"),
            ("ca", ObjectClass::PRIVATE_KEY, "job-ca-key"),
        ] {
            let h = a.object(&label(name), class);
            set_and_copy(&lab, &a, &rec, h, key);
            if class == ObjectClass::SECRET_KEY {
                derive_out(&lab, &a, &rec, h, key);
            }
        }
    }
}

#[test]
fn appliance_show_prints_extraction_and_every_objects_attributes() {
    for kind in common::both() {
        let lab = Lab::new(kind);
        let init = lab.ok(&["appliance", "init", "-o", "enrollment.cbor"]);
        let (profile, rsa) = match kind {
            Kind::SoftHsm => ("p11v2-ecdh-aes-kdf", "cose-rsaes-oaep-sha1"),
            Kind::Kryoptic => ("cose-ecdh-es-a256kw", "cose-rsaes-oaep-sha256"),
        };
        for out in [init, lab.ok(&["appliance", "show"])] {
            assert!(out.contains(&format!("  {profile}: possible")), "{out}");
            assert!(out.contains(&format!("  {rsa}: refused")), "{out}");
            assert!(
                out.contains(&format!("    {profile}/ka/ecdh-into-extractable: possible")),
                "{out}"
            );
            assert!(
                !out.contains(&format!("    {rsa}/")),
                "nothing possible under {rsa}: {out}"
            );
            assert!(out.contains(&format!("job build chooses {rsa}")), "{out}");
            assert!(!out.contains("development only"), "{out}");
        }
        let show = lab.ok(&["appliance", "show"]);
        let detail = |label: &str, class: &str| {
            let mut lines = show.lines();
            lines
                .find(|l| l.starts_with(&format!("  {label}  class={class}")))
                .unwrap_or_else(|| panic!("{kind:?}: no {label} {class} in {show}"));
            lines.next().unwrap().trim().to_owned()
        };
        assert_eq!(
            detail("flashgate-appliance-ka", "CKO_PRIVATE_KEY"),
            "sign=false sign-recover=false decrypt=false unwrap=false derive=true modifiable=false copyable=false mechanisms=CKM_ECDH1_DERIVE"
        );
        assert_eq!(
            detail("flashgate-appliance-log", "CKO_PUBLIC_KEY"),
            "verify=true verify-recover=false encrypt=false wrap=false derive=false modifiable=false copyable=false mechanisms=CKM_ECDSA"
        );
        let policy = lab.policy("policy.toml", |p| p);
        build_ecdh_job(&lab, &record(&lab), "job.fgj", &policy, 70_000);
        lab.ok(&["job", "import", "job.fgj"]);
        let show = lab.ok(&["appliance", "show"]);
        let modifiable = kind == Kind::SoftHsm;
        let mut lines = show.lines();
        lines
            .find(|l| l.contains(":master  class=CKO_SECRET_KEY"))
            .unwrap();
        assert_eq!(
            lines.next().unwrap().trim(),
            format!("encrypt=false decrypt=false sign=true verify=false wrap=false unwrap=false derive=false modifiable={modifiable} copyable=false mechanisms=CKM_SHA256_HMAC")
        );
        // A data object shows no key attributes.
        let data = show
            .lines()
            .find(|l| l.trim_start().starts_with("fg-imported:"))
            .unwrap();
        assert!(data.contains("class=CKO_DATA"), "{data}");
        assert!(
            !data.contains("derive") && !data.contains("sensitive"),
            "{data}"
        );
    }
}

#[test]
fn job_build_refuses_an_appliance_whose_pin_holder_can_extract() {
    let lab = Lab::new(Kind::SoftHsm);
    lab.enroll();
    let safe = lab.policy("safe.toml", |p| {
        p.replacen(
            "\n[target]",
            "require_pin_holder_safe = true\n\n[target]",
            1,
        )
    });
    assert!(std::fs::read_to_string(lab.path(&safe))
        .unwrap()
        .contains("require_pin_holder_safe = true"));
    std::fs::write(lab.path("fw.bin"), vec![0x5au8; 4096]).unwrap();
    // Forced onto the ECDH profile, whose secrets the PIN holder can extract.
    let err = lab.fails(&common::job_build_args(
        &safe,
        &["fw.bin@0x08000000"],
        &["--profile", "p11v2-ecdh-aes-kdf", "-o", "job.fgj"],
    ));
    assert!(
        err.contains("require_pin_holder_safe")
            && err.contains("says extraction is possible for the p11v2-ecdh-aes-kdf profile"),
        "{err}"
    );
    assert!(!lab.path("job.fgj").exists());
    // The profile job build chooses by default holds: the same policy builds.
    lab.build_job("safe.fgj", &safe, 4096);
    assert!(lab.path("safe.fgj").exists());
    // The default (false) keeps development use of the ECDH profile possible.
    let dev = lab.policy("dev.toml", |p| p);
    std::fs::write(lab.path("fw.bin"), vec![0x5au8; 4096]).unwrap();
    lab.ok(&common::job_build_args(
        &dev,
        &["fw.bin@0x08000000"],
        &["--profile", "p11v2-ecdh-aes-kdf", "-o", "job.fgj"],
    ));
    assert!(lab.path("job.fgj").exists());
}
