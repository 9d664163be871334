//! `mirrorfleet-fixture`: pushes synthetic images (incompressible random
//! layers) into a registry, for the benchmarks.
//!
//! ```sh
//! mirrorfleet-fixture --registry 127.0.0.1:5001 --repo bench/app --tag v1 \
//!     --platforms 2 --layers 5 --layer-mb 30
//! # 20 repositories x 10 tags, two platforms, one base layer shared by all:
//! mirrorfleet-fixture --registry 127.0.0.1:5001 --repo bench/fleet --fleet 20x10 --layer-kb 100
//! ```

// A tool for benchmarks: a panic is a clear enough failure.
#![allow(clippy::unwrap_used)]

use clap::Parser;
use mirrorfleet_tests::{Pusher, Target};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Push a synthetic multi-platform image with random layers")]
struct Args {
    /// Registry host[:port] (plain HTTP).
    #[arg(long)]
    registry: String,
    #[arg(long)]
    repo: String,
    #[arg(long, default_value = "latest")]
    tag: String,
    /// Number of platforms (1 pushes a single manifest, more an index).
    #[arg(long, default_value_t = 2)]
    platforms: usize,
    /// Layers per platform.
    #[arg(long, default_value_t = 5)]
    layers: usize,
    /// Size of each layer in MiB.
    #[arg(long, default_value_t = 30)]
    layer_mb: usize,
    /// REPOSxTAGS: push a fleet under `<repo>-<n>:t<m>` instead of one image;
    /// prints one `repository tag digest` line per image.
    #[arg(long, value_name = "REPOSxTAGS")]
    fleet: Option<String>,
    /// Size of each fleet layer in KiB.
    #[arg(long, default_value_t = 100)]
    layer_kb: usize,
}

async fn fleet(p: &Pusher, a: &Args, spec: &str) -> anyhow::Result<()> {
    let (repos, tags) = spec
        .split_once('x')
        .and_then(|(r, t)| Some((r.parse::<usize>().ok()?, t.parse::<usize>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--fleet wants REPOSxTAGS, e.g. 20x10"))?;
    for (repo, tag, digest) in p.fleet(&a.repo, repos, tags, a.layer_kb).await? {
        println!("{repo} {tag} {digest}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let p = Pusher::new(Target::plain(&a.registry))?;
    if let Some(spec) = &a.fleet {
        return fleet(&p, &a, spec).await;
    }
    let arches = ["amd64", "arm64", "s390x", "ppc64le", "riscv64"];
    let sizes = vec![a.layer_mb * 1024 * 1024; a.layers];
    let mut children = Vec::new();
    for arch in arches.iter().take(a.platforms.max(1)) {
        children.push(
            p.image(&a.repo, false, ("linux", arch), &sizes, json!({}))
                .await?,
        );
    }
    let digest = if a.platforms <= 1 {
        let d = children[0]["digest"].as_str().unwrap().to_string();
        // Tag the single manifest by re-putting its bytes under the tag.
        let client = reqwest::Client::new();
        let base = format!("http://{}/v2/{}/manifests", a.registry, a.repo);
        let raw = client
            .get(format!("{base}/{d}"))
            .header("accept", mirrorfleet_tests::OCI_MANIFEST)
            .send()
            .await?
            .bytes()
            .await?;
        p.manifest(&a.repo, &a.tag, mirrorfleet_tests::OCI_MANIFEST, &raw)
            .await?;
        d
    } else {
        p.index(&a.repo, &a.tag, false, children, json!({})).await?
    };
    println!("{}", digest);
    Ok(())
}
