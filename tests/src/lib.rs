//! Test harness for mirrorfleet's integration tests.
//!
//! Talks to the real local stack started by `scripts/stack.sh up` (registries
//! and moto on 127.0.0.1). Fixtures are pushed with a deliberately minimal
//! client of its own (monolithic POST+PUT), and results are checked with
//! skopeo, so neither side trusts mirrorfleet's registry client.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

pub mod ecr_double;
pub mod faults;
pub mod gate;
pub mod iam;
pub mod images;
pub mod moto;
pub mod recording;
mod serve;

mod aws;
mod bins;
mod fake;
mod local;
mod push;
mod skopeo;
mod stack;

pub use aws::*;
pub use bins::*;
pub use fake::*;
pub use local::*;
pub use push::*;
pub use skopeo::*;
pub use stack::*;
