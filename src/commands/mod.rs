//! One module per subcommand; `run` dispatches.

mod profiles;

use std::io::{self, Write};
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::CliError;

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = match cli.command {
        None => demo(&mut out),
        Some(Command::Profiles { show, format }) => profiles::run(&mut out, show.as_deref(), format),
    };
    let result = result.and_then(|code| out.flush().map(|_| code).map_err(CliError::from));
    match result {
        // `racetrack | head` is fine: stop quietly when the reader goes away.
        Err(CliError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => r,
    }
}

/// The demo: until the simulator lands, the kernel profiles and what to try.
fn demo<W: Write>(out: &mut W) -> Result<ExitCode, CliError> {
    writeln!(out, "racetrack: a model of Linux conntrack/NAT races, per kernel version.\n")?;
    profiles::run(out, None, crate::cli::Format::Table)?;
    writeln!(out, "\nTry: racetrack profiles --show 4.19   (copy it, change one field, pass the file to --kernel)")?;
    Ok(ExitCode::SUCCESS)
}
