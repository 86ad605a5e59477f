//! Starting a run on a named fixture set.
// Interim: the name is a target spec, `#N` for N channels.

use flashgate_core::station::{FixtureSet, JobId, RunHandle, StartOptions, Station};

use crate::error::ApiError;

pub(crate) fn start(
    station: &Station,
    jobs: &[JobId],
    fixtures: &str,
    options: StartOptions,
) -> Result<Vec<(RunHandle, u32)>, ApiError> {
    let (spec, channels) = match fixtures.rsplit_once('#') {
        Some((s, n)) => (s, n.parse().unwrap_or(1)),
        None => (fixtures, 1),
    };
    let set = FixtureSet::parse(spec, channels)?;
    let [job] = jobs else {
        return Err(ApiError::bad_request("one job"));
    };
    Ok(vec![(station.start_run(job, set, options)?, 0)])
}
