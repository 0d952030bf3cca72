//! `racetrack`: the command-line front end.
//!
//! This crate only parses arguments, loads inputs and renders results; the
//! model lives in `racetrack-engine` and `racetrack-models`.

mod cli;
mod commands;
mod error;
mod output;
mod plot;
mod render;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("racetrack: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
