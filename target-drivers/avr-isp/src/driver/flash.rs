//! Flash: paged writes with the signature re-checked, and pipelined reads.

use flashgate_target::{Stage, TargetError};
use zeroize::Zeroizing;

use super::{AvrIspTarget, READ_BLOCK};
use crate::stk::*;

/// The ArduinoISP sketch's serial receive buffer: never queue more than this many bytes.
const PROGRAMMER_RX_BUFFER: usize = 64;

impl AvrIspTarget {
    fn set_ext(&mut self, stage: Stage, address: u32) -> Result<(), TargetError> {
        if !self.part.needs_extended_address() {
            return Ok(());
        }
        let ext = ((address / 2) >> 16) as u8;
        if self.session.ext_addr != Some(ext) {
            self.universal(stage, Some(address), [0x4D, 0x00, ext, 0x00])?;
            self.session.ext_addr = Some(ext);
        }
        Ok(())
    }

    fn check_flash_range(
        &self,
        stage: Stage,
        address: u32,
        length: usize,
    ) -> Result<(), TargetError> {
        let length = u32::try_from(length).unwrap_or(u32::MAX);
        if u64::from(address) + u64::from(length) > u64::from(self.part.flash_size) {
            return Err(TargetError::OutOfRange {
                stage,
                address,
                length,
            });
        }
        Ok(())
    }

    /// Programs flash; the caller checked the range.
    pub(super) fn program_flash(
        &mut self,
        stage: Stage,
        address: u32,
        data: &[u8],
    ) -> Result<(), TargetError> {
        self.ensure_pmode(stage)?;
        self.check_flash_range(stage, address, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        // Word-align: pad with 0xFF, which programming leaves untouched.
        let start = address & !1;
        let mut image = Zeroizing::new(Vec::with_capacity(data.len() + 2));
        if address & 1 == 1 {
            image.push(0xFF);
        }
        image.extend_from_slice(data);
        if image.len() % 2 == 1 {
            image.push(0xFF);
        }
        let page = self.part.flash_page;
        let mut at = start;
        let mut done = 0usize;
        let mut since = start;
        let mut pages = 0u32;
        while done < image.len() {
            let room = (page - at % page) as usize;
            let n = room.min(image.len() - done);
            self.set_ext(stage, at)?;
            let word = ((at / 2) & 0xFFFF) as u16;
            let mut msg = Vec::with_capacity(9 + n);
            msg.extend_from_slice(&[LOAD_ADDRESS]);
            msg.extend_from_slice(&word.to_le_bytes());
            msg.push(EOP);
            msg.push(PROG_PAGE);
            msg.extend_from_slice(&(n as u16).to_be_bytes());
            msg.push(MEM_FLASH);
            msg.extend_from_slice(&image[done..done + n]);
            msg.push(EOP);
            self.send(stage, Some(at), &msg)?;
            msg.fill(0);
            self.expect_reply(stage, Some(at), LOAD_ADDRESS, &mut [])?;
            self.expect_reply(stage, Some(at), PROG_PAGE, &mut [])?;
            pages += 1;
            at += n as u32;
            done += n;
            if pages >= self.config.signature_check_pages.max(1) {
                self.check_target(stage, since)?;
                since = at;
                pages = 0;
            }
        }
        if pages > 0 {
            self.check_target(stage, since)?;
        }
        Ok(())
    }

    /// Reads flash; the caller checked the range.
    pub(super) fn read_flash(
        &mut self,
        stage: Stage,
        address: u32,
        buf: &mut [u8],
    ) -> Result<(), TargetError> {
        self.ensure_pmode(stage)?;
        self.check_flash_range(stage, address, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let start = address & !1;
        let end = (address + buf.len() as u32 + 1) & !1;
        let mut blocks: Vec<(u32, u32)> = Vec::new();
        let mut at = start;
        while at < end {
            let n = (READ_BLOCK - at % READ_BLOCK).min(end - at);
            blocks.push((at, n));
            at += n;
        }
        let mut data = Zeroizing::new(vec![0u8; (end - start) as usize]);
        let depth = self.config.read_pipeline.clamp(1, PROGRAMMER_RX_BUFFER / 9);
        let mut i = 0;
        while i < blocks.len() {
            // A group shares one extended address byte and fits the programmer's buffer.
            let ext = |a: u32| (a / 2) >> 16;
            let mut j = i + 1;
            while j < blocks.len() && j - i < depth && ext(blocks[j].0) == ext(blocks[i].0) {
                j += 1;
            }
            self.set_ext(stage, blocks[i].0)?;
            let mut msg = Vec::with_capacity(9 * (j - i));
            for &(a, n) in &blocks[i..j] {
                let word = ((a / 2) & 0xFFFF) as u16;
                msg.push(LOAD_ADDRESS);
                msg.extend_from_slice(&word.to_le_bytes());
                msg.push(EOP);
                msg.push(READ_PAGE);
                msg.extend_from_slice(&(n as u16).to_be_bytes());
                msg.push(MEM_FLASH);
                msg.push(EOP);
            }
            self.send(stage, Some(blocks[i].0), &msg)?;
            for &(a, n) in &blocks[i..j] {
                self.expect_reply(stage, Some(a), LOAD_ADDRESS, &mut [])?;
                let off = (a - start) as usize;
                self.expect_reply(stage, Some(a), READ_PAGE, &mut data[off..off + n as usize])?;
            }
            i = j;
        }
        let skip = (address - start) as usize;
        buf.copy_from_slice(&data[skip..skip + buf.len()]);
        Ok(())
    }
}
