//! `haip tool NAME --params JSON`: calls one of the server's tools from the shell.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use serde_json::{Map, Value};

use crate::connect::{block_on, exit, fail, open, ConnectArgs};

#[derive(clap::Args)]
#[command(about = "Call one of the server's tools and print its result as JSON")]
pub struct ToolArgs {
    /// The tool, e.g. echo, add, sleep (`haip monitor --type TOOL_LIST --count 1` lists them)
    name: String,
    /// Its parameters, a JSON object: --params '{"a": 2, "b": 40}'
    #[arg(long, default_value = "{}")]
    params: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn run(args: &ToolArgs) -> ExitCode {
    let params: Map<String, Value> = match serde_json::from_str(&args.params) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            eprintln!("error: --params must be a JSON object, e.g. '{{\"a\": 2}}'");
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => {
            eprintln!("error: --params is not JSON: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    block_on(async {
        let (conn, _sub) = match open(&args.connect, "tool", "system.*").await {
            Ok(opened) => opened,
            Err(code) => return code,
        };
        // Progress on a terminal only: a pipe gets the result alone.
        let terminal = std::io::stderr().is_terminal();
        let result = conn
            .call_tool(&args.name, params, |p| {
                if terminal {
                    eprint!("\r{:>3.0}%", p);
                    let _ = std::io::stderr().flush();
                }
            })
            .await;
        if terminal {
            eprint!("\r    \r");
        }
        conn.close();
        match result {
            Ok(value) => {
                println!("{value}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, "TOOL_EXECUTION_ERROR"),
        }
    })
}
