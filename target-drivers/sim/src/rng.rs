//! Deterministic pseudo-random numbers for the simulation.
//!
//! SplitMix64. **Not cryptographic**: everything it produces, including the key pairs the
//! simulated device "generates", is predictable from the seed. It exists so that a run is
//! reproducible from `seed`; never use it outside the simulator.

/// SplitMix64 increment (2⁶⁴ / φ).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function. A bijection on `u64`, so distinct inputs give distinct outputs.
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Independent streams derived from one seed, so that e.g. fault decisions do not shift when a
/// board draws a different number of random values.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Chip = 1,
    Fault = 2,
    Lot = 3,
    Serial = 4,
}

/// Seed of stream `stream` for board `index`.
pub(crate) const fn derive(seed: u64, stream: Stream, index: u64) -> u64 {
    mix64(mix64(seed ^ mix64(stream as u64)) ^ index)
}

/// SplitMix64 generator (simulation only, see the module documentation).
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator starting from `seed`.
    pub const fn new(seed: u64) -> Self {
        SimRng { state: seed }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform-enough in `[0, n)` (modulo bias is irrelevant for a simulation); 0 if `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
