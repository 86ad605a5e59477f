//! The chip's state as a file: JSON with hex strings.
//!
//! ```json
//! {
//!   "part": "atmega328p",
//!   "signature": "1e950f",
//!   "lock": "cf",
//!   "fuses": { "low": "62", "high": "d9", "extended": "ff" },
//!   "calibration": "9c",
//!   "flash": { "0x0000": "0c945c00...", "0x0100": "..." },
//!   "eeprom": { "0x0300": "ffff...0123456789abcdef" }
//! }
//! ```
//!
//! `flash` and `eeprom` list only the 256-byte blocks that are not entirely erased (`0xFF`),
//! keyed by their offset; every other byte is `0xFF`. `signature` is informational (it
//! follows from the part) and checked on load.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::part::Part;
use crate::sim::{AvrChip, AvrSimError, ERASED};

/// Size of the blocks `flash` and `eeprom` are listed in.
pub const BLOCK: usize = 256;

/// Fuse bytes, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuseState {
    /// Low fuse.
    pub low: String,
    /// High fuse.
    pub high: String,
    /// Extended fuse.
    pub extended: String,
}

/// Everything persistent about a chip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChipState {
    /// Part name (`atmega328p`) or avrdude id.
    pub part: String,
    /// Device signature, hex.
    pub signature: String,
    /// Lock byte, hex.
    pub lock: String,
    /// Fuses.
    pub fuses: FuseState,
    /// Calibration byte, hex.
    pub calibration: String,
    /// Non-erased flash blocks: offset (`0x0000`) to hex bytes.
    pub flash: BTreeMap<String, String>,
    /// Non-erased EEPROM blocks.
    pub eeprom: BTreeMap<String, String>,
}

impl ChipState {
    /// The state of `chip`.
    pub fn of(chip: &AvrChip) -> Self {
        let part = chip.part();
        let [low, high, extended] = chip.fuses();
        ChipState {
            part: part.name.to_owned(),
            signature: hex::encode(part.signature),
            lock: hex::encode([chip.lock()]),
            fuses: FuseState {
                low: hex::encode([low]),
                high: hex::encode([high]),
                extended: hex::encode([extended]),
            },
            calibration: hex::encode([chip.calibration()]),
            flash: blocks(chip.flash()),
            eeprom: blocks(chip.eeprom()),
        }
    }

    /// A chip in this state.
    pub fn to_chip(&self) -> Result<AvrChip, AvrSimError> {
        let bad = |detail: String| AvrSimError::State { detail };
        let part: &'static Part =
            Part::find(&self.part).ok_or_else(|| bad(format!("unknown part {:?}", self.part)))?;
        if !self.signature.is_empty() && self.signature != hex::encode(part.signature) {
            return Err(bad(format!(
                "signature {} does not belong to {}",
                self.signature, part.name
            )));
        }
        let byte = |what: &str, v: &str| -> Result<u8, AvrSimError> {
            match hex::decode(v.trim()) {
                Ok(b) if b.len() == 1 => Ok(b[0]),
                _ => Err(bad(format!("{what} {v:?} is not one hex byte"))),
            }
        };
        let mut chip = AvrChip::new(part);
        chip.set_lock(byte("lock", &self.lock)?);
        chip.set_fuses([
            byte("low fuse", &self.fuses.low)?,
            byte("high fuse", &self.fuses.high)?,
            byte("extended fuse", &self.fuses.extended)?,
        ]);
        chip.set_calibration(byte("calibration", &self.calibration)?);
        for (what, map, size) in [
            ("flash", &self.flash, part.flash_size),
            ("eeprom", &self.eeprom, part.eeprom_size),
        ] {
            for (at, data) in map {
                let offset = parse_offset(at)
                    .ok_or_else(|| bad(format!("{what} offset {at:?} is not a hex offset")))?;
                let data =
                    hex::decode(data.trim()).map_err(|e| bad(format!("{what} block {at}: {e}")))?;
                if offset as u64 + data.len() as u64 > u64::from(size) {
                    return Err(bad(format!(
                        "{what} block {at}+{} lies outside the {size}-byte {what}",
                        data.len()
                    )));
                }
                if what == "flash" {
                    chip.load_flash(offset, &data);
                } else {
                    chip.load_eeprom(offset, &data);
                }
            }
        }
        Ok(chip)
    }

    /// Reads a state file.
    pub fn load(path: &Path) -> Result<Self, AvrSimError> {
        let text = std::fs::read_to_string(path).map_err(|e| AvrSimError::State {
            detail: format!("cannot read {}: {e}", path.display()),
        })?;
        serde_json::from_str(&text).map_err(|e| AvrSimError::State {
            detail: format!("{}: {e}", path.display()),
        })
    }

    /// Writes a state file (replacing it atomically: written beside it, then renamed).
    pub fn save(&self, path: &Path) -> Result<(), AvrSimError> {
        let err = |e: std::io::Error| AvrSimError::State {
            detail: format!("cannot write {}: {e}", path.display()),
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| AvrSimError::State {
            detail: e.to_string(),
        })?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, text + "\n").map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

fn blocks(memory: &[u8]) -> BTreeMap<String, String> {
    memory
        .chunks(BLOCK)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != ERASED))
        .map(|(i, b)| (format!("0x{:04x}", i * BLOCK), hex::encode(b)))
        .collect()
}

fn parse_offset(s: &str) -> Option<usize> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => usize::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}
