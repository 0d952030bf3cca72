//! Errors the CLI reports: one line, and an exit code that means something.

use std::fmt;

/// A failure to report to the user.
#[derive(Debug)]
pub enum CliError {
    /// Bad usage or bad input (exit 2): the message names the file, line or key.
    Input(String),
    /// Writing the output failed (exit 1); a closed pipe is not an error.
    Io(std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_) => 2,
            CliError::Io(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Input(m) => f.write_str(m),
            CliError::Io(e) => write!(f, "cannot write output: {e}"),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Io(e)
    }
}

impl From<racetrack_engine::profile::ProfileError> for CliError {
    fn from(e: racetrack_engine::profile::ProfileError) -> Self {
        CliError::Input(e.to_string())
    }
}
