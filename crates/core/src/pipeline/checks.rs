//! What is checked before any board is touched: the driver and its
//! capabilities, the quota and the validity window.

use flashgate_policy::Policy;
use flashgate_target::Capabilities;

use super::RunError;

/// The capabilities a driver must have for a job with this policy.
pub fn required_capabilities(policy: &Policy) -> Capabilities {
    crate::drivers::required(policy)
}

/// Fails, before any unit is touched, when `driver` is not the policy's or
/// lacks a capability the job needs.
pub fn check_driver(
    policy: &Policy,
    driver: &str,
    capabilities: Capabilities,
) -> Result<(), RunError> {
    crate::drivers::check(policy, driver, capabilities).map_err(RunError::from)
}

/// Fails, before any board is taken, when the job has no quota left.
pub fn check_quota(policy: &Policy, id: &str, used: u64) -> Result<(), RunError> {
    let quota = policy.job().quota;
    if used >= quota {
        return Err(RunError::QuotaUsedUp {
            id: id.to_owned(),
            quota,
        });
    }
    Ok(())
}

/// Fails when the job is outside its validity window at `now`.
pub fn check_validity(policy: &Policy, id: &str, now: u64) -> Result<(), RunError> {
    let j = policy.job();
    if now < j.not_before || now >= j.not_after {
        return Err(RunError::OutsideValidity {
            id: id.to_owned(),
            from: crate::display::time(j.not_before),
            until: crate::display::time(j.not_after),
        });
    }
    Ok(())
}
