//! The driver: [`Stm32UartTarget`], a [`Target`] over the STM32 ROM bootloader's UART
//! protocol (AN3155), with the provisioning agent reached by Go on the same link.

mod agent;
mod bootloader;
mod erase;
mod link;
mod lock;
mod memory;

use std::fmt;
use std::time::Duration;

use flashgate_agent::Message;
use flashgate_serial::{SerialError, Transport};
use flashgate_target::{
    Capabilities, Capability, ChallengeRequest, ChallengeResponse, DeviceInfo, Location, LockLevel,
    LockPermission, LockState, MemoryRegion, Stage, Target, TargetError,
};
use zeroize::Zeroizing;

pub use bootloader::{BootloaderEntry, BootloaderInfo};

use crate::part::{Part, PARTS};
use crate::protocol::*;

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

    /// A chip this driver set or read back as locked is not erased or
    /// written again: the bootloader would refuse, or mass-erase it.
    fn refuse_if_locked(&self, stage: Stage) -> Result<(), TargetError> {
        match self.lock {
            Some(level @ (LockLevel::Readout | LockLevel::Permanent)) => {
                Err(TargetError::AlreadyLocked {
                    stage,
                    level,
                    address: None,
                })
            }
            Some(LockLevel::None) | None => Ok(()),
        }
    }
}

fn us(v: u32) -> Duration {
    Duration::from_micros(u64::from(v))
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
        self.refuse_if_locked(stage)?;
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
        self.refuse_if_locked(stage)?;
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
