//! mirrorfleet's shared library: the control plane that decides what to
//! mirror, and the copy engine that moves the bytes.
//!
//! The pipeline is row → plan → job → copy → status. Each step has one
//! folder; the modules are listed in the order data flows through them.
//! `docs/architecture.md` draws the picture and says which folder each kind
//! of change touches.
//!
//! **Rows** ([`control::table`], kept by [`store`]):
//! - [`control`]: the control plane's steps, below.
//! - [`control::table`]: a mirror row ([`control::table::Row`]) and its
//!   destinations' statuses, how a mirror is built and checked (`mirror`),
//!   the mirror file (`file`) and CSV (`csv`) forms, read row by row into
//!   what parsed and what was refused (`parsed`);
//!   [`control::table::status`] is the only place a status changes, and its
//!   `Guard` decides whether a write lands.
//! - [`control::select`]: which tags (`tags`, version ranges in `versions`)
//!   and repositories (`repos`, `glob`) a many-image row takes.
//! - [`store`]: where rows live: DynamoDB (`dynamo`, with the item codec in
//!   `item`, batched imports in `batch` and the source `index` an ECR push
//!   finds its rows by) or, in local mode, the mirror file (`file`) with
//!   its statuses in an embedded SQLite database beside it (`local`, which
//!   says why SQLite; `runs` tells which processes have it open);
//!   [`store::queue`] holds jobs in SQS or in memory.
//!
//! **Plan** (the controller):
//! - [`control::scan`]: read the rows, probe (HEAD) sources and
//!   destinations, gather the facts the planner needs (referrer tags too),
//!   after [`control::known`] asked a page's digests in bulk where the
//!   registry can tell many per call (ECR); [`control::referrer_facts`]
//!   compares referrer tags when asked.
//! - [`control::plan`]: the decision, a pure function of those facts.
//! - [`control::enqueue`]: apply a plan: mark `synced`, claim `queued`, send
//!   [`control::job`] messages.
//!
//! **Copy** (the worker):
//! - [`control::consume`]: the worker loop: receive a job, copy, record each
//!   destination's outcome, delete or defer the message;
//!   [`control::concurrency`] adapts how many images it copies at once.
//! - [`copy`]: the engine, one source to N destinations, all platforms:
//!   destination state (`dest`), blobs claimed in a ledger and streamed with
//!   their sha256 checked (`blobs`, `ledger`), manifest trees pushed children
//!   first (`tree`), then signatures and attestations (`referrers`).
//! - [`oci`]: the data model: [`oci::reference`], [`oci::digest`] (with the
//!   streaming verifier), [`oci::manifest`] (raw bytes beside the parsed
//!   form), [`oci::referrers`] (the referrer tag scheme, once).
//! - [`registry`]: one client per registry ([`registry::Registries`], also
//!   the one layer that knows about ECR), its [`registry::settings`]
//!   (from a file, or kept in AWS: [`registry::secrets`], which also reads a
//!   registry's credentials and another partition's AWS keys from Secrets
//!   Manager), [`registry::auth`] credentials, [`registry::ecr`] (tokens and
//!   repositories, image digests in bulk in `digests`, its hosts in `host`,
//!   tag rules in `mutability`, and how
//!   each registry's API is reached in `access`: keys, an assumed role, an
//!   external id) and the HTTP API in [`registry::client`]
//!   (the auth handshake in `token`, the one request path in `send`, Docker
//!   Hub's pull quota in `quota`, the `endpoints`, error bodies in `errors`,
//!   referrer tags found by one tag `listing` per repository),
//!   with adaptive concurrency (`limit`) and manifest-push pacing (`pace`).
//!
//! **Across the pipeline:**
//! - `retry`: the one retry policy (the status table) and the one retry
//!   helper (`Backoff`), for registry and AWS calls alike.
//! - [`aws`]: the AWS SDK configuration and how its errors read.
//! - [`error`]: the copy path's error type in words a mirror's owner can act
//!   on, and [`error::error_line`] to render any error chain.
//! - [`metrics`]: CloudWatch Embedded Metric Format lines.
//! - [`usage`]: what the process asked of DynamoDB and SQS (requests, and
//!   the capacity units DynamoDB reports), for run reports.
//! - [`cli`]: what the binaries share: flags, logging, tables, and
//!   [`cli::finish`], the exit code of every subcommand.
//! - [`shutdown`]: the one cancellation token, from SIGINT/SIGTERM.

pub mod aws;
pub mod cli;
pub mod control;
pub mod copy;
pub mod error;
pub mod metrics;
pub mod oci;
pub mod registry;
pub(crate) mod retry;
pub mod shutdown;
pub mod store;
pub mod usage;

pub use copy::{CopyOptions, CopyReport, CopyRules, DestinationReport, Engine, Outcome};
pub use error::{Error, Result};
pub use oci::reference::Reference;
