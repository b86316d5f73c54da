//! What a connection reads, decoded per transport: WebSocket frames, SSE events, NDJSON
//! lines.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::http::{header_list, Head};
use super::time::bounded;

/// One thing read from a connection.
#[derive(Debug, Clone)]
pub enum Frame {
    Json(Value),
    /// A text frame, line or SSE data that is not JSON.
    NonJson(String),
    Binary(Vec<u8>),
    /// A WebSocket close frame (code, reason).
    Close(Option<u16>, String),
    /// The connection or stream ended without a close frame.
    End,
}

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(super) fn parse_text(text: &str) -> Frame {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Frame::Json(v),
        Err(_) => Frame::NonJson(text.to_string()),
    }
}

/// Connects a WebSocket (bounded), panicking on failure; returns the stream and the
/// upgrade response headers.
pub async fn ws_connect(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> (WsStream, Vec<(String, String)>) {
    let (ws, resp) = bounded(tokio_tungstenite::connect_async(req))
        .await
        .expect("websocket handshake");
    (ws, header_list(resp.headers()))
}

pub(super) async fn read_sse(
    resp: reqwest::Response,
    tx: mpsc::UnboundedSender<(Frame, Option<String>, String)>,
    raw: Arc<Mutex<String>>,
) {
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut id: Option<String> = None;
    let mut data: Vec<String> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        if let Ok(mut r) = raw.lock() {
            r.push_str(&String::from_utf8_lossy(&chunk));
        }
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1])
                .trim_end_matches('\r')
                .to_string();
            if line.is_empty() {
                if !data.is_empty() {
                    let text = data.join("\n");
                    data.clear();
                    let _ = tx.send((parse_text(&text), id.take(), text));
                }
                id = None;
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
            // retry:, event: and comments are kept in `raw` only.
        }
    }
    let _ = tx.send((Frame::End, None, String::new()));
}

pub(super) async fn read_ndjson(
    req: reqwest::RequestBuilder,
    tx: mpsc::UnboundedSender<(Frame, Option<String>, String)>,
    head: oneshot::Sender<Head>,
) {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(_) => {
            let _ = tx.send((Frame::End, None, String::new()));
            return;
        }
    };
    let status = resp.status().as_u16();
    let _ = head.send((status, header_list(resp.headers())));
    if status != 200 {
        let text = resp.text().await.unwrap_or_default();
        let _ = tx.send((Frame::NonJson(text.clone()), None, text));
        let _ = tx.send((Frame::End, None, String::new()));
        return;
    }
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
            if !text.trim().is_empty() {
                let _ = tx.send((parse_text(&text), None, text));
            }
        }
    }
    let _ = tx.send((Frame::End, None, String::new()));
}
