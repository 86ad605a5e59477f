//! Known answers from outside the project: the IETF SUIT firmware-encryption
//! examples (COSE_Encrypt, detached A128GCM payload, one recipient), opened
//! with flashgate's COSE building blocks (ECDH x-coordinate, KDF context,
//! `Enc_structure`) and the same AES-KW and AES-GCM crates the library uses.
//!
//! The vectors live outside the repository (see the shared test-vector
//! README); when they are absent every test here says so and passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes128Gcm;
use aes_kw::KwAes128;
use coset::cbor::value::Value;
use coset::{CoseEncrypt, CoseRecipient, Label, TaggedCborSerializable};
use flashgate::cose;
use sha2::Sha256;

const PLAINTEXT: &[u8] = b"This is a real firmware image.";
/// The receiver's P-256 private scalar for the ECDH-ES vector.
const RECEIVER_D: &str = "60FE6DD6D85D5740A5349B6F91267EEAC5BA81B8CB53EE249E4B4EB102C476B3";
/// Its public point, to check the scalar was read correctly.
const RECEIVER_X: &str = "5886CD61DD875862E5AAA820E7A15274C968A9BC96048DDCACE32F50C3651BA3";
const RECEIVER_Y: &str = "9EED8125E932CD60C0EAD3650D0A485CF726D378D1B016ED4298B2961E258F1B";
/// The `other` field of SuppPubInfo in the SUIT examples (as bytes).
const SUIT_OTHER: &str = "SUIT Payload Encryption";
/// COSE algorithm ids.
const ALG_A128GCM: i64 = 1;
const ALG_A128KW: i64 = -3;
const ALG_ECDH_ES_A128KW: i64 = -29;

fn vector_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testvectors/cose-suit"
    ))
}

/// The vector directory, or `None` (after saying why) when it is absent.
fn vectors() -> Option<PathBuf> {
    let dir = vector_dir();
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: COSE/SUIT test vectors not found at {}; these known-answer tests did not run",
            dir.display()
        );
        None
    }
}

/// Reads a `.hex` file, ignoring whitespace and line breaks.
fn read_hex(dir: &Path, name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("cannot read {name}: {e}"));
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(compact).unwrap_or_else(|e| panic!("{name} is not hex: {e}"))
}

/// One vector, decoded.
struct Vector {
    /// The outer protected header bytes exactly as they appear.
    outer_protected: Vec<u8>,
    iv: [u8; 12],
    recipient: CoseRecipient,
    /// The detached ciphertext (ciphertext || tag).
    payload: Vec<u8>,
}

fn load(dir: &Path, info: &str, payload: &str) -> Vector {
    let bytes = read_hex(dir, info);
    let enc = CoseEncrypt::from_tagged_slice(&bytes).expect("a tagged COSE_Encrypt");
    assert!(enc.ciphertext.is_none(), "the vector's payload is detached");
    assert_eq!(
        enc.protected.header.alg,
        Some(coset::Algorithm::Assigned(coset::iana::Algorithm::A128GCM)),
        "content algorithm"
    );
    let outer_protected = enc
        .protected
        .original_data
        .clone()
        .expect("protected header bytes as parsed");
    assert_eq!(outer_protected, [0xa1, 0x01, ALG_A128GCM as u8]);
    let iv: [u8; 12] = enc
        .unprotected
        .iv
        .as_slice()
        .try_into()
        .expect("12-byte IV");
    let [recipient] = <[CoseRecipient; 1]>::try_from(enc.recipients).expect("one recipient");
    Vector {
        outer_protected,
        iv,
        recipient,
        payload: read_hex(dir, payload),
    }
}

fn wrapped_cek(r: &CoseRecipient) -> Vec<u8> {
    let ct = r
        .ciphertext
        .clone()
        .expect("the recipient carries the wrapped CEK");
    assert_eq!(ct.len(), 24, "a wrapped 16-byte CEK");
    ct
}

fn unwrap_cek(kek: &[u8; 16], wrapped: &[u8]) -> Result<[u8; 16], aes_kw::Error> {
    let mut cek = [0u8; 16];
    KwAes128::new(&(*kek).into()).unwrap_key(wrapped, &mut cek)?;
    Ok(cek)
}

fn decrypt_payload(
    cek: &[u8; 16],
    iv: &[u8; 12],
    outer_protected: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, aes_gcm::aead::Error> {
    let aad = cose::enc_structure(outer_protected, b"");
    Aes128Gcm::new(&(*cek).into()).decrypt(
        iv.into(),
        Payload {
            msg: payload,
            aad: &aad,
        },
    )
}

fn receiver_key() -> p256::SecretKey {
    let d = hex::decode(RECEIVER_D).unwrap();
    let sk = p256::SecretKey::from_slice(&d).expect("a valid P-256 scalar");
    let point = cose::sec1_uncompressed(&sk.public_key());
    assert_eq!(hex::encode_upper(&point[1..33]), RECEIVER_X);
    assert_eq!(hex::encode_upper(&point[33..]), RECEIVER_Y);
    sk
}

/// Everything the ECDH-ES recipient yields before unwrapping: the recipient
/// protected header bytes and Z.
fn ecdh_inputs(v: &Vector) -> (Vec<u8>, [u8; 32]) {
    let r = &v.recipient;
    assert_eq!(
        r.protected.header.alg,
        Some(coset::Algorithm::Assigned(
            coset::iana::Algorithm::ECDH_ES_A128KW
        ))
    );
    let protected = r
        .protected
        .original_data
        .clone()
        .expect("recipient protected header bytes as parsed");
    // {1: -29}: the bytes the KDF context must carry.
    assert_eq!(
        protected,
        [0xa1, 0x01, 0x38, (-1 - ALG_ECDH_ES_A128KW) as u8]
    );
    let eph = r
        .unprotected
        .rest
        .iter()
        .find_map(|(l, val)| (*l == Label::Int(-1)).then_some(val))
        .expect("ephemeral key in unprotected label -1");
    let point = cose::ephemeral_point_from_cose_key(eph).expect("an EC2 P-256 ephemeral key");
    let z = cose::ecdh_x(&receiver_key(), &point).expect("ECDH");
    (protected, *z)
}

/// HKDF-SHA256, no salt, L = 16 (flashgate's own `derive_kek` makes 32-byte KEKs).
fn kek_128(z: &[u8; 32], context: &[u8]) -> [u8; 16] {
    let mut kek = [0u8; 16];
    hkdf::Hkdf::<Sha256>::new(None, z)
        .expand(context, &mut kek)
        .expect("16 bytes is within HKDF's limit");
    kek
}

/// The SUIT examples' `other` field: a CBOR byte string.
fn suit_other() -> Value {
    Value::Bytes(SUIT_OTHER.as_bytes().to_vec())
}

fn suit_context(protected: &[u8], other: &Value) -> Vec<u8> {
    cose::kdf_context(ALG_A128KW, 128, protected, other)
}

#[test]
fn ecdh_es_a128kw_vector_decrypts() {
    let Some(dir) = vectors() else { return };
    let v = load(
        &dir,
        "suit-encryption-info-es-ecdh-aes-gcm.hex",
        "encrypted-payload-es-ecdh-aes-gcm.hex",
    );
    let (protected, z) = ecdh_inputs(&v);
    let wrapped = wrapped_cek(&v.recipient);

    // The README writes the "other" field as "SUIT Payload Encryption",
    // which in CBOR diagnostic notation would be a text string. RFC 9053
    // §5.2 makes SuppPubInfo.other a bstr, and indeed only the byte string
    // gives a KEK that unwraps with integrity; the text string does not.
    let bytes_ctx = suit_context(&protected, &suit_other());
    let text_ctx = suit_context(&protected, &Value::Text(SUIT_OTHER.to_owned()));
    assert!(
        matches!(
            unwrap_cek(&kek_128(&z, &text_ctx), &wrapped),
            Err(aes_kw::Error::IntegrityCheckFailed)
        ),
        "a text-string 'other' must not unwrap"
    );
    let cek = unwrap_cek(&kek_128(&z, &bytes_ctx), &wrapped)
        .expect("the byte-string 'other' gives the KEK that unwraps the CEK");

    // The whole context, byte for byte:
    // [-3, [nil,nil,nil], [nil,nil,nil], [128, h'a101381c', 'SUIT Payload Encryption']]
    let mut expected =
        hex::decode("8422 83f6f6f6 83f6f6f6 83 1880 44a101381c 57".replace(' ', "")).unwrap();
    expected.extend_from_slice(SUIT_OTHER.as_bytes());
    assert_eq!(bytes_ctx, expected);

    let plain = decrypt_payload(&cek, &v.iv, &v.outer_protected, &v.payload)
        .expect("the payload decrypts with the unwrapped CEK");
    assert_eq!(plain, PLAINTEXT);
}

#[test]
fn a128kw_vector_decrypts() {
    let Some(dir) = vectors() else { return };
    let v = load(
        &dir,
        "suit-encryption-info-aes-kw-aes-gcm.hex",
        "encrypted-payload-aes-kw-aes-gcm.hex",
    );
    let r = &v.recipient;
    assert!(r
        .protected
        .original_data
        .as_deref()
        .unwrap_or_default()
        .is_empty());
    assert_eq!(
        r.unprotected.alg,
        Some(coset::Algorithm::Assigned(coset::iana::Algorithm::A128KW))
    );
    assert_eq!(r.unprotected.key_id, b"kid-1");
    let kek = [0x61u8; 16];
    let cek = unwrap_cek(&kek, &wrapped_cek(r)).expect("the CEK unwraps under the shared key");
    let plain = decrypt_payload(&cek, &v.iv, &v.outer_protected, &v.payload)
        .expect("the payload decrypts with the unwrapped CEK");
    assert_eq!(plain, PLAINTEXT);
}

#[test]
fn flipped_bits_fail_integrity() {
    let Some(dir) = vectors() else { return };

    // ECDH-ES vector: a flipped bit anywhere in the wrapped CEK fails the
    // AES-KW integrity check.
    let v = load(
        &dir,
        "suit-encryption-info-es-ecdh-aes-gcm.hex",
        "encrypted-payload-es-ecdh-aes-gcm.hex",
    );
    let (protected, z) = ecdh_inputs(&v);
    let kek = kek_128(&z, &suit_context(&protected, &suit_other()));
    let wrapped = wrapped_cek(&v.recipient);
    for bit in [0, 7, 64, 100, wrapped.len() * 8 - 1] {
        let mut bad = wrapped.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            matches!(
                unwrap_cek(&kek, &bad),
                Err(aes_kw::Error::IntegrityCheckFailed)
            ),
            "bit {bit} of the wrapped CEK"
        );
    }
    let cek = unwrap_cek(&kek, &wrapped).unwrap();

    // A flipped payload bit (ciphertext or tag), a wrong IV or a wrong
    // protected header fails AES-GCM.
    for bit in [0, 13, 239, v.payload.len() * 8 - 1] {
        let mut bad = v.payload.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            decrypt_payload(&cek, &v.iv, &v.outer_protected, &bad).is_err(),
            "bit {bit} of the payload"
        );
    }
    let mut iv = v.iv;
    iv[11] ^= 1;
    assert!(decrypt_payload(&cek, &iv, &v.outer_protected, &v.payload).is_err());
    assert!(decrypt_payload(&cek, &v.iv, &[0xa1, 0x01, 0x02], &v.payload).is_err());

    // A128KW vector: the same with the shared key.
    let v = load(
        &dir,
        "suit-encryption-info-aes-kw-aes-gcm.hex",
        "encrypted-payload-aes-kw-aes-gcm.hex",
    );
    let mut bad = wrapped_cek(&v.recipient);
    bad[5] ^= 0x10;
    assert!(matches!(
        unwrap_cek(&[0x61; 16], &bad),
        Err(aes_kw::Error::IntegrityCheckFailed)
    ));
    assert!(unwrap_cek(&[0x62; 16], &wrapped_cek(&v.recipient)).is_err());
}
