//! Wire constants of the STM32 system bootloader's USART protocol (ST AN3155).
//!
//! Every command is one byte followed by its complement; the device answers ACK or NACK.
//! Addresses are 4 bytes MSB first followed by their XOR; data blocks are a length byte
//! (N = bytes - 1), the bytes, and the XOR of the length byte and the bytes.

/// Autobaud synchronisation byte the host sends first after a reset.
pub const SYNC: u8 = 0x7F;
/// Acknowledge.
pub const ACK: u8 = 0x79;
/// Negative acknowledge.
pub const NACK: u8 = 0x1F;

/// Get: bootloader version and the list of supported commands.
pub const CMD_GET: u8 = 0x00;
/// Get Version & Read Protection Status.
pub const CMD_GET_VERSION: u8 = 0x01;
/// Get ID: the product ID (PID).
pub const CMD_GET_ID: u8 = 0x02;
/// Read Memory: up to 256 bytes.
pub const CMD_READ: u8 = 0x11;
/// Go: jump to an address.
pub const CMD_GO: u8 = 0x21;
/// Write Memory: up to 256 bytes.
pub const CMD_WRITE: u8 = 0x31;
/// Erase (one-byte page numbers, 0xFF = global erase).
pub const CMD_ERASE: u8 = 0x43;
/// Extended Erase (two-byte page numbers, 0xFFFF = mass erase).
pub const CMD_EXTENDED_ERASE: u8 = 0x44;
/// Write Protect.
pub const CMD_WRITE_PROTECT: u8 = 0x63;
/// Write Unprotect.
pub const CMD_WRITE_UNPROTECT: u8 = 0x73;
/// Readout Protect (RDP level 1).
pub const CMD_READOUT_PROTECT: u8 = 0x82;
/// Readout Unprotect (mass erase, then RDP level 0).
pub const CMD_READOUT_UNPROTECT: u8 = 0x92;

/// Largest block of one Read Memory or Write Memory command.
pub const MAX_BLOCK: usize = 256;

/// XOR of all bytes (the protocol's checksum).
pub fn xor(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, b| a ^ b)
}

/// A command byte and its complement, as sent on the wire.
pub fn command_frame(cmd: u8) -> [u8; 2] {
    [cmd, cmd ^ 0xFF]
}

/// An address frame: 4 bytes MSB first and their XOR.
pub fn address_frame(address: u32) -> [u8; 5] {
    let a = address.to_be_bytes();
    [a[0], a[1], a[2], a[3], xor(&a)]
}

/// The name of a command for messages, e.g. `Write Memory (0x31)`.
pub fn command_name(cmd: u8) -> &'static str {
    match cmd {
        CMD_GET => "Get (0x00)",
        CMD_GET_VERSION => "Get Version (0x01)",
        CMD_GET_ID => "Get ID (0x02)",
        CMD_READ => "Read Memory (0x11)",
        CMD_GO => "Go (0x21)",
        CMD_WRITE => "Write Memory (0x31)",
        CMD_ERASE => "Erase (0x43)",
        CMD_EXTENDED_ERASE => "Extended Erase (0x44)",
        CMD_WRITE_PROTECT => "Write Protect (0x63)",
        CMD_WRITE_UNPROTECT => "Write Unprotect (0x73)",
        CMD_READOUT_PROTECT => "Readout Protect (0x82)",
        CMD_READOUT_UNPROTECT => "Readout Unprotect (0x92)",
        SYNC => "sync (0x7F)",
        _ => "unknown command",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(command_frame(CMD_WRITE), [0x31, 0xCE]);
        assert_eq!(command_frame(CMD_GET), [0x00, 0xFF]);
        assert_eq!(address_frame(0x0800_0000), [0x08, 0x00, 0x00, 0x00, 0x08]);
        assert_eq!(
            address_frame(0x1FFF_F7E8),
            [0x1F, 0xFF, 0xF7, 0xE8, 0x1F ^ 0xFF ^ 0xF7 ^ 0xE8]
        );
        assert_eq!(xor(&[0xFF, 0xFF]), 0);
    }
}
