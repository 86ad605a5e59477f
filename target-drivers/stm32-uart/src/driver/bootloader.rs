//! The bootloader itself: what it says about itself (Get, Get Version, Get ID), the 0x7F
//! sync, and the way back to it once the application owns the UART (a reset through the
//! transport, or the agent's EnterBootloader), with the link hooks around it.

use flashgate_agent::Message;
use flashgate_serial::{SerialError, Transport};
use flashgate_target::{Stage, TargetError};

use super::{Ctx, LinkState, Stm32UartTarget};
use crate::protocol::*;

/// How the driver gets the board back into its ROM bootloader once the application owns
/// the UART (after the challenge, to set readout protection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BootloaderEntry {
    /// [`Transport::pulse_reset`]: the fixture resets the board with BOOT0 high (its
    /// DTR/RTS lines, see [`crate::fixture::FixtureLink`]).
    #[default]
    Reset,
    /// The agent's EnterBootloader message (docs/AGENT.md): the firmware resets into the
    /// bootloader itself.
    Agent,
}

/// What the bootloader said in identify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootloaderInfo {
    /// Protocol version from Get (e.g. 0x22, 0x31).
    pub version: u8,
    /// Commands from Get.
    pub commands: Vec<u8>,
    /// The two option bytes of Get Version.
    pub version_options: [u8; 2],
    /// Product ID.
    pub pid: u16,
}

impl<T: Transport> Stm32UartTarget<T> {
    /// The 0x7F sync, with retries. A NACK also proves a bootloader: it was already
    /// synchronised and took an earlier 0x7F as a command byte.
    pub(super) fn sync(&mut self, stage: Stage) -> Result<(), TargetError> {
        let ctx = Ctx {
            stage,
            address: None,
            cmd: SYNC,
        };
        let attempts = self.options.sync_attempts.max(1);
        for _ in 0..attempts {
            self.send(ctx, &[SYNC])?;
            let mut b = [0u8; 1];
            match self.link.read_exact(&mut b, self.options.sync_timeout) {
                Ok(()) if b[0] == ACK || b[0] == NACK => {
                    self.state = LinkState::Bootloader;
                    return Ok(());
                }
                Ok(()) | Err(SerialError::Timeout(_)) => {}
                Err(e) => return Err(self.serial_error(ctx, e)),
            }
        }
        self.state = LinkState::Unsynced;
        Err(TargetError::Protocol {
            stage,
            detail: format!(
                "no bootloader answers the 0x7F sync ({attempts} tries, {} ms each): check that BOOT0 is high and the board was reset into the system bootloader, that TX and RX are not swapped, and that the port runs 8E1 at a rate the bootloader can detect",
                self.options.sync_timeout.as_millis()
            ),
        })
    }

    /// Makes sure the bootloader is listening: after Go (the application has the UART) or a
    /// lost sync, the board is reset through the transport and synchronised again.
    pub(super) fn ensure_bootloader(&mut self, stage: Stage) -> Result<(), TargetError> {
        let agent = self.options.bootloader_entry == BootloaderEntry::Agent;
        match self.state {
            LinkState::Bootloader => Ok(()),
            LinkState::Application if agent => self.agent_enter_bootloader(stage),
            LinkState::Unsynced if agent => {
                // Perhaps the bootloader is there; else perhaps the application is.
                let ctx = Ctx {
                    stage,
                    address: None,
                    cmd: SYNC,
                };
                self.run_hook(false, ctx)?;
                match self.sync(stage) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        self.run_hook(true, ctx)?;
                        self.agent_enter_bootloader(stage).map_err(|_| e)
                    }
                }
            }
            LinkState::Application | LinkState::Unsynced => {
                let ctx = Ctx {
                    stage,
                    address: None,
                    cmd: SYNC,
                };
                if let Err(e) = self.link.pulse_reset() {
                    return Err(self.serial_error(ctx, e));
                }
                self.run_hook(false, ctx)?;
                if let Err(e) = self.link.clear_input() {
                    return Err(self.serial_error(ctx, e));
                }
                self.agent_checked = false;
                self.sync(stage)
            }
        }
    }

    /// EnterBootloader to the agent, then the sync once the firmware has reset.
    fn agent_enter_bootloader(&mut self, stage: Stage) -> Result<(), TargetError> {
        let ctx = Ctx {
            stage,
            address: None,
            cmd: SYNC,
        };
        self.agent_exchange(stage, &Message::EnterBootloader)?
            .into_enter_bootloader_reply()
            .map_err(|e| e.at_stage(stage))?;
        self.state = LinkState::Unsynced;
        self.agent_checked = false;
        self.run_hook(false, ctx)?;
        if let Err(e) = self.link.clear_input() {
            return Err(self.serial_error(ctx, e));
        }
        self.sync(stage)
    }

    pub(super) fn run_hook(&mut self, to_app: bool, ctx: Ctx) -> Result<(), TargetError> {
        let hook = if to_app {
            self.to_application.as_mut()
        } else {
            self.to_bootloader.as_mut()
        };
        if let Some(h) = hook {
            if let Err(e) = h(&mut self.link) {
                return Err(self.serial_error(ctx, e));
            }
        }
        Ok(())
    }

    /// After a command that resets the chip: sync again.
    pub(super) fn after_reset(&mut self, stage: Stage) -> Result<(), TargetError> {
        self.state = LinkState::Unsynced;
        self.agent_checked = false;
        let ctx = Ctx {
            stage,
            address: None,
            cmd: SYNC,
        };
        self.run_hook(false, ctx)?;
        self.sync(stage)
    }

    /// Get, Get Version, Get ID.
    pub(super) fn bootloader_info(&mut self, stage: Stage) -> Result<BootloaderInfo, TargetError> {
        let mut ctx = Ctx {
            stage,
            address: None,
            cmd: CMD_GET,
        };
        self.command(ctx).map_err(|f| self.refused(f, ctx))?;
        let t = self.options.ack_timeout;
        let n = self.recv(ctx, 1, t)?[0];
        let body = self.recv(ctx, usize::from(n) + 1, t)?;
        self.ack(ctx, t, "after the command list")?;
        let version = body[0];
        let commands = body[1..].to_vec();

        ctx.cmd = CMD_GET_VERSION;
        self.command(ctx).map_err(|f| self.refused(f, ctx))?;
        let gv = self.recv(ctx, 3, t)?;
        self.ack(ctx, t, "after the version")?;

        ctx.cmd = CMD_GET_ID;
        self.command(ctx).map_err(|f| self.refused(f, ctx))?;
        let n = self.recv(ctx, 1, t)?[0];
        let id = self.recv(ctx, usize::from(n) + 1, t)?;
        self.ack(ctx, t, "after the product ID")?;
        if id.len() < 2 {
            return Err(TargetError::Protocol {
                stage,
                detail: format!(
                    "Get ID returned {} byte(s), a PID needs 2: the bootloader is not one this driver knows",
                    id.len()
                ),
            });
        }
        Ok(BootloaderInfo {
            version,
            commands,
            version_options: [gv[1], gv[2]],
            pid: u16::from_be_bytes([id[0], id[1]]),
        })
    }
}
