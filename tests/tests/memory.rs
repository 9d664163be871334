//! Bounded memory: a 1 GiB layer is copied with a peak resident set under
//! 64 MiB, read from the worker's own `/proc/<pid>/status` (VmHWM) while it
//! runs. A bound, not a timing.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use mirrorfleet_tests::*;
use serde_json::json;
use sha2::{Digest as _, Sha256};

const GIB: usize = 1024 * 1024 * 1024;
const BLOCK: usize = 1024 * 1024;

/// A GiB made of one random MiB repeated: the registry stores every byte,
/// the test never holds more than a block.
fn layer_stream(block: Bytes) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::iter((0..GIB / BLOCK).map(move |_| Ok(block.clone())))
}

/// The peak resident set of a process so far, in KiB (`VmHWM`).
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn a_1_gib_layer_is_copied_in_bounded_memory() {
    let stack = Stack::get();
    let repo = unique("mem");
    let block = Bytes::from(random_bytes(BLOCK));
    let mut h = Sha256::new();
    for _ in 0..GIB / BLOCK {
        h.update(&block);
    }
    let digest = format!("sha256:{}", hex::encode(h.finalize()));

    // Push the layer as a stream.
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.src);
    let r = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = http
        .put(format!("{url}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .header("content-length", GIB)
        .body(reqwest::Body::wrap_stream(layer_stream(block)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let cfg = p
        .blob_typed(
            &repo,
            br#"{"architecture":"amd64","os":"linux"}"#,
            OCI_CONFIG,
        )
        .await
        .unwrap();
    let raw = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": cfg, "layers": [{"mediaType": OCI_LAYER, "digest": digest, "size": GIB}]}))
    .unwrap();
    p.manifest(&repo, "v1", OCI_MANIFEST, &raw).await.unwrap();

    let plain = format!("{},{}", stack.src, stack.dst);
    let mut child = tokio::process::Command::new(worker_bin())
        .args([
            "copy",
            "--plain-http",
            &plain,
            &format!("{}/{repo}:v1", stack.src),
            &format!("{}/{repo}:v1", stack.dst),
        ])
        .env("MIRRORFLEET_PROGRESS", "never")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut peak = 0;
    let mut readings = 0;
    let status = loop {
        if let Some(kib) = peak_kib(pid) {
            peak = peak.max(kib);
            readings += 1;
        }
        match tokio::time::timeout(Duration::from_millis(20), child.wait()).await {
            Ok(status) => break status.unwrap(),
            Err(_) => continue,
        }
    };
    let out = child.wait_with_output().await.unwrap();
    assert!(
        status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        readings >= 10,
        "only {readings} readings of the worker's memory"
    );
    eprintln!(
        "memory: 1 GiB layer copied, worker peak RSS {} MiB ({readings} readings)",
        peak / 1024
    );
    assert!(
        peak > 0 && peak < 64 * 1024,
        "peak RSS {peak} KiB, over 64 MiB"
    );
    assert_eq!(
        Skopeo::plain()
            .digest(&format!("{}/{repo}:v1", stack.dst))
            .unwrap(),
        sha256(&raw)
    );
    // The layer arrived whole at the destination (a HEAD with its size).
    Skopeo::plain()
        .assert_tree(&format!("{}/{repo}", stack.dst), &sha256(&raw))
        .unwrap();
}
