//! The shape `docs/architecture.md` promises, checked on the source tree:
//! one ECR layer, one retry helper, one exit path, small files, and a crate
//! doc that names every module. A change that breaks one of these rules
//! fails here, with the file and line that broke it.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, with its path relative to the repository.
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join(dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// `file:line` of each line containing `needle`, in files `keep` accepts.
fn lines_with(needle: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["common/src", "controller/src", "worker/src"] {
        for (path, text) in sources(dir) {
            if !keep(&path) {
                continue;
            }
            for (i, l) in text.lines().enumerate() {
                if l.contains(needle) && !l.trim_start().starts_with("//") {
                    out.push(format!("{path}:{}: {}", i + 1, l.trim()));
                }
            }
        }
    }
    out
}

#[test]
fn only_the_registry_layer_knows_ecr_hosts() {
    let outside = lines_with("EcrHost::parse", |p| !p.starts_with("common/src/registry/"));
    assert!(
        outside.is_empty(),
        "ECR host parsing outside registry/:\n{}",
        outside.join("\n")
    );
}

#[test]
fn every_retry_waits_through_the_one_helper() {
    // The backoff builder and sleeps between attempts live in retry.rs; the
    // only other sleeps are pacing (a token bucket, Docker Hub's quota).
    let builders = lines_with("ExponentialBuilder", |p| p != "common/src/retry.rs");
    assert!(builders.is_empty(), "{}", builders.join("\n"));
    let pacing = [
        "common/src/retry.rs",
        "common/src/registry/pace.rs",
        "common/src/registry/client/quota.rs",
    ];
    // Also allowed: a unit test of the memory queue, `sync --watch`'s
    // interval between rounds, and the progress bar's refresh.
    let allowed = [
        "common/src/store/queue.rs",
        "controller/src/sync.rs",
        "worker/src/copy.rs",
    ];
    let stray: Vec<String> = lines_with("time::sleep", |p| {
        !pacing.contains(&p) && !allowed.contains(&p) && !p.ends_with("tests.rs")
    });
    assert!(
        stray.is_empty(),
        "sleeps outside the retry helper:\n{stray:#?}"
    );
}

#[test]
fn every_subcommand_ends_through_cli_finish() {
    for bin in ["controller/src/main.rs", "worker/src/main.rs"] {
        let text = std::fs::read_to_string(root().join(bin)).unwrap();
        assert!(
            text.contains("cli::main(&log, |shutdown|"),
            "{bin} does not end through cli::main (which ends in cli::finish)"
        );
    }
    let own = lines_with("ExitCode::from(", |p| p != "common/src/cli.rs");
    assert!(
        own.is_empty(),
        "exit codes chosen outside cli::finish:\n{}",
        own.join("\n")
    );
}

#[test]
fn no_source_file_is_over_700_lines() {
    let mut long = Vec::new();
    for dir in ["common/src", "controller/src", "worker/src"] {
        for (path, text) in sources(dir) {
            let n = text.lines().count();
            if n > 700 {
                long.push(format!("{path}: {n} lines"));
            }
        }
    }
    assert!(long.is_empty(), "{}", long.join("\n"));
}

#[test]
fn the_crate_doc_names_every_module() {
    let lib = std::fs::read_to_string(root().join("common/src/lib.rs")).unwrap();
    let doc: String = lib
        .lines()
        .filter(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut missing = Vec::new();
    for (path, text) in sources("common/src") {
        for l in text.lines() {
            let l = l.trim();
            let name = ["pub mod ", "pub(crate) mod ", "mod "]
                .iter()
                .find_map(|p| l.strip_prefix(p))
                .and_then(|rest| rest.strip_suffix(';'));
            if let Some(name) = name
                && name != "tests"
                && !doc.contains(&format!("`{name}`"))
                && !doc.contains(&format!("::{name}`"))
                && !doc.contains(&format!("[`{name}`]"))
            {
                missing.push(format!("{path}: mod {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules the crate doc does not name:\n{}",
        missing.join("\n")
    );
}
