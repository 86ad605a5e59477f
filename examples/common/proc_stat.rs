//! CPU time from Linux's `/proc/<pid>/stat` (or a thread's
//! `/proc/self/task/<tid>/stat`), shared by the benchmarks.

/// USER_HZ: the kernel reports these times in ticks of 1/100 s.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// The fields after the command name, which ends at the last ')' (a name
/// may hold spaces and parentheses): index 1 is the parent's pid, 11 and 12
/// user and system time, 13 and 14 those of the children it has reaped.
pub fn fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect()
}

/// User plus system ticks, with the reaped children's when `reaped`.
pub fn cpu_ticks(stat: &str, reaped: bool) -> u64 {
    let f = fields(stat);
    let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    at(11) + at(12) + if reaped { at(13) + at(14) } else { 0 }
}
