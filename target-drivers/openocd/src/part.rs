//! What the debug port adds to the STM32 parts table
//! ([`flashgate_stm32_uart::part`], shared with the UART driver): where the
//! part's debug registers are and which OpenOCD flash driver programs it.
//!
//! Adding a part: its row in the STM32 table (memory map, option bytes,
//! RDP scheme, reserved key store page), then a row here (its DEV_ID, the
//! OpenOCD target config and flash driver, the FPEC's OBR), then a
//! simulator or a board to prove it.

use flashgate_stm32_uart::part::Part;

/// DBGMCU_IDCODE on Cortex-M3/M4 STM32 parts.
pub const DBGMCU_IDCODE: u32 = 0xE004_2000;

/// One part as the debug port sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct DebugPart {
    /// The memory map, option bytes and RDP scheme.
    pub part: &'static Part,
    /// OpenOCD's target config for it.
    pub target_cfg: &'static str,
    /// OpenOCD's flash driver (its `lock`/`unlock`/`mass_erase` commands).
    pub flash_driver: &'static str,
    /// FLASH_OBR: the option bytes as loaded at the last reset.
    pub flash_obr: u32,
    /// The bit of FLASH_OBR that says readout protection is active.
    pub obr_rdprt: u32,
}

/// STM32F10x medium density (DEV_ID 0x410).
pub static STM32F103_MD: DebugPart = DebugPart {
    part: &flashgate_stm32_uart::part::STM32F103_MD,
    target_cfg: "target/stm32f1x.cfg",
    flash_driver: "stm32f1x",
    flash_obr: 0x4002_201C,
    obr_rdprt: 1 << 1,
};

/// Every part the driver knows.
pub static DEBUG_PARTS: &[&DebugPart] = &[&STM32F103_MD];

impl DebugPart {
    /// The part whose DEV_ID (DBGMCU_IDCODE bits 11:0) is `dev_id`.
    #[must_use]
    pub fn by_dev_id(dev_id: u16) -> Option<&'static DebugPart> {
        DEBUG_PARTS.iter().copied().find(|p| p.part.pid == dev_id)
    }
}
