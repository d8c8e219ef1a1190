//! The mbarrier state machine (`mbarrier.init / arrive / expect_tx / complete_tx / test_wait /
//! try_wait`, PTX ISA "Parallel Synchronization and Communication Instructions: mbarrier"), with the
//! state kept in the barrier's own 8 bytes of shared memory, so the interpreter loads the word, calls
//! one function and stores it back (it owns atomicity: one call per instruction, no interleaving).
//!
//! Semantics. An mbarrier goes through phases. Each phase expects `count` arrivals (set by init) and
//! a transaction count (tx-count) that `expect_tx` raises and `complete_tx` (TMA completion) lowers.
//! The current phase completes when its pending arrivals reach zero *and* its tx-count is zero; then
//! the phase number advances, pending arrivals reset to `count` and tx-count to zero. A wait on parity
//! P succeeds once the phase with parity P has completed, i.e. when the current phase's parity is not
//! P; a wait on a token succeeds once the phase the token was taken in has completed. The tx-count may
//! go negative in between (bytes completing before they are expected) within ±(2^20 - 1).
//!
//! Encoding (the emulator's own; real hardware's is undocumented), little-endian u64:
//!   bits  0-19 pending arrivals in the current phase
//!   bits 20-39 expected arrivals per phase (init's count, 1..=2^20-1; 0 means "not an mbarrier")
//!   bits 40-60 tx-count, 21-bit two's complement
//!   bits 61-63 phase number mod 8 (bit 61 is the parity)
//! The 8 zero bytes that `inval` leaves (or never-initialised zeroed memory) decode as "not
//! initialised", so arrivals or waits on them are errors rather than silent hangs.
//!
//! Misuse errors: init with a count outside 1..=2^20-1; any operation on an uninitialised barrier;
//! arriving more times than the phase has pending arrivals (over-arrival: the ISA leaves it undefined);
//! a tx-count leaving ±(2^20-1) (expect_tx overflow, complete_tx underflow).

/// Largest arrival count and tx-count magnitude the ISA allows.
pub const MAX_COUNT: u32 = (1 << 20) - 1;
/// Largest `expect_tx` / `complete_tx` byte count in one operation.
pub const MAX_TX: u32 = MAX_COUNT;

const COUNT_MASK: u64 = (1 << 20) - 1;
const TX_SHIFT: u32 = 40;
const TX_BITS: u32 = 21;
const PHASE_SHIFT: u32 = 61;

/// A decoded barrier, for the operations and for reports ("waiting on phase 3, 2 arrivals and 4096
/// bytes pending").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// Phase number mod 8; its low bit is the parity waits compare against.
    pub phase: u32,
    pub pending: u32,
    pub expected: u32,
    pub tx: i32,
}

impl State {
    pub fn parity(&self) -> u32 {
        self.phase & 1
    }

    fn word(&self) -> u64 {
        let tx = (self.tx as i64 as u64) & ((1 << TX_BITS) - 1);
        self.pending as u64 | (self.expected as u64) << 20 | tx << TX_SHIFT | ((self.phase & 7) as u64) << PHASE_SHIFT
    }

    /// Completes the phase if nothing is pending.
    fn settle(&mut self) {
        if self.pending == 0 && self.tx == 0 {
            self.phase = (self.phase + 1) & 7;
            self.pending = self.expected;
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "phase {} (parity {}), {} of {} arrivals pending, tx-count {}",
            self.phase,
            self.parity(),
            self.pending,
            self.expected,
            self.tx
        )
    }
}

/// Misuse of an mbarrier. Converts into [`crate::Error::Barrier`], located by [`crate::Error::at`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MbarrierError {
    #[error("mbarrier.init: count {count} is outside 1..={MAX_COUNT}")]
    InitCount { count: u32 },
    #[error("mbarrier.{op} on an mbarrier that is not initialised (state word {word:#018x})")]
    NotInitialised { op: &'static str, word: u64 },
    #[error("mbarrier.arrive: count {count} is outside 1..={MAX_COUNT}")]
    ArriveCount { count: u32 },
    #[error("mbarrier.arrive: {count} arrival(s) but only {} pending: more arrivals than init's count in {state}", state.pending)]
    OverArrival { count: u32, state: State },
    #[error("mbarrier.{op}: {bytes} bytes would take the tx-count outside ±{MAX_TX} ({state})")]
    TxRange { op: &'static str, bytes: u32, state: State },
}

/// Decodes a state word; an uninitialised or corrupt word is an error naming `op`.
pub fn state(word: u64, op: &'static str) -> Result<State, MbarrierError> {
    let pending = (word & COUNT_MASK) as u32;
    let expected = ((word >> 20) & COUNT_MASK) as u32;
    let raw_tx = ((word >> TX_SHIFT) & ((1 << TX_BITS) - 1)) as i32;
    let tx = (raw_tx << (32 - TX_BITS)) >> (32 - TX_BITS);
    if expected == 0 || pending > expected || tx.unsigned_abs() > MAX_TX {
        return Err(MbarrierError::NotInitialised { op, word });
    }
    Ok(State { phase: (word >> PHASE_SHIFT) as u32, pending, expected, tx })
}

/// `mbarrier.init [addr], count`: phase 0, `count` arrivals pending, tx-count 0.
pub fn init(word: &mut u64, count: u32) -> Result<(), MbarrierError> {
    if count == 0 || count > MAX_COUNT {
        return Err(MbarrierError::InitCount { count });
    }
    *word = State { phase: 0, pending: count, expected: count, tx: 0 }.word();
    Ok(())
}

/// `mbarrier.inval`: the word no longer holds a barrier.
pub fn inval(word: &mut u64) {
    *word = 0;
}

/// `mbarrier.arrive{.expect_tx}` with `count` arrivals (1 without the count operand). Returns the
/// state token: the word before the arrival (so [`test_wait`] can tell its phase). Completes the
/// phase when this was the last pending arrival and the tx-count is zero.
pub fn arrive(word: &mut u64, count: u32) -> Result<u64, MbarrierError> {
    if count == 0 || count > MAX_COUNT {
        return Err(MbarrierError::ArriveCount { count });
    }
    let mut s = state(*word, "arrive")?;
    if count > s.pending {
        return Err(MbarrierError::OverArrival { count, state: s });
    }
    let token = *word;
    s.pending -= count;
    s.settle();
    *word = s.word();
    Ok(token)
}

/// `mbarrier.expect_tx`: raises the current phase's tx-count by `bytes`.
pub fn expect_tx(word: &mut u64, bytes: u32) -> Result<(), MbarrierError> {
    change_tx(word, "expect_tx", bytes, 1)
}

/// `mbarrier.arrive.expect_tx`: expect_tx(bytes), then arrive(1), as one operation.
pub fn arrive_expect_tx(word: &mut u64, bytes: u32) -> Result<u64, MbarrierError> {
    let before = *word;
    expect_tx(word, bytes)?;
    arrive(word, 1).inspect_err(|_| *word = before).map(|_| before)
}

/// `complete_tx` (what a TMA copy signals when its bytes have landed): lowers the tx-count by
/// `bytes`, completing the phase if that brings it to zero with no arrivals pending.
pub fn complete_tx(word: &mut u64, bytes: u32) -> Result<(), MbarrierError> {
    change_tx(word, "complete_tx", bytes, -1)
}

fn change_tx(word: &mut u64, op: &'static str, bytes: u32, sign: i64) -> Result<(), MbarrierError> {
    let mut s = state(*word, op)?;
    let tx = s.tx as i64 + sign * bytes as i64;
    if tx.unsigned_abs() > MAX_TX as u64 {
        return Err(MbarrierError::TxRange { op, bytes, state: s });
    }
    s.tx = tx as i32;
    s.settle();
    *word = s.word();
    Ok(())
}

/// `mbarrier.test_wait.parity` / `try_wait.parity`: whether the phase of parity `parity` (its low
/// bit) has completed, i.e. the current phase has the other parity. try_wait is the same test; how
/// long it suspends the thread before answering false is the scheduler's business.
pub fn test_wait_parity(word: u64, parity: u32) -> Result<bool, MbarrierError> {
    Ok(state(word, "test_wait.parity")?.parity() != parity & 1)
}

/// `mbarrier.test_wait` / `try_wait` with a state token from [`arrive`]: whether the phase the token
/// was taken in has completed.
pub fn test_wait(word: u64, token: u64) -> Result<bool, MbarrierError> {
    let now = state(word, "test_wait")?;
    let then = state(token, "test_wait (token)")?;
    Ok(now.phase != then.phase)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(word: u64) -> State {
        state(word, "test").unwrap()
    }

    #[test]
    fn phase_completes_on_the_last_arrival_and_flips_parity() {
        let mut w = 0;
        init(&mut w, 3).unwrap();
        assert_eq!(st(w), State { phase: 0, pending: 3, expected: 3, tx: 0 });
        // Phase 0 not complete: a wait on parity 0 fails, parity 1 (the "preceding phase") passes.
        assert!(!test_wait_parity(w, 0).unwrap());
        assert!(test_wait_parity(w, 1).unwrap());
        let t0 = arrive(&mut w, 1).unwrap();
        let t1 = arrive(&mut w, 1).unwrap();
        assert_eq!(st(w).pending, 1);
        assert!(!test_wait(w, t0).unwrap() && !test_wait(w, t1).unwrap());
        arrive(&mut w, 1).unwrap();
        assert_eq!(st(w), State { phase: 1, pending: 3, expected: 3, tx: 0 });
        assert!(test_wait_parity(w, 0).unwrap());
        assert!(!test_wait_parity(w, 1).unwrap());
        assert!(test_wait(w, t0).unwrap() && test_wait(w, t1).unwrap());
        // Phase 1 by one arrival of count 3, then phase 2 has parity 0 again.
        arrive(&mut w, 3).unwrap();
        assert_eq!(st(w).phase, 2);
        assert!(test_wait_parity(w, 1).unwrap() && !test_wait_parity(w, 0).unwrap());
    }

    #[test]
    fn tx_bytes_hold_the_phase_until_they_complete() {
        // The producer/consumer handshake of a TMA stage: count 1, arrive.expect_tx, then the copy.
        let mut w = 0;
        init(&mut w, 1).unwrap();
        let token = arrive_expect_tx(&mut w, 49_152).unwrap();
        assert_eq!(st(w), State { phase: 0, pending: 0, expected: 1, tx: 49_152 });
        assert!(!test_wait_parity(w, 0).unwrap() && !test_wait(w, token).unwrap());
        complete_tx(&mut w, 16_384).unwrap();
        complete_tx(&mut w, 16_384).unwrap();
        assert!(!test_wait_parity(w, 0).unwrap());
        complete_tx(&mut w, 16_384).unwrap();
        assert_eq!(st(w), State { phase: 1, pending: 1, expected: 1, tx: 0 });
        assert!(test_wait_parity(w, 0).unwrap() && test_wait(w, token).unwrap());
    }

    #[test]
    fn bytes_may_land_before_they_are_expected() {
        let mut w = 0;
        init(&mut w, 1).unwrap();
        complete_tx(&mut w, 100).unwrap();
        assert_eq!(st(w).tx, -100);
        // The arrival alone does not complete the phase while the tx-count is not zero.
        expect_tx(&mut w, 60).unwrap();
        arrive(&mut w, 1).unwrap();
        assert_eq!(st(w), State { phase: 0, pending: 0, expected: 1, tx: -40 });
        expect_tx(&mut w, 40).unwrap();
        assert_eq!(st(w), State { phase: 1, pending: 1, expected: 1, tx: 0 });
    }

    #[test]
    fn phase_number_wraps_mod_8_and_parity_follows() {
        let mut w = 0;
        init(&mut w, 2).unwrap();
        for round in 0..20u32 {
            assert_eq!(st(w).phase, round % 8);
            assert!(!test_wait_parity(w, round & 1).unwrap());
            assert!(test_wait_parity(w, (round + 1) & 1).unwrap());
            arrive(&mut w, 1).unwrap();
            arrive(&mut w, 1).unwrap();
        }
    }

    #[test]
    fn misuse_is_an_error() {
        let mut w = 0u64;
        assert_eq!(init(&mut w, 0), Err(MbarrierError::InitCount { count: 0 }));
        assert_eq!(init(&mut w, MAX_COUNT + 1), Err(MbarrierError::InitCount { count: MAX_COUNT + 1 }));
        // Never initialised (zero bytes) or invalidated.
        assert!(matches!(arrive(&mut w, 1), Err(MbarrierError::NotInitialised { op: "arrive", .. })));
        assert!(matches!(test_wait_parity(w, 0), Err(MbarrierError::NotInitialised { .. })));
        assert!(matches!(complete_tx(&mut w, 16), Err(MbarrierError::NotInitialised { .. })));
        init(&mut w, 2).unwrap();
        assert_eq!(arrive(&mut w, 0), Err(MbarrierError::ArriveCount { count: 0 }));
        let before = w;
        let err = arrive(&mut w, 3).unwrap_err();
        assert!(matches!(err, MbarrierError::OverArrival { count: 3, .. }));
        assert!(err.to_string().contains("2 of 2 arrivals pending"), "{err}");
        assert_eq!(w, before, "a failed arrive leaves the barrier as it was");
        expect_tx(&mut w, MAX_TX).unwrap();
        assert!(matches!(expect_tx(&mut w, 1), Err(MbarrierError::TxRange { op: "expect_tx", .. })));
        init(&mut w, 1).unwrap();
        complete_tx(&mut w, MAX_TX).unwrap();
        assert!(matches!(complete_tx(&mut w, 1), Err(MbarrierError::TxRange { op: "complete_tx", .. })));
        // A second arrive.expect_tx in a phase whose only arrival has happened over-arrives, and
        // leaves the barrier as it was (not even the tx-count changes).
        init(&mut w, 1).unwrap();
        arrive_expect_tx(&mut w, 8).unwrap();
        let before = w;
        assert!(matches!(arrive_expect_tx(&mut w, 8), Err(MbarrierError::OverArrival { .. })));
        assert_eq!(w, before);
        inval(&mut w);
        assert!(matches!(test_wait_parity(w, 0), Err(MbarrierError::NotInitialised { .. })));
    }
}
