//! `--iptables-save`, `--resolv-conf`, `--sysctl`: read the files, hand their
//! text to `racetrack_models::inputs`, and tell the user what was not modelled.
//! Shared by every command that runs a scenario.

use std::path::Path;

use racetrack_engine::KernelProfile;
use racetrack_models::inputs::{apply_inputs, Applied, InputFile, Inputs};
use racetrack_models::scenario::Scenario;

use crate::cli::InputArgs;
use crate::error::CliError;

/// Notes printed on stderr before the rest are left to the JSON summary.
const MAX_NOTES: usize = 20;

fn read(path: &Path) -> Result<InputFile, CliError> {
    let source = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| CliError::Input(format!("{source}: cannot read: {e}")))?;
    InputFile::from_bytes(&source, &bytes).map_err(|e| CliError::Input(e.to_string()))
}

/// Read the files the flags name.
pub fn load(args: &InputArgs) -> Result<Inputs, CliError> {
    Ok(Inputs {
        iptables_save: args.iptables_save.as_deref().map(read).transpose()?,
        resolv_conf: args.resolv_conf.as_deref().map(read).transpose()?,
        sysctl: args.sysctl.as_deref().map(read).transpose()?,
        service: args.service.clone(),
    })
}

/// Read and apply the files to the scenario and profile (before `--set`).
/// Prints the notes on stderr; `None` when no file was given.
pub fn apply(
    scenario: &mut Scenario,
    profile: &mut KernelProfile,
    args: &InputArgs,
) -> Result<Option<Applied>, CliError> {
    let inputs = load(args)?;
    if inputs.is_empty() {
        return Ok(None);
    }
    let applied = apply_inputs(scenario, profile, &inputs).map_err(|e| CliError::Input(e.to_string()))?;
    let notes: Vec<&String> = applied.ignored.iter().chain(&applied.notes).collect();
    for n in notes.iter().take(MAX_NOTES) {
        eprintln!("racetrack: note: {n}");
    }
    if notes.len() > MAX_NOTES {
        eprintln!(
            "racetrack: note: … and {} more (all of them under `inputs` in the JSON summary)",
            notes.len() - MAX_NOTES
        );
    }
    if let (Some(n), Some(f)) = (applied.sysctl_applied, applied.files.get("sysctl")) {
        eprintln!("racetrack: note: {f}: {n} sysctl keys applied");
    }
    Ok(Some(applied))
}

/// A scenario check's complaint about `key`, located in the file that set
/// it unless `--set` set it last.
pub fn locate(applied: Option<&Applied>, sets: &[String], key: &str, why: &str) -> Option<CliError> {
    let overridden = sets.iter().any(|s| s.split_once('=').is_some_and(|(k, _)| k.trim() == key));
    if overridden {
        return None;
    }
    applied?.locate(key, why).map(|e| CliError::Input(e.to_string()))
}
