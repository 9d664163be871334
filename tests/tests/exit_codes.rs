//! The README's exit-code table, subcommand by subcommand: invalid usage or
//! configuration exits 2 everywhere, with one `error: ...` line that says
//! what is wrong. (Codes 0, 1, 3 and 130 are proven where each outcome is
//! produced: `cli.rs`, `bad_input.rs`, `deploy.rs`, `crash.rs`.)
//!
//! None of these needs the stack: each is refused before anything is read
//! or written, which is itself part of the contract (exit 2 means nothing
//! was done).

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use mirrorfleet_tests::worker_bin;

/// Run a binary with no `MIRRORFLEET_*` settings from the environment, so
/// each case says exactly what it gives. Returns (exit code, stderr).
fn run(bin: &str, args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(worker_bin().with_file_name(bin));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("MIRRORFLEET_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("MIRRORFLEET_PROGRESS", "never");
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Exit 2, and stderr holds an `error:` line containing `words`.
fn assert_usage(bin: &str, args: &[&str], words: &str) {
    let (code, err) = run(bin, args);
    assert_eq!(code, 2, "{bin} {args:?}: {err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("error:") && l.contains(words)),
        "{bin} {args:?}: no error line with {words:?} in:\n{err}"
    );
}

/// A registry settings file that does not parse.
fn bad_settings() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("registries.yaml");
    std::fs::write(&p, "registries: [\n").unwrap();
    let s = p.to_str().unwrap().to_string();
    (dir, s)
}

const QUEUE: &str = "http://127.0.0.1:9/000000000000/exit-codes";

#[test]
fn worker_copy_refuses_invalid_usage_with_2() {
    let (_dir, settings) = bad_settings();
    let w = "mirrorfleet-worker";
    assert_usage(
        w,
        &[
            "copy",
            "--registries",
            &settings,
            "a.example.com/x:1",
            "b.example.com/x:1",
        ],
        "registry settings",
    );
    assert_usage(
        w,
        &["copy", "Bad:Ref", "b.example.com/x:1"],
        "invalid image reference",
    );
    assert_usage(w, &["copy", "--no-such-flag"], "unexpected argument");
}

#[test]
fn worker_consume_refuses_invalid_usage_with_2() {
    let (_dir, settings) = bad_settings();
    let w = "mirrorfleet-worker";
    let base = ["consume", "--table", "exit-codes", "--queue-url", QUEUE];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let args = with(&["--visibility", "1s"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_usage(w, &args, "--visibility must be at least 3s");
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--registries", settings.as_str()]);
    assert_usage(w, &args, "registry configuration");
    assert_usage(w, &["consume"], "required arguments were not provided");
}

#[test]
fn controller_run_refuses_invalid_usage_with_2() {
    let (dir, settings) = bad_settings();
    let c = "mirrorfleet-controller";
    let base = ["run", "--table", "exit-codes", "--queue-url", QUEUE];
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--registries", settings.as_str()]);
    assert_usage(c, &args, "registry configuration");
    let missing = dir.path().join("no-event.json");
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--event", missing.to_str().unwrap()]);
    assert_usage(c, &args, "reading the event file");
    let event = dir.path().join("event.json");
    std::fs::write(&event, "{\"detail\": 1}").unwrap();
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--event", event.to_str().unwrap()]);
    let (code, err) = run(c, &args);
    assert_eq!(code, 2, "an unreadable event is invalid input: {err}");
    assert_usage(c, &["run"], "required arguments were not provided");
}

#[test]
fn controller_sync_refuses_invalid_configuration_with_2() {
    let (dir, settings) = bad_settings();
    let c = "mirrorfleet-controller";
    let absent = dir.path().join("absent.yaml");
    assert_usage(c, &["sync", absent.to_str().unwrap()], "cannot read");
    let file = dir.path().join("mirrors.yaml");
    std::fs::write(&file, "mirrors: []\n").unwrap();
    assert_usage(
        c,
        &["sync", "--registries", &settings, file.to_str().unwrap()],
        "registry configuration",
    );
}

#[test]
fn controller_check_refuses_invalid_usage_with_2() {
    let (_dir, settings) = bad_settings();
    let c = "mirrorfleet-controller";
    assert_usage(
        c,
        &["check", "Bad:Ref", "b.example.com/x:1"],
        "invalid image reference",
    );
    assert_usage(
        c,
        &[
            "check",
            "--registries",
            &settings,
            "a.example.com/x:1",
            "b.example.com/x:1",
        ],
        "registry configuration",
    );
}

#[test]
fn controller_table_without_a_table_exits_2() {
    let c = "mirrorfleet-controller";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.yaml");
    std::fs::write(&file, "mirrors: []\n").unwrap();
    let f = file.to_str().unwrap();
    let cases: [&[&str]; 6] = [
        &["table", "ls"],
        &["table", "create"],
        &["table", "add", "a.example.com/x:1", "b.example.com/x:1"],
        &["table", "rm", "a.example.com/x:1"],
        &["table", "import", f],
        &["table", "export"],
    ];
    for args in cases {
        assert_usage(
            c,
            args,
            "give the table with --table NAME or MIRRORFLEET_TABLE",
        );
    }
    assert_usage(c, &["table", "frobnicate"], "unrecognized subcommand");
}
