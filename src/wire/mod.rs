//! Flatbuffers <-> domain types. The only importer of the generated code (`generated/`,
//! produced from `schemas/` by `scripts/gen-flatbuffers` and checked in). Everything read
//! from outside bytes is verified (`root_as_*`, never `_unchecked`) and converted into
//! validated domain types or a `WireError`; no input makes this module panic.

pub mod batch;
pub mod client;
pub mod frame;
pub mod raft;

#[allow(clippy::all, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes, non_camel_case_types)]
#[rustfmt::skip]
mod generated;

pub use batch::{Batch, Forward};
pub use frame::{FrameError, FrameHeader};
pub use raft::{WireError, decode_batch, decode_batch_shared, encode_batch};
