//! Manifests kept as the registry's raw bytes next to their parsed form.
//!
//! mirrorfleet never re-serialises a manifest: the bytes read from the source
//! are the bytes pushed to every destination, so digests are preserved. The
//! parsed form is only used to find what a manifest references.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;

use crate::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_ARTIFACT: &str = "application/vnd.oci.artifact.manifest.v1+json";

/// Every manifest type we can copy, for `Accept` headers. Registries answer
/// HEAD with 404 for an index unless the index types are listed.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.artifact.manifest.v1+json";

/// Registries cap manifests at 4 MiB; refusing more keeps memory bounded.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A reference from one manifest to a blob or another manifest.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// Foreign (Windows base) and non-distributable layers are fetched by
    /// clients from their `urls`, never pushed; skopeo skips them the same way.
    pub fn is_foreign(&self) -> bool {
        let t = self.media_type.as_str();
        (t.contains("foreign") || t.contains("nondistributable")) && !self.urls.is_empty()
    }

    pub fn is_manifest(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            OCI_INDEX | OCI_MANIFEST | DOCKER_LIST | DOCKER_MANIFEST | OCI_ARTIFACT
        )
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a manifest references, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An index or manifest list: child manifests (possibly nested indexes).
    Index { manifests: Vec<Descriptor> },
    /// An image or artifact manifest: blobs (config, if any, first).
    Image { blobs: Vec<Descriptor> },
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, over the 4 MiB limit registries accept")]
    TooLarge(usize),
    #[error(
        "Docker schema 1 manifests are deprecated and cannot be copied with digests preserved; \
         rebuild or re-push the image with a current client"
    )]
    Schema1,
    #[error("manifest is not valid JSON of type {media_type}: {source}")]
    Malformed {
        media_type: String,
        source: serde_json::Error,
    },
    #[error("unsupported manifest media type {0:?}")]
    Unsupported(String),
}

/// A manifest: raw bytes, its media type and digest, and what it references.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub raw: Bytes,
    pub media_type: String,
    pub digest: Digest,
    pub parsed: Parsed,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    blobs: Option<Vec<Descriptor>>,
    #[serde(default)]
    schema_version: Option<u32>,
}

impl Manifest {
    /// Parse `raw` as served with `content_type`. The digest is computed here
    /// from the bytes, never taken from a header.
    pub fn from_raw(raw: Bytes, content_type: &str) -> Result<Manifest, ManifestError> {
        if raw.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(raw.len()));
        }
        let digest = Digest::sha256_of(&raw);
        let ct = content_type.split(';').next().unwrap_or("").trim();
        if ct == DOCKER_SCHEMA1 || ct == DOCKER_SCHEMA1_SIGNED {
            return Err(ManifestError::Schema1);
        }
        let parsed_raw: RawManifest =
            serde_json::from_slice(&raw).map_err(|source| ManifestError::Malformed {
                media_type: ct.to_string(),
                source,
            })?;
        // Some registries answer with a generic content type; the document's own
        // mediaType (or its shape) then decides.
        let media_type = match ct {
            OCI_INDEX | OCI_MANIFEST | DOCKER_LIST | DOCKER_MANIFEST | OCI_ARTIFACT => {
                ct.to_string()
            }
            _ => match (&parsed_raw.media_type, &parsed_raw.manifests) {
                (Some(mt), _) => mt.clone(),
                (None, Some(_)) => OCI_INDEX.to_string(),
                (None, None) if parsed_raw.schema_version == Some(1) => {
                    return Err(ManifestError::Schema1);
                }
                (None, None) => OCI_MANIFEST.to_string(),
            },
        };
        let parsed = match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => Parsed::Index {
                manifests: parsed_raw.manifests.unwrap_or_default(),
            },
            OCI_MANIFEST | DOCKER_MANIFEST | OCI_ARTIFACT => {
                let mut blobs: Vec<Descriptor> = parsed_raw.config.into_iter().collect();
                blobs.extend(parsed_raw.layers.unwrap_or_default());
                blobs.extend(parsed_raw.blobs.unwrap_or_default());
                Parsed::Image { blobs }
            }
            DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => return Err(ManifestError::Schema1),
            other => return Err(ManifestError::Unsupported(other.to_string())),
        };
        Ok(Manifest {
            raw,
            media_type,
            digest,
            parsed,
        })
    }

    pub fn is_index(&self) -> bool {
        matches!(self.parsed, Parsed::Index { .. })
    }

    /// The blobs to copy for this manifest: everything but foreign layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        let blobs: &[Descriptor] = match &self.parsed {
            Parsed::Image { blobs } => blobs,
            Parsed::Index { .. } => &[],
        };
        blobs.iter().filter(|d| !d.is_foreign())
    }

    pub fn children(&self) -> &[Descriptor] {
        match &self.parsed {
            Parsed::Index { manifests } => manifests,
            Parsed::Image { .. } => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn parses_index_and_keeps_bytes() {
        let raw = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":11,"platform":{{"architecture":"unknown","os":"unknown"}},
                "annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}]}}"#,
            d(1),
            d(2)
        );
        let m = Manifest::from_raw(Bytes::from(raw.clone()), OCI_INDEX).unwrap();
        assert!(m.is_index());
        assert_eq!(m.children().len(), 2);
        assert_eq!(m.raw, raw.as_bytes());
        assert_eq!(m.digest, Digest::sha256_of(raw.as_bytes()));
        assert_eq!(
            m.children()[0].platform.as_ref().unwrap().to_string(),
            "linux/amd64"
        );
    }

    #[test]
    fn image_blobs_skip_foreign_layers() {
        let raw = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
              "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":2}},
              "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":3}},
                        {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{}","size":4,"urls":["https://example.invalid/l"]}}]}}"#,
            d(1),
            d(2),
            d(3)
        );
        let m = Manifest::from_raw(Bytes::from(raw), DOCKER_MANIFEST).unwrap();
        let blobs: Vec<_> = m.blobs().map(|b| b.digest.to_string()).collect();
        assert_eq!(blobs, vec![d(1), d(2)]);
    }

    #[test]
    fn media_type_from_document_when_header_is_generic() {
        let raw = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1}}]}}"#,
            d(1)
        );
        let m = Manifest::from_raw(Bytes::from(raw), "application/json").unwrap();
        assert_eq!(m.media_type, OCI_INDEX);
    }

    #[test]
    fn refuses_schema1_and_garbage() {
        let s1 = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(matches!(
            Manifest::from_raw(Bytes::from_static(s1), DOCKER_SCHEMA1_SIGNED),
            Err(ManifestError::Schema1)
        ));
        assert!(matches!(
            Manifest::from_raw(Bytes::from_static(s1), "application/json"),
            Err(ManifestError::Schema1)
        ));
        assert!(matches!(
            Manifest::from_raw(Bytes::from_static(b"not json"), OCI_MANIFEST),
            Err(ManifestError::Malformed { .. })
        ));
        let big = Bytes::from(vec![b' '; MAX_MANIFEST_BYTES + 1]);
        assert!(matches!(
            Manifest::from_raw(big, OCI_MANIFEST),
            Err(ManifestError::TooLarge(_))
        ));
    }
}
