//! ECR destinations' digests come in bulk: a controller cycle asks
//! `DescribeImages` once per 100 images of a repository instead of a HEAD
//! per image, and HEADs each image where the call is denied.
//!
//! Through the ECR double: the gate in front of moto enforces the
//! controller role's IAM and answers `DescribeImages` from the registry
//! behind the double (moto would invent digests), failing the whole call
//! when one asked image is missing, as ECR does. The double counts every
//! manifest HEAD.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use mirrorfleet_tests::ecr_double::{ECR_HOST, EcrConfig, EcrFront};
use mirrorfleet_tests::*;
use serde_json::Value;

/// Tags put at both ends, all of one image.
const TAGS: usize = 250;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json";

/// Tag `image`'s manifest as each of `tags` in `registry/repo`.
async fn tag_all(registry: &str, creds: Option<&str>, repo: &str, image: &str, tags: &[String]) {
    let http = reqwest::Client::new();
    let auth = |rb: reqwest::RequestBuilder| match creds.and_then(|c| c.split_once(':')) {
        Some((u, p)) => rb.basic_auth(u, Some(p)),
        None => rb,
    };
    let got = auth(http.get(format!("http://{registry}/v2/{repo}/manifests/{image}")))
        .header("accept", ACCEPT)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let kind = got.headers()["content-type"].to_str().unwrap().to_string();
    let body = got.bytes().await.unwrap();
    for t in tags {
        auth(http.put(format!("http://{registry}/v2/{repo}/manifests/{t}")))
            .header("content-type", &kind)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
}

/// `controller run --output json` as the front's role: its summary and stderr.
fn cycle(env: &Env, front: &EcrFront, stack: &Stack) -> (Value, String) {
    let settings = front.settings(&[&stack.src], "");
    let mut env: Env = env
        .iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
        .cloned()
        .collect();
    env.push(("AWS_ENDPOINT_URL".into(), front.gate.url.clone()));
    env.push((
        "MIRRORFLEET_REGISTRIES".into(),
        settings.to_str().unwrap().into(),
    ));
    // One scan segment, so all rows come in one page and the chunks are
    // known: each segment's pages are asked on their own (a partial chunk
    // more per segment and repository).
    let (code, out, err) = run_env(
        "mirrorfleet-controller",
        &["run", "--segments", "1", "--output", "json"],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    (serde_json::from_str(&out).unwrap(), err)
}

/// The gate's `DescribeImages` calls after the first `from`: (allowed, refused).
fn describe_calls(front: &EcrFront, from: usize) -> (usize, usize) {
    let log = front.gate.log();
    let calls: Vec<_> = log[from..]
        .iter()
        .filter(|c| c.action == "ecr:DescribeImages")
        .collect();
    let allowed = calls.iter().filter(|c| c.allowed).count();
    (allowed, calls.len() - allowed)
}

/// Manifest HEADs and GETs the double answered (its 401 challenges, which
/// start each connection's login, left out).
fn manifest_reads(front: &EcrFront) -> usize {
    front
        .double
        .seen()
        .iter()
        .filter(|s| s.action == "ecr:BatchGetImage" && s.status != 401)
        .count()
}

#[tokio::test]
async fn an_ecr_destinations_digests_come_in_bulk_and_heads_where_denied() {
    let stack = Stack::get();
    let (env, _, _) = control_setup(&stack, "mf-bulk", &[&stack.src], 3).await;
    let repo = unique("bulk");
    let dest_repo = format!("{repo}-ecr");
    let digest = push_image(&stack, &repo, "v1").await;
    let other = push_image(&stack, &repo, "other").await;
    assert_ne!(digest, other);
    moto_ecr(&stack)
        .create_repository()
        .repository_name(&dest_repo)
        .send()
        .await
        .unwrap();
    // The destination holds every tag at the source's digest, and `other`
    // at the wrong one; `gone` is not there at all.
    let tags: Vec<String> = (0..TAGS).map(|i| format!("s{i}")).collect();
    tag_all(&stack.src, None, &repo, "v1", &tags).await;
    let copy = EcrFront::start(&stack, "CopyRole");
    let settings = copy.settings(&[&stack.src], "");
    let copy_env = copy.env(&stack);
    let copy_env: Vec<(&str, &str)> = copy_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--registries",
            settings.to_str().unwrap(),
            &format!("{}/{repo}:v1", stack.src),
            &format!("{ECR_HOST}/{dest_repo}:v1"),
        ],
        &copy_env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let mut at_dest = tags.clone();
    at_dest.push("other".into());
    tag_all(
        &stack.ecr,
        Some(&stack.ecr_creds),
        &dest_repo,
        "v1",
        &at_dest,
    )
    .await;

    let mut yaml = String::from("mirrors:\n");
    for t in &tags {
        yaml.push_str(&format!(
            "  - source: {}/{repo}:{t}\n    destinations: [{ECR_HOST}/{dest_repo}:{t}]\n",
            stack.src
        ));
    }
    yaml.push_str(&format!(
        "  - source: {src}/{repo}:other\n    destinations: [{ECR_HOST}/{dest_repo}:other]\n  \
         - source: {src}/{repo}:v1\n    destinations: [{ECR_HOST}/{dest_repo}:gone]\n",
        src = stack.src
    ));
    table_import(&env, &yaml);
    let rows = TAGS + 2;

    // The controller's role: 252 destination digests in 3 chunks of at most
    // 100, plus one call again for the chunk `gone` failed; no HEAD at ECR.
    let front = EcrFront::start(&stack, "ControllerRole");
    let (from, reads) = (front.gate.log().len(), manifest_reads(&front));
    let (v, err) = cycle(&env, &front, &stack);
    assert_eq!(v["rows_scanned"], rows, "{v}");
    assert_eq!(
        v["jobs_enqueued"], 2,
        "`other` and `gone` differ: {v}\n{err}"
    );
    assert_eq!(v["in_sync"], TAGS, "{v}");
    assert_eq!(describe_calls(&front, from), (4, 0));
    assert_eq!(manifest_reads(&front) - reads, 0, "HEADs at ECR");
    assert_eq!(v["requests"]["ecr_api"]["DescribeImages"], 4, "{v}");
    assert_eq!(
        v["requests"]["ecr_api"].as_object().unwrap().len(),
        1,
        "{v}"
    );
    assert!(
        v["requests_per_row"]["ecr_api"].as_f64().unwrap() <= 0.02,
        "{v}"
    );

    // Again, in sync: the same four calls, nothing new to queue.
    let from = front.gate.log().len();
    let (v, _) = cycle(&env, &front, &stack);
    assert_eq!(v["jobs_enqueued"], 0, "{v}");
    assert_eq!(v["already_queued"], 2, "{v}");
    assert_eq!(describe_calls(&front, from), (4, 0));
    // The run reports what it asked of AWS: here no write and no message.
    let asked = v["aws"]["requests"].as_object().unwrap();
    for write in [
        "dynamodb:UpdateItem",
        "dynamodb:PutItem",
        "sqs:SendMessageBatch",
    ] {
        assert!(!asked.contains_key(write), "{write}: {v}");
    }
    assert!(asked["dynamodb:Scan"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(manifest_reads(&front) - reads, 0, "HEADs at ECR");

    // A role without `ecr:DescribeImages`: refused once, then a HEAD per
    // destination, and the same plan.
    let mut config = EcrConfig::for_role(&stack, "ControllerRole");
    config.policy = config.policy.without("ecr:DescribeImages");
    let denied = EcrFront::with(&stack, config);
    let (v, err) = cycle(&env, &denied, &stack);
    assert_eq!(v["jobs_enqueued"], 0, "{v}");
    assert_eq!(v["already_queued"], 2, "{v}");
    assert_eq!(v["in_sync"], TAGS, "{v}");
    assert_eq!(describe_calls(&denied, 0), (0, 1));
    assert_eq!(manifest_reads(&denied), rows, "a HEAD per destination");
    assert_eq!(
        err.matches("cannot ask image digests in bulk").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("ecr:DescribeImages"),
        "the refusal names the action: {err}"
    );
}
