//! Manifests kept as the registry's raw bytes next to their parsed form.
//!
//! mirrorfleet never re-serialises a manifest: the bytes read from the source
//! are the bytes pushed to every destination, so digests are preserved. The
//! parsed form is only used to find what a manifest references.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;

use crate::oci::digest::Digest;

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

/// A platform a row asks for: `os/arch` or `os/arch/variant`
/// (`linux/amd64`, `linux/arm/v7`). Without a variant it matches every
/// variant of the architecture.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::str::FromStr for PlatformSpec {
    type Err = String;

    fn from_str(raw: &str) -> Result<PlatformSpec, String> {
        let parts: Vec<&str> = raw.trim().split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid(p)) {
            return Err(format!(
                "{raw:?} is not a platform: write os/architecture[/variant], e.g. linux/amd64 or linux/arm/v7"
            ));
        }
        Ok(PlatformSpec {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl PlatformSpec {
    pub fn matches(&self, p: &Platform) -> bool {
        // arm64 images usually omit their (only) variant, v8.
        let variant = |arch: &str, v: Option<&str>| match (arch, v) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_ascii_lowercase),
        };
        self.os == p.os.to_ascii_lowercase()
            && self.architecture == p.architecture.to_ascii_lowercase()
            && (self.variant.is_none()
                || variant(&self.architecture, self.variant.as_deref())
                    == variant(&self.architecture, p.variant.as_deref()))
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
    #[error("it has none of the platforms {wanted} (only {available})")]
    NoPlatform { wanted: String, available: String },
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

    /// This index cut down to the `wanted` platforms: the one place a
    /// manifest is re-serialised, so the result has a digest of its own
    /// (children keep theirs). Attestations (buildx's `unknown/unknown`
    /// entries) stay when the image they describe stays; entries without a
    /// platform stay too, as nothing says they belong to a dropped one.
    ///
    /// `Ok(None)` when nothing would be dropped (the source's bytes and
    /// digest are kept) and for a single-platform image, which has no
    /// platforms to choose from.
    pub fn select_platforms(
        &self,
        wanted: &[PlatformSpec],
    ) -> Result<Option<Manifest>, ManifestError> {
        let children = self.children();
        if wanted.is_empty() || !self.is_index() {
            return Ok(None);
        }
        let attests = |d: &Descriptor| {
            d.annotations
                .get("vnd.docker.reference.type")
                .is_some_and(|t| t == "attestation-manifest")
        };
        let kept_image = |d: &Descriptor| {
            d.platform
                .as_ref()
                .is_some_and(|p| wanted.iter().any(|w| w.matches(p)))
        };
        let keep: Vec<bool> = children
            .iter()
            .map(|d| {
                if attests(d) {
                    let subject = d.annotations.get("vnd.docker.reference.digest");
                    return children.iter().any(|c| {
                        !attests(c) && kept_image(c) && subject == Some(&c.digest.to_string())
                    });
                }
                d.platform.is_none() || kept_image(d)
            })
            .collect();
        if !children
            .iter()
            .zip(&keep)
            .any(|(c, k)| *k && c.platform.is_some() && !attests(c))
        {
            let mut available: Vec<String> = children
                .iter()
                .filter(|c| !attests(c))
                .filter_map(|c| c.platform.as_ref().map(ToString::to_string))
                .collect();
            available.dedup();
            let list = |v: Vec<String>| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            return Err(ManifestError::NoPlatform {
                wanted: list(wanted.iter().map(ToString::to_string).collect()),
                available: list(available),
            });
        }
        if keep.iter().all(|k| *k) {
            return Ok(None);
        }
        let malformed = |source| ManifestError::Malformed {
            media_type: self.media_type.clone(),
            source,
        };
        let mut doc: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&self.raw).map_err(malformed)?;
        if let Some(serde_json::Value::Array(entries)) = doc.get_mut("manifests") {
            // The entries are the children, in order (both parsed from `raw`).
            let mut k = keep.iter();
            entries.retain(|_| k.next().copied().unwrap_or(false));
        }
        let raw = serde_json::to_vec(&doc).map_err(malformed)?;
        Manifest::from_raw(Bytes::from(raw), &self.media_type).map(Some)
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

    fn index(entries: &[(&str, u8, Option<u8>)]) -> Manifest {
        let items: Vec<String> = entries
            .iter()
            .map(|(p, n, subject)| match subject {
                Some(s) => format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"architecture":"unknown","os":"unknown"}},
                        "annotations":{{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":"{}"}}}}"#,
                    d(*n),
                    d(*s)
                ),
                None if p.is_empty() => {
                    format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}}"#, d(*n))
                }
                None => {
                    let mut parts = p.split('/');
                    let (os, arch) = (parts.next().unwrap(), parts.next().unwrap());
                    let variant = parts
                        .next()
                        .map(|v| format!(r#","variant":"{v}""#))
                        .unwrap_or_default();
                    format!(
                        r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"architecture":"{arch}","os":"{os}"{variant}}}}}"#,
                        d(*n)
                    )
                }
            })
            .collect();
        let raw = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}],"annotations":{{"org.opencontainers.image.created":"2026-01-01"}}}}"#,
            items.join(",")
        );
        Manifest::from_raw(Bytes::from(raw), OCI_INDEX).unwrap()
    }

    fn specs(list: &[&str]) -> Vec<PlatformSpec> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn kept(m: &Manifest) -> Vec<String> {
        m.children().iter().map(|c| c.digest.to_string()).collect()
    }

    #[test]
    fn platform_specs_parse_and_match() {
        let p = |os: &str, arch: &str, v: Option<&str>| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: v.map(Into::into),
        };
        let cases: &[(&str, Platform, bool)] = &[
            ("linux/amd64", p("linux", "amd64", None), true),
            ("Linux/AMD64", p("linux", "amd64", None), true),
            ("linux/amd64", p("linux", "arm64", None), false),
            ("linux/amd64", p("windows", "amd64", None), false),
            ("linux/arm", p("linux", "arm", Some("v7")), true),
            ("linux/arm", p("linux", "arm", Some("v6")), true),
            ("linux/arm/v7", p("linux", "arm", Some("v6")), false),
            ("linux/arm/v7", p("linux", "arm", Some("v7")), true),
            ("linux/arm64/v8", p("linux", "arm64", None), true),
            ("linux/arm64", p("linux", "arm64", Some("v8")), true),
            ("linux/arm64/v9", p("linux", "arm64", None), false),
        ];
        for (spec, platform, want) in cases {
            let s: PlatformSpec = spec.parse().unwrap();
            assert_eq!(s.matches(platform), *want, "{spec} vs {platform}");
        }
        for bad in [
            "linux",
            "",
            "linux/",
            "/amd64",
            "a/b/c/d",
            "linux/amd 64",
            "linux//amd64",
        ] {
            let e = bad.parse::<PlatformSpec>().unwrap_err();
            assert!(e.contains("is not a platform"), "{bad}: {e}");
        }
        assert_eq!(
            "linux/arm/v7".parse::<PlatformSpec>().unwrap().to_string(),
            "linux/arm/v7"
        );
    }

    #[test]
    fn select_platforms_keeps_children_and_their_attestations() {
        let m = index(&[
            ("linux/amd64", 1, None),
            ("linux/arm64", 2, None),
            ("linux/s390x", 3, None),
            ("", 4, Some(1)),
            ("", 5, Some(3)),
        ]);
        let f = m
            .select_platforms(&specs(&["linux/amd64", "linux/arm64"]))
            .unwrap()
            .unwrap();
        assert_eq!(kept(&f), vec![d(1), d(2), d(4)]);
        assert_eq!(f.media_type, OCI_INDEX);
        assert_ne!(f.digest, m.digest);
        assert_eq!(f.digest, Digest::sha256_of(&f.raw));
        // Everything else in the document is kept.
        let doc: serde_json::Value = serde_json::from_slice(&f.raw).unwrap();
        assert_eq!(
            doc["annotations"]["org.opencontainers.image.created"],
            "2026-01-01"
        );
        assert_eq!(doc["schemaVersion"], 2);
        // Deterministic: the controller and the worker compute the same digest.
        let again = m
            .select_platforms(&specs(&["linux/arm64", "linux/amd64"]))
            .unwrap()
            .unwrap();
        assert_eq!(again.raw, f.raw);

        let only = m
            .select_platforms(&specs(&["linux/s390x"]))
            .unwrap()
            .unwrap();
        assert_eq!(kept(&only), vec![d(3), d(5)]);
    }

    #[test]
    fn select_platforms_keeps_the_source_when_nothing_is_dropped() {
        let m = index(&[
            ("linux/amd64", 1, None),
            ("linux/arm64", 2, None),
            ("", 4, Some(1)),
        ]);
        assert!(
            m.select_platforms(&specs(&["linux/amd64", "linux/arm64"]))
                .unwrap()
                .is_none()
        );
        assert!(m.select_platforms(&[]).unwrap().is_none());
        // A single-platform image has nothing to choose from.
        let raw = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":1}},"layers":[]}}"#,
            d(1)
        );
        let image = Manifest::from_raw(Bytes::from(raw), OCI_MANIFEST).unwrap();
        assert!(
            image
                .select_platforms(&specs(&["linux/s390x"]))
                .unwrap()
                .is_none()
        );
        // Entries without a platform are never dropped.
        let m = index(&[
            ("linux/amd64", 1, None),
            ("", 6, None),
            ("linux/arm64", 2, None),
        ]);
        let f = m
            .select_platforms(&specs(&["linux/arm64"]))
            .unwrap()
            .unwrap();
        assert_eq!(kept(&f), vec![d(6), d(2)]);
    }

    #[test]
    fn select_platforms_without_a_match_names_what_there_is() {
        let m = index(&[
            ("linux/amd64", 1, None),
            ("linux/arm/v7", 2, None),
            ("", 4, Some(1)),
        ]);
        let e = m
            .select_platforms(&specs(&["windows/amd64", "linux/arm64"]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "it has none of the platforms windows/amd64, linux/arm64 (only linux/amd64, linux/arm/v7)"
        );
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
