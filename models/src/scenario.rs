//! The built-in scenarios and scenario files.

use racetrack_engine::KernelProfile;
use serde::Serialize;

use crate::dns::{self, DnsReport, DnsScenario};
use crate::listener::ListenerReport;
use crate::params::{self, ParamError, Validate};
use crate::snat::{self, SnatReport, SnatScenario};
use crate::syn_backlog::{self, SynBacklogScenario};
use crate::tw_recycle::{self, TwRecycleScenario};

/// A scenario ready to run.
#[derive(Clone, Debug, PartialEq)]
pub enum Scenario {
    /// Pods resolving names through a DNATed DNS service.
    Dns(DnsScenario),
    /// New TCP connections through MASQUERADE: source-port collisions.
    Snat(SnatScenario),
    /// Hosts behind one NAT connecting to a server with `tcp_tw_recycle`.
    TwRecycle(TwRecycleScenario),
    /// Bursts of connections against a listener's SYN and accept queues.
    SynBacklog(SynBacklogScenario),
}

/// A built-in scenario: name and one line on what it shows.
pub struct Builtin {
    /// Name on the command line.
    pub name: &'static str,
    /// What it shows.
    pub about: &'static str,
}

/// The built-in scenarios.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "dns",
        about: "pods resolve names through a ClusterIP DNS service: the conntrack DNAT insert race and 5 s lookups",
    },
    Builtin {
        name: "snat",
        about: "connections through NodePort/MASQUERADE: SNAT source-port collisions, insert_failed, 1 s connects",
    },
    Builtin {
        name: "tw-recycle",
        about: "hosts behind one NAT connect to a server with tcp_tw_recycle: SYNs rejected by PAWS",
    },
    Builtin {
        name: "syn-backlog",
        about: "bursts of connections against tcp_max_syn_backlog and somaxconn: SYNs dropped by the listener",
    },
];

/// The result of running a scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Report {
    /// From [`Scenario::Dns`].
    Dns(DnsReport),
    /// From [`Scenario::Snat`].
    Snat(SnatReport),
    /// From [`Scenario::TwRecycle`] and [`Scenario::SynBacklog`].
    Listener(ListenerReport),
}

/// Apply `$body` to the report inside any variant: every report has the
/// common keys (`scenario`, `kernel`, `seed`, `per_cpu`, `clients`, …).
macro_rules! each_report {
    ($self:expr, $r:ident => $body:expr) => {
        match $self {
            Report::Dns($r) => $body,
            Report::Snat($r) => $body,
            Report::Listener($r) => $body,
        }
    };
}

impl Report {
    /// What ran: scenario name, kernel profile name, seed.
    pub fn header(&self) -> (&str, &str, u64) {
        each_report!(self, r => (r.scenario.as_str(), r.kernel.as_str(), r.seed))
    }

    /// What the clients saw.
    pub fn clients(&self) -> &crate::clients::ClientStats {
        each_report!(self, r => &r.clients)
    }

    /// The conntrack counters per CPU.
    pub fn per_cpu(&self) -> &[std::collections::BTreeMap<&'static str, u64>] {
        each_report!(self, r => &r.per_cpu)
    }

    /// Entries in the table when the run ended.
    pub fn conntrack_entries(&self) -> u64 {
        each_report!(self, r => r.conntrack_entries)
    }
}

/// Apply `$body` to the scenario inside any variant.
macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Scenario::Dns($s) => $body,
            Scenario::Snat($s) => $body,
            Scenario::TwRecycle($s) => $body,
            Scenario::SynBacklog($s) => $body,
        }
    };
}

/// Same, rebuilding the same variant from the result.
macro_rules! each_map {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Scenario::Dns($s) => $body.map(Scenario::Dns),
            Scenario::Snat($s) => $body.map(Scenario::Snat),
            Scenario::TwRecycle($s) => $body.map(Scenario::TwRecycle),
            Scenario::SynBacklog($s) => $body.map(Scenario::SynBacklog),
        }
    };
}

impl Scenario {
    /// A built-in scenario by name.
    pub fn builtin(name: &str) -> Option<Scenario> {
        match name {
            "dns" => Some(Scenario::Dns(DnsScenario::default())),
            "snat" => Some(Scenario::Snat(SnatScenario::default())),
            "tw-recycle" => Some(Scenario::TwRecycle(TwRecycleScenario::default())),
            "syn-backlog" => Some(Scenario::SynBacklog(SynBacklogScenario::default())),
            _ => None,
        }
    }

    /// Load a scenario file; its `scenario` key says which kind it is.
    pub fn from_toml(text: &str, source: &str) -> Result<Scenario, ParamError> {
        let table = toml::from_str::<toml::Table>(text);
        let kind = table.as_ref().ok().and_then(|t| t.get("scenario").and_then(|v| v.as_str()).map(str::to_string));
        match kind.as_deref() {
            Some(name) => match Scenario::builtin(name) {
                Some(s) => each_map!(s, d => params::from_toml_over(&d, text, source)),
                None => Err(ParamError {
                    source: source.into(),
                    line: params::line_of_key(text, "scenario"),
                    key: Some("scenario".into()),
                    message: format!("unknown scenario `{name}` (known: {})", names().join(", ")),
                }),
            },
            // Not TOML: let the parser say where.
            None if table.is_err() => params::from_toml::<DnsScenario>(text, source).map(Scenario::Dns),
            // Present but not a string (`scenario = 5`): say so, with its line.
            None if table.as_ref().is_ok_and(|t| t.contains_key("scenario")) => Err(ParamError {
                source: source.into(),
                line: params::line_of_key(text, "scenario"),
                key: Some("scenario".into()),
                message: format!("must be a scenario name in quotes (one of: {})", names().join(", ")),
            }),
            None => Err(ParamError {
                source: source.into(),
                line: None,
                key: Some("scenario".into()),
                message: format!("missing: say which scenario this is (one of: {})", names().join(", ")),
            }),
        }
    }

    /// The scenario as TOML (what `scenarios --show` prints).
    pub fn to_toml(&self) -> String {
        each!(self, s => params::to_toml(s))
    }

    /// Apply `--set KEY=VALUE` overrides.
    pub fn with_sets(&self, sets: &[String]) -> Result<Scenario, ParamError> {
        each_map!(self, s => params::apply_sets(s, sets))
    }

    /// Check every parameter (as loading a file does); `Err((key, why))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        each!(self, s => s.validate())
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Dns(_) => "dns",
            Scenario::Snat(_) => "snat",
            Scenario::TwRecycle(_) => "tw-recycle",
            Scenario::SynBacklog(_) => "syn-backlog",
        }
    }

    /// The kernel preset `run` uses when none is given: 4.19, or for
    /// `tw-recycle` 4.9, the newest preset that still has `tcp_tw_recycle`.
    pub fn default_kernel(&self) -> &'static str {
        match self {
            Scenario::TwRecycle(_) => "4.9",
            _ => "4.19",
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        each!(self, s => s.seed)
    }

    /// Replace the seed.
    pub fn set_seed(&mut self, seed: u64) {
        each!(self, s => s.seed = seed)
    }

    /// Check that the scenario can run on `profile` (a knob the kernel does
    /// not have, say); `Err((key, why))`.
    pub fn check(&self, profile: &KernelProfile) -> Result<(), (String, String)> {
        match self {
            Scenario::TwRecycle(s) => s.check(profile),
            _ => Ok(()),
        }
    }

    /// Run it on a kernel profile.
    pub fn run(&self, profile: KernelProfile) -> Report {
        match self {
            Scenario::Dns(s) => Report::Dns(dns::run(s, profile)),
            Scenario::Snat(s) => Report::Snat(snat::run(s, profile)),
            Scenario::TwRecycle(s) => Report::Listener(tw_recycle::run(s, profile)),
            Scenario::SynBacklog(s) => Report::Listener(syn_backlog::run(s, profile)),
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
    fn a_file_holds_only_what_it_changes() {
        let s = Scenario::from_toml("scenario = \"dns\"\n[clients]\nresolver = \"musl\"\n", "f.toml").unwrap();
        let want = Scenario::builtin("dns").unwrap().with_sets(&["clients.resolver=musl".into()]).unwrap();
        assert_eq!(s, want);
        // Defaults are the scenario's own: snat's node steers by flow hash, dns's spreads.
        let s = Scenario::from_toml("scenario = \"snat\"\n", "f.toml").unwrap();
        assert_eq!(s, Scenario::builtin("snat").unwrap());
    }

    #[test]
    fn files_must_say_which_scenario() {
        let e = Scenario::from_toml("seed = 1\n", "f.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("scenario"));
        let e = Scenario::from_toml("scenario = \"dnss\"\n", "f.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.toml:1: key `scenario`: unknown scenario `dnss` (known: dns, snat, tw-recycle, syn-backlog)"
        );
        let e = Scenario::from_toml("seed = 1\nscenario = 5\n", "f.toml").unwrap_err();
        assert!(e.to_string().starts_with("f.toml:2: key `scenario`: must be a scenario name in quotes"), "{e}");
    }
}
