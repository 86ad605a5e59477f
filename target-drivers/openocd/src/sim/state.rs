//! Saving and loading the chip's non-volatile state (`state=PATH`).
//!
//! JSON: the format tag, the UID, the 16 option bytes as stored (not as loaded), and flash as
//! a sparse map of the 1 KiB pages that are not blank (hex). SRAM, registers and the debug
//! state are volatile and not saved: a restarted simulator is a chip after power-on.
//! Written beside the file and renamed over it, so a reader never sees half a file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::flash::{FLASH_BASE, FLASH_SIZE, PAGE_SIZE};
use super::options::{parse_u64, DEVICE_TYPE};
use super::SimError;

/// Format tag of the state file.
pub const STATE_FORMAT: &str = "flashgate-stm32-jtag-sim/1";

/// What survives a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Saved {
    pub uid: [u8; 12],
    pub options: [u8; 16],
    pub flash: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    part: String,
    uid: String,
    option_bytes: String,
    flash: BTreeMap<String, String>,
}

pub(crate) fn to_json(s: &Saved) -> Result<String, SimError> {
    let mut flash = BTreeMap::new();
    for (i, page) in s.flash.chunks(PAGE_SIZE as usize).enumerate() {
        if page.iter().any(|&b| b != 0xFF) {
            let address = FLASH_BASE + i as u32 * PAGE_SIZE;
            flash.insert(format!("0x{address:08x}"), hex::encode(page));
        }
    }
    let file = StateFile {
        format: STATE_FORMAT.to_owned(),
        part: DEVICE_TYPE.to_owned(),
        uid: hex::encode(s.uid),
        option_bytes: hex::encode(s.options),
        flash,
    };
    serde_json::to_string_pretty(&file).map_err(|e| SimError::State {
        detail: format!("cannot encode the state: {e}"),
    })
}

pub(crate) fn from_json(text: &str) -> Result<Saved, SimError> {
    let bad = |detail: String| SimError::State { detail };
    let f: StateFile = serde_json::from_str(text)
        .map_err(|e| bad(format!("it is not a simulator state file ({e})")))?;
    if f.format != STATE_FORMAT {
        return Err(bad(format!(
            "its format is {:?}, not {STATE_FORMAT:?}",
            f.format
        )));
    }
    if f.part != DEVICE_TYPE {
        return Err(bad(format!("it holds a {}, not a {DEVICE_TYPE}", f.part)));
    }
    let uid = hex::decode(&f.uid)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("its uid is not 12 bytes of hex".to_owned()))?;
    let options = hex::decode(&f.option_bytes)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("its option_bytes are not 16 bytes of hex".to_owned()))?;
    let mut flash = vec![0xFF; FLASH_SIZE as usize];
    for (address, data) in f.flash {
        let a = parse_u64(&address)
            .and_then(|a| u32::try_from(a).ok())
            .ok_or_else(|| bad(format!("flash address {address:?} is not a number")))?;
        let bytes =
            hex::decode(&data).map_err(|e| bad(format!("flash at {address} is not hex ({e})")))?;
        let off = a
            .checked_sub(FLASH_BASE)
            .map(|o| o as usize)
            .filter(|o| o + bytes.len() <= flash.len())
            .ok_or_else(|| bad(format!("flash at {address} lies outside the 128 KiB")))?;
        flash[off..off + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(Saved {
        uid,
        options,
        flash,
    })
}

/// Writes `s` to `path` atomically (a temporary file beside it, synced, then renamed).
pub(crate) fn save(s: &Saved, path: &Path) -> Result<(), SimError> {
    let text = to_json(s)?;
    let mut tmp = PathBuf::from(path);
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    tmp.set_file_name(name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| SimError::State {
        detail: format!("cannot write {} ({e})", path.display()),
    })
}

pub(crate) fn load(path: &Path) -> Result<Saved, SimError> {
    let text = std::fs::read_to_string(path).map_err(|e| SimError::State {
        detail: format!("cannot read {} ({e})", path.display()),
    })?;
    from_json(&text).map_err(|e| match e {
        SimError::State { detail } => SimError::State {
            detail: format!("{}: {detail}", path.display()),
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::super::flash::FACTORY_OPTIONS;
    use super::*;

    #[test]
    fn round_trip_is_sparse_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chip.json");
        let mut flash = vec![0xFF; FLASH_SIZE as usize];
        flash[0x1234] = 0x56;
        flash[FLASH_SIZE as usize - 1] = 0;
        let s = Saved {
            uid: *b"ABCDEFGHIJKL",
            options: FACTORY_OPTIONS,
            flash,
        };
        save(&s, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(STATE_FORMAT));
        assert!(text.contains("\"0x08001000\""));
        assert!(text.contains("\"0x0801fc00\""));
        assert_eq!(text.matches("\"0x080").count(), 2, "only non-blank pages");
        assert!(!dir.path().join("chip.json.tmp").exists());
        assert_eq!(load(&path).unwrap(), s);
    }

    #[test]
    fn bad_files_are_explained() {
        for (text, want) in [
            ("{", "not a simulator state file"),
            (
                r#"{"format":"x","part":"stm32f103-md","uid":"","option_bytes":"","flash":{}}"#,
                "format",
            ),
            (
                r#"{"format":"flashgate-stm32-jtag-sim/1","part":"stm32f4","uid":"","option_bytes":"","flash":{}}"#,
                "not a stm32f103-md",
            ),
            (
                r#"{"format":"flashgate-stm32-jtag-sim/1","part":"stm32f103-md","uid":"00","option_bytes":"","flash":{}}"#,
                "uid",
            ),
        ] {
            let e = from_json(text).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
