//! A rotated registry password: a long-running process reads a
//! `credentials_secret` once and keeps it in memory, and after the registry
//! refuses it (401) it reads the secret again, so it picks up a new password
//! without a restart. The process is `controller sync --watch`, which keeps
//! one engine across its rounds as a worker keeps one across its jobs.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirrorfleet_tests::*;

#[tokio::test]
async fn a_rotated_secret_is_read_again_after_the_registry_refuses_it() {
    let stack = Stack::get();
    let repo = unique("rotation");
    let digest = push_image(&stack, &repo, "v1").await;
    let (user, pass) = stack.basic_creds.split_once(':').unwrap();
    let stale = serde_json::json!({"username": user, "password": "not-the-password"}).to_string();
    let arn = moto_secrets(&stack)
        .create_secret()
        .name(unique("mf-rotated"))
        .secret_string(stale)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("registries.yaml");
    std::fs::write(
        &settings,
        format!(
            "registries:\n  {}:\n    plain_http: true\n  {}:\n    plain_http: true\n    credentials_secret: {arn}\n",
            stack.src, stack.basic
        ),
    )
    .unwrap();
    let src = format!("{}/{repo}:v1", stack.src);
    let dest = format!("{}/{repo}:v1", stack.basic);
    let mirrors = dir.path().join("mirrors.yaml");
    std::fs::write(
        &mirrors,
        format!("mirrors:\n  - source: {src}\n    destinations: [{dest}]\n"),
    )
    .unwrap();

    let mut cmd = Command::new(worker_bin().with_file_name("mirrorfleet-controller"));
    cmd.args(["sync", "--watch", "1s", mirrors.to_str().unwrap()])
        .env("MIRRORFLEET_REGISTRIES", &settings)
        .env("MIRRORFLEET_PROGRESS", "never")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in moto_env(&stack) {
        cmd.env(k, v);
    }
    // Killed however the test ends, so a failure leaves no process behind.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(cmd.spawn().unwrap());
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // The secret holds an old password: the first round is refused.
    wait_for("the refused round", &|| {
        local_state(&mirrors)
            .to_string()
            .contains("refused the credentials")
    });

    // The password is rotated in the secret: the same process is refused
    // once more, reads the secret again, and copies.
    moto_secrets(&stack)
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(serde_json::json!({"username": user, "password": pass}).to_string())
        .send()
        .await
        .unwrap();
    let sk = Skopeo {
        creds: Some(stack.basic_creds.clone()),
        ..Skopeo::plain()
    };
    wait_for("the copy with the rotated password", &|| {
        sk.digest(&dest).is_ok_and(|d| d == digest)
    });
    child.0.kill().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!err.contains(pass), "the password was printed");
}
