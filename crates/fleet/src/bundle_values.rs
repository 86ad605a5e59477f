//! The values a bundle adds that the fleet-wide cross-checks look up:
//! passed UIDs, serials, certificate hashes and device keys.
//!
//! They are kept in bounded memory. Each value goes to one of several
//! parts by a keyed hash of what makes it a duplicate (the UID, the
//! product and serial, the certificate hash, the device key), so every
//! repeat of a value lands in the same part, and the parts are checked one
//! at a time. A bundle of up to [`PART_RECORDS`] records has one part, in
//! memory; a larger one writes its parts to temporary files while its
//! records load and reads them back one by one.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hash};
use std::io::{self, BufReader, BufWriter, Read, Write};

/// Records per part: about 8 MiB of values in memory at a time.
pub(crate) const PART_RECORDS: u64 = 1 << 15;
/// At most this many part files are open at once; bundles beyond
/// `MAX_PARTS * PART_RECORDS` records (about 8.4 million) get larger parts.
const MAX_PARTS: u64 = 256;

const UID: u8 = 0;
const SERIAL: u8 = 1;
const CERT: u8 = 2;
const KEY: u8 = 3;

/// A device key's SPKI SHA-256 and the SHA-256 of a certificate that
/// holds it.
pub(crate) type KeyPair = ([u8; 32], [u8; 32]);

/// The values of one part, as they came.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Part {
    /// UIDs of passed units.
    pub uids: Vec<Vec<u8>>,
    /// (product, serial) of every unit with a serial.
    pub serials: Vec<(String, String)>,
    /// Certificate SHA-256 of every unit that names one.
    pub certs: Vec<[u8; 32]>,
    /// (SPKI SHA-256, certificate SHA-256) of every stored certificate.
    pub keys: Vec<KeyPair>,
}

/// Values sorted and distinct, and those among them that came more than
/// once.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Distinct<T> {
    pub all: Vec<T>,
    pub repeated: Vec<T>,
}

fn distinct<T: Ord + Clone>(mut values: Vec<T>) -> Distinct<T> {
    values.sort_unstable();
    let mut repeated: Vec<T> = values
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0].clone())
        .collect();
    repeated.dedup();
    values.dedup();
    Distinct {
        all: values,
        repeated,
    }
}

impl Part {
    pub(crate) fn uids(&mut self) -> Distinct<Vec<u8>> {
        distinct(std::mem::take(&mut self.uids))
    }

    pub(crate) fn serials(&mut self) -> Distinct<(String, String)> {
        distinct(std::mem::take(&mut self.serials))
    }

    pub(crate) fn certs(&mut self) -> Distinct<[u8; 32]> {
        distinct(std::mem::take(&mut self.certs))
    }

    /// Distinct (key, certificate) pairs, and the keys this part holds in
    /// more than one certificate. The same certificate twice is one pair:
    /// that is a duplicate certificate, not a shared key.
    pub(crate) fn keys(&mut self) -> (Vec<KeyPair>, Vec<[u8; 32]>) {
        let pairs = distinct(std::mem::take(&mut self.keys)).all;
        let mut shared: Vec<[u8; 32]> = pairs
            .windows(2)
            .filter(|w| w[0].0 == w[1].0)
            .map(|w| w[0].0)
            .collect();
        shared.dedup();
        (pairs, shared)
    }

    fn read_from(&mut self, mut r: impl Read) -> io::Result<()> {
        let mut tag = [0u8; 1];
        loop {
            match r.read_exact(&mut tag) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            match tag[0] {
                UID => self.uids.push(read_field(&mut r)?),
                SERIAL => {
                    let product = text(read_field(&mut r)?)?;
                    let serial = text(read_field(&mut r)?)?;
                    self.serials.push((product, serial));
                }
                CERT => self.certs.push(read_hash(&mut r)?),
                KEY => {
                    let spki = read_hash(&mut r)?;
                    let cert = read_hash(&mut r)?;
                    self.keys.push((spki, cert));
                }
                t => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a part file holds tag {t}"),
                    ))
                }
            }
        }
    }
}

fn read_field(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut n = [0u8; 4];
    r.read_exact(&mut n)?;
    let mut v = vec![0u8; u32::from_le_bytes(n) as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn read_hash(r: &mut impl Read) -> io::Result<[u8; 32]> {
    let mut h = [0u8; 32];
    r.read_exact(&mut h)?;
    Ok(h)
}

fn text(v: Vec<u8>) -> io::Result<String> {
    String::from_utf8(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn write_field(w: &mut impl Write, v: &[u8]) -> io::Result<()> {
    let n = u32::try_from(v.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a value over 4 GiB"))?;
    w.write_all(&n.to_le_bytes())?;
    w.write_all(v)
}

enum Store {
    Memory(Part),
    Files {
        // Keeps the directory (removed on drop) while the files are used.
        _dir: tempfile::TempDir,
        files: Vec<BufWriter<File>>,
    },
}

/// Where one value goes.
enum Place<'a> {
    Memory(&'a mut Part),
    File(&'a mut BufWriter<File>),
}

/// The cross-checked values of one bundle, as its records load.
pub(crate) struct BundleValues {
    // Keyed per process, so that a crafted bundle cannot pile its values
    // into one part.
    hasher: RandomState,
    store: Store,
}

impl BundleValues {
    /// For a bundle adding `records` records.
    pub(crate) fn new(records: u64) -> io::Result<Self> {
        let parts = records.div_ceil(PART_RECORDS).clamp(1, MAX_PARTS);
        let store = if parts == 1 {
            Store::Memory(Part::default())
        } else {
            let dir = tempfile::Builder::new()
                .prefix("flashgate-ingest-")
                .tempdir()?;
            let files = (0..parts)
                .map(|i| {
                    // Read back after the load, hence read and write.
                    File::options()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(dir.path().join(format!("part-{i}")))
                        .map(|f| BufWriter::with_capacity(8192, f))
                })
                .collect::<io::Result<Vec<_>>>()?;
            Store::Files { _dir: dir, files }
        };
        Ok(Self {
            hasher: RandomState::new(),
            store,
        })
    }

    /// The part file for `key`, or the memory part when there is one part.
    fn place(&mut self, key: impl Hash) -> Place<'_> {
        match &mut self.store {
            Store::Memory(p) => Place::Memory(p),
            Store::Files { files, .. } => {
                // Truncation is the point: any bits of the hash pick a part.
                #[allow(clippy::cast_possible_truncation)]
                let i = (self.hasher.hash_one(key) % files.len() as u64) as usize;
                Place::File(&mut files[i])
            }
        }
    }

    /// A passed unit's UID.
    pub(crate) fn uid(&mut self, uid: &[u8]) -> io::Result<()> {
        match self.place((UID, uid)) {
            Place::File(w) => {
                w.write_all(&[UID])?;
                write_field(w, uid)
            }
            Place::Memory(p) => {
                p.uids.push(uid.to_vec());
                Ok(())
            }
        }
    }

    /// A unit's serial, within its product.
    pub(crate) fn serial(&mut self, product: &str, serial: &str) -> io::Result<()> {
        match self.place((SERIAL, product, serial)) {
            Place::File(w) => {
                w.write_all(&[SERIAL])?;
                write_field(w, product.as_bytes())?;
                write_field(w, serial.as_bytes())
            }
            Place::Memory(p) => {
                p.serials.push((product.to_owned(), serial.to_owned()));
                Ok(())
            }
        }
    }

    /// The certificate hash a unit record names.
    pub(crate) fn cert(&mut self, cert: &[u8; 32]) -> io::Result<()> {
        match self.place((CERT, cert)) {
            Place::File(w) => {
                w.write_all(&[CERT])?;
                w.write_all(cert)
            }
            Place::Memory(p) => {
                p.certs.push(*cert);
                Ok(())
            }
        }
    }

    /// A stored certificate's device key (SPKI SHA-256).
    pub(crate) fn key(&mut self, spki: &[u8; 32], cert: &[u8; 32]) -> io::Result<()> {
        // By the key alone: all of one key's certificates share a part.
        match self.place((KEY, spki)) {
            Place::File(w) => {
                w.write_all(&[KEY])?;
                w.write_all(spki)?;
                w.write_all(cert)
            }
            Place::Memory(p) => {
                p.keys.push((*spki, *cert));
                Ok(())
            }
        }
    }

    /// The parts, to read one at a time.
    pub(crate) fn into_parts(self) -> io::Result<Parts> {
        match self.store {
            Store::Memory(p) => Ok(Parts {
                memory: Some(p),
                files: Vec::new(),
                _dir: None,
            }),
            Store::Files { _dir, files } => {
                let files = files
                    .into_iter()
                    .map(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
                    .collect::<io::Result<Vec<File>>>()?;
                Ok(Parts {
                    memory: None,
                    files,
                    _dir: Some(_dir),
                })
            }
        }
    }
}

/// The parts of a bundle's values, read back one at a time.
pub(crate) struct Parts {
    memory: Option<Part>,
    files: Vec<File>,
    _dir: Option<tempfile::TempDir>,
}

impl Parts {
    /// The next part, or None when all were read.
    pub(crate) fn next_part(&mut self) -> io::Result<Option<Part>> {
        if let Some(p) = self.memory.take() {
            return Ok(Some(p));
        }
        let Some(mut f) = self.files.pop() else {
            return Ok(None);
        };
        io::Seek::rewind(&mut f)?;
        let mut part = Part::default();
        part.read_from(BufReader::with_capacity(1 << 16, f))?;
        Ok(Some(part))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn collect(records: u64, fill: impl Fn(&mut BundleValues)) -> Part {
        let mut v = BundleValues::new(records).unwrap();
        fill(&mut v);
        let mut parts = v.into_parts().unwrap();
        let mut all = Part::default();
        let mut n = 0;
        while let Some(p) = parts.next_part().unwrap() {
            n += 1;
            all.uids.extend(p.uids);
            all.serials.extend(p.serials);
            all.certs.extend(p.certs);
            all.keys.extend(p.keys);
        }
        assert_eq!(n, records.div_ceil(PART_RECORDS).max(1));
        all
    }

    #[test]
    fn distinct_values_are_sorted_once_each_and_repeats_are_named_once() {
        let d = distinct(vec![3, 1, 3, 0, 3, 1]);
        assert_eq!(d.all, [0, 1, 3]);
        assert_eq!(d.repeated, [1, 3]);
        let d = distinct(Vec::<u8>::new());
        assert!(d.all.is_empty() && d.repeated.is_empty());
    }

    #[test]
    fn a_key_in_two_certificates_is_shared_and_one_certificate_twice_is_not() {
        let mut p = Part {
            keys: vec![
                ([1; 32], [9; 32]),
                ([1; 32], [9; 32]),
                ([2; 32], [7; 32]),
                ([2; 32], [8; 32]),
            ],
            ..Part::default()
        };
        let (pairs, shared) = p.keys();
        assert_eq!(pairs.len(), 3);
        assert_eq!(shared, [[2; 32]]);
    }

    #[test]
    fn every_value_comes_back_from_files_and_each_repeat_in_its_values_part() {
        let records = 3 * PART_RECORDS + 1;
        let fill = |v: &mut BundleValues| {
            for i in 0..2000u32 {
                v.uid(&i.to_be_bytes()).unwrap();
                v.serial("p", &format!("S{}", i % 1500)).unwrap();
                let mut c = [0u8; 32];
                c[..4].copy_from_slice(&(i % 1700).to_be_bytes());
                v.cert(&c).unwrap();
                v.key(&[u8::try_from(i % 200).unwrap(); 32], &c).unwrap();
            }
            v.uid(b"").unwrap();
            v.uid(&7u32.to_be_bytes()).unwrap();
        };
        let mut all = collect(records, fill);
        let mut mem = collect(10, fill);
        assert_eq!(all.uids().all, mem.uids().all);
        assert_eq!(all.serials().all, mem.serials().all);
        assert_eq!(all.certs().all, mem.certs().all);
        assert_eq!(all.keys().0, mem.keys().0);

        // Repeats are found within each part, as the ingest reads them.
        let mut v = BundleValues::new(records).unwrap();
        fill(&mut v);
        let mut parts = v.into_parts().unwrap();
        let (mut uid_repeats, mut serial_repeats, mut cert_repeats, mut shared) = (0, 0, 0, 0);
        while let Some(mut p) = parts.next_part().unwrap() {
            uid_repeats += p.uids().repeated.len();
            serial_repeats += p.serials().repeated.len();
            cert_repeats += p.certs().repeated.len();
            shared += p.keys().1.len();
        }
        assert_eq!(uid_repeats, 1);
        assert_eq!(serial_repeats, 500);
        assert_eq!(cert_repeats, 300);
        assert_eq!(shared, 200);
    }
}
