//! No credential ever reaches a log line or the output, at any log level.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use mirrorfleet_tests::*;
use serde_json::json;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn no_secret_appears_at_trace_level() {
    let stack = Stack::get();
    let repo = unique("leak");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let amd = p
        .image(&repo, false, ("linux", "amd64"), &[1000], json!({}))
        .await
        .unwrap();
    p.index(&repo, "v1", false, vec![amd], json!({}))
        .await
        .unwrap();

    // The token registry's password comes from a file named in the settings;
    // the basic registry's from MIRRORFLEET_DEST_CREDS; ECR's from moto.
    // ECR as the copy job's role meets it (the template's IAM, an S3 redirect).
    let front = mirrorfleet_tests::ecr_double::EcrFront::start(&stack, "CopyRole");
    let dir = std::env::temp_dir().join(unique("mf-leak"));
    std::fs::create_dir_all(&dir).unwrap();
    let (token_user, token_pass) = stack.token_creds.split_once(':').unwrap();
    std::fs::write(dir.join("token-pw"), token_pass).unwrap();
    let settings = dir.join("registries.yaml");
    std::fs::write(
        &settings,
        format!(
            "registries:\n  {src}:\n    plain_http: true\n  {basic}:\n    plain_http: true\n  {token}:\n    plain_http: true\n    username: {token_user}\n    password_file: {pw}\n  123456789012.dkr.ecr.us-east-1.amazonaws.com:\n    endpoint: {ecr}\n    plain_http: true\n",
            src = stack.src,
            basic = stack.basic,
            token = stack.token,
            ecr = front.double.addr,
            pw = dir.join("token-pw").display()
        ),
    )
    .unwrap();
    let aws_secret = format!("aws-secret-{}", unique("k"));
    let mut env: Vec<(&str, String)> = front.env(&stack);
    env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY", aws_secret.clone()));
    env.push(("RUST_LOG", "trace".into()));
    env.push(("MIRRORFLEET_DEST_CREDS", stack.basic_creds.clone()));

    let src = format!("{}/{repo}:v1", stack.src);
    let mut output = String::new();
    for (dest, format) in [
        (format!("{}/{repo}:v1", stack.basic), "text"),
        (format!("{}/{repo}:v1", stack.basic), "json"),
        (
            format!("123456789012.dkr.ecr.us-east-1.amazonaws.com/{repo}:v1"),
            "text",
        ),
    ] {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // ECR and the basic registry both take "dest" credentials: run the ECR copy without them.
        let e: Vec<(&str, &str)> = if dest.contains("amazonaws") {
            e.into_iter()
                .filter(|(k, _)| *k != "MIRRORFLEET_DEST_CREDS")
                .collect()
        } else {
            e
        };
        let (code, out, err) = run_bin(
            "mirrorfleet-worker",
            &[
                "--log-format",
                format,
                "copy",
                "--registries",
                settings.to_str().unwrap(),
                "--output",
                "json",
                &src,
                &dest,
            ],
            &e,
        );
        assert_eq!(
            code,
            0,
            "{dest}: {out}\n{}",
            &err[err.len().saturating_sub(3000)..]
        );
        output.push_str(&out);
        output.push_str(&err);
    }
    // The token registry as a source, with its password from the file.
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--registries",
            settings.to_str().unwrap(),
            &src,
            &format!("{}/{repo}:v1", stack.token),
        ],
        &[("RUST_LOG", "trace")],
    );
    assert_eq!(code, 0, "{out}");
    let copied = format!("{}/{repo}:v1", stack.token);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&copied) && l.contains(" copied ")),
        "{out}"
    );
    output.push_str(&out);
    output.push_str(&err);
    assert!(output.contains("TRACE"), "trace logging was not on");
    assert!(
        output.contains("GetAuthorizationToken"),
        "the ECR token path did not run"
    );

    let (basic_user, basic_pass) = stack.basic_creds.split_once(':').unwrap();
    let (_, ecr_pass) = stack.ecr_creds.split_once(':').unwrap();
    let secrets = [
        basic_pass.to_string(),
        b64(&stack.basic_creds),
        token_pass.to_string(),
        b64(&stack.token_creds),
        ecr_pass.to_string(),
        b64(&stack.ecr_creds),
        aws_secret.clone(),
    ];
    for secret in &secrets {
        if let Some(at) = output.find(secret.as_str()) {
            // Show where, with the secret itself masked.
            let start = output[..at].rfind('\n').map_or(0, |i| i + 1);
            let line = output[start..]
                .lines()
                .next()
                .unwrap_or_default()
                .replace(secret.as_str(), "<SECRET>");
            panic!("a secret was logged: {}", &line[..line.len().min(600)]);
        }
    }
    // No bearer token or basic header value either, whatever its content.
    assert!(!output.contains("Bearer ey"), "a bearer token was logged");
    assert!(
        !output.to_lowercase().contains("authorization: basic"),
        "a basic header was logged"
    );
    let _ = basic_user;
}

/// TLS is verified unless a registry is explicitly marked: plain HTTP and a
/// skipped check each need a setting, and each is warned about.
#[tokio::test]
async fn tls_is_verified_unless_a_registry_is_marked_and_marking_is_warned_about() {
    let stack = Stack::get();
    let repo = unique("tls-marks");
    push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let to_tls = format!("{}/{repo}:v1", stack.tls);

    // 1. Nothing marked: the plain-HTTP registry is spoken to over TLS, which fails.
    let (code, out, err) = run_bin("mirrorfleet-worker", &["copy", &src, &to_tls], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("cannot reach {} over TLS", stack.src))
            && out.contains(
                "the registry seems to speak plain HTTP; if it should, mark it with --plain-http"
            ),
        "plain HTTP was used without being asked for: {out}{err}"
    );

    // 2. The source marked plain HTTP; the TLS registry's self-signed
    // certificate is still refused.
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &["copy", "--plain-http", &stack.src, &src, &to_tls],
        &[],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("registry=\"{}\"", stack.src))
            && err.contains("using plain HTTP for this registry, as configured"),
        "{err}"
    );
    assert!(out.to_lowercase().contains("certificate"), "{out}{err}");

    // 3. The TLS registry explicitly marked insecure: the copy works, with a warning.
    let settings = std::env::temp_dir().join(format!("{}.yaml", unique("mf-insecure")));
    std::fs::write(
        &settings,
        format!(
            "registries:\n  {}:\n    plain_http: true\n  {}:\n    insecure_skip_tls_verify: true\n",
            stack.src, stack.tls
        ),
    )
    .unwrap();
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--registries",
            settings.to_str().unwrap(),
            &src,
            &to_tls,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!("registry=\"{}\"", stack.tls))
            && err.contains("TLS certificate verification is OFF for this registry, as configured"),
        "{err}"
    );
}

/// Credentials given in the environment or a file are used, never written:
/// after a local sync nothing under HOME or next to the mirror file holds them.
#[tokio::test]
async fn credentials_are_never_written_to_disk() {
    let stack = Stack::get();
    let repo = unique("no-disk");
    push_image(&stack, &repo, "v1").await;
    let dir = std::env::temp_dir().join(unique("mf-no-disk"));
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (user, pass) = stack.basic_creds.split_once(':').unwrap();
    let settings = dir.join("registries.yaml");
    std::fs::write(
        &settings,
        format!(
            "registries:\n  {}:\n    plain_http: true\n  {}:\n    plain_http: true\n    username: {user}\n    password_env: MF_TEST_BASIC_PASSWORD\n",
            stack.src, stack.basic
        ),
    )
    .unwrap();
    let mirrors = dir.join("mirrors.yaml");
    std::fs::write(
        &mirrors,
        format!(
            "mirrors:\n  - source: {}/{repo}:v1\n    destinations: [{}/{repo}:v1]\n",
            stack.src, stack.basic
        ),
    )
    .unwrap();
    let (code, out, err) = run_bin(
        "mirrorfleet-controller",
        &[
            "sync",
            "--registries",
            settings.to_str().unwrap(),
            mirrors.to_str().unwrap(),
        ],
        &[
            ("HOME", home.to_str().unwrap()),
            ("MF_TEST_BASIC_PASSWORD", pass),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let secrets = [pass.to_string(), b64(&stack.basic_creds)];
    let mut files = 0;
    let mut stack_dirs = vec![dir.clone()];
    while let Some(d) = stack_dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack_dirs.push(path);
                continue;
            }
            files += 1;
            if path == settings {
                continue;
            }
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            for s in &secrets {
                assert!(
                    !text.contains(s.as_str()),
                    "{} holds a credential",
                    path.display()
                );
            }
        }
    }
    assert!(
        files >= 3,
        "the sync wrote no state to check ({files} files)"
    );
    for s in &secrets {
        assert!(!out.contains(s.as_str()) && !err.contains(s.as_str()));
    }
}
