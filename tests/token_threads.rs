//! Token objects written while other threads search, on both tokens: the
//! way a station's channels search for their keys while one of them
//! advances a quota counter (a new token data object, the old destroyed).
//! SoftHSM 2.6.1 fails the write with `CKR_GENERAL_ERROR` when a search in
//! another thread reads the new object's file half written; every write
//! here must succeed and the token must end with exactly the last value.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{init_token, Kind, PIN};
use flashgate::hsm::{PinSource, Token, TokenConfig};

/// Counter advances: each is one create and one destroy.
const ADVANCES: u64 = 300;
/// Threads that search meanwhile.
const SEARCHERS: usize = 4;

fn writes_beside_searches(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("user-pin");
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    let (k, v) = init_token(kind, &dir.path().join("token"), "threads", &pin);
    std::env::set_var(k, v);
    let token = Arc::new(
        Token::open(&TokenConfig {
            module: kind.module(),
            label: "threads".into(),
            pin: PinSource::File(pin),
        })
        .unwrap(),
    );
    // Objects the searchers look for, as the channels' keys are.
    for i in 0..8 {
        token.create_data(&format!("key-{i}"), &[i]).unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let searchers: Vec<_> = (0..SEARCHERS)
        .map(|n| {
            let (token, stop) = (token.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut searches = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let found = token.find_by_label(&format!("key-{}", n % 8)).unwrap();
                    assert_eq!(found.len(), 1, "{kind:?}: a key is missing or twice");
                    searches += 1;
                }
                searches
            })
        })
        .collect();

    let label = "fg-count:threads";
    let writer = {
        let token = token.clone();
        std::thread::spawn(move || -> Result<(), String> {
            for value in 1..=ADVANCES {
                let old = token.find_by_label(label).map_err(|e| e.to_string())?;
                token
                    .create_data(label, &value.to_be_bytes())
                    .map_err(|e| format!("advance to {value}: {e}"))?;
                for h in old {
                    token
                        .destroy(h)
                        .map_err(|e| format!("advance to {value}: {e}"))?;
                }
            }
            Ok(())
        })
    };
    let written = writer.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let searches: u64 = searchers.into_iter().map(|t| t.join().unwrap()).sum();
    written.unwrap_or_else(|e| {
        panic!("{kind:?}: a token object write failed beside {searches} searches: {e}")
    });
    assert!(searches > 0, "{kind:?}: the searchers never ran");

    let left = token.find_by_label(label).unwrap();
    assert_eq!(left.len(), 1, "{kind:?}: the counter is not one object");
    assert_eq!(
        token.data_value(left[0]).unwrap(),
        ADVANCES.to_be_bytes(),
        "{kind:?}: the counter does not hold the last value"
    );
}

#[test]
fn softhsm_token_objects_written_beside_searches() {
    writes_beside_searches(Kind::SoftHsm);
}

#[test]
fn kryoptic_token_objects_written_beside_searches() {
    writes_beside_searches(Kind::Kryoptic);
}
