#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flashgate_target::{ChallengeRequest, ChallengeResponse, FlashRange, Stage, TargetError};
use zeroize::Zeroizing;

use super::*;

fn decode_all(bytes: &[u8]) -> Vec<Result<Message, AgentError>> {
    let mut d = Decoder::new();
    d.feed(bytes);
    let mut out = Vec::new();
    while let Some(f) = d.next_frame() {
        out.push(f.and_then(|f| Message::decode(&f)));
    }
    out
}

fn example_request() -> ChallengeRequest {
    let mut nonce = [0u8; 32];
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = i as u8;
    }
    ChallengeRequest {
        nonce,
        regions: vec![FlashRange::new(0x0800_0000, 256)],
    }
}

fn example_image() -> Vec<u8> {
    (0..256u32).map(|i| i as u8).collect()
}

const EXAMPLE_SCALAR: [u8; 32] = [0x11; 32];
const EXAMPLE_UID: [u8; 12] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB,
];

fn all_messages() -> Vec<Message> {
    vec![
        Message::Hello,
        Message::HelloReply {
            protocol_version: PROTOCOL_VERSION,
            device_type: "sim-secure-mcu".into(),
            uid: EXAMPLE_UID.to_vec(),
        },
        Message::Challenge(ChallengeRequest {
            nonce: [7; 32],
            regions: (0..16)
                .map(|i| FlashRange::new(i * 0x1000, 0x800 + i))
                .collect(),
        }),
        Message::ChallengeReply(ChallengeResponse {
            firmware_digest: [0xAB; 32],
            signature: [0xCD; 64],
        }),
        Message::Error {
            code: ErrorCode::NoKey,
        },
        Message::Error {
            code: ErrorCode::Other(0x42),
        },
        Message::EnterBootloader,
        Message::EnterBootloaderReply,
        Message::Error {
            code: ErrorCode::Refused,
        },
    ]
}

#[test]
fn every_message_round_trips() {
    for m in all_messages() {
        let bytes = m.encode().unwrap();
        assert_eq!(bytes[0], SOF);
        let got = decode_all(&bytes);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().unwrap(), &m);
    }
    // All of them back to back, fed one byte at a time.
    let stream: Vec<u8> = all_messages()
        .iter()
        .flat_map(|m| m.encode().unwrap())
        .collect();
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for b in stream {
        d.feed(&[b]);
        while let Some(f) = d.next_frame() {
            got.push(Message::decode(&f.unwrap()).unwrap());
        }
    }
    assert_eq!(got, all_messages());
    assert_eq!(d.skipped(), 0);
}

#[test]
fn encode_rejects_bad_fields() {
    let too_many = Message::Challenge(ChallengeRequest {
        nonce: [0; 32],
        regions: vec![FlashRange::new(0, 1); 17],
    });
    assert!(matches!(
        too_many.encode(),
        Err(AgentError::FieldLength { max: 16, .. })
    ));
    let none = Message::Challenge(ChallengeRequest {
        nonce: [0; 32],
        regions: vec![],
    });
    assert!(none.encode().is_err());
    let long_uid = Message::HelloReply {
        protocol_version: 1,
        device_type: "x".into(),
        uid: vec![0; 33],
    };
    assert!(long_uid.encode().is_err());
    assert!(matches!(
        encode_frame(1, &[0; MAX_PAYLOAD + 1]),
        Err(AgentError::Oversize { length: 1025 })
    ));
    assert_eq!(encode_frame(1, &[0; MAX_PAYLOAD]).unwrap().len(), MAX_FRAME);
}

#[test]
fn decode_rejects_malformed_payloads() {
    let cases: [(u8, &[u8]); 6] = [
        (kind::HELLO, &[0]),
        (kind::ERROR, &[]),
        (kind::CHALLENGE_REPLY, &[0; 95]),
        (kind::CHALLENGE, &[0; 33]),              // zero regions
        (kind::HELLO_REPLY, &[1, 0, 1, 5]),       // empty device type
        (kind::HELLO_REPLY, &[1, 1, 0x07, 1, 5]), // control character
    ];
    for (k, p) in cases {
        let f = Frame {
            kind: k,
            payload: p.to_vec(),
        };
        assert!(
            matches!(Message::decode(&f), Err(AgentError::Malformed { .. })),
            "{k:02x} {p:?}"
        );
    }
    let f = Frame {
        kind: 0x33,
        payload: vec![],
    };
    assert_eq!(
        Message::decode(&f),
        Err(AgentError::UnknownType { kind: 0x33 })
    );
}

#[test]
fn bad_crc_is_rejected_and_next_frame_found() {
    let mut bad = Message::Hello.encode().unwrap();
    let n = bad.len();
    bad[n - 1] ^= 0x01;
    let good = Message::Error {
        code: ErrorCode::BadRegion,
    }
    .encode()
    .unwrap();
    let mut stream = bad.clone();
    stream.extend_from_slice(&good);
    let got = decode_all(&stream);
    assert!(matches!(got[0], Err(AgentError::BadCrc { .. })));
    assert_eq!(
        got.last().unwrap().as_ref().unwrap(),
        &Message::Error {
            code: ErrorCode::BadRegion
        }
    );
    // A flipped payload bit is caught too.
    let mut bad = Message::ChallengeReply(ChallengeResponse {
        firmware_digest: [1; 32],
        signature: [2; 64],
    })
    .encode()
    .unwrap();
    bad[40] ^= 0x80;
    assert!(matches!(
        decode_all(&bad)[0],
        Err(AgentError::BadCrc { .. })
    ));
}

#[test]
fn resync_after_garbage() {
    let mut stream = vec![0x00, 0xFF, 0x13, 0x37, SOF, 0x01]; // including a truncated false start
    stream.extend(Message::Hello.encode().unwrap());
    stream.extend([0x55; 7]);
    stream.extend(
        Message::Error {
            code: ErrorCode::Internal,
        }
        .encode()
        .unwrap(),
    );
    let got = decode_all(&stream);
    let ok: Vec<_> = got.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        ok,
        vec![
            &Message::Hello,
            &Message::Error {
                code: ErrorCode::Internal
            }
        ]
    );
}

#[test]
fn frame_hidden_inside_a_false_start_is_found() {
    // A false SOF whose "length" swallows the real frame that follows: the decoder waits,
    // sees the CRC fail, drops only the false SOF and finds the real frame inside.
    let real = Message::Hello.encode().unwrap();
    let mut stream = vec![SOF, 0x01, 0x06, 0x00];
    stream.extend(&real);
    stream.extend([0u8; 2]);
    let got = decode_all(&stream);
    assert!(matches!(got[0], Err(AgentError::BadCrc { .. })));
    assert!(got.iter().any(|r| r.as_ref().ok() == Some(&Message::Hello)));
}

#[test]
fn oversize_length_rejected_without_waiting() {
    let mut d = Decoder::new();
    d.feed(&[SOF, 0x02, 0x01, 0x04]); // 0x0401 = 1025
    assert_eq!(
        d.next_frame().unwrap().unwrap_err(),
        AgentError::Oversize { length: 1025 }
    );
    d.feed(&[SOF, 0x02, 0xFF, 0xFF]);
    assert_eq!(
        d.next_frame().unwrap().unwrap_err(),
        AgentError::Oversize { length: 65535 }
    );
    // Nothing was kept for the announced length.
    assert!(d.buffered() < 4);
    d.feed(&Message::Hello.encode().unwrap());
    let mut found = false;
    while let Some(r) = d.next_frame() {
        if let Ok(f) = r {
            found = Message::decode(&f).unwrap() == Message::Hello;
        }
    }
    assert!(found);
}

#[test]
fn sign_and_verify() {
    let req = example_request();
    let image = example_image();
    let pk = public_key(&EXAMPLE_SCALAR).unwrap();
    let expected = firmware_digest_of_image(0x0800_0000, &image, &req.regions).unwrap();
    let reply = answer_challenge(
        &EXAMPLE_SCALAR,
        &EXAMPLE_UID,
        |a, b| {
            let o = (a - 0x0800_0000) as usize;
            b.copy_from_slice(&image[o..o + b.len()]);
            Ok(())
        },
        &req,
    )
    .unwrap();
    assert_eq!(reply.firmware_digest, expected);
    let proof = verify_challenge_reply(&pk, &req.nonce, &EXAMPLE_UID, &expected, &reply).unwrap();
    assert_eq!(proof.uid(), &EXAMPLE_UID[..]);

    // Wrong key.
    let other = public_key(&[0x22; 32]).unwrap();
    assert_eq!(
        verify_challenge_reply(&other, &req.nonce, &EXAMPLE_UID, &expected, &reply),
        Err(AgentError::BadSignature)
    );
    // Wrong nonce or uid.
    assert_eq!(
        verify_challenge_reply(&pk, &[0; 32], &EXAMPLE_UID, &expected, &reply),
        Err(AgentError::BadSignature)
    );
    assert_eq!(
        verify_challenge_reply(&pk, &req.nonce, &EXAMPLE_UID[..11], &expected, &reply),
        Err(AgentError::BadSignature)
    );
    // The appliance expected another image.
    let mut other_image = image.clone();
    other_image[3] ^= 1;
    let other_digest = firmware_digest_of_image(0x0800_0000, &other_image, &req.regions).unwrap();
    assert!(matches!(
        verify_challenge_reply(&pk, &req.nonce, &EXAMPLE_UID, &other_digest, &reply),
        Err(AgentError::FirmwareDigestMismatch { .. })
    ));
    // A reply whose digest was altered no longer verifies.
    let mut forged = reply.clone();
    forged.firmware_digest = other_digest;
    assert_eq!(
        verify_challenge_reply(&pk, &req.nonce, &EXAMPLE_UID, &other_digest, &forged),
        Err(AgentError::BadSignature)
    );
    // A corrupted signature.
    let mut bad = reply.clone();
    bad.signature[63] ^= 1;
    assert_eq!(
        verify_challenge_reply(&pk, &req.nonce, &EXAMPLE_UID, &expected, &bad),
        Err(AgentError::BadSignature)
    );
    // Compressed key works too; garbage key does not.
    let mut compressed = [0u8; 33];
    compressed[0] = 0x02 | (pk[64] & 1);
    compressed[1..].copy_from_slice(&pk[1..33]);
    let _ =
        verify_challenge_reply(&compressed, &req.nonce, &EXAMPLE_UID, &expected, &reply).unwrap();
    assert_eq!(
        verify_challenge_reply(&[4; 65], &req.nonce, &EXAMPLE_UID, &expected, &reply),
        Err(AgentError::BadPublicKey)
    );
}

#[test]
fn blank_or_invalid_scalar_is_no_key() {
    let req = example_request();
    let image = example_image();
    let n_order: [u8; 32] =
        hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
            .unwrap()
            .try_into()
            .unwrap();
    for scalar in [[0xFF; 32], [0x00; 32], n_order] {
        let r = answer_challenge(
            &scalar,
            &EXAMPLE_UID,
            |a, b| {
                let o = (a - 0x0800_0000) as usize;
                b.copy_from_slice(&image[o..o + b.len()]);
                Ok(())
            },
            &req,
        );
        assert_eq!(r, Err(AgentError::InvalidKey));
        assert_eq!(AgentError::InvalidKey.code(), ErrorCode::NoKey);
        assert!(!is_valid_scalar(&scalar));
    }
}

#[test]
fn region_outside_image() {
    let image = example_image();
    let e = firmware_digest_of_image(0x0800_0000, &image, &[FlashRange::new(0x0800_0080, 0x81)]);
    assert!(matches!(e, Err(AgentError::RegionOutside { .. })));
    let e = firmware_digest_of_image(0x0800_0000, &image, &[FlashRange::new(0x0700_0000, 1)]);
    assert!(matches!(e, Err(AgentError::RegionOutside { .. })));
    let e = firmware_digest_of_image(0, &image, &[FlashRange::new(u32::MAX, 2)]);
    assert!(matches!(e, Err(AgentError::RegionOutside { .. })));
    // Digest of several regions is the digest of their concatenation.
    let regions = [
        FlashRange::new(0x0800_0010, 0x10),
        FlashRange::new(0x0800_0000, 0x10),
    ];
    let d = firmware_digest_of_image(0x0800_0000, &image, &regions).unwrap();
    let mut cat = image[0x10..0x20].to_vec();
    cat.extend_from_slice(&image[..0x10]);
    use sha2::{Digest, Sha256};
    assert_eq!(d.as_slice(), Sha256::digest(&cat).as_slice());
}

struct Device {
    scalar: [u8; 32],
    image: Vec<u8>,
}

impl AgentDevice for Device {
    fn device_type(&self) -> &str {
        "sim-secure-mcu"
    }
    fn uid(&self) -> &[u8] {
        &EXAMPLE_UID
    }
    fn identity_scalar(&mut self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.scalar)
    }
    fn read_flash(&mut self, address: u32, buf: &mut [u8]) -> Result<(), AgentError> {
        let o = address
            .checked_sub(0x0800_0000)
            .ok_or(AgentError::RegionOutside {
                address,
                length: buf.len() as u32,
            })? as usize;
        let src = self
            .image
            .get(o..o + buf.len())
            .ok_or(AgentError::RegionOutside {
                address,
                length: buf.len() as u32,
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[test]
fn endpoint_answers_each_frame() {
    let mut dev = Device {
        scalar: EXAMPLE_SCALAR,
        image: example_image(),
    };
    let mut ep = AgentEndpoint::new();
    let req = example_request();
    let mut input = Message::Hello.encode().unwrap();
    input.extend(Message::Challenge(req.clone()).encode().unwrap());
    let out = ep.receive(&mut dev, &input);
    let got: Vec<Message> = decode_all(&out).into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(got.len(), 2);
    let (t, uid) = got[0].clone().into_hello_reply().unwrap();
    assert_eq!(
        (t.as_str(), uid.as_slice()),
        ("sim-secure-mcu", &EXAMPLE_UID[..])
    );
    let reply = got[1].clone().into_challenge_reply().unwrap();
    let pk = public_key(&EXAMPLE_SCALAR).unwrap();
    let expected = firmware_digest_of_image(0x0800_0000, &example_image(), &req.regions).unwrap();
    let proof = verify_challenge_reply(&pk, &req.nonce, &EXAMPLE_UID, &expected, &reply).unwrap();
    assert_eq!(proof.uid(), &EXAMPLE_UID[..]);

    // Blank key → NoKey; region outside flash → BadRegion; garbage frame → BadFrame;
    // a reply type sent to the device → UnknownType.
    dev.scalar = [0xFF; 32];
    let out = ep.receive(&mut dev, &Message::Challenge(req.clone()).encode().unwrap());
    assert_eq!(
        Message::decode(&decoder_one(&out))
            .unwrap()
            .into_challenge_reply(),
        Err(AgentError::Device {
            code: ErrorCode::NoKey
        })
    );
    dev.scalar = EXAMPLE_SCALAR;
    let far = ChallengeRequest {
        nonce: [0; 32],
        regions: vec![FlashRange::new(0x0800_0000, 0x1000)],
    };
    let out = ep.receive(&mut dev, &Message::Challenge(far).encode().unwrap());
    assert_eq!(
        Message::decode(&decoder_one(&out)).unwrap(),
        Message::Error {
            code: ErrorCode::BadRegion
        }
    );
    let mut bad = Message::Hello.encode().unwrap();
    bad[4] ^= 0xFF;
    let out = ep.receive(&mut dev, &bad);
    assert_eq!(
        Message::decode(&decoder_one(&out)).unwrap(),
        Message::Error {
            code: ErrorCode::BadFrame
        }
    );
    let out = ep.receive(
        &mut dev,
        &Message::Error {
            code: ErrorCode::Internal,
        }
        .encode()
        .unwrap(),
    );
    assert_eq!(
        Message::decode(&decoder_one(&out)).unwrap(),
        Message::Error {
            code: ErrorCode::UnknownType
        }
    );
}

/// A firmware that offers the reset into its bootloader.
struct Rebooting {
    inner: Device,
    armed: bool,
}

impl AgentDevice for Rebooting {
    fn device_type(&self) -> &str {
        self.inner.device_type()
    }
    fn uid(&self) -> &[u8] {
        self.inner.uid()
    }
    fn identity_scalar(&mut self) -> Zeroizing<[u8; 32]> {
        self.inner.identity_scalar()
    }
    fn read_flash(&mut self, address: u32, buf: &mut [u8]) -> Result<(), AgentError> {
        self.inner.read_flash(address, buf)
    }
    fn enter_bootloader(&mut self) -> bool {
        self.armed = true;
        true
    }
}

#[test]
fn enter_bootloader_is_answered_or_refused() {
    let request = Message::EnterBootloader.encode().unwrap();
    // A firmware that does not offer it refuses with its own code.
    let mut plain = Device {
        scalar: EXAMPLE_SCALAR,
        image: example_image(),
    };
    let out = AgentEndpoint::new().receive(&mut plain, &request);
    assert_eq!(hex::encode(&out), ENTER_BOOTLOADER_REFUSED_FRAME);
    let refused = Message::decode(&decoder_one(&out))
        .unwrap()
        .into_enter_bootloader_reply();
    assert_eq!(
        refused,
        Err(AgentError::Device {
            code: ErrorCode::Refused
        })
    );
    assert!(refused.unwrap_err().to_string().contains("reset=lines"));
    // One that does arms the reset and replies first.
    let mut dev = Rebooting {
        inner: plain,
        armed: false,
    };
    let out = AgentEndpoint::new().receive(&mut dev, &request);
    assert!(dev.armed);
    assert_eq!(hex::encode(&out), ENTER_BOOTLOADER_REPLY_FRAME);
    Message::decode(&decoder_one(&out))
        .unwrap()
        .into_enter_bootloader_reply()
        .unwrap();
    // A payload is malformed; the reply type is not a request.
    let mut long = vec![SOF, 0x03, 0x01, 0x00, 0x00];
    let crc = frame_crc(&long[1..]);
    long.extend_from_slice(&crc.to_le_bytes());
    let out = AgentEndpoint::new().receive(&mut dev, &long);
    assert_eq!(
        Message::decode(&decoder_one(&out)).unwrap(),
        Message::Error {
            code: ErrorCode::Malformed
        }
    );
    let out =
        AgentEndpoint::new().receive(&mut dev, &Message::EnterBootloaderReply.encode().unwrap());
    assert_eq!(
        Message::decode(&decoder_one(&out)).unwrap(),
        Message::Error {
            code: ErrorCode::UnknownType
        }
    );
}

fn decoder_one(bytes: &[u8]) -> Frame {
    let mut d = Decoder::new();
    d.feed(bytes);
    let f = d.next_frame().unwrap().unwrap();
    assert!(d.next_frame().is_none());
    f
}

#[test]
fn errors_convert_to_target_errors() {
    let e = AgentError::Device {
        code: ErrorCode::NoKey,
    }
    .at_stage(Stage::Challenge);
    match &e {
        TargetError::Agent {
            stage,
            code,
            detail,
        } => {
            assert_eq!(*stage, Stage::Challenge);
            assert_eq!(*code, Some(0x04));
            assert!(detail.contains("no valid identity key"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.stage(), Some(Stage::Challenge));
    for b in 0..=255u8 {
        assert_eq!(ErrorCode::from_u8(b).to_u8(), b);
    }
}

/// The worked examples in docs/AGENT.md, byte for byte.
#[test]
fn agent_md_worked_examples() {
    assert_eq!(frame_crc(b"123456789"), 0x29B1);
    assert_eq!(hex::encode(Message::Hello.encode().unwrap()), HELLO_FRAME);
    assert_eq!(
        hex::encode(Message::EnterBootloader.encode().unwrap()),
        ENTER_BOOTLOADER_FRAME
    );
    assert_eq!(
        hex::encode(Message::EnterBootloaderReply.encode().unwrap()),
        ENTER_BOOTLOADER_REPLY_FRAME
    );
    assert_eq!(
        hex::encode(
            Message::Error {
                code: ErrorCode::NoKey
            }
            .encode()
            .unwrap()
        ),
        ERROR_FRAME
    );
    let req = example_request();
    assert_eq!(
        hex::encode(Message::Challenge(req.clone()).encode().unwrap()),
        CHALLENGE_FRAME
    );

    let pk = public_key(&EXAMPLE_SCALAR).unwrap();
    assert_eq!(hex::encode(pk), PUBLIC_KEY);
    let digest = firmware_digest_of_image(0x0800_0000, &example_image(), &req.regions).unwrap();
    assert_eq!(hex::encode(digest), FIRMWARE_DIGEST);
    let m = signed_message(&req.nonce, &EXAMPLE_UID, &digest).unwrap();
    assert_eq!(hex::encode(&m), SIGNED_MESSAGE);
    let e = signed_message_hash(&req.nonce, &EXAMPLE_UID, &digest).unwrap();
    assert_eq!(hex::encode(e), SIGNED_HASH);
    let image = example_image();
    let reply = answer_challenge(
        &EXAMPLE_SCALAR,
        &EXAMPLE_UID,
        |a, b| {
            let o = (a - 0x0800_0000) as usize;
            b.copy_from_slice(&image[o..o + b.len()]);
            Ok(())
        },
        &req,
    )
    .unwrap();
    assert_eq!(hex::encode(reply.signature), SIGNATURE);
    assert_eq!(
        hex::encode(Message::ChallengeReply(reply).encode().unwrap()),
        CHALLENGE_REPLY_FRAME
    );
    // The documented signature verifies (a firmware using random k produces another one that
    // verifies just as well).
    let sig: [u8; 64] = hex::decode(SIGNATURE).unwrap().try_into().unwrap();
    let _proof = verify_challenge_reply(
        &pk,
        &req.nonce,
        &EXAMPLE_UID,
        &digest,
        &ChallengeResponse {
            firmware_digest: digest,
            signature: sig,
        },
    )
    .unwrap();
}

const HELLO_FRAME: &str = "a5010000acfb";
const ENTER_BOOTLOADER_FRAME: &str = "a5030000cc95";
const ENTER_BOOTLOADER_REPLY_FRAME: &str = "a583000096ae";
const ENTER_BOOTLOADER_REFUSED_FRAME: &str = "a57f0100078c55";
const ERROR_FRAME: &str = "a57f010004ef65";
const CHALLENGE_FRAME: &str = "a5022900000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f01000000080001000077a4";
const PUBLIC_KEY: &str = "040217e617f0b6443928278f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed194a7debcb97712d2dda3ca85aa8765a56f45fc758599652f2897c65306e5794";
const FIRMWARE_DIGEST: &str = "40aff2e9d2d8922e47afd4648e6967497158785fbd1da870e7110266bf944880";
const SIGNED_MESSAGE: &str = "666c617368676174652d6167656e742d763100000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f0c00112233445566778899aabb40aff2e9d2d8922e47afd4648e6967497158785fbd1da870e7110266bf944880";
const SIGNED_HASH: &str = "1892a4c3dd6e4ddf938fbcdde7bd8b827fe1c30698ad8d8d8d724da5343e4184";
const SIGNATURE: &str = "f99a58b6f952837390633e1eaa07dafbf0d5e0f82eb4dd8c0a78d7c562a08d01dd99a2e3d2e07ffae4cba175262ed90294554fde9f6389f0b569d58c164f90a5";
const CHALLENGE_REPLY_FRAME: &str = "a582600040aff2e9d2d8922e47afd4648e6967497158785fbd1da870e7110266bf944880f99a58b6f952837390633e1eaa07dafbf0d5e0f82eb4dd8c0a78d7c562a08d01dd99a2e3d2e07ffae4cba175262ed90294554fde9f6389f0b569d58c164f90a53ff1";

/// The hex in docs/AGENT.md itself must match what the code produces, so the two cannot drift.
#[test]
fn agent_md_text_matches_code() {
    let doc = include_str!("../../../docs/AGENT.md");
    let frames: Vec<String> = doc
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|block| block.split_whitespace().collect::<String>())
        .filter(|hex| hex.starts_with("a5"))
        .collect();
    assert_eq!(
        frames,
        vec![
            HELLO_FRAME,
            ERROR_FRAME,
            CHALLENGE_FRAME,
            CHALLENGE_REPLY_FRAME,
            ENTER_BOOTLOADER_FRAME,
            ENTER_BOOTLOADER_REPLY_FRAME,
            ENTER_BOOTLOADER_REFUSED_FRAME,
        ]
    );
    let flat: String = doc.split_whitespace().collect();
    for value in [
        &PUBLIC_KEY[2..],
        FIRMWARE_DIGEST,
        SIGNED_HASH,
        &SIGNATURE[..64],
        &SIGNATURE[64..],
        "00112233445566778899aabb",
    ] {
        assert!(flat.contains(value), "{value} missing from AGENT.md");
    }
    let m: String = SIGNED_MESSAGE.to_owned();
    let doc_m: String = flat
        .split("|M(96bytes)|")
        .nth(1)
        .and_then(|rest| rest.split('|').next())
        .unwrap()
        .replace('`', "");
    assert_eq!(doc_m, m);
}
