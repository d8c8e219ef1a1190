//! Tape-based reverse-mode differentiation.
