//! The OCI data model: references, digests, manifests, and where referrers are
//! stored without a referrers API.

pub mod digest;
pub mod manifest;
pub mod reference;
pub mod referrers;
