//! The per-unit facts that need the whole log: UIDs, serials and certificates as sort
//! entries, merged once sorted to find duplicates, invalid reworks and certificates missing
//! from the log or from the bundle.

use std::io;

use sha2::{Digest as _, Sha256};

use super::Verifier;
use crate::record::Digest;
use crate::verify::report::{AnomalyKind, Report};
use crate::verify::spill::Sorted;
use crate::verify::{CertificateFile, CertificateStart};

/// Bytes of a UID or serial kept in a sort entry, for the report's text.
const SHOWN: usize = 32;

// UID entry: SHA-256(uid) | pos | counter | passed | has rework_of | rework_of | shown len | shown.
pub(super) const UID_N: usize = 32 + 8 + 8 + 1 + 1 + 8 + 1 + SHOWN;
// Serial entry: SHA-256(serial) | pos | shown len | shown.
pub(super) const SERIAL_N: usize = 32 + 8 + 1 + SHOWN;
// Certificate entry: SHA-256(DER) | 0 file / 1 record | pos | flag | notBefore.
// flag: for a record 1 = passed; for a file 0 unknown, 1 malformed, 2 parsed.
pub(super) const CERT_N: usize = 32 + 1 + 8 + 1 + 8;

fn be(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

pub(super) fn put_shown(out: &mut [u8], value: &[u8]) {
    let n = value.len().min(SHOWN);
    out[0] = n as u8;
    out[1..=n].copy_from_slice(&value[..n]);
}

/// The value kept in an entry, as text: hex for UIDs, the text for serials;
/// "..." marks a value longer than what was kept.
fn shown(entry: &[u8], hex_form: bool, full_len_known: bool) -> String {
    let n = usize::from(entry[0]).min(SHOWN);
    let v = &entry[1..=n];
    let mut s = if hex_form {
        hex::encode(v)
    } else {
        String::from_utf8_lossy(v).into_owned()
    };
    if n == SHOWN && !full_len_known {
        s.push_str("...");
    }
    s
}

impl Verifier<'_> {
    /// A certificate file of the bundle.
    pub(in crate::verify) fn certificate_file(&mut self, file: CertificateFile) -> io::Result<()> {
        let mut e = [0u8; CERT_N];
        e[..32].copy_from_slice(&file.sha256);
        let (flag, nb) = match file.start {
            CertificateStart::Unknown => (0, 0),
            CertificateStart::Malformed => (1, 0),
            // Offset so that the stored u64 orders like the i64.
            CertificateStart::NotBefore(t) => (2, (t as u64) ^ (1 << 63)),
        };
        e[41] = flag;
        e[42..50].copy_from_slice(&nb.to_be_bytes());
        self.certs.push(e)
    }

    pub(super) fn uid(
        &mut self,
        pos: u64,
        counter: u64,
        uid: &[u8],
        passed: bool,
        rework_of: Option<u64>,
    ) -> io::Result<()> {
        let mut e = [0u8; UID_N];
        e[..32].copy_from_slice(&Sha256::digest(uid));
        e[32..40].copy_from_slice(&pos.to_be_bytes());
        e[40..48].copy_from_slice(&counter.to_be_bytes());
        e[48] = u8::from(passed);
        if let Some(of) = rework_of {
            e[49] = 1;
            e[50..58].copy_from_slice(&of.to_be_bytes());
        }
        put_shown(&mut e[58..], uid);
        self.uids.push(e)
    }

    pub(super) fn certificate(
        &mut self,
        pos: u64,
        digest: &Digest,
        passed: bool,
    ) -> io::Result<()> {
        let mut e = [0u8; CERT_N];
        e[..32].copy_from_slice(digest);
        e[32] = 1;
        e[33..41].copy_from_slice(&pos.to_be_bytes());
        e[41] = u8::from(passed);
        self.certs.push(e)
    }

    /// Each UID's attempts in log order: at most one pass, and every
    /// repeat names the attempt it reworks.
    pub(super) fn check_uids(&mut self, mut sorted: Sorted<UID_N>) -> io::Result<()> {
        // (key, pos, counter, passed) of the previous attempt of this UID,
        // and the position of its first pass.
        let mut prev: Option<([u8; 32], u64, u64, bool)> = None;
        let mut first_pass: Option<u64> = None;
        while let Some(e) = sorted.next_entry()? {
            let mut key = [0u8; 32];
            key.copy_from_slice(&e[..32]);
            let (pos, counter, passed) = (be(&e[32..]), be(&e[40..]), e[48] == 1);
            let rework_of = (e[49] == 1).then(|| be(&e[50..]));
            let uid = shown(&e[58..], true, false);
            if prev.is_some_and(|p| p.0 != key) {
                prev = None;
                first_pass = None;
            }
            let invalid = |report: &mut Report, why: String| {
                report.add(
                    Some(pos),
                    AnomalyKind::ReworkInvalid,
                    format!("UID {uid}: {why}"),
                );
            };
            match (prev, rework_of) {
                (None, None) => {}
                (None, Some(of)) if self.aborted.contains(of, of.saturating_add(1)) => {
                    self.report.reworks += 1;
                }
                (None, Some(of)) => invalid(
                    &mut self.report,
                    format!("the unit names counter value {of} as the attempt it reworks, but no earlier record has this UID and {of} was not aborted"),
                ),
                (Some(_), _) if passed && first_pass.is_some() => {
                    self.report.add(
                        Some(pos),
                        AnomalyKind::DuplicateUid,
                        format!(
                            "UID {uid} passed already at record {}",
                            first_pass.unwrap_or_default()
                        ),
                    );
                }
                (Some(_), _) if first_pass.is_some() => invalid(
                    &mut self.report,
                    format!(
                        "attempted again after it passed at record {}",
                        first_pass.unwrap_or_default()
                    ),
                ),
                (Some((_, at, _, _)), None) => invalid(
                    &mut self.report,
                    format!("attempted before at record {at}, but this record has no rework_of"),
                ),
                (Some((_, _, c, _)), Some(of))
                    if of == c || self.aborted.contains(of, of.saturating_add(1)) =>
                {
                    self.report.reworks += 1;
                }
                (Some((_, at, c, _)), Some(of)) => invalid(
                    &mut self.report,
                    format!("rework_of names counter value {of}, but the previous attempt (record {at}) used {c}"),
                ),
            }
            if passed && first_pass.is_none() {
                first_pass = Some(pos);
            }
            prev = Some((key, pos, counter, passed));
        }
        Ok(())
    }

    pub(super) fn check_serials(&mut self, mut sorted: Sorted<SERIAL_N>) -> io::Result<()> {
        let mut first: Option<([u8; 32], u64)> = None;
        while let Some(e) = sorted.next_entry()? {
            let pos = be(&e[32..]);
            match first {
                Some((k, at)) if k[..] == e[..32] => self.report.add(
                    Some(pos),
                    AnomalyKind::DuplicateSerial,
                    format!(
                        "serial {:?} was issued already at record {at}",
                        shown(&e[40..], false, false)
                    ),
                ),
                _ => {
                    let mut k = [0u8; 32];
                    k.copy_from_slice(&e[..32]);
                    first = Some((k, pos));
                }
            }
        }
        Ok(())
    }

    pub(super) fn check_certificates(
        &mut self,
        mut sorted: Sorted<CERT_N>,
        with_certs: bool,
    ) -> io::Result<()> {
        let mut list_hash = Sha256::new();
        let mut list_len = 0u64;
        let mut group: Option<CertGroup> = None;
        while let Some(e) = sorted.next_entry()? {
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&e[..32]);
            if group.as_ref().is_some_and(|g| g.digest != digest) {
                if let Some(g) = group.take() {
                    self.cert_group_end(&g, with_certs);
                }
            }
            let g = group.get_or_insert_with(|| CertGroup::new(digest));
            if e[32] == 0 {
                if g.file.is_none() {
                    list_hash.update(digest);
                    list_len += 1;
                }
                g.file = Some(match e[41] {
                    1 => CertificateStart::Malformed,
                    2 => CertificateStart::NotBefore((be(&e[42..]) ^ (1 << 63)) as i64),
                    _ => CertificateStart::Unknown,
                });
                continue;
            }
            let pos = be(&e[33..]);
            let passed = e[41] == 1;
            match g.first {
                Some(at) => self.report.add(
                    Some(pos),
                    AnomalyKind::DuplicateCertificate,
                    format!(
                        "certificate {} was issued already at record {at}",
                        hex::encode(digest)
                    ),
                ),
                None => g.first = Some(pos),
            }
            if passed && g.file.is_none() && with_certs {
                self.report.add(
                    Some(pos),
                    AnomalyKind::CertificateMissing,
                    format!(
                        "the certificate {} of this passed unit is not in the bundle",
                        hex::encode(digest)
                    ),
                );
            }
        }
        if let Some(g) = group {
            self.cert_group_end(&g, with_certs);
        }
        if let Some(list) = self.cert_list.take() {
            let files: [u8; 32] = list_hash.finalize().into();
            if list.count != list_len || list.sha256 != files || !list.sorted {
                self.report.add(
                    None,
                    AnomalyKind::BundleIndexMismatch,
                    format!(
                        "bundle.json lists {} certificates{}, certs/ holds {list_len}{}",
                        list.count,
                        if list.sorted {
                            ""
                        } else {
                            " (not sorted, or repeated)"
                        },
                        if list.count == list_len {
                            " with other hashes"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
        Ok(())
    }

    fn cert_group_end(&mut self, g: &CertGroup, with_certs: bool) {
        let f = &self.options.facts;
        match (g.first, g.file) {
            (None, Some(_)) if with_certs => self.report.add(
                None,
                AnomalyKind::CertificateNotInLog,
                format!(
                    "certs/{}.der is in the bundle but no record of the job issued it",
                    hex::encode(g.digest)
                ),
            ),
            (Some(at), Some(CertificateStart::Malformed)) => self.report.add(
                Some(at),
                AnomalyKind::CertificateMalformed,
                format!(
                    "certs/{}.der, the unit's certificate, is not an X.509 certificate",
                    hex::encode(g.digest)
                ),
            ),
            (Some(at), Some(CertificateStart::NotBefore(t)))
                if t < i64::try_from(f.not_before).unwrap_or(i64::MAX)
                    || t >= i64::try_from(f.not_after).unwrap_or(i64::MAX) =>
            {
                self.report.add(
                    Some(at),
                    AnomalyKind::CertificateOutsideWindow,
                    format!(
                        "certs/{}.der is valid from {t} (Unix s), outside the job window {} to {}",
                        hex::encode(g.digest),
                        f.not_before,
                        f.not_after
                    ),
                );
            }
            // Nothing to report here: a file no record issued while certificates are not
            // checked, a certificate valid from within the window or whose content was not
            // read, or a record's certificate without a file (checked as it is read).
            (None, Some(_))
            | (Some(_), Some(CertificateStart::NotBefore(_) | CertificateStart::Unknown))
            | (_, None) => {}
        }
    }
}

struct CertGroup {
    digest: [u8; 32],
    file: Option<CertificateStart>,
    first: Option<u64>,
}

impl CertGroup {
    fn new(digest: [u8; 32]) -> Self {
        Self {
            digest,
            file: None,
            first: None,
        }
    }
}
