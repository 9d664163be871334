//! Reading what went wrong: error bodies, error chains, bounded reads.

use bytes::Bytes;
use reqwest::Response;
use reqwest::header::HeaderMap;
use url::Url;

pub(super) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

pub(super) fn header_str(
    h: &HeaderMap,
    name: impl reqwest::header::AsHeaderName,
) -> Option<String> {
    h.get(name)?.to_str().ok().map(|s| s.trim().to_string())
}

pub(super) async fn read_limited(
    mut resp: Response,
    limit: usize,
) -> std::result::Result<Bytes, reqwest::Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.extend_from_slice(&chunk);
        if buf.len() > limit {
            break;
        }
    }
    Ok(buf.freeze())
}

pub(super) async fn read_error_text(resp: Response) -> String {
    match read_limited(resp, 16 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b[..b.len().min(16 * 1024)]).into_owned(),
        Err(e) => format!("(could not read the error body: {e})"),
    }
}

/// The distribution error body `{"errors":[{"code":..,"message":..}]}`, or the text.
pub(super) fn error_message(body: &str) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(b) = serde_json::from_str::<Body>(body)
        && let Some(first) = b.errors.first()
    {
        let msg = if first.message.is_empty() {
            first.code.to_ascii_lowercase().replace('_', " ")
        } else {
            first.message.clone()
        };
        return (Some(first.code.clone()).filter(|c| !c.is_empty()), msg);
    }
    let text: String = body.trim().chars().take(300).collect();
    (
        None,
        if text.is_empty() {
            "no details given".into()
        } else {
            text
        },
    )
}
/// Whether a 403 says the credentials expired, so one re-authentication may
/// help. ECR answers an expired token with 403 and code `DENIED` ("Your
/// authorization token has expired. Reauthenticate and try again."), the
/// same code as an IAM refusal, so the code narrows it and the message
/// decides. Anything without the code (a proxy's page) is a plain refusal.
pub(super) fn expired_token(code: Option<&str>, message: &str) -> bool {
    code.is_some_and(|c| c.eq_ignore_ascii_case("DENIED"))
        && message.to_ascii_lowercase().contains("token has expired")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn error_bodies() {
        let (code, msg) = error_message(
            r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:.."}]}"#,
        );
        assert_eq!(code.as_deref(), Some("MANIFEST_BLOB_UNKNOWN"));
        assert_eq!(msg, "blob unknown to registry");
        assert_eq!(error_message("").1, "no details given");
        assert_eq!(error_message("plain words").1, "plain words");
    }

    #[test]
    pub(super) fn origins() {
        let a = Url::parse("https://r.example.com/v2/").unwrap();
        assert!(same_origin(
            &Url::parse("https://r.example.com:443/x").unwrap(),
            &a
        ));
        assert!(!same_origin(
            &Url::parse("https://s3.example.com/x").unwrap(),
            &a
        ));
        assert!(!same_origin(
            &Url::parse("http://r.example.com/x").unwrap(),
            &a
        ));
    }

    #[test]
    fn expired_tokens_by_code() {
        let (code, message) = error_message(
            r#"{"errors":[{"code":"DENIED","message":"Your authorization token has expired. Reauthenticate and try again."}]}"#,
        );
        assert!(expired_token(code.as_deref(), &message));
        let (code, message) = error_message(
            r#"{"errors":[{"code":"DENIED","message":"User: arn:aws:sts::1:assumed-role/x is not authorized to perform: ecr:PutImage"}]}"#,
        );
        assert!(!expired_token(code.as_deref(), &message));
        assert!(!expired_token(None, "token has expired"));
    }
}
