//! Saving and loading a simulated chip's non-volatile state (`--state FILE`).
//!
//! JSON: the part, UID, flash-size register, option bytes, OTP, and flash as a sparse map of
//! 1 KiB chunks that are not blank (hex). SRAM is volatile and not saved.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::part::Part;
use crate::sim::memory::{Memory, ERASED};
use crate::sim::SimError;

/// Format tag of the state file.
pub const STATE_FORMAT: &str = "flashgate-stm32-uart-sim/1";

const CHUNK: usize = 1024;

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    part: String,
    uid: String,
    flash_kib: u16,
    option_bytes: String,
    otp: String,
    flash: BTreeMap<String, String>,
}

pub(crate) fn to_json(mem: &Memory) -> Result<String, SimError> {
    let mut flash = BTreeMap::new();
    for (i, chunk) in mem.flash.chunks(CHUNK).enumerate() {
        if chunk.iter().any(|&b| b != ERASED) {
            let address = mem.part.flash_base + (i * CHUNK) as u32;
            flash.insert(format!("0x{address:08x}"), hex::encode(chunk));
        }
    }
    let s = StateFile {
        format: STATE_FORMAT.to_owned(),
        part: mem.part.device_type.to_owned(),
        uid: hex::encode(mem.uid),
        flash_kib: mem.flash_kib,
        option_bytes: hex::encode(mem.options),
        otp: hex::encode(&mem.otp),
        flash,
    };
    serde_json::to_string_pretty(&s).map_err(|e| SimError::State {
        detail: e.to_string(),
    })
}

pub(crate) fn from_json(text: &str) -> Result<Memory, SimError> {
    let bad = |detail: String| SimError::State { detail };
    let s: StateFile =
        serde_json::from_str(text).map_err(|e| bad(format!("not a simulator state file: {e}")))?;
    if s.format != STATE_FORMAT {
        return Err(bad(format!(
            "format {:?}, expected {STATE_FORMAT:?}",
            s.format
        )));
    }
    let part = Part::lookup(&s.part).ok_or_else(|| bad(format!("unknown part {:?}", s.part)))?;
    let uid: [u8; 12] = hex::decode(&s.uid)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("uid must be 12 bytes of hex".to_owned()))?;
    let mut mem = Memory::new(part, uid);
    mem.flash_kib = s.flash_kib;
    mem.options = hex::decode(&s.option_bytes)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("option_bytes must be 16 bytes of hex".to_owned()))?;
    let otp = hex::decode(&s.otp).map_err(|e| bad(format!("otp: {e}")))?;
    if otp.len() != mem.otp.len() {
        return Err(bad(format!(
            "otp holds {} bytes, the {} has {}",
            otp.len(),
            part.device_type,
            mem.otp.len()
        )));
    }
    mem.otp.copy_from_slice(&otp);
    for (address, data) in s.flash {
        let a = crate::sim::fault::parse_u32(&address)
            .ok_or_else(|| bad(format!("flash address {address:?} is not a number")))?;
        let bytes = hex::decode(&data).map_err(|e| bad(format!("flash at {address}: {e}")))?;
        let off = a
            .checked_sub(part.flash_base)
            .map(|o| o as usize)
            .filter(|o| o + bytes.len() <= mem.flash.len())
            .ok_or_else(|| bad(format!("flash chunk at {address} lies outside flash")))?;
        mem.flash[off..off + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(mem)
}

pub(crate) fn save(mem: &Memory, path: &Path) -> Result<(), SimError> {
    let text = to_json(mem)?;
    // Write beside, then rename, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| SimError::State {
            detail: format!("cannot write {}: {e}", path.display()),
        })
}

pub(crate) fn load(path: &Path) -> Result<Memory, SimError> {
    let text = std::fs::read_to_string(path).map_err(|e| SimError::State {
        detail: format!("cannot read {}: {e}", path.display()),
    })?;
    from_json(&text)
}
