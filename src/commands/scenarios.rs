//! `racetrack scenarios [--show NAME]`.

use std::io::Write;
use std::process::ExitCode;

use racetrack_models::scenario::BUILTINS;

use crate::error::CliError;
use crate::output::Table;

pub fn run<W: Write>(out: &mut W, show: Option<&str>) -> Result<ExitCode, CliError> {
    if let Some(name) = show {
        let s = super::run::load_scenario(name)?;
        write!(out, "{}", s.to_toml())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(["scenario", "what it shows"]);
    for b in BUILTINS {
        t.row([b.name, b.about]);
    }
    t.write(out)?;
    writeln!(out, "\nracetrack scenarios --show NAME prints every parameter; set one with --set KEY=VALUE.")?;
    Ok(ExitCode::SUCCESS)
}
