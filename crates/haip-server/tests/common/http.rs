//! Plain HTTP of the tests: the client, response heads, and `POST /haip/messages`.

use serde_json::Value;

use super::time::bounded;

pub fn http() -> reqwest::Client {
    haip_server::tls::install_crypto_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

/// Status and headers (lower-case names) of an HTTP response.
pub type Head = (u16, Vec<(String, String)>);

pub(super) fn header_list(h: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The answer to a `POST /haip/messages` (SSE connections send through it).
#[derive(Debug, Clone)]
pub struct PostReply {
    pub status: u16,
    pub body: Value,
}

/// `POST /haip/messages` with a bearer token and optional `X-HAIP-Session`.
pub async fn post_messages(
    base: &str,
    token: &str,
    session: Option<&str>,
    body: &str,
) -> PostReply {
    let mut req = http()
        .post(format!("{base}/haip/messages"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(s) = session {
        req = req.header("X-HAIP-Session", s);
    }
    let resp = bounded(req.send()).await.expect("POST /haip/messages");
    let status = resp.status().as_u16();
    let text = bounded(resp.text()).await.expect("POST body");
    PostReply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}
