//! How a run's figures are printed: a table on a terminal, one JSON object with `--json`.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use serde_json::json;

/// One named figure.
pub type Row = (&'static str, f64, &'static str);

/// The same work done by a bare WebSocket echo (no HAIP), measured in the same run.
pub struct Ceiling {
    /// What was measured, in words (printed above the figures).
    pub what: String,
    pub rows: Vec<Row>,
    /// The HAIP figure over the ceiling's, and the name of that figure.
    pub ratio: f64,
    pub ratio_of: &'static str,
}

/// Named figures of one run.
pub struct Report {
    pub scenario: &'static str,
    pub transport: &'static str,
    pub rows: Vec<Row>,
    /// The ceilings (the same work on the bare transport), or why they were not measured.
    pub ceilings: Result<Vec<Ceiling>, String>,
}

impl Report {
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
            return;
        }
        println!("{} over {}", self.scenario, self.transport);
        print_rows(&self.rows);
        match &self.ceilings {
            Ok(all) => {
                for c in all {
                    println!("ceiling: {}", c.what);
                    print_rows(&c.rows);
                    println!(
                        "  {:<28} {:>14.1} % ({})",
                        "HAIP / ceiling",
                        c.ratio * 100.0,
                        c.ratio_of
                    );
                }
            }
            Err(why) => println!("ceiling: not measured ({why})"),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let figures = |rows: &[Row]| {
            let mut map = serde_json::Map::new();
            for (name, value, unit) in rows {
                map.insert(json_key(name, unit), json_number(*value));
            }
            map
        };
        let ceilings = match &self.ceilings {
            Ok(all) => all
                .iter()
                .map(|c| {
                    json!({"what": c.what, "results": figures(&c.rows),
                        "ratio": c.ratio, "ratio_of": c.ratio_of})
                })
                .collect(),
            Err(why) => json!({"not_measured": why}),
        };
        json!({"scenario": self.scenario, "transport": self.transport,
            "results": figures(&self.rows), "ceilings": ceilings})
    }
}

/// A figure's name and unit as a JSON key a program can use: `round (to last follower)
/// max` in ms becomes `round_to_last_follower_max_ms`, `messages delivered/s` becomes
/// `messages_delivered_per_s`.
pub fn json_key(name: &str, unit: &str) -> String {
    // A rate already named per second needs no unit after it.
    let unit = match unit {
        u if u.ends_with("/s") && name.ends_with("/s") => "",
        u => u,
    };
    let text = format!("{name} {unit}")
        .replace('/', " per ")
        .to_ascii_lowercase();
    let mut key = String::new();
    for word in text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !key.is_empty() {
            key.push('_');
        }
        key.push_str(word);
    }
    key
}

/// Whole numbers (counts) as integers, the rest as they are.
fn json_number(value: f64) -> serde_json::Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        json!(value as i64)
    } else {
        json!(value)
    }
}

fn print_rows(rows: &[Row]) {
    for (name, value, unit) in rows {
        println!("  {name:<28} {value:>14.1} {unit}");
    }
}

/// A progress line on a terminal's stderr; silent otherwise.
pub struct Progress {
    on: bool,
    started: Instant,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
            started: Instant::now(),
        }
    }

    pub fn show(&self, done: f64, note: &str) {
        if !self.on {
            return;
        }
        let width = 30;
        let filled = ((done.clamp(0.0, 1.0)) * width as f64) as usize;
        eprint!(
            "\r[{}{}] {:>3.0}% {:>5.1}s {note}   ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            done * 100.0,
            self.started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }

    pub fn done(&self) {
        if self.on {
            eprintln!();
        }
    }
}

/// The `p` quantile (0..=1) of sorted values; 0 when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::{json_key, json_number};

    #[test]
    fn figures_get_keys_a_program_can_use_and_counts_stay_integers() {
        assert_eq!(
            json_key("round (to last follower) max", "ms"),
            "round_to_last_follower_max_ms"
        );
        assert_eq!(
            json_key("messages delivered/s", ""),
            "messages_delivered_per_s"
        );
        assert_eq!(
            json_key("bytes delivered/s", "B/s"),
            "bytes_delivered_per_s"
        );
        assert_eq!(
            json_key("connect rate", "sessions/s"),
            "connect_rate_sessions_per_s"
        );
        assert_eq!(json_key("sessions held", ""), "sessions_held");
        assert_eq!(json_number(10.0).to_string(), "10");
        assert_eq!(json_number(2.5).to_string(), "2.5");
    }
}
