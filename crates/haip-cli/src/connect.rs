//! What every client command shares: where the server is, the token, the transport, and
//! how a reply is shown.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use haip_client::backoff::ReconnectPolicy;
use haip_client::{
    ClientError, Connection, ConnectionConfig, Received, Status, Subscription, Transport,
};
use haip_protocol::Payload;

#[derive(clap::Args, Clone)]
pub struct ConnectArgs {
    /// Server URL; without a scheme http:// is assumed, and a bare host:port gets the
    /// transport's default path
    #[arg(long, env = "HAIP_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// JWT for the server (`haip serve` prints one; `haip token` mints one)
    #[arg(long, env = "HAIP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Transport: ws, sse or stream
    #[arg(long, default_value = "ws", value_parser = parse_transport)]
    pub transport: Transport,
    /// Seconds to wait for connect + handshake
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// PEM file of CA certificates to trust besides the platform's (or SSL_CERT_FILE's),
    /// for an https/wss server with a private CA
    #[arg(long, env = "HAIP_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// A shared thread: messages are sent in it, and everything the server sends in it for
    /// your other sessions is received too
    #[arg(long)]
    pub thread: Option<String>,
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    s.parse()
}

impl ConnectArgs {
    /// The URL with `http://` when the user gave no scheme, and the transport's default
    /// path when they gave only a host.
    pub fn full_url(&self) -> String {
        let path = match self.transport {
            Transport::WebSocket => "/haip/websocket",
            Transport::Sse => "/haip/sse",
            Transport::HttpStream => "/haip/stream",
        };
        with_defaults(&self.url, path)
    }

    pub fn config(&self) -> ConnectionConfig {
        ConnectionConfig {
            token: self.token.clone(),
            transports: vec![self.transport],
            timeout: Duration::from_secs(self.timeout),
            reconnect: ReconnectPolicy {
                max_attempts: 5,
                ..ReconnectPolicy::default()
            },
            ca_cert: self.ca_cert.clone(),
            query_params: self
                .thread
                .iter()
                .map(|t| ("thread".to_string(), t.clone()))
                .collect(),
            ..ConnectionConfig::new(self.full_url())
        }
    }
}

/// `given` with `http://` when it has no scheme, and `path` when it names only a host.
pub fn with_defaults(given: &str, path: &str) -> String {
    let given = given.trim().trim_end_matches('/');
    let url = if given.contains("://") {
        given.to_string()
    } else {
        format!("http://{given}")
    };
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    if url[after_scheme..].contains('/') {
        url
    } else {
        format!("{url}{path}")
    }
}

/// Runs a client command to its exit code on a fresh async runtime.
pub fn block_on(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(exit::USAGE)
        }
    }
}

/// Exit statuses of the client commands, so that scripts can tell failures apart.
pub mod exit {
    /// The run or the request failed (the server said so).
    pub const FAILED: u8 = 1;
    /// The command line is wrong.
    pub const USAGE: u8 = 2;
    /// The server refused the token.
    pub const AUTH: u8 = 3;
    /// Nothing HAIP at that URL (a bad URL, a wrong path).
    pub const NOT_FOUND: u8 = 4;
    /// The server could not be reached, or stopped answering, after retrying.
    pub const UNREACHABLE: u8 = 5;
    /// The server's TLS certificate is not trusted (or the TLS settings are unusable).
    pub const TLS: u8 = 6;
}

/// Says what went wrong in plain words, with what to do about it, and returns the exit
/// status for it (see [`exit`]). `fallback` names the failure when the server gave no code.
pub fn fail(e: &ClientError, fallback: &str) -> ExitCode {
    let (status, advice) = if e.is_certificate_failure() {
        (
            exit::TLS,
            "the server's certificate is not trusted: pass its CA with --ca-cert FILE (or \
             HAIP_CA_CERT, or SSL_CERT_FILE)",
        )
    } else if e.is_auth_failure() {
        (
            exit::AUTH,
            "check --token or HAIP_TOKEN: `haip serve` prints a token, `haip token` mints one",
        )
    } else if matches!(e, ClientError::Url(_))
        || matches!(root(e), ClientError::Http { status: 404, .. })
    {
        (
            exit::NOT_FOUND,
            "check --url: it should name a haip server, e.g. http://127.0.0.1:8080",
        )
    } else if matches!(
        root(e),
        ClientError::Transport(_) | ClientError::Timeout(_) | ClientError::Closed(..)
    ) || matches!(e, ClientError::NotConnected { .. })
    {
        (
            exit::UNREACHABLE,
            "is the server running, and is --url right?",
        )
    } else {
        (exit::FAILED, "")
    };
    let code = e.code().unwrap_or(fallback);
    if advice.is_empty() {
        eprintln!("error {code}: {e}");
    } else {
        eprintln!("error {code}: {e}\n  ({advice})");
    }
    ExitCode::from(status)
}

/// The failure behind "not connected within ...".
fn root(e: &ClientError) -> &ClientError {
    match e {
        ClientError::NotConnected { last, .. } => root(last),
        other => other,
    }
}

/// Connects and subscribes to `pattern`, or says why not.
pub async fn open(
    args: &ConnectArgs,
    name: &str,
    pattern: &str,
) -> Result<(Connection, Subscription), ExitCode> {
    // Subscribed before connecting, so that the session's first messages are seen too.
    let conn = Connection::start(name, args.config());
    let sub = conn.subscribe(pattern).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(exit::USAGE)
    })?;
    conn.connected(Duration::from_secs(args.timeout))
        .await
        .map_err(|e| fail(&e, "CONNECT_FAILED"))?;
    Ok((conn, sub))
}

/// Reports reconnects on stderr while `conn` lives.
pub fn show_reconnects(conn: &Connection) {
    let mut status = conn.status();
    status.mark_unchanged();
    tokio::spawn(async move {
        let mut lost = false;
        while status.changed().await.is_ok() {
            let line = match &*status.borrow() {
                Status::Reconnecting { attempt, delay } if !delay.is_zero() => {
                    lost = true;
                    format!(
                        "[connection lost; reconnecting in {} ms (attempt {attempt})]",
                        delay.as_millis()
                    )
                }
                Status::Connected(t) if lost => {
                    lost = false;
                    format!("[reconnected over {}]", t.as_str())
                }
                _ => continue,
            };
            eprintln!("{line}");
        }
    });
}

/// What a finished reply ended with.
pub enum ReplyEnd {
    Finished {
        ok: bool,
        status: String,
    },
    Error {
        code: String,
        message: String,
    },
    /// The server could not resume the session (it restarted, or kept it too long
    /// detached) while the reply was awaited, and no reply came in the new session.
    Lost,
}

/// How long a reply may take to start in a new session after a failed resume before it
/// counts as lost (a message the old session never acknowledged is sent again, and then
/// answered).
const REPLY_AFTER_RESUME_FAILED: Duration = Duration::from_secs(3);

/// Whether `item` is the connect-time RESUME_FAILED (outside the session's numbering).
fn is_resume_failed(item: &Received) -> bool {
    item.message.seq == 0
        && matches!(&item.message.payload, Payload::Error(e) if e.code == "RESUME_FAILED")
}

fn notice_session_lost() {
    eprintln!(
        "[the server could not resume the session (did it restart?); continuing in a new one]"
    );
}

/// Takes what arrived while no reply was awaited: a failed resume then only needs a
/// notice, and must not be taken as the reply to the next message.
pub fn drain_between_replies(sub: &mut haip_client::Subscription) {
    while let Some(item) = sub.try_recv() {
        if is_resume_failed(&item) {
            notice_session_lost();
        }
    }
}

/// Prints the agent's reply to the last message as it streams (or the raw envelopes with
/// `json`), until its run finishes or the server sends ERROR.
pub async fn stream_reply(
    sub: &mut haip_client::Subscription,
    json: bool,
) -> Result<ReplyEnd, ClientError> {
    let mut out = std::io::stdout();
    let mut shown = false;
    // Set when the session was lost mid-wait: the reply must start before it.
    let mut lost_at: Option<tokio::time::Instant> = None;
    loop {
        let next = match lost_at {
            None => sub.recv().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, sub.recv()).await {
                Ok(item) => item,
                Err(_) => return Ok(ReplyEnd::Lost),
            },
        };
        let Some(item) = next else {
            return Err(ClientError::Stopped);
        };
        if is_resume_failed(&item) {
            notice_session_lost();
            if !json {
                lost_at = Some(tokio::time::Instant::now() + REPLY_AFTER_RESUME_FAILED);
                continue;
            }
        } else if item.message.channel == haip_protocol::channel::AGENT {
            lost_at = None; // the reply is coming in the new session
        }
        // The reply is what the agent sends, and errors; SYSTEM housekeeping (TOOL_LIST,
        // FLOW_UPDATE, PING) is not part of it.
        let housekeeping = item.message.channel == haip_protocol::channel::SYSTEM
            && !matches!(item.message.payload, Payload::Error(_));
        if json && !housekeeping {
            let _ = writeln!(out, "{}", String::from_utf8_lossy(&item.raw));
            let _ = out.flush();
        }
        if let Some(end) = reply_event(&item, json, &mut out, &mut shown) {
            return Ok(end);
        }
    }
}

/// What one received message means for the reply; `shown` is whether text was printed.
fn reply_event(
    item: &Received,
    json: bool,
    out: &mut impl Write,
    shown: &mut bool,
) -> Option<ReplyEnd> {
    match &item.message.payload {
        Payload::MessagePart(p) if item.message.channel == "AGENT" && !json => {
            let _ = write!(out, "{}", p.text);
            let _ = out.flush();
            *shown = true;
            None
        }
        Payload::RunFinished(r) => {
            if !json {
                let _ = writeln!(out);
            }
            let status = r
                .status
                .map_or("OK".to_string(), |s| format!("{s:?}").to_uppercase());
            Some(ReplyEnd::Finished {
                ok: status == "OK",
                status,
            })
        }
        // A run that failed (e.g. the model server refused) ends the reply with its
        // reason, on the line after what was shown.
        Payload::RunError(e) => {
            if *shown {
                let _ = writeln!(out);
            }
            Some(ReplyEnd::Error {
                code: e.code.clone(),
                message: e.message.clone(),
            })
        }
        Payload::Error(e) => Some(ReplyEnd::Error {
            code: e.code.clone(),
            message: e.message.clone(),
        }),
        _ => None,
    }
}
