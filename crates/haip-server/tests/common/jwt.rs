//! Test tokens: the server's secret and subject, base64 by hand, and the bad tokens the
//! authentication tests present.

use serde_json::{json, Value};

use super::time::now_ms;

pub const SECRET: &[u8] = b"test-secret";
/// The default subject of test tokens.
pub const USER: &str = "alice";

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            if n > 1 { chunk[1] } else { 0 },
            if n > 2 { chunk[2] } else { 0 },
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= n {
                out.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64url without padding (JWT segments).
pub fn b64url(data: &[u8]) -> String {
    b64(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Decodes standard base64 (padding optional).
pub fn unb64(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .unwrap_or_else(|| panic!("not base64: {text:?}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// An HS256 token with the given claims.
pub fn jwt_hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("encode jwt")
}

/// A token signed with another secret.
pub fn jwt_bad_signature() -> String {
    let now = now_ms() / 1000;
    jwt_hs256(b"not-the-secret", &json!({"sub": USER, "exp": now + 3600}))
}

/// A correctly signed token that expired an hour ago (well past the 60 s leeway).
pub fn jwt_expired() -> String {
    let now = now_ms() / 1000;
    jwt_hs256(
        SECRET,
        &json!({"sub": USER, "exp": now - 3600, "iat": now - 7200}),
    )
}

/// An unsigned `alg: none` token.
pub fn jwt_alg_none() -> String {
    let now = now_ms() / 1000;
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64url(
        json!({"sub": USER, "exp": now + 3600})
            .to_string()
            .as_bytes(),
    );
    format!("{header}.{claims}.")
}
