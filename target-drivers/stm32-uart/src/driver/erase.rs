//! Erasing pages (F1) or sectors (F4) by address range or by number.

use flashgate_serial::Transport;
use flashgate_target::{Stage, TargetError};

use super::{us, Ctx, Stm32UartTarget};
use crate::protocol::*;

impl<T: Transport> Stm32UartTarget<T> {
    /// Erases the pages (F1) or sectors (F4) that `[address, address + length)` touches.
    pub fn erase_range(&mut self, address: u32, length: u32) -> Result<(), TargetError> {
        let stage = Stage::Erase;
        self.ensure_bootloader(stage)?;
        let part = self.require_part(stage)?;
        self.check_flash(stage, address, length)?;
        if length == 0 {
            return Ok(());
        }
        let last = address + (length - 1);
        let (Some(first), Some(end)) = (part.sector_of(address), part.sector_of(last)) else {
            return Err(TargetError::OutOfRange {
                stage,
                address,
                length,
            });
        };
        let sectors: Vec<usize> = (first..=end).collect();
        self.erase_sectors(&sectors)
    }

    /// Erases the listed pages (F1) or sectors (F4) by number.
    pub fn erase_sectors(&mut self, sectors: &[usize]) -> Result<(), TargetError> {
        let stage = Stage::Erase;
        self.ensure_bootloader(stage)?;
        let part = self.require_part(stage)?;
        let layout = part.sector_layout();
        let address = sectors
            .first()
            .and_then(|&s| layout.get(s))
            .map(|&(a, _)| a);
        if sectors.is_empty() {
            return Ok(());
        }
        if let Some(&bad) = sectors.iter().find(|&&s| s >= layout.len()) {
            return Err(TargetError::InvalidRequest {
                stage,
                detail: format!(
                    "sector {bad} does not exist on the {} ({} sectors)",
                    part.device_type,
                    layout.len()
                ),
            });
        }
        let ctx = Ctx {
            stage,
            address,
            cmd: part.erase_command,
        };
        let us_total: u32 = sectors
            .iter()
            .map(|&s| part.sector_erase_us(layout[s].1))
            .sum();
        let timeout = self.options.ack_timeout + us(4 * us_total);
        // One command erases at most 256 (Erase) or, in practice, 511 (Extended Erase) pages.
        let per = if part.erase_command == CMD_ERASE {
            256
        } else {
            511
        };
        for group in sectors.chunks(per) {
            self.command(ctx).map_err(|f| self.refused(f, ctx))?;
            let mut frame = Vec::new();
            if part.erase_command == CMD_ERASE {
                frame.push((group.len() - 1) as u8);
                frame.extend(group.iter().map(|&s| s as u8));
            } else {
                frame.extend_from_slice(&((group.len() - 1) as u16).to_be_bytes());
                for &s in group {
                    frame.extend_from_slice(&(s as u16).to_be_bytes());
                }
            }
            frame.push(xor(&frame));
            self.send(ctx, &frame)?;
            self.ack_or_brownout(ctx, timeout, "after the page list")?;
        }
        Ok(())
    }
}
