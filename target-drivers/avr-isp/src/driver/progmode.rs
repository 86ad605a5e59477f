//! Programming mode: the device parameters the programmer needs, entering and leaving it
//! (which resets the target), and the checks that the board is still the one identify saw.

use flashgate_target::{Stage, TargetError};

use super::{describe_signature, hex, no_target, AvrIspTarget, Identity};
use crate::part::Part;
use crate::stk::*;
use crate::uid::{serial_offset, SERIAL_LEN};

impl AvrIspTarget {
    pub(super) fn set_device(&mut self, part: &'static Part) -> Result<(), TargetError> {
        let stage = Stage::Connect;
        let mut cmd = vec![
            SET_DEVICE,
            part.stk500_devcode,
            0,    // revision
            0,    // serial and parallel programming
            1,    // full parallel interface
            1,    // polling
            1,    // self-timed
            1,    // lock bytes
            3,    // fuse bytes
            0xFF, // flash poll values
            0xFF,
            0xFF, // EEPROM poll values
            0xFF,
        ];
        cmd.extend_from_slice(&(part.flash_page as u16).to_be_bytes());
        cmd.extend_from_slice(&(part.eeprom_size as u16).to_be_bytes());
        cmd.extend_from_slice(&part.flash_size.to_be_bytes());
        cmd.push(EOP);
        self.command(stage, None, &cmd, &mut [])?;
        // avrdude sends 4 extended parameters to firmware newer than 1.10, 3 to older.
        let (_, major, minor) = self.session.version;
        let mut ext = vec![
            SET_DEVICE_EXT,
            4,
            part.eeprom_page as u8,
            part.pagel,
            part.bs2,
        ];
        if major > 1 || (major == 1 && minor > 10) {
            ext[1] = 5;
            ext.push(1);
        }
        ext.push(EOP);
        self.command(stage, None, &ext, &mut [])?;
        self.part = part;
        Ok(())
    }

    pub(super) fn enter_progmode(&mut self, stage: Stage) -> Result<(), TargetError> {
        self.command(stage, None, &[ENTER_PROGMODE, EOP], &mut [])?;
        self.session.pmode = true;
        // The target was reset: its extended address register is back to 0, but do not rely on it.
        self.session.ext_addr = None;
        Ok(())
    }

    pub(super) fn leave_progmode(&mut self, stage: Stage) -> Result<(), TargetError> {
        self.command(stage, None, &[LEAVE_PROGMODE, EOP], &mut [])?;
        self.session.pmode = false;
        Ok(())
    }

    pub(super) fn read_signature(&mut self, stage: Stage) -> Result<[u8; 3], TargetError> {
        let mut sig = [0u8; 3];
        self.command(stage, None, &[READ_SIGN, EOP], &mut sig)?;
        Ok(sig)
    }

    /// Makes sure the link is up and the target in programming mode; after re-entering it,
    /// checks that it is still the board identify saw.
    pub(super) fn ensure_pmode(&mut self, stage: Stage) -> Result<(), TargetError> {
        if !self.session.connected {
            return Err(TargetError::Protocol {
                stage,
                detail: "the programmer is not connected: call connect first (again after a time-out or protocol error)".to_owned(),
            });
        }
        if self.session.pmode {
            return Ok(());
        }
        self.enter_progmode(stage)?;
        if let Some(id) = self.session.identity.clone() {
            self.check_same_board(stage, &id)?;
        }
        Ok(())
    }

    fn check_same_board(&mut self, stage: Stage, id: &Identity) -> Result<(), TargetError> {
        let sig = self.read_signature(stage)?;
        if sig != id.signature {
            return Err(if no_target(&sig) {
                TargetError::ContactLost {
                    stage,
                    address: None,
                }
            } else {
                TargetError::WrongDevice {
                    expected: id.part.name.to_owned(),
                    found: describe_signature(&sig),
                }
            });
        }
        if let Some(serial) = id.serial {
            let mut now = [0u8; SERIAL_LEN];
            self.read_eeprom(stage, serial_offset(id.part), &mut now)?;
            if now != serial {
                return Err(self.protocol(
                    stage,
                    format!(
                        "the board's serial now reads {} but identify read {}: the board was swapped; identify it again",
                        hex(&now),
                        hex(&serial)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Re-reads the signature after programming; a target that stopped answering reset
    /// during the write (brown-out) at or after `since`.
    pub(super) fn check_target(&mut self, stage: Stage, since: u32) -> Result<(), TargetError> {
        let sig = self.read_signature(stage)?;
        if sig == self.part.signature {
            return Ok(());
        }
        if no_target(&sig) {
            // Programming is no longer enabled: force a fresh ENTER_PROGMODE next time.
            self.session.pmode = false;
            let _ = self.leave_progmode(stage);
            return Err(TargetError::BrownOut {
                stage,
                address: Some(since),
            });
        }
        Err(TargetError::WrongDevice {
            expected: self.part.name.to_owned(),
            found: describe_signature(&sig),
        })
    }
}
