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
        Err(e) if !e.use_stderr() => {
            // --help, --version: clap's own text on stdout.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("racetrack: {}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
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

/// clap's usage error as one line: its message, the possible values or tip
/// it adds, and where to read more (the usage block is left out).
fn one_line(rendered: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for line in rendered.lines().map(str::trim) {
        // "to pass '-1' as a value, use '-- -1'" does not work for options.
        if line.is_empty()
            || line.starts_with("Usage:")
            || line.starts_with("For more information")
            || line.starts_with("tip: to pass")
        {
            continue;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        let line = line.strip_prefix("tip: ").unwrap_or(line);
        parts.push(line.trim_start_matches('[').trim_end_matches(']').to_string());
    }
    parts.push("see --help".into());
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_error_is_one_line_with_its_hint() {
        let e = cli::Cli::try_parse_from(["racetrack", "explain", "dns-dnat", "--format", "csv"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("'csv'") && line.contains("possible values: table, json"), "{line}");
        let e = cli::Cli::try_parse_from(["racetrack", "run", "dns", "--bogus"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(line.starts_with("unexpected argument '--bogus'"), "{line}");
        assert!(line.ends_with("see --help"), "{line}");
    }
}
