//! The OCI data model: references, digests, manifests.

pub mod digest;
pub mod manifest;
pub mod reference;
