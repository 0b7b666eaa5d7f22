//! The deterministic simulation room. This branch holds only the simulated disk.

pub mod disk;
