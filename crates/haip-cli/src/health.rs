//! `haip health`: the server's /health and /stats in a few lines.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

#[derive(clap::Args)]
#[command(about = "Show a server's health and stats; exit 1 when unreachable or unhealthy")]
pub struct HealthArgs {
    /// Server URL (only scheme, host and port are used)
    #[arg(long, env = "HAIP_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Print {"health": ..., "stats": ...} as one JSON document
    #[arg(long)]
    json: bool,
    /// PEM file of CA certificates to trust besides the platform's (or SSL_CERT_FILE's)
    #[arg(long, env = "HAIP_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
}

fn base(url: &str) -> String {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let url = url
        .replacen("ws://", "http://", 1)
        .replacen("wss://", "https://", 1);
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url[..after_scheme + i].to_string(),
        None => url,
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    // The causes say what happened ("connection refused", "invalid peer certificate").
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| haip_client::error::with_causes(&e))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(body)
}

pub fn run(args: &HealthArgs) -> ExitCode {
    crate::connect::block_on(async {
        let tls = match haip_client::tls::client_config(args.ca_cert.as_deref()) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let http = match haip_client::tls::http_client_builder_with(&tls)
            .timeout(Duration::from_secs(5))
            .build()
        {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let base = base(&args.url);
        let health = match get(&http, &format!("{base}/health")).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("unreachable: {base}/health: {e}");
                return ExitCode::from(1);
            }
        };
        let stats = get(&http, &format!("{base}/stats")).await.ok();
        if args.json {
            println!("{}", serde_json::json!({"health": health, "stats": stats}));
        } else {
            println!(
                "{base}: {} (up {} s), {} active / {} total connections",
                health["status"].as_str().unwrap_or("?"),
                health["uptime"].as_u64().unwrap_or(0) / 1000,
                health["activeConnections"],
                health["totalConnections"]
            );
            if let Some(s) = &stats {
                println!(
                    "messages {} ({:.1}/s), error rate {:.4}, heartbeat latency {:.1} ms, sessions {}",
                    s["totalMessages"],
                    s["messagesPerSecond"].as_f64().unwrap_or(0.0),
                    s["errorRate"].as_f64().unwrap_or(0.0),
                    s["averageLatency"].as_f64().unwrap_or(0.0),
                    s["sessions"]
                );
                if let Some(t) = s["transports"].as_object() {
                    let parts: Vec<String> = t
                        .iter()
                        .map(|(name, c)| format!("{name} {}", c["activeConnections"]))
                        .collect();
                    println!("active by transport: {}", parts.join(", "));
                }
            }
        }
        if health["status"] == "ok" {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    })
}
