//! Command-line pieces shared by both binaries: registry flags, logging flags,
//! and turning them into a validated configuration.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use crate::copy::{CopyOptions, Engine};
use crate::oci::reference::Reference;
use crate::registry::Registries;
use crate::registry::auth::{Credentials, DockerConfig};
use crate::registry::secrets::SettingsSource;
use crate::registry::settings::Settings;

/// How registries are reached and authenticated.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Registry settings (YAML): endpoints, TLS, credentials, limits per
    /// registry. A file, `ssm:/NAME` (an SSM parameter, SecureString
    /// included) or `secretsmanager:ARN`.
    #[arg(
        long,
        env = "MIRRORFLEET_REGISTRIES",
        value_name = "FILE|ssm:/NAME|secretsmanager:ARN"
    )]
    pub registries: Option<String>,

    /// Use plain HTTP for this registry (`HOST[:PORT]`); repeat or comma-separate.
    /// Nothing is plain HTTP unless named, not even localhost.
    #[arg(
        long = "plain-http",
        env = "MIRRORFLEET_PLAIN_HTTP",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    pub plain_http: Vec<String>,

    /// Credentials for the source registry. Prefer the environment variable:
    /// command lines are visible to other users of the machine.
    #[arg(
        long,
        env = "MIRRORFLEET_SRC_CREDS",
        value_name = "USER:PASS",
        hide_env_values = true
    )]
    pub src_creds: Option<CredsArg>,

    /// Credentials for the destination registries (see --src-creds).
    #[arg(
        long,
        env = "MIRRORFLEET_DEST_CREDS",
        value_name = "USER:PASS",
        hide_env_values = true
    )]
    pub dest_creds: Option<CredsArg>,

    /// Docker config.json with `auths`, `credHelpers` and `credsStore`
    /// [default: $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json, ~/.docker/config.json]
    #[arg(long, env = "MIRRORFLEET_AUTHFILE", value_name = "FILE")]
    pub authfile: Option<PathBuf>,

    /// Refuse to replace a destination tag that points at a different digest.
    #[arg(long, env = "MIRRORFLEET_NO_OVERWRITE")]
    pub no_overwrite: bool,

    /// Blob transfers in flight at once.
    #[arg(long, env = "MIRRORFLEET_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Do not copy the signatures, attestations and SBOMs that refer to each image.
    #[arg(long, env = "MIRRORFLEET_NO_REFERRERS")]
    pub no_referrers: bool,

    /// Copy only referrers of this artifact type; repeat or comma-separate
    /// [default: all]. cosign tags: .sig = application/vnd.dev.cosign.artifact.sig.v1+json,
    /// .att = application/vnd.dsse.envelope.v1+json, .sbom = text/spdx+json.
    #[arg(
        long = "referrer-type",
        env = "MIRRORFLEET_REFERRER_TYPES",
        value_name = "TYPE",
        value_delimiter = ','
    )]
    pub referrer_types: Vec<String>,
}

/// A `USER:PASS` flag value whose `Debug` never shows the password.
#[derive(Clone)]
pub struct CredsArg(crate::registry::auth::Secret);

impl std::str::FromStr for CredsArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(CredsArg(crate::registry::auth::Secret::new(s)))
    }
}

impl std::fmt::Debug for CredsArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredsArg(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--src-creds: {0}")]
    SrcCreds(crate::registry::auth::AuthError),
    #[error("--dest-creds: {0}")]
    DestCreds(crate::registry::auth::AuthError),
    #[error(transparent)]
    Settings(#[from] crate::registry::settings::SettingsError),
    #[error(transparent)]
    DockerConfig(#[from] crate::registry::auth::AuthError),
}

impl RegistryArgs {
    /// Validate the flags and build the copy engine they describe.
    pub async fn engine(&self) -> Result<Engine, ConfigError> {
        let secrets = Arc::new(crate::registry::secrets::Secrets::default());
        let mut settings = match &self.registries {
            Some(src) => {
                crate::registry::load_settings(&SettingsSource::parse(src), &secrets).await?
            }
            None => Settings::default(),
        };
        for host in &self.plain_http {
            let host = host.trim();
            if !host.is_empty() {
                settings.mark_plain_http(host);
            }
        }
        let parse = |s: &Option<CredsArg>| {
            s.as_ref()
                .map(|c| Credentials::from_user_pass(c.0.expose()))
                .transpose()
        };
        let src = parse(&self.src_creds).map_err(ConfigError::SrcCreds)?;
        let dest = parse(&self.dest_creds).map_err(ConfigError::DestCreds)?;
        let docker = match self.authfile.clone().or_else(DockerConfig::default_path) {
            Some(p) => DockerConfig::load(&p)?,
            None => DockerConfig::default(),
        };
        let registries = Arc::new(Registries::with_secrets(
            settings, docker, src, dest, secrets,
        ));
        Ok(Engine::new(
            registries,
            CopyOptions {
                overwrite: !self.no_overwrite,
                blob_concurrency: usize::from(self.concurrency),
                referrers: !self.no_referrers,
                artifact_types: self
                    .referrer_types
                    .iter()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
                ..CopyOptions::default()
            },
        ))
    }
}

/// A registry configuration that cannot be used, as a subcommand reports it.
#[derive(Debug, thiserror::Error)]
#[error("registry configuration")]
struct RegistryConfig(#[source] ConfigError);

impl RegistryArgs {
    /// [`RegistryArgs::engine`] for a subcommand: a failure is invalid
    /// configuration (exit 2), said as "registry configuration: ...".
    pub async fn configured_engine(&self) -> Result<Engine, UsageError> {
        self.engine().await.map_err(|e| usage(RegistryConfig(e)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr (for CloudWatch Logs).
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "MIRRORFLEET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `mirrorfleet_common=debug` (RUST_LOG also works).
    #[arg(long, env = "MIRRORFLEET_LOG", default_value = "info")]
    pub log_level: String,

    /// Also write metrics as CloudWatch Embedded Metric Format lines on stderr.
    #[arg(long, env = "MIRRORFLEET_METRICS", value_enum, default_value_t = MetricsFormat::None)]
    pub metrics: MetricsFormat,

    /// CloudWatch namespace for --metrics emf.
    #[arg(
        long,
        env = "MIRRORFLEET_METRICS_NAMESPACE",
        default_value = "mirrorfleet"
    )]
    pub metrics_namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsFormat {
    None,
    /// CloudWatch Embedded Metric Format.
    Emf,
}

impl LogArgs {
    /// Install the global subscriber (and metrics). Logs go to stderr; stdout is for results.
    pub fn init(&self) {
        crate::metrics::init(
            (self.metrics == MetricsFormat::Emf).then(|| self.metrics_namespace.clone()),
        );
        let filter = std::env::var("RUST_LOG")
            .ok()
            .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
            .or_else(|| tracing_subscriber::EnvFilter::try_new(&self.log_level).ok())
            .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
        // At TRACE the AWS SDK logs whole response bodies and deserialised
        // outputs (ECR authorization tokens, STS temporary credentials) and
        // SigV4's canonical requests (session tokens). More specific
        // directives win, so these caps hold even with RUST_LOG=trace.
        let mut filter = filter;
        // Only when something is at TRACE: a directive also raises a target
        // to its level, and these must never make INFO logs noisier.
        let tracing_on =
            filter.max_level_hint() == Some(tracing_subscriber::filter::LevelFilter::TRACE);
        for cap in [
            "aws_smithy_runtime=debug",
            "aws_smithy_runtime_api=debug",
            "aws_smithy_http=debug",
            "aws_sigv4=debug",
            "aws_runtime=debug",
            "aws_config=debug",
        ] {
            if let (true, Ok(d)) = (tracing_on, cap.parse()) {
                filter = filter.add_directive(d);
            }
        }
        // Colours only for a person at a terminal, not in files or CloudWatch.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        let _ = match self.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                // The job span's fields (job id, source) go on every line about a job.
                .with_current_span(true)
                .with_span_list(false)
                .try_init(),
        };
    }
}

/// A source image and its destinations, as both `copy` and `check` take them.
#[derive(Debug, Clone, Args)]
pub struct SourceDestArgs {
    /// Source image (tag or digest); `golang:1.17` means docker.io/library/golang:1.17.
    #[arg(env = "MIRRORFLEET_SOURCE")]
    pub source: String,

    /// Destination images, space- or comma-separated.
    #[arg(env = "MIRRORFLEET_DEST", required = true, num_args = 1.., value_delimiter = ',')]
    pub destinations: Vec<String>,
}

/// An invalid image argument, named by its position: `source` or
/// `destination N` (counting from 1, as given).
#[derive(Debug, thiserror::Error)]
#[error("{which}: {error}")]
pub struct ImageArgError {
    pub which: String,
    pub error: crate::oci::reference::ReferenceError,
}

impl SourceDestArgs {
    /// Parse and normalise; duplicates are dropped, an invalid one is an error naming it.
    pub fn references(&self) -> Result<(Reference, Vec<Reference>), ImageArgError> {
        let source: Reference = self.source.trim().parse().map_err(|error| ImageArgError {
            which: "source".into(),
            error,
        })?;
        let mut destinations = Vec::new();
        for (i, d) in self
            .destinations
            .iter()
            .map(|d| d.trim())
            .filter(|d| !d.is_empty())
            .enumerate()
        {
            let r: Reference = d.parse().map_err(|error| ImageArgError {
                which: format!("destination {}", i + 1),
                error,
            })?;
            if !destinations.contains(&r) {
                destinations.push(r);
            }
        }
        Ok((source, destinations))
    }
}

/// How a subcommand ended, as the README's exit-code table says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: everything asked for is done (in sync, planned, stopped when idle).
    Success,
    /// 1: something failed that needs a person (a row, a destination).
    Failed,
    /// 2: invalid usage or configuration; nothing was done.
    Usage,
    /// 3: only transient failures: retrying later may succeed.
    Transient,
    /// 130: interrupted by SIGINT or SIGTERM.
    Interrupted,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Transient => 3,
            Exit::Interrupted => 130,
        }
    }
}

/// Marks an error as invalid usage or configuration (exit code 2), wherever
/// it sits in an error's chain. Its words are its cause's.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UsageError(pub Box<dyn std::error::Error + Send + Sync + 'static>);

/// Wrap `e` as invalid usage or configuration.
pub fn usage<E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>>(e: E) -> UsageError {
    UsageError(e.into())
}

/// The exit code of a failed subcommand: 2 when the chain holds a
/// [`UsageError`], else 1.
pub fn error_exit(e: &(dyn std::error::Error + 'static)) -> Exit {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<UsageError>() {
            return Exit::Usage;
        }
        cur = c.source();
    }
    Exit::Failed
}

/// The one end of every subcommand: its exit code, and a failure's chain on
/// stderr as one `error: ...` line.
pub fn finish<E>(result: Result<Exit, E>) -> std::process::ExitCode
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    let exit = match result {
        Ok(exit) => exit,
        Err(e) => {
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", crate::error::error_line(e));
            error_exit(e)
        }
    };
    std::process::ExitCode::from(exit.code())
}

/// A binary's whole life after its flags are parsed: logging set up, the
/// one shutdown signal installed, the subcommand run, and its end reported
/// through [`finish`].
pub fn main<F, Fut, E>(log: &LogArgs, run: F) -> std::process::ExitCode
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<Exit, E>>,
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    log.init();
    run_async(async move { finish(run(crate::shutdown::install()).await) })
}

/// Run a binary's async entry point on a multi-threaded runtime.
pub fn run_async<F>(main: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = std::process::ExitCode>,
{
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(main),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Output for results on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Parse a duration flag: `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Human-readable byte counts (`12.3 MB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Lay out rows as an aligned text table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_anywhere_in_the_chain_exits_2() {
        #[derive(Debug, thiserror::Error)]
        #[error("registry configuration")]
        struct Context(#[source] UsageError);
        let e = Context(usage("settings.yaml: unknown field"));
        assert_eq!(error_exit(&e), Exit::Usage);
        assert_eq!(
            crate::error::error_line(&e),
            "registry configuration: settings.yaml: unknown field"
        );
        let plain = std::io::Error::other("connection refused");
        assert_eq!(error_exit(&plain), Exit::Failed);
        let codes: Vec<u8> = [
            Exit::Success,
            Exit::Failed,
            Exit::Usage,
            Exit::Transient,
            Exit::Interrupted,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 130]);
    }

    #[test]
    fn bytes_and_tables() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(12_345_678), "12.3 MB");
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
