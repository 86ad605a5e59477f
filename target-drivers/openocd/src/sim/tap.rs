//! The IEEE 1149.1 TAP controller: sixteen states, moved by TMS at each rising edge of TCK.

use std::fmt;

/// A state of the TAP controller (IEEE 1149.1, figure 6-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapState {
    /// Test-Logic-Reset: every TAP holds its IDCODE (or BYPASS) instruction.
    TestLogicReset,
    /// Run-Test/Idle.
    RunTestIdle,
    /// Select-DR-Scan.
    SelectDrScan,
    /// Capture-DR: the selected data register loads in parallel.
    CaptureDr,
    /// Shift-DR: the selected data register shifts one bit from TDI towards TDO.
    ShiftDr,
    /// Exit1-DR.
    Exit1Dr,
    /// Pause-DR.
    PauseDr,
    /// Exit2-DR.
    Exit2Dr,
    /// Update-DR: the shifted value takes effect (on the falling edge of TCK).
    UpdateDr,
    /// Select-IR-Scan.
    SelectIrScan,
    /// Capture-IR: the instruction register loads its capture value (…01).
    CaptureIr,
    /// Shift-IR.
    ShiftIr,
    /// Exit1-IR.
    Exit1Ir,
    /// Pause-IR.
    PauseIr,
    /// Exit2-IR.
    Exit2Ir,
    /// Update-IR: the shifted instruction becomes current (on the falling edge of TCK).
    UpdateIr,
}

impl TapState {
    /// All sixteen states.
    pub const ALL: [TapState; 16] = [
        TapState::TestLogicReset,
        TapState::RunTestIdle,
        TapState::SelectDrScan,
        TapState::CaptureDr,
        TapState::ShiftDr,
        TapState::Exit1Dr,
        TapState::PauseDr,
        TapState::Exit2Dr,
        TapState::UpdateDr,
        TapState::SelectIrScan,
        TapState::CaptureIr,
        TapState::ShiftIr,
        TapState::Exit1Ir,
        TapState::PauseIr,
        TapState::Exit2Ir,
        TapState::UpdateIr,
    ];

    /// The state after a rising edge of TCK with `tms`.
    pub const fn next(self, tms: bool) -> TapState {
        use TapState::*;
        match (self, tms) {
            (TestLogicReset, true) => TestLogicReset,
            (TestLogicReset, false) => RunTestIdle,
            (RunTestIdle, true) => SelectDrScan,
            (RunTestIdle, false) => RunTestIdle,
            (SelectDrScan, true) => SelectIrScan,
            (SelectDrScan, false) => CaptureDr,
            (CaptureDr, true) => Exit1Dr,
            (CaptureDr, false) => ShiftDr,
            (ShiftDr, true) => Exit1Dr,
            (ShiftDr, false) => ShiftDr,
            (Exit1Dr, true) => UpdateDr,
            (Exit1Dr, false) => PauseDr,
            (PauseDr, true) => Exit2Dr,
            (PauseDr, false) => PauseDr,
            (Exit2Dr, true) => UpdateDr,
            (Exit2Dr, false) => ShiftDr,
            (UpdateDr, true) => SelectDrScan,
            (UpdateDr, false) => RunTestIdle,
            (SelectIrScan, true) => TestLogicReset,
            (SelectIrScan, false) => CaptureIr,
            (CaptureIr, true) => Exit1Ir,
            (CaptureIr, false) => ShiftIr,
            (ShiftIr, true) => Exit1Ir,
            (ShiftIr, false) => ShiftIr,
            (Exit1Ir, true) => UpdateIr,
            (Exit1Ir, false) => PauseIr,
            (PauseIr, true) => Exit2Ir,
            (PauseIr, false) => PauseIr,
            (Exit2Ir, true) => UpdateIr,
            (Exit2Ir, false) => ShiftIr,
            (UpdateIr, true) => SelectDrScan,
            (UpdateIr, false) => RunTestIdle,
        }
    }

    /// Whether the controller can stay in this state while TMS holds its level (the six
    /// stable states).
    pub const fn is_stable(self) -> bool {
        matches!(
            self,
            TapState::TestLogicReset
                | TapState::RunTestIdle
                | TapState::ShiftDr
                | TapState::PauseDr
                | TapState::ShiftIr
                | TapState::PauseIr
        )
    }

    /// The shortest TMS sequence from this state to `to` (empty if already there).
    pub fn path_to(self, to: TapState) -> Vec<bool> {
        // Breadth-first over the 16 states; the graph is tiny.
        let index = |s: TapState| TapState::ALL.iter().position(|&x| x == s).unwrap_or(0);
        let mut prev: [Option<(TapState, bool)>; 16] = [None; 16];
        let mut seen = [false; 16];
        let mut queue = std::collections::VecDeque::from([self]);
        seen[index(self)] = true;
        while let Some(s) = queue.pop_front() {
            if s == to {
                break;
            }
            for tms in [false, true] {
                let n = s.next(tms);
                if !seen[index(n)] {
                    seen[index(n)] = true;
                    prev[index(n)] = Some((s, tms));
                    queue.push_back(n);
                }
            }
        }
        let mut path = Vec::new();
        let mut at = to;
        while at != self {
            match prev[index(at)] {
                Some((p, tms)) => {
                    path.push(tms);
                    at = p;
                }
                None => return Vec::new(),
            }
        }
        path.reverse();
        path
    }

    /// The name IEEE 1149.1 gives the state.
    pub const fn name(self) -> &'static str {
        match self {
            TapState::TestLogicReset => "Test-Logic-Reset",
            TapState::RunTestIdle => "Run-Test/Idle",
            TapState::SelectDrScan => "Select-DR-Scan",
            TapState::CaptureDr => "Capture-DR",
            TapState::ShiftDr => "Shift-DR",
            TapState::Exit1Dr => "Exit1-DR",
            TapState::PauseDr => "Pause-DR",
            TapState::Exit2Dr => "Exit2-DR",
            TapState::UpdateDr => "Update-DR",
            TapState::SelectIrScan => "Select-IR-Scan",
            TapState::CaptureIr => "Capture-IR",
            TapState::ShiftIr => "Shift-IR",
            TapState::Exit1Ir => "Exit1-IR",
            TapState::PauseIr => "Pause-IR",
            TapState::Exit2Ir => "Exit2-IR",
            TapState::UpdateIr => "Update-IR",
        }
    }
}

impl fmt::Display for TapState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::TapState::{self, *};

    fn walk(from: TapState, tms: &[u8]) -> TapState {
        tms.iter().fold(from, |s, &t| s.next(t != 0))
    }

    #[test]
    fn five_tms_high_reach_reset_from_every_state() {
        for s in TapState::ALL {
            assert_eq!(walk(s, &[1, 1, 1, 1, 1]), TestLogicReset, "from {s}");
        }
    }

    #[test]
    fn every_state_has_both_successors_and_is_reachable() {
        let mut reached = std::collections::HashSet::new();
        for s in TapState::ALL {
            reached.insert(s.next(false));
            reached.insert(s.next(true));
        }
        assert_eq!(reached.len(), 16);
    }

    #[test]
    fn the_standard_table() {
        // (state, next with TMS=0, next with TMS=1), IEEE 1149.1 figure 6-1.
        let table = [
            (TestLogicReset, RunTestIdle, TestLogicReset),
            (RunTestIdle, RunTestIdle, SelectDrScan),
            (SelectDrScan, CaptureDr, SelectIrScan),
            (CaptureDr, ShiftDr, Exit1Dr),
            (ShiftDr, ShiftDr, Exit1Dr),
            (Exit1Dr, PauseDr, UpdateDr),
            (PauseDr, PauseDr, Exit2Dr),
            (Exit2Dr, ShiftDr, UpdateDr),
            (UpdateDr, RunTestIdle, SelectDrScan),
            (SelectIrScan, CaptureIr, TestLogicReset),
            (CaptureIr, ShiftIr, Exit1Ir),
            (ShiftIr, ShiftIr, Exit1Ir),
            (Exit1Ir, PauseIr, UpdateIr),
            (PauseIr, PauseIr, Exit2Ir),
            (Exit2Ir, ShiftIr, UpdateIr),
            (UpdateIr, RunTestIdle, SelectDrScan),
        ];
        for (s, zero, one) in table {
            assert_eq!(s.next(false), zero, "{s} with TMS=0");
            assert_eq!(s.next(true), one, "{s} with TMS=1");
        }
    }

    #[test]
    fn the_paths_openocd_uses() {
        let b = |v: &[u8]| v.iter().map(|&x| x != 0).collect::<Vec<_>>();
        assert_eq!(RunTestIdle.path_to(ShiftDr), b(&[1, 0, 0]));
        assert_eq!(RunTestIdle.path_to(ShiftIr), b(&[1, 1, 0, 0]));
        assert_eq!(Exit1Dr.path_to(RunTestIdle), b(&[1, 0]));
        assert_eq!(Exit1Ir.path_to(RunTestIdle), b(&[1, 0]));
        assert_eq!(TestLogicReset.path_to(RunTestIdle), b(&[0]));
        assert_eq!(PauseDr.path_to(ShiftDr), b(&[1, 0]));
        assert_eq!(ShiftDr.path_to(ShiftDr), b(&[]));
        // Every path leads where it says, and no path is longer than 8 clocks.
        for from in TapState::ALL {
            for to in TapState::ALL {
                let p = from.path_to(to);
                assert!(p.len() <= 8, "{from} -> {to}: {p:?}");
                assert_eq!(p.iter().fold(from, |s, &t| s.next(t)), to);
            }
        }
    }

    #[test]
    fn six_states_are_stable() {
        let stable: Vec<_> = TapState::ALL
            .into_iter()
            .filter(|s| s.is_stable())
            .collect();
        assert_eq!(
            stable,
            [
                TestLogicReset,
                RunTestIdle,
                ShiftDr,
                PauseDr,
                ShiftIr,
                PauseIr
            ]
        );
        for s in stable {
            let hold = s != TestLogicReset;
            assert_eq!(s.next(!hold), s, "{s} holds");
        }
    }
}
