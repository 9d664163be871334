//! Where referrers live when a registry has no referrers API: the OCI tag
//! schema (`sha256-<hex>`, an index of the artifacts) and cosign's tags next
//! to the image (`sha256-<hex>.sig`, `.att`, `.sbom`). Written once here for
//! the copy engine, the controller's referrer check and the event filter.

use crate::oci::digest::Digest;
use crate::oci::manifest::Descriptor;

/// cosign's tag scheme: `<alg>-<hex>.<suffix>` next to the image, with the
/// artifact type each suffix stands for (for the `artifact_types` filter).
pub const COSIGN_TAGS: [(&str, &str); 3] = [
    (".sig", "application/vnd.dev.cosign.artifact.sig.v1+json"),
    (".att", "application/vnd.dsse.envelope.v1+json"),
    (".sbom", "text/spdx+json"),
];

/// The tags a referrer of `digest` is stored under where there is no
/// referrers API: the tag schema index, then cosign's.
pub fn referrer_tags(digest: &Digest) -> Vec<String> {
    std::iter::once(digest.tag_form())
        .chain(
            COSIGN_TAGS
                .iter()
                .map(|(suffix, _)| digest.cosign_tag(suffix)),
        )
        .collect()
}

/// The digest a referrer tag is about (`sha256-<hex>`, with or without a
/// cosign suffix), as `sha256:<hex>`; `None` for any other tag.
pub fn subject_of_tag(tag: &str) -> Option<String> {
    let stem = COSIGN_TAGS
        .iter()
        .find_map(|(s, _)| tag.strip_suffix(s))
        .unwrap_or(tag);
    let hex = stem.strip_prefix("sha256-")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}

/// BuildKit's attestation manifests inside an index: data about an image,
/// not an image, so nothing refers to them.
pub fn is_attestation(d: &Descriptor) -> bool {
    d.annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|t| t == "attestation-manifest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_subjects() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let tags = referrer_tags(&d);
        assert_eq!(tags.len(), 4);
        for t in &tags {
            assert_eq!(subject_of_tag(t).as_deref(), Some(d.to_string().as_str()));
        }
        assert_eq!(subject_of_tag("latest"), None);
        assert_eq!(subject_of_tag("sha256-abc.sig"), None);
    }
}
