//! A moto server of a test's own, for what the shared one must not do:
//! enforce IAM (moto's `/moto-api/reset-auth`), which would refuse every
//! other test's `testing` keys.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The project's Python environment (moto, boto3, the linters).
pub fn venv_python() -> PathBuf {
    std::env::var("MIRRORFLEET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/mirrorfleet-venv")
        })
        .join("bin/python")
}

/// A running moto server on a free port of 127.0.0.1; stopped when dropped.
#[derive(Debug)]
pub struct PrivateMoto {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PrivateMoto {
    /// Start one (with IAM not enforced yet) and wait until it answers.
    pub fn start() -> PrivateMoto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/moto_server.py");
        let child = Command::new(venv_python())
            .arg(script)
            .arg("127.0.0.1")
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto: {e}"));
        let moto = PrivateMoto {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Run `code` (Python with boto3) with `ENDPOINT` set to this server;
    /// returns what it prints.
    pub fn python(&self, code: &str) -> String {
        let out = Command::new(venv_python())
            .arg("-c")
            .arg(code)
            .env("ENDPOINT", &self.url)
            .output()
            .unwrap_or_else(|e| panic!("python: {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// From now on every request must be signed with keys moto's IAM knows,
    /// and is allowed only what their policies allow.
    pub fn enforce_iam(&self) {
        let out = Command::new("curl")
            // Not a form: moto reads the raw body.
            .args([
                "-sf",
                "-H",
                "content-type: text/plain",
                "--data-binary",
                "0",
            ])
            .arg(format!("{}/moto-api/reset-auth", self.url))
            .output()
            .unwrap_or_else(|e| panic!("curl: {e}"));
        assert!(out.status.success(), "reset-auth failed");
    }
}
