//! Carrying out a complete command: the faults it triggers, then the work on the memories
//! and the final answer, and what the chip does next.

use super::fault::FaultKind;
use super::memory::{MemError, WriteEffect};
use super::{Mode, Stm32Sim};
use crate::protocol::*;

/// Application start-up after Go until the agent listens, µs.
const APP_BOOT_US: u64 = 2_000;

/// What a finished command does next.
enum After {
    Idle,
    Reset,
    App,
    Crash,
    Hang,
}

impl Stm32Sim {
    /// The sectors an erase command names, or `None` if its checksum or contents are bad.
    /// `Some(None)` is a mass erase.
    fn erase_targets(&self, cmd: u8, buf: &[u8]) -> Option<Option<Vec<usize>>> {
        if cmd == CMD_ERASE {
            if buf[0] == 0xFF {
                return (buf.len() == 2 && buf[1] == 0x00).then_some(None);
            }
            let (body, cs) = buf.split_at(buf.len() - 1);
            if xor(body) != cs[0] {
                return None;
            }
            return Some(Some(body[1..].iter().map(|&p| usize::from(p)).collect()));
        }
        let (body, cs) = buf.split_at(buf.len() - 1);
        if xor(body) != cs[0] {
            return None;
        }
        let n = u16::from_be_bytes([body[0], body[1]]);
        match n {
            0xFFFF => Some(None),
            // Bank erases: the 0x413 has a single bank.
            0xFFF0..=0xFFFE => None,
            _ => Some(Some(
                body[2..]
                    .chunks(2)
                    .map(|p| usize::from(u16::from_be_bytes([p[0], p[1]])))
                    .collect(),
            )),
        }
    }

    /// Whether a command touches `address` (for address-triggered faults).
    fn touches(&self, cmd: u8, address: u32, buf: &[u8], probe: u32) -> bool {
        match cmd {
            CMD_READ => {
                let n = buf.first().map_or(1, |&n| u32::from(n) + 1);
                probe >= address && u64::from(probe) < u64::from(address) + u64::from(n)
            }
            CMD_WRITE => {
                let n = buf.len().saturating_sub(2) as u64;
                probe >= address && u64::from(probe) < u64::from(address) + n
            }
            CMD_GO => probe == address,
            CMD_ERASE | CMD_EXTENDED_ERASE => match self.erase_targets(cmd, buf) {
                Some(None) => self.mem.part.flash().contains(&probe),
                Some(Some(list)) => self
                    .mem
                    .part
                    .sector_of(probe)
                    .is_some_and(|s| list.contains(&s)),
                None => false,
            },
            _ => false,
        }
    }

    /// The whole command is in: faults, then the work and the final answer.
    pub(super) fn finish(&mut self, cmd: u8, address: u32, buf: Vec<u8>) {
        let mut book = std::mem::take(&mut self.faults);
        let fault = {
            let this = &*self;
            book.check(cmd, &|probe: u32| this.touches(cmd, address, &buf, probe))
        };
        self.faults = book;
        self.stats.commands[usize::from(cmd)] += 1;
        let start = self.out.len();
        let after = match fault {
            Some(FaultKind::Nack | FaultKind::CorruptChecksum) => {
                self.reply(&[NACK]);
                After::Idle
            }
            Some(FaultKind::NoAnswer) => After::Hang,
            Some(FaultKind::BrownOut) => {
                self.brown_out(cmd, address, &buf);
                After::Reset
            }
            Some(FaultKind::DropReplyByte) | None => {
                let after = self.execute(cmd, address, &buf);
                if fault == Some(FaultKind::DropReplyByte) && self.out.len() > start {
                    self.out.pop();
                }
                after
            }
        };
        match after {
            After::Idle => self.mode = Mode::Idle,
            After::Reset => {
                self.charge_us(u64::from(self.mem.part.timing.reset_us));
                self.system_reset();
            }
            After::App => {
                self.mode = Mode::App;
                self.app_booted = false;
            }
            After::Crash => self.mode = Mode::Crashed,
            After::Hang => self.mode = Mode::Hung,
        }
        self.persist(false);
    }

    fn brown_out(&mut self, cmd: u8, address: u32, buf: &[u8]) {
        match cmd {
            CMD_WRITE if buf.len() >= 2 && xor(buf) == 0 => {
                let data = &buf[1..buf.len() - 1];
                let half = data.len().div_ceil(2);
                let units = half.div_ceil(self.mem.part.timing.program_unit as usize);
                self.charge_us(
                    units as u64 * u64::from(self.mem.part.timing.program_unit_ns) / 1_000,
                );
                let _ = self.mem.write(address, data, half);
                self.dirty = true;
            }
            CMD_ERASE | CMD_EXTENDED_ERASE => match self.erase_targets(cmd, buf) {
                Some(None) => {
                    self.charge_us(u64::from(self.mem.part.timing.mass_erase_us) / 2);
                    let _ = self.mem.mass_erase(true);
                    self.dirty = true;
                }
                Some(Some(list)) => {
                    let half = list.len().div_ceil(2);
                    let _ = self.mem.erase_sectors(&list, half);
                    self.dirty = true;
                }
                None => {}
            },
            _ => {}
        }
    }

    /// Carries out a complete command and appends its answer.
    fn execute(&mut self, cmd: u8, address: u32, buf: &[u8]) -> After {
        let p = self.mem.part;
        match cmd {
            CMD_GET => {
                let mut r = vec![ACK, 11, p.bootloader_version];
                r.extend_from_slice(&[
                    CMD_GET,
                    CMD_GET_VERSION,
                    CMD_GET_ID,
                    CMD_READ,
                    CMD_GO,
                    CMD_WRITE,
                    p.erase_command,
                    CMD_WRITE_PROTECT,
                    CMD_WRITE_UNPROTECT,
                    CMD_READOUT_PROTECT,
                    CMD_READOUT_UNPROTECT,
                    ACK,
                ]);
                self.reply(&r);
                After::Idle
            }
            CMD_GET_VERSION => {
                self.reply(&[ACK, p.bootloader_version, 0x00, 0x00, ACK]);
                After::Idle
            }
            CMD_GET_ID => {
                let pid = p.pid.to_be_bytes();
                self.reply(&[ACK, 0x01, pid[0], pid[1], ACK]);
                After::Idle
            }
            CMD_READ => {
                let n = u32::from(buf[0]) + 1;
                match self.mem.read(address, n) {
                    Some(data) => {
                        self.reply(&[ACK]);
                        self.reply(&data);
                    }
                    None => self.reply(&[NACK]),
                }
                After::Idle
            }
            CMD_GO => {
                self.reply(&[ACK]);
                if p.ram.contains(&address) {
                    // stm32flash's reset stub (or any RAM code): modelled as a system reset.
                    return After::Reset;
                }
                let sp = self.mem.read(address, 4).unwrap_or_default();
                if sp.iter().all(|&b| b == 0xFF) {
                    After::Crash
                } else {
                    if self.timing.agent_work {
                        self.ns = self.ns.saturating_add(APP_BOOT_US * 1_000);
                    }
                    After::App
                }
            }
            CMD_WRITE => {
                if xor(buf) != 0 {
                    self.reply(&[NACK]);
                    return After::Idle;
                }
                let data = &buf[1..buf.len() - 1];
                let flash = p.flash().contains(&address);
                if flash {
                    let units = data.len().div_ceil(p.timing.program_unit as usize) as u64;
                    self.charge_us(units * u64::from(p.timing.program_unit_ns) / 1_000);
                }
                match self.mem.write(address, data, data.len()) {
                    Ok(WriteEffect::None) => {
                        self.dirty |= !p.ram.contains(&address);
                        self.reply(&[ACK]);
                        After::Idle
                    }
                    Ok(WriteEffect::Reset) => {
                        self.dirty = true;
                        self.charge_us(u64::from(p.timing.option_write_us));
                        self.reply(&[ACK]);
                        After::Reset
                    }
                    Err(MemError::Address | MemError::WriteProtected)
                    | Err(MemError::NotErased | MemError::OtpLocked) => {
                        self.reply(&[NACK]);
                        After::Idle
                    }
                }
            }
            CMD_ERASE | CMD_EXTENDED_ERASE => {
                let result = match self.erase_targets(cmd, buf) {
                    None => Err(MemError::Address),
                    Some(None) => {
                        self.charge_us(u64::from(p.timing.mass_erase_us));
                        self.mem.mass_erase(false)
                    }
                    Some(Some(list)) => {
                        let layout = p.sector_layout();
                        let us: u64 = list
                            .iter()
                            .filter_map(|&s| layout.get(s))
                            .map(|&(_, size)| u64::from(p.sector_erase_us(size)))
                            .sum();
                        self.charge_us(us);
                        self.mem.erase_sectors(&list, list.len())
                    }
                };
                self.dirty = true;
                self.reply(&[if result.is_ok() { ACK } else { NACK }]);
                After::Idle
            }
            CMD_WRITE_PROTECT => {
                if xor(buf) != 0 {
                    self.reply(&[NACK]);
                    return After::Idle;
                }
                match self.mem.write_protect(&buf[1..buf.len() - 1]) {
                    Ok(()) => {
                        self.dirty = true;
                        self.charge_us(u64::from(p.timing.option_write_us));
                        self.reply(&[ACK]);
                        After::Reset
                    }
                    Err(_) => {
                        self.reply(&[NACK]);
                        After::Idle
                    }
                }
            }
            CMD_WRITE_UNPROTECT => {
                self.mem.write_unprotect();
                self.dirty = true;
                self.charge_us(u64::from(p.timing.option_write_us));
                self.reply(&[ACK]);
                After::Reset
            }
            CMD_READOUT_PROTECT => {
                self.mem.readout_protect();
                self.dirty = true;
                self.charge_us(u64::from(p.timing.option_write_us));
                self.reply(&[ACK]);
                After::Reset
            }
            CMD_READOUT_UNPROTECT => {
                self.charge_us(u64::from(p.timing.mass_erase_us));
                self.mem.readout_unprotect();
                self.dirty = true;
                self.charge_us(u64::from(p.timing.option_write_us));
                self.reply(&[ACK]);
                After::Reset
            }
            _ => {
                self.reply(&[NACK]);
                After::Idle
            }
        }
    }
}
