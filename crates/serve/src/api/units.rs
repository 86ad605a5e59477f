//! Unit lookup by serial or UID, from the audit log itself (what the log
//! holds is the answer; nothing per unit is kept in memory).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use flashgate_audit::record::{Record, RecordKind};
use flashgate_audit::RecordFile;
use serde::{Deserialize, Serialize};

use super::blocking;
use crate::app::App;
use crate::error::ApiError;
use crate::unit_index::Key;

/// What to look for: exactly one of `serial` and `uid`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct UnitQuery {
    /// The serial number issued.
    serial: Option<String>,
    /// The device UID, hex.
    uid: Option<String>,
}

/// A unit's record in the audit log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UnitView {
    /// Position of the record in the log.
    seq: u64,
    /// When it was recorded (Unix ms).
    time: u64,
    /// `passed` or `failed`.
    result: &'static str,
    /// The job.
    job: String,
    /// The run.
    run: String,
    /// The quota counter value used.
    counter: u64,
    /// The fixture channel.
    channel: u32,
    /// The device type read.
    device_type: Option<String>,
    /// The UID, hex.
    uid: Option<String>,
    /// The serial issued.
    serial: Option<String>,
    /// SHA-256 of the device certificate, hex.
    cert_sha256: Option<String>,
    /// SHA-256 of the firmware as measured, hex.
    firmware_sha256: Option<String>,
    /// The lock level set (passed units).
    lock_level: Option<String>,
    /// The failing stage (failed units).
    stage: Option<String>,
    /// Why it failed.
    reason: Option<String>,
}

/// The most units one lookup returns (a UID reworked many times).
const MAX_UNITS: usize = 100;

fn view(r: &Record) -> Option<UnitView> {
    match &r.kind {
        RecordKind::UnitPassed(u) => Some(UnitView {
            seq: r.seq,
            time: r.time,
            result: "passed",
            job: hex::encode(u.job_id),
            run: hex::encode(u.run_id),
            counter: u.counter,
            channel: u.channel,
            device_type: Some(u.device_type.clone()),
            uid: Some(hex::encode(&u.uid)),
            serial: Some(u.serial.clone()),
            cert_sha256: Some(hex::encode(u.cert_sha256)),
            firmware_sha256: Some(hex::encode(u.firmware_sha256)),
            lock_level: Some(u.lock_level.clone()),
            stage: None,
            reason: None,
        }),
        RecordKind::UnitFailed(u) => Some(UnitView {
            seq: r.seq,
            time: r.time,
            result: "failed",
            job: hex::encode(u.job_id),
            run: hex::encode(u.run_id),
            counter: u.counter,
            channel: u.channel,
            device_type: u.device_type.clone(),
            uid: u.uid.as_ref().map(hex::encode),
            serial: u.serial.clone(),
            cert_sha256: u.cert_sha256.map(hex::encode),
            firmware_sha256: u.firmware_sha256.map(hex::encode),
            lock_level: None,
            stage: Some(u.stage.clone()),
            reason: Some(u.reason.clone()),
        }),
        _ => None,
    }
}

/// The units recorded with a serial or a UID, oldest first.
#[utoipa::path(get, path = "/api/v1/units", tag = "units", params(UnitQuery),
    responses((status = 200, body = [UnitView]), (status = 400, body = crate::error::ErrorBody)))]
pub(crate) async fn lookup(
    State(app): State<Arc<App>>,
    Query(q): Query<UnitQuery>,
) -> Result<Json<Vec<UnitView>>, ApiError> {
    let (uid, serial) = match (&q.uid, &q.serial) {
        (Some(u), None) => (
            Some(hex::encode(hex::decode(u.trim()).map_err(|_| {
                ApiError::bad_request(
                    "uid must be the device UID in hex, as the audit log shows it",
                )
            })?)),
            None,
        ),
        (None, Some(s)) => (None, Some(s.clone())),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of ?serial=S and ?uid=HEX",
            ))
        }
    };
    // A record of the unit holds the serial's UTF-8 or the UID's bytes as
    // they are (CBOR text and byte strings), so within the stretches the
    // index names, a record without them is passed over before it is
    // decoded.
    let needle: Vec<u8> = match (&uid, &serial) {
        (Some(u), _) => hex::decode(u).unwrap_or_default(),
        (_, Some(s)) => s.as_bytes().to_vec(),
        _ => Vec::new(),
    };
    blocking(move || {
        let unreadable = |e: &dyn std::fmt::Display| {
            ApiError::internal(format!("cannot read the audit log: {e}"))
        };
        let key = match &serial {
            Some(s) => Key::Serial(s),
            None => Key::Uid(&needle),
        };
        let stretches = app
            .units
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .candidates(key)
            .map_err(|e| unreadable(&e))?;
        let finder = memchr::memmem::Finder::new(&needle);
        let path = app.station.appliance().audit_dir().join("audit.log");
        let mut out = Vec::new();
        'stretches: for (start, end) in stretches {
            let mut file = RecordFile::open_at(&path, start).map_err(|e| unreadable(&e))?;
            while file.offset() < end {
                let Some((_, bytes)) = file.next_bytes().map_err(|e| unreadable(&e))? else {
                    break;
                };
                if finder.find(bytes).is_none() {
                    continue;
                }
                let Ok(record) = Record::decode(bytes) else {
                    continue;
                };
                if let Some(v) = view(&record) {
                    let hit = match (&uid, &serial) {
                        (Some(want), _) => v.uid.as_ref() == Some(want),
                        (_, Some(want)) => v.serial.as_ref() == Some(want),
                        _ => false,
                    };
                    if hit {
                        out.push(v);
                        if out.len() == MAX_UNITS {
                            break 'stretches;
                        }
                    }
                }
            }
        }
        Ok(Json(out))
    })
    .await
}
