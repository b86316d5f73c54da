//! Sends one message to a HAIP server and prints the agent's reply as it streams.
//!
//! ```sh
//! HAIP_URL=http://127.0.0.1:8080 HAIP_TOKEN=... cargo run -p haip-client --example send -- hello
//! ```
//!
//! In your own crate: `haip-client = "0.1"` and `tokio = { version = "1", features =
//! ["macros", "rt-multi-thread"] }` in `[dependencies]`.

use std::time::Duration;

use haip_client::{Connection, ConnectionConfig, Transport};
use haip_protocol::Payload;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("HAIP_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let token =
        std::env::var("HAIP_TOKEN").map_err(|_| "set HAIP_TOKEN (haip serve prints one)")?;
    let text = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let conn = Connection::start(
        "main",
        ConnectionConfig {
            token: Some(token),
            // Tried in this order when one cannot connect.
            transports: vec![Transport::WebSocket, Transport::HttpStream, Transport::Sse],
            ..ConnectionConfig::new(url)
        },
    );
    let mut replies = conn.subscribe("agent.>")?; // `*` one segment, `>` the rest
    conn.connected(Duration::from_secs(10)).await?;
    conn.send_text(if text.is_empty() { "hello" } else { &text })
        .await?;
    while let Some(item) = replies.recv().await {
        match &item.message.payload {
            Payload::MessagePart(part) => print!("{}", part.text),
            Payload::RunFinished(_) | Payload::RunError(_) => break,
            _ => {}
        }
    }
    println!();
    conn.close();
    Ok(())
}
