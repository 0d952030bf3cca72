//! The built-in scenarios and scenario files.

use racetrack_engine::KernelProfile;
use serde::Serialize;

use crate::dns::{self, DnsReport, DnsScenario};
use crate::params::{self, ParamError};

/// A scenario ready to run.
#[derive(Clone, Debug, PartialEq)]
pub enum Scenario {
    /// Pods resolving names through a DNATed DNS service.
    Dns(DnsScenario),
}

/// A built-in scenario: name and one line on what it shows.
pub struct Builtin {
    /// Name on the command line.
    pub name: &'static str,
    /// What it shows.
    pub about: &'static str,
}

/// The built-in scenarios.
pub const BUILTINS: &[Builtin] = &[Builtin {
    name: "dns",
    about: "pods resolve names through a ClusterIP DNS service: the conntrack DNAT insert race and 5 s lookups",
}];

/// The result of running a scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Report {
    /// From [`Scenario::Dns`].
    Dns(DnsReport),
}

impl Scenario {
    /// A built-in scenario by name.
    pub fn builtin(name: &str) -> Option<Scenario> {
        match name {
            "dns" => Some(Scenario::Dns(DnsScenario::default())),
            _ => None,
        }
    }

    /// Load a scenario file; its `scenario` key says which kind it is.
    pub fn from_toml(text: &str, source: &str) -> Result<Scenario, ParamError> {
        let kind = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| t.get("scenario").and_then(|v| v.as_str()).map(str::to_string));
        match kind.as_deref() {
            Some("dns") => params::from_toml::<DnsScenario>(text, source).map(Scenario::Dns),
            Some(other) => Err(ParamError {
                source: source.into(),
                line: params::line_of_key(text, "scenario"),
                key: Some("scenario".into()),
                message: format!("unknown scenario `{other}` (known: {})", names().join(", ")),
            }),
            None => {
                // Not TOML, or no `scenario` key: let the parser say which.
                match toml::from_str::<toml::Table>(text) {
                    Err(_) => params::from_toml::<DnsScenario>(text, source).map(Scenario::Dns),
                    Ok(_) => Err(ParamError {
                        source: source.into(),
                        line: None,
                        key: Some("scenario".into()),
                        message: format!("missing: say which scenario this is (one of: {})", names().join(", ")),
                    }),
                }
            }
        }
    }

    /// The scenario as TOML (what `scenarios --show` prints).
    pub fn to_toml(&self) -> String {
        match self {
            Scenario::Dns(s) => params::to_toml(s),
        }
    }

    /// Apply `--set KEY=VALUE` overrides.
    pub fn with_sets(&self, sets: &[String]) -> Result<Scenario, ParamError> {
        match self {
            Scenario::Dns(s) => params::apply_sets(s, sets).map(Scenario::Dns),
        }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Dns(_) => "dns",
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        match self {
            Scenario::Dns(s) => s.seed,
        }
    }

    /// Replace the seed.
    pub fn set_seed(&mut self, seed: u64) {
        match self {
            Scenario::Dns(s) => s.seed = seed,
        }
    }

    /// Run it on a kernel profile.
    pub fn run(&self, profile: KernelProfile) -> Report {
        match self {
            Scenario::Dns(s) => Report::Dns(dns::run(s, profile)),
        }
    }
}

/// Names of the built-in scenarios.
pub fn names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_round_trips_through_its_toml() {
        for b in BUILTINS {
            let s = Scenario::builtin(b.name).unwrap();
            let back = Scenario::from_toml(&s.to_toml(), "shown").unwrap();
            assert_eq!(back, s, "{}", b.name);
        }
    }

    #[test]
    fn files_must_say_which_scenario() {
        let e = Scenario::from_toml("seed = 1\n", "f.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("scenario"));
        let e = Scenario::from_toml("scenario = \"dnss\"\n", "f.toml").unwrap_err();
        assert_eq!(e.to_string(), "f.toml:1: key `scenario`: unknown scenario `dnss` (known: dns)");
    }
}
