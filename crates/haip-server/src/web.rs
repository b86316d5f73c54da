//! The browser client and its demo page, built into the binary so that `haip serve` alone
//! serves them: `GET /` (and `/demo`) is the demo page, `GET /haip.js` the client module,
//! `GET /haip.d.ts` its TypeScript declarations. The files live in `web/` at the
//! repository root and are embedded at compile time.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The browser client: one dependency-free ES module.
pub const HAIP_JS: &str = include_str!("../web/haip.js");
/// TypeScript declarations of [`HAIP_JS`].
pub const HAIP_D_TS: &str = include_str!("../web/haip.d.ts");
/// The demo page (chat, transport picker, tools, message log); it imports `/haip.js`.
pub const INDEX_HTML: &str = include_str!("../web/index.html");
/// The admin page: the server's figures with a chart of the last minutes, and every
/// session's messages live for an admin token.
pub const ADMIN_HTML: &str = include_str!("../web/admin.html");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change with the binary: always revalidate, never serve a stale client.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The demo page, for `GET /` (a plain GET that is not a WebSocket upgrade) and `/demo`.
pub fn index() -> Response {
    let mut r = asset(INDEX_HTML, "text/html; charset=utf-8");
    // The page is not meant to be framed by other sites (it holds a token).
    r.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// `GET /demo`.
pub async fn demo() -> Response {
    index()
}

/// `GET /admin`.
pub async fn admin() -> Response {
    let mut r = asset(ADMIN_HTML, "text/html; charset=utf-8");
    r.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// `GET /haip.js`.
pub async fn haip_js() -> Response {
    asset(HAIP_JS, "text/javascript; charset=utf-8")
}

/// `GET /haip.d.ts`.
pub async fn haip_d_ts() -> Response {
    asset(HAIP_D_TS, "application/typescript; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_type(r: &Response) -> &str {
        r.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn assets_have_their_content_types() {
        assert_eq!(content_type(&index()), "text/html; charset=utf-8");
        assert_eq!(
            content_type(&haip_js().await),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type(&haip_d_ts().await),
            "application/typescript; charset=utf-8"
        );
    }

    #[test]
    fn the_page_imports_the_served_client() {
        assert!(INDEX_HTML.contains("from '/haip.js'"));
        assert!(HAIP_JS.contains("export class HaipClient"));
        assert!(HAIP_D_TS.contains("export declare class HaipClient"));
    }
}
