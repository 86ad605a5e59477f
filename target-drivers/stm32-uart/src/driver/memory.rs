//! Flash and the other memories through Read Memory and Write Memory, in 256-byte blocks.

use flashgate_serial::Transport;
use flashgate_target::{Stage, TargetError};
use zeroize::Zeroizing;

use super::{Ctx, Fail, Stm32UartTarget};
use crate::part::Part;
use crate::protocol::*;

impl<T: Transport> Stm32UartTarget<T> {
    pub(super) fn require_part(&self, stage: Stage) -> Result<&'static Part, TargetError> {
        self.part.ok_or_else(|| TargetError::InvalidRequest {
            stage,
            detail: "the part is not known yet: call identify first".to_owned(),
        })
    }

    pub(super) fn check_flash(
        &self,
        stage: Stage,
        address: u32,
        length: u32,
    ) -> Result<(), TargetError> {
        let part = self.require_part(stage)?;
        let end = u64::from(part.flash_base) + u64::from(self.flash_size);
        if address < part.flash_base || u64::from(address) + u64::from(length) > end {
            return Err(TargetError::OutOfRange {
                stage,
                address,
                length,
            });
        }
        Ok(())
    }

    /// Read Memory of up to 256 bytes.
    pub(super) fn read_block(
        &mut self,
        stage: Stage,
        address: u32,
        n: usize,
    ) -> Result<Vec<u8>, Fail> {
        let ctx = Ctx {
            stage,
            address: Some(address),
            cmd: CMD_READ,
        };
        self.command(ctx)?;
        self.send(ctx, &address_frame(address))?;
        self.ack(ctx, self.options.ack_timeout, "after the address")?;
        let len = (n - 1) as u8;
        self.send(ctx, &[len, len ^ 0xFF])?;
        self.ack(ctx, self.options.ack_timeout, "after the length")?;
        let t = self.data_timeout(n);
        Ok(self.recv(ctx, n, t)?)
    }

    /// Read Memory, refusal mapped to a driver error.
    pub(super) fn read_mem(
        &mut self,
        stage: Stage,
        address: u32,
        buf: &mut [u8],
    ) -> Result<(), TargetError> {
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_BLOCK);
            let at = address + done as u32;
            let ctx = Ctx {
                stage,
                address: Some(at),
                cmd: CMD_READ,
            };
            let data = self
                .read_block(stage, at, n)
                .map_err(|f| self.refused(f, ctx))?;
            buf[done..done + n].copy_from_slice(&data);
            done += n;
        }
        Ok(())
    }

    /// Write Memory of up to 256 bytes (a multiple of 4 at a 4-aligned address).
    fn write_block(&mut self, stage: Stage, address: u32, data: &[u8]) -> Result<(), TargetError> {
        let ctx = Ctx {
            stage,
            address: Some(address),
            cmd: CMD_WRITE,
        };
        self.command(ctx).map_err(|f| self.refused(f, ctx))?;
        self.send(ctx, &address_frame(address))?;
        self.ack(ctx, self.options.ack_timeout, "after the address")?;
        let mut frame = Vec::with_capacity(data.len() + 2);
        frame.push((data.len() - 1) as u8);
        frame.extend_from_slice(data);
        frame.push(xor(&frame));
        let frame = Zeroizing::new(frame);
        self.send(ctx, &frame)?;
        let timeout = self.data_timeout(data.len());
        self.ack_or_brownout(ctx, timeout, "after the data")
    }

    /// Writes `data` at `address` in aligned 256-byte blocks, padding with 0xFF (which
    /// leaves flash bits as they are).
    pub(super) fn write_mem(
        &mut self,
        stage: Stage,
        address: u32,
        data: &[u8],
    ) -> Result<(), TargetError> {
        if data.is_empty() {
            return Ok(());
        }
        let start = address & !3;
        let pre = (address - start) as usize;
        let total = (pre + data.len()).div_ceil(4) * 4;
        let mut buf = Zeroizing::new(vec![0xFF; total]);
        buf[pre..pre + data.len()].copy_from_slice(data);
        let mut done = 0;
        while done < total {
            // Blocks end on 256-byte boundaries so that none straddles two pages.
            let at = start + done as u32;
            let room = MAX_BLOCK - (at as usize % MAX_BLOCK);
            let n = (total - done).min(room);
            self.write_block(stage, at, &buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}
