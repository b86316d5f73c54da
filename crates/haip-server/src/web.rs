//! The browser client and its demo page, built into the binary so that `haip serve` alone
//! serves them: `GET /` (and `/demo`) is the demo page (its script at `/demo.js`), `GET /haip.js` the client's entry
//! module and `GET /haip/<name>.js` the modules it imports ([`MODULES`]), `GET /haip.d.ts`
//! its TypeScript declarations. The files live in `web/` at the repository root and are
//! embedded at compile time.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The browser client's entry module: it re-exports what [`MODULES`] define.
pub const HAIP_JS: &str = include_str!("../web/haip.js");
/// The modules of the browser client, at the paths a browser resolves their imports to
/// from `/haip.js` (`./haip/session.js` is `/haip/session.js`). One entry per file of
/// `web/haip/` (a test checks it).
pub const MODULES: &[(&str, &str)] = &[
    ("/haip/backoff.js", include_str!("../web/haip/backoff.js")),
    ("/haip/client.js", include_str!("../web/haip/client.js")),
    (
        "/haip/constants.js",
        include_str!("../web/haip/constants.js"),
    ),
    ("/haip/envelope.js", include_str!("../web/haip/envelope.js")),
    ("/haip/errors.js", include_str!("../web/haip/errors.js")),
    ("/haip/flow.js", include_str!("../web/haip/flow.js")),
    ("/haip/links.js", include_str!("../web/haip/links.js")),
    (
        "/haip/sequencer.js",
        include_str!("../web/haip/sequencer.js"),
    ),
    ("/haip/session.js", include_str!("../web/haip/session.js")),
    ("/haip/topics.js", include_str!("../web/haip/topics.js")),
    ("/haip/urls.js", include_str!("../web/haip/urls.js")),
];
/// TypeScript declarations of [`HAIP_JS`].
pub const HAIP_D_TS: &str = include_str!("../web/haip.d.ts");
/// The demo page (chat, transport picker, tools, message log); it imports `/haip.js` and
/// hands the client to [`DEMO_JS`].
pub const INDEX_HTML: &str = include_str!("../web/index.html");
/// What the demo page does, at `GET /demo.js`.
pub const DEMO_JS: &str = include_str!("../web/demo.js");
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
    javascript(HAIP_JS)
}

/// A module of the browser client (`/haip.js` or one of [`MODULES`]), all with the same
/// headers.
pub fn javascript(body: &'static str) -> Response {
    asset(body, "text/javascript; charset=utf-8")
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
    fn every_module_of_the_client_is_served_and_has_the_entry_modules_headers() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/haip");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("web/haip")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".js"))
            .map(|name| format!("/haip/{name}"))
            .collect();
        on_disk.sort();
        let served: Vec<String> = MODULES.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(
            served, on_disk,
            "MODULES lists every file of web/haip, sorted"
        );
        for (path, body) in MODULES {
            let name = path.trim_start_matches("/haip/");
            assert_eq!(
                *body,
                std::fs::read_to_string(dir.join(name)).expect("module"),
                "{path}"
            );
            let entry = javascript(HAIP_JS);
            let r = javascript(body);
            for h in [
                header::CONTENT_TYPE,
                header::CACHE_CONTROL,
                header::X_CONTENT_TYPE_OPTIONS,
            ] {
                assert_eq!(r.headers().get(&h), entry.headers().get(&h), "{path} {h}");
            }
        }
        // What the entry module imports is served.
        for line in HAIP_JS.lines().filter(|l| l.contains("from './haip/")) {
            let path = line
                .split("from '.")
                .nth(1)
                .and_then(|rest| rest.split('\'').next())
                .expect("an import path");
            assert!(served.iter().any(|p| p == path), "{path} is not served");
        }
    }

    #[test]
    fn the_page_imports_the_served_client() {
        assert!(INDEX_HTML.contains("from '/haip.js'"));
        assert!(HAIP_JS.contains("HaipClient as default"));
        assert!(MODULES
            .iter()
            .any(|(_, body)| body.contains("export class HaipClient")));
        assert!(HAIP_D_TS.contains("export declare class HaipClient"));
    }
}
