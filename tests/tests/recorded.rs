//! What mirrorfleet sends, as a registry that records everything sees it
//! (`tests/src/recording.rs`), for the claims no real registry can prove:
//! distribution checks references and digests itself, so against it a wrong
//! push order or an unverified blob would go unnoticed.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use mirrorfleet_tests::faults::{FaultProxy, Faults};
use mirrorfleet_tests::recording::{RecordingConfig, RecordingFront};
use mirrorfleet_tests::*;
use serde_json::json;

fn basic(creds: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

/// A registry that accepts any manifest, whatever it references: every
/// manifest still arrives after all it references (children before their
/// index, blobs before their image), and the tag holds a complete image.
#[tokio::test]
async fn manifests_are_pushed_only_after_everything_they_reference() {
    let stack = Stack::get();
    let repo = unique("order");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    // A nested index: an index of a two-platform index and an image.
    let mut inner = Vec::new();
    for arch in ["amd64", "arm64"] {
        inner.push(
            p.image(&repo, false, ("linux", arch), &[3000, 2000], json!({}))
                .await
                .unwrap(),
        );
    }
    let inner_digest = p
        .index(&repo, "inner", false, inner, json!({}))
        .await
        .unwrap();
    let inner_raw = Skopeo::plain()
        .raw(&format!("{}/{repo}@{inner_digest}", stack.src))
        .unwrap();
    let single = p
        .image(&repo, true, ("linux", "s390x"), &[1000], json!({}))
        .await
        .unwrap();
    let single_digest = single["digest"].as_str().unwrap().to_string();
    let outer = p
        .index(
            &repo,
            "v1",
            false,
            vec![
                json!({"mediaType": OCI_INDEX, "digest": inner_digest, "size": inner_raw.len()}),
                single,
            ],
            json!({}),
        )
        .await
        .unwrap();
    let front = RecordingFront::start(
        &stack.dst,
        RecordingConfig {
            keep_manifests: true,
            ..Default::default()
        },
    )
    .unwrap();
    let plain = format!("{},{}", stack.src, front.addr);
    let (src, dst) = (
        format!("{}/{repo}:v1", stack.src),
        format!("{}/{repo}:v1", front.addr),
    );
    let (code, out, err) = run_bin_off(
        "mirrorfleet-worker",
        &["copy", "--plain-http", &plain, &src, &dst],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let puts = front
        .log()
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("/manifests/"))
        .count();
    assert_eq!(puts, 5, "outer, inner, and three images: {:?}", front.log());
    assert_eq!(front.violations(), Vec::<String>::new());
    // And the tag is whole, read through the front by skopeo (which does
    // not copy an index of indexes: each child is read whole instead).
    for child in [inner_digest.as_str(), single_digest.as_str()] {
        assert!(
            Skopeo::plain()
                .complete(&format!("{}/{repo}@{child}", front.addr))
                .unwrap()
        );
    }
    assert_eq!(
        Skopeo::plain()
            .digest(&format!("{}/{repo}:v1", front.addr))
            .unwrap(),
        outer
    );
}

/// A source whose blob never matches its digest: the destination never
/// receives the whole body of that blob's upload. The last chunk is held
/// back until the digest is checked, so the upload is cut, whatever the
/// registry would have checked.
#[tokio::test]
async fn a_corrupt_source_blob_never_reaches_the_destination_whole() {
    let stack = Stack::get();
    let repo = unique("holdback");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let img = p
        .image(&repo, false, ("linux", "amd64"), &[256 * 1024], json!({}))
        .await
        .unwrap();
    p.index(&repo, "v1", false, vec![img], json!({}))
        .await
        .unwrap();
    let sp = FaultProxy::start(
        &stack.src,
        Faults {
            corrupt: 1.0,
            ..Default::default()
        },
        5,
    )
    .await
    .unwrap();
    let front = RecordingFront::start(&stack.dst, RecordingConfig::default()).unwrap();
    let plain = format!("{},{}", sp.addr, front.addr);
    let (src, dst) = (
        format!("{}/{repo}:v1", sp.addr),
        format!("{}/{repo}:v1", front.addr),
    );
    let (code, out, err) = run_bin_off(
        "mirrorfleet-worker",
        &["copy", "--plain-http", &plain, &src, &dst],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("does not match its digest"), "{out}");
    let log = front.log();
    let uploads: Vec<_> = log.iter().filter(|r| r.completes_upload()).collect();
    assert!(
        uploads.len() >= 2,
        "the copy should have tried, and retried, the uploads: {log:?}"
    );
    // The corrupted blobs (the layer and the config, both GETs flipped)
    // never arrived whole; nothing was completed.
    for r in &uploads {
        assert_eq!(r.body_complete, Some(false), "{r:?}");
        assert_ne!(r.status, 201, "{r:?}");
    }
    assert!(
        !log.iter()
            .any(|r| r.method == "PUT" && r.target.contains("/manifests/")),
        "a manifest was pushed: {log:?}"
    );
}

/// Each registry gets its own login only: the source's `Authorization`
/// never reaches the destination, and a blob GET redirected to another host
/// arrives there without any.
#[tokio::test]
async fn source_credentials_never_reach_the_destination_or_a_redirect() {
    let stack = Stack::get();
    let repo = unique("creds");
    let digest = push_image(&stack, &repo, "v1").await;
    let login = RecordingConfig {
        require_login: true,
        ..Default::default()
    };
    let src = RecordingFront::start(
        &stack.src,
        RecordingConfig {
            redirect_blobs: true,
            ..login.clone()
        },
    )
    .unwrap();
    let dst = RecordingFront::start(&stack.dst, login).unwrap();
    let (src_creds, dst_creds) = ("source-user:source-pass", "dest-user:dest-pass");
    let plain = format!("{},{}", src.addr, dst.addr);
    let (from, to) = (
        format!("{}/{repo}:v1", src.addr),
        format!("{}/{repo}:v1", dst.addr),
    );
    let (code, out, err) = run_bin_off(
        "mirrorfleet-worker",
        &["copy", "--plain-http", &plain, &from, &to],
        &[
            ("MIRRORFLEET_SRC_CREDS", src_creds),
            ("MIRRORFLEET_DEST_CREDS", dst_creds),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        Skopeo::plain()
            .digest(&format!("{}/{repo}:v1", stack.dst))
            .unwrap(),
        digest
    );
    let at_dst: Vec<_> = dst
        .log()
        .into_iter()
        .filter_map(|r| r.authorization)
        .collect();
    assert!(at_dst.len() >= 8, "{:?}", dst.log());
    assert!(at_dst.iter().all(|a| *a == basic(dst_creds)), "{at_dst:?}");
    let at_src: Vec<_> = src.log().into_iter().filter(|r| r.listener == 0).collect();
    assert!(
        at_src
            .iter()
            .filter_map(|r| r.authorization.as_ref())
            .all(|a| *a == basic(src_creds)),
        "{at_src:?}"
    );
    let redirected: Vec<_> = src.log().into_iter().filter(|r| r.listener == 1).collect();
    assert_eq!(
        redirected.len(),
        4,
        "two layers and two configs: {redirected:?}"
    );
    assert!(
        redirected
            .iter()
            .all(|r| r.authorization.is_none() && r.status == 200),
        "{redirected:?}"
    );
}
