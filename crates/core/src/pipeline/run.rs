//! The run: channels, each on its own blocking thread, taking boards from
//! their fixtures until they run out, the quota is used up or a stop is
//! asked; counter values are reserved in blocks shared out between them.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashgate_target::Fixture;

use super::{
    FailureKind, Provisioner, RunEvent, RunOptions, RunSummary, StopHandle, UnitFailure,
    UnitRecord, UnitResult,
};

/// What one channel did, summed as it goes (nothing per unit is kept).
#[derive(Debug, Default)]
struct ChannelTotals {
    boards: u64,
    passed: u64,
    failed_by_stage: BTreeMap<String, u64>,
    stage_sum: BTreeMap<String, (u64, u64)>,
    with_counter: u64,
    fixtures_failed: u64,
    fixture_error: Option<String>,
}

impl ChannelTotals {
    fn add(&mut self, r: &UnitRecord) {
        self.boards += 1;
        self.with_counter += u64::from(r.counter.is_some());
        match &r.result {
            UnitResult::Passed => self.passed += 1,
            UnitResult::Failed(f) => {
                *self
                    .failed_by_stage
                    .entry(f.stage.as_str().to_owned())
                    .or_default() += 1;
            }
        }
        for (s, us) in &r.timings_us {
            let e = self.stage_sum.entry(s.clone()).or_default();
            e.0 += us;
            e.1 += 1;
        }
    }

    fn merge(&mut self, o: ChannelTotals) {
        self.boards += o.boards;
        self.passed += o.passed;
        self.with_counter += o.with_counter;
        self.fixtures_failed += o.fixtures_failed;
        if self.fixture_error.is_none() {
            self.fixture_error = o.fixture_error;
        }
        for (k, v) in o.failed_by_stage {
            *self.failed_by_stage.entry(k).or_default() += v;
        }
        for (k, (sum, n)) in o.stage_sum {
            let e = self.stage_sum.entry(k).or_default();
            e.0 += sum;
            e.1 += n;
        }
    }
}

/// One channel's share of a run.
struct Channel<'a> {
    channel: u32,
    channels: u32,
    options: &'a RunOptions,
    taken: &'a AtomicU64,
    stop: &'a StopHandle,
    sink: &'a (dyn Fn(RunEvent) + Send + Sync),
    why: &'a Mutex<Option<String>>,
}

const STOP_QUOTA: &str = "quota used up";

fn set_reason(why: &Mutex<Option<String>>, reason: &str) {
    if let Ok(mut w) = why.lock() {
        w.get_or_insert_with(|| reason.to_owned());
    }
}

fn stop_reason(f: &UnitFailure) -> String {
    match f.kind {
        FailureKind::QuotaExhausted => STOP_QUOTA.to_owned(),
        FailureKind::SerialRangeExhausted => "serial range used up".to_owned(),
        FailureKind::OutsideWindow => "job window closed".to_owned(),
        FailureKind::Target
        | FailureKind::BoardRefused
        | FailureKind::ChallengeFailed
        | FailureKind::LockMismatch
        | FailureKind::Ledger
        | FailureKind::Hsm
        | FailureKind::Provisioning => format!("{}: {}", f.kind, f.reason),
    }
}

/// How many counter values a channel reserves next: about one second of
/// its measured production (one value before anything is measured), at most
/// `options.block`, no more than the fixture's boards still to come, and
/// near the end of a limited run no more than the channel's share of what
/// is left (unused values can never be given back).
fn reservation_size(
    options: &RunOptions,
    board: u64,
    channels: u32,
    unit_time: Option<Duration>,
    boards_left: Option<u64>,
) -> u64 {
    let by_rate = unit_time.map_or(1, |t| {
        let per_second = Duration::from_secs(1).as_nanos() / t.as_nanos().max(1);
        u64::try_from(per_second).unwrap_or(u64::MAX)
    });
    let mut want = by_rate.clamp(1, options.block.max(1));
    if let Some(left) = boards_left {
        // This board plus those still to come.
        want = want.min(left.saturating_add(1));
    }
    if let Some(limit) = options.units {
        let share = limit
            .saturating_sub(board)
            .div_ceil(u64::from(channels.max(1)));
        want = want.min(share.max(1));
    }
    want
}

impl Provisioner {
    /// Programs boards from `fixtures` (one per channel) until they run out,
    /// `options.units` boards were taken, the quota is used up or `stop` is
    /// asked. Each channel runs on its own blocking thread under tokio.
    pub async fn run(
        self: Arc<Self>,
        fixtures: Vec<Box<dyn Fixture>>,
        options: RunOptions,
        stop: StopHandle,
        sink: Arc<dyn Fn(RunEvent) + Send + Sync>,
    ) -> RunSummary {
        let start = Instant::now();
        let taken = Arc::new(AtomicU64::new(0));
        let used_before = self.ledger.used();
        let why = Arc::new(Mutex::new(None));
        let mut tasks = Vec::new();
        let channels = u32::try_from(fixtures.len()).unwrap_or(u32::MAX);
        for (channel, fixture) in fixtures.into_iter().enumerate() {
            let me = self.clone();
            let (taken, stop, sink, options, why) = (
                taken.clone(),
                stop.clone(),
                sink.clone(),
                options.clone(),
                why.clone(),
            );
            let channel = u32::try_from(channel).unwrap_or(u32::MAX);
            tasks.push(tokio::task::spawn_blocking(move || {
                me.channel_loop(
                    Channel {
                        channel,
                        channels,
                        options: &options,
                        taken: &taken,
                        stop: &stop,
                        sink: &*sink,
                        why: &why,
                    },
                    fixture,
                )
            }));
        }
        // Time-based checkpoints, also while no unit is being recorded.
        let ticker = {
            let me = self.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    let me = me.clone();
                    let _ = tokio::task::spawn_blocking(move || me.ledger.tick()).await;
                }
            })
        };
        let mut summary = RunSummary::default();
        let mut all = ChannelTotals::default();
        for t in tasks {
            let Ok(totals) = t.await else { continue };
            all.merge(totals);
        }
        ticker.abort();
        summary.passed = all.passed;
        summary.failed_by_stage = all.failed_by_stage;
        summary.fixtures_failed = all.fixtures_failed;
        summary.fixture_error = all.fixture_error.clone();
        summary.mean_stage_us = all
            .stage_sum
            .into_iter()
            .map(|(s, (sum, n))| (s, sum / n.max(1)))
            .collect();
        let with_counter = all.with_counter;
        let used = self.ledger.used();
        summary.counted = used - used_before;
        summary.reserved_unused = summary.counted.saturating_sub(with_counter);
        summary.quota_left = self.policy.job().quota.saturating_sub(used);
        summary.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let why = why.lock().ok().and_then(|w| w.clone());
        let stopped = if let Some(why) = why {
            why
        } else if stop.is_stopped() {
            "operator stop".to_owned()
        } else if options
            .units
            .is_some_and(|l| taken.load(Ordering::SeqCst) >= l)
        {
            "unit count reached".to_owned()
        } else if all.fixtures_failed > 0 && all.boards == 0 {
            "no board could be reached".to_owned()
        } else {
            "no more boards".to_owned()
        };
        summary.stopped_because = match self.ledger.run_finished(&stopped) {
            Ok(()) => stopped,
            Err(e) => format!("{stopped} (the run end could not be recorded: {e})"),
        };
        summary
    }

    fn channel_loop(&self, ch: Channel<'_>, mut fixture: Box<dyn Fixture>) -> ChannelTotals {
        let Channel {
            channel,
            channels,
            options,
            taken,
            stop,
            sink,
            why,
        } = ch;
        let mut block: Range<u64> = 0..0;
        let mut totals = ChannelTotals::default();
        // Time per unit on this channel, to size reservations to about a
        // second of production (a crash then burns little quota).
        let mut unit_time: Option<Duration> = None;
        let quota = self.policy.job().quota;
        let reason = loop {
            if stop.is_stopped() {
                break "stopped".to_owned();
            }
            // A used-up quota stops the channel before it takes a board.
            if block.is_empty() && self.ledger.used() >= quota {
                set_reason(why, STOP_QUOTA);
                break STOP_QUOTA.to_owned();
            }
            let board = taken.fetch_add(1, Ordering::SeqCst);
            if options.units.is_some_and(|limit| board >= limit) {
                break "unit count reached".to_owned();
            }
            let target = match fixture.next_board() {
                Ok(Some(t)) => t,
                Ok(None) => break "no more boards".to_owned(),
                Err(e) => {
                    totals.fixtures_failed += 1;
                    totals.fixture_error = Some(e.to_string());
                    break format!("fixture failed: {e}");
                }
            };
            sink(RunEvent::UnitStarted { channel, board });
            let want = reservation_size(options, board, channels, unit_time, fixture.boards_left());
            let started = Instant::now();
            let record = self.provision(channel, board, target, &mut block, want, sink);
            if record.counter.is_some() {
                let t = started.elapsed();
                unit_time = Some(unit_time.map_or(t, |m| (m * 3 + t) / 4));
            }
            totals.add(&record);
            let stops = match &record.result {
                UnitResult::Failed(f) if f.kind.stops_the_run() => Some(stop_reason(f)),
                UnitResult::Failed(_) | UnitResult::Passed => None,
            };
            if let Some(r) = &stops {
                // This channel stops; the others finish the values they reserved.
                set_reason(why, r);
            }
            let event = match record.result {
                UnitResult::Passed => RunEvent::UnitPassed {
                    channel,
                    board,
                    unit: record,
                },
                UnitResult::Failed(_) => RunEvent::UnitFailed {
                    channel,
                    board,
                    unit: record,
                },
            };
            sink(event);
            if let Some(r) = stops {
                break r;
            }
        };
        if let Err(e) = self.ledger.release_unused(block) {
            sink(RunEvent::ChannelStopped {
                channel,
                reason: format!("could not release unused counter values: {e}"),
            });
        }
        sink(RunEvent::ChannelStopped { channel, reason });
        totals
    }
}
