//! The driver trait and the fixture trait.

use crate::{
    Capabilities, Capability, ChallengeRequest, ChallengeResponse, DeviceInfo, Location,
    LockPermission, LockState, Stage, TargetError, MISMATCH_WINDOW,
};

/// Chunk size used by the default `verify` and `blank_check`.
const READ_CHUNK: usize = 4096;

/// One board on one channel, driven synchronously.
///
/// The appliance runs each channel on its own blocking thread, so methods block until the
/// device has finished (or failed) and the trait only needs `Send`.
///
/// Call order: [`connect`](Target::connect) first, then [`identify`](Target::identify), then
/// the rest as the job needs. Anything the driver cannot do returns
/// [`TargetError::Unsupported`] through the default methods; check
/// [`capabilities`](Target::capabilities) against the job before touching a board.
///
/// Addresses are bus addresses (flash base included). Every error names the stage it
/// happened in; reads report [`Stage::Verify`] because that is what they are for.
pub trait Target: Send {
    /// What this driver can do.
    fn capabilities(&self) -> Capabilities;

    /// Powers up / attaches to the programming interface.
    fn connect(&mut self) -> Result<(), TargetError> {
        Ok(())
    }

    /// Reads device type, UID, signature, flash geometry and lock state.
    fn identify(&mut self) -> Result<DeviceInfo, TargetError>;

    /// Chip erase: all flash and the key store; also removes a readout lock where the chip allows it.
    fn erase(&mut self) -> Result<(), TargetError> {
        Err(unsupported(Stage::Erase, Capability::ProgramFlash))
    }

    /// Checks that `[address, address + length)` reads as erased (0xFF).
    ///
    /// The default reads the range back with [`read`](Target::read); drivers with an
    /// on-chip blank check should override it.
    fn blank_check(&mut self, address: u32, length: u32) -> Result<(), TargetError> {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut at = u64::from(address);
        let end = at + u64::from(length);
        while at < end {
            let n = usize::try_from((end - at).min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
            let chunk_addr =
                u32::try_from(at).map_err(|_| out_of_range(Stage::BlankCheck, address, length))?;
            self.read(chunk_addr, &mut buf[..n])
                .map_err(|e| e.with_stage(Stage::BlankCheck))?;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0xFF) {
                return Err(TargetError::NotBlank {
                    address: chunk_addr.wrapping_add(i as u32),
                    found: buf[i],
                });
            }
            at += n as u64;
        }
        Ok(())
    }

    /// Programs `data` at `address`. Flash must have been erased; programming can only clear bits.
    fn program(&mut self, address: u32, data: &[u8]) -> Result<(), TargetError> {
        let _ = (address, data);
        Err(unsupported(Stage::Program, Capability::ProgramFlash))
    }

    /// Reads flash at `address` into `buf`.
    fn read(&mut self, address: u32, buf: &mut [u8]) -> Result<(), TargetError> {
        let _ = (address, buf);
        Err(unsupported(Stage::Verify, Capability::ReadFlash))
    }

    /// Reads flash back and compares it with `expected`.
    ///
    /// The default is built on [`read`](Target::read); drivers with an on-chip CRC may override it.
    fn verify(&mut self, address: u32, expected: &[u8]) -> Result<(), TargetError> {
        let mut buf = vec![0u8; READ_CHUNK];
        for (i, want) in expected.chunks(READ_CHUNK).enumerate() {
            let offset = i * READ_CHUNK;
            let chunk_addr = u32::try_from(u64::from(address) + offset as u64).map_err(|_| {
                out_of_range(
                    Stage::Verify,
                    address,
                    u32::try_from(expected.len()).unwrap_or(u32::MAX),
                )
            })?;
            let got = &mut buf[..want.len()];
            self.read(chunk_addr, got)
                .map_err(|e| e.with_stage(Stage::Verify))?;
            if let Some(j) = want.iter().zip(got.iter()).position(|(a, b)| a != b) {
                let end = (j + MISMATCH_WINDOW).min(want.len());
                return Err(TargetError::VerifyMismatch {
                    stage: Stage::Verify,
                    address: chunk_addr.wrapping_add(j as u32),
                    expected: want[j..end].to_vec(),
                    found: got[j..end].to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Writes secret `data` at `at`. Drivers read it back themselves where the device allows
    /// and report [`TargetError::SecretMismatch`] without revealing the contents.
    fn store_secret(&mut self, at: Location, data: &[u8]) -> Result<(), TargetError> {
        let _ = (at, data);
        Err(unsupported(Stage::StoreSecret, Capability::StoreSecret))
    }

    /// Has the device generate a P-256 key pair, keep the private key at `at`, and return the
    /// public key as an uncompressed SEC1 point (`04 || x || y`).
    fn generate_key(&mut self, at: Location) -> Result<[u8; 65], TargetError> {
        let _ = at;
        Err(unsupported(Stage::Keygen, Capability::OnChipKeygen))
    }

    /// Sends a challenge to the on-device agent and returns its reply unverified.
    ///
    /// Verify it with `flashgate_agent::verify_challenge_reply` before granting a
    /// [`LockPermission`].
    fn challenge(&mut self, request: &ChallengeRequest) -> Result<ChallengeResponse, TargetError> {
        let _ = request;
        Err(unsupported(Stage::Challenge, Capability::AnswerChallenge))
    }

    /// Sets the lock bits to the permitted level. Read them back with
    /// [`read_lock`](Target::read_lock) afterwards; success here is not proof.
    fn set_lock(&mut self, permission: LockPermission) -> Result<(), TargetError> {
        let _ = permission;
        Err(unsupported(Stage::Lock, Capability::SetLock))
    }

    /// Reads the lock bits.
    fn read_lock(&mut self) -> Result<LockState, TargetError> {
        Err(unsupported(Stage::LockReadback, Capability::ReadLock))
    }
}

/// Where a channel gets its boards from: a socket, a pogo-pin bed, a handler, a simulator.
pub trait Fixture: Send {
    /// Waits for the next board and returns a driver for it, or `None` when no more boards
    /// will come. An error means the fixture itself failed, not one board.
    fn next_board(&mut self) -> Result<Option<Box<dyn Target>>, TargetError>;

    /// How many more boards this fixture can hand over after the last one,
    /// when it knows (a hand-loaded programmer does: the operator said how
    /// many). The appliance never reserves quota beyond that.
    fn boards_left(&self) -> Option<u64> {
        None
    }
}

impl<T: Target + ?Sized> Target for Box<T> {
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn connect(&mut self) -> Result<(), TargetError> {
        (**self).connect()
    }
    fn identify(&mut self) -> Result<DeviceInfo, TargetError> {
        (**self).identify()
    }
    fn erase(&mut self) -> Result<(), TargetError> {
        (**self).erase()
    }
    fn blank_check(&mut self, address: u32, length: u32) -> Result<(), TargetError> {
        (**self).blank_check(address, length)
    }
    fn program(&mut self, address: u32, data: &[u8]) -> Result<(), TargetError> {
        (**self).program(address, data)
    }
    fn read(&mut self, address: u32, buf: &mut [u8]) -> Result<(), TargetError> {
        (**self).read(address, buf)
    }
    fn verify(&mut self, address: u32, expected: &[u8]) -> Result<(), TargetError> {
        (**self).verify(address, expected)
    }
    fn store_secret(&mut self, at: Location, data: &[u8]) -> Result<(), TargetError> {
        (**self).store_secret(at, data)
    }
    fn generate_key(&mut self, at: Location) -> Result<[u8; 65], TargetError> {
        (**self).generate_key(at)
    }
    fn challenge(&mut self, request: &ChallengeRequest) -> Result<ChallengeResponse, TargetError> {
        (**self).challenge(request)
    }
    fn set_lock(&mut self, permission: LockPermission) -> Result<(), TargetError> {
        (**self).set_lock(permission)
    }
    fn read_lock(&mut self) -> Result<LockState, TargetError> {
        (**self).read_lock()
    }
}

impl<F: Fixture + ?Sized> Fixture for Box<F> {
    fn next_board(&mut self) -> Result<Option<Box<dyn Target>>, TargetError> {
        (**self).next_board()
    }
    fn boards_left(&self) -> Option<u64> {
        (**self).boards_left()
    }
}

fn unsupported(stage: Stage, capability: Capability) -> TargetError {
    TargetError::Unsupported { stage, capability }
}

fn out_of_range(stage: Stage, address: u32, length: u32) -> TargetError {
    TargetError::OutOfRange {
        stage,
        address,
        length,
    }
}
