//! ECR's `DescribeImages` by `imageIds`, answered from the registry that
//! holds the ECR double's data, since moto knows nothing of the images
//! pushed through the double (and invents digests for those put into it).
//!
//! As ECR answers: one `imageDetails` entry per image (tags that point to
//! the same image share it), and when any one asked image is missing the
//! whole call fails with `ImageNotFoundException`, whose message names that
//! image; a repository ECR does not have gets `RepositoryNotFoundException`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::ecr_double::moto_has_repository;
use crate::serve::{Body, json as json_response};

/// The registry behind the double, and its login.
#[derive(Debug, Clone)]
pub struct ImageSource {
    pub upstream: String,
    pub creds: String,
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

fn error(kind: &str, message: String) -> hyper::Response<Body> {
    json_response(
        400,
        &[("x-amzn-errortype", kind)],
        json!({"__type": kind, "message": message}).to_string(),
    )
}

/// The answer to a `DescribeImages` call that names `imageIds`.
pub async fn describe(
    http: &reqwest::Client,
    source: &ImageSource,
    moto: &str,
    region: &str,
    account: &str,
    request: &Value,
) -> hyper::Response<Body> {
    let repo = request["repositoryName"].as_str().unwrap_or_default();
    let account = request["registryId"].as_str().unwrap_or(account);
    if !moto_has_repository(moto, region, account, repo).await {
        return error(
            "RepositoryNotFoundException",
            format!(
                "The repository with name '{repo}' does not exist in the registry with id '{account}'"
            ),
        );
    }
    // digest -> (media type, size, tags asked that point to it)
    let mut images: BTreeMap<String, (String, u64, Vec<String>)> = BTreeMap::new();
    for id in request["imageIds"].as_array().into_iter().flatten() {
        let tag = id["imageTag"].as_str();
        let digest = id["imageDigest"].as_str();
        let Some(reference) = digest.or(tag) else {
            continue;
        };
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", source.upstream);
        let mut req = http.head(url).header("accept", ACCEPT);
        if let Some((u, p)) = source.creds.split_once(':') {
            req = req.basic_auth(u, Some(p));
        }
        let found = match req.send().await {
            Ok(r) if r.status().is_success() => Some(r),
            _ => None,
        };
        let Some(found) = found else {
            return error(
                "ImageNotFoundException",
                format!(
                    "The image with imageId {{imageDigest:'{}', imageTag:'{}'}} does not exist \
                     within the repository with name '{repo}' in the registry with id '{account}'",
                    digest.unwrap_or("null"),
                    tag.unwrap_or("null")
                ),
            );
        };
        let header = |name: &str| {
            found
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let entry = images.entry(header("docker-content-digest")).or_insert((
            header("content-type"),
            header("content-length").parse().unwrap_or_default(),
            Vec::new(),
        ));
        if let Some(t) = tag {
            entry.2.push(t.to_string());
        }
    }
    let details: Vec<Value> = images
        .into_iter()
        .map(|(digest, (media_type, size, tags))| {
            json!({
                "registryId": account,
                "repositoryName": repo,
                "imageDigest": digest,
                "imageTags": tags,
                "imageManifestMediaType": media_type,
                "imageSizeInBytes": size,
            })
        })
        .collect();
    json_response(200, &[], json!({"imageDetails": details}).to_string())
}
