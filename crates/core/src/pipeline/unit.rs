//! One unit through every stage, in the order docs/FORMATS.md §10 gives.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use flashgate_policy::{KeySource, KeyType};
use flashgate_target::{
    ChallengeRequest, DeviceInfo, Location, LockLevel, LockPermission, ProvenDevice, Target,
    TargetError,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::uid_index::InFlight;
use super::{
    blank_check_ranges, identity, micros, Attempt, AttemptState, FailureKind, LedgerError,
    Provisioner, RunEvent, UnitFailure, UnitRecord, UnitResult, UnitStage,
};
use crate::identity::{DeviceCertificateRequest, DeviceSecret};

impl Provisioner {
    /// One board through every stage.
    pub(super) fn provision(
        &self,
        channel: u32,
        board: u64,
        mut target: Box<dyn Target>,
        block: &mut Range<u64>,
        block_size: u64,
        sink: &(dyn Fn(RunEvent) + Send + Sync),
    ) -> UnitRecord {
        let mut rec = UnitRecord {
            channel,
            counter: None,
            serial: None,
            device_type: None,
            uid: None,
            cert_sha256: None,
            certificate: None,
            firmware_sha256: hex::encode(self.firmware_digest),
            lock: None,
            lock_level: None,
            lock_raw: Vec::new(),
            secrets_injected: false,
            rework_of: None,
            timings_us: BTreeMap::new(),
            result: UnitResult::Passed,
        };
        let mut uid = Vec::new();
        let result = self.stages(
            &mut rec,
            &mut uid,
            &mut *target,
            block,
            block_size,
            &mut |stage, us| {
                sink(RunEvent::StageDone {
                    channel,
                    board,
                    stage: stage.to_owned(),
                    us,
                });
            },
        );
        if let Err(f) = result {
            rec.result = UnitResult::Failed(f);
        }
        if let Some(counter) = rec.counter {
            if let Err(e) = self.ledger.record(&rec) {
                // The unit is counted (its counter value was reserved durably);
                // a lost record is found by the ledger's recovery.
                rec.result = UnitResult::Failed(UnitFailure::new(
                    UnitStage::Record,
                    FailureKind::Ledger,
                    e.to_string(),
                ));
            } else {
                let state = match rec.result {
                    UnitResult::Passed => AttemptState::Passed,
                    UnitResult::Failed(_) => AttemptState::Failed,
                };
                // The record is durable; a lost index update leaves the
                // entry `reserved`, which is settled as an aborted attempt.
                let _ = self.uids.note(&uid, Attempt { counter, state });
            }
        }
        rec
    }

    /// The stages in order; the first failure ends the unit.
    fn stages(
        &self,
        rec: &mut UnitRecord,
        uid: &mut Vec<u8>,
        t: &mut dyn Target,
        block: &mut Range<u64>,
        block_size: u64,
        done: &mut dyn FnMut(&str, u64),
    ) -> Result<(), UnitFailure> {
        let mut stage_done = |rec: &mut UnitRecord, stage: UnitStage, start: Instant| {
            let us = micros(start.elapsed());
            rec.timings_us.insert(stage.as_str().to_owned(), us);
            done(stage.as_str(), us);
        };
        let timed: Timed<'_> = &mut stage_done;

        let (info, _claim) = self.identify(rec, t, timed)?;
        uid.clone_from(&info.uid);
        let now = self.check_window()?;
        let (counter, serial) = self.reserve(rec, &info, block, block_size, timed)?;
        self.write_images(rec, t, &info, timed)?;
        let (secrets, identity_public) = self.derive(rec, t, &info, timed)?;
        let unit = Issued {
            info: &info,
            serial: &serial,
            counter,
            now,
            identity_public: &identity_public,
        };
        let cert = self.certify(rec, &unit, timed)?;
        self.inject(rec, t, secrets, &cert, timed)?;
        let proof = self.challenge(rec, t, &unit, timed)?;
        self.lock(rec, t, proof, timed)
    }

    /// Identify: connect, read the device, and refuse what the job must not
    /// touch. The claim on the UID is held for the rest of the unit.
    fn identify<'s>(
        &'s self,
        rec: &mut UnitRecord,
        t: &mut dyn Target,
        timed: Timed<'_>,
    ) -> Result<(DeviceInfo, InFlight<'s>), UnitFailure> {
        let s = Instant::now();
        t.connect().map_err(terr)?;
        let info = t.identify().map_err(terr)?;
        rec.device_type = Some(info.device_type.clone());
        rec.uid = Some(hex::encode(&info.uid));
        if !self.policy.target().allows(&info.device_type) {
            return Err(UnitFailure::new(
                UnitStage::Identify,
                FailureKind::BoardRefused,
                format!(
                    "device type {} is not one this job allows ({}); check the board in the fixture",
                    info.device_type,
                    self.policy.target().device_types.join(", ")
                ),
            ));
        }
        info.expect_unlocked().map_err(terr)?;
        let Some(claim) = self.uids.claim(&info.uid) else {
            return Err(UnitFailure::new(
                UnitStage::Identify,
                FailureKind::BoardRefused,
                format!(
                    "another channel is provisioning a board with the same UID {} right now; check the fixtures for a cloned or misreported UID",
                    hex::encode(&info.uid)
                ),
            ));
        };
        let previous = self.uids.lookup(&info.uid).map_err(|e| {
            UnitFailure::new(UnitStage::Identify, FailureKind::Ledger, e.to_string())
        })?;
        match previous {
            Some(Attempt {
                counter,
                state: AttemptState::Passed,
            }) => {
                return Err(UnitFailure::new(
                    UnitStage::Identify,
                    FailureKind::BoardRefused,
                    format!(
                        "this board (UID {}) was already provisioned by this job as serial {} (counter {counter}); take it out of the line, it is not counted again",
                        hex::encode(&info.uid),
                        self.policy.serial_for(counter).unwrap_or_default()
                    ),
                ))
            }
            // A failed or aborted earlier attempt: this is a rework.
            Some(a) => rec.rework_of = Some(a.counter),
            None => {}
        }
        timed(rec, UnitStage::Identify, s);
        Ok((info, claim))
    }

    /// The job CA signs only inside the job window: checked for every unit,
    /// before anything is counted. Returns the time it was checked at.
    fn check_window(&self) -> Result<u64, UnitFailure> {
        let now = self.appliance.now();
        let window = self.policy.job();
        if now < window.not_before || now >= window.not_after {
            return Err(UnitFailure::new(
                UnitStage::Reserve,
                FailureKind::OutsideWindow,
                format!(
                    "the job window ({} .. {}) is closed; no more units can be provisioned for this job, ask the OEM for a new one",
                    crate::display::time(window.not_before),
                    crate::display::time(window.not_after)
                ),
            ));
        }

        Ok(now)
    }

    /// Reserve: the counter moves durably before any identity exists.
    fn reserve(
        &self,
        rec: &mut UnitRecord,
        info: &DeviceInfo,
        block: &mut Range<u64>,
        block_size: u64,
        timed: Timed<'_>,
    ) -> Result<(u64, String), UnitFailure> {
        let s = Instant::now();
        if block.is_empty() {
            *block = self.ledger.reserve(block_size).map_err(|e| {
                let kind = match e {
                    LedgerError::QuotaExhausted { .. } => FailureKind::QuotaExhausted,
                    LedgerError::Store(_) => FailureKind::Ledger,
                };
                UnitFailure::new(UnitStage::Reserve, kind, e.to_string())
            })?;
        }
        let counter = block.start;
        block.start += 1;
        rec.counter = Some(counter);
        // Noted before any identity is issued: a crash from here on leaves
        // the UID `reserved`, i.e. an aborted attempt that may be reworked.
        self.uids
            .note(
                &info.uid,
                Attempt {
                    counter,
                    state: AttemptState::Reserved,
                },
            )
            .map_err(|e| {
                UnitFailure::new(UnitStage::Reserve, FailureKind::Ledger, e.to_string())
            })?;
        let serial = self.policy.serial_for(counter).ok_or_else(|| {
            UnitFailure::new(
                UnitStage::Reserve,
                FailureKind::SerialRangeExhausted,
                format!(
                    "counter {counter} is past the policy's serial range; the job cannot provision more units, ask the OEM for a new job"
                ),
            )
        })?;
        rec.serial = Some(serial.clone());
        timed(rec, UnitStage::Reserve, s);
        Ok((counter, serial))
    }

    /// Erase, blank check, program, verify.
    fn write_images(
        &self,
        rec: &mut UnitRecord,
        t: &mut dyn Target,
        info: &DeviceInfo,
        timed: Timed<'_>,
    ) -> Result<(), UnitFailure> {
        let s = Instant::now();
        t.erase().map_err(terr)?;
        timed(rec, UnitStage::Erase, s);
        // Blank check of the flash the policy names (by default what the
        // images do not cover; verify reads the images themselves).
        let blank = self.policy.target().blank_check;
        if blank != flashgate_policy::BlankCheck::None {
            let s = Instant::now();
            for r in blank_check_ranges(blank, &info.flash, &self.regions) {
                t.blank_check(r.address, r.length).map_err(terr)?;
            }
            timed(rec, UnitStage::BlankCheck, s);
        }
        let s = Instant::now();
        for (addr, data) in &self.images {
            t.program(*addr, data).map_err(terr)?;
        }
        timed(rec, UnitStage::Program, s);
        // With `verify = "attested"` the read-back is left out: the
        // challenge answer carries the digest the device measured over the
        // same regions, signed with its new key, and a mismatch fails the
        // unit there, before any lock.
        match self.policy.target().verify {
            flashgate_policy::Verify::Readback => {
                let s = Instant::now();
                for (addr, data) in &self.images {
                    t.verify(*addr, data).map_err(terr)?;
                }
                timed(rec, UnitStage::Verify, s);
            }
            flashgate_policy::Verify::Attested => {}
        }
        Ok(())
    }

    /// Derive the unit's secrets (seed by HMAC in the HSM); on-chip keys are
    /// generated here. Returns the secrets to inject and the identity key.
    fn derive(
        &self,
        rec: &mut UnitRecord,
        t: &mut dyn Target,
        info: &DeviceInfo,
        timed: Timed<'_>,
    ) -> Result<(Secrets, [u8; 65]), UnitFailure> {
        // The seed message carries the UID with a one-byte length.
        if info.uid.len() > 255 {
            return Err(UnitFailure::new(
                UnitStage::Derive,
                FailureKind::BoardRefused,
                format!(
                    "the device UID is {} bytes; at most 255 are supported",
                    info.uid.len()
                ),
            ));
        }
        // Derive the unit's secrets (seed by HMAC in the HSM).
        let s = Instant::now();
        let seed = self
            .hsm(|a| {
                a.token.hmac_sha256(
                    self.master,
                    &identity::seed_message(&self.job_id, &info.uid),
                )
            })
            .map_err(hsm_err(UnitStage::Derive))?;
        let mut secrets: Secrets = Vec::new();
        let mut identity_public = None;
        let provisioning =
            |e: String| UnitFailure::new(UnitStage::Derive, FailureKind::Provisioning, e);
        for spec in self.policy.keys() {
            let location = spec.location;
            let secret = match spec.source {
                KeySource::Derived => identity::expand_key(&seed, &self.job_id, spec),
                KeySource::Random => self
                    .random_secret(spec)
                    .map_err(hsm_err(UnitStage::Derive))?,
                KeySource::OnChip => {
                    // The target makes the key; only the public half leaves it.
                    rec.secrets_injected = true;
                    let public = t.generate_key(location).map_err(terr)?;
                    if spec.role.is_some() {
                        identity_public = Some(public);
                    }
                    continue;
                }
            };
            if spec.role.is_some() {
                let mut scalar = Zeroizing::new([0u8; 32]);
                scalar.copy_from_slice(&secret.value);
                identity_public = Some(
                    flashgate_agent::public_key(&scalar)
                        .map_err(|e| provisioning(e.to_string()))?,
                );
            }
            if spec.key_type != KeyType::P256 && secret.value.is_empty() {
                return Err(provisioning("empty key".to_owned()));
            }
            secrets.push((location, secret));
        }
        drop(seed);
        let identity_public = identity_public
            .ok_or_else(|| provisioning("the policy names no identity key".to_owned()))?;
        timed(rec, UnitStage::Derive, s);
        Ok((secrets, identity_public))
    }

    /// Certificate, signed in the HSM by the job CA key and checked back.
    fn certify(
        &self,
        rec: &mut UnitRecord,
        unit: &Issued<'_>,
        timed: Timed<'_>,
    ) -> Result<Vec<u8>, UnitFailure> {
        let s = Instant::now();
        let mut cert_serial = [0u8; 16];
        self.hsm(|a| a.token.random(&mut cert_serial))
            .map_err(hsm_err(UnitStage::Certificate))?;
        let signer = crate::hsm::TokenKey::new(&self.appliance.token, self.ca, &self.ca_public)
            .map_err(|e| hsm_err(UnitStage::Certificate)(e.to_string()))?;
        let cert = self
            .issuer
            .issue(
                &signer,
                self.policy.certificate(),
                &DeviceCertificateRequest {
                    serial: unit.serial,
                    uid: &unit.info.uid,
                    public_key: unit.identity_public,
                    certificate_serial: cert_serial,
                    now: unit.now,
                },
            )
            .map_err(|e| {
                UnitFailure::new(
                    UnitStage::Certificate,
                    FailureKind::Provisioning,
                    e.to_string(),
                )
            })?;
        rec.cert_sha256 = Some(hex::encode(Sha256::digest(&cert)));
        rec.certificate = Some(cert.clone());
        // Kept durably before the device gets it: a crash from here on
        // still leaves the OEM the certificate.
        self.ledger
            .certificate_issued(unit.counter, &cert)
            .map_err(|e| {
                UnitFailure::new(UnitStage::Certificate, FailureKind::Ledger, e.to_string())
            })?;
        timed(rec, UnitStage::Certificate, s);
        Ok(cert)
    }

    /// Inject, then wipe the host copies.
    fn inject(
        &self,
        rec: &mut UnitRecord,
        t: &mut dyn Target,
        secrets: Secrets,
        cert: &[u8],
        timed: Timed<'_>,
    ) -> Result<(), UnitFailure> {
        let s = Instant::now();
        rec.secrets_injected = true;
        for (location, secret) in &secrets {
            t.store_secret(*location, &secret.value).map_err(terr)?;
        }
        drop(secrets);
        t.store_secret(self.policy.certificate().location, cert)
            .map_err(terr)?;
        timed(rec, UnitStage::Inject, s);
        Ok(())
    }

    /// Challenge: a fresh nonce from the HSM RNG; the reply proves the key
    /// and the firmware digest. `None` when the policy asks for no challenge.
    fn challenge(
        &self,
        rec: &mut UnitRecord,
        t: &mut dyn Target,
        unit: &Issued<'_>,
        timed: Timed<'_>,
    ) -> Result<Option<ProvenDevice>, UnitFailure> {
        let s = Instant::now();
        let mut proof = None;
        if self.policy.lock().require_challenge {
            let mut nonce = [0u8; 32];
            self.hsm(|a| a.token.random(&mut nonce))
                .map_err(hsm_err(UnitStage::Challenge))?;
            let reply = t
                .challenge(&ChallengeRequest {
                    nonce,
                    regions: self.regions.clone(),
                })
                .map_err(terr)?;
            let p = flashgate_agent::verify_challenge_reply(
                unit.identity_public,
                &nonce,
                &unit.info.uid,
                &self.firmware_digest,
                &reply,
            )
            .map_err(|e| {
                UnitFailure::new(
                    UnitStage::Challenge,
                    FailureKind::ChallengeFailed,
                    format!("the device did not prove its key: {e}"),
                )
            })?;
            proof = Some(p);
            timed(rec, UnitStage::Challenge, s);
        }
        Ok(proof)
    }

    /// Lock, only now, and read it back.
    fn lock(
        &self,
        rec: &mut UnitRecord,
        t: &mut dyn Target,
        proof: Option<ProvenDevice>,
        timed: Timed<'_>,
    ) -> Result<(), UnitFailure> {
        let want = match self.policy.lock().level {
            LockLevel::None => None,
            level @ (LockLevel::Readout | LockLevel::Permanent) => Some(level),
        };
        if let Some(level) = want {
            // Only a device that proved its key can be locked (the policy
            // parser refuses a lock without a challenge).
            let Some(proof) = proof else {
                return Err(UnitFailure::new(
                    UnitStage::Lock,
                    FailureKind::Provisioning,
                    "the policy locks without a challenge, which no lock permission allows; ask the OEM for a job with lock.require_challenge = true",
                ));
            };
            let s = Instant::now();
            t.set_lock(LockPermission::after(proof, level))
                .map_err(terr)?;
            timed(rec, UnitStage::Lock, s);
            let s = Instant::now();
            let state = t.read_lock().map_err(terr)?;
            rec.lock = Some(format!("{} ({})", state.level, hex::encode(&state.raw)));
            rec.lock_level = Some(state.level.to_string());
            rec.lock_raw = state.raw.clone();
            if state.level != level {
                return Err(UnitFailure::new(
                    UnitStage::LockReadback,
                    FailureKind::LockMismatch,
                    format!("lock read back as {}, expected {level}", state.level),
                ));
            }
            timed(rec, UnitStage::LockReadback, s);
        }
        Ok(())
    }

    fn random_secret(&self, spec: &flashgate_policy::KeySpec) -> Result<DeviceSecret, String> {
        let len = if spec.key_type == KeyType::P256 {
            32
        } else {
            spec.key_type.secret_len()
        };
        let mut value = Zeroizing::new(vec![0u8; len]);
        loop {
            self.hsm(|a| a.token.random(&mut value))?;
            if spec.key_type != KeyType::P256 || p256::SecretKey::from_slice(&value).is_ok() {
                break;
            }
        }
        Ok(DeviceSecret {
            name: spec.name.as_str().to_owned(),
            key_type: spec.key_type,
            value,
        })
    }
}

/// The unit's secrets, where each goes (host copies, wiped when dropped).
type Secrets = Vec<(Location, DeviceSecret)>;

/// Reports a stage's end: its time goes into the record and to the sink.
type Timed<'a> = &'a mut dyn FnMut(&mut UnitRecord, UnitStage, Instant);

/// What the certificate and the challenge are about: the unit as identified
/// and reserved, and its identity key.
struct Issued<'a> {
    info: &'a DeviceInfo,
    serial: &'a str,
    counter: u64,
    now: u64,
    identity_public: &'a [u8; 65],
}

fn terr(e: TargetError) -> UnitFailure {
    UnitFailure::target(&e)
}

fn hsm_err(stage: UnitStage) -> impl Fn(String) -> UnitFailure {
    move |e| UnitFailure::new(stage, FailureKind::Hsm, e)
}
