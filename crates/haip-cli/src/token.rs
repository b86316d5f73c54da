//! `haip token`: mints an HS256 token for a server's secret.

use std::process::ExitCode;

use haip_server::auth::Authenticator;

#[derive(clap::Args)]
#[command(about = "Mint an HS256 token for a server started with JWT_SECRET")]
pub struct TokenArgs {
    /// The server's shared secret
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// Subject (`sub` claim): the user the sessions belong to
    #[arg(long, default_value = "demo")]
    sub: String,
    /// Lifetime: a number of seconds, or with a unit: 90s, 30m, 12h, 7d
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
    /// `iss` claim, when the server checks it
    #[arg(long, env = "JWT_ISSUER")]
    issuer: Option<String>,
    /// `aud` claim, when the server checks it
    #[arg(long, env = "JWT_AUDIENCE")]
    audience: Option<String>,
    /// A `role` claim: `admin` may watch every session (`haip monitor --all`); `agent`
    /// attaches an agent worker (`haip worker`) and opens no user session
    #[arg(long)]
    role: Option<String>,
}

/// Seconds in a TTL such as `3600`, `90s`, `30m`, `12h` or `7d`.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 3600, 90s, 30m, 12h or 7d"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use s, m, h or d")),
    };
    n.checked_mul(factor)
        .filter(|&t| t > 0)
        .ok_or_else(|| format!("{s:?} must be a positive duration"))
}

pub fn run(args: &TokenArgs) -> ExitCode {
    if args.secret.is_empty() {
        eprintln!("haip token: --secret must not be empty");
        return ExitCode::from(2);
    }
    let auth = Authenticator::with_secret(
        args.secret.as_bytes(),
        args.issuer.clone(),
        args.audience.clone(),
    );
    match auth.mint_with_role(&args.sub, args.ttl, args.role.as_deref()) {
        Some(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("haip token: could not sign the token");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("").is_err());
    }
}
