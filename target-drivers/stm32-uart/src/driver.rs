//! The driver: [`Stm32UartTarget`], a [`Target`] over the STM32 ROM bootloader's UART
//! protocol (AN3155), with the provisioning agent reached by Go on the same link.

use std::fmt;
use std::time::Duration;

use flashgate_agent::{Decoder, Message, HEADER_LEN, MAX_PAYLOAD, SOF};
use flashgate_serial::{SerialError, Transport};
use flashgate_target::{
    Capabilities, Capability, ChallengeRequest, ChallengeResponse, Destructive,
    DestructivePermission, DeviceInfo, Location, LockLevel, LockPermission, LockState,
    MemoryRegion, Stage, Target, TargetError,
};
use zeroize::Zeroizing;

use crate::part::{Part, RdpLevel, PARTS};
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

/// Driver settings. [`Default`] suits a real port at 115200 baud and the simulator alike.
#[derive(Debug, Clone)]
pub struct Stm32Options {
    /// The part the job is for; identify fails with `WrongDevice` on any other PID.
    /// `None` accepts every part in [`PARTS`].
    pub part: Option<&'static Part>,
    /// Bootloader baud rate (only used to size timeouts for long transfers).
    pub baud: u32,
    /// Whether `connect` first resets the board through the transport (DTR/RTS to NRST with
    /// BOOT0 held high), so that the bootloader waits for a fresh sync.
    pub reset_on_connect: bool,
    /// How many 0x7F sync bytes to try.
    pub sync_attempts: u32,
    /// How long to wait for the answer to one sync byte.
    pub sync_timeout: Duration,
    /// How long to wait for an ACK that needs no flash work.
    pub ack_timeout: Duration,
    /// Where Go jumps to start the application; the flash base when `None`.
    pub app_address: Option<u32>,
    /// How long the agent may take to answer one frame (signing included).
    pub agent_timeout: Duration,
    /// How to get from the application back to the bootloader.
    pub bootloader_entry: BootloaderEntry,
}

impl Default for Stm32Options {
    fn default() -> Self {
        Stm32Options {
            part: None,
            baud: 115_200,
            reset_on_connect: true,
            sync_attempts: 4,
            sync_timeout: Duration::from_millis(250),
            ack_timeout: Duration::from_secs(1),
            app_address: None,
            agent_timeout: Duration::from_secs(5),
            bootloader_entry: BootloaderEntry::Reset,
        }
    }
}

/// Called with the transport when the link changes hands between the bootloader and the
/// application (e.g. to switch a real port between 8E1 and the agent's 8N1).
pub type LinkHook<T> = Box<dyn FnMut(&mut T) -> Result<(), SerialError> + Send>;

/// Who is on the other end of the UART.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Nothing known (before connect, after a timeout or a reset).
    Unsynced,
    /// The bootloader, synchronised.
    Bootloader,
    /// The application started by Go (the provisioning agent).
    Application,
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

/// Failure inside one exchange, before it becomes a [`TargetError`].
enum Fail {
    /// The command byte itself was answered with NACK.
    Refused,
    /// Anything else, already a driver error.
    Error(TargetError),
}

impl From<TargetError> for Fail {
    fn from(e: TargetError) -> Self {
        Fail::Error(e)
    }
}

/// Where an exchange is, for errors.
#[derive(Clone, Copy)]
struct Ctx {
    stage: Stage,
    address: Option<u32>,
    cmd: u8,
}

/// A [`Target`] driving the STM32 system bootloader over a UART [`Transport`].
///
/// - `connect`: optional reset through the transport, then the 0x7F sync with retries.
/// - `identify`: Get, Get Version, Get ID (PID → part), the option bytes (RDP), the 96-bit
///   unique ID and the flash-size register, all with Read Memory.
/// - `erase`: mass erase (Erase 0xFF or Extended Erase 0xFFFF as the part offers);
///   [`erase_range`](Stm32UartTarget::erase_range) erases pages or sectors.
/// - `program`: Write Memory in 256-byte blocks; `read` (and so verify and blank check):
///   Read Memory in 256-byte blocks.
/// - `store_secret`: `flash:`, `keystore:` (F103: the reserved last flash page; F4: OTP) and
///   `otp:` (F4) locations, written only where blank, read back and compared.
/// - `challenge`: Go to the application, then `flashgate-agent` frames on the same link.
/// - `set_lock`: Readout Protect (RDP level 1); the chip resets and the driver syncs again.
///   After a challenge the application owns the UART, so the driver first resets the board
///   back into the bootloader through the transport.
/// - `read_lock`: Read Memory of the option bytes; refused means RDP is active.
///
/// Readout Unprotect, which mass-erases the chip, is not reachable through [`Target`]:
/// call [`readout_unprotect_erasing_everything`](Stm32UartTarget::readout_unprotect_erasing_everything).
pub struct Stm32UartTarget<T: Transport> {
    link: T,
    options: Stm32Options,
    state: LinkState,
    part: Option<&'static Part>,
    info: Option<BootloaderInfo>,
    flash_size: u32,
    uid: Vec<u8>,
    lock: Option<LockLevel>,
    agent_checked: bool,
    to_application: Option<LinkHook<T>>,
    to_bootloader: Option<LinkHook<T>>,
}

impl<T: Transport> fmt::Debug for Stm32UartTarget<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stm32UartTarget")
            .field("state", &self.state)
            .field("part", &self.part.map(|p| p.device_type))
            .field("info", &self.info)
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Stm32UartTarget<T> {
    /// A driver on `link` with default options.
    pub fn new(link: T) -> Self {
        Stm32UartTarget::with_options(link, Stm32Options::default())
    }

    /// A driver on `link`.
    pub fn with_options(link: T, options: Stm32Options) -> Self {
        Stm32UartTarget {
            link,
            options,
            state: LinkState::Unsynced,
            part: None,
            info: None,
            flash_size: 0,
            uid: Vec::new(),
            lock: None,
            agent_checked: false,
            to_application: None,
            to_bootloader: None,
        }
    }

    /// Hooks run when Go hands the UART to the application, and before the driver talks to
    /// the bootloader again after a reset (e.g. to switch parity on a real port).
    pub fn set_link_hooks(&mut self, to_application: LinkHook<T>, to_bootloader: LinkHook<T>) {
        self.to_application = Some(to_application);
        self.to_bootloader = Some(to_bootloader);
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut T {
        &mut self.link
    }

    /// Gives the transport back.
    pub fn into_transport(self) -> T {
        self.link
    }

    /// Who the driver believes is on the link.
    pub fn link_state(&self) -> LinkState {
        self.state
    }

    /// The part found by identify.
    pub fn part(&self) -> Option<&'static Part> {
        self.part
    }

    /// What the bootloader reported in identify.
    pub fn bootloader(&self) -> Option<&BootloaderInfo> {
        self.info.as_ref()
    }

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

    // ---- link ----

    fn serial_error(&mut self, ctx: Ctx, e: SerialError) -> TargetError {
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

    fn send(&mut self, ctx: Ctx, bytes: &[u8]) -> Result<(), TargetError> {
        match self.link.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.serial_error(ctx, e)),
        }
    }

    fn recv(&mut self, ctx: Ctx, n: usize, timeout: Duration) -> Result<Vec<u8>, TargetError> {
        let mut buf = vec![0u8; n];
        match self.link.read_exact(&mut buf, timeout) {
            Ok(()) => Ok(buf),
            Err(e) => Err(self.serial_error(ctx, e)),
        }
    }

    fn data_timeout(&self, bytes: usize) -> Duration {
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
    fn ack(&mut self, ctx: Ctx, timeout: Duration, what: &str) -> Result<(), TargetError> {
        self.ack_raw(ctx, timeout, what).map_err(|f| match f {
            Fail::Refused => TargetError::Nack {
                stage: ctx.stage,
                address: ctx.address,
            },
            Fail::Error(e) => e,
        })
    }

    /// An ACK after flash work: a timeout is probed for a reset (brown-out).
    fn ack_or_brownout(
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
    fn command(&mut self, ctx: Ctx) -> Result<(), Fail> {
        self.send(ctx, &command_frame(ctx.cmd))?;
        let t = self.options.ack_timeout;
        self.ack_raw(ctx, t, "to the command byte")
    }

    /// A refused command byte: readout protection if the chip is known to be locked.
    fn refused(&self, f: Fail, ctx: Ctx) -> TargetError {
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

    /// The 0x7F sync, with retries. A NACK also proves a bootloader: it was already
    /// synchronised and took an earlier 0x7F as a command byte.
    fn sync(&mut self, stage: Stage) -> Result<(), TargetError> {
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
    fn ensure_bootloader(&mut self, stage: Stage) -> Result<(), TargetError> {
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

    fn run_hook(&mut self, to_app: bool, ctx: Ctx) -> Result<(), TargetError> {
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
    fn after_reset(&mut self, stage: Stage) -> Result<(), TargetError> {
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

    fn require_part(&self, stage: Stage) -> Result<&'static Part, TargetError> {
        self.part.ok_or_else(|| TargetError::InvalidRequest {
            stage,
            detail: "the part is not known yet: call identify first".to_owned(),
        })
    }

    fn check_flash(&self, stage: Stage, address: u32, length: u32) -> Result<(), TargetError> {
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

    // ---- commands ----

    /// Get, Get Version, Get ID.
    fn bootloader_info(&mut self, stage: Stage) -> Result<BootloaderInfo, TargetError> {
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

    /// Read Memory of up to 256 bytes.
    fn read_block(&mut self, stage: Stage, address: u32, n: usize) -> Result<Vec<u8>, Fail> {
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
    fn read_mem(&mut self, stage: Stage, address: u32, buf: &mut [u8]) -> Result<(), TargetError> {
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
    fn write_mem(&mut self, stage: Stage, address: u32, data: &[u8]) -> Result<(), TargetError> {
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

    /// Lock state by Read Memory of the option bytes (refused twice = readout protection).
    fn probe_lock(
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

    /// Frames to the agent and its one reply.
    fn agent_exchange(&mut self, stage: Stage, request: &Message) -> Result<Message, TargetError> {
        let ctx = Ctx {
            stage,
            address: None,
            cmd: CMD_GO,
        };
        let frame = request.encode().map_err(|e| TargetError::InvalidRequest {
            stage,
            detail: e.to_string(),
        })?;
        self.send(ctx, &frame)?;
        let mut decoder = Decoder::new();
        // Hunt for the start byte (a little garbage from the reset is tolerated).
        let t = self.options.agent_timeout;
        let mut skipped = 0;
        loop {
            let b = self.recv(ctx, 1, t)?;
            if b[0] == SOF {
                decoder.feed(&b);
                break;
            }
            skipped += 1;
            if skipped > 64 {
                return Err(TargetError::Protocol {
                    stage,
                    detail: "the application sends bytes but no agent frame: check that the firmware runs the flashgate agent at 115200 8N1".to_owned(),
                });
            }
        }
        let head = self.recv(ctx, HEADER_LEN - 1, self.options.ack_timeout)?;
        decoder.feed(&head);
        let len = usize::from(u16::from_le_bytes([head[1], head[2]])).min(MAX_PAYLOAD);
        let rest = self.recv(ctx, len + 2, self.data_timeout(len + 2))?;
        decoder.feed(&rest);
        match decoder.next_frame() {
            Some(Ok(f)) => Message::decode(&f).map_err(|e| e.at_stage(stage)),
            Some(Err(e)) => Err(e.at_stage(stage)),
            None => Err(TargetError::Protocol {
                stage,
                detail: "the agent's reply frame is incomplete: check the UART wiring".to_owned(),
            }),
        }
    }
}

fn us(v: u32) -> Duration {
    Duration::from_micros(u64::from(v))
}

fn at(address: Option<u32>) -> String {
    address
        .map(|a| format!(" at 0x{a:08x}"))
        .unwrap_or_default()
}

/// What the STM32 bootloader driver can do on any board: readout
/// protection (RDP level 1) but not RDP level 2, which would disable the
/// bootloader for good, and no on-chip key generation.
pub const CAPABILITIES: Capabilities = Capabilities::empty()
    .with(Capability::ProgramFlash)
    .with(Capability::ReadFlash)
    .with(Capability::ReadUid)
    .with(Capability::StoreSecret)
    .with(Capability::AnswerChallenge)
    .with(Capability::SetLock)
    .with(Capability::ReadLock);

impl<T: Transport> Target for Stm32UartTarget<T> {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn connect(&mut self) -> Result<(), TargetError> {
        let stage = Stage::Connect;
        let ctx = Ctx {
            stage,
            address: None,
            cmd: SYNC,
        };
        self.state = LinkState::Unsynced;
        self.agent_checked = false;
        if self.options.reset_on_connect {
            if let Err(e) = self.link.pulse_reset() {
                return Err(self.serial_error(ctx, e));
            }
        }
        self.run_hook(false, ctx)?;
        if let Err(e) = self.link.clear_input() {
            return Err(self.serial_error(ctx, e));
        }
        self.sync(stage)
    }

    fn identify(&mut self) -> Result<DeviceInfo, TargetError> {
        let stage = Stage::Identify;
        self.ensure_bootloader(stage)?;
        let info = self.bootloader_info(stage)?;
        let expected = || match self.options.part {
            Some(p) => p.device_type.to_owned(),
            None => PARTS
                .iter()
                .map(|p| format!("{} (PID 0x{:03x})", p.device_type, p.pid))
                .collect::<Vec<_>>()
                .join(" or "),
        };
        let part = match Part::by_pid(info.pid) {
            Some(p) => p,
            None => {
                return Err(TargetError::WrongDevice {
                    expected: expected(),
                    found: format!(
                        "STM32 PID 0x{:03x}, which this driver does not know",
                        info.pid
                    ),
                })
            }
        };
        if let Some(want) = self.options.part {
            if !std::ptr::eq(want, part) {
                return Err(TargetError::WrongDevice {
                    expected: expected(),
                    found: format!("{} (PID 0x{:03x})", part.device_type, info.pid),
                });
            }
        }
        if !info.commands.contains(&part.erase_command)
            || !info.commands.contains(&CMD_READ)
            || !info.commands.contains(&CMD_WRITE)
        {
            return Err(TargetError::Protocol {
                stage,
                detail: format!(
                    "the bootloader (version 0x{:02x}) does not list {}, Read Memory and Write Memory in Get: it is not the {} bootloader this driver knows",
                    info.version,
                    command_name(part.erase_command),
                    part.device_type
                ),
            });
        }
        self.part = Some(part);
        self.flash_size = part.flash_size;
        let lock = self.probe_lock(stage, &info)?;
        let mut uid = Vec::new();
        if lock.level == LockLevel::None {
            let mut u = [0u8; 12];
            self.read_mem(stage, part.uid_address, &mut u)?;
            uid = u.to_vec();
            let mut f = [0u8; 2];
            self.read_mem(stage, part.flash_size_address, &mut f)?;
            let kib = u32::from(u16::from_le_bytes(f));
            if kib != 0 && kib != 0xFFFF {
                self.flash_size = (kib * 1024).min(part.flash_size);
            }
        }
        self.uid = uid.clone();
        let signature = info.pid.to_be_bytes().to_vec();
        self.info = Some(info);
        Ok(DeviceInfo {
            device_type: part.device_type.to_owned(),
            uid,
            signature,
            flash: MemoryRegion {
                base: part.flash_base,
                size: self.flash_size,
                page_size: MAX_BLOCK as u32,
            },
            lock,
        })
    }

    fn erase(&mut self) -> Result<(), TargetError> {
        let stage = Stage::Erase;
        self.ensure_bootloader(stage)?;
        let part = self.require_part(stage)?;
        if let Some(level @ (LockLevel::Readout | LockLevel::Permanent)) = self.lock {
            return Err(TargetError::AlreadyLocked {
                stage,
                level,
                address: None,
            });
        }
        let ctx = Ctx {
            stage,
            address: None,
            cmd: part.erase_command,
        };
        self.command(ctx).map_err(|f| self.refused(f, ctx))?;
        let frame: &[u8] = if part.erase_command == CMD_ERASE {
            &[0xFF, 0x00]
        } else {
            &[0xFF, 0xFF, 0x00]
        };
        self.send(ctx, frame)?;
        let timeout = self.options.ack_timeout + us(4 * part.timing.mass_erase_us);
        self.ack_or_brownout(ctx, timeout, "after the mass erase")
    }

    fn program(&mut self, address: u32, data: &[u8]) -> Result<(), TargetError> {
        let stage = Stage::Program;
        self.ensure_bootloader(stage)?;
        let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.check_flash(stage, address, length)?;
        self.write_mem(stage, address, data)
    }

    fn read(&mut self, address: u32, buf: &mut [u8]) -> Result<(), TargetError> {
        let stage = Stage::Verify;
        self.ensure_bootloader(stage)?;
        let length = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        self.check_flash(stage, address, length)?;
        self.read_mem(stage, address, buf)
    }

    fn store_secret(&mut self, at: Location, data: &[u8]) -> Result<(), TargetError> {
        let stage = Stage::StoreSecret;
        self.ensure_bootloader(stage)?;
        let part = self.require_part(stage)?;
        if let Some(level @ (LockLevel::Readout | LockLevel::Permanent)) = self.lock {
            return Err(TargetError::AlreadyLocked {
                stage,
                level,
                address: None,
            });
        }
        let address = part
            .location_address(at, data.len())
            .map_err(|detail| TargetError::InvalidRequest { stage, detail })?;
        if data.is_empty() {
            return Ok(());
        }
        // OTP blocks locked by their lock byte refuse writes for good.
        if let Some(o) = part.otp {
            if (o.base..o.base + o.data_len()).contains(&address) {
                let first = (address - o.base) / o.block_size;
                let last = (address + data.len() as u32 - 1 - o.base) / o.block_size;
                let mut locks = vec![0u8; (last - first + 1) as usize];
                self.read_mem(stage, o.lock_base + first, &mut locks)?;
                if locks.contains(&0x00) {
                    return Err(TargetError::InvalidRequest {
                        stage,
                        detail: format!(
                            "{at} lies in a locked OTP block: choose an unused, unlocked OTP block in the job"
                        ),
                    });
                }
            }
        }
        // Only blank storage is written: flash must have been erased, OTP never used.
        let mut current = Zeroizing::new(vec![0u8; data.len()]);
        self.read_mem(stage, address, &mut current)?;
        if current.iter().any(|&b| b != 0xFF) {
            let what = if at.space == flashgate_target::Space::Otp
                || part.otp.is_some_and(|o| o.range().contains(&address))
            {
                "it is OTP that was already written, which can never be rewritten: choose an unused OTP block in the job"
            } else {
                "erase the chip before storing secrets"
            };
            return Err(TargetError::InvalidRequest {
                stage,
                detail: format!("{at} is not blank: {what}"),
            });
        }
        self.write_mem(stage, address, data)?;
        let mut back = Zeroizing::new(vec![0u8; data.len()]);
        self.read_mem(stage, address, &mut back)?;
        if back.as_slice() != data {
            return Err(TargetError::SecretMismatch { location: at });
        }
        Ok(())
    }

    fn challenge(&mut self, request: &ChallengeRequest) -> Result<ChallengeResponse, TargetError> {
        let stage = Stage::Challenge;
        if self.state != LinkState::Application {
            self.ensure_bootloader(stage)?;
            let part = self.require_part(stage)?;
            let address = self.options.app_address.unwrap_or(part.flash_base);
            let ctx = Ctx {
                stage,
                address: Some(address),
                cmd: CMD_GO,
            };
            self.command(ctx).map_err(|f| self.refused(f, ctx))?;
            self.send(ctx, &address_frame(address))?;
            self.ack(ctx, self.options.ack_timeout, "after the address")?;
            self.state = LinkState::Application;
            self.agent_checked = false;
            self.run_hook(true, ctx)?;
        }
        if !self.agent_checked {
            let (_, uid) = self
                .agent_exchange(stage, &Message::Hello)?
                .into_hello_reply()
                .map_err(|e| e.at_stage(stage))?;
            if !self.uid.is_empty() && uid != self.uid {
                return Err(TargetError::Protocol {
                    stage,
                    detail: format!(
                        "the agent reports UID {} but the bootloader read {}: check that the UART goes to the same board",
                        hex::encode(&uid),
                        hex::encode(&self.uid)
                    ),
                });
            }
            self.agent_checked = true;
        }
        self.agent_exchange(stage, &Message::Challenge(request.clone()))?
            .into_challenge_reply()
            .map_err(|e| e.at_stage(stage))
    }

    fn set_lock(&mut self, permission: LockPermission) -> Result<(), TargetError> {
        let stage = Stage::Lock;
        match permission.level() {
            LockLevel::Readout => {}
            LockLevel::None => {
                return Err(TargetError::InvalidRequest {
                    stage,
                    detail: "a lock permission for level none locks nothing: allow readout".to_owned(),
                })
            }
            LockLevel::Permanent => {
                return Err(TargetError::InvalidRequest {
                    stage,
                    detail: "the STM32 bootloader driver sets readout protection (RDP level 1) only; RDP level 2 disables the bootloader for good and is not offered: allow readout".to_owned(),
                })
            }
        }
        self.ensure_bootloader(stage)?;
        let part = self.require_part(stage)?;
        let ctx = Ctx {
            stage,
            address: None,
            cmd: CMD_READOUT_PROTECT,
        };
        match self.command(ctx) {
            Ok(()) => {}
            // Readout Protect is refused only while protection is already active.
            Err(Fail::Refused) => {
                self.lock = Some(LockLevel::Readout);
                return Err(TargetError::AlreadyLocked {
                    stage,
                    level: LockLevel::Readout,
                    address: None,
                });
            }
            Err(Fail::Error(e)) => return Err(e),
        }
        let t = self.options.ack_timeout + us(4 * part.timing.option_write_us);
        self.ack(ctx, t, "after setting the option bytes")?;
        // The chip resets to load the new option bytes; read_lock tells what took effect.
        self.lock = None;
        self.after_reset(stage)
    }

    fn read_lock(&mut self) -> Result<LockState, TargetError> {
        let stage = Stage::LockReadback;
        self.ensure_bootloader(stage)?;
        self.require_part(stage)?;
        let info = self.bootloader_info(stage)?;
        self.probe_lock(stage, &info)
    }
}
