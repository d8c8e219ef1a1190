//! dsmoe.
