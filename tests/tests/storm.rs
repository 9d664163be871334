//! A storm: a 200-tag local-mode sync with 10% of all requests to both
//! registries failing (5xx, 429 with Retry-After, dropped connections)
//! converges, with retries bounded by the faults and a run time within 3x
//! of the same sync without faults.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use mirrorfleet_tests::faults::{Counts, FaultProxy, Faults};
use mirrorfleet_tests::*;
use serde_json::Value;

/// `sync` over `mirrors` (pairs of source and destination) in its own file;
/// returns the wall time and the JSON summary.
async fn sync(plain: &str, mirrors: &[(String, String)]) -> (Duration, Value) {
    let body: String = mirrors
        .iter()
        .map(|(s, d)| format!("  - source: {s}\n    destinations: [{d}]\n"))
        .collect();
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("storm")));
    std::fs::write(&file, format!("mirrors:\n{body}")).unwrap();
    let started = Instant::now();
    let out = tokio::process::Command::new(worker_bin().with_file_name("mirrorfleet-controller"))
        .args([
            "sync",
            "--workers",
            "16",
            "--plain-http",
            plain,
            "--output",
            "json",
            file.to_str().unwrap(),
        ])
        .env("MIRRORFLEET_PROGRESS", "never")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked at"), "{stderr}");
    (took, serde_json::from_str(&stdout).unwrap())
}

fn registry_totals(summary: &Value) -> (u64, u64) {
    let regs = summary["registries"].as_object().unwrap();
    let sum = |k: &str| regs.values().map(|c| c[k].as_u64().unwrap()).sum::<u64>();
    (sum("requests"), sum("retries"))
}

#[tokio::test]
async fn a_200_tag_sync_through_a_storm_converges_with_bounded_retries() {
    let stack = Stack::get();
    let prefix = unique("storm");
    let fleet = Pusher::new(Target::plain(&stack.src))
        .unwrap()
        .fleet(&prefix, 20, 10, 16)
        .await
        .unwrap();
    assert_eq!(fleet.len(), 200);
    let sp = FaultProxy::start(&stack.src, Faults::default(), 41)
        .await
        .unwrap();
    let dp = FaultProxy::start(&stack.dst, Faults::default(), 43)
        .await
        .unwrap();
    let plain = format!("{},{}", sp.addr, dp.addr);
    let mirrors = |suffix: &str| -> Vec<(String, String)> {
        fleet
            .iter()
            .map(|(repo, tag, _)| {
                (
                    format!("{}/{repo}:{tag}", sp.addr),
                    format!("{}/{repo}-{suffix}:{tag}", dp.addr),
                )
            })
            .collect()
    };

    let (clean_time, clean) = sync(&plain, &mirrors("clean")).await;
    let (clean_requests, clean_retries) = registry_totals(&clean);
    assert_eq!(clean_retries, 0, "{clean}");

    // 10% of requests fail: 4% 5xx, 3% 429 (Retry-After: 1), 3% dropped.
    let storm = Faults {
        server_error: 0.04,
        throttle: 0.03,
        drop: 0.03,
        ..Default::default()
    };
    sp.set_faults(storm.clone());
    dp.set_faults(storm);
    let (before_s, before_d) = (
        Counts::get(&sp.counts().requests),
        Counts::get(&dp.counts().requests),
    );
    let (storm_time, stormy) = sync(&plain, &mirrors("storm")).await;
    let (storm_requests, storm_retries) = registry_totals(&stormy);
    let faults = sp.counts().faults() + dp.counts().faults();
    let proxied = Counts::get(&sp.counts().requests) - before_s
        + Counts::get(&dp.counts().requests)
        - before_d;

    // Everything converged, checked outside mirrorfleet.
    let http = reqwest::Client::new();
    let sk = Skopeo::plain();
    for (i, (repo, tag, digest)) in fleet.iter().enumerate() {
        let r = http
            .head(format!(
                "http://{}/v2/{repo}-storm/manifests/{tag}",
                stack.dst
            ))
            .header("accept", OCI_INDEX)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{repo}-storm:{tag}");
        assert_eq!(
            r.headers()["docker-content-digest"].to_str().unwrap(),
            digest,
            "{repo}-storm:{tag}"
        );
        if i % 25 == 0 {
            sk.assert_tree(&format!("{}/{repo}-storm", stack.dst), digest)
                .unwrap();
        }
    }

    eprintln!(
        "storm: | run | wall s | requests | retries | faults injected |\n\
         | clean | {:.1} | {clean_requests} | {clean_retries} | 0 |\n\
         | storm | {:.1} | {storm_requests} | {storm_retries} | {faults} of {proxied} |",
        clean_time.as_secs_f64(),
        storm_time.as_secs_f64()
    );
    assert!(
        faults * 20 >= proxied,
        "the storm was too mild to prove anything: {faults} faults in {proxied} requests"
    );
    // A retry only ever answers a fault: nothing retries on its own.
    assert!(
        storm_retries <= faults,
        "{storm_retries} retries for {faults} faults"
    );
    assert!(
        storm_time <= clean_time * 3,
        "the storm took {storm_time:?}, more than 3x the clean {clean_time:?}"
    );
}
