//! One server URL, whichever transport reaches it: `https://host/haip/websocket` becomes
//! `wss://...` for WebSocket, and `ws://host/...` becomes `http://...` for SSE and streaming.

use crate::Transport;

/// Why a URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server URL {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: &'static str,
}

/// The URL for `transport`: scheme converted, and `query` appended (percent-encoded).
pub fn for_transport(
    url: &str,
    transport: Transport,
    query: &[(String, String)],
) -> Result<String, UrlError> {
    let bad = |reason| UrlError {
        url: url.to_string(),
        reason,
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let secure = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => false,
        "https" | "wss" => true,
        _ => return Err(bad("the scheme must be http, https, ws or wss")),
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    let scheme = match (transport, secure) {
        (Transport::WebSocket, false) => "ws",
        (Transport::WebSocket, true) => "wss",
        (_, false) => "http",
        (_, true) => "https",
    };
    let mut out = format!("{scheme}://{rest}");
    for (key, value) in query {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&encode(key));
        out.push('=');
        out.push_str(&encode(value));
    }
    Ok(out)
}

/// Percent-encodes everything but the unreserved characters of RFC 3986.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(url: &str, t: Transport) -> String {
        for_transport(url, t, &[]).unwrap()
    }

    #[test]
    fn schemes_follow_the_transport() {
        assert_eq!(
            conv("https://h/haip/websocket", Transport::WebSocket),
            "wss://h/haip/websocket"
        );
        assert_eq!(
            conv("http://h:8080/x", Transport::WebSocket),
            "ws://h:8080/x"
        );
        assert_eq!(conv("ws://h/haip/sse", Transport::Sse), "http://h/haip/sse");
        assert_eq!(
            conv("wss://h/haip/stream", Transport::HttpStream),
            "https://h/haip/stream"
        );
        assert_eq!(conv("WSS://h/", Transport::Sse), "https://h/");
    }

    #[test]
    fn query_parameters_are_appended_and_encoded() {
        let q = [("token".to_string(), "a b&c".to_string())];
        assert_eq!(
            for_transport("http://h/p", Transport::WebSocket, &q).unwrap(),
            "ws://h/p?token=a%20b%26c"
        );
        assert_eq!(
            for_transport("http://h/p?x=1", Transport::Sse, &q).unwrap(),
            "http://h/p?x=1&token=a%20b%26c"
        );
    }

    #[test]
    fn bad_urls_are_typed_errors() {
        for url in ["h/p", "ftp://h/", "http://", "http:///p"] {
            assert!(for_transport(url, Transport::Sse, &[]).is_err(), "{url}");
        }
    }
}
