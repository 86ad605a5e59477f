//! Readout protection: its state read back from the option bytes, and Readout Unprotect, the
//! regression that erases the chip.

use flashgate_serial::Transport;
use flashgate_target::{
    Destructive, DestructivePermission, LockLevel, LockState, Stage, TargetError,
};

use super::{us, BootloaderInfo, Ctx, Fail, Stm32UartTarget};
use crate::part::RdpLevel;
use crate::protocol::*;

impl<T: Transport> Stm32UartTarget<T> {
    /// **Destroys the chip's contents.** Readout Unprotect: the bootloader mass-erases flash
    /// (and with it any key stored there), returns RDP to level 0 and resets; the driver syncs
    /// again. Never part of a provisioning flow: use it to recover a board that must be
    /// reworked; it takes a [`DestructivePermission`] for
    /// [`Destructive::RdpRegression`], granted on purpose. Reported as stage `erase`.
    pub fn readout_unprotect_erasing_everything(
        &mut self,
        permission: DestructivePermission,
    ) -> Result<(), TargetError> {
        let stage = Stage::Erase;
        if permission.step() != Destructive::RdpRegression {
            return Err(TargetError::Protocol {
                stage,
                detail: format!(
                    "readout unprotect needs a permission for a readout-protection regression, not for {}",
                    permission.step()
                ),
            });
        }
        self.ensure_bootloader(stage)?;
        let part = self.require_part(stage)?;
        let ctx = Ctx {
            stage,
            address: None,
            cmd: CMD_READOUT_UNPROTECT,
        };
        self.command(ctx).map_err(|f| self.refused(f, ctx))?;
        let t = self.options.ack_timeout
            + us(4 * (part.timing.mass_erase_us + part.timing.option_write_us));
        self.ack(ctx, t, "after the erase")?;
        self.after_reset(stage)?;
        self.lock = None;
        Ok(())
    }

    /// Lock state by Read Memory of the option bytes (refused twice = readout protection).
    pub(super) fn probe_lock(
        &mut self,
        stage: Stage,
        info: &BootloaderInfo,
    ) -> Result<LockState, TargetError> {
        let part = self.require_part(stage)?;
        for _ in 0..2 {
            match self.read_block(stage, part.option_bytes, 16) {
                Ok(ob) => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&ob);
                    let level = match part.rdp_level(&o) {
                        RdpLevel::Level0 => LockLevel::None,
                        RdpLevel::Level1 => LockLevel::Readout,
                        RdpLevel::Level2 => LockLevel::Permanent,
                    };
                    self.lock = Some(level);
                    return Ok(LockState {
                        level,
                        raw: part.rdp_raw(&o),
                    });
                }
                Err(Fail::Refused) => continue,
                Err(Fail::Error(e)) => return Err(e),
            }
        }
        self.lock = Some(LockLevel::Readout);
        Ok(LockState {
            level: LockLevel::Readout,
            raw: info.version_options.to_vec(),
        })
    }
}
