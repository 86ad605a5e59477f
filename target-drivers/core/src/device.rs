//! What a device says about itself, and its lock state.

use crate::{LockLevel, Stage, TargetError};

/// A contiguous memory area of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryRegion {
    /// First address.
    pub base: u32,
    /// Size in bytes.
    pub size: u32,
    /// Programming granularity in bytes.
    pub page_size: u32,
}

impl MemoryRegion {
    /// One past the last address, as u64 so that a region ending at 4 GiB fits.
    pub fn end(&self) -> u64 {
        u64::from(self.base) + u64::from(self.size)
    }

    /// Whether `[address, address + length)` lies entirely inside the region.
    pub fn contains_range(&self, address: u32, length: u32) -> bool {
        address >= self.base && u64::from(address) + u64::from(length) <= self.end()
    }
}

/// Lock state as read back from the device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockState {
    /// The level the raw bytes mean.
    pub level: LockLevel,
    /// The bytes read back (e.g. the AVR lock byte, the STM32 RDP option byte), for the audit record.
    pub raw: Vec<u8>,
}

/// Identity of the device on the programming interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceInfo {
    /// Device type name as the driver knows it, e.g. `atmega328p`, `sim-secure-mcu`.
    pub device_type: String,
    /// Factory unique ID.
    pub uid: Vec<u8>,
    /// Device signature / part ID (AVR 3-byte signature, STM32 DBGMCU_IDCODE, ...).
    pub signature: Vec<u8>,
    /// Main flash.
    pub flash: MemoryRegion,
    /// Lock state at identify time.
    pub lock: LockState,
}

impl DeviceInfo {
    /// Fails with [`TargetError::WrongDevice`] unless the device type is `expected`.
    pub fn expect_device_type(&self, expected: &str) -> Result<(), TargetError> {
        if self.device_type == expected {
            Ok(())
        } else {
            Err(TargetError::WrongDevice {
                expected: expected.to_owned(),
                found: self.device_type.clone(),
            })
        }
    }

    /// Fails with [`TargetError::AlreadyLocked`] (stage identify) if the board arrived locked.
    ///
    /// A board that is already locked may be a provisioned unit coming round again;
    /// erasing it would destroy an identity that has an audit record, so refuse it.
    pub fn expect_unlocked(&self) -> Result<(), TargetError> {
        match self.lock.level {
            LockLevel::None => Ok(()),
            level @ (LockLevel::Readout | LockLevel::Permanent) => {
                Err(TargetError::AlreadyLocked {
                    stage: Stage::Identify,
                    level,
                    address: None,
                })
            }
        }
    }
}

/// Permission to lock one device.
///
/// Locking is irreversible or destroys the unit's keys, so [`Target::set_lock`](crate::Target::set_lock)
/// takes this value, which has no `Default`, no public fields, is neither `Clone` nor `Copy`,
/// and is consumed by the call. It is made only from the [`ProvenDevice`](crate::ProvenDevice)
/// that [`verify_challenge_reply`](crate::verify_challenge_reply) returns when the device
/// proved its key over the programmed firmware.
///
/// There is no other way to make one:
/// ```compile_fail
/// use flashgate_target::{LockLevel, LockPermission};
/// let p = LockPermission { level: LockLevel::Readout };
/// ```
/// ```compile_fail
/// use flashgate_target::{LockLevel, LockPermission, ProvenDevice};
/// let forged = ProvenDevice { uid: vec![1] };
/// let p = LockPermission::after(forged, LockLevel::Readout);
/// ```
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a LockPermission does nothing until it is passed to Target::set_lock"]
pub struct LockPermission {
    level: LockLevel,
}

impl LockPermission {
    /// Allows one `set_lock` call at `level` on the device that `proof` is
    /// of. Make it only once every stage before the lock has passed: a unit
    /// that failed anything must never be locked.
    pub fn after(proof: crate::ProvenDevice, level: LockLevel) -> Self {
        let _ = proof;
        LockPermission { level }
    }

    /// A permission without a proof, for driver tests that lock a simulated
    /// chip directly. Not in a build without the `test-support` feature.
    #[cfg(any(test, feature = "test-support"))]
    pub fn unchecked(level: LockLevel) -> Self {
        LockPermission { level }
    }

    /// The level this permission allows.
    pub fn level(&self) -> LockLevel {
        self.level
    }
}

/// An irreversible step that is not a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destructive {
    /// Readout-protection regression (STM32 RDP 1 → 0), which mass-erases
    /// the flash and every key stored in it.
    RdpRegression,
}

impl std::fmt::Display for Destructive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RdpRegression => "a readout-protection regression (erases the chip)",
        })
    }
}

/// Permission for one irreversible step that is not a lock, granted on
/// purpose by whoever reworks the board: like [`LockPermission`] it is
/// neither `Clone` nor `Copy` and is consumed by the call it allows, so
/// every such step is visible at a call site that names it.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a DestructivePermission does nothing until it is passed to the step it allows"]
pub struct DestructivePermission {
    step: Destructive,
}

impl DestructivePermission {
    /// Grants one `step`. Never part of a provisioning flow.
    pub fn grant(step: Destructive) -> Self {
        Self { step }
    }

    /// The step this permission allows.
    pub fn step(&self) -> Destructive {
        self.step
    }
}
