//! How one registry's ECR API is reached: with the process's own AWS
//! credentials (the default chain), or with keys kept in a Secrets Manager
//! secret (a registry in another partition, such as China, which the fleet's
//! own role cannot reach), and in either case optionally through a role
//! assumed in the registry's account, with an external id.

use aws_config::sts::AssumeRoleProvider;
use aws_config::{Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;

use crate::registry::secrets::{SecretError, Secrets};
use crate::registry::settings::RegistrySettings;

/// The credentials one ECR registry is reached with (its settings' `role_arn`,
/// `external_id` and `aws_credentials_secret`). Clients and tokens are cached
/// per access, so two registries reached differently never share either.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EcrAccess {
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub aws_credentials_secret: Option<String>,
}

impl EcrAccess {
    pub fn of(settings: &RegistrySettings) -> EcrAccess {
        EcrAccess {
            role_arn: settings.role_arn.clone(),
            external_id: settings.external_id.clone(),
            aws_credentials_secret: settings.aws_credentials_secret.clone(),
        }
    }

    /// How the credentials are obtained, in words for an error (never a value).
    fn how(&self) -> String {
        match (&self.role_arn, &self.aws_credentials_secret) {
            (Some(role), Some(secret)) => {
                format!("assuming role {role} with the keys in secret {secret}")
            }
            (Some(role), None) => format!("assuming role {role}"),
            (None, Some(secret)) => format!("with the keys in secret {secret}"),
            (None, None) => "from the default AWS credential chain".into(),
        }
    }
}

/// The SDK configuration for an ECR registry in `region` reached by `access`.
/// Keys from a secret are read now (then kept in memory by `secrets`); a role
/// is assumed when the first call needs credentials.
pub(super) async fn config(
    base: &SdkConfig,
    region: &str,
    access: &EcrAccess,
    secrets: &Secrets,
) -> Result<SdkConfig, SecretError> {
    let region = Region::new(region.to_string());
    let mut builder = base.to_builder().region(region.clone());
    if let Some(id) = &access.aws_credentials_secret {
        let keys = secrets.aws_keys(id).await?;
        builder = builder.credentials_provider(SharedCredentialsProvider::new(keys));
    }
    let config = builder.build();
    let Some(role) = &access.role_arn else {
        return Ok(config);
    };
    let mut provider = AssumeRoleProvider::builder(role)
        .session_name("mirrorfleet")
        .region(region);
    if let Some(id) = &access.external_id {
        provider = provider.external_id(id);
    }
    let provider = provider.configure(&config).build().await;
    Ok(config
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(provider))
        .build())
}

/// When getting credentials is what failed (a role that may not be assumed,
/// keys that are refused), that failure in words naming the role or secret,
/// and whether trying later may help (only a timeout).
pub(super) fn credentials_failure(
    e: &(dyn std::error::Error + 'static),
    access: &EcrAccess,
) -> Option<(String, bool)> {
    use aws_sdk_sts::error::ProvideErrorMetadata as _;
    use aws_sdk_sts::operation::assume_role::AssumeRoleError;
    let chain = || std::iter::successors(Some(e), |c| c.source());
    let failure = chain().find_map(|c| c.downcast_ref::<CredentialsError>())?;
    let transient = matches!(failure, CredentialsError::ProviderTimedOut(_));
    // STS's own words where it answered ("AccessDenied: User ... is not
    // authorized to perform: sts:AssumeRole on resource: ..."), rather than
    // the SDK's nested rendering of them.
    let words = chain()
        .find_map(|c| c.downcast_ref::<AssumeRoleError>())
        .and_then(|sts| Some(format!("STS {}: {}", sts.code()?, sts.message()?)))
        .unwrap_or_else(|| crate::error::error_line(failure));
    Some((
        format!("cannot get AWS credentials {}: {words}", access.how()),
        transient,
    ))
}

/// Whether ECR refused the keys themselves (unknown, revoked or rotated), so
/// keys from a secret are worth reading again once.
pub(super) fn keys_refused(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "InvalidClientTokenId"
                | "ExpiredTokenException"
                | "SignatureDoesNotMatch"
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_role_and_secret_never_a_value() {
        let access = EcrAccess {
            role_arn: Some("arn:aws:iam::210987654321:role/mirror".into()),
            external_id: Some("ext-value".into()),
            aws_credentials_secret: Some("cn-keys".into()),
        };
        let how = access.how();
        assert!(how.contains("arn:aws:iam::210987654321:role/mirror"));
        assert!(how.contains("secret cn-keys"));
        assert!(!how.contains("ext-value"));
        let failure = CredentialsError::provider_error("AccessDenied: not authorized");
        let (words, transient) = credentials_failure(&failure, &access).unwrap();
        assert!(words.contains("assuming role") && words.contains("AccessDenied"));
        assert!(!transient);
        let plain = std::io::Error::other("connection refused");
        assert!(credentials_failure(&plain, &access).is_none());
        assert!(keys_refused(Some("UnrecognizedClientException")));
        assert!(!keys_refused(Some("AccessDeniedException")));
    }
}
