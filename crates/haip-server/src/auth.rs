//! JWT authentication (contract section 9).
//!
//! HS256 with a shared secret by default, RS256 or ES256 with a PEM public key when
//! configured. `exp` is required; `nbf` and `iat` may not be in the future (60 s of clock
//! skew allowed); `iss` and `aud` are required and checked when configured (`aud` may be a
//! string or an array, RFC 7519 section 4.1.3). Only the configured algorithm is accepted,
//! which refuses `alg: none` and algorithm switching. The subject is `sub`, else `userId`.
//! Refusals say what is wrong in plain words, never in the JWT library's.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::engine::now_ms;

/// Clock skew tolerated for `exp` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Who a valid token speaks for, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    /// `exp` in ms since the epoch.
    pub expires_ms: u64,
    /// The `role` claim: `admin` may watch every session (`/haip/admin/monitor`).
    pub role: Option<String>,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.role.as_deref() == Some("admin")
    }

    /// An agent worker's token (`role: "agent"`): it attaches a worker and nothing else.
    pub fn is_agent(&self) -> bool {
        self.role.as_deref() == Some("agent")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, rename = "userId", skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    /// Required; `Option` so that its absence is reported as such by the validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

/// `aud`: one audience or several (RFC 7519 section 4.1.3).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

pub struct Authenticator {
    decoding: DecodingKey,
    validation: Validation,
    /// Present with a shared secret, so that the server can mint tokens (`haip token`).
    encoding: Option<EncodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    /// The secret was made up at start: a token signed with another one most likely
    /// predates a restart, and the refusal says so.
    generated_secret: bool,
}

impl Authenticator {
    /// HS256 with a shared secret.
    pub fn with_secret(
        secret: &[u8],
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Authenticator {
        Authenticator::build(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
            Some(EncodingKey::from_secret(secret)),
            issuer,
            audience,
        )
    }

    /// HS256 with a secret the server made up at start (no JWT_SECRET).
    pub fn with_generated_secret(
        secret: &[u8],
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Authenticator {
        let mut auth = Authenticator::with_secret(secret, issuer, audience);
        auth.generated_secret = true;
        auth
    }

    /// RS256 or ES256 with a PEM public key (the algorithm follows the key type).
    pub fn with_public_key(
        pem: &[u8],
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Authenticator, AuthError> {
        let (key, alg) = match DecodingKey::from_rsa_pem(pem) {
            Ok(k) => (k, Algorithm::RS256),
            Err(_) => (
                DecodingKey::from_ec_pem(pem)
                    .map_err(|e| AuthError(format!("not an RSA or EC public key: {e}")))?,
                Algorithm::ES256,
            ),
        };
        Ok(Authenticator::build(key, alg, None, issuer, audience))
    }

    fn build(
        decoding: DecodingKey,
        alg: Algorithm,
        encoding: Option<EncodingKey>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Authenticator {
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not merely right when present.
        let mut required = vec!["exp"];
        if issuer.is_some() {
            required.push("iss");
        }
        if audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Authenticator {
            decoding,
            validation,
            encoding,
            issuer,
            audience,
            generated_secret: false,
        }
    }

    /// Checks a token for a user's connection: an agent worker's token opens no user
    /// session.
    pub fn verify_user(&self, token: &str) -> Result<Identity, AuthError> {
        let identity = self.verify(token)?;
        if identity.is_agent() {
            return Err(AuthError(
                "this is an agent worker's token (role agent): it attaches a worker at the \
                 agent path and opens no user session"
                    .into(),
            ));
        }
        Ok(identity)
    }

    /// Checks a token for an agent worker's connection: only `role: "agent"` attaches.
    pub fn verify_agent(&self, token: &str) -> Result<Identity, AuthError> {
        let identity = self.verify(token)?;
        if !identity.is_agent() {
            return Err(AuthError(
                "this is a user token: agent workers need a token with role \"agent\" \
                 (haip token --role agent)"
                    .into(),
            ));
        }
        Ok(identity)
    }

    /// Checks a token and returns whom it speaks for.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            if self.generated_secret && *e.kind() == ErrorKind::InvalidSignature {
                return AuthError(
                    "invalid token: bad signature. This server made up a new secret when it \
                     started (JWT_SECRET is not set), so tokens from before a restart no \
                     longer work: use the token it printed, and set JWT_SECRET to keep tokens \
                     valid across restarts"
                        .into(),
                );
            }
            AuthError(format!("invalid token: {}", refusal(e.kind())))
        })?;
        let claims = data.claims;
        let now_s = now_ms() / 1000;
        if claims.iat.is_some_and(|iat| iat > now_s + LEEWAY_SECS) {
            return Err(AuthError("invalid token: issued in the future".into()));
        }
        let subject = claims
            .sub
            .or(claims.user_id)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError("invalid token: no sub or userId claim".into()))?;
        Ok(Identity {
            subject,
            expires_ms: claims.exp.unwrap_or(0).saturating_mul(1000),
            role: claims.role.filter(|r| !r.is_empty()),
        })
    }

    /// Mints an HS256 token for `subject`, valid for `ttl_secs` (secret mode only).
    pub fn mint(&self, subject: &str, ttl_secs: u64) -> Option<String> {
        self.mint_with_role(subject, ttl_secs, None)
    }

    /// [`mint`](Self::mint) with a `role` claim (`admin`).
    pub fn mint_with_role(
        &self,
        subject: &str,
        ttl_secs: u64,
        role: Option<&str>,
    ) -> Option<String> {
        let now_s = now_ms() / 1000;
        let claims = Claims {
            sub: Some(subject.to_string()),
            user_id: None,
            exp: Some(now_s + ttl_secs),
            iat: Some(now_s),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
            role: role.map(str::to_string),
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            self.encoding.as_ref()?,
        )
        .ok()
    }
}

/// A fresh random secret for a server started without one (64 hex characters).
/// Why a token was refused, in plain words.
fn refusal(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "expired (exp is in the past)".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf is in the future)".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm => {
            "signed with an algorithm this server does not accept".into()
        }
        ErrorKind::InvalidIssuer => "wrong issuer (iss)".into(),
        ErrorKind::InvalidAudience => "wrong audience (aud)".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the {claim} claim is missing"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the {claim} claim has the wrong type"),
        _ => "not a well-formed JWT".into(),
    }
}

pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
