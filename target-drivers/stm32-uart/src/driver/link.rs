//! One exchange with the bootloader: bytes out and in, ACK and NACK, a timeout probed for a
//! brown-out, and what a refusal means.

use std::time::Duration;

use flashgate_serial::{SerialError, Transport};
use flashgate_target::{LockLevel, TargetError};

use super::{Ctx, Fail, LinkState, Stm32UartTarget};
use crate::protocol::*;

impl<T: Transport> Stm32UartTarget<T> {
    pub(super) fn serial_error(&mut self, ctx: Ctx, e: SerialError) -> TargetError {
        match e {
            SerialError::Timeout(timeout) => {
                self.state = LinkState::Unsynced;
                TargetError::Timeout {
                    stage: ctx.stage,
                    address: ctx.address,
                    timeout,
                }
            }
            other => {
                self.state = LinkState::Unsynced;
                TargetError::Protocol {
                    stage: ctx.stage,
                    detail: format!(
                        "the serial port failed ({other}): check the programmer's USB connection and retry the board"
                    ),
                }
            }
        }
    }

    pub(super) fn send(&mut self, ctx: Ctx, bytes: &[u8]) -> Result<(), TargetError> {
        match self.link.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.serial_error(ctx, e)),
        }
    }

    pub(super) fn recv(
        &mut self,
        ctx: Ctx,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, TargetError> {
        let mut buf = vec![0u8; n];
        match self.link.read_exact(&mut buf, timeout) {
            Ok(()) => Ok(buf),
            Err(e) => Err(self.serial_error(ctx, e)),
        }
    }

    pub(super) fn data_timeout(&self, bytes: usize) -> Duration {
        let wire_ns = (bytes as u64 * 11 * 1_000_000_000) / u64::from(self.options.baud.max(1));
        self.options.ack_timeout + Duration::from_nanos(2 * wire_ns)
    }

    /// Reads one ACK. NACK and anything else become errors naming `what`.
    fn ack_raw(&mut self, ctx: Ctx, timeout: Duration, what: &str) -> Result<(), Fail> {
        let b = self.recv(ctx, 1, timeout)?;
        match b[0] {
            ACK => Ok(()),
            NACK => Err(Fail::Refused),
            other => {
                self.state = LinkState::Unsynced;
                Err(Fail::Error(TargetError::Protocol {
                    stage: ctx.stage,
                    detail: format!(
                        "expected ACK (0x79) or NACK (0x1F) {what} of {}{}, received 0x{other:02x}: check the baud rate and the parity (8E1), then retry the board",
                        command_name(ctx.cmd),
                        at(ctx.address)
                    ),
                }))
            }
        }
    }

    /// An ACK after a later phase: NACK is a refusal of that phase.
    pub(super) fn ack(
        &mut self,
        ctx: Ctx,
        timeout: Duration,
        what: &str,
    ) -> Result<(), TargetError> {
        self.ack_raw(ctx, timeout, what).map_err(|f| match f {
            Fail::Refused => TargetError::Nack {
                stage: ctx.stage,
                address: ctx.address,
            },
            Fail::Error(e) => e,
        })
    }

    /// An ACK after flash work: a timeout is probed for a reset (brown-out).
    pub(super) fn ack_or_brownout(
        &mut self,
        ctx: Ctx,
        timeout: Duration,
        what: &str,
    ) -> Result<(), TargetError> {
        match self.ack(ctx, timeout, what) {
            Err(e @ TargetError::Timeout { .. }) => Err(self.probe_reset(ctx, e)),
            other => other,
        }
    }

    /// After a timeout during flash work: a bootloader that answers a fresh 0x7F sync with
    /// ACK was reset in the middle (supply brown-out); otherwise the timeout stands.
    fn probe_reset(&mut self, ctx: Ctx, timeout: TargetError) -> TargetError {
        if self.link.write_all(&[SYNC]).is_err() {
            return timeout;
        }
        let mut b = [0u8; 1];
        match self.link.read_exact(&mut b, self.options.sync_timeout) {
            Ok(()) if b[0] == ACK => {
                self.state = LinkState::Bootloader;
                TargetError::BrownOut {
                    stage: ctx.stage,
                    address: ctx.address,
                }
            }
            _ => {
                self.state = LinkState::Unsynced;
                timeout
            }
        }
    }

    /// Sends a command and its complement and reads the ACK.
    pub(super) fn command(&mut self, ctx: Ctx) -> Result<(), Fail> {
        self.send(ctx, &command_frame(ctx.cmd))?;
        let t = self.options.ack_timeout;
        self.ack_raw(ctx, t, "to the command byte")
    }

    /// A refused command byte: readout protection if the chip is known to be locked.
    pub(super) fn refused(&self, f: Fail, ctx: Ctx) -> TargetError {
        match f {
            Fail::Error(e) => e,
            Fail::Refused => match self.lock {
                Some(level @ (LockLevel::Readout | LockLevel::Permanent)) => {
                    TargetError::AlreadyLocked {
                        stage: ctx.stage,
                        level,
                        address: ctx.address,
                    }
                }
                None | Some(LockLevel::None) => TargetError::Nack {
                    stage: ctx.stage,
                    address: ctx.address,
                },
            },
        }
    }
}

fn at(address: Option<u32>) -> String {
    address
        .map(|a| format!(" at 0x{a:08x}"))
        .unwrap_or_default()
}
