//! Authentication: JWT issuing and checking, password hashing, the [`Caller`]
//! extractor and the first-start admin bootstrap.

use std::fmt;
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tp_core::{
    Error, MetadataStore, Result, Role, Tenant, TenantId, User, UserId, now_ms, random_token,
};

use crate::error::ApiError;
use crate::state::AppState;

/// Default token lifetime: 12 hours.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600 * 12;

/// Default email of the bootstrap administrator.
pub const DEFAULT_ADMIN_EMAIL: &str = "admin@thingspanel.local";

/// JWT settings. `Debug` never prints the secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// HMAC secret of HS256 tokens. Empty means a random per-process secret.
    pub jwt_secret: String,
    /// Token lifetime in seconds.
    pub token_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "jwt_secret",
                &if self.jwt_secret.is_empty() {
                    "<unset>"
                } else {
                    "<redacted>"
                },
            )
            .field("token_ttl_secs", &self.token_ttl_secs)
            .finish()
    }
}

/// The claims of an API token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: UserId,
    /// Tenant id.
    pub tid: TenantId,
    /// Role.
    pub role: Role,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issue time (seconds since the epoch).
    pub iat: u64,
    /// Token id.
    pub jti: String,
}

/// Keys derived from [`AuthConfig`].
pub(crate) struct AuthKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub(crate) ttl_secs: u64,
}

impl fmt::Debug for AuthKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthKeys")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl AuthKeys {
    pub(crate) fn new(config: &AuthConfig) -> Self {
        let secret = if config.jwt_secret.is_empty() {
            tracing::warn!(
                "No JWT secret configured; using a random one. Tokens will not survive a restart."
            );
            random_token(32)
        } else {
            config.jwt_secret.clone()
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 30;
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            ttl_secs: config.token_ttl_secs.max(1),
        }
    }

    /// Issues a token for a user; returns it with its lifetime in seconds.
    pub(crate) fn issue(&self, user: &User) -> Result<(String, u64)> {
        let iat = (now_ms() / 1000).max(0) as u64;
        let claims = Claims {
            sub: user.id,
            tid: user.tenant_id,
            role: user.role,
            exp: iat + self.ttl_secs,
            iat,
            jti: random_token(16),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::backend("jwt", e))?;
        Ok((token, self.ttl_secs))
    }

    /// Checks a token and returns its claims.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                JwtErrorKind::ExpiredSignature => Error::Unauthenticated("token expired".into()),
                _ => Error::Unauthenticated("invalid token".into()),
            })
    }
}

/// The authenticated caller of a request, from its bearer token.
///
/// Extracting it rejects the request with 401 when the token is missing, malformed,
/// forged or expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user.
    pub user_id: UserId,
    /// The user's tenant: every store call of the request is scoped to it.
    pub tenant_id: TenantId,
    /// The user's role.
    pub role: Role,
}

impl Caller {
    /// Rejects with 403 unless the caller may change the tenant's resources
    /// (`SYS_ADMIN` or `TENANT_ADMIN`).
    pub fn require_admin(&self) -> std::result::Result<(), ApiError> {
        match self.role {
            Role::SysAdmin | Role::TenantAdmin => Ok(()),
            Role::TenantUser => Err(ApiError::forbidden(
                "this operation needs the TENANT_ADMIN or SYS_ADMIN role",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> std::result::Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("missing bearer token"))?;
        let value = header
            .to_str()
            .map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(ApiError::unauthenticated("missing bearer token")),
        };
        let claims = state.auth.verify(token)?;
        Ok(Caller {
            user_id: claims.sub,
            tenant_id: claims.tid,
            role: claims.role,
        })
    }
}

/// Hashes a password with argon2id (PHC string). CPU-heavy: runs on the blocking pool.
pub async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_password_blocking(&password))
        .await
        .map_err(|e| Error::backend("argon2", e))?
}

fn hash_password_blocking(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::backend("argon2", e.to_string()))
}

/// Checks a password against a PHC hash in constant time. CPU-heavy: runs on the
/// blocking pool. `None` as hash still does the work of one verification (against a
/// dummy hash) and returns `false`, so unknown users take as long as wrong passwords.
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = match hash {
            Some(h) => h,
            None => dummy_hash()?.to_owned(),
        };
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return Ok(false);
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(known && ok)
    })
    .await
    .map_err(|e| Error::backend("argon2", e))?
}

fn dummy_hash() -> Result<&'static str> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h);
    }
    let h = hash_password_blocking(&random_token(16))?;
    Ok(DUMMY.get_or_init(|| h))
}

/// Creates the first administrator when the installation has no user yet.
///
/// Creates a tenant `"default"` and a `SYS_ADMIN` user with `email` (default
/// [`DEFAULT_ADMIN_EMAIL`]) and `password`. Without a password a random one is
/// generated and returned so the caller can show it once; it is never logged.
/// Returns `Ok(None)` when users already exist.
///
/// # Errors
/// Invalid email or empty password ([`Error::Invalid`]) and store failures.
pub async fn bootstrap_admin(
    metadata: &dyn MetadataStore,
    email: Option<String>,
    password: Option<String>,
) -> Result<Option<(String, Option<String>)>> {
    if metadata.count_users().await? > 0 {
        return Ok(None);
    }
    let email = normalize_email(email.as_deref().unwrap_or(DEFAULT_ADMIN_EMAIL));
    if email.is_empty() || !email.contains('@') || email.len() > 255 {
        return Err(Error::invalid("email", "must be an email address"));
    }
    let (password, generated) = match password {
        Some(p) if p.is_empty() => return Err(Error::invalid("password", "must not be empty")),
        Some(p) => (p, None),
        None => {
            let p = random_token(12);
            (p.clone(), Some(p))
        }
    };
    let now = now_ms();
    let tenant = Tenant {
        id: TenantId::new(),
        name: "default".to_owned(),
        created_at: now,
    };
    metadata.create_tenant(&tenant).await?;
    let user = User {
        id: UserId::new(),
        tenant_id: tenant.id,
        email: email.clone(),
        name: "Administrator".to_owned(),
        password_hash: hash_password(password).await?,
        role: Role::SysAdmin,
        created_at: now,
    };
    metadata.create_user(&user).await?;
    tracing::info!(email = %email, "Created the bootstrap administrator.");
    Ok(Some((email, generated)))
}

/// Emails are stored and looked up trimmed and lower-case.
pub(crate) fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret() {
        let c = AuthConfig {
            jwt_secret: "s3cr3t-value".into(),
            ..AuthConfig::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("s3cr3t-value"), "{s}");
        assert_eq!(AuthConfig::default().token_ttl_secs, 43_200);
    }

    #[test]
    fn tokens_round_trip_and_reject_other_keys() {
        let keys = AuthKeys::new(&AuthConfig {
            jwt_secret: "a".repeat(32),
            token_ttl_secs: 60,
        });
        let user = User {
            id: UserId::new(),
            tenant_id: TenantId::new(),
            email: "a@b.c".into(),
            name: "a".into(),
            password_hash: String::new(),
            role: Role::TenantAdmin,
            created_at: 0,
        };
        let (token, ttl) = keys.issue(&user).unwrap();
        assert_eq!(ttl, 60);
        let claims = keys.verify(&token).unwrap();
        assert_eq!(
            (claims.sub, claims.tid, claims.role),
            (user.id, user.tenant_id, user.role)
        );
        assert_eq!(claims.exp, claims.iat + 60);
        let other = AuthKeys::new(&AuthConfig {
            jwt_secret: "b".repeat(32),
            token_ttl_secs: 60,
        });
        assert!(matches!(
            other.verify(&token),
            Err(Error::Unauthenticated(_))
        ));
    }

    #[test]
    fn expired_tokens_are_rejected() {
        let keys = AuthKeys::new(&AuthConfig {
            jwt_secret: "a".repeat(32),
            token_ttl_secs: 60,
        });
        let claims = Claims {
            sub: UserId::new(),
            tid: TenantId::new(),
            role: Role::TenantUser,
            exp: 1_000,
            iat: 900,
            jti: "x".into(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        match keys.verify(&token) {
            Err(Error::Unauthenticated(m)) => assert_eq!(m, "token expired"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password("hunter2".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(
            verify_password("hunter2".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(!verify_password("hunter3".into(), Some(h)).await.unwrap());
        assert!(!verify_password("hunter2".into(), None).await.unwrap());
    }
}
