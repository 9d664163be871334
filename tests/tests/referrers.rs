#![allow(clippy::unwrap_used)]
//! Signatures, attestations and SBOMs travel with images: the referrers API,
//! its tag schema fallback and cosign's tags. Checked with skopeo.

use std::collections::HashMap;

use mirrorfleet_common::CopyReport;
use mirrorfleet_common::copy::{CopyOptions, Engine, Outcome};
use mirrorfleet_common::registry::settings::Settings;
use mirrorfleet_tests::*;
use serde_json::{Value, json};

const COSIGN_SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SPDX: &str = "text/spdx+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

fn engine(plain: &[&str], options: CopyOptions) -> Engine {
    let mut s = Settings::default();
    for h in plain {
        s.mark_plain_http(h);
    }
    engine_with(s, options)
}

async fn copy(engine: &Engine, src: &str, dest: &str) -> CopyReport {
    copy_to(engine, src, &[dest]).await
}

/// An OCI artifact manifest (config, one small layer, optional subject),
/// pushed by digest; returns its bytes.
async fn push_artifact(
    p: &Pusher,
    repo: &str,
    artifact_type: &str,
    config_type: &str,
    subject: Option<Value>,
) -> Vec<u8> {
    let cfg = p.blob_typed(repo, b"{}", config_type).await.unwrap();
    let layer = p
        .blob_typed(repo, &random_bytes(300), artifact_type)
        .await
        .unwrap();
    let mut m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type, "config": cfg, "layers": [layer]});
    if let Some(s) = subject {
        m["subject"] = s;
    }
    let raw = serde_json::to_vec(&m).unwrap();
    p.manifest(repo, &sha256(&raw), OCI_MANIFEST, &raw)
        .await
        .unwrap();
    raw
}

fn tag_form(digest: &str) -> String {
    digest.replace(':', "-")
}

/// The referrers tag schema: an SBOM naming `subject` (an index of
/// `subject_len` bytes) as its subject, listed in an index under
/// `sha256-<hex>`; returns the SBOM's bytes and the index's digest.
async fn push_schema_index(
    p: &Pusher,
    repo: &str,
    subject: &str,
    subject_len: usize,
) -> (Vec<u8>, String) {
    let s = json!({"mediaType": OCI_INDEX, "digest": subject, "size": subject_len});
    let sbom = push_artifact(p, repo, SPDX, EMPTY, Some(s)).await;
    let entry = json!({"mediaType": OCI_MANIFEST, "digest": sha256(&sbom),
        "size": sbom.len(), "artifactType": SPDX});
    let index = p
        .index(repo, &tag_form(subject), false, vec![entry], json!({}))
        .await
        .unwrap();
    (sbom, index)
}

#[tokio::test]
async fn tag_schema_and_cosign_tags_are_copied_unless_turned_off() {
    let stack = Stack::get();
    let repo = unique("signed");
    let image = push_image(&stack, &repo, "v1").await;
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let image_raw = Skopeo::plain()
        .raw(&format!("{}/{repo}@{image}", stack.src))
        .unwrap();

    // cosign's scheme: a signature image under `sha256-<hex>.sig`.
    let sig = push_artifact(&p, &repo, COSIGN_SIG, COSIGN_SIG, None).await;
    let sig_tag = format!("{}.sig", tag_form(&image));
    p.manifest(&repo, &sig_tag, OCI_MANIFEST, &sig)
        .await
        .unwrap();
    // The referrers tag schema: an SBOM naming the image as its subject,
    // listed in the index under `sha256-<hex>`.
    let (sbom, index) = push_schema_index(&p, &repo, &image, image_raw.len()).await;

    let plain = [stack.src.as_str(), stack.dst.as_str()];
    let src = format!("{}/{repo}:v1", stack.src);
    let dest_repo = format!("{}/{repo}-mirror", stack.dst);
    let r = copy(
        &engine(&plain, CopyOptions::default()),
        &src,
        &format!("{dest_repo}:v1"),
    )
    .await;
    let d = &r.destinations[0];
    assert_eq!(d.outcome, Outcome::Copied, "{:?}", d.error);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(d.referrers_copied, 2, "the signature and the SBOM");

    let sk = Skopeo::plain();
    assert_eq!(sk.digest(&format!("{dest_repo}:v1")).unwrap(), image);
    assert_eq!(
        sk.digest(&format!("{dest_repo}:{sig_tag}")).unwrap(),
        sha256(&sig)
    );
    assert_eq!(
        sk.digest(&format!("{dest_repo}:{}", tag_form(&image)))
            .unwrap(),
        index
    );
    let sbom_digest = sha256(&sbom);
    assert_eq!(sk.raw(&format!("{dest_repo}@{sbom_digest}")).unwrap(), sbom);
    // The SBOM's layer came along too.
    let v: Value = serde_json::from_slice(&sbom).unwrap();
    let layer = v["layers"][0]["digest"].as_str().unwrap();
    let head = reqwest::Client::new()
        .head(format!(
            "http://{}/v2/{repo}-mirror/blobs/{layer}",
            stack.dst
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);

    // Again: everything is there, found by HEADs alone.
    let again = copy(
        &engine(&plain, CopyOptions::default()),
        &src,
        &format!("{dest_repo}:v1"),
    )
    .await;
    let d = &again.destinations[0];
    assert_eq!(d.outcome, Outcome::InSync, "{:?}", d.error);
    assert_eq!(d.referrers_copied, 0);
    assert_eq!(d.manifests_pushed, 0);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);

    // Turned off: a fresh repository gets the image and nothing else.
    let off_repo = format!("{}/{repo}-bare", stack.dst);
    let r = copy(
        &engine(
            &plain,
            CopyOptions {
                referrers: false,
                ..CopyOptions::default()
            },
        ),
        &src,
        &format!("{off_repo}:v1"),
    )
    .await;
    let d = &r.destinations[0];
    assert_eq!(d.outcome, Outcome::Copied, "{:?}", d.error);
    assert_eq!(d.referrers_copied, 0);
    assert_eq!(sk.digest(&format!("{off_repo}:v1")).unwrap(), image);
    assert!(sk.raw(&format!("{off_repo}:{sig_tag}")).is_err());
    assert!(sk.raw(&format!("{off_repo}:{}", tag_form(&image))).is_err());
    assert!(sk.raw(&format!("{off_repo}@{sbom_digest}")).is_err());
}

/// A source with the OCI 1.1 referrers API (the local registries lack it):
/// one image, one SBOM referring to it.
async fn referrers_api_source() -> (FakeRegistry, String, Vec<u8>) {
    let mut routes: HashMap<String, FakeRoute> = HashMap::new();
    let blob = |routes: &mut HashMap<String, FakeRoute>, data: &[u8]| {
        routes.insert(
            format!("/v2/app/blobs/{}", sha256(data)),
            (
                200,
                "application/octet-stream".into(),
                vec![],
                data.to_vec(),
            ),
        );
    };
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = random_bytes(500);
    blob(&mut routes, &cfg);
    blob(&mut routes, &layer);
    let image = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&cfg), "size": cfg.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(&layer), "size": layer.len()}]}))
    .unwrap();
    let image_digest = sha256(&image);

    let sbom_layer = random_bytes(200);
    blob(&mut routes, b"{}");
    blob(&mut routes, &sbom_layer);
    let sbom = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": SPDX,
        "config": {"mediaType": EMPTY, "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": SPDX, "digest": sha256(&sbom_layer), "size": sbom_layer.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": image_digest, "size": image.len()}}))
    .unwrap();
    let sbom_digest = sha256(&sbom);
    let listing = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sbom_digest, "size": sbom.len(),
            "artifactType": SPDX}]}))
    .unwrap();

    routes.insert(
        "/v2/".into(),
        (200, "application/json".into(), vec![], b"{}".to_vec()),
    );
    for (path, raw) in [
        ("v1".to_string(), &image),
        (image_digest.clone(), &image),
        (sbom_digest.clone(), &sbom),
    ] {
        routes.insert(
            format!("/v2/app/manifests/{path}"),
            (
                200,
                OCI_MANIFEST.into(),
                vec![("Docker-Content-Digest".into(), sha256(raw))],
                raw.clone(),
            ),
        );
    }
    routes.insert(
        format!("/v2/app/referrers/{image_digest}"),
        (200, OCI_INDEX.into(), vec![], listing),
    );
    (
        FakeRegistry::start(routes).await.unwrap(),
        sbom_digest,
        sbom,
    )
}

#[tokio::test]
async fn referrers_api_is_followed_and_filtered() {
    let stack = Stack::get();
    let (fake, sbom_digest, sbom) = referrers_api_source().await;
    let plain = [fake.addr.as_str(), stack.dst.as_str()];
    let src = format!("{}/app:v1", fake.addr);
    let sk = Skopeo::plain();

    let dest_repo = format!("{}/{}", stack.dst, unique("api"));
    let r = copy(
        &engine(&plain, CopyOptions::default()),
        &src,
        &format!("{dest_repo}:v1"),
    )
    .await;
    let d = &r.destinations[0];
    assert_eq!(d.outcome, Outcome::Copied, "{:?}", d.error);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(d.referrers_copied, 1);
    assert_eq!(sk.raw(&format!("{dest_repo}@{sbom_digest}")).unwrap(), sbom);

    // Filtered out by type: the image only.
    let other = format!("{}/{}", stack.dst, unique("api-filtered"));
    let r = copy(
        &engine(
            &plain,
            CopyOptions {
                artifact_types: vec![COSIGN_SIG.into()],
                ..CopyOptions::default()
            },
        ),
        &src,
        &format!("{other}:v1"),
    )
    .await;
    let d = &r.destinations[0];
    assert_eq!(d.outcome, Outcome::Copied, "{:?}", d.error);
    assert_eq!(d.referrers_copied, 0);
    assert!(sk.raw(&format!("{other}:v1")).is_ok());
    assert!(sk.raw(&format!("{other}@{sbom_digest}")).is_err());
}

/// `cosign sign --recursive`: each platform's image carries a signature of
/// its own. They travel with the index; a platform subset takes only its
/// platforms' signatures, not the index's (which signs another digest).
#[tokio::test]
async fn per_platform_signatures_travel_and_a_subset_takes_only_its_own() {
    let stack = Stack::get();
    let repo = unique("signed-each");
    let image = push_image(&stack, &repo, "v1").await;
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let sk = Skopeo::plain();
    let index: Value =
        serde_json::from_slice(&sk.raw(&format!("{}/{repo}@{image}", stack.src)).unwrap()).unwrap();
    let children: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["platform"]["architecture"].as_str().unwrap().to_string(),
                c["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut sigs = HashMap::new();
    for subject in std::iter::once(&image).chain(children.iter().map(|(_, d)| d)) {
        let sig = push_artifact(&p, &repo, COSIGN_SIG, COSIGN_SIG, None).await;
        let tag = format!("{}.sig", tag_form(subject));
        p.manifest(&repo, &tag, OCI_MANIFEST, &sig).await.unwrap();
        sigs.insert(subject.clone(), (tag, sha256(&sig)));
    }
    let plain = [stack.src.as_str(), stack.dst.as_str()];
    let src = format!("{}/{repo}:v1", stack.src);

    let all = format!("{}/{repo}-all", stack.dst);
    let r = copy(
        &engine(&plain, CopyOptions::default()),
        &src,
        &format!("{all}:v1"),
    )
    .await;
    let d = &r.destinations[0];
    assert_eq!(d.outcome, Outcome::Copied, "{:?}", d.error);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(d.referrers_copied, 3, "the index's and each platform's");
    // distribution has no referrers API: asked once, not once per subject.
    assert_eq!(
        count_requests(
            &stack,
            "src",
            &["\"GET /v2/", &format!("/{repo}/referrers/")]
        ),
        1
    );
    for (tag, digest) in sigs.values() {
        assert_eq!(&sk.digest(&format!("{all}:{tag}")).unwrap(), digest);
    }

    let arm = &children.iter().find(|(a, _)| a == "arm64").unwrap().1;
    let amd = &children.iter().find(|(a, _)| a == "amd64").unwrap().1;
    let subset = format!("{}/{repo}-arm", stack.dst);
    let rules = mirrorfleet_common::CopyRules {
        overwrite: None,
        platforms: vec!["linux/arm64".parse().unwrap()],
    };
    let r = engine(&plain, CopyOptions::default())
        .copy_with(
            &src.parse().unwrap(),
            &[format!("{subset}:v1").parse().unwrap()],
            &rules,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await;
    let d = &r.destinations[0];
    assert_eq!(d.outcome, Outcome::Copied, "{:?}", d.error);
    assert_eq!(d.referrers_copied, 1, "{d:?}");
    let (arm_tag, arm_sig) = &sigs[arm];
    assert_eq!(&sk.digest(&format!("{subset}:{arm_tag}")).unwrap(), arm_sig);
    assert!(sk.raw(&format!("{subset}:{}", sigs[amd].0)).is_err());
    assert!(sk.raw(&format!("{subset}:{}", sigs[&image].0)).is_err());
}

/// Without a referrers API, one listing of the repository's tags tells which
/// referrer tags exist for every image copied at once: only those are asked
/// for, so no HEAD of a `sha256-*` tag answers 404 (four per manifest
/// before). cosign's `.sig`, `.att`, `.sbom` tags and a tag schema index
/// each still travel.
#[tokio::test]
async fn referrer_tags_are_found_in_one_listing_per_repository() {
    let stack = Stack::get();
    let repo = unique("listed");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let signed = push_image(&stack, &repo, "signed").await;
    let indexed = push_image(&stack, &repo, "indexed").await;
    push_image(&stack, &repo, "bare").await;
    let mut cosign = Vec::new();
    for (suffix, kind) in [(".sig", COSIGN_SIG), (".att", SPDX), (".sbom", SPDX)] {
        let raw = push_artifact(&p, &repo, kind, kind, None).await;
        let tag = format!("{}{suffix}", tag_form(&signed));
        p.manifest(&repo, &tag, OCI_MANIFEST, &raw).await.unwrap();
        cosign.push((tag, sha256(&raw)));
    }
    let indexed_raw = Skopeo::plain()
        .raw(&format!("{}/{repo}@{indexed}", stack.src))
        .unwrap();
    let (_, schema_index) = push_schema_index(&p, &repo, &indexed, indexed_raw.len()).await;

    let listings = || count_requests(&stack, "src", &[&format!("\"GET /v2/{repo}/tags/list")]);
    let missed = || {
        count_requests(
            &stack,
            "src",
            &[
                &format!("\"HEAD /v2/{repo}/manifests/sha256-"),
                "HTTP/1.1\" 404 ",
            ],
        )
    };
    let engine = engine(&[&stack.src, &stack.dst], CopyOptions::default());
    let dest_repo = format!("{}/{repo}-mirror", stack.dst);
    let srcs = ["signed", "indexed", "bare"].map(|t| format!("{}/{repo}:{t}", stack.src));
    let dests = ["signed", "indexed", "bare"].map(|t| format!("{dest_repo}:{t}"));
    let (a, b, c) = tokio::join!(
        copy(&engine, &srcs[0], &dests[0]),
        copy(&engine, &srcs[1], &dests[1]),
        copy(&engine, &srcs[2], &dests[2]),
    );
    for (r, want) in [(&a, 3), (&b, 1), (&c, 0)] {
        let d = &r.destinations[0];
        assert_eq!(d.outcome, Outcome::Copied, "{:?}", d.error);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert_eq!(d.referrers_copied, want, "{}", r.source);
    }
    let sk = Skopeo::plain();
    for (tag, digest) in &cosign {
        assert_eq!(&sk.digest(&format!("{dest_repo}:{tag}")).unwrap(), digest);
    }
    assert_eq!(
        sk.digest(&format!("{dest_repo}:{}", tag_form(&indexed)))
            .unwrap(),
        schema_index
    );
    assert_eq!(listings(), 1, "one listing for the three images");
    assert_eq!(missed(), 0, "no HEAD of a referrer tag that is not there");
}

/// A repository over the listing threshold (10,000 tags) is not listed
/// past it: its referrer tags are asked by HEAD, as before, and it is not
/// listed again by the same process. Its signature still travels.
#[tokio::test]
async fn a_repository_over_the_listing_threshold_is_asked_by_head() {
    let stack = Stack::get();
    let mut routes: HashMap<String, FakeRoute> = HashMap::new();
    let blob = |routes: &mut HashMap<String, FakeRoute>, data: &[u8]| {
        routes.insert(
            format!("/v2/app/blobs/{}", sha256(data)),
            (
                200,
                "application/octet-stream".into(),
                vec![],
                data.to_vec(),
            ),
        );
    };
    let manifest = |routes: &mut HashMap<String, FakeRoute>, names: &[&str], raw: &[u8]| {
        for name in names {
            routes.insert(
                format!("/v2/app/manifests/{name}"),
                (
                    200,
                    OCI_MANIFEST.into(),
                    vec![("Docker-Content-Digest".into(), sha256(raw))],
                    raw.to_vec(),
                ),
            );
        }
    };
    routes.insert(
        "/v2/".into(),
        (200, "application/json".into(), vec![], b"{}".to_vec()),
    );
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = random_bytes(500);
    blob(&mut routes, &cfg);
    blob(&mut routes, &layer);
    let image = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&cfg), "size": cfg.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(&layer), "size": layer.len()}]}))
    .unwrap();
    let image_digest = sha256(&image);
    manifest(&mut routes, &["v1", "v2", &image_digest], &image);
    let sig_layer = random_bytes(100);
    blob(&mut routes, b"{}");
    blob(&mut routes, &sig_layer);
    let sig = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": COSIGN_SIG, "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": COSIGN_SIG, "digest": sha256(&sig_layer), "size": sig_layer.len()}]}))
    .unwrap();
    let sig_tag = format!("{}.sig", tag_form(&image_digest));
    manifest(&mut routes, &[&sig_tag, &sha256(&sig)], &sig);
    // Twelve linked pages of 1,000 tags: the threshold is crossed on the 11th.
    for page in 0..12 {
        let path = match page {
            0 => "/v2/app/tags/list?n=1000".to_string(),
            p => format!("/v2/app/tags/list?n=1000&last=p{p}"),
        };
        let tags: Vec<String> = (0..1000).map(|i| format!("t{page}-{i}")).collect();
        let link = vec![(
            "Link".to_string(),
            format!(
                "</v2/app/tags/list?n=1000&last=p{}>; rel=\"next\"",
                page + 1
            ),
        )];
        routes.insert(
            path,
            (
                200,
                "application/json".into(),
                if page < 11 { link } else { vec![] },
                serde_json::to_vec(&json!({"name": "app", "tags": tags})).unwrap(),
            ),
        );
    }
    let fake = FakeRegistry::start(routes).await.unwrap();

    let engine = engine(&[&fake.addr, &stack.dst], CopyOptions::default());
    let dest_repo = format!("{}/{}", stack.dst, unique("over-threshold"));
    let r = copy(
        &engine,
        &format!("{}/app:v1", fake.addr),
        &format!("{dest_repo}:v1"),
    )
    .await;
    let d = &r.destinations[0];
    assert_eq!(d.outcome, Outcome::Copied, "{:?}", d.error);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(d.referrers_copied, 1, "the signature");
    assert_eq!(
        Skopeo::plain()
            .digest(&format!("{dest_repo}:{sig_tag}"))
            .unwrap(),
        sha256(&sig)
    );
    assert_eq!(
        fake.count("GET /v2/app/tags/list"),
        11,
        "stopped past 10,000"
    );
    let hex = image_digest.replace("sha256:", "");
    let requests = fake.requests.lock().unwrap().clone();
    for suffix in ["", ".sig", ".att", ".sbom"] {
        let head = format!("HEAD /v2/app/manifests/sha256-{hex}{suffix}");
        assert_eq!(
            requests.iter().filter(|r| **r == head).count(),
            1,
            "{suffix}"
        );
    }
    // Another image of the same repository: HEADs, no listing again.
    let r = copy(
        &engine,
        &format!("{}/app:v2", fake.addr),
        &format!("{dest_repo}:v2"),
    )
    .await;
    assert_eq!(r.destinations[0].outcome, Outcome::Copied);
    assert_eq!(fake.count("GET /v2/app/tags/list"), 11);
}
