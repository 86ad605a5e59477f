//! Serves a simulated STM32 bootloader on a pseudo-terminal, as `flashgate sim stm32-uart`
//! does: `cargo run -p flashgate-stm32-uart --example serve -- f103 [STATE] [OPTIONS]`.
//! Prints the pty path first; stop it with Ctrl-C.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let part = args.next().unwrap_or_else(|| "f103".to_owned());
    let state = args
        .next()
        .filter(|s| !s.is_empty())
        .map(std::path::PathBuf::from);
    let options = args.next().unwrap_or_default();
    flashgate_stm32_uart::serve_cli(&part, state, &options)?;
    Ok(())
}
