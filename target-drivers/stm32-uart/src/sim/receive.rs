//! Receiving a command's arguments after its command byte: address, counts, data and page
//! lists, each phase checked before the next is taken.

use super::{Collect, Mode, Phase, Stm32Sim};
use crate::protocol::*;

impl Stm32Sim {
    pub(super) fn collect(&mut self, cmd: u8, phase: Phase, need: usize, address: u32) {
        self.mode = Mode::Collect(Collect {
            cmd,
            phase,
            buf: Vec::with_capacity(need),
            need,
            address,
        });
    }

    /// A phase of a command has all its bytes.
    pub(super) fn phase(&mut self, c: Collect) {
        let b = &c.buf;
        let nack = |s: &mut Self| s.reply(&[NACK]);
        match c.phase {
            Phase::Address => {
                if xor(&b[..4]) != b[4] {
                    return nack(self);
                }
                let address = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                let ok = match c.cmd {
                    CMD_READ => self.mem.readable(address),
                    CMD_WRITE => self.mem.writable(address),
                    _ => {
                        self.mem.part.flash().contains(&address)
                            || self.mem.part.ram.contains(&address)
                    }
                };
                if !ok {
                    return nack(self);
                }
                match c.cmd {
                    CMD_READ => {
                        self.reply(&[ACK]);
                        self.collect(c.cmd, Phase::ReadCount, 2, address);
                    }
                    CMD_WRITE => {
                        self.reply(&[ACK]);
                        self.collect(c.cmd, Phase::WriteCount, 1, address);
                    }
                    _ => self.finish(CMD_GO, address, Vec::new()),
                }
            }
            Phase::ReadCount => {
                if b[1] != b[0] ^ 0xFF {
                    return nack(self);
                }
                let n = usize::from(b[0]) + 1;
                if self.mem.read(c.address, n as u32).is_none() {
                    return nack(self);
                }
                self.finish(CMD_READ, c.address, vec![b[0]]);
            }
            Phase::WriteCount => {
                let n = usize::from(b[0]) + 1;
                let mut buf = Vec::with_capacity(n + 2);
                buf.push(b[0]);
                self.mode = Mode::Collect(Collect {
                    cmd: CMD_WRITE,
                    phase: Phase::WriteData,
                    buf,
                    need: n + 2,
                    address: c.address,
                });
            }
            Phase::WriteData => self.finish(CMD_WRITE, c.address, c.buf),
            Phase::EraseCount => {
                if b[0] == 0xFF {
                    self.mode = Mode::Collect(Collect {
                        phase: Phase::EraseGlobal,
                        need: 2,
                        ..c
                    });
                } else {
                    let n = usize::from(b[0]) + 1;
                    self.mode = Mode::Collect(Collect {
                        phase: Phase::EraseList,
                        need: 1 + n + 1,
                        ..c
                    });
                }
            }
            Phase::EraseGlobal | Phase::EraseList | Phase::ExtSpecial | Phase::ExtList => {
                self.finish(c.cmd, 0, c.buf)
            }
            Phase::ExtCount => {
                let n = u16::from_be_bytes([b[0], b[1]]);
                if n >= 0xFFF0 {
                    self.mode = Mode::Collect(Collect {
                        phase: Phase::ExtSpecial,
                        need: 3,
                        ..c
                    });
                } else {
                    let n = usize::from(n) + 1;
                    self.mode = Mode::Collect(Collect {
                        phase: Phase::ExtList,
                        need: 2 + 2 * n + 1,
                        ..c
                    });
                }
            }
            Phase::WpCount => {
                let n = usize::from(b[0]) + 1;
                self.mode = Mode::Collect(Collect {
                    phase: Phase::WpList,
                    need: 1 + n + 1,
                    ..c
                });
            }
            Phase::WpList => self.finish(CMD_WRITE_PROTECT, 0, c.buf),
        }
    }
}
