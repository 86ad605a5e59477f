//! Record encoding: round trips, strictness, and agreement with an
//! independent CBOR implementation (ciborium).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use ciborium::value::Value;
use common::*;
use flashgate_audit::record::{UnitAborted, UnitFailed};
use flashgate_audit::{Record, RecordError, RecordKind};

fn all_kinds() -> Vec<RecordKind> {
    vec![
        imported(1000),
        RecordKind::JobRemoved(flashgate_audit::record::JobRemoved { job_id: JOB }),
        run_started(),
        run_stopped(),
        reserved(0, 64),
        passed(3),
        failed(4, "program"),
        match passed(6) {
            RecordKind::UnitPassed(mut p) => {
                p.rework_of = Some(4);
                RecordKind::UnitPassed(p)
            }
            other => other,
        },
        RecordKind::UnitFailed(UnitFailed {
            job_id: JOB,
            run_id: RUN,
            counter: 5,
            channel: 63,
            device_type: Some(DEVICE.to_owned()),
            uid: Some(vec![1, 2, 3]),
            serial: Some("SN-5".to_owned()),
            cert_sha256: Some([9; 32]),
            firmware_sha256: Some([8; 32]),
            stage: "lock".to_owned(),
            reason: "lock bits read back 0xFF".to_owned(),
            timings: Default::default(),
            rework_of: Some(2),
        }),
        RecordKind::UnitAborted(UnitAborted {
            job_id: JOB,
            counter: u64::MAX,
            reason: "crash".to_owned(),
        }),
        unused(7, 1 << 40),
    ]
}

fn records() -> Vec<Record> {
    all_kinds()
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Record {
            seq: i as u64 * 1_000_003,
            time: 1_700_000_000_123,
            prev: [i as u8; 32],
            kind,
        })
        .collect()
}

#[test]
fn every_kind_round_trips() {
    for r in records() {
        let bytes = r.encode();
        let back = Record::decode(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.encode(), bytes);
    }
}

/// ciborium reads our bytes as CBOR, and writing its value back gives the
/// same bytes (ciborium keeps map order and writes shortest heads, so this
/// checks that ours are deterministic and in key order).
#[test]
fn an_independent_cbor_library_agrees() {
    for r in records() {
        let bytes = r.encode();
        let v: Value = ciborium::de::from_reader(bytes.as_slice()).unwrap();
        let Value::Map(entries) = &v else {
            panic!("not a map")
        };
        let keys: Vec<u64> = entries
            .iter()
            .map(|(k, _)| u64::try_from(k.as_integer().unwrap()).unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(keys, sorted);
        assert_eq!(
            entries[3].1.as_text(),
            Some(r.kind.name()),
            "key 3 is the kind"
        );
        let mut again = Vec::new();
        ciborium::ser::into_writer(&v, &mut again).unwrap();
        assert_eq!(again, bytes);
    }
}

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

fn entries(r: &Record) -> Vec<(Value, Value)> {
    let v: Value = ciborium::de::from_reader(r.encode().as_slice()).unwrap();
    match v {
        Value::Map(e) => e,
        _ => unreachable!(),
    }
}

#[test]
fn unknown_and_foreign_keys_are_refused() {
    let r = &records()[0];
    let mut e = entries(r);
    e.push((Value::Integer(99.into()), Value::Integer(1.into())));
    assert!(matches!(
        Record::decode(&cbor(&Value::Map(e))),
        Err(RecordError::UnknownKey { key: 99 })
    ));
    // "counter" (15) does not belong in a job-imported record.
    let mut e = entries(r);
    e.push((Value::Integer(15.into()), Value::Integer(1.into())));
    assert!(matches!(
        Record::decode(&cbor(&Value::Map(e))),
        Err(RecordError::UnexpectedField {
            field: "counter",
            ..
        })
    ));
}

#[test]
fn non_canonical_encodings_are_refused() {
    let r = &records()[5];
    // Keys out of order.
    let mut e = entries(r);
    e.swap(0, 1);
    assert!(Record::decode(&cbor(&Value::Map(e))).is_err());
    // A missing field.
    let mut e = entries(r);
    e.remove(4);
    assert!(matches!(
        Record::decode(&cbor(&Value::Map(e))),
        Err(RecordError::MissingField { .. })
    ));
    // A fixed-size field of the wrong length.
    let mut e = entries(r);
    e[2].1 = Value::Bytes(vec![0; 31]);
    assert!(matches!(
        Record::decode(&cbor(&Value::Map(e))),
        Err(RecordError::WrongLength {
            field: "prev",
            expected: 32,
            found: 31
        })
    ));
    // A non-shortest head for seq (0x18 0x05 instead of 0x05).
    let bytes = r.encode();
    let mut long = vec![bytes[0], 0x00, 0x18, 0x05];
    long.extend_from_slice(&bytes[3..]);
    let mut fixed = r.clone();
    fixed.seq = 5;
    assert_eq!(fixed.encode()[..3], [bytes[0], 0x00, 0x05]);
    assert!(Record::decode(&long).is_err());
    // Trailing bytes.
    let mut t = bytes.clone();
    t.push(0);
    assert!(Record::decode(&t).is_err());
    // Unknown kind.
    let mut e = entries(r);
    e[3].1 = Value::Text("unit-vanished".to_owned());
    assert!(matches!(
        Record::decode(&cbor(&Value::Map(e))),
        Err(RecordError::UnknownKind { .. })
    ));
    // Timings keys not in deterministic order ("program" before "identify"
    // is wrong: equal length, bytewise "identify" < "program").
    let mut e = entries(r);
    let t = e
        .iter_mut()
        .find(|(k, _)| *k == Value::Integer(24.into()))
        .unwrap();
    if let Value::Map(m) = &mut t.1 {
        m.reverse();
    }
    assert!(Record::decode(&cbor(&Value::Map(e))).is_err());
}

#[test]
fn every_prefix_of_a_record_is_refused() {
    let bytes = records()[5].encode();
    for n in 0..bytes.len() {
        assert!(Record::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
}

#[test]
fn rework_of_is_key_26_and_absent_when_not_a_rework() {
    let rec = |kind| Record {
        seq: 9,
        time: 1,
        prev: [0; 32],
        kind,
    };
    let plain = rec(passed(6)).encode();
    let RecordKind::UnitPassed(mut p) = passed(6) else {
        unreachable!()
    };
    p.rework_of = Some(300);
    let rework = rec(RecordKind::UnitPassed(p)).encode();
    // One more map entry, appended last: key 33 (0x18 0x21), uint 300 (0x19 0x01 0x2c).
    assert_eq!(rework.len(), plain.len() + 5);
    assert!(rework.ends_with(&[0x18, 0x21, 0x19, 0x01, 0x2c]));
    assert_eq!(rework[0], plain[0] + 1);
    let back = Record::decode(&rework).unwrap();
    let RecordKind::UnitPassed(p) = back.kind else {
        panic!("kind changed")
    };
    assert_eq!(p.rework_of, Some(300));
    // Not in other kinds: key 33 in a units-reserved record is refused.
    let mut bad = rec(reserved(0, 1)).encode();
    bad[0] += 1;
    bad.extend_from_slice(&[0x18, 0x21, 0x01]);
    assert!(matches!(
        Record::decode(&bad),
        Err(RecordError::UnexpectedField {
            field: "rework_of",
            ..
        })
    ));
}
