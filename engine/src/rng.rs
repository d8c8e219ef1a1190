//! A seeded random source. ChaCha8 is specified bit for bit, so a seed gives the same numbers on every
//! platform and crate version; tensors are drawn on the host and copied, so a seed also gives the same
//! initial weights on the CPU and on a GPU.

use rand_chacha::rand_core::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct Rng(ChaCha8Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal by Box-Muller (one value per call; simple and exactly reproducible).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // in (0, 1]: log is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// The generator's full state, for checkpoints that must resume bit-exactly.
    pub fn state(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..32].copy_from_slice(&self.0.get_seed());
        out[32..40].copy_from_slice(&self.0.get_stream().to_le_bytes());
        out[40..48].copy_from_slice(&(self.0.get_word_pos() as u64).to_le_bytes());
        out
    }

    pub fn from_state(state: &[u8; 48]) -> Self {
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&state[..32]);
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(u64::from_le_bytes(state[32..40].try_into().unwrap()));
        rng.set_word_pos(u64::from_le_bytes(state[40..48].try_into().unwrap()) as u128);
        Rng(rng)
    }
}
