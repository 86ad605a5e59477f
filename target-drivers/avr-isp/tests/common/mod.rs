//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flashgate_avr_isp::sim::{AvrSim, AvrSimConfig};
use flashgate_avr_isp::{AvrIspConfig, AvrIspTarget, Part};
use flashgate_serial::Loopback;
use flashgate_target::{
    ChallengeRequest, FlashRange, Location, LockLevel, LockPermission, Target, TargetError,
};

/// Deterministic bytes (xorshift), not all 0xFF.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A valid P-256 identity scalar.
pub fn identity_key(seed: u8) -> [u8; 32] {
    let mut k = [0x11u8; 32];
    k[31] = seed;
    k
}

/// A driver wired in process to `sim`, with the agent.
pub fn driver(sim: &AvrSim, part: &'static Part) -> AvrIspTarget {
    AvrIspTarget::new(
        Box::new(Loopback::instant(sim.programmer()).named("isp")),
        Some(Box::new(Loopback::instant(sim.agent()).named("agent"))),
        AvrIspConfig::for_part(part),
    )
}

/// A fast simulation of `part` with the given option string additions.
pub fn sim(part: &'static Part, options: &str) -> AvrSim {
    let c: AvrSimConfig = format!("avr:timing=fast,part={},{options}", part.avrdude_id)
        .parse()
        .unwrap();
    AvrSim::new(&c).unwrap()
}

/// The whole provisioning flow: identify, erase, program, verify, store the key, challenge
/// (verified), lock, read the lock. Stops at the first error.
pub fn provision(
    t: &mut AvrIspTarget,
    image: &[u8],
    key_at: Location,
    key: &[u8; 32],
    regions: Vec<FlashRange>,
) -> Result<(), TargetError> {
    t.connect()?;
    let info = t.identify()?;
    info.expect_unlocked()?;
    t.erase()?;
    t.program(0, image)?;
    t.verify(0, image)?;
    t.store_secret(key_at, key)?;
    let nonce = [0x5A; 32];
    let request = ChallengeRequest {
        nonce,
        regions: regions.clone(),
    };
    let reply = t.challenge(&request)?;
    let public = flashgate_agent::public_key(key).unwrap();
    let digest = flashgate_agent::firmware_digest_of_image(0, image, &regions).unwrap();
    let proof =
        flashgate_agent::verify_challenge_reply(&public, &nonce, &info.uid, &digest, &reply)
            .map_err(|e| e.at_stage(flashgate_target::Stage::Challenge))?;
    t.set_lock(LockPermission::after(proof, LockLevel::Readout))?;
    let lock = t.read_lock()?;
    assert_eq!(lock.level, LockLevel::Readout);
    Ok(())
}
