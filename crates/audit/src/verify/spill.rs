//! Exact duplicate detection in bounded memory: an external sort of
//! fixed-size entries.
//!
//! Entries are byte arrays compared bytewise, so a caller lays out its sort
//! key big-endian at the front. They are buffered up to a fixed budget; a
//! full buffer is sorted and written as a run file in a private temporary
//! directory, and [`Spill::into_sorted`] merges the runs (k-way, with a heap)
//! into one sorted stream. Equal keys come out adjacent, so duplicates are
//! found by comparing neighbours; nothing is approximate.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

/// Run files merged at once; more are first merged into one larger run, so
/// the open files and their buffers stay bounded too.
const MAX_RUNS: usize = 64;
/// Read buffer per run file while merging.
const RUN_BUFFER: usize = 16 * 1024;

/// A growing multiset of `N`-byte entries.
pub(crate) struct Spill<const N: usize> {
    buf: Vec<[u8; N]>,
    cap: usize,
    dir: Option<tempfile::TempDir>,
    runs: Vec<PathBuf>,
    next: u64,
}

impl<const N: usize> Spill<N> {
    /// Keeps at most `budget` bytes of entries in memory.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap: (budget / N).max(1),
            dir: None,
            runs: Vec::new(),
            next: 0,
        }
    }

    /// Adds an entry.
    pub(crate) fn push(&mut self, entry: [u8; N]) -> io::Result<()> {
        if self.buf.len() >= self.cap {
            self.spill()?;
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.cap.min(4096));
        }
        self.buf.push(entry);
        Ok(())
    }

    fn new_run(&mut self) -> io::Result<(PathBuf, BufWriter<File>)> {
        if self.dir.is_none() {
            self.dir = Some(
                tempfile::Builder::new()
                    .prefix("flashgate-verify-")
                    .tempdir()?,
            );
        }
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_owned())
            .unwrap_or_default();
        let path = dir.join(format!("run-{}", self.next));
        self.next += 1;
        let file = File::create(&path)?;
        Ok((path, BufWriter::with_capacity(1 << 16, file)))
    }

    fn spill(&mut self) -> io::Result<()> {
        self.buf.sort_unstable();
        let (path, mut w) = self.new_run()?;
        for e in &self.buf {
            w.write_all(e)?;
        }
        w.flush()?;
        self.buf.clear();
        self.runs.push(path);
        if self.runs.len() >= MAX_RUNS {
            let runs = std::mem::take(&mut self.runs);
            let mut merged = Merge::<N>::open(Vec::new(), &runs)?;
            let (path, mut w) = self.new_run()?;
            while let Some(e) = merged.next_entry()? {
                w.write_all(&e)?;
            }
            w.flush()?;
            drop(merged);
            for r in runs {
                std::fs::remove_file(r)?;
            }
            self.runs.push(path);
        }
        Ok(())
    }

    /// Every entry pushed, in ascending bytewise order.
    pub(crate) fn into_sorted(mut self) -> io::Result<Sorted<N>> {
        self.buf.sort_unstable();
        let merge = Merge::open(std::mem::take(&mut self.buf), &self.runs)?;
        Ok(Sorted {
            merge,
            _dir: self.dir,
        })
    }
}

/// The sorted stream of a [`Spill`]; its run files go when it is dropped.
pub(crate) struct Sorted<const N: usize> {
    merge: Merge<N>,
    _dir: Option<tempfile::TempDir>,
}

impl<const N: usize> Sorted<N> {
    /// The next entry, `None` at the end.
    pub(crate) fn next_entry(&mut self) -> io::Result<Option<[u8; N]>> {
        self.merge.next_entry()
    }
}

struct Merge<const N: usize> {
    mem: std::vec::IntoIter<[u8; N]>,
    runs: Vec<BufReader<File>>,
    /// The head of each source; source `runs.len()` is `mem`.
    heap: BinaryHeap<Reverse<([u8; N], usize)>>,
}

impl<const N: usize> Merge<N> {
    fn open(mem: Vec<[u8; N]>, paths: &[PathBuf]) -> io::Result<Self> {
        let mut m = Self {
            mem: mem.into_iter(),
            runs: Vec::with_capacity(paths.len()),
            heap: BinaryHeap::with_capacity(paths.len() + 1),
        };
        for p in paths {
            m.runs
                .push(BufReader::with_capacity(RUN_BUFFER, File::open(p)?));
        }
        for i in 0..=m.runs.len() {
            m.refill(i)?;
        }
        Ok(m)
    }

    fn refill(&mut self, source: usize) -> io::Result<()> {
        let next = match self.runs.get_mut(source) {
            Some(r) => read_entry(r)?,
            None => self.mem.next(),
        };
        if let Some(e) = next {
            self.heap.push(Reverse((e, source)));
        }
        Ok(())
    }

    fn next_entry(&mut self) -> io::Result<Option<[u8; N]>> {
        let Some(Reverse((e, source))) = self.heap.pop() else {
            return Ok(None);
        };
        self.refill(source)?;
        Ok(Some(e))
    }
}

fn read_entry<const N: usize>(r: &mut impl Read) -> io::Result<Option<[u8; N]>> {
    let mut e = [0u8; N];
    match r.read_exact(&mut e) {
        Ok(()) => Ok(Some(e)),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spilled_runs_merge_into_one_sorted_stream() {
        // 16-byte budget = 2 entries per run: many runs, and the cascade.
        let mut s = Spill::<8>::new(16);
        let mut want = Vec::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let e = (x % 300).to_be_bytes();
            want.push(e);
            s.push(e).unwrap();
        }
        assert!(s.runs.len() > 1);
        want.sort_unstable();
        let mut sorted = s.into_sorted().unwrap();
        let mut got = Vec::new();
        while let Some(e) = sorted.next_entry().unwrap() {
            got.push(e);
        }
        assert_eq!(got, want);
    }
}
