//! Image digests in bulk: `DescribeImages` answers up to 100 tags or
//! digests of one repository per call, where the Registry API needs a HEAD
//! for each.
//!
//! `DescribeImages` refuses the whole call with `ImageNotFoundException`
//! when any one image is missing, naming that image in its message. The
//! named image is recorded as missing and the call repeated without it; after
//! a few misses in one chunk (a repository being filled, not one in sync) the
//! rest are left undecided, for the caller to HEAD.
//!
//! Why not `BatchGetImage`, which reports a missing image per id: it returns
//! every manifest's body, and ECR records it as a pull, which would reset
//! the "last pulled" time lifecycle rules read, on every image, every cycle.

use std::collections::HashMap;

use aws_sdk_ecr::operation::describe_images::DescribeImagesError;
use aws_sdk_ecr::types::ImageIdentifier;

use crate::oci::digest::Digest;
use crate::registry::ecr::{Ecr, EcrAccess, EcrError, EcrHost};

/// ECR's limit on `imageIds` per `DescribeImages` call.
pub const IMAGES_PER_CALL: usize = 100;

/// Misses tolerated in one chunk before its rest is left to HEADs: each
/// costs a call, as a HEAD would.
const MISSES_PER_CHUNK: usize = 3;

/// What `DescribeImages` decided, by the tag or digest asked: the image's
/// digest, or `None` for an image the repository does not hold. Ids it did
/// not decide are absent.
pub type ImageDigests = HashMap<String, Option<Digest>>;

impl Ecr {
    /// The digests of `ids` (tags, or `sha256:` digests) in `repository`.
    pub async fn image_digests(
        &self,
        host: &EcrHost,
        access: &EcrAccess,
        repository: &str,
        ids: &[String],
    ) -> Result<ImageDigests, EcrError> {
        let client = self.client(host, access).await?;
        let mut out = ImageDigests::with_capacity(ids.len());
        for chunk in ids.chunks(IMAGES_PER_CALL) {
            let mut asked: Vec<&String> = chunk.iter().collect();
            let mut misses = 0;
            while !asked.is_empty() {
                self.count_call("DescribeImages");
                let answer = client
                    .describe_images()
                    .registry_id(&host.account)
                    .repository_name(repository)
                    .set_image_ids(Some(asked.iter().map(|id| identifier(id)).collect()))
                    .send()
                    .await;
                match answer {
                    Ok(answer) => {
                        for detail in answer.image_details() {
                            let Some(digest) =
                                detail.image_digest().and_then(|d| d.parse::<Digest>().ok())
                            else {
                                continue;
                            };
                            for id in &asked {
                                let matches = if id.starts_with("sha256:") {
                                    detail.image_digest() == Some(id.as_str())
                                } else {
                                    detail.image_tags().iter().any(|t| t == *id)
                                };
                                if matches {
                                    out.insert((*id).clone(), Some(digest.clone()));
                                }
                            }
                        }
                        break;
                    }
                    Err(e) => match e.as_service_error() {
                        Some(DescribeImagesError::RepositoryNotFoundException(_)) => {
                            out.extend(asked.iter().map(|id| ((*id).clone(), None)));
                            break;
                        }
                        Some(DescribeImagesError::ImageNotFoundException(nf)) => {
                            let named = nf.message().and_then(named_image);
                            let Some(pos) = named.and_then(|n| asked.iter().position(|a| **a == n))
                            else {
                                break;
                            };
                            out.insert(asked.remove(pos).clone(), None);
                            misses += 1;
                            if misses >= MISSES_PER_CHUNK {
                                break;
                            }
                        }
                        _ => return Err(self.list_error("DescribeImages", host, access, e)),
                    },
                }
            }
        }
        Ok(out)
    }
}

fn identifier(id: &str) -> ImageIdentifier {
    if id.starts_with("sha256:") {
        ImageIdentifier::builder().image_digest(id).build()
    } else {
        ImageIdentifier::builder().image_tag(id).build()
    }
}

/// The image an `ImageNotFoundException` names: "The image with imageId
/// {imageDigest:'null', imageTag:'v1'} does not exist within the repository
/// ...": its tag, or its digest when no tag was asked.
fn named_image(message: &str) -> Option<String> {
    let field = |name: &str| {
        let start = message.find(&format!("{name}:'"))? + name.len() + 2;
        let len = message[start..].find('\'')?;
        Some(&message[start..start + len]).filter(|v| *v != "null" && !v.is_empty())
    };
    field("imageTag")
        .or_else(|| field("imageDigest"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::named_image;

    #[test]
    fn the_missing_image_is_read_from_the_message() {
        let m = |id: &str| {
            format!(
                "The image with imageId {id} does not exist within the repository with name \
                 'team/app' in the registry with id '123456789012'"
            )
        };
        assert_eq!(
            named_image(&m("{imageDigest:'null', imageTag:'v1.2'}")).as_deref(),
            Some("v1.2")
        );
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            named_image(&m(&format!("{{imageDigest:'{digest}', imageTag:'null'}}"))),
            Some(digest)
        );
        assert_eq!(named_image("Requested image not found"), None);
        assert_eq!(
            named_image(&m("{imageDigest:'null', imageTag:'null'}")),
            None
        );
    }
}
