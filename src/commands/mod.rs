//! One module per subcommand; `run` dispatches.

mod demo;
mod diagnose;
mod explain;
pub mod inputs;
mod profiles;
mod run;
mod scenarios;
mod stress;
mod sweep;

use std::io::{self, Write as _};
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::CliError;

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = match cli.command {
        None => demo::run(&mut out),
        Some(Command::Profiles { show, format }) => profiles::run(&mut out, show.as_deref(), format),
        Some(Command::Run { scenario, kernel, sets, seed, inputs, format }) => {
            run::run(&mut out, &scenario, kernel.as_deref(), &sets, seed, &inputs, format)
        }
        Some(Command::Sweep(args)) => sweep::run(&mut out, args),
        Some(Command::Diagnose { file, kernel, no_verify, check, format }) => {
            diagnose::run(&mut out, diagnose::Args { file, kernel, no_verify, check, format })
        }
        Some(Command::Scenarios { show }) => scenarios::run(&mut out, show.as_deref()),
        Some(Command::Explain { race, kernel, format }) => explain::run(&mut out, &race, kernel.as_deref(), format),
        Some(Command::Stress(args)) => stress::run(&mut out, args),
    };
    let result = result.and_then(|code| out.flush().map(|_| code).map_err(CliError::from));
    match result {
        // `racetrack | head` is fine: stop quietly when the reader goes away.
        Err(CliError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => r,
    }
}
