//! The read ceiling of host memory: how fast every core together can stream a buffer far larger
//! than the caches, in GB/s of bytes read. Batch-1 decode reads each weight once per token and
//! writes almost nothing, so this, not the copy bandwidth (half of whose bytes are writes, which
//! cost a read-for-ownership and a write-back each), is the rate a decode step could approach.
//!
//! The probe is built to be the best case of the weights' own loops: the buffer sits on huge pages
//! as the weights do (huge_pages.rs), every core streams one contiguous share of it, and on
//! AVX-512 each turn loads a whole cache line per vector into four independent accumulators (an
//! OR, so nothing waits on arithmetic), with the same one-line-ahead software prefetch distance as
//! the bf16 decode loops. Without AVX-512 a portable eight-lane loop runs instead (runtime dispatch
//! as in skinny.rs), which the compiler vectorises for the baseline ISA only: on such a machine
//! the figure is a floor.

use std::time::Instant;

use super::huge_pages::filled_on_huge_pages;

/// The buffer: 1 GiB, beyond any last-level cache of a server part, so each pass streams from memory.
const BYTES: usize = 1 << 30;

/// Passes over the buffer; the fastest counts (others on a shared machine slow some passes).
const PASSES: usize = 5;

/// Read bandwidth in GB/s of `threads` threads each streaming its share of a 1 GiB huge-page
/// buffer; the best of `PASSES` passes.
pub fn read_gbs(threads: usize) -> f64 {
    let words = filled_on_huge_pages(BYTES / 8, 0x5555_5555_5555_5555u64);
    let share = words.len().div_ceil(threads.max(1)).next_multiple_of(WORDS_PER_TURN);
    let mut best = f64::INFINITY;
    for _ in 0..PASSES {
        let start = Instant::now();
        let folded = std::thread::scope(|scope| {
            let parts: Vec<_> = words.chunks(share).map(|s| scope.spawn(move || fold(s))).collect();
            parts.into_iter().map(|h| h.join().unwrap_or(0)).fold(0, |a, v| a | v)
        });
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(folded);
    }
    BYTES as f64 / best / 1e9
}

/// Which loop `read_gbs` runs on this CPU, for the reader of the figure.
pub fn loop_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        return "AVX-512 loads";
    }
    "a portable loop (no AVX-512: a floor, not a ceiling)"
}

/// 64-bit words per turn of the loops: four cache lines.
const WORDS_PER_TURN: usize = 32;

/// The OR of every word of `words`, read front to back, on the widest loop the CPU has.
fn fold(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, checked just above.
        return unsafe { avx512::fold(words) };
    }
    fold_portable(words)
}

/// Eight independent lanes, four lines per turn.
fn fold_portable(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let turns = words.chunks_exact(WORDS_PER_TURN);
    let tail = turns.remainder().iter().fold(0, |a, &v| a | v);
    for turn in turns {
        for (l, &v) in turn.iter().enumerate() {
            lanes[l % 8] |= v;
        }
    }
    lanes.iter().fold(tail, |a, &v| a | v)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::WORDS_PER_TURN;

    /// How far ahead each turn asks for a line, in words (1024 bf16 weights in the decode loops).
    const AHEAD: usize = 256;

    /// `fold` with one 64-byte load per line into four accumulators.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fold(words: &[u64]) -> u64 {
        let turns = words.len() / WORDS_PER_TURN;
        let mut acc = [_mm512_setzero_si512(); 4];
        let at = |w: usize| words.as_ptr().wrapping_add(w);
        for t in 0..turns {
            let w = t * WORDS_PER_TURN;
            // A prefetch never faults, so the address may run past the slice.
            _mm_prefetch::<_MM_HINT_T0>(at(w + AHEAD).cast::<i8>());
            for (l, a) in acc.iter_mut().enumerate() {
                // SAFETY: w + 8·l + 8 <= turns·WORDS_PER_TURN <= words.len(); unaligned load.
                *a = _mm512_or_si512(*a, unsafe { _mm512_loadu_si512(at(w + 8 * l).cast()) });
            }
        }
        let all = _mm512_or_si512(_mm512_or_si512(acc[0], acc[1]), _mm512_or_si512(acc[2], acc[3]));
        let tail = words[turns * WORDS_PER_TURN..].iter().fold(0, |a, &v| a | v);
        _mm512_reduce_or_epi64(all) as u64 | tail
    }
}

#[cfg(test)]
mod tests {
    use super::{fold, fold_portable};

    /// Both loops see every word: a bit set in one word only, at places inside a turn and in the tail.
    #[test]
    fn the_fold_reads_every_word() {
        for len in [0usize, 1, 31, 32, 33, 1000, 4099] {
            for at in [0, len / 2, len.saturating_sub(1)] {
                if len == 0 {
                    assert_eq!(fold(&[]), 0);
                    continue;
                }
                let mut words = vec![0u64; len];
                words[at] = 1 << (at % 64);
                assert_eq!(fold(&words), 1 << (at % 64), "len {len}, word {at}");
                assert_eq!(fold_portable(&words), 1 << (at % 64), "portable, len {len}, word {at}");
            }
        }
    }
}
