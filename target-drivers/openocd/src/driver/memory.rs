//! Memory through OpenOCD: reads with `read_memory` (32-bit words where
//! aligned, bytes elsewhere, in 4 KiB pieces), flash writes with
//! `flash write_image` of a file OpenOCD reads.

use flashgate_target::{Stage, TargetError};

use super::{ocd_error, OpenOcdTarget};
use crate::openocd::OpenOcdError;

/// Bytes per `read_memory` (its reply is a Tcl list of numbers).
const READ_PIECE: usize = 4096;

fn number(word: &str) -> Option<u64> {
    match word.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => word.parse().ok(),
    }
}

impl OpenOcdTarget {
    /// One 32-bit word.
    pub(super) fn read_word(&mut self, stage: Stage, address: u32) -> Result<u32, TargetError> {
        let b = self.read_bytes(stage, address, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `len` bytes from `address`.
    pub(super) fn read_bytes(
        &mut self,
        stage: Stage,
        address: u32,
        len: usize,
    ) -> Result<Vec<u8>, TargetError> {
        let mut out = Vec::with_capacity(len);
        let mut at = address;
        while out.len() < len {
            let n = (len - out.len()).min(READ_PIECE);
            let words = at % 4 == 0 && n % 4 == 0;
            let (width, count) = if words { (32, n / 4) } else { (8, n) };
            let reply = self
                .ocd(stage)?
                .command(&format!("read_memory 0x{at:08x} {width} {count}"))
                .map_err(|e| ocd_error(stage, Some(at), e))?;
            let values: Vec<u64> = reply.split_whitespace().filter_map(number).collect();
            if values.len() != count {
                return Err(TargetError::Protocol {
                    stage,
                    detail: format!(
                        "OpenOCD returned {} values for {count} at 0x{at:08x}",
                        values.len()
                    ),
                });
            }
            for v in values {
                if words {
                    out.extend_from_slice(&u32::try_from(v).unwrap_or(0).to_le_bytes());
                } else {
                    out.push(u8::try_from(v).unwrap_or(0));
                }
            }
            at = at.wrapping_add(u32::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    /// Writes `data` to erased flash at `address` with OpenOCD's flash driver.
    pub(super) fn write_flash(
        &mut self,
        stage: Stage,
        address: u32,
        data: &[u8],
    ) -> Result<(), TargetError> {
        let path = self.scratch.path().join("image.bin");
        std::fs::write(&path, data).map_err(|e| TargetError::Protocol {
            stage,
            detail: format!("cannot write the image for OpenOCD: {e}"),
        })?;
        let command = format!("flash write_image {} 0x{address:08x} bin", path.display());
        let done = self.ocd(stage)?.command(&command);
        // The file held the image (and, for a secret, the secret): gone at once.
        let _ = std::fs::write(&path, vec![0u8; data.len()]);
        let _ = std::fs::remove_file(&path);
        match done {
            Ok(_) => Ok(()),
            Err(OpenOcdError::Command { detail, .. }) => Err(ocd_error(
                stage,
                Some(address),
                OpenOcdError::FlashWrite { address, detail },
            )),
            Err(e) => Err(ocd_error(stage, Some(address), e)),
        }
    }
}

impl OpenOcdTarget {
    /// Writes a secret to erased flash half-word by half-word (`flash fillh`),
    /// so that it never goes through a file; an odd length is padded with
    /// 0xFF, which leaves the flash as erased.
    pub(super) fn fill_flash(
        &mut self,
        stage: Stage,
        address: u32,
        data: &[u8],
    ) -> Result<(), TargetError> {
        for (i, pair) in data.chunks(2).enumerate() {
            let half = u16::from_le_bytes([pair[0], pair.get(1).copied().unwrap_or(0xFF)]);
            let at = address.wrapping_add(u32::try_from(i * 2).unwrap_or(0));
            // The command text holds two bytes of the secret: zeroed after.
            let command = zeroize::Zeroizing::new(format!("flash fillh 0x{at:08x} 0x{half:04x} 1"));
            match self.ocd(stage)?.command(&command) {
                Ok(_) => {}
                Err(OpenOcdError::Command { .. }) => {
                    // OpenOCD's message would repeat the value: the address only.
                    return Err(ocd_error(
                        stage,
                        Some(at),
                        OpenOcdError::FlashWrite {
                            address: at,
                            detail: "flash fillh failed".to_owned(),
                        },
                    ));
                }
                Err(e) => return Err(ocd_error(stage, Some(at), e)),
            }
        }
        Ok(())
    }
}
