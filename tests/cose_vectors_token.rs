//! The SUIT ECDH-ES + A128KW vector opened inside the Kryoptic token: the
//! published receiver key is imported as a non-extractable derive-only key,
//! then ECDH, HKDF (`CKM_HKDF_DERIVE`), AES-KW unwrap and AES-GCM decrypt all
//! run in the token. Skips with a message where `../shared` is absent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use ciborium::value::Value;
use coset::{CoseEncrypt, Label, TaggedCborSerializable};
use flashgate::cose;
use flashgate::hsm::{EcdhKdf, KeyUse, PinSource, Token, TokenConfig};

const RECEIVER_D: &str = "60FE6DD6D85D5740A5349B6F91267EEAC5BA81B8CB53EE249E4B4EB102C476B3";

fn read_hex(path: &std::path::Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    hex::decode(
        text.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>(),
    )
    .unwrap()
}

#[test]
fn suit_ecdh_es_vector_through_kryoptic() {
    let dir = common::repo().join("../shared/testvectors/cose-suit");
    if !dir.is_dir() {
        eprintln!(
            "SKIP: COSE/SUIT test vectors not found at {}; the token known-answer test did not run",
            dir.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pin = tmp.path().join("pin");
    std::fs::write(&pin, "vector-pin-1234\n").unwrap();
    let (k, v) = common::init_token(
        common::Kind::Kryoptic,
        &tmp.path().join("token"),
        "vectors",
        &pin,
    );
    // This test binary loads the module once, in this one test.
    std::env::set_var(k, v);
    let token = Token::open(&TokenConfig {
        module: common::Kind::Kryoptic.module(),
        label: "vectors".to_owned(),
        pin: PinSource::File(pin),
    })
    .unwrap();

    let enc = CoseEncrypt::from_tagged_slice(&read_hex(
        &dir.join("suit-encryption-info-es-ecdh-aes-gcm.hex"),
    ))
    .unwrap();
    let payload = read_hex(&dir.join("encrypted-payload-es-ecdh-aes-gcm.hex"));
    let outer_protected = enc.protected.original_data.clone().unwrap();
    let iv: [u8; 12] = enc.unprotected.iv.as_slice().try_into().unwrap();
    let r = &enc.recipients[0];
    let recipient_protected = r.protected.original_data.clone().unwrap();
    let eph = r
        .unprotected
        .rest
        .iter()
        .find_map(|(l, val)| (*l == Label::Int(-1)).then_some(val))
        .unwrap();
    let point = cose::ephemeral_point_from_cose_key(eph).unwrap();
    let context = cose::kdf_context(
        -3,
        128,
        &recipient_protected,
        &Value::Bytes(b"SUIT Payload Encryption".to_vec()),
    );

    let d: [u8; 32] = hex::decode(RECEIVER_D).unwrap().try_into().unwrap();
    let key = token.import_p256_derive_key(&d).unwrap();
    let attrs = token.key_attributes(key).unwrap();
    assert!(
        attrs.sensitive && !attrs.extractable && attrs.derive && !attrs.sign,
        "{attrs:?}"
    );

    let kek = token
        .ecdh_kek_sized(key, &point, EcdhKdf::Hkdf { info: &context }, 16)
        .unwrap();
    let wrapped = r.ciphertext.clone().unwrap();
    let cek = token
        .unwrap_aes_kw(kek, &wrapped, KeyUse::AesDecrypt, None)
        .unwrap();
    let aad = cose::enc_structure(&outer_protected, b"");
    let plain = token.aes_gcm_decrypt(cek, &iv, &aad, &payload).unwrap();
    assert_eq!(plain.as_slice(), b"This is a real firmware image.");

    // A flipped bit in the wrapped key fails the unwrap in the token.
    let mut bad = wrapped.clone();
    bad[5] ^= 1;
    assert!(token
        .unwrap_aes_kw(kek, &bad, KeyUse::AesDecrypt, None)
        .is_err());
    // A flipped payload bit fails AES-GCM in the token.
    let mut bad = payload.clone();
    bad[3] ^= 1;
    assert!(token.aes_gcm_decrypt(cek, &iv, &aad, &bad).is_err());
}
