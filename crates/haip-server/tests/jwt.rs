//! JWT rules (contract section 9) over real sockets: `nbf`, required `iss` / `aud` when
//! configured, `aud` as an array, and refusals worded in plain language.

mod common;

use common::*;
use serde_json::{json, Value};

const ISSUER: &str = "https://auth.example";
const AUDIENCE: &str = "haip-test";

/// Status and error message of `GET /haip/sse` with `token`.
async fn try_token(srv: &Server, token: &str) -> (u16, String) {
    let resp = bounded(
        http()
            .get(srv.url(&format!("/haip/sse?token={token}")))
            .send(),
    )
    .await
    .expect("GET");
    let status = resp.status().as_u16();
    if status == 200 {
        return (status, String::new());
    }
    let body: Value =
        serde_json::from_str(&bounded(resp.text()).await.expect("body")).expect("a JSON error");
    assert_eq!(body["error"]["code"], "AUTHENTICATION_FAILED", "{body}");
    (
        status,
        body["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

fn token(extra: Value) -> String {
    let now = now_ms() / 1000;
    let mut claims = json!({"sub": USER, "exp": now + 3600, "iat": now});
    for (k, v) in extra.as_object().expect("object") {
        claims[k] = v.clone();
    }
    jwt_hs256(SECRET, &claims)
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let srv = Server::start().await;
    let now = now_ms() / 1000;
    let (status, message) = try_token(&srv, &token(json!({"nbf": now + 3600}))).await;
    assert_eq!(status, 401);
    assert!(message.contains("not valid yet"), "{message}");
    // Within the 60 s of allowed clock skew, and in the past, it is fine.
    assert_eq!(
        try_token(&srv, &token(json!({"nbf": now + 30}))).await.0,
        200
    );
    assert_eq!(
        try_token(&srv, &token(json!({"nbf": now - 10}))).await.0,
        200
    );
}

#[tokio::test]
async fn a_configured_issuer_and_audience_must_be_present() {
    let srv = Server::start_with(|c| {
        c.jwt_issuer = Some(ISSUER.into());
        c.jwt_audience = Some(AUDIENCE.into());
    })
    .await;
    let good = json!({"iss": ISSUER, "aud": AUDIENCE});
    assert_eq!(try_token(&srv, &token(good)).await.0, 200);

    let (status, message) = try_token(&srv, &token(json!({"aud": AUDIENCE}))).await;
    assert_eq!(status, 401);
    assert!(message.contains("iss claim is missing"), "{message}");
    let (status, message) = try_token(&srv, &token(json!({"iss": ISSUER}))).await;
    assert_eq!(status, 401);
    assert!(message.contains("aud claim is missing"), "{message}");
    let (status, message) = try_token(
        &srv,
        &token(json!({"iss": "https://evil.example", "aud": AUDIENCE})),
    )
    .await;
    assert_eq!(status, 401);
    assert!(message.contains("wrong issuer"), "{message}");
    let (status, message) =
        try_token(&srv, &token(json!({"iss": ISSUER, "aud": "someone-else"}))).await;
    assert_eq!(status, 401);
    assert!(message.contains("wrong audience"), "{message}");
}

#[tokio::test]
async fn an_audience_array_containing_ours_is_accepted() {
    let srv = Server::start_with(|c| c.jwt_audience = Some(AUDIENCE.into())).await;
    let with = token(json!({"aud": ["other", AUDIENCE]}));
    assert_eq!(try_token(&srv, &with).await.0, 200);
    let without = token(json!({"aud": ["other", "another"]}));
    assert_eq!(try_token(&srv, &without).await.0, 401);
    // The token the server mints for itself carries its audience.
    let minted = srv.token();
    assert_eq!(try_token(&srv, &minted).await.0, 200);
}

#[tokio::test]
async fn refusals_say_what_is_wrong_without_library_words() {
    let srv = Server::start().await;
    let cases = [
        (jwt_expired(), "expired"),
        (jwt_bad_signature(), "bad signature"),
        (jwt_alg_none(), "not a well-formed JWT"),
        ("garbage".to_string(), "not a well-formed JWT"),
        (
            jwt_hs256(SECRET, &json!({"sub": USER})),
            "exp claim is missing",
        ),
    ];
    for (bad, expected) in cases {
        let (status, message) = try_token(&srv, &bad).await;
        assert_eq!(status, 401, "{expected}");
        assert!(message.contains(expected), "{expected}: {message}");
        for internal in ["Signature", "ErrorKind", "Error(", "Base64", "Json("] {
            assert!(!message.contains(internal), "{message}");
        }
    }
}
