//! The copy engine against real registries: digests checked with skopeo.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use mirrorfleet_common::CopyReport;
use mirrorfleet_common::copy::{CopyOptions, Engine, Outcome};
use mirrorfleet_common::registry::Registries;
use mirrorfleet_common::registry::auth::DockerConfig;
use mirrorfleet_common::registry::settings::{HttpVersion, RegistrySettings, Settings};
use mirrorfleet_tests::*;
use serde_json::json;

fn settings(stack: &Stack) -> Settings {
    let mut s = Settings::default();
    for h in [&stack.src, &stack.dst, &stack.basic, &stack.token] {
        s.mark_plain_http(h);
    }
    s.registries.entry(stack.tls.clone()).or_default().ca_file = Some(stack.tls_ca.clone());
    s
}

fn with_creds(stack: &Stack, host: &str, creds: &str) -> Settings {
    let mut s = settings(stack);
    let (u, _) = creds.split_once(':').unwrap();
    let var = format!("MF_TEST_PW_{}", host.replace(['.', ':'], "_"));
    // The settings read passwords from a file here; env vars are process-wide.
    let file = std::env::temp_dir().join(unique("mf-pw"));
    std::fs::write(&file, creds.split_once(':').unwrap().1).unwrap();
    let _ = var;
    s.registries.insert(
        host.to_string(),
        RegistrySettings {
            plain_http: true,
            username: Some(u.to_string()),
            password_file: Some(file),
            ..Default::default()
        },
    );
    s
}

fn engine(settings: Settings) -> Engine {
    engine_with(settings, CopyOptions::default())
}

async fn copy(engine: &Engine, src: &str, dests: &[String]) -> CopyReport {
    let dests: Vec<&str> = dests.iter().map(String::as_str).collect();
    copy_to(engine, src, &dests).await
}

fn assert_ok(report: &CopyReport) {
    for d in &report.destinations {
        assert_ne!(
            d.outcome,
            Outcome::Failed,
            "{}: {:?}",
            d.destination,
            d.error
        );
    }
}

/// Two platforms plus, optionally, extra children; returns the index digest.
async fn push_index(p: &Pusher, repo: &str, tag: &str, docker: bool) -> String {
    let amd = p
        .image(repo, docker, ("linux", "amd64"), &[2048, 4096], json!({}))
        .await
        .unwrap();
    let arm = p
        .image(repo, docker, ("linux", "arm64"), &[3000], json!({}))
        .await
        .unwrap();
    p.index(repo, tag, docker, vec![amd, arm], json!({}))
        .await
        .unwrap()
}

#[tokio::test]
async fn two_platform_oci_index_keeps_digest_and_second_run_moves_nothing() {
    let stack = Stack::get();
    let repo = unique("oci-index");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let digest = push_index(&p, &repo, "v1", false).await;

    let e = engine(settings(&stack));
    let dest = format!("{}/mirror/{repo}:v1", stack.dst);
    let r = copy(
        &e,
        &format!("{}/{repo}:v1", stack.src),
        std::slice::from_ref(&dest),
    )
    .await;
    assert_ok(&r);
    assert_eq!(r.destinations[0].outcome, Outcome::Copied);
    assert_eq!(r.source_digest.as_ref().unwrap().to_string(), digest);
    assert_eq!(r.destinations[0].blobs_copied, 5, "3 layers + 2 configs");

    let sk = Skopeo::plain();
    assert_eq!(sk.digest(&dest).unwrap(), digest);
    assert_eq!(
        sk.assert_tree(&format!("{}/mirror/{repo}", stack.dst), &digest)
            .unwrap(),
        3
    );

    // A fresh engine (no ledger memory): the HEAD alone says in sync.
    let e2 = engine(settings(&stack));
    let r2 = copy(&e2, &format!("{}/{repo}:v1", stack.src), &[dest]).await;
    assert_ok(&r2);
    assert_eq!(r2.destinations[0].outcome, Outcome::InSync);
    assert_eq!(r2.destinations[0].bytes_copied, 0);
    assert_eq!(r2.bytes_read, 0);
}

#[tokio::test]
async fn docker_manifest_list_keeps_digest() {
    let stack = Stack::get();
    let repo = unique("docker-list");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let digest = push_index(&p, &repo, "1.0", true).await;
    let dest = format!("{}/{repo}:1.0", stack.dst);
    let r = copy(
        &engine(settings(&stack)),
        &format!("{}/{repo}:1.0", stack.src),
        std::slice::from_ref(&dest),
    )
    .await;
    assert_ok(&r);
    assert_eq!(Skopeo::plain().digest(&dest).unwrap(), digest);
    assert_eq!(
        Skopeo::plain()
            .assert_tree(&format!("{}/{repo}", stack.dst), &digest)
            .unwrap(),
        3
    );
}

#[tokio::test]
async fn index_with_attestation_manifest_and_annotations() {
    let stack = Stack::get();
    let repo = unique("attest");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let amd = p
        .image(
            &repo,
            false,
            ("linux", "amd64"),
            &[1000],
            json!({"annotations": {"org.opencontainers.image.title": "app"}}),
        )
        .await
        .unwrap();
    let mut att = p
        .image(&repo, false, ("unknown", "unknown"), &[500], json!({}))
        .await
        .unwrap();
    att["annotations"] = json!({
        "vnd.docker.reference.type": "attestation-manifest",
        "vnd.docker.reference.digest": amd["digest"].clone(),
    });
    let digest = p
        .index(
            &repo,
            "att",
            false,
            vec![amd, att],
            json!({"annotations": {"org.opencontainers.image.created": "2026-11-22T00:00:00Z"}}),
        )
        .await
        .unwrap();
    let dest = format!("{}/{repo}:att", stack.dst);
    let r = copy(
        &engine(settings(&stack)),
        &format!("{}/{repo}:att", stack.src),
        std::slice::from_ref(&dest),
    )
    .await;
    assert_ok(&r);
    assert_eq!(
        Skopeo::plain()
            .assert_tree(&format!("{}/{repo}", stack.dst), &digest)
            .unwrap(),
        3
    );
    assert_eq!(Skopeo::plain().digest(&dest).unwrap(), digest);
}

#[tokio::test]
async fn artifact_with_custom_config_media_type() {
    let stack = Stack::get();
    let repo = unique("helm");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let cfg = p
        .blob_typed(
            &repo,
            br#"{"name":"chart","version":"1.2.3"}"#,
            "application/vnd.cncf.helm.config.v1+json",
        )
        .await
        .unwrap();
    let layer = p
        .blob_typed(
            &repo,
            &random_bytes(5000),
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        )
        .await
        .unwrap();
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": [layer],
        "annotations": {"org.opencontainers.image.description": "a Helm chart"}});
    let raw = serde_json::to_vec(&m).unwrap();
    p.manifest(&repo, "1.2.3", OCI_MANIFEST, &raw)
        .await
        .unwrap();
    let dest = format!("{}/charts/{repo}:1.2.3", stack.dst);
    let r = copy(
        &engine(settings(&stack)),
        &format!("{}/{repo}:1.2.3", stack.src),
        std::slice::from_ref(&dest),
    )
    .await;
    assert_ok(&r);
    assert_eq!(Skopeo::plain().digest(&dest).unwrap(), sha256(&raw));
}

#[tokio::test]
async fn single_platform_manifest_with_annotations() {
    let stack = Stack::get();
    let repo = unique("single");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let desc = p
        .image(
            &repo,
            false,
            ("linux", "amd64"),
            &[10_000, 1],
            json!({"annotations": {"a": "b"}}),
        )
        .await
        .unwrap();
    let digest = desc["digest"].as_str().unwrap().to_string();
    let src = format!("{}/{repo}@{digest}", stack.src);
    let dest = format!("{}/{repo}:pinned", stack.dst);
    let r = copy(&engine(settings(&stack)), &src, std::slice::from_ref(&dest)).await;
    assert_ok(&r);
    assert_eq!(Skopeo::plain().digest(&dest).unwrap(), digest);
}

#[tokio::test]
async fn nested_index() {
    let stack = Stack::get();
    let repo = unique("nested");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let amd = p
        .image(&repo, false, ("linux", "amd64"), &[100], json!({}))
        .await
        .unwrap();
    let arm = p
        .image(&repo, false, ("linux", "arm64"), &[100], json!({}))
        .await
        .unwrap();
    let inner = p
        .index(&repo, "inner", false, vec![amd, arm], json!({}))
        .await
        .unwrap();
    let inner_raw = Skopeo::plain()
        .raw(&format!("{}/{repo}:inner", stack.src))
        .unwrap();
    let s390 = p
        .image(&repo, false, ("linux", "s390x"), &[100], json!({}))
        .await
        .unwrap();
    let outer = p
        .index(
            &repo,
            "outer",
            false,
            vec![
                json!({"mediaType": OCI_INDEX, "digest": inner, "size": inner_raw.len()}),
                s390,
            ],
            json!({}),
        )
        .await
        .unwrap();
    let dest = format!("{}/{repo}:outer", stack.dst);
    let r = copy(
        &engine(settings(&stack)),
        &format!("{}/{repo}:outer", stack.src),
        std::slice::from_ref(&dest),
    )
    .await;
    assert_ok(&r);
    assert_eq!(r.destinations[0].manifests_pushed, 5);
    assert_eq!(
        Skopeo::plain()
            .assert_tree(&format!("{}/{repo}", stack.dst), &outer)
            .unwrap(),
        5
    );
}

#[tokio::test]
async fn same_registry_copy_mounts_blobs() {
    let stack = Stack::get();
    let repo = unique("mount-src");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let digest = push_index(&p, &repo, "v1", false).await;
    let dest = format!("{}/{}:v1", stack.src, unique("mount-dst"));
    let r = copy(
        &engine(settings(&stack)),
        &format!("{}/{repo}:v1", stack.src),
        std::slice::from_ref(&dest),
    )
    .await;
    assert_ok(&r);
    let d = &r.destinations[0];
    assert_eq!(d.blobs_mounted, 5, "{d:?}");
    assert_eq!(d.bytes_copied, 0);
    assert_eq!(r.bytes_read, 0);
    assert_eq!(Skopeo::plain().digest(&dest).unwrap(), digest);
}

#[tokio::test]
async fn fan_out_reads_each_source_blob_once() {
    let stack = Stack::get();
    let repo = unique("fanout");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let digest = push_index(&p, &repo, "v1", false).await;
    let dests: Vec<String> = (0..3)
        .map(|i| format!("{}/{repo}-copy{i}:v1", stack.dst))
        .collect();
    let r = copy(
        &engine(settings(&stack)),
        &format!("{}/{repo}:v1", stack.src),
        &dests,
    )
    .await;
    assert_ok(&r);
    for d in &dests {
        assert_eq!(Skopeo::plain().digest(d).unwrap(), digest);
    }
    // 5 unique blobs, each GET once from the source for 3 destinations.
    let gets = count_requests(
        &stack,
        "src",
        &["\"GET /v2/", &format!("/{repo}/blobs/sha256:")],
    );
    assert_eq!(gets, 5, "blob GETs at the source");
    let total: u64 = r.destinations.iter().map(|d| d.blobs_copied).sum();
    assert_eq!(total, 15);
}

#[tokio::test]
async fn shared_base_layer_is_written_once_per_repository() {
    let stack = Stack::get();
    let repo = unique("shared");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    // Ten tags sharing one big base layer, copied concurrently into one repository.
    let base = random_bytes(200_000);
    let base_desc = p.blob(&repo, &base).await.unwrap();
    let mut tags = Vec::new();
    for i in 0..10 {
        let own = p.blob(&repo, &random_bytes(100)).await.unwrap();
        let cfg = p
            .blob_typed(&repo, format!("{{\"i\":{i}}}").as_bytes(), OCI_CONFIG)
            .await
            .unwrap();
        let m = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,"config":cfg,"layers":[base_desc.clone(), own]})).unwrap();
        p.manifest(&repo, &format!("t{i}"), OCI_MANIFEST, &m)
            .await
            .unwrap();
        tags.push((format!("t{i}"), sha256(&m)));
    }
    let e = Arc::new(engine(settings(&stack)));
    let dst_repo = unique("shared-dst");
    let mut tasks = Vec::new();
    for (tag, _) in &tags {
        let e = e.clone();
        let src = format!("{}/{repo}:{tag}", stack.src);
        let dest = format!("{}/{dst_repo}:{tag}", stack.dst);
        tasks.push(tokio::spawn(async move { copy(&e, &src, &[dest]).await }));
    }
    for t in tasks {
        assert_ok(&t.await.unwrap());
    }
    for (tag, digest) in &tags {
        assert_eq!(
            Skopeo::plain()
                .digest(&format!("{}/{dst_repo}:{tag}", stack.dst))
                .unwrap(),
            *digest
        );
    }
    let puts = count_requests(
        &stack,
        "dst",
        &[
            "\"PUT /v2/",
            &format!("/{dst_repo}/blobs/uploads/"),
            &base_desc["digest"].as_str().unwrap().replace(':', "%3A"),
        ],
    );
    assert_eq!(puts, 1, "the base layer was uploaded {puts} times");
}

#[tokio::test]
async fn tags_of_one_index_copied_at_once_put_each_child_once() {
    let stack = Stack::get();
    let repo = unique("one-index");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let amd = p
        .image(&repo, false, ("linux", "amd64"), &[2048], json!({}))
        .await
        .unwrap();
    let arm = p
        .image(&repo, false, ("linux", "arm64"), &[3000], json!({}))
        .await
        .unwrap();
    let mut digest = String::new();
    for i in 0..8 {
        let children = vec![amd.clone(), arm.clone()];
        digest = p
            .index(&repo, &format!("t{i}"), false, children, json!({}))
            .await
            .unwrap();
    }
    // Eight tags of one index, copied at once into one repository.
    let e = Arc::new(engine(settings(&stack)));
    let dst_repo = unique("one-index-dst");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let e = e.clone();
        let src = format!("{}/{repo}:t{i}", stack.src);
        let dest = format!("{}/{dst_repo}:t{i}", stack.dst);
        tasks.push(tokio::spawn(async move { copy(&e, &src, &[dest]).await }));
    }
    for t in tasks {
        assert_ok(&t.await.unwrap());
    }
    let sk = Skopeo::plain();
    for i in 0..8 {
        let tag = format!("{}/{dst_repo}:t{i}", stack.dst);
        assert_eq!(sk.digest(&tag).unwrap(), digest, "{tag}");
    }
    for child in [&amd, &arm] {
        let child = child["digest"].as_str().unwrap();
        let puts = count_requests(
            &stack,
            "dst",
            &[&format!("\"PUT /v2/{dst_repo}/manifests/{child} ")],
        );
        assert_eq!(puts, 1, "child {child} was PUT {puts} times");
    }
    // Every tag's own index PUT still happens.
    let tag_puts = count_requests(
        &stack,
        "dst",
        &[&format!("\"PUT /v2/{dst_repo}/manifests/t")],
    );
    assert_eq!(tag_puts, 8);
}

/// Push a two-platform index to the source and mirror it into the
/// authenticated registry `host`; checks the digest there with skopeo.
async fn mirror_into(
    stack: &Stack,
    host: &str,
    creds: &str,
    prefix: &str,
) -> (Engine, String, String, String, Skopeo) {
    let repo = unique(prefix);
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let digest = push_index(&p, &repo, "v1", false).await;
    let dest = format!("{host}/{repo}:v1");
    let e = engine(with_creds(stack, host, creds));
    let r = copy(
        &e,
        &format!("{}/{repo}:v1", stack.src),
        std::slice::from_ref(&dest),
    )
    .await;
    assert_ok(&r);
    let sk = Skopeo {
        creds: Some(creds.to_string()),
        ..Skopeo::plain()
    };
    assert_eq!(sk.digest(&dest).unwrap(), digest);
    (e, repo, dest, digest, sk)
}

#[tokio::test]
async fn basic_auth_registry_as_destination_and_source() {
    let stack = Stack::get();
    let (e, repo, dest, digest, _) =
        mirror_into(&stack, &stack.basic, &stack.basic_creds, "basic").await;

    // Back out of the authenticated registry.
    let back = format!("{}/{repo}-back:v1", stack.dst);
    let r = copy(&e, &dest, std::slice::from_ref(&back)).await;
    assert_ok(&r);
    assert_eq!(Skopeo::plain().digest(&back).unwrap(), digest);

    // Wrong password: a clear error, not a panic or a hang.
    let bad = engine(with_creds(&stack, &stack.basic, "mirror:wrong"));
    let r = copy(
        &bad,
        &format!("{}/{repo}:v1", stack.src),
        &[format!("{}/{repo}-x:v1", stack.basic)],
    )
    .await;
    let err = r.destinations[0].error.clone().unwrap();
    assert!(err.contains("login to") && err.contains("refused"), "{err}");
}

#[tokio::test]
async fn bearer_token_registry_as_destination_and_source() {
    let stack = Stack::get();
    let (e, repo, dest, digest, sk) =
        mirror_into(&stack, &stack.token, &stack.token_creds, "token").await;

    // Same-registry copy inside the token registry: mount with a two-repository token.
    let other = format!("{}/{repo}-mounted:v1", stack.token);
    let r = copy(&e, &dest, std::slice::from_ref(&other)).await;
    assert_ok(&r);
    assert_eq!(
        r.destinations[0].blobs_mounted, 5,
        "{:?}",
        r.destinations[0]
    );
    assert_eq!(sk.digest(&other).unwrap(), digest);

    // Anonymous: the token service gives no access; the error says login failed.
    let anon = engine(settings(&stack));
    let r = copy(
        &anon,
        &format!("{}/{repo}:v1", stack.src),
        &[format!("{}/{repo}-anon:v1", stack.token)],
    )
    .await;
    assert_eq!(r.destinations[0].outcome, Outcome::Failed);
    let err = r.destinations[0].error.clone().unwrap();
    assert!(
        err.contains("needs credentials and none were found"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_registry_with_its_ca_and_refused_without() {
    let stack = Stack::get();
    let repo = unique("tls");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let digest = push_index(&p, &repo, "v1", false).await;
    let dest = format!("{}/{repo}:v1", stack.tls);
    let r = copy(
        &engine(settings(&stack)),
        &format!("{}/{repo}:v1", stack.src),
        std::slice::from_ref(&dest),
    )
    .await;
    assert_ok(&r);
    let sk = Skopeo {
        cert_dir: Some(stack.tls_cert_dir.clone()),
        tls_verify: true,
        ..Skopeo::plain()
    };
    assert_eq!(sk.digest(&dest).unwrap(), digest);

    // Without the CA, verification is on and the copy fails with a TLS error.
    let mut s = settings(&stack);
    s.registries.remove(&stack.tls);
    let r = copy(
        &engine(s),
        &format!("{}/{repo}:v1", stack.src),
        &[format!("{}/{repo}-noca:v1", stack.tls)],
    )
    .await;
    let err = r.destinations[0].error.clone().unwrap_or_default();
    assert_eq!(r.destinations[0].outcome, Outcome::Failed);
    assert!(
        err.contains("over TLS") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn no_overwrite_refuses_a_different_digest() {
    let stack = Stack::get();
    let repo = unique("noover");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let a = push_index(&p, &repo, "a", false).await;
    push_index(&p, &repo, "b", false).await;
    let dest = format!("{}/{repo}:t", stack.dst);
    let strict = Engine::new(
        Arc::new(Registries::new(
            settings(&stack),
            DockerConfig::default(),
            None,
            None,
        )),
        CopyOptions {
            overwrite: false,
            ..CopyOptions::default()
        },
    );
    assert_ok(
        &copy(
            &strict,
            &format!("{}/{repo}:a", stack.src),
            std::slice::from_ref(&dest),
        )
        .await,
    );
    let r = copy(
        &strict,
        &format!("{}/{repo}:b", stack.src),
        std::slice::from_ref(&dest),
    )
    .await;
    let err = r.destinations[0].error.clone().unwrap();
    assert!(err.starts_with("overwrite refused"), "{err}");
    assert_eq!(
        Skopeo::plain().digest(&dest).unwrap(),
        a,
        "the tag was not moved"
    );
}

#[tokio::test]
async fn one_failing_destination_does_not_stop_the_others() {
    let stack = Stack::get();
    let repo = unique("partial");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let digest = push_index(&p, &repo, "v1", false).await;
    let good = format!("{}/{repo}:v1", stack.dst);
    // Nothing listens on port 9 of loopback.
    let dead = format!("127.0.0.1:9/{repo}:v1");
    let mut s = settings(&stack);
    s.mark_plain_http("127.0.0.1:9");
    let r = copy(
        &engine(s),
        &format!("{}/{repo}:v1", stack.src),
        &[good.clone(), dead],
    )
    .await;
    assert_eq!(r.destinations[0].outcome, Outcome::Copied);
    assert_eq!(r.destinations[1].outcome, Outcome::Failed);
    assert!(
        r.destinations[1]
            .error
            .as_ref()
            .unwrap()
            .contains("cannot reach 127.0.0.1:9")
    );
    assert_eq!(Skopeo::plain().digest(&good).unwrap(), digest);
}

#[tokio::test]
async fn missing_tag_is_reported_in_words() {
    let stack = Stack::get();
    let repo = unique("missing");
    let r = copy(
        &engine(settings(&stack)),
        &format!("{}/{repo}:nope", stack.src),
        &[format!("{}/{repo}:nope", stack.dst)],
    )
    .await;
    let err = r.destinations[0].error.clone().unwrap();
    assert!(
        err.contains("was not found") && err.contains(":nope"),
        "{err}"
    );
}

#[tokio::test]
async fn blob_not_matching_its_digest_is_refused_and_nothing_is_pushed() {
    let stack = Stack::get();
    let real = random_bytes(4096);
    let mut lie = real.clone();
    lie[100] ^= 0xff;
    let layer_digest = sha256(&real);
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let m = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
        "config":{"mediaType":OCI_CONFIG,"digest":sha256(&cfg),"size":cfg.len()},
        "layers":[{"mediaType":OCI_LAYER,"digest":layer_digest,"size":real.len()}]}))
    .unwrap();
    let md = sha256(&m);
    let mut routes = HashMap::new();
    let mh = vec![("Docker-Content-Digest".to_string(), md.clone())];
    routes.insert(
        "/v2/".into(),
        (200, "application/json".into(), vec![], b"{}".to_vec()),
    );
    routes.insert(
        "/v2/liar/manifests/v1".into(),
        (200, OCI_MANIFEST.into(), mh.clone(), m.clone()),
    );
    routes.insert(
        format!("/v2/liar/manifests/{md}"),
        (200, OCI_MANIFEST.into(), mh, m),
    );
    routes.insert(
        format!("/v2/liar/blobs/{}", sha256(&cfg)),
        (200, "application/octet-stream".into(), vec![], cfg),
    );
    routes.insert(
        format!("/v2/liar/blobs/{layer_digest}"),
        (200, "application/octet-stream".into(), vec![], lie),
    );
    let fake = FakeRegistry::start(routes).await.unwrap();

    let mut s = settings(&stack);
    s.mark_plain_http(&fake.addr);
    let repo = unique("lied-to");
    let dest = format!("{}/{repo}:v1", stack.dst);
    let r = copy(
        &engine(s),
        &format!("{}/liar:v1", fake.addr),
        std::slice::from_ref(&dest),
    )
    .await;
    let err = r.destinations[0].error.clone().unwrap();
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(Skopeo::plain().raw(&dest).is_err(), "a manifest was pushed");
    let head = reqwest::Client::new()
        .head(format!(
            "http://{}/v2/{repo}/blobs/{layer_digest}",
            stack.dst
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.status(),
        404,
        "the corrupt blob reached the destination"
    );
}

/// `blob_http` picks the HTTP version of blob bodies over TLS, read off the
/// TLS registry's access log; manifests and HEADs keep what ALPN picks
/// (HTTP/2 there). The digest is the source's either way.
#[tokio::test]
async fn blob_bodies_take_the_configured_http_version() {
    let stack = Stack::get();
    let repo = unique("blob-http");
    let digest = push_image(&stack, &repo, "v1").await;
    let log = || std::fs::read_to_string(stack.dir.join("tls.log")).unwrap();
    // Access-log lines of `repo` with `method`, `path` and `proto`.
    let lines = |log: &str, repo: &str, method: &str, path: &str, proto: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("\"{method} /v2/{repo}/{path}")))
            .filter(|l| l.contains(&format!("{proto}\"")))
            .count()
    };
    let with = |version| {
        let mut s = settings(&stack);
        s.registries.get_mut(&stack.tls).unwrap().blob_http = Some(version);
        engine(s)
    };
    // Up to the TLS registry with HTTP/1.1 bodies...
    let up = format!("{repo}-h1");
    let r = copy(
        &with(HttpVersion::Http1),
        &format!("{}/{repo}:v1", stack.src),
        &[format!("{}/{up}:v1", stack.tls)],
    )
    .await;
    assert_ok(&r);
    let l = log();
    assert!(
        lines(&l, &up, "PUT", "blobs/uploads/", "HTTP/1.1") >= 3,
        "{l}"
    );
    assert_eq!(
        lines(&l, &up, "PUT", "blobs/uploads/", "HTTP/2.0"),
        0,
        "{l}"
    );
    assert_eq!(lines(&l, &up, "PUT", "manifests/", "HTTP/2.0"), 3, "{l}");
    assert!(lines(&l, &up, "HEAD", "manifests/", "HTTP/2.0") >= 1, "{l}");
    // ...and down from it with HTTP/2 bodies.
    let r = copy(
        &with(HttpVersion::Http2),
        &format!("{}/{up}:v1", stack.tls),
        &[format!("{}/{repo}-back:v1", stack.dst)],
    )
    .await;
    assert_ok(&r);
    let l = log();
    assert!(
        lines(&l, &up, "GET", "blobs/sha256:", "HTTP/2.0") >= 3,
        "{l}"
    );
    assert_eq!(lines(&l, &up, "GET", "blobs/sha256:", "HTTP/1.1"), 0, "{l}");
    assert_eq!(
        Skopeo::plain()
            .digest(&format!("{}/{repo}-back:v1", stack.dst))
            .unwrap(),
        digest
    );
}
