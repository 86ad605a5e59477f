//! The station's client-certificate authority on both tokens: its key as a
//! hostile PIN holder would attack it; client and server certificates as
//! OpenSSL (and NSS, where installed) check them; the PKCS#12 file opened
//! without `-legacy`; the role in the subject's OU read back, hostile
//! subjects refused; the deny-list; the command line end to end; and no
//! secret in any Debug output or error text.
//!
//! The library is driven in this process on the shared in-process appliance
//! of each token kind (a PKCS#11 module is initialised once per process);
//! the command line on a lab token of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use common::{in_process::in_process, Kind, Lab};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use flashgate::appliance::{ApplianceConfig, LOG_LABEL};
use flashgate::station::{Access, Station, StationError};
use flashgate::station_ca::{
    parse_fingerprint, revoked_path, ClientIdentity, DenyList, Role, StationCa, StationCaError,
    CA_LABEL,
};

/// The name of the in-process stations' CA.
const CA_NAME: &str = "line 4";

fn config(dir: &Path) -> ApplianceConfig {
    ApplianceConfig::load(&dir.join("appliance.toml")).unwrap()
}

/// The in-process appliance as a writing station.
fn station(dir: &Path) -> Station {
    Station::open(
        config(dir),
        Access::Write {
            purpose: "the station CA is being tested".to_owned(),
        },
    )
    .unwrap()
}

/// The station's CA, made on first use (the in-process appliance is shared
/// by the tests of this file, which take turns on it).
fn ca_of(station: &Station) -> StationCa {
    match station.station_ca() {
        Ok(ca) => ca,
        Err(StationError::StationCa(StationCaError::NoCa)) => {
            let ca = station.init_station_ca(CA_NAME).unwrap();
            assert_eq!(ca.subject(), "CN=line 4 station CA,O=flashgate station");
            ca
        }
        Err(e) => panic!("{e}"),
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl")
}

fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let out = openssl(dir, args);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn openssl_fails(dir: &Path, args: &[&str]) -> String {
    let out = openssl(dir, args);
    assert!(!out.status.success(), "openssl {args:?} succeeded");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A logged-in session on the in-process token, opened the way anyone with
/// the user PIN could (the module is already initialised in this process,
/// and the login is per application).
fn pin_holder(kind: Kind) -> common::PinHolder {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error, RvError};
    let turn = common::token_turn(kind);
    let pkcs11 = Pkcs11::new(kind.module()).unwrap();
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("initialise: {e}"),
    }
    let slot = pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label().trim() == "in-process")
        .expect("the in-process token");
    let session = pkcs11.open_rw_session(slot).unwrap();
    match session.login(cryptoki::session::UserType::User, Some(&common::PIN.into())) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("log in: {e}"),
    }
    common::PinHolder {
        session,
        pkcs11,
        turn,
    }
}

/// Every attribute that says what a key can do or where it can go.
fn attributes(a: &common::PinHolder, h: ObjectHandle) -> Vec<Attribute> {
    let mut out = Vec::new();
    for t in [
        AttributeType::Token,
        AttributeType::Private,
        AttributeType::KeyType,
        AttributeType::EcParams,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Sign,
        AttributeType::SignRecover,
        AttributeType::Decrypt,
        AttributeType::Unwrap,
        AttributeType::Derive,
        AttributeType::Verify,
        AttributeType::VerifyRecover,
        AttributeType::Encrypt,
        AttributeType::Wrap,
        AttributeType::Modifiable,
        AttributeType::Copyable,
        AttributeType::AllowedMechanisms,
    ] {
        if let Ok(v) = a.session.get_attributes(h, &[t]) {
            out.extend(v);
        }
    }
    out
}

#[test]
fn the_ca_key_is_made_like_the_log_key_and_a_pin_holder_cannot_take_it_out() {
    for kind in common::both() {
        let guard = in_process(kind);
        let station = station(&guard.dir);
        let ca = ca_of(&station);
        // One CA per station.
        let again = station.init_station_ca("another").unwrap_err();
        assert!(
            matches!(
                again,
                StationError::StationCa(StationCaError::CaExists { .. })
            ),
            "{kind:?}: {again}"
        );

        let a = pin_holder(kind);
        let private = a.object(CA_LABEL, ObjectClass::PRIVATE_KEY);
        let public = a.object(CA_LABEL, ObjectClass::PUBLIC_KEY);
        // Exactly the log key's attributes: same templates, same token.
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            assert_eq!(
                attributes(&a, a.object(CA_LABEL, class)),
                attributes(&a, a.object(LOG_LABEL, class)),
                "{kind:?} {class}"
            );
        }
        let attrs = attributes(&a, private);
        for expected in [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::KeyType(KeyType::EC),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::SignRecover(false),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Modifiable(false),
            Attribute::Copyable(false),
            Attribute::AllowedMechanisms(vec![MechanismType::ECDSA]),
        ] {
            assert!(
                attrs.contains(&expected),
                "{kind:?}: {expected:?} in {attrs:?}"
            );
        }
        let label = a
            .session
            .get_attributes(private, &[AttributeType::Id])
            .unwrap();
        assert_eq!(label, vec![Attribute::Id(CA_LABEL.as_bytes().to_vec())]);

        // CKA_VALUE cannot be read.
        let value = a.session.get_attributes(private, &[AttributeType::Value]);
        assert!(
            value.as_ref().map_or(true, |v| !v
                .iter()
                .any(|x| matches!(x, Attribute::Value(_)))),
            "{kind:?}: the CA key's value was read: {value:?}"
        );
        // No attribute can be turned towards leaving the token or another use.
        for attr in [
            Attribute::Extractable(true),
            Attribute::Sensitive(false),
            Attribute::Derive(true),
            Attribute::Decrypt(true),
            Attribute::Unwrap(true),
            Attribute::Modifiable(true),
            Attribute::Copyable(true),
            Attribute::AllowedMechanisms(vec![MechanismType::ECDSA, MechanismType::ECDH1_DERIVE]),
        ] {
            let r = a
                .session
                .update_attributes(private, std::slice::from_ref(&attr));
            assert!(
                r.is_err(),
                "{kind:?}: C_SetAttributeValue {attr:?} accepted"
            );
        }
        assert_eq!(attributes(&a, private), attrs, "{kind:?}: changed");
        // Not copied, neither as it is nor into a readable copy.
        for template in [
            vec![],
            vec![Attribute::Extractable(true), Attribute::Sensitive(false)],
            vec![Attribute::Token(false)],
        ] {
            let copy = a.session.copy_object(private, &template);
            assert!(
                copy.is_err(),
                "{kind:?}: C_CopyObject {template:?} gave {copy:?}"
            );
        }
        // Not used to derive (ECDH into a readable secret).
        let eph = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let point = flashgate::cose::sec1_uncompressed(&eph.public_key());
        let derived = a.session.derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &point)),
            private,
            &[
                Attribute::Token(false),
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32.into()),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        );
        assert!(
            derived.is_err(),
            "{kind:?}: ECDH with the CA key: {derived:?}"
        );
        // Not used to decrypt, with any mechanism the tokens might try.
        for m in [Mechanism::Ecdsa, Mechanism::RsaPkcs, Mechanism::AesEcb] {
            let r = a.session.decrypt(&m, private, &[0u8; 64]);
            assert!(
                r.is_err(),
                "{kind:?}: C_Decrypt {m:?} with the CA key: {r:?}"
            );
        }
        // Not wrapped out under a key the PIN holder makes.
        let out = a.wrapped_out(private);
        assert!(
            out.is_empty(),
            "{kind:?}: C_WrapKey {out:?} gave the CA key"
        );
        // It signs only with CKM_ECDSA (the oracle SECURITY.md describes).
        let r = a.session.sign(&Mechanism::EcdsaSha256, private, b"tbs");
        assert!(r.is_err(), "{kind:?}: CKM_ECDSA_SHA256 with the CA key");
        // The public half verifies only.
        let pa = attributes(&a, public);
        for expected in [
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::AllowedMechanisms(vec![MechanismType::ECDSA]),
        ] {
            assert!(pa.contains(&expected), "{kind:?}: {expected:?} in {pa:?}");
        }
        drop(a);

        // Nothing tried above changed the CA: it loads and issues.
        let loaded = station.station_ca().unwrap();
        assert_eq!(loaded.certificate_der(), ca.certificate_der());
        loaded
            .issue_client(Role::Metrics, "after-attack", 1)
            .unwrap();
    }
}

/// A CA and a client certificate under it made with OpenSSL alone, with
/// `ca_subject` as the CA's subject: another station's CA.
fn foreign_client(dir: &Path, ca_subject: &str) {
    openssl_ok(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "other-ca.key",
            "-out",
            "other-ca.pem",
            "-days",
            "30",
            "-subj",
            ca_subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl_ok(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "mallory.key",
            "-out",
            "mallory.csr",
            "-subj",
            "/O=flashgate station/OU=operator/CN=mallory",
        ],
    );
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl_ok(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "mallory.csr",
            "-CA",
            "other-ca.pem",
            "-CAkey",
            "other-ca.key",
            "-CAcreateserial",
            "-days",
            "10",
            "-extfile",
            "client.ext",
            "-out",
            "mallory.pem",
        ],
    );
}

/// The PEM block with `label` in `text`, armour included.
fn pem_block<'a>(text: &'a str, label: &str) -> &'a str {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let at = text
        .find(&begin)
        .unwrap_or_else(|| panic!("no {label} in {text}"));
    let to = text[at..].find(&end).unwrap() + at + end.len();
    &text[at..to]
}

#[test]
fn client_certificates_verify_with_openssl_and_their_pkcs12_opens_without_legacy() {
    for kind in common::both() {
        let guard = in_process(kind);
        let station = station(&guard.dir);
        let ca = ca_of(&station);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("clients");

        for role in Role::ALL {
            let name = format!("{role} one");
            let issued = ca.issue_client(role, &name, 30).unwrap();
            assert_eq!(issued.identity.role, role);
            assert_eq!(issued.identity.common_name, name);
            assert_eq!(
                issued.identity.subject,
                format!("CN={name},OU={role},O=flashgate station")
            );
            assert_eq!(
                hex::encode(issued.fingerprint),
                sha256_hex(&issued.certificate_der)
            );
            assert_eq!(
                ClientIdentity::from_der(&issued.certificate_der).unwrap(),
                issued.identity
            );
            assert_eq!(
                issued.identity.audit_name(),
                format!(
                    "CN={name},OU={role},O=flashgate station (sha256:{})",
                    sha256_hex(&issued.certificate_der)
                )
            );
            let files = issued.write(&ca, &out, &name).unwrap();
            assert_eq!(mode(&out), 0o700, "{kind:?}");
            assert_eq!(mode(&files.key), 0o600);
            assert_eq!(mode(&files.pkcs12), 0o600);
            assert_eq!(mode(&files.password), 0o600);
            assert_eq!(
                std::fs::read_to_string(&files.ca_certificate).unwrap(),
                ca.certificate_pem()
            );
            let cert = format!("{name}.pem");
            let verified = openssl_ok(&out, &["verify", "-CAfile", "station-ca.pem", &cert]);
            assert_eq!(verified, format!("{cert}: OK\n"));
            openssl_ok(
                &out,
                &[
                    "verify",
                    "-purpose",
                    "sslclient",
                    "-CAfile",
                    "station-ca.pem",
                    &cert,
                ],
            );
            // A client certificate is no server certificate.
            openssl_fails(
                &out,
                &[
                    "verify",
                    "-purpose",
                    "sslserver",
                    "-CAfile",
                    "station-ca.pem",
                    &cert,
                ],
            );
        }

        // The PKCS#12 file: OpenSSL 3 opens it without -legacy, with the
        // password from its file, and finds the certificate, the CA and a
        // key of the certificate's public key.
        let p12 = "operator one.p12";
        let password = "file:operator one.p12-password";
        let opened = openssl(
            &out,
            &["pkcs12", "-in", p12, "-passin", password, "-nodes", "-info"],
        );
        let text = String::from_utf8(opened.stdout).unwrap();
        let info = String::from_utf8(opened.stderr).unwrap();
        assert!(opened.status.success(), "{kind:?}: {info}");
        let leaf = std::fs::read_to_string(out.join("operator one.pem")).unwrap();
        assert!(text.contains(pem_block(&leaf, "CERTIFICATE")), "{text}");
        assert!(
            text.contains(pem_block(&ca.certificate_pem(), "CERTIFICATE")),
            "{text}"
        );
        for needle in [
            "MAC: sha256",
            "PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC",
            "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC",
            "PRF hmacWithSHA256",
        ] {
            assert!(info.contains(needle), "{kind:?}: no {needle:?} in {info}");
        }
        for legacy in ["RC2", "3DES", "DES-EDE", "pbeWithSHA1"] {
            assert!(!info.contains(legacy), "{kind:?}: {legacy} in {info}");
        }
        std::fs::write(out.join("from-p12.key"), pem_block(&text, "PRIVATE KEY")).unwrap();
        let cert_public = openssl_ok(
            &out,
            &["x509", "-in", "operator one.pem", "-noout", "-pubkey"],
        );
        for key in ["from-p12.key", "operator one.key.pem"] {
            let public = openssl_ok(&out, &["pkey", "-in", key, "-pubout"]);
            assert_eq!(public, cert_public, "{kind:?}: {key}");
        }
        std::fs::write(out.join("wrong-password"), "not the password\n").unwrap();
        let wrong = openssl(
            &out,
            &[
                "pkcs12",
                "-in",
                p12,
                "-passin",
                "file:wrong-password",
                "-nodes",
            ],
        );
        assert!(
            !wrong.status.success(),
            "{kind:?}: a wrong password opened it"
        );
        assert!(!String::from_utf8_lossy(&wrong.stdout).contains("PRIVATE KEY"));

        nss_imports(&out, p12, "operator one.p12-password");

        // A client certificate of another station's CA, even one that took
        // this CA's very name, does not verify; ClientIdentity alone would
        // read it, which is why the service checks the chain first.
        foreign_client(tmp.path(), "/O=flashgate station/CN=line 4 station CA");
        openssl_ok(
            tmp.path(),
            &["verify", "-CAfile", "other-ca.pem", "mallory.pem"],
        );
        std::fs::copy(
            out.join("station-ca.pem"),
            tmp.path().join("station-ca.pem"),
        )
        .unwrap();
        let refused = openssl_fails(
            tmp.path(),
            &[
                "verify",
                "-purpose",
                "sslclient",
                "-CAfile",
                "station-ca.pem",
                "mallory.pem",
            ],
        );
        assert!(refused.contains("mallory.pem"), "{refused}");

        // What issue_client refuses.
        for (name, days) in [("", 1), ("a,b", 1), ("a/b", 1), ("tab\there", 1), (" x", 1)] {
            let e = ca.issue_client(Role::Operator, name, days).unwrap_err();
            assert!(matches!(e, StationCaError::BadName { .. }), "{name:?}: {e}");
        }
        let long = "x".repeat(65);
        assert!(matches!(
            ca.issue_client(Role::Operator, &long, 1),
            Err(StationCaError::BadName { .. })
        ));
        ca.issue_client(Role::Operator, &"x".repeat(64), 1).unwrap();
        for days in [0, 20_000] {
            let e = ca.issue_client(Role::Operator, "x", days).unwrap_err();
            assert!(matches!(e, StationCaError::BadDays { .. }), "{days}: {e}");
        }

        // Never overwrites: the same name again is refused and changes
        // nothing; another name in the same directory shares station-ca.pem;
        // another CA's station-ca.pem there is refused too.
        let before = std::fs::read(out.join("operator one.p12")).unwrap();
        let again = ca.issue_client(Role::Operator, "operator one", 30).unwrap();
        let e = again.write(&ca, &out, "operator one").unwrap_err();
        assert!(
            matches!(&e, StationCaError::FileExists { path } if path.ends_with("operator one.pem")),
            "{e}"
        );
        assert!(e.to_string().contains("never overwritten"), "{e}");
        assert_eq!(std::fs::read(out.join("operator one.p12")).unwrap(), before);
        again.write(&ca, &out, "operator two").unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::copy(
            tmp.path().join("other-ca.pem"),
            elsewhere.join("station-ca.pem"),
        )
        .unwrap();
        let e = again.write(&ca, &elsewhere, "operator one").unwrap_err();
        assert!(
            matches!(&e, StationCaError::FileExists { path } if path.ends_with("station-ca.pem")),
            "{e}"
        );
        assert!(!elsewhere.join("operator one.pem").exists());
    }
}

/// NSS (what Chromium and Firefox import with) takes the file, where its
/// tools are installed.
fn nss_imports(dir: &Path, p12: &str, password_file: &str) {
    if Command::new("pk12util").arg("-h").output().is_err() {
        eprintln!("SKIP: NSS's pk12util is not installed (Debian: libnss3-tools); the PKCS#12 import into NSS is not checked");
        return;
    }
    let db = dir.join("nssdb");
    std::fs::create_dir(&db).unwrap();
    let db_arg = format!("sql:{}", db.display());
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run("certutil", &["-N", "-d", &db_arg, "--empty-password"]);
    run("pk12util", &["-i", p12, "-d", &db_arg, "-w", password_file]);
    let keys = run("certutil", &["-K", "-d", &db_arg]);
    assert!(keys.contains("OU=operator, CN=operator one"), "{keys}");
}

/// A self-signed certificate (DER) with `subject`, made by OpenSSL.
fn openssl_certificate(dir: &Path, subject: &str) -> Vec<u8> {
    let out = dir.join("made.der");
    let _ = std::fs::remove_file(&out);
    openssl_ok(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "made.key",
            "-days",
            "1",
            "-subj",
            subject,
            "-outform",
            "DER",
            "-out",
            "made.der",
        ],
    );
    std::fs::read(out).unwrap()
}

#[test]
fn the_role_is_read_from_the_one_ou_and_hostile_subjects_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let id = ClientIdentity::from_der(&openssl_certificate(
        dir,
        "/O=flashgate station/OU=auditor/CN=eve",
    ))
    .unwrap();
    assert_eq!(id.role, Role::Auditor);
    assert_eq!(id.common_name, "eve");
    assert_eq!(id.subject, "CN=eve,OU=auditor,O=flashgate station");

    let refused = |subject: &str| {
        let e = ClientIdentity::from_der(&openssl_certificate(dir, subject)).unwrap_err();
        assert!(e.is_hostile_input(), "{subject}: {e}");
        e
    };
    let e = refused("/O=flashgate station/CN=eve");
    assert!(matches!(e, StationCaError::NoRole), "{e}");
    assert!(e.to_string().contains("no OU"), "{e}");
    let e = refused("/O=flashgate station/OU=operator/OU=auditor/CN=eve");
    assert!(matches!(e, StationCaError::TwoRoles { count: 2 }), "{e}");
    for word in ["admin", "Operator", "operator "] {
        let e = refused(&format!("/O=flashgate station/OU={word}/CN=eve"));
        assert!(
            matches!(e, StationCaError::UnknownRole { .. }),
            "{word}: {e}"
        );
        assert!(
            e.to_string()
                .contains("operator, supervisor, auditor or metrics"),
            "{e}"
        );
    }
    let e = refused("/O=flashgate station/OU=operator");
    assert!(matches!(e, StationCaError::NoCommonName), "{e}");
    let e = refused("/OU=operator/CN=eve/CN=mallory");
    assert!(matches!(e, StationCaError::CommonNames { count: 2 }), "{e}");

    let good = openssl_certificate(dir, "/OU=metrics/CN=prometheus");
    assert_eq!(ClientIdentity::from_der(&good).unwrap().role, Role::Metrics);
    let mut trailing = good.clone();
    trailing.push(0);
    for bytes in [
        &b"not a certificate"[..],
        &trailing,
        &good[..good.len() - 1],
        &[],
    ] {
        let e = ClientIdentity::from_der(bytes).unwrap_err();
        assert!(matches!(e, StationCaError::NotACertificate { .. }), "{e}");
        assert!(e.is_hostile_input());
    }

    // The words themselves.
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        assert_eq!(role.to_string(), role.as_str());
        assert_eq!(
            serde_json::to_string(&role).unwrap(),
            format!("\"{}\"", role.as_str())
        );
    }
    for word in ["", "Operator", "admin", "operators"] {
        let e = word.parse::<Role>().unwrap_err();
        assert!(matches!(e, StationCaError::NotARole { .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with("use one of operator, supervisor, auditor, metrics"),
            "{e}"
        );
    }
    // Fingerprints as people give them.
    let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let colons = hex64
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    for text in [
        hex64.to_owned(),
        format!("sha256:{hex64}"),
        colons.clone(),
        format!("SHA256 Fingerprint={colons}"),
    ] {
        assert_eq!(
            hex::encode(parse_fingerprint(&text).unwrap()),
            hex64,
            "{text}"
        );
    }
    for text in ["", "abc", &hex64[..62], &format!("{hex64}00"), "zz"] {
        let e = parse_fingerprint(text).unwrap_err();
        assert!(matches!(e, StationCaError::NotAFingerprint { .. }), "{e}");
    }
}

#[test]
fn server_certificates_verify_for_tls_servers_and_name_every_address() {
    for kind in common::both() {
        let guard = in_process(kind);
        let station = station(&guard.dir);
        let ca = ca_of(&station);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let key = p256::SecretKey::from_slice(&[0x2a; 32]).unwrap();
        let public = flashgate::cose::sec1_uncompressed(&key.public_key());
        let names = vec![
            "station.local".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let der = ca.issue_server(&names, &public, 90).unwrap();
        std::fs::write(
            dir.join("server.pem"),
            flashgate::x509::der_to_pem(&der, "CERTIFICATE"),
        )
        .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.certificate_pem()).unwrap();
        openssl_ok(
            dir,
            &[
                "verify",
                "-purpose",
                "sslserver",
                "-CAfile",
                "ca.pem",
                "server.pem",
            ],
        );
        openssl_ok(
            dir,
            &[
                "verify",
                "-verify_ip",
                "127.0.0.1",
                "-CAfile",
                "ca.pem",
                "server.pem",
            ],
        );
        openssl_ok(
            dir,
            &[
                "verify",
                "-verify_hostname",
                "station.local",
                "-CAfile",
                "ca.pem",
                "server.pem",
            ],
        );
        openssl_fails(
            dir,
            &[
                "verify",
                "-verify_hostname",
                "other.local",
                "-CAfile",
                "ca.pem",
                "server.pem",
            ],
        );
        openssl_fails(
            dir,
            &[
                "verify",
                "-purpose",
                "sslclient",
                "-CAfile",
                "ca.pem",
                "server.pem",
            ],
        );
        let san = openssl_ok(
            dir,
            &[
                "x509",
                "-in",
                "server.pem",
                "-noout",
                "-ext",
                "subjectAltName",
            ],
        );
        for needle in [
            "DNS:station.local",
            "IP Address:127.0.0.1",
            "IP Address:0:0:0:0:0:0:0:1",
        ] {
            assert!(san.contains(needle), "{kind:?}: {needle} in {san}");
        }
        let text = openssl_ok(dir, &["x509", "-in", "server.pem", "-noout", "-text"]);
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        assert!(!text.contains("TLS Web Client Authentication"), "{text}");
        // A server certificate names no role: it cannot pose as a client.
        assert!(matches!(
            ClientIdentity::from_der(&der),
            Err(StationCaError::NoRole)
        ));

        assert!(matches!(
            ca.issue_server(&[], &public, 90),
            Err(StationCaError::NoServerName)
        ));
        for bad in [
            "",
            "bad name",
            "-x.local",
            "x..local",
            "ünicode.local",
            "a_b.local",
        ] {
            let e = ca.issue_server(&[bad.to_owned()], &public, 90).unwrap_err();
            assert!(
                matches!(e, StationCaError::BadServerName { .. }),
                "{bad:?}: {e}"
            );
        }
        let mut compressed = public;
        compressed[0] = 0x02;
        for key in [[0u8; 65], compressed] {
            assert!(matches!(
                ca.issue_server(&names, &key, 90),
                Err(StationCaError::BadPublicKey)
            ));
        }
        assert!(matches!(
            ca.issue_server(&names, &public, 0),
            Err(StationCaError::BadDays { .. })
        ));
    }
}

#[test]
fn a_revocation_is_added_once_and_the_deny_list_reloads() {
    for kind in common::both() {
        let guard = in_process(kind);
        let station = station(&guard.dir);
        let ca = ca_of(&station);
        let path = revoked_path(&guard.dir.join("state"));
        assert!(path.ends_with("state/station/revoked"), "{path:?}");
        let _ = std::fs::remove_file(&path);
        // A missing file is an empty list.
        assert!(DenyList::load(&path).unwrap().is_empty());

        let first = ca.issue_client(Role::Operator, "lost laptop", 1).unwrap();
        let second = ca.issue_client(Role::Auditor, "left", 1).unwrap();
        assert!(station
            .revoke_client(first.fingerprint, "lost laptop\nsecond line")
            .unwrap());
        assert!(!station.revoke_client(first.fingerprint, "again").unwrap());
        let list = DenyList::load(&path).unwrap();
        assert!(list.contains(&first.fingerprint));
        assert!(!list.contains(&second.fingerprint));
        assert_eq!(list.len(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        let hex_first = hex::encode(first.fingerprint);
        assert_eq!(text.matches(&hex_first).count(), 1, "{text}");
        assert!(text.contains(": lost laptop second line\n"), "{text}");
        assert!(!text.contains("again"), "{text}");
        assert!(text.starts_with("# flashgate station deny-list"), "{text}");

        // The list as a service reloads it: a second revocation is seen by
        // the next load, and every earlier one stays.
        assert!(station.revoke_client(second.fingerprint, "").unwrap());
        let list = DenyList::load(&path).unwrap();
        assert!(list.contains(&first.fingerprint) && list.contains(&second.fingerprint));
        assert_eq!(list.len(), 2);
        // No temporary file stays beside it.
        let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.iter().any(|n| n == "revoked.lock"), "{names:?}");

        // Revoking needs no writer lock (a running service holds it): a
        // station opened to read, while another holds the lock, revokes.
        let reader = Station::open(config(&guard.dir), Access::Read).unwrap();
        assert!(reader
            .revoke_client([9u8; 32], "while a writer runs")
            .unwrap());
        assert!(DenyList::load(&path).unwrap().contains(&[9u8; 32]));
        // It may read the CA and issue, since that changes no state.
        reader.station_ca().unwrap();
        drop(reader);

        // A list that does not parse is not extended, and stays as it was.
        let broken = format!("{text}not a fingerprint\n");
        std::fs::write(&path, &broken).unwrap();
        let e = station.revoke_client([9u8; 32], "").unwrap_err();
        assert!(
            matches!(&e, StationError::StationCa(StationCaError::DenyList { .. })),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
        std::fs::remove_file(&path).unwrap();
    }

    // The format, byte for byte: blanks, comments (indented too), spaces,
    // tabs and CR around a fingerprint are ignored; anything else is refused
    // with its line number.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("revoked");
    let a = "a".repeat(64);
    let b = "0123456789abcdef".repeat(4);
    std::fs::write(
        &path,
        format!("# list\n\n  {a}  \r\n\t# indented\n\t{b}\n{a}\n# end"),
    )
    .unwrap();
    let list = DenyList::load(&path).unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.contains(&[0xaa; 32]));
    for (content, line, why) in [
        (format!("# ok\n{a}\nnot-hex\n"), 3, "not 64 hex digits"),
        (format!("{}\n", a.to_uppercase()), 1, "not lowercase hex"),
        (format!("\n\n{}\n", &a[..63]), 3, "not 64 hex digits"),
        (format!("{a} # lost laptop\n"), 1, "not 64 hex digits"),
        (format!("{}g\n", &a[..63]), 1, "not lowercase hex"),
        (format!("sha256:{a}\n"), 1, "not 64 hex digits"),
    ] {
        std::fs::write(&path, &content).unwrap();
        let e = DenyList::load(&path).unwrap_err();
        assert!(
            matches!(&e, StationCaError::DenyList { line: l, .. } if *l == line),
            "{content:?}: {e}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&format!("line {line}: it is {why}")),
            "{text}"
        );
    }
    std::fs::write(&path, b"# ok\n\xff\xfe\n").unwrap();
    let e = DenyList::load(&path).unwrap_err();
    assert!(e.to_string().contains("line 2: it is not UTF-8"), "{e}");
}

#[test]
fn the_command_line_makes_the_ca_issues_refuses_to_overwrite_and_revokes() {
    for kind in common::both() {
        let lab = Lab::new(kind);
        lab.enroll();
        let e = lab.fails(&[
            "appliance",
            "issue-cert",
            "--role",
            "operator",
            "--name",
            "alice",
            "--out",
            "clients",
        ]);
        assert!(
            e.contains("run flashgate appliance ca init"),
            "{kind:?}: {e}"
        );

        let out = lab.ok(&["appliance", "ca", "init"]);
        let show = lab.ok(&["appliance", "show"]);
        let appliance_id = show
            .lines()
            .find_map(|l| l.strip_prefix("appliance:"))
            .unwrap()
            .trim()
            .to_owned();
        assert!(
            out.contains(&format!(
                "station CA:   CN={appliance_id} station CA,O=flashgate station\n"
            )),
            "{out}"
        );
        assert!(
            out.contains("certificate:  state/station/ca.pem\n"),
            "{out}"
        );
        let e = lab.fails(&["appliance", "ca", "init", "--name", "again"]);
        assert!(
            e.contains("already has a client-certificate authority"),
            "{e}"
        );
        // `appliance show` lists the key with the log key's attributes.
        let mut lines = show.lines();
        assert!(lines.any(|l| l.starts_with("  flashgate-appliance-log  class=CKO_PRIVATE_KEY")));
        let log_detail = lines.next().unwrap().to_owned();
        let show = lab.ok(&["appliance", "show"]);
        let mut lines = show.lines();
        assert!(
            lines.any(|l| l.starts_with(&format!(
                "  {CA_LABEL}  class=CKO_PRIVATE_KEY sensitive=true extractable=false usage=sign"
            ))),
            "{show}"
        );
        assert_eq!(lines.next().unwrap(), log_detail);

        let issue = [
            "appliance",
            "issue-cert",
            "--role",
            "supervisor",
            "--name",
            "Bob Example",
            "--out",
            "clients",
            "--days",
            "10",
        ];
        let out = lab.ok(&issue);
        let dir = lab.path("clients");
        let cert_pem = std::fs::read_to_string(dir.join("Bob Example.pem")).unwrap();
        let der = flashgate::x509::pem_to_der(&cert_pem, "CERTIFICATE").unwrap();
        let fp = sha256_hex(&der);
        for line in [
            "issued:       CN=Bob Example,OU=supervisor,O=flashgate station".to_owned(),
            format!("fingerprint:  sha256:{fp}"),
            "certificate:  clients/Bob Example.pem".to_owned(),
            "key:          clients/Bob Example.key.pem (PKCS#8, mode 0600)".to_owned(),
            "pkcs12:       clients/Bob Example.p12".to_owned(),
            "the PKCS#12 password is in clients/Bob Example.p12-password".to_owned(),
            "station CA:   clients/station-ca.pem".to_owned(),
        ] {
            assert!(out.contains(&line), "{kind:?}: no {line:?} in {out}");
        }
        let password = std::fs::read_to_string(dir.join("Bob Example.p12-password")).unwrap();
        assert_eq!(password.len(), 33, "{password:?}");
        let key = std::fs::read_to_string(dir.join("Bob Example.key.pem")).unwrap();
        assert!(!out.contains(password.trim()), "the password was printed");
        assert!(
            !out.contains(key.lines().nth(1).unwrap()),
            "the key was printed"
        );
        openssl_ok(
            &lab.path(""),
            &[
                "verify",
                "-purpose",
                "sslclient",
                "-CAfile",
                "state/station/ca.pem",
                "clients/Bob Example.pem",
            ],
        );

        // Never overwrites, and says what to do.
        let before: Vec<Vec<u8>> = ["pem", "key.pem", "p12", "p12-password"]
            .iter()
            .map(|x| std::fs::read(dir.join(format!("Bob Example.{x}"))).unwrap())
            .collect();
        let e = lab.fails(&issue);
        assert!(
            e.contains("Bob Example.pem already exists") && e.contains("never overwritten"),
            "{e}"
        );
        let after: Vec<Vec<u8>> = ["pem", "key.pem", "p12", "p12-password"]
            .iter()
            .map(|x| std::fs::read(dir.join(format!("Bob Example.{x}"))).unwrap())
            .collect();
        assert_eq!(before, after);
        assert!(!e.contains(password.trim()));
        let e = lab.fails(&[
            "appliance",
            "issue-cert",
            "--role",
            "admin",
            "--name",
            "x",
            "--out",
            "clients",
        ]);
        assert!(e.contains("operator, supervisor, auditor, metrics"), "{e}");
        let e = lab.fails(&[
            "appliance",
            "issue-cert",
            "--role",
            "metrics",
            "--name",
            "x",
            "--out",
            "clients",
            "--days",
            "0",
        ]);
        assert!(e.contains("valid for 0 days"), "{e}");

        // Revoke by file, then by the fingerprint OpenSSL prints: added once.
        let out = lab.ok(&[
            "appliance",
            "revoke-cert",
            "--cert",
            "clients/Bob Example.pem",
        ]);
        assert!(
            out.contains(&format!(
                "revoked:      sha256:{fp}, added to state/station/revoked"
            )),
            "{out}"
        );
        assert!(
            out.contains("`flashgate serve` picks up the deny-list without a restart"),
            "{out}"
        );
        let openssl_fp = openssl_ok(
            &dir,
            &[
                "x509",
                "-in",
                "Bob Example.pem",
                "-noout",
                "-fingerprint",
                "-sha256",
            ],
        );
        let openssl_fp = openssl_fp.trim().split_once('=').unwrap().1.to_owned();
        let out = lab.ok(&["appliance", "revoke-cert", "--fingerprint", &openssl_fp]);
        assert!(
            out.contains("was already in state/station/revoked; nothing changed"),
            "{out}"
        );
        let revoked = std::fs::read_to_string(lab.path("state/station/revoked")).unwrap();
        assert_eq!(revoked.matches(&fp).count(), 1, "{revoked}");
        assert!(revoked.contains(": CN=Bob Example,OU=supervisor,O=flashgate station\n"));
        let list = DenyList::load(&lab.path("state/station/revoked")).unwrap();
        assert!(list.contains(&parse_fingerprint(&fp).unwrap()));
        let e = lab.fails(&["appliance", "revoke-cert", "--fingerprint", "abc"]);
        assert!(e.contains("is not a certificate fingerprint"), "{e}");
        let e = lab.fails(&[
            "appliance",
            "revoke-cert",
            "--cert",
            "clients/Bob Example.key.pem",
        ]);
        assert!(e.contains("holds no certificate"), "{e}");
        assert!(!e.contains(key.lines().nth(1).unwrap()), "{e}");
        lab.fails(&["appliance", "revoke-cert"]);
    }
}

#[test]
fn no_secret_reaches_debug_output_or_error_text() {
    let guard = in_process(Kind::SoftHsm);
    let station = station(&guard.dir);
    let ca = ca_of(&station);
    let tmp = tempfile::tempdir().unwrap();
    let issued = ca.issue_client(Role::Operator, "secretive", 5).unwrap();
    let written = issued.write(&ca, tmp.path(), "secretive").unwrap();
    let password = std::fs::read_to_string(&written.password).unwrap();
    let password = password.trim();
    assert_eq!(password.len(), 32);
    let key_pem = std::fs::read_to_string(&written.key).unwrap();
    let key_der = issued.key_pkcs8_der.to_vec();

    let again = issued.write(&ca, tmp.path(), "secretive").unwrap_err();
    let bad_name = issued.write(&ca, tmp.path(), "a/b").unwrap_err();
    let texts = [
        format!("{issued:?}"),
        format!("{written:?}"),
        format!("{ca:?}"),
        format!("{station:?}"),
        format!("{:?}", DenyList::load(&tmp.path().join("none")).unwrap()),
        again.to_string(),
        format!("{again:?}"),
        bad_name.to_string(),
        format!("{bad_name:?}"),
    ];
    assert!(
        texts[0].contains("CN=secretive,OU=operator"),
        "{}",
        texts[0]
    );
    // The key as PEM lines, as hex and as Rust prints bytes; the password.
    let mut secrets: Vec<String> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .filter(|l| l.len() >= 16)
        .map(str::to_owned)
        .collect();
    secrets.push(hex::encode(&key_der[key_der.len() - 40..]));
    secrets.push(
        format!("{:?}", &key_der[key_der.len() - 12..])
            .trim_matches(['[', ']'])
            .to_owned(),
    );
    secrets.push(password.to_owned());
    for text in &texts {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{secret:?} in {text}");
        }
    }
    // The private scalar is not in the Debug of the PKCS#8 bytes' holder.
    assert!(!format!("{issued:?}").contains("key_pkcs8_der"));
}

#[test]
fn the_station_ca_types_cross_threads() {
    // The service holds the CA and the deny-list across its tasks.
    fn send_sync<T: Send + Sync>() {}
    send_sync::<StationCa>();
    send_sync::<DenyList>();
    send_sync::<ClientIdentity>();
    send_sync::<flashgate::station_ca::IssuedClient>();
    send_sync::<StationCaError>();
}
