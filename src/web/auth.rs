//! Who may write: the admin password, browser sessions with a CSRF token, the API token for
//! scripts, and the login rate limit.
//!
//! Reading stays open on the LAN (as the status page always was); every write needs either a
//! session cookie *and* the session's CSRF token in `X-CSRF-Token` (a browser sends the cookie by
//! itself, so the cookie alone must never be enough), or `Authorization: Bearer <api token>` (a
//! header no browser adds on its own, so it needs no CSRF token). The password is stored only as
//! an argon2id hash (0600, atomic) and never leaves this module; the API token file is 0600 and
//! is shown once, to whoever asked for it with the password.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

use crate::state;

/// The password hash file in the state directory.
pub const PASSWORD_FILE: &str = "web-password";
/// The API token for scripts.
pub const TOKEN_FILE: &str = "web-api-token";
/// The session cookie's name.
pub const COOKIE: &str = "pispeaker_session";
/// A browser session lasts a week of inactivity at most.
const SESSION_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Wrong passwords allowed from one network before the waiting starts.
const FREE_FAILURES: u32 = 5;
/// The longest wait between attempts once limited.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;

/// What a request proved about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A valid session cookie and the matching CSRF token, or the API token.
    Authorized,
    /// A valid session cookie but no (or a wrong) CSRF token: 403.
    MissingCsrf,
    /// Nothing valid: 401.
    Anonymous,
}

/// Why a password operation failed; the text is for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("wrong password")]
    WrongPassword,
    #[error("too many wrong passwords; try again in {} s", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error("a password is already set; log in to change it")]
    AlreadySet,
    #[error("no password is set yet; set one first")]
    NotSet,
    #[error("the password must have at least {MIN_PASSWORD} characters")]
    TooShort,
    #[error("cannot store the password: {0}")]
    Storage(String),
}

struct Session {
    csrf: String,
    last_used: Instant,
}

#[derive(Default)]
struct Limiter {
    failures: u32,
    next_allowed: Option<Instant>,
}

struct Inner {
    sessions: HashMap<String, Session>,
    limits: HashMap<IpAddr, Limiter>,
}

/// The auth state for one daemon. Clones share it.
#[derive(Clone)]
pub struct Auth {
    dir: PathBuf,
    params: Params,
    inner: Arc<Mutex<Inner>>,
}

/// A fresh random secret: 32 bytes from the OS generator, hex.
fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Compares without stopping at the first difference, so timing says nothing about a token.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Login attempts are counted per network: one address for IPv4, the /64 for IPv6 (a phone
/// picks a new address in its /64 whenever it likes).
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
        v4 => v4,
    }
}

impl Auth {
    /// argon2id with the RFC 9106 "second recommended" memory-constrained parameters
    /// (19 MiB, 2 passes): about half a second on a Pi 3, and only paid on login.
    pub fn new(state_dir: &Path) -> Self {
        Self::with_params(state_dir, Params::default())
    }

    /// With explicit argon2 parameters (tests use cheap ones).
    pub fn with_params(state_dir: &Path, params: Params) -> Self {
        Self {
            dir: state_dir.to_path_buf(),
            params,
            inner: Arc::new(Mutex::new(Inner {
                sessions: HashMap::new(),
                limits: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    fn stored_hash(&self) -> Option<String> {
        state::read_optional(&self.dir.join(PASSWORD_FILE))
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// True once a password exists (the page then shows the login instead of "set a password").
    pub fn has_password(&self) -> bool {
        self.stored_hash().is_some()
    }

    fn hash(&self, password: &str) -> Result<String, AuthError> {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Storage(e.to_string()))?;
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Storage(e.to_string()))
    }

    /// The stored form of a new password (the PHC string `$argon2id$v=19$...`), after the same
    /// length check as the page. Also what the image's boot unit stores for `admin-password`.
    pub fn hash_new_password(&self, password: &str) -> Result<String, AuthError> {
        if password.chars().count() < MIN_PASSWORD {
            return Err(AuthError::TooShort);
        }
        self.hash(password)
    }

    fn store_password(&self, password: &str) -> Result<(), AuthError> {
        let hash = self.hash_new_password(password)?;
        state::write_secret_atomic(&self.dir.join(PASSWORD_FILE), hash.as_bytes())
            .map_err(|e| AuthError::Storage(e.to_string()))
    }

    /// The first visit: sets the password when none exists, and opens a session.
    pub fn set_first_password(&self, password: &str) -> Result<(String, String), AuthError> {
        {
            // Two first visits at once: only one sets it (the check and the write under one lock).
            let _only_one = self.lock();
            if self.has_password() {
                return Err(AuthError::AlreadySet);
            }
            self.store_password(password)?;
        }
        Ok(self.open_session())
    }

    /// A logged-in user changes the password (the current one is asked again); every other
    /// session ends.
    pub fn change_password(
        &self,
        peer: IpAddr,
        current: &str,
        new: &str,
    ) -> Result<(String, String), AuthError> {
        self.check_password(peer, current)?;
        self.store_password(new)?;
        self.lock().sessions.clear();
        Ok(self.open_session())
    }

    /// Checks a password under the rate limit: [`FREE_FAILURES`] wrong ones are free, then each
    /// attempt must wait twice as long as the last (up to [`MAX_WAIT`]). A limited attempt is
    /// refused before any hashing, so a flood costs no CPU.
    pub fn check_password(&self, peer: IpAddr, password: &str) -> Result<(), AuthError> {
        let key = limit_key(peer);
        {
            let inner = self.lock();
            if let Some(at) = inner.limits.get(&key).and_then(|l| l.next_allowed) {
                let now = Instant::now();
                if now < at {
                    return Err(AuthError::RateLimited(at - now));
                }
            }
        }
        let hash = self.stored_hash().ok_or(AuthError::NotSet)?;
        let ok = PasswordHash::new(&hash)
            .map(|parsed| {
                self.argon2()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        let mut inner = self.lock();
        if ok {
            inner.limits.remove(&key);
            return Ok(());
        }
        let limiter = inner.limits.entry(key).or_default();
        limiter.failures += 1;
        if limiter.failures >= FREE_FAILURES {
            let doublings = (limiter.failures - FREE_FAILURES).min(9);
            let wait = (Duration::from_secs(1) * (1u32 << doublings)).min(MAX_WAIT);
            limiter.next_allowed = Some(Instant::now() + wait);
        }
        Err(AuthError::WrongPassword)
    }

    /// Logs in: (session id for the cookie, CSRF token for the page).
    pub fn login(&self, peer: IpAddr, password: &str) -> Result<(String, String), AuthError> {
        self.check_password(peer, password)?;
        Ok(self.open_session())
    }

    fn open_session(&self) -> (String, String) {
        let id = random_secret();
        let csrf = random_secret();
        let mut inner = self.lock();
        let now = Instant::now();
        inner
            .sessions
            .retain(|_, s| now.duration_since(s.last_used) < SESSION_IDLE);
        inner.sessions.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                last_used: now,
            },
        );
        (id, csrf)
    }

    /// The CSRF token of a live session (the page asks for it after a reload).
    pub fn session_csrf(&self, session: &str) -> Option<String> {
        let mut inner = self.lock();
        let s = inner.sessions.get_mut(session)?;
        if s.last_used.elapsed() >= SESSION_IDLE {
            inner.sessions.remove(session);
            return None;
        }
        s.last_used = Instant::now();
        Some(s.csrf.clone())
    }

    pub fn logout(&self, session: &str) {
        self.lock().sessions.remove(session);
    }

    /// Judges a write request from its cookie, CSRF header and Authorization header.
    pub fn authorize(
        &self,
        session: Option<&str>,
        csrf: Option<&str>,
        bearer: Option<&str>,
    ) -> Caller {
        if let Some(token) = bearer {
            if self.api_token().is_some_and(|t| same(&t, token)) {
                return Caller::Authorized;
            }
            return Caller::Anonymous;
        }
        match session.and_then(|s| self.session_csrf(s)) {
            Some(expected) => match csrf {
                Some(given) if same(&expected, given) => Caller::Authorized,
                _ => Caller::MissingCsrf,
            },
            None => Caller::Anonymous,
        }
    }

    fn api_token(&self) -> Option<String> {
        state::read_optional(&self.dir.join(TOKEN_FILE))
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| s.len() >= 32)
    }

    /// A new API token for scripts (the old one stops working), for whoever knows the password.
    pub fn new_api_token(&self, peer: IpAddr, password: &str) -> Result<String, AuthError> {
        self.check_password(peer, password)?;
        let token = random_secret();
        state::write_secret_atomic(&self.dir.join(TOKEN_FILE), token.as_bytes())
            .map_err(|e| AuthError::Storage(e.to_string()))?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest argon2 parameters: the logic under test is not the hash's cost.
    pub(crate) fn cheap(dir: &Path) -> Auth {
        Auth::with_params(dir, Params::new(64, 1, 1, None).unwrap())
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 20));

    #[test]
    fn first_password_then_login_and_the_hash_is_argon2id_0600() {
        let dir = tempfile::tempdir().unwrap();
        let auth = cheap(dir.path());
        assert!(!auth.has_password());
        assert_eq!(auth.set_first_password("short"), Err(AuthError::TooShort));
        let (session, csrf) = auth.set_first_password("correct horse").unwrap();
        assert_eq!(
            auth.set_first_password("another one"),
            Err(AuthError::AlreadySet)
        );
        let stored = std::fs::read_to_string(dir.path().join(PASSWORD_FILE)).unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("correct horse"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(PASSWORD_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            auth.authorize(Some(&session), Some(&csrf), None),
            Caller::Authorized
        );
        assert_eq!(
            auth.authorize(Some(&session), None, None),
            Caller::MissingCsrf
        );
        assert_eq!(
            auth.authorize(Some(&session), Some("nope"), None),
            Caller::MissingCsrf
        );
        assert_eq!(auth.authorize(None, Some(&csrf), None), Caller::Anonymous);
        assert_eq!(
            auth.authorize(Some("forged"), Some(&csrf), None),
            Caller::Anonymous
        );
        assert_eq!(
            auth.login(PEER, "wrong password"),
            Err(AuthError::WrongPassword)
        );
        assert!(auth.login(PEER, "correct horse").is_ok());
        auth.logout(&session);
        assert_eq!(
            auth.authorize(Some(&session), Some(&csrf), None),
            Caller::Anonymous
        );
    }

    #[test]
    fn twenty_rapid_wrong_passwords_are_rate_limited_even_the_right_one_then() {
        let dir = tempfile::tempdir().unwrap();
        let auth = cheap(dir.path());
        auth.set_first_password("correct horse").unwrap();
        let mut limited = 0;
        for _ in 0..20 {
            match auth.login(PEER, "guess") {
                Err(AuthError::RateLimited(_)) => limited += 1,
                Err(AuthError::WrongPassword) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(limited, 20 - FREE_FAILURES as usize, "only 5 are free");
        assert!(matches!(
            auth.login(PEER, "correct horse"),
            Err(AuthError::RateLimited(_))
        ));
        // Another network is not punished for this one; the same /64 is.
        let other: IpAddr = "192.168.1.21".parse().unwrap();
        assert!(auth.login(other, "correct horse").is_ok());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::99".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            let _ = auth.login(a, "guess");
        }
        assert!(matches!(
            auth.login(b, "correct horse"),
            Err(AuthError::RateLimited(_))
        ));
    }

    #[test]
    fn the_api_token_authorizes_without_csrf_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let auth = cheap(dir.path());
        auth.set_first_password("correct horse").unwrap();
        assert_eq!(auth.authorize(None, None, Some("x")), Caller::Anonymous);
        assert_eq!(
            auth.new_api_token(PEER, "nope nope"),
            Err(AuthError::WrongPassword)
        );
        let token = auth.new_api_token(PEER, "correct horse").unwrap();
        assert_eq!(auth.authorize(None, None, Some(&token)), Caller::Authorized);
        let newer = auth.new_api_token(PEER, "correct horse").unwrap();
        assert_eq!(auth.authorize(None, None, Some(&token)), Caller::Anonymous);
        assert_eq!(auth.authorize(None, None, Some(&newer)), Caller::Authorized);
    }

    #[test]
    fn changing_the_password_ends_other_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let auth = cheap(dir.path());
        let (old, old_csrf) = auth.set_first_password("correct horse").unwrap();
        let (new, new_csrf) = auth
            .change_password(PEER, "correct horse", "battery staple")
            .unwrap();
        assert_eq!(
            auth.authorize(Some(&old), Some(&old_csrf), None),
            Caller::Anonymous
        );
        assert_eq!(
            auth.authorize(Some(&new), Some(&new_csrf), None),
            Caller::Authorized
        );
        assert!(auth.login(PEER, "battery staple").is_ok());
    }
}
