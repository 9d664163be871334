//! mirrorfleet's shared library: everything between an image reference and
//! bytes in a destination registry.
//!
//! Modules in data-flow order:
//! - [`reference`]: parse and normalise image references (`golang:1.17` →
//!   `docker.io/library/golang:1.17`).
//! - [`select`]: which listed tags or repositories a many-image mirror row
//!   takes (`tags` and `repositories` rules).
//! - [`settings`]: per-registry settings (endpoint overrides, TLS, credentials).
//! - [`auth`]: credentials (explicit, Docker config, helpers) and challenges.
//! - [`ecr`]: ECR hosts, authorization tokens and repository creation.
//! - [`registries`]: one HTTP client per registry, with its credentials.
//! - [`client`]: the registry HTTP API (manifests, blobs, mounts, uploads),
//!   with auth and retries per [`retry`], and adaptive concurrency per
//!   [`limit`] (fewer requests at once after a 429), and manifest pushes
//!   paced per [`bucket`] (ECR's `PutImage` rate).
//! - [`manifest`] and [`digest`]: raw manifests and their parsed form; streaming
//!   sha256 verification.
//! - [`ledger`]: which blobs are present or in flight per repository.
//! - [`copy`]: the engine that copies one source to many destinations.
//! - [`cli`]: flags shared by the binaries, logging, tables.
//! - [`metrics`]: CloudWatch Embedded Metric Format lines.
//! - [`error`]: the one error type, in words a mirror's owner can act on.

pub mod aws;
pub mod cli;
pub mod control;
pub mod copy;
pub mod error;
pub mod metrics;
pub mod oci;
pub mod registry;
pub mod retry;
pub mod shutdown;
pub mod store;

pub use copy::{CopyOptions, CopyReport, CopyRules, DestinationReport, Engine, Outcome};
pub use error::{Error, Result};
pub use oci::reference::Reference;
