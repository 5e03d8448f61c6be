//! Authentication: JWT access tokens with rotating refresh tokens, revocation, API
//! keys, password hashing, the [`Caller`] extractor and the first-start admin
//! bootstrap.
//!
//! Every authenticated request checks: that the token's session is not revoked
//! (logout, or a refresh token presented twice, which revokes its whole session),
//! that the user's session generation is the token's (a password change or deletion
//! starts a new one), and the user itself (a short-lived cached lookup, dropped when
//! the user is deleted or its role changes). Revocations and generations are written
//! to the metadata store ([`tp_core::MetadataStore::put_auth_state`]), so they hold
//! across restarts and on every node whatever the cache; the [`tp_core::Cache`] keeps
//! them for a few seconds so a request costs no store round trip. Refresh tokens and
//! sign-in throttling live in the cache alone (losing them signs users out or forgets
//! failures; neither lets anything revoked back in).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm as Argon2Variant, Argon2, Block, Params, Version};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tp_core::{
    ApiKeyId, CacheExt, Error, MetadataStore, Result, Role, RoleId, Tenant, TenantId, User, UserId,
    hash_secret, now_ms, random_token,
};
use utoipa::ToSchema;

use crate::authz::{Permission, Permissions, effective_permissions};
use crate::error::ApiError;
use crate::state::AppState;

/// Default access-token lifetime: 15 minutes.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 15 * 60;

/// Default refresh-token lifetime: 30 days.
pub const DEFAULT_REFRESH_TTL_SECS: u64 = 30 * 86_400;

/// Default number of failed sign-ins of one email from one address before that
/// address is locked out of that email.
pub const DEFAULT_MAX_FAILED_LOGINS: u32 = 5;

/// Default lock duration after too many failed logins: 15 minutes.
pub const DEFAULT_LOCKOUT_SECS: u64 = 15 * 60;

/// Default number of failed sign-ins of one email from all addresses (in one lockout
/// window) after which every further attempt on it waits a growing delay.
pub const DEFAULT_GLOBAL_FAILED_LOGINS: u32 = 20;

/// Default longest wait between attempts on an email under attack: one minute.
pub const DEFAULT_BACKOFF_MAX_SECS: u64 = 60;

/// Default lifetime of the cached user lookup done on every request.
pub const DEFAULT_USER_CACHE_SECS: u64 = 30;

/// Default email of the bootstrap administrator.
pub const DEFAULT_ADMIN_EMAIL: &str = "admin@thingspanel.local";

/// Header carrying an API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Shortest accepted password.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Longest accepted password (bounds the hashing work of one request).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Leeway (seconds) accepted on token expiry; revocations outlive tokens by it.
const LEEWAY_SECS: u64 = 30;

/// How long a node keeps what the store said about a session or generation: a
/// revocation made on another node with a per-node cache is seen within this time.
const AUTH_STATE_CACHE: Duration = Duration::from_secs(5);

/// Authentication settings. `Debug` never prints the secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// HMAC secret of HS256 tokens. Empty means a random per-process secret.
    pub jwt_secret: String,
    /// Access-token lifetime in seconds.
    pub token_ttl_secs: u64,
    /// Refresh-token lifetime in seconds.
    pub refresh_ttl_secs: u64,
    /// Failed sign-ins of one email from one source address before that address is
    /// locked out of that email (other addresses are not).
    pub max_failed_logins: u32,
    /// How long a locked (email, address) pair stays locked (seconds); also the window
    /// in which failures are counted.
    pub lockout_secs: u64,
    /// Failed sign-ins of one email from all addresses after which each further
    /// attempt on it must wait (1 s, doubling up to `backoff_max_secs`): a distributed
    /// guesser is slowed down, and no one can lock the owner out for long.
    pub global_failed_logins: u32,
    /// The longest of those waits (seconds).
    pub backoff_max_secs: u64,
    /// Password hashes (argon2, 19 MiB each) computed at once; sign-ins beyond that
    /// are answered 503 at once instead of queueing memory. Default: one per CPU.
    pub max_concurrent_hashes: usize,
    /// Reverse proxies whose `X-Forwarded-For` names the client address (sign-in
    /// throttling is per client address); the header of anyone else is ignored.
    pub trusted_proxies: Vec<IpAddr>,
    /// How long the per-request user lookup is cached (seconds). Deleting a user or
    /// changing its role drops the cached entry at once.
    pub user_cache_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
            refresh_ttl_secs: DEFAULT_REFRESH_TTL_SECS,
            max_failed_logins: DEFAULT_MAX_FAILED_LOGINS,
            lockout_secs: DEFAULT_LOCKOUT_SECS,
            global_failed_logins: DEFAULT_GLOBAL_FAILED_LOGINS,
            backoff_max_secs: DEFAULT_BACKOFF_MAX_SECS,
            max_concurrent_hashes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            trusted_proxies: Vec::new(),
            user_cache_secs: DEFAULT_USER_CACHE_SECS,
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
            .field("refresh_ttl_secs", &self.refresh_ttl_secs)
            .field("max_failed_logins", &self.max_failed_logins)
            .field("lockout_secs", &self.lockout_secs)
            .field("global_failed_logins", &self.global_failed_logins)
            .field("backoff_max_secs", &self.backoff_max_secs)
            .field("max_concurrent_hashes", &self.max_concurrent_hashes)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("user_cache_secs", &self.user_cache_secs)
            .finish()
    }
}

/// The claims of an API access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: UserId,
    /// Tenant id.
    pub tid: TenantId,
    /// Role at issue time (informational: every request uses the current role).
    pub role: Role,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issue time (seconds since the epoch).
    pub iat: u64,
    /// Token id: the key of its revocation.
    pub jti: String,
    /// Session id shared by the access and refresh tokens of one sign-in.
    #[serde(default)]
    pub sid: String,
    /// The user's session generation at issue time; a password change or deletion
    /// starts a new generation and so revokes every older token.
    #[serde(default)]
    pub generation: String,
}

/// Keys derived from [`AuthConfig`].
pub(crate) struct AuthKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub(crate) ttl_secs: u64,
    pub(crate) refresh_ttl_secs: u64,
    pub(crate) max_failed_logins: u32,
    pub(crate) lockout_secs: u64,
    pub(crate) global_failed_logins: u32,
    pub(crate) backoff_max_secs: u64,
    pub(crate) user_cache_secs: u64,
    pub(crate) trusted_proxies: Vec<IpAddr>,
    /// Permits for password hashing (see [`AuthConfig::max_concurrent_hashes`]).
    hashing: Arc<Semaphore>,
}

impl fmt::Debug for AuthKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthKeys")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    (now_ms() / 1000).max(0) as u64
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
        validation.leeway = LEEWAY_SECS;
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            ttl_secs: config.token_ttl_secs.max(1),
            refresh_ttl_secs: config.refresh_ttl_secs.max(1),
            max_failed_logins: config.max_failed_logins.max(1),
            lockout_secs: config.lockout_secs.max(1),
            global_failed_logins: config.global_failed_logins.max(1),
            backoff_max_secs: config.backoff_max_secs.max(1),
            user_cache_secs: config.user_cache_secs,
            trusted_proxies: config.trusted_proxies.clone(),
            hashing: Arc::new(Semaphore::new(config.max_concurrent_hashes.max(1))),
        }
    }

    /// A permit to hash a password now, or 503 when every permit is taken: a flood
    /// of sign-ins is refused at once instead of holding 19 MiB per waiting request.
    pub(crate) fn hash_permit(&self) -> std::result::Result<OwnedSemaphorePermit, ApiError> {
        self.hashing.clone().try_acquire_owned().map_err(|_| {
            ApiError::http(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many sign-ins at once; retry in a second",
            )
        })
    }

    /// Issues an access token of session `sid` and generation `generation`;
    /// returns it with its lifetime in seconds.
    pub(crate) fn issue_access(
        &self,
        user: &User,
        sid: &str,
        generation: &str,
    ) -> Result<(String, u64)> {
        let iat = now_secs();
        let claims = Claims {
            sub: user.id,
            tid: user.tenant_id,
            role: user.role,
            exp: iat + self.ttl_secs,
            iat,
            jti: random_token(16),
            sid: sid.to_owned(),
            generation: generation.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::backend("jwt", e))?;
        Ok((token, self.ttl_secs))
    }

    /// Issues a stand-alone access token (no session, no generation).
    #[cfg(test)]
    pub(crate) fn issue(&self, user: &User) -> Result<(String, u64)> {
        self.issue_access(user, "", "")
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

    /// How long per-user revocation state must outlive any token issued before it.
    fn generation_ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs.max(self.refresh_ttl_secs) + LEEWAY_SECS + 60)
    }
}

/// Cache keys of the authentication state shared by every API node.
pub(crate) mod keys {
    use tp_core::{RoleId, UserId, hash_secret};

    /// Store key of a revoked session (all its access and refresh tokens).
    pub(crate) fn revoked_session(sid: &str) -> String {
        format!("session-revoked:{sid}")
    }
    /// Store key of a user's current session generation.
    pub(crate) fn generation(user: UserId) -> String {
        format!("generation:{user}")
    }
    /// Store key of a refresh token already exchanged (by hash): its session.
    pub(crate) fn used_refresh(token: &str) -> String {
        format!("refresh-used:{}", hash_secret(token))
    }
    /// The cache's copy of a store key.
    pub(crate) fn cached(store_key: &str) -> String {
        format!("auth:state:{store_key}")
    }
    /// The cached user lookup.
    pub(crate) fn user(user: UserId) -> String {
        format!("auth:user:{user}")
    }
    /// The cached permissions of a custom role.
    pub(crate) fn role(role: RoleId) -> String {
        format!("auth:role:{role}")
    }
    /// A refresh token, by the hash of the token.
    pub(crate) fn refresh(token: &str) -> String {
        format!("auth:refresh:{}", hash_secret(token))
    }
    /// The hash-key of the current refresh token of a session.
    pub(crate) fn session(sid: &str) -> String {
        format!("auth:session:{sid}")
    }
    /// Failed sign-ins of an email from one address in the current window.
    pub(crate) fn failures(email: &str, addr: &str) -> String {
        format!("auth:fail:{}", hash_secret(&format!("{email}\n{addr}")))
    }
    /// Present while an address is locked out of an email; holds the unlock time (ms).
    pub(crate) fn lock(email: &str, addr: &str) -> String {
        format!("auth:lock:{}", hash_secret(&format!("{email}\n{addr}")))
    }
    /// Failed sign-ins of an email from every address in the current window.
    pub(crate) fn global_failures(email: &str) -> String {
        format!("auth:gfail:{}", hash_secret(email))
    }
    /// Present while attempts on an email must wait; holds the next allowed time (ms).
    pub(crate) fn backoff(email: &str) -> String {
        format!("auth:gwait:{}", hash_secret(email))
    }
}

/// An access token with its refresh token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenPair {
    /// JWT for `Authorization: Bearer <token>`.
    pub token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single-use token for `POST /api/v1/auth/refresh`.
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
}

/// What the cache keeps per refresh token.
#[derive(Debug, Serialize, Deserialize)]
struct RefreshRecord {
    user: UserId,
    sid: String,
    generation: String,
}

/// A piece of persistent authentication state: the cache's copy when fresh, else the
/// store's (then kept in the cache for [`AUTH_STATE_CACHE`]; an absent value too, as
/// an empty string).
async fn auth_state(state: &AppState, key: &str) -> Result<Option<String>> {
    let cached = keys::cached(key);
    if let Some(v) = state.cache.get(&cached).await? {
        let v = String::from_utf8_lossy(&v).into_owned();
        return Ok((!v.is_empty()).then_some(v));
    }
    let v = state.metadata.get_auth_state(key, now_ms()).await?;
    state
        .cache
        .set(
            &cached,
            v.as_deref().unwrap_or_default().as_bytes(),
            Some(AUTH_STATE_CACHE),
        )
        .await?;
    Ok(v)
}

/// Writes persistent authentication state (store first, then this node's cache).
async fn set_auth_state(state: &AppState, key: &str, value: &str, ttl: Duration) -> Result<()> {
    let expires_at = now_ms() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    state
        .metadata
        .put_auth_state(key, value, expires_at)
        .await?;
    state
        .cache
        .set(&keys::cached(key), value.as_bytes(), Some(AUTH_STATE_CACHE))
        .await?;
    Ok(())
}

/// The user's session generation, created when absent.
async fn current_generation(state: &AppState, user: UserId) -> Result<String> {
    let key = keys::generation(user);
    if let Some(g) = auth_state(state, &key).await? {
        return Ok(g);
    }
    let fresh = random_token(8);
    set_auth_state(state, &key, &fresh, state.auth.generation_ttl()).await?;
    Ok(fresh)
}

/// Whether a token of generation `claimed` is still valid. A missing generation has
/// outlived every token issued under it (it lives longer than any token).
async fn generation_is_current(state: &AppState, user: UserId, claimed: &str) -> Result<bool> {
    Ok(match auth_state(state, &keys::generation(user)).await? {
        Some(g) => g == claimed,
        None => true,
    })
}

/// Whether a session (all its tokens) is revoked.
async fn session_revoked(state: &AppState, sid: &str) -> Result<bool> {
    Ok(!sid.is_empty()
        && auth_state(state, &keys::revoked_session(sid))
            .await?
            .is_some())
}

/// Revokes a session: its access tokens and every refresh token of its family.
async fn revoke_session(state: &AppState, sid: &str) -> Result<()> {
    // As long as any token of the session could be presented.
    let ttl = state.auth.generation_ttl();
    set_auth_state(state, &keys::revoked_session(sid), "1", ttl).await?;
    // Logouts are rare: a good moment to drop what has expired.
    state.metadata.purge_auth_state(now_ms()).await?;
    Ok(())
}

async fn issue_pair(state: &AppState, user: &User, sid: &str) -> Result<TokenPair> {
    let generation = current_generation(state, user.id).await?;
    let (token, expires_in) = state.auth.issue_access(user, sid, &generation)?;
    let refresh_token = random_token(32);
    let record = RefreshRecord {
        user: user.id,
        sid: sid.to_owned(),
        generation,
    };
    let ttl = Duration::from_secs(state.auth.refresh_ttl_secs);
    let refresh_key = keys::refresh(&refresh_token);
    state
        .cache
        .set_json(&refresh_key, &record, Some(ttl))
        .await?;
    state
        .cache
        .set(&keys::session(sid), refresh_key.as_bytes(), Some(ttl))
        .await?;
    Ok(TokenPair {
        token,
        expires_in,
        refresh_token,
        refresh_expires_in: state.auth.refresh_ttl_secs,
    })
}

/// Starts a session for `user`: a new access token and refresh token.
pub(crate) async fn start_session(state: &AppState, user: &User) -> Result<TokenPair> {
    issue_pair(state, user, &random_token(16)).await
}

/// Exchanges a refresh token for a new pair; the presented token stops working.
pub(crate) async fn refresh_session(state: &AppState, refresh_token: &str) -> Result<TokenPair> {
    let refused = || Error::Unauthenticated("invalid or expired refresh token".into());
    let key = keys::refresh(refresh_token);
    let used = keys::used_refresh(refresh_token);
    let Some(record) = state.cache.get_json::<RefreshRecord>(&key).await? else {
        // Presented again after it was exchanged: one of the two holders is a thief,
        // and which one cannot be told, so the whole session ends.
        if let Some(sid) = auth_state(state, &used).await? {
            revoke_session(state, &sid).await?;
            tracing::warn!("Refresh token reused; its session is revoked.");
        }
        return Err(refused());
    };
    // Single use: only the request that removes the key may continue.
    if !state.cache.delete(&key).await? {
        return Err(refused());
    }
    let ttl = Duration::from_secs(state.auth.refresh_ttl_secs + LEEWAY_SECS);
    set_auth_state(state, &used, &record.sid, ttl).await?;
    if session_revoked(state, &record.sid).await?
        || !generation_is_current(state, record.user, &record.generation).await?
    {
        return Err(refused());
    }
    let user = state
        .metadata
        .get_user(record.user)
        .await?
        .ok_or_else(refused)?;
    issue_pair(state, &user, &record.sid).await
}

/// Ends the caller's session: its access token (until it expires) and its refresh token.
pub(crate) async fn end_session(state: &AppState, session: &Session) -> Result<()> {
    let sid = if session.sid.is_empty() {
        &session.jti
    } else {
        &session.sid
    };
    revoke_session(state, sid).await?;
    let session_key = keys::session(&session.sid);
    if let Some(refresh_key) = state.cache.get(&session_key).await? {
        state
            .cache
            .delete(&String::from_utf8_lossy(&refresh_key))
            .await?;
        state.cache.delete(&session_key).await?;
    }
    Ok(())
}

/// Revokes every token of a user (password change, deletion) on every node sharing
/// the cache, and drops its cached lookup.
pub(crate) async fn revoke_user_sessions(state: &AppState, user: UserId) -> Result<()> {
    let generation = random_token(8);
    set_auth_state(
        state,
        &keys::generation(user),
        &generation,
        state.auth.generation_ttl(),
    )
    .await?;
    forget_user(state, user).await
}

/// Drops the cached lookup of a user (after a role change).
pub(crate) async fn forget_user(state: &AppState, user: UserId) -> Result<()> {
    state.cache.delete(&keys::user(user)).await?;
    Ok(())
}

/// Drops the cached permissions of a custom role (after it changed).
pub(crate) async fn forget_role(state: &AppState, role: RoleId) -> Result<()> {
    state.cache.delete(&keys::role(role)).await?;
    Ok(())
}

/// Where a sign-in comes from: the peer address, or for a trusted reverse proxy the
/// address it names in `X-Forwarded-For` (the right-most entry that is not itself a
/// trusted proxy). Unknown when the server was not started with connection info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub(crate) Option<IpAddr>);

impl ClientAddr {
    fn key(&self) -> String {
        self.0
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> std::result::Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let trusted = &state.auth.trusted_proxies;
        let Some(peer) = peer.filter(|p| trusted.contains(p)) else {
            return Ok(Self(peer));
        };
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        let client = forwarded
            .iter()
            .rev()
            .find(|a| !trusted.contains(a))
            .copied();
        Ok(Self(Some(client.unwrap_or(peer))))
    }
}

fn too_many(message: String) -> ApiError {
    ApiError::http(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", message)
}

/// Seconds from now until `until_ms`, rounded up.
fn secs_until(until_ms: &[u8]) -> i64 {
    let until: i64 = String::from_utf8_lossy(until_ms).parse().unwrap_or(0);
    ((until - now_ms()).max(0) + 999) / 1000
}

/// Refuses with 429 a sign-in on `email` from an address locked out of it, or while
/// the email is in backoff after failures from many addresses.
pub(crate) async fn check_lock(
    state: &AppState,
    email: &str,
    from: ClientAddr,
) -> std::result::Result<(), ApiError> {
    if let Some(until) = state.cache.get(&keys::lock(email, &from.key())).await? {
        let secs = secs_until(&until);
        return Err(too_many(format!(
            "too many failed sign-ins from this address; try again in {secs} seconds"
        )));
    }
    if let Some(until) = state.cache.get(&keys::backoff(email)).await? {
        let secs = secs_until(&until);
        if secs > 0 {
            return Err(too_many(format!(
                "sign-ins to this account are slowed down after many failures; try again in \
                 {secs} seconds"
            )));
        }
    }
    Ok(())
}

/// Adds one to a counter kept for the lockout window; returns the new count. A
/// read-modify-write: concurrent failures may be counted once.
async fn bump(state: &AppState, key: &str, window: Duration) -> Result<u32> {
    let count = state
        .cache
        .get(key)
        .await?
        .and_then(|v| String::from_utf8_lossy(&v).parse::<u32>().ok())
        .unwrap_or(0)
        .saturating_add(1);
    state
        .cache
        .set(key, count.to_string().as_bytes(), Some(window))
        .await?;
    Ok(count)
}

/// Counts a failed sign-in of an email (known or not) from an address: the pair is
/// locked at the per-address threshold; past the global threshold every further
/// attempt on the email waits 1 s, 2 s, 4 s .. up to the maximum.
pub(crate) async fn record_failure(state: &AppState, email: &str, from: ClientAddr) -> Result<()> {
    let auth = &state.auth;
    let window = Duration::from_secs(auth.lockout_secs);
    let addr = from.key();
    let pair = keys::failures(email, &addr);
    if bump(state, &pair, window).await? >= auth.max_failed_logins {
        let until = now_ms() + (auth.lockout_secs * 1000) as i64;
        state
            .cache
            .set(
                &keys::lock(email, &addr),
                until.to_string().as_bytes(),
                Some(window),
            )
            .await?;
        state.cache.delete(&pair).await?;
        tracing::warn!("Sign-in locked for one address after repeated failures.");
    }
    let global = bump(state, &keys::global_failures(email), window).await?;
    if global >= auth.global_failed_logins {
        let doublings = (global - auth.global_failed_logins).min(16);
        let wait = (1u64 << doublings).min(auth.backoff_max_secs);
        let until = now_ms() + (wait * 1000) as i64;
        state
            .cache
            .set(
                &keys::backoff(email),
                until.to_string().as_bytes(),
                Some(Duration::from_secs(wait)),
            )
            .await?;
        if global == auth.global_failed_logins {
            tracing::warn!(
                "Sign-ins to one account slowed down after failures from many addresses."
            );
        }
    }
    Ok(())
}

/// Forgets the failures of an email from an address after a successful sign-in (the
/// email's global count stays: an attack from elsewhere goes on).
pub(crate) async fn clear_failures(state: &AppState, email: &str, from: ClientAddr) -> Result<()> {
    state
        .cache
        .delete(&keys::failures(email, &from.key()))
        .await?;
    Ok(())
}

/// The signed-in session a bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token's id.
    pub jti: String,
    /// The session id.
    pub sid: String,
    /// The token's expiry (seconds since the epoch).
    pub exp: u64,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user with a bearer token.
    User {
        /// The user.
        id: UserId,
        /// Its email (the audit log's actor).
        email: String,
        /// The token's session.
        session: Session,
    },
    /// An integration with an `X-API-Key`.
    ApiKey {
        /// The key.
        id: ApiKeyId,
        /// Its name (the audit log shows `api-key:<name>`).
        name: String,
        /// The user who created it.
        created_by: UserId,
        /// When it stops working (ms), if ever; keys it creates expire no later.
        expires_at: Option<i64>,
    },
}

/// The authenticated caller of a request, from its bearer token or `X-API-Key`.
///
/// Extracting it rejects the request with 401 when the credential is missing,
/// malformed, forged, expired or revoked, or its user no longer exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's tenant: every store call of the request is scoped to it.
    pub tenant_id: TenantId,
    /// The built-in role (current, not the one in the token).
    pub role: Role,
    /// The custom role, if any.
    pub role_id: Option<RoleId>,
    /// What the caller may do inside its tenant.
    pub permissions: Permissions,
    /// User or API key.
    pub principal: Principal,
}

impl Caller {
    /// Rejects with 403 unless the caller has `permission`.
    pub fn require(&self, permission: Permission) -> std::result::Result<(), ApiError> {
        if self.permissions.has(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this operation needs the {permission} permission"
            )))
        }
    }

    /// Rejects with 403 unless the caller is a `SYS_ADMIN` user.
    pub fn require_sys_admin(&self) -> std::result::Result<(), ApiError> {
        if self.role == Role::SysAdmin && matches!(self.principal, Principal::User { .. }) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this operation needs the SYS_ADMIN role",
            ))
        }
    }

    /// The user and session, or 403 for API keys (which have neither).
    pub fn require_user(&self) -> std::result::Result<(UserId, &Session), ApiError> {
        match &self.principal {
            Principal::User { id, session, .. } => Ok((*id, session)),
            Principal::ApiKey { .. } => Err(ApiError::forbidden(
                "this operation needs a signed-in user, not an API key",
            )),
        }
    }

    /// The acting user, if the caller is one.
    pub fn user_id(&self) -> Option<UserId> {
        match &self.principal {
            Principal::User { id, .. } => Some(*id),
            Principal::ApiKey { .. } => None,
        }
    }

    /// The user responsible for the request: the user, or the API key's creator.
    pub fn responsible_user(&self) -> UserId {
        match &self.principal {
            Principal::User { id, .. } => *id,
            Principal::ApiKey { created_by, .. } => *created_by,
        }
    }

    /// The actor shown in the audit log: an email or `api-key:<name>`.
    pub fn actor(&self) -> String {
        match &self.principal {
            Principal::User { email, .. } => email.clone(),
            Principal::ApiKey { name, .. } => format!("api-key:{name}"),
        }
    }

    /// Rejects with 403 unless the caller holds every permission of a principal with
    /// `role` and `custom` permissions (nobody grants more than it has; only a
    /// `SYS_ADMIN` manages a `SYS_ADMIN`).
    pub fn require_may_grant(
        &self,
        role: Role,
        custom: Permissions,
    ) -> std::result::Result<(), ApiError> {
        let granted = effective_permissions(role, custom);
        if (role == Role::SysAdmin && self.role != Role::SysAdmin)
            || !self.permissions.contains(granted)
        {
            return Err(ApiError::forbidden(
                "cannot grant permissions the caller does not have",
            ));
        }
        Ok(())
    }
}

/// The per-request user lookup kept briefly in the cache.
#[derive(Debug, Serialize, Deserialize)]
struct CachedUser {
    tenant_id: TenantId,
    role: Role,
    email: String,
    role_id: Option<RoleId>,
}

async fn lookup_user(state: &AppState, id: UserId) -> Result<Option<CachedUser>> {
    let key = keys::user(id);
    if let Some(hit) = state.cache.get_json::<CachedUser>(&key).await? {
        return Ok(Some(hit));
    }
    let Some(user) = state.metadata.get_user(id).await? else {
        return Ok(None);
    };
    let role_id = state.access.get_user_role(user.tenant_id, id).await?;
    let cached = CachedUser {
        tenant_id: user.tenant_id,
        role: user.role,
        email: user.email,
        role_id,
    };
    if state.auth.user_cache_secs > 0 {
        let ttl = Duration::from_secs(state.auth.user_cache_secs);
        state.cache.set_json(&key, &cached, Some(ttl)).await?;
    }
    Ok(Some(cached))
}

/// The permissions of a custom role (none when it no longer exists).
pub(crate) async fn role_permissions(
    state: &AppState,
    tenant: TenantId,
    role: Option<RoleId>,
) -> Result<Permissions> {
    let Some(role) = role else {
        return Ok(Permissions::NONE);
    };
    let key = keys::role(role);
    if let Some(names) = state.cache.get_json::<Vec<String>>(&key).await? {
        return Ok(Permissions::parse_lenient(&names));
    }
    let names = state
        .access
        .get_role(tenant, role)
        .await?
        .map(|r| r.permissions)
        .unwrap_or_default();
    if state.auth.user_cache_secs > 0 {
        let ttl = Duration::from_secs(state.auth.user_cache_secs);
        state.cache.set_json(&key, &names, Some(ttl)).await?;
    }
    Ok(Permissions::parse_lenient(&names))
}

async fn caller_from_token(state: &AppState, token: &str) -> std::result::Result<Caller, ApiError> {
    let claims = state.auth.verify(token)?;
    let sid = if claims.sid.is_empty() {
        &claims.jti
    } else {
        &claims.sid
    };
    if session_revoked(state, sid).await? {
        return Err(ApiError::unauthenticated("token revoked"));
    }
    if !generation_is_current(state, claims.sub, &claims.generation).await? {
        return Err(ApiError::unauthenticated("token revoked"));
    }
    let user = lookup_user(state, claims.sub)
        .await?
        .filter(|u| u.tenant_id == claims.tid)
        .ok_or_else(|| ApiError::unauthenticated("the token's user no longer exists"))?;
    let custom = role_permissions(state, user.tenant_id, user.role_id).await?;
    Ok(Caller {
        tenant_id: user.tenant_id,
        role: user.role,
        role_id: user.role_id,
        permissions: effective_permissions(user.role, custom),
        principal: Principal::User {
            id: claims.sub,
            email: user.email,
            session: Session {
                jti: claims.jti,
                sid: claims.sid,
                exp: claims.exp,
            },
        },
    })
}

async fn caller_from_api_key(state: &AppState, key: &str) -> std::result::Result<Caller, ApiError> {
    let refused = || ApiError::unauthenticated("invalid API key");
    if key.is_empty() || key.len() > 256 {
        return Err(refused());
    }
    let key = state
        .access
        .get_api_key_by_hash(&hash_secret(key))
        .await?
        .ok_or_else(refused)?;
    if key.expires_at.is_some_and(|t| t <= now_ms()) {
        return Err(ApiError::unauthenticated("API key expired"));
    }
    if key.role == Role::SysAdmin {
        return Err(refused());
    }
    // A key acts for the user who made it: it stops working when that user is gone
    // and never does more than that user may do now (a demoted creator's keys shrink
    // with it; a key cannot outlive its creator's rights).
    let creator = lookup_user(state, key.created_by)
        .await?
        .filter(|u| u.tenant_id == key.tenant_id)
        .ok_or_else(|| {
            ApiError::unauthenticated("API key revoked: its creator no longer exists")
        })?;
    let creator_custom = role_permissions(state, key.tenant_id, creator.role_id).await?;
    let creator_may = effective_permissions(creator.role, creator_custom);
    let custom = role_permissions(state, key.tenant_id, key.role_id).await?;
    Ok(Caller {
        tenant_id: key.tenant_id,
        role: key.role,
        role_id: key.role_id,
        permissions: effective_permissions(key.role, custom).intersection(creator_may),
        principal: Principal::ApiKey {
            id: key.id,
            name: key.name,
            created_by: key.created_by,
            expires_at: key.expires_at,
        },
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> std::result::Result<Self, Self::Rejection> {
        if let Some(header) = parts.headers.get(AUTHORIZATION) {
            let value = header
                .to_str()
                .map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
            return match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    caller_from_token(state, token.trim()).await
                }
                _ => Err(ApiError::unauthenticated("missing bearer token")),
            };
        }
        if let Some(key) = parts.headers.get(API_KEY_HEADER) {
            let key = key
                .to_str()
                .map_err(|_| ApiError::unauthenticated("malformed X-API-Key header"))?;
            return caller_from_api_key(state, key.trim()).await;
        }
        Err(ApiError::unauthenticated(
            "missing bearer token or X-API-Key",
        ))
    }
}

/// Checks a new password's length.
pub(crate) fn validate_password(field: &str, password: &str) -> Result<()> {
    let len = password.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&len) {
        return Err(Error::invalid(
            field,
            format!("must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

/// Hashes a password with argon2id (PHC string). CPU-heavy: runs on the blocking pool.
pub async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_password_blocking(&password))
        .await
        .map_err(|e| Error::backend("argon2", e))?
}

/// Argon2's work memory (19 MiB with the default parameters), kept for reuse: freed
/// after every hash, the allocator was seen to keep each one (RSS grew by 19 MiB per
/// sign-in until about 20 were held), so a sign-in flood grew the node by hundreds of
/// MiB. One buffer per concurrent hash is kept; the API bounds how many run at once.
static HASH_MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

fn with_hash_memory<T>(blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
    let taken = HASH_MEMORY.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut memory = taken.unwrap_or_default();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let out = work(&mut memory[..blocks]);
    HASH_MEMORY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(memory);
    out
}

fn argon_error(e: impl fmt::Display) -> Error {
    Error::backend("argon2", e.to_string())
}

fn hash_password_blocking(password: &str) -> Result<String> {
    let params = Params::default();
    let salt: [u8; 16] = rand::random();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let argon = Argon2::new(Argon2Variant::Argon2id, Version::V0x13, params.clone());
    with_hash_memory(params.block_count(), |memory| {
        argon.hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, memory)
    })
    .map_err(argon_error)?;
    let phc = PasswordHash {
        algorithm: Argon2Variant::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(argon_error)?,
        salt: Some(Salt::new(&salt).map_err(argon_error)?),
        hash: Some(Output::new(&out).map_err(argon_error)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `hash` (any argon2 variant and
/// parameters; the outputs are compared in constant time).
fn verify_password_blocking(password: &str, hash: &str) -> bool {
    let Ok(phc) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let Ok(algorithm) = Argon2Variant::try_from(phc.algorithm.as_str()) else {
        return false;
    };
    let version = match phc.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&phc) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params.clone());
    let computed = with_hash_memory(params.block_count(), |memory| {
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, memory)
    });
    computed.is_ok() && Output::new(&out).is_ok_and(|out| out == *expected)
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
        let ok = verify_password_blocking(&password, &hash);
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
        assert_eq!(AuthConfig::default().token_ttl_secs, 900);
    }

    #[test]
    fn tokens_round_trip_and_reject_other_keys() {
        let keys = AuthKeys::new(&AuthConfig {
            jwt_secret: "a".repeat(32),
            token_ttl_secs: 60,
            ..AuthConfig::default()
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
            ..AuthConfig::default()
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
            ..AuthConfig::default()
        });
        let claims = Claims {
            sub: UserId::new(),
            tid: TenantId::new(),
            role: Role::TenantUser,
            exp: 1_000,
            iat: 900,
            jti: "x".into(),
            sid: String::new(),
            generation: String::new(),
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
