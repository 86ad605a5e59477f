//! STK500 version 1 constants, as the ArduinoISP sketch and avrdude's `stk500.c` use them.

/// `Resp_STK_OK`.
pub const OK: u8 = 0x10;
/// `Resp_STK_FAILED`.
pub const FAILED: u8 = 0x11;
/// `Resp_STK_UNKNOWN`.
pub const UNKNOWN: u8 = 0x12;
/// `Resp_STK_INSYNC`.
pub const INSYNC: u8 = 0x14;
/// `Resp_STK_NOSYNC`.
pub const NOSYNC: u8 = 0x15;
/// `Sync_CRC_EOP`: ends every command (a space).
pub const EOP: u8 = 0x20;

/// `Cmnd_STK_GET_SYNC` ('0').
pub const GET_SYNC: u8 = 0x30;
/// `Cmnd_STK_GET_SIGN_ON` ('1').
pub const GET_SIGN_ON: u8 = 0x31;
/// `Cmnd_STK_GET_PARAMETER` ('A').
pub const GET_PARAMETER: u8 = 0x41;
/// `Cmnd_STK_SET_DEVICE` ('B').
pub const SET_DEVICE: u8 = 0x42;
/// `Cmnd_STK_SET_DEVICE_EXT` ('E').
pub const SET_DEVICE_EXT: u8 = 0x45;
/// `Cmnd_STK_ENTER_PROGMODE` ('P').
pub const ENTER_PROGMODE: u8 = 0x50;
/// `Cmnd_STK_LEAVE_PROGMODE` ('Q').
pub const LEAVE_PROGMODE: u8 = 0x51;
/// `Cmnd_STK_LOAD_ADDRESS` ('U'): word address, low byte first.
pub const LOAD_ADDRESS: u8 = 0x55;
/// `Cmnd_STK_UNIVERSAL` ('V'): one 4-byte serial programming instruction.
pub const UNIVERSAL: u8 = 0x56;
/// `Cmnd_STK_PROG_FLASH`.
pub const PROG_FLASH: u8 = 0x60;
/// `Cmnd_STK_PROG_DATA`.
pub const PROG_DATA: u8 = 0x61;
/// `Cmnd_STK_PROG_PAGE` ('d'): length (big-endian), memory type `F`/`E`, data.
pub const PROG_PAGE: u8 = 0x64;
/// `Cmnd_STK_READ_PAGE` ('t'): length (big-endian), memory type.
pub const READ_PAGE: u8 = 0x74;
/// `Cmnd_STK_READ_SIGN` ('u').
pub const READ_SIGN: u8 = 0x75;

/// `Parm_STK_HW_VER`.
pub const PARM_HW_VER: u8 = 0x80;
/// `Parm_STK_SW_MAJOR`.
pub const PARM_SW_MAJOR: u8 = 0x81;
/// `Parm_STK_SW_MINOR`.
pub const PARM_SW_MINOR: u8 = 0x82;
/// `Parm_STK_PROGMODE`: `S` for a serial programmer.
pub const PARM_PROGMODE: u8 = 0x93;
/// `Param_STK500_TOPCARD_DETECT`.
pub const PARM_TOPCARD: u8 = 0x98;

/// Memory type byte for flash in `PROG_PAGE`/`READ_PAGE`.
pub const MEM_FLASH: u8 = b'F';
/// Memory type byte for EEPROM.
pub const MEM_EEPROM: u8 = b'E';

/// A command byte's name, for messages and fault specifications (`prog-page`, ...).
pub fn command_name(cmd: u8) -> &'static str {
    match cmd {
        GET_SYNC => "get-sync",
        GET_SIGN_ON => "get-sign-on",
        GET_PARAMETER => "get-parameter",
        SET_DEVICE => "set-device",
        SET_DEVICE_EXT => "set-device-ext",
        ENTER_PROGMODE => "enter-progmode",
        LEAVE_PROGMODE => "leave-progmode",
        LOAD_ADDRESS => "load-address",
        UNIVERSAL => "universal",
        PROG_FLASH => "prog-flash",
        PROG_DATA => "prog-data",
        PROG_PAGE => "prog-page",
        READ_PAGE => "read-page",
        READ_SIGN => "read-sign",
        _ => "unknown",
    }
}

/// The command byte named `name` (see [`command_name`]).
pub fn command_by_name(name: &str) -> Option<u8> {
    [
        GET_SYNC,
        GET_SIGN_ON,
        GET_PARAMETER,
        SET_DEVICE,
        SET_DEVICE_EXT,
        ENTER_PROGMODE,
        LEAVE_PROGMODE,
        LOAD_ADDRESS,
        UNIVERSAL,
        PROG_FLASH,
        PROG_DATA,
        PROG_PAGE,
        READ_PAGE,
        READ_SIGN,
    ]
    .into_iter()
    .find(|&c| command_name(c) == name)
}
