//! The simulated disk: a deterministic in-memory `Disk`. Filled in below.
