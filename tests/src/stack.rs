//! The local stack (`scripts/stack.sh`): its addresses and credentials,
//! names unique per test, and the access logs of its registries.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngCore;
use sha2::{Digest as _, Sha256};

/// Addresses and credentials of the local stack (from `scripts/stack.sh env`).
#[derive(Debug, Clone)]
pub struct Stack {
    pub src: String,
    pub dst: String,
    pub basic: String,
    pub basic_creds: String,
    pub token: String,
    pub token_creds: String,
    pub tls: String,
    pub tls_ca: PathBuf,
    pub tls_cert_dir: PathBuf,
    pub moto: String,
    /// Serves the ECR host name in tests; its login is moto's ECR token.
    pub ecr: String,
    pub ecr_creds: String,
    pub dir: PathBuf,
}

impl Stack {
    /// The stack, checked to be up. Panics with instructions when it is not:
    /// these tests must never pass by skipping.
    pub fn get() -> Stack {
        let dir = PathBuf::from(
            std::env::var("MIRRORFLEET_STACK_DIR")
                .unwrap_or_else(|_| "/tmp/mirrorfleet-stack".into()),
        );
        // The env file written by `stack.sh up` has the credentials; real
        // environment variables win over it.
        let mut file_vars = std::collections::HashMap::new();
        if let Ok(text) = std::fs::read_to_string(dir.join("env")) {
            for line in text.lines() {
                if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                    file_vars.insert(k.to_string(), v.trim_matches('\'').to_string());
                }
            }
        }
        let get = |k: &str, d: &str| -> String {
            std::env::var(k)
                .ok()
                .or_else(|| file_vars.get(k).cloned())
                .unwrap_or_else(|| d.to_string())
        };
        let s = Stack {
            src: get("MF_SRC", "127.0.0.1:5001"),
            dst: get("MF_DST", "127.0.0.1:5002"),
            basic: get("MF_BASIC", "127.0.0.1:5003"),
            basic_creds: get("MF_BASIC_CREDS", ""),
            token: get("MF_TOKEN", "127.0.0.1:5004"),
            token_creds: get("MF_TOKEN_CREDS", ""),
            tls: get("MF_TLS", "127.0.0.1:5006"),
            tls_ca: PathBuf::from(get("MF_TLS_CA", "/tmp/mirrorfleet-stack/certs/ca.crt")),
            tls_cert_dir: PathBuf::from(get(
                "MF_TLS_CERT_DIR",
                "/tmp/mirrorfleet-stack/certs/skopeo",
            )),
            moto: get("MF_MOTO", "http://127.0.0.1:5000"),
            ecr: get("MF_ECR", "127.0.0.1:5007"),
            ecr_creds: get("MF_ECR_CREDS", "AWS:123456789012-auth-token"),
            dir,
        };
        let probe = std::net::TcpStream::connect(&s.src);
        assert!(
            probe.is_ok(),
            "the local test stack is not running (no registry at {}): run `scripts/stack.sh up` first, \
             or use scripts/test.sh",
            s.src
        );
        s
    }
}

pub(crate) static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A repository name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// Count access-log lines of a stack registry matching all `needles`.
pub fn count_requests(stack: &Stack, registry: &str, needles: &[&str]) -> usize {
    let path = stack.dir.join(format!("{registry}.log"));
    // A missing log would count 0 and pass any "no such request" check.
    let log = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the access log {}: {e}", path.display()));
    log.lines()
        .filter(|l| l.contains("HTTP/1.1\"") && needles.iter().all(|n| l.contains(n)))
        .count()
}

/// The mirrorfleet-worker binary built next to the test executable.
pub fn worker_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = dir.join("mirrorfleet-worker");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`; scripts/test.sh does)",
        bin.display()
    );
    bin
}
