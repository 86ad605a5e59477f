//! Shared test helpers: deterministic images and keys, bounded child processes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Deterministic pseudo-random bytes (xorshift), so images are reproducible.
pub fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A valid P-256 scalar for tests.
pub fn scalar(seed: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = 0x1F;
    for (i, b) in s.iter_mut().enumerate().skip(1) {
        *b = seed.wrapping_add(i as u8).wrapping_mul(37);
    }
    assert!(flashgate_agent::is_valid_scalar(&s));
    s
}

/// Output of a child process run with a deadline.
#[derive(Debug)]
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args` and kills it if it takes longer than `limit`; `None` if the program
/// is not installed.
pub fn run_bounded(program: &str, args: &[&str], limit: std::time::Duration) -> Option<Ran> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot start {program}: {e}"),
    };
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Some(Ran {
        ok: status.success(),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    })
}

/// Whether stm32flash can be run; prints why a test is skipped if not.
pub fn have_stm32flash() -> bool {
    let found = run_bounded("stm32flash", &["-h"], std::time::Duration::from_secs(10)).is_some();
    if !found {
        eprintln!("stm32flash is not installed: skipping the stm32flash peer test (apt-get install stm32flash)");
    }
    found
}
