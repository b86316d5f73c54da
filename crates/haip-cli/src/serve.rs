//! `haip serve`: runs the server. Settings come from flags, environment variables and a
//! TOML file, in that order of precedence, over the defaults of the wire contract.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use haip_server::agent::openai::{OpenAiAgent, OpenAiConfig};
use haip_server::agent::workers::{WorkerPool, WorkersAgent};
use haip_server::agent::{Agent, EchoAgent};
use haip_server::app::AppState;
use haip_server::auth::{random_secret, Authenticator};
use haip_server::config::{LogFormat, ServerConfig};
use haip_server::tools::ToolRegistry;
use serde::Deserialize;

/// Every setting, as given on the command line, in the environment or in the file. Field
/// names are the file's keys; flags are the same in kebab case; variables in upper case.
#[derive(clap::Args, Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Port to listen on [default: 8080; 0 picks a free port]
    #[arg(long, env = "PORT")]
    port: Option<u16>,
    /// Address to listen on [default: 0.0.0.0]
    #[arg(long, env = "HOST")]
    host: Option<String>,
    /// HS256 secret for tokens [default: a random secret, printed with a ready token]
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// PEM public key (RSA or EC) to verify RS256/ES256 tokens instead of a secret
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` claim
    #[arg(long, env = "JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` claim
    #[arg(long, env = "JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Most live connections before answering 503 [default: 1000]
    #[arg(long, env = "MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Milliseconds between server PINGs [default: 30000]
    #[arg(long, env = "HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<u64>,
    /// Milliseconds to wait for client traffic after a PING [default: 5000]
    #[arg(long, env = "HEARTBEAT_TIMEOUT")]
    heartbeat_timeout: Option<u64>,
    /// Milliseconds a session is kept for resume after its connection ends [default: 300000]
    #[arg(long, env = "SESSION_TTL")]
    session_ttl: Option<u64>,
    /// Serve WebSocket [default: true]
    #[arg(long, env = "ENABLE_WEBSOCKET")]
    enable_websocket: Option<bool>,
    /// Serve SSE [default: true]
    #[arg(long, env = "ENABLE_SSE")]
    enable_sse: Option<bool>,
    /// Serve HTTP streaming [default: true]
    #[arg(long, env = "ENABLE_HTTP_STREAM")]
    enable_http_stream: Option<bool>,
    /// [default: /haip/websocket]
    #[arg(long, env = "WEBSOCKET_PATH")]
    websocket_path: Option<String>,
    /// [default: /haip/sse]
    #[arg(long, env = "SSE_PATH")]
    sse_path: Option<String>,
    /// [default: /haip/stream]
    #[arg(long, env = "HTTP_STREAM_PATH")]
    http_stream_path: Option<String>,
    /// Where agent workers attach over WebSocket, with --agent workers
    /// [default: /haip/agent]
    #[arg(long, env = "AGENT_PATH")]
    agent_path: Option<String>,
    /// This node's name in /health, /stats and /metrics [default: the host name and the
    /// port, e.g. web-1:8080]
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    /// Cluster mode: the Redis where the sessions of every node that shares it live
    /// (redis:// or rediss://; several comma-separated URLs are the seed nodes of a Redis
    /// Cluster) [default: none, sessions live in this process]
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Treat a single REDIS_URL as a seed node of a Redis Cluster [default: false]
    #[arg(long, env = "REDIS_CLUSTER")]
    redis_cluster: Option<bool>,
    /// Path of the AI SDK `useChat` endpoints (POST, WebSocket, {id}/stream)
    /// [default: /api/chat]
    #[arg(long, env = "AISDK_PATH")]
    aisdk_path: Option<String>,
    /// Largest WebSocket message in bytes; larger closes with 1009 [default: 1048576]
    #[arg(long, env = "WEBSOCKET_MAX_PAYLOAD")]
    websocket_max_payload: Option<usize>,
    /// Negotiate permessage-deflate when offered [default: true]
    #[arg(long, env = "WEBSOCKET_PER_MESSAGE_DEFLATE")]
    websocket_per_message_deflate: Option<bool>,
    /// With deflate on, messages smaller than this many bytes go uncompressed
    /// [default: 1024]
    #[arg(long, env = "WEBSOCKET_COMPRESSION_THRESHOLD")]
    websocket_compression_threshold: Option<usize>,
    /// Longest NDJSON line in bytes [default: 10485760]
    #[arg(long, env = "HTTP_STREAM_MAX_PAYLOAD")]
    http_stream_max_payload: Option<usize>,
    /// Idle milliseconds before an HTTP stream is ended [default: 30000]
    #[arg(long, env = "HTTP_STREAM_TIMEOUT")]
    http_stream_timeout: Option<u64>,
    /// `retry:` milliseconds sent to SSE clients [default: 3000]
    #[arg(long, env = "SSE_RETRY_TIMEOUT")]
    sse_retry_timeout: Option<u64>,
    /// Most open SSE streams before answering 503 [default: 100]
    #[arg(long, env = "SSE_MAX_CONNECTIONS")]
    sse_max_connections: Option<usize>,
    /// Enforce credit on client messages [default: true]
    #[arg(long, env = "FLOW_CONTROL_ENABLED")]
    flow_control_enabled: Option<bool>,
    /// Messages a client may send per channel before credit returns [default: 1000]
    #[arg(long, env = "FLOW_CONTROL_INITIAL_CREDIT_MESSAGES")]
    flow_control_initial_credit_messages: Option<u64>,
    /// Bytes a client may send per channel before credit returns [default: 1048576]
    #[arg(long, env = "FLOW_CONTROL_INITIAL_CREDIT_BYTES")]
    flow_control_initial_credit_bytes: Option<u64>,
    /// Output a session may hold for a client that does not take it (no credit, paused
    /// channel, not reading) before the session is ended [default: 10000]
    #[arg(long, env = "FLOW_CONTROL_MAX_HELD_MESSAGES")]
    flow_control_max_held_messages: Option<usize>,
    /// The same bound in bytes, which also caps each replay window [default: 16777216, at
    /// most a sixteenth of MEMORY_LIMIT]
    #[arg(long, env = "FLOW_CONTROL_MAX_HELD_BYTES")]
    flow_control_max_held_bytes: Option<u64>,
    /// Most runs open at once per session [default: 10]
    #[arg(long, env = "MAX_CONCURRENT_RUNS")]
    max_concurrent_runs: Option<u64>,
    /// Sent messages always kept for replay [default: 1000]
    #[arg(long, env = "REPLAY_WINDOW_SIZE")]
    replay_window_size: Option<usize>,
    /// Milliseconds sent messages are kept for replay [default: 300000]
    #[arg(long, env = "REPLAY_WINDOW_TIME")]
    replay_window_time: Option<u64>,
    /// Answer CORS preflights and set CORS headers [default: true]
    #[arg(long, env = "ENABLE_CORS")]
    enable_cors: Option<bool>,
    /// Comma-separated allowed origins [default: *]
    #[arg(long, env = "CORS_ORIGINS")]
    cors_origins: Option<String>,
    /// Compress HTTP responses where the client allows [default: true]
    #[arg(long, env = "ENABLE_COMPRESSION")]
    enable_compression: Option<bool>,
    /// Log requests and connections [default: true]
    #[arg(long, env = "ENABLE_LOGGING")]
    enable_logging: Option<bool>,
    /// text or json [default: text]
    #[arg(long, env = "LOG_FORMAT")]
    log_format: Option<String>,
    /// Who answers user messages: echo (your own words back), openai (any
    /// OpenAI-compatible chat server: OpenAI, vLLM, llama.cpp, Ollama, LM Studio...) or
    /// workers (agent programs in any language that attach at the agent path; see
    /// `haip worker`) [default: echo]
    #[arg(long, env = "AGENT")]
    agent: Option<String>,
    /// Milliseconds between the echo agent's words [default: 20]
    #[arg(long, env = "ECHO_WORD_DELAY")]
    echo_word_delay: Option<u64>,
    /// With --agent openai: the API base, up to and including /v1
    /// [default: https://api.openai.com/v1]
    #[arg(long, env = "OPENAI_BASE_URL")]
    openai_base_url: Option<String>,
    /// With --agent openai: sent as Authorization: Bearer; never logged or shown
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    openai_api_key: Option<String>,
    /// With --agent openai: the model to ask (required), e.g. gpt-4o-mini
    #[arg(long, env = "OPENAI_MODEL")]
    openai_model: Option<String>,
    /// With --agent openai: a system prompt put before every conversation
    #[arg(long, env = "AGENT_SYSTEM_PROMPT")]
    agent_system_prompt: Option<String>,
    /// Messages kept per conversation (a thread, else a session); oldest dropped first
    /// [default: 50]
    #[arg(long, env = "AGENT_HISTORY")]
    agent_history: Option<usize>,
    /// Milliseconds the model server may send nothing before the run fails [default: 60000]
    #[arg(long, env = "AGENT_TIMEOUT")]
    agent_timeout: Option<u64>,
    /// Tool rounds one answer may take before the run fails [default: 8]
    #[arg(long, env = "AGENT_MAX_TOOL_ROUNDS")]
    agent_max_tool_rounds: Option<u32>,
    /// PEM certificate chain: with --tls-key, serve https and wss (SIGHUP reloads both)
    #[arg(long, env = "TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// What everything clients make the server hold may add up to: bytes, or with a unit
    /// (256MiB, 2GiB). Past three quarters, the largest replay windows are trimmed; past
    /// it, new connections get 503 and the largest sessions are ended [default: half of
    /// the machine's (or the cgroup's) memory]
    #[arg(long, env = "MEMORY_LIMIT")]
    memory_limit: Option<ByteSize>,
    /// Serve /autobahn, an unauthenticated WebSocket echo for the Autobahn conformance suite
    /// (scripts/autobahn); for testing only [default: false]
    #[arg(long, env = "HAIP_AUTOBAHN_ECHO", num_args = 0..=1, default_missing_value = "true")]
    autobahn_echo: Option<bool>,
}

#[derive(clap::Args)]
#[command(
    about = "Run the HAIP server (WebSocket, SSE and HTTP streaming) with the echo agent or a model",
    after_help = "Examples:\n  haip serve\n  haip serve --agent openai --openai-model gpt-4o-mini   \
                  (OPENAI_API_KEY from the environment)\n  haip serve --agent openai \
                  --openai-base-url http://127.0.0.1:11434/v1 --openai-model llama3.2   (Ollama)"
)]
pub struct ServeArgs {
    /// TOML file of settings (keys as the flags, in snake case: port = 8080)
    #[arg(long, env = "HAIP_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

macro_rules! layer {
    ($cli:expr, $file:expr, $($field:ident),+ $(,)?) => {
        Settings { $($field: $cli.$field.or($file.$field)),+ }
    };
}

fn positive<T: PartialOrd + Default + Copy>(key: &str, v: Option<T>) -> anyhow::Result<Option<T>> {
    if v.is_some_and(|v| v <= T::default()) {
        bail!("invalid {key}: must be greater than 0");
    }
    Ok(v)
}

/// A size in bytes, written as a number of bytes or with a unit (KiB, MiB, GiB; KB, MB,
/// GB are read as the same powers of 1024, which is what people mean for memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a size: write bytes, or e.g. 256MiB"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            _ => return Err(format!("{text:?}: unknown unit (use KiB, MiB or GiB)")),
        };
        n.checked_mul(scale)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Who answers user messages.
#[derive(Debug)]
pub enum AgentChoice {
    Echo,
    OpenAi(OpenAiConfig),
    Workers,
}

/// Everything `haip serve` runs with.
#[derive(Debug)]
pub struct Resolved {
    pub server: ServerConfig,
    pub agent: AgentChoice,
}

/// Builds the server configuration: flag > environment > file > default.
pub fn resolve(args: &ServeArgs) -> anyhow::Result<Resolved> {
    let file: Settings = match &args.config {
        None => Settings::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?
        }
    };
    let cli = &args.settings;
    let s = layer!(
        cli.clone(),
        file,
        port,
        host,
        jwt_secret,
        jwt_public_key_file,
        jwt_issuer,
        jwt_audience,
        max_connections,
        heartbeat_interval,
        heartbeat_timeout,
        session_ttl,
        enable_websocket,
        enable_sse,
        enable_http_stream,
        websocket_path,
        sse_path,
        http_stream_path,
        aisdk_path,
        agent_path,
        node_id,
        redis_url,
        redis_cluster,
        websocket_max_payload,
        websocket_per_message_deflate,
        websocket_compression_threshold,
        http_stream_max_payload,
        http_stream_timeout,
        sse_retry_timeout,
        sse_max_connections,
        flow_control_enabled,
        flow_control_initial_credit_messages,
        flow_control_initial_credit_bytes,
        flow_control_max_held_messages,
        flow_control_max_held_bytes,
        max_concurrent_runs,
        replay_window_size,
        replay_window_time,
        enable_cors,
        cors_origins,
        enable_compression,
        enable_logging,
        log_format,
        agent,
        echo_word_delay,
        openai_base_url,
        openai_api_key,
        openai_model,
        agent_system_prompt,
        agent_history,
        agent_timeout,
        agent_max_tool_rounds,
        memory_limit,
        tls_cert,
        tls_key,
        autobahn_echo
    );
    let d = ServerConfig::default();
    let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
    let path = |key: &str, v: Option<String>, default: String| -> anyhow::Result<String> {
        match v {
            Some(p) if !p.starts_with('/') => bail!("invalid {key}: must start with /"),
            Some(p) => Ok(p),
            None => Ok(default),
        }
    };
    let log_format = match s.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => bail!("invalid LOG_FORMAT: {other:?} (expected text or json)"),
    };
    let jwt_public_key_pem = match &s.jwt_public_key_file {
        None => None,
        Some(p) => Some(std::fs::read(p).with_context(|| {
            format!("invalid JWT_PUBLIC_KEY_FILE: cannot read {}", p.display())
        })?),
    };
    if s.jwt_secret.as_deref() == Some("") {
        bail!("invalid JWT_SECRET: must not be empty");
    }
    let agent = match s.agent.as_deref() {
        None | Some("echo") => AgentChoice::Echo,
        Some("openai") => {
            let Some(model) = s.openai_model.filter(|m| !m.trim().is_empty()) else {
                bail!(
                    "OPENAI_MODEL is required with AGENT=openai: name the model to ask, \
                     e.g. --openai-model gpt-4o-mini"
                );
            };
            let mut openai = OpenAiConfig::new(model);
            if let Some(url) = s.openai_base_url {
                openai.base_url = url;
            }
            openai.api_key = s.openai_api_key.filter(|k| !k.is_empty());
            openai.system_prompt = s.agent_system_prompt.filter(|p| !p.is_empty());
            if let Some(n) = positive("AGENT_HISTORY", s.agent_history)? {
                openai.history = n;
            }
            if let Some(ms) = positive("AGENT_TIMEOUT", s.agent_timeout)? {
                openai.timeout = Duration::from_millis(ms);
            }
            if let Some(n) = s.agent_max_tool_rounds {
                openai.max_tool_rounds = n;
            }
            AgentChoice::OpenAi(openai)
        }
        Some("workers") => AgentChoice::Workers,
        Some(other) => bail!("invalid AGENT: {other:?} (expected echo, openai or workers)"),
    };
    let server = ServerConfig {
        host: s.host.unwrap_or(d.host),
        port: s.port.unwrap_or(d.port),
        jwt_secret: s.jwt_secret,
        jwt_public_key_pem,
        jwt_issuer: s.jwt_issuer,
        jwt_audience: s.jwt_audience,
        max_connections: positive("MAX_CONNECTIONS", s.max_connections)?
            .unwrap_or(d.max_connections),
        heartbeat_interval: ms(
            positive("HEARTBEAT_INTERVAL", s.heartbeat_interval)?,
            d.heartbeat_interval,
        ),
        heartbeat_timeout: ms(
            positive("HEARTBEAT_TIMEOUT", s.heartbeat_timeout)?,
            d.heartbeat_timeout,
        ),
        session_ttl: ms(s.session_ttl, d.session_ttl),
        enable_websocket: s.enable_websocket.unwrap_or(d.enable_websocket),
        enable_sse: s.enable_sse.unwrap_or(d.enable_sse),
        enable_http_stream: s.enable_http_stream.unwrap_or(d.enable_http_stream),
        websocket_path: path("WEBSOCKET_PATH", s.websocket_path, d.websocket_path)?,
        sse_path: path("SSE_PATH", s.sse_path, d.sse_path)?,
        http_stream_path: path("HTTP_STREAM_PATH", s.http_stream_path, d.http_stream_path)?,
        aisdk_path: path("AISDK_PATH", s.aisdk_path, d.aisdk_path)?,
        agent_path: path("AGENT_PATH", s.agent_path, d.agent_path)?,
        node_id: match s.node_id {
            Some(id) if id.trim().is_empty() || id.chars().count() > 128 => {
                bail!("NODE_ID must be 1 to 128 characters, got {id:?}")
            }
            id => id,
        },
        redis_url: match s.redis_url {
            Some(url) => Some(redis_url(&url)?),
            None => None,
        },
        redis_cluster: s.redis_cluster.unwrap_or(d.redis_cluster),
        websocket_max_payload: positive("WEBSOCKET_MAX_PAYLOAD", s.websocket_max_payload)?
            .unwrap_or(d.websocket_max_payload),
        websocket_per_message_deflate: s
            .websocket_per_message_deflate
            .unwrap_or(d.websocket_per_message_deflate),
        websocket_compression_threshold: s
            .websocket_compression_threshold
            .unwrap_or(d.websocket_compression_threshold),
        http_stream_max_payload: positive("HTTP_STREAM_MAX_PAYLOAD", s.http_stream_max_payload)?
            .unwrap_or(d.http_stream_max_payload),
        http_stream_timeout: ms(
            positive("HTTP_STREAM_TIMEOUT", s.http_stream_timeout)?,
            d.http_stream_timeout,
        ),
        sse_retry_timeout: ms(s.sse_retry_timeout, d.sse_retry_timeout),
        sse_max_connections: positive("SSE_MAX_CONNECTIONS", s.sse_max_connections)?
            .unwrap_or(d.sse_max_connections),
        flow_control_enabled: s.flow_control_enabled.unwrap_or(d.flow_control_enabled),
        flow_control_initial_credit_messages: positive(
            "FLOW_CONTROL_INITIAL_CREDIT_MESSAGES",
            s.flow_control_initial_credit_messages,
        )?
        .unwrap_or(d.flow_control_initial_credit_messages),
        flow_control_initial_credit_bytes: positive(
            "FLOW_CONTROL_INITIAL_CREDIT_BYTES",
            s.flow_control_initial_credit_bytes,
        )?
        .unwrap_or(d.flow_control_initial_credit_bytes),
        flow_control_max_held_messages: positive(
            "FLOW_CONTROL_MAX_HELD_MESSAGES",
            s.flow_control_max_held_messages,
        )?
        .unwrap_or(d.flow_control_max_held_messages),
        flow_control_max_held_bytes: positive(
            "FLOW_CONTROL_MAX_HELD_BYTES",
            s.flow_control_max_held_bytes,
        )?
        .unwrap_or(d.flow_control_max_held_bytes),
        max_concurrent_runs: positive("MAX_CONCURRENT_RUNS", s.max_concurrent_runs)?
            .unwrap_or(d.max_concurrent_runs),
        replay_window_size: s.replay_window_size.unwrap_or(d.replay_window_size),
        replay_window_time: ms(s.replay_window_time, d.replay_window_time),
        enable_cors: s.enable_cors.unwrap_or(d.enable_cors),
        cors_origins: s.cors_origins.map_or(d.cors_origins, |o| {
            o.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        }),
        enable_compression: s.enable_compression.unwrap_or(d.enable_compression),
        enable_logging: s.enable_logging.unwrap_or(d.enable_logging),
        log_format,
        echo_word_delay: ms(s.echo_word_delay, d.echo_word_delay),
        autobahn_echo: s.autobahn_echo.unwrap_or(d.autobahn_echo),
        memory_limit: match s.memory_limit {
            Some(ByteSize(n)) if n < 16 * 1024 * 1024 => {
                bail!("invalid MEMORY_LIMIT: {n} bytes is too little to serve anyone (16MiB at least)")
            }
            Some(ByteSize(n)) => n,
            None => d.memory_limit,
        },
        tls_cert: s.tls_cert,
        tls_key: s.tls_key,
    };
    if server.tls_cert.is_some() != server.tls_key.is_some() {
        bail!("TLS needs both TLS_CERT and TLS_KEY (or neither)");
    }
    Ok(Resolved { server, agent })
}

fn init_logging(config: &ServerConfig) {
    if !config.enable_logging {
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("HAIP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub fn run(args: &ServeArgs) -> ExitCode {
    let Resolved {
        server: config,
        agent,
    } = match resolve(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("haip serve: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let agent: Arc<dyn Agent> = match agent {
        AgentChoice::Echo => Arc::new(EchoAgent {
            word_delay: config.echo_word_delay,
        }),
        AgentChoice::OpenAi(openai) => match OpenAiAgent::new(openai) {
            Ok(a) => Arc::new(a),
            Err(e) => {
                eprintln!("haip serve: {e}");
                return ExitCode::from(2);
            }
        },
        AgentChoice::Workers => Arc::new(WorkersAgent::new(WorkerPool::new())),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(crate::memory::on_worker_idle)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("haip serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, agent)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("haip serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(mut config: ServerConfig, agent: Arc<dyn Agent>) -> anyhow::Result<()> {
    let mut generated_secret = false;
    let auth = match &config.jwt_public_key_pem {
        Some(pem) => Authenticator::with_public_key(
            pem,
            config.jwt_issuer.clone(),
            config.jwt_audience.clone(),
        )
        .context("invalid JWT_PUBLIC_KEY_FILE")?,
        None => {
            let secret = config.jwt_secret.clone().unwrap_or_else(|| {
                generated_secret = true;
                random_secret()
            });
            config.jwt_secret = Some(secret.clone());
            let (iss, aud) = (config.jwt_issuer.clone(), config.jwt_audience.clone());
            if generated_secret {
                Authenticator::with_generated_secret(secret.as_bytes(), iss, aud)
            } else {
                Authenticator::with_secret(secret.as_bytes(), iss, aud)
            }
        }
    };
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        // Checked before anything is printed: a wrong file stops start-up, naming it.
        haip_server::tls::ServerTls::load(cert, key).map_err(anyhow::Error::msg)?;
    }
    let shown_host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let base = format!("{}:{}", shown_host, addr.port());
    let (http, ws) = if config.tls_cert.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let mut banner = String::new();
    let _ = writeln!(banner, "haip-rs listening on {addr}");
    let _ = writeln!(banner, "agent: {}", agent.describe());
    // A ready token only with the secret made up here: with a secret of your own (or
    // your issuer's keys), tokens are yours to mint, and one valid for a day printed in a
    // log would be one more secret lying around.
    let token = if generated_secret {
        auth.mint("demo", 24 * 3600)
    } else {
        None
    };
    match &token {
        Some(token) => {
            let _ = writeln!(
                banner,
                "JWT secret (random, set JWT_SECRET to keep one): {}",
                config.jwt_secret.as_deref().unwrap_or("")
            );
            let _ = writeln!(banner, "token (sub=demo, valid 24 h): {token}");
            let _ = writeln!(
                banner,
                "  for haip chat/send/monitor: export HAIP_TOKEN={token}"
            );
        }
        None if config.jwt_public_key_pem.is_some() => {
            let _ = writeln!(
                banner,
                "tokens: signed by your issuer (verified with JWT_PUBLIC_KEY_FILE); TOKEN below is one of them"
            );
        }
        None => {
            let _ = writeln!(
                banner,
                "tokens: none printed, as JWT_SECRET is set; mint one with `haip token --secret \"$JWT_SECRET\" --sub NAME` and put it for TOKEN below"
            );
        }
    }
    let token = token.as_deref().unwrap_or("TOKEN");
    let _ = writeln!(banner, "  browser:        {http}://{base}/?token={token}");
    if config.enable_websocket {
        let _ = writeln!(
            banner,
            "  WebSocket:      {ws}://{base}{}?token={token}",
            config.websocket_path
        );
    }
    if config.enable_sse {
        let _ = writeln!(
            banner,
            "  SSE:            {http}://{base}{}?token={token}",
            config.sse_path
        );
    }
    // `-T .` streams what you type as a chunked body, reading it without blocking: the
    // server answers at once and each line entered is a message (`--data-binary @-`, and
    // even `-T -`, wait for the end of input).
    if config.enable_http_stream {
        let _ = writeln!(banner, "  HTTP streaming: curl -sN --no-progress-meter -X POST -T . -H 'Authorization: Bearer {token}' -H 'Content-Type: application/x-ndjson' {http}://{base}{}", config.http_stream_path);
    }
    let _ = writeln!(
        banner,
        "  AI SDK useChat: {http}://{base}{} (DefaultChatTransport, or WebSocketChatTransport on {ws}://{base}{})",
        config.aisdk_path, config.aisdk_path
    );
    if agent.worker_pool().is_some() {
        let _ = writeln!(
            banner,
            "  agent workers:  {ws}://{base}{} (a token of role agent: haip token --role agent; run one with haip worker)",
            config.agent_path
        );
    }
    let _ = writeln!(banner, "  health:         {http}://{base}/health");
    if config.autobahn_echo {
        let _ = writeln!(
            banner,
            "  Autobahn echo:  {ws}://{base}/autobahn (unauthenticated, for testing only)"
        );
    }
    // Nobody may be reading stdout (a closed pipe): the server runs on regardless.
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
    let state = AppState::new(config, auth, agent, ToolRegistry::with_builtins());
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    let serving = haip_server::server::serve(listener, state.clone());
    tokio::select! {
        r = serving => r.context("server failed")?,
        _ = async {
            state.shutdown.cancelled().await;
            tokio::time::sleep(Duration::from_secs(4)).await;
        } => tracing::warn!("connections still open after 4 s; exiting anyway"),
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Checks REDIS_URL: one or more comma-separated redis:// or rediss:// URLs. The URL is
/// never printed back: it may carry a password.
fn redis_url(urls: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = urls.split(',').map(str::trim).collect();
    for part in &parts {
        let scheme_ok = part.starts_with("redis://") || part.starts_with("rediss://");
        if !scheme_ok || redis_url_host(part).is_empty() {
            bail!(
                "REDIS_URL must be redis://HOST:PORT or rediss://HOST:PORT (several separated \
                 by commas for a Redis Cluster)"
            );
        }
    }
    Ok(parts.join(","))
}

/// The host part of a Redis URL (after any user and password).
fn redis_url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn sizes_are_read_in_bytes_or_with_a_unit() {
        let read = |t: &str| t.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(read("1048576"), Ok(1 << 20));
        assert_eq!(read("256MiB"), Ok(256 << 20));
        assert_eq!(read("256 MB"), Ok(256 << 20));
        assert_eq!(read("2GiB"), Ok(2 << 30));
        assert_eq!(read("64k"), Ok(64 << 10));
        assert!(read("lots").is_err());
        assert!(read("12TB").is_err());
        assert!(read("99999999999999GiB").is_err());
    }
}
