//! Where a board's unique ID comes from.
//!
//! AVRs like the ATmega328P and ATmega2560 have no factory unique ID that the serial
//! programming interface can read: the signature row holds only the 3-byte device signature
//! and calibration bytes (the 328PB's serial number is readable only by firmware). So
//! flashgate uses a **board serial number** written at board test into the last
//! [`SERIAL_LEN`] bytes of EEPROM, and the UID it reports is
//!
//! ```text
//! uid = signature (3 bytes) || serial (8 bytes, as stored)      -- 11 bytes
//! ```
//!
//! The provisioning agent in the firmware reports the same bytes (it reads its signature
//! row and the same EEPROM bytes), so the UID bound into the challenge signature matches.
//!
//! A chip erase clears EEPROM unless the EESAVE fuse is programmed; the driver therefore
//! reads the serial before erasing and writes it back afterwards (see
//! [`AvrIspTarget::erase`](crate::AvrIspTarget)). A board whose serial reads erased is
//! refused at identify: two such boards would share a UID.

use crate::part::Part;

/// Length of the board serial number in bytes.
pub const SERIAL_LEN: usize = 8;

/// Length of the UID: signature and serial.
pub const UID_LEN: usize = 3 + SERIAL_LEN;

/// EEPROM offset of the serial number: the last [`SERIAL_LEN`] bytes.
pub const fn serial_offset(part: &Part) -> u32 {
    part.eeprom_size - SERIAL_LEN as u32
}

/// The UID of a board: `signature || serial`.
pub fn board_uid(signature: &[u8; 3], serial: &[u8]) -> Vec<u8> {
    let mut uid = Vec::with_capacity(UID_LEN);
    uid.extend_from_slice(signature);
    uid.extend_from_slice(serial);
    uid
}

/// Whether a serial reads erased (all `0xFF`) or cleared (all `0x00`).
pub fn serial_is_blank(serial: &[u8]) -> bool {
    serial.iter().all(|&b| b == 0xFF) || serial.iter().all(|&b| b == 0x00)
}

/// The avrdude 7.1 command that writes `serial` to the last EEPROM bytes through an
/// ArduinoISP: terminal `send` of the raw "Write EEPROM Memory" instruction (`C0 hi lo data`)
/// per byte, because a paged EEPROM write through the sketch lands at twice the address.
pub fn restore_command(part: &Part, serial: &[u8]) -> String {
    let at = serial_offset(part) as usize;
    let mut sends = String::new();
    for (i, b) in serial.iter().enumerate() {
        let a = at + i;
        sends.push_str(&format!(
            "send 0xc0 0x{:02x} 0x{:02x} 0x{b:02x}\\n",
            a >> 8,
            a & 0xFF
        ));
    }
    format!(
        "printf '{sends}quit\\n' | avrdude -c stk500v1 -p {} -b 19200 -P PORT -t",
        part.avrdude_id
    )
}
