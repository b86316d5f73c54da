//! `haip validate`: checks NDJSON envelopes against the wire contract, one verdict per line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use haip_protocol::{Envelope, ValidationError};
use serde_json::json;

#[derive(clap::Args)]
#[command(
    about = "Validate NDJSON envelopes (one per line) against the HAIP wire contract",
    long_about = "Validate NDJSON envelopes (one per line) against the HAIP wire contract.\n\n\
        Prints one line per envelope: `ok <TYPE>` or `error <CODE> <field>: <reason>`, where \
        <field> is the dotted path of the field at fault, or `-` when the line as a whole is \
        (not JSON, not an object). Blank lines are skipped.\n\n\
        Exit status: 0 when every envelope is valid, 1 when any is not, 2 when the input \
        cannot be read."
)]
pub struct ValidateArgs {
    /// File of NDJSON envelopes; `-` or nothing reads standard input.
    file: Option<PathBuf>,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &ValidateArgs) -> ExitCode {
    let input: Box<dyn BufRead> = match args.file.as_deref() {
        None => Box::new(io::stdin().lock()),
        Some(p) if p.as_os_str() == "-" => Box::new(io::stdin().lock()),
        Some(p) => match File::open(p) {
            Ok(f) => Box::new(BufReader::new(f)),
            Err(e) => {
                eprintln!("haip validate: cannot read {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    match validate_lines(input, &mut out, args.json) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let _ = out.flush();
            eprintln!("haip validate: cannot read input: {e}");
            ExitCode::from(2)
        }
    }
}

/// Writes one verdict per non-blank line; returns whether every envelope was valid.
fn validate_lines(input: impl BufRead, out: &mut impl Write, as_json: bool) -> io::Result<bool> {
    let mut all_valid = true;
    for (index, line) in input.split(b'\n').enumerate() {
        let line = line?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let verdict = Envelope::parse_bytes(line);
        all_valid &= verdict.is_ok();
        write_verdict(out, index + 1, &verdict, as_json)?;
    }
    out.flush()?;
    Ok(all_valid)
}

fn write_verdict(
    out: &mut impl Write,
    line: usize,
    verdict: &Result<Envelope, ValidationError>,
    as_json: bool,
) -> io::Result<()> {
    match (verdict, as_json) {
        (Ok(env), false) => writeln!(out, "ok {}", env.event_type()),
        (Err(e), false) => writeln!(
            out,
            "error {} {}: {}",
            e.code,
            e.field.as_deref().unwrap_or("-"),
            e.reason
        ),
        (Ok(env), true) => writeln!(
            out,
            "{}",
            json!({"line": line, "ok": true, "type": env.event_type().as_str(), "id": env.id})
        ),
        (Err(e), true) => writeln!(
            out,
            "{}",
            json!({
                "line": line,
                "ok": false,
                "code": e.code.as_str(),
                "field": e.field,
                "reason": e.reason,
                "related_id": e.related_id,
            })
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(input: &str, as_json: bool) -> (bool, String) {
        let mut out = Vec::new();
        let ok = validate_lines(input.as_bytes(), &mut out, as_json).unwrap();
        (ok, String::from_utf8(out).unwrap())
    }

    #[test]
    fn blank_lines_are_skipped_and_crlf_accepted() {
        let line = r#"{"id":"a","session":"s","seq":"1","ts":"0","channel":"SYSTEM","type":"PING","payload":{}}"#;
        let (ok, out) = run_on(&format!("\n{line}\r\n  \n"), false);
        assert!(ok);
        assert_eq!(out, "ok PING\n");
    }

    #[test]
    fn json_mode_reports_line_numbers_and_related_id() {
        let (ok, out) = run_on("\n{\"id\":\"x\"}\n", true);
        assert!(!ok);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["line"], 2);
        assert_eq!(v["code"], "PROTOCOL_VIOLATION");
        assert_eq!(v["field"], "session");
        assert_eq!(v["related_id"], "x");
    }

    #[test]
    fn invalid_utf8_is_a_protocol_violation_not_a_read_error() {
        let mut out = Vec::new();
        let ok = validate_lines(&b"\xff\xfe\n"[..], &mut out, false).unwrap();
        assert!(!ok);
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("error PROTOCOL_VIOLATION -: not UTF-8"));
    }
}
