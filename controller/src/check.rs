//! `mirrorfleet-controller check SRC DEST...`: is each destination at the
//! source's digest? HEAD requests only; nothing is written.

use clap::Args;
use mirrorfleet_common::cli::{Exit, usage};
use mirrorfleet_common::cli::{OutputFormat, RegistryArgs, SourceDestArgs, table};
use mirrorfleet_common::control::plan::Probe;
use mirrorfleet_common::control::scan::probe;
use mirrorfleet_common::registry::Role;
use serde::Serialize;

#[derive(Debug, Args)]
#[command(
    about = "Compare a source image's digest with its destinations' (HEAD only)",
    after_help = "Examples:\n  \
  mirrorfleet-controller check golang:1.17 123456789012.dkr.ecr.us-east-1.amazonaws.com/golang:1.17\n  \
  mirrorfleet-controller check --plain-http 127.0.0.1:5001,127.0.0.1:5002 --output json \\\n      \
      127.0.0.1:5001/app:1 127.0.0.1:5002/app:1"
)]
pub struct CheckArgs {
    #[command(flatten)]
    images: SourceDestArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Result format on stdout.
    #[arg(long, env = "MIRRORFLEET_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

#[derive(Debug, Serialize)]
struct Row {
    image: String,
    role: &'static str,
    digest: Option<String>,
    in_sync: bool,
    error: Option<String>,
}

pub async fn main(args: CheckArgs) -> anyhow::Result<Exit> {
    let (source, dests) = args.images.references().map_err(usage)?;
    let engine = args.registry.configured_engine().await?;

    // The controller's own probe: the same HEAD, the same words.
    let src = probe(&engine, &source, Role::Source).await;
    let src_digest = match &src {
        Probe::Found(d) => Some(d.clone()),
        _ => None,
    };
    let mut rows = vec![Row {
        image: source.to_string(),
        role: "source",
        digest: src_digest.as_ref().map(ToString::to_string),
        in_sync: src_digest.is_some(),
        error: match src {
            Probe::Error(e) => Some(e),
            Probe::Missing => Some("not found".into()),
            Probe::Found(_) => None,
        },
    }];
    for d in dests {
        let (digest, error) = match probe(&engine, &d, Role::Destination).await {
            Probe::Found(x) => (Some(x), None),
            Probe::Missing => (None, None),
            Probe::Error(e) => (None, Some(e)),
        };
        rows.push(Row {
            image: d.to_string(),
            role: "destination",
            in_sync: digest.is_some() && digest == src_digest,
            digest: digest.map(|x| x.to_string()),
            error,
        });
    }
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        OutputFormat::Text => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.role.to_string(),
                        r.image.clone(),
                        r.digest.clone().unwrap_or_else(|| "-".into()),
                        if r.role == "source" {
                            String::new()
                        } else if r.in_sync {
                            "in sync".into()
                        } else {
                            "differs".into()
                        },
                        r.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["ROLE", "IMAGE", "DIGEST", "STATE", "ERROR"], &cells)
            );
        }
    }
    Ok(if rows.iter().all(|r| r.in_sync) {
        Exit::Success
    } else {
        Exit::Failed
    })
}
