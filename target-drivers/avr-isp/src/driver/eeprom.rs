//! EEPROM: reads, and page writes through `UNIVERSAL` Load/Write EEPROM Page, timed to
//! what of tWD_EEPROM the wire does not already take.

use std::time::Duration;

use flashgate_target::{Stage, TargetError};
use zeroize::Zeroizing;

use super::{AvrIspTarget, READ_BLOCK};
use crate::stk::*;

/// The sketch's answer to `UNIVERSAL` (`STK_INSYNC`, the byte, `STK_OK`).
const WRITE_PAGE_REPLY_LEN: u64 = 3;
/// The shortest command that makes the sketch send an SPI instruction (`READ_SIGN`, `EOP`).
const SHORTEST_SPI_COMMAND_LEN: u64 = 2;

impl AvrIspTarget {
    /// Reads EEPROM: `READ_PAGE 'E'` from even offsets (the sketch takes a word address),
    /// `UNIVERSAL A0` byte by byte from odd ones.
    pub(super) fn read_eeprom(
        &mut self,
        stage: Stage,
        offset: u32,
        buf: &mut [u8],
    ) -> Result<(), TargetError> {
        if offset % 2 == 0 {
            let mut done = 0usize;
            while done < buf.len() {
                let at = offset + done as u32;
                let n = (buf.len() - done).min(READ_BLOCK as usize);
                let word = (at / 2) as u16;
                let mut msg = vec![LOAD_ADDRESS];
                msg.extend_from_slice(&word.to_le_bytes());
                msg.extend_from_slice(&[EOP, READ_PAGE]);
                msg.extend_from_slice(&(n as u16).to_be_bytes());
                msg.extend_from_slice(&[MEM_EEPROM, EOP]);
                self.send(stage, Some(at), &msg)?;
                self.expect_reply(stage, Some(at), LOAD_ADDRESS, &mut [])?;
                self.expect_reply(stage, Some(at), READ_PAGE, &mut buf[done..done + n])?;
                done += n;
            }
            return Ok(());
        }
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let base = offset + (i * 8) as u32;
            let mut msg = Vec::with_capacity(6 * chunk.len());
            for k in 0..chunk.len() {
                let [hi, lo] = ((base + k as u32) as u16).to_be_bytes();
                msg.extend_from_slice(&[UNIVERSAL, 0xA0, hi, lo, 0x00, EOP]);
            }
            self.send(stage, Some(base), &msg)?;
            for (k, out) in chunk.iter_mut().enumerate() {
                let mut b = [0u8; 1];
                self.expect_reply(stage, Some(base + k as u32), UNIVERSAL, &mut b)?;
                *out = b[0];
            }
        }
        Ok(())
    }

    /// Writes EEPROM a page at a time: Load EEPROM Memory Page (`C1`) per byte and Write
    /// EEPROM Memory Page (`C2`), sent as one write, then tWD_EEPROM.
    pub(super) fn write_eeprom(
        &mut self,
        stage: Stage,
        offset: u32,
        data: &[u8],
    ) -> Result<(), TargetError> {
        let page = self.part.eeprom_page;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u32;
            let n = ((page - at % page) as usize).min(data.len() - done);
            let mut msg = Zeroizing::new(Vec::with_capacity(6 * (n + 1)));
            for (k, &b) in data[done..done + n].iter().enumerate() {
                let within = ((at + k as u32) % page) as u8;
                msg.extend_from_slice(&[UNIVERSAL, 0xC1, 0x00, within, b, EOP]);
            }
            let [hi, lo] = ((at - at % page) as u16).to_be_bytes();
            msg.extend_from_slice(&[UNIVERSAL, 0xC2, hi, lo, 0x00, EOP]);
            self.send(stage, Some(at), &msg)?;
            for _ in 0..=n {
                self.expect_reply(stage, Some(at), UNIVERSAL, &mut [0u8; 1])?;
            }
            // The sketch answers after the page write has started, and the next SPI
            // instruction needs a whole command after that answer: those bytes' wire time
            // is part of tWD_EEPROM already.
            self.isp.wait(
                self.part.eeprom_write.saturating_sub(
                    self.wire_time(WRITE_PAGE_REPLY_LEN + SHORTEST_SPI_COMMAND_LEN),
                ),
            );
            done += n;
        }
        Ok(())
    }

    /// How long `bytes` take on the programmer's serial line (8N1).
    fn wire_time(&self, bytes: u64) -> Duration {
        Duration::from_nanos(bytes * 10 * 1_000_000_000 / u64::from(self.config.baud.max(1)))
    }
}
