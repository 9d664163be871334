//! Running mirrorfleet: the binaries as users run them, and the engine
//! in-process, with the environment the control tests share.

use std::process::Command;

use crate::Stack;
use crate::moto_env;
use crate::moto_queue_with_dlq;
use crate::unique;
use crate::worker_bin;
use serde_json::Value;

/// Run a mirrorfleet binary with `args` and extra environment; returns
/// (exit code, stdout, stderr).
pub fn run_bin(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let path = worker_bin().with_file_name(bin);
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .env("MIRRORFLEET_PROGRESS", "never")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run_bin`] off the async runtime, for tests whose proxies run on it.
pub async fn run_bin_off(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let name = bin.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_bin(&name, &args, &env)
    })
    .await
    .unwrap_or_else(|e| panic!("running {bin}: {e}"))
}

/// An engine over `settings`, with no Docker config and no explicit
/// credentials, as the in-process copy tests use it.
pub fn engine_with(
    settings: mirrorfleet_common::registry::settings::Settings,
    options: mirrorfleet_common::CopyOptions,
) -> mirrorfleet_common::Engine {
    mirrorfleet_common::Engine::new(
        std::sync::Arc::new(mirrorfleet_common::registry::Registries::new(
            settings,
            mirrorfleet_common::registry::auth::DockerConfig::default(),
            None,
            None,
        )),
        options,
    )
}

/// Copy `src` to `dests` with `engine`, never cancelled.
pub async fn copy_to(
    engine: &mirrorfleet_common::Engine,
    src: &str,
    dests: &[&str],
) -> mirrorfleet_common::CopyReport {
    let src: mirrorfleet_common::Reference = src.parse().unwrap();
    let dests: Vec<mirrorfleet_common::Reference> =
        dests.iter().map(|d| d.parse().unwrap()).collect();
    engine
        .copy(&src, &dests, &tokio_util::sync::CancellationToken::new())
        .await
}

/// Environment variables for a binary, owned.
pub type Env = Vec<(String, String)>;

/// Environment for the control-plane binaries: moto, a table and a queue,
/// and plain HTTP for the registries in `plain`.
pub fn control_env(stack: &Stack, table: &str, queue: &str, plain: &[&str]) -> Env {
    let mut v: Env = moto_env(stack)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    v.push(("MIRRORFLEET_TABLE".into(), table.into()));
    v.push(("MIRRORFLEET_QUEUE_URL".into(), queue.into()));
    v.push(("MIRRORFLEET_PLAIN_HTTP".into(), plain.join(",")));
    v
}

/// [`run_bin`] with an owned environment; no run may panic, whatever it
/// was given.
pub fn run_env(bin: &str, args: &[&str], env: &Env) -> (i32, String, String) {
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, out, err) = run_bin(bin, args, &e);
    let shown: String = format!("{args:?}").chars().take(300).collect();
    assert!(
        !err.contains("panicked at") && !out.contains("panicked at"),
        "{bin} {shown} panicked:\n{err}"
    );
    (code, out, err)
}

/// A fresh table (created by `table create`) and queue, with a dead-letter
/// queue after `max_receives`; returns (environment, queue URL, DLQ URL).
pub async fn control_setup(
    stack: &Stack,
    name: &str,
    plain: &[&str],
    max_receives: u32,
) -> (Env, String, String) {
    let table = unique(name);
    let (queue, dlq) = moto_queue_with_dlq(stack, &unique(name), max_receives).await;
    let env = control_env(stack, &table, &queue, plain);
    let (code, out, err) = run_env("mirrorfleet-controller", &["table", "create"], &env);
    assert_eq!(code, 0, "{out}{err}");
    (env, queue, dlq)
}

/// `table import` of a mirror file holding `yaml`, which must succeed; its
/// output line.
pub fn table_import(env: &Env, yaml: &str) -> String {
    let file = std::env::temp_dir().join(format!("{}.yaml", crate::unique("mf-import")));
    std::fs::write(&file, yaml).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let path = file.to_str().unwrap_or_default();
    let (code, out, err) = run_env("mirrorfleet-controller", &["table", "import", path], env);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 0, "{out}{err}");
    out
}

/// `table ls --output json`, which must succeed.
pub fn table_ls_json(env: &Env) -> Vec<Value> {
    let (code, out, err) = run_env(
        "mirrorfleet-controller",
        &["table", "ls", "--output", "json"],
        env,
    );
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Start a mirrorfleet binary with `args` and extra environment, its output
/// piped, killed if dropped (for tests that kill it mid-run).
pub fn spawn_bin(bin: &str, args: &[&str], env: &Env) -> tokio::process::Child {
    tokio::process::Command::new(worker_bin().with_file_name(bin))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("RUST_LOG")
        .env("MIRRORFLEET_PROGRESS", "never")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// SIGKILL, and wait for the process to be gone; returns its stderr, which
/// must show no panic.
pub async fn kill9(mut child: tokio::process::Child) -> String {
    child
        .start_kill()
        .unwrap_or_else(|e| panic!("cannot kill: {e}"));
    let out = child
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("cannot wait: {e}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked at"), "{err}");
    err
}
