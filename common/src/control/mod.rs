//! The control plane: the mirror table's rows, the controller's decision,
//! jobs, and the worker loop.

pub mod concurrency;
pub mod consume;
pub mod enqueue;
pub mod job;
pub mod known;
pub mod plan;
pub mod referrer_facts;
pub mod scan;
pub mod select;
pub mod table;
