//! Real files from a node, turned into scenario and kernel parameters:
//! `iptables-save` (the nat table kube-proxy writes), a pod's
//! `/etc/resolv.conf`, and `sysctl -a`.
//!
//! The parsers are pure functions from text to typed data; [`apply_inputs`]
//! writes that data into a [`Scenario`] and a [`KernelProfile`]. The CLI
//! reads the files and applies `--set` afterwards, so `--set` wins.

pub mod iptables;
pub mod resolv;
pub mod sysctl;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use racetrack_engine::input::{self, InputError};
use racetrack_engine::KernelProfile;
use serde::Serialize;

use crate::dns::SelectorKind;
use crate::scenario::Scenario;
use iptables::{NatService, NatTable, ServiceKind};
use resolv::ResolvFile;
use sysctl::{Setting, Value};

/// The NodeLocal DNSCache address Kubernetes documents: pods that query it skip conntrack.
pub const NODE_LOCAL_DNS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 20, 10));

/// A file's name (as the user gave it) and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    /// The name errors and notes use.
    pub source: String,
    /// Its text.
    pub text: String,
}

impl InputFile {
    /// A file from its bytes: UTF-8 text without control bytes, or an error naming the line.
    pub fn from_bytes(source: &str, bytes: &[u8]) -> Result<InputFile, InputError> {
        let err = |upto: usize, message: String| InputError {
            source: source.to_string(),
            line: Some(input::line_at(bytes, upto)),
            key: None,
            message,
        };
        let text = input::utf8_text(source, bytes)?;
        // A byte-order mark is text, not content.
        let (text, bom) = match text.strip_prefix('\u{feff}') {
            Some(t) => (t, 3),
            None => (text, 0),
        };
        let err = |upto: usize, message: String| err(upto + bom, message);
        if let Some(at) = text.find(|c: char| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
            let c = text[at..].chars().next().unwrap_or('\0');
            return Err(err(at, format!("binary data (control character U+{:04X}): not a text file", c as u32)));
        }
        Ok(InputFile { source: source.to_string(), text: text.to_string() })
    }
}

/// The files given to `run` (or `sweep`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// `--iptables-save FILE`.
    pub iptables_save: Option<InputFile>,
    /// `--resolv-conf FILE`.
    pub resolv_conf: Option<InputFile>,
    /// `--sysctl FILE`.
    pub sysctl: Option<InputFile>,
    /// `--service SPEC`: which service of the iptables-save file to model.
    pub service: Option<String>,
}

impl Inputs {
    /// Nothing given: no file and no `--service`.
    pub fn is_empty(&self) -> bool {
        self.iptables_save.is_none() && self.resolv_conf.is_none() && self.sysctl.is_none() && self.service.is_none()
    }
}

/// Why a note was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoteKind {
    /// Something in the file that racetrack does not model.
    Ignored,
    /// A value clamped as the real software clamps it.
    Clamped,
    /// Anything else worth saying.
    Info,
}

/// A remark about an input: `FILE:LINE: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// File.
    pub source: String,
    /// 1-based line, when it is about one.
    pub line: Option<usize>,
    /// Ignored, clamped, or other.
    pub kind: NoteKind,
    /// What.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// Where a parameter's value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// File.
    pub source: String,
    /// Line.
    pub line: usize,
    /// The file's own name for it (`net.ipv4.tcp_tw_recycle`, `options ndots`, …).
    pub what: String,
}

/// The service an iptables-save file gave the scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChosenService {
    /// Its name from the kube-proxy comment.
    pub name: Option<String>,
    /// `10.96.0.10:53/udp` or `nodeport 30080/tcp`.
    pub address: String,
    /// Line of its entry rule.
    pub line: usize,
    /// Endpoints as `ADDR:PORT`, in rule order.
    pub endpoints: Vec<String>,
    /// Each endpoint's share of new connections.
    pub shares: Vec<f64>,
}

impl ChosenService {
    fn of(s: &NatService) -> Self {
        ChosenService {
            name: s.name.clone(),
            address: s.address(),
            line: s.line,
            endpoints: s.endpoints.iter().map(|e| format!("{}:{}", e.addr, e.port)).collect(),
            shares: s.endpoints.iter().map(|e| (e.share * 1e6).round() / 1e6).collect(),
        }
    }
}

/// What the inputs did: the `inputs` key of a run's JSON summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Applied {
    /// File names by flag (`iptables_save`, `resolv_conf`, `sysctl`).
    pub files: BTreeMap<&'static str, String>,
    /// Services found in the iptables-save file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ChosenService>,
    /// The service the scenario models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ChosenService>,
    /// The SNAT rule the scenario models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat: Option<iptables::NatSnat>,
    /// Sysctl keys that set a parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sysctl_applied: Option<usize>,
    /// Parameters the files set, with their effective values (after `--set`);
    /// kernel profile keys start with `kernel.`.
    pub parameters: BTreeMap<String, toml::Value>,
    /// Where each parameter came from.
    #[serde(skip)]
    pub origins: BTreeMap<String, Origin>,
    /// What the files hold that racetrack does not model, as `FILE:LINE: …`.
    pub ignored: Vec<String>,
    /// Clamped values and other remarks, as `FILE:LINE: …`.
    pub notes: Vec<String>,
}

impl Applied {
    fn note(&mut self, n: Note) {
        match n.kind {
            NoteKind::Ignored => self.ignored.push(n.to_string()),
            _ => self.notes.push(n.to_string()),
        }
    }

    fn set(&mut self, key: &str, value: toml::Value, origin: Origin) {
        self.parameters.insert(key.to_string(), value);
        self.origins.insert(key.to_string(), origin);
    }

    /// Where the value of `key` (a scenario key, or `kernel.` and a profile
    /// key) came from, if a file set it.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.origins.get(key)
    }

    /// An error about `key` (`Err((key, why))` of a check), located in the
    /// file that set it; `None` if no file did.
    pub fn locate(&self, key: &str, why: &str) -> Option<InputError> {
        let o = self.origin(key)?;
        Some(InputError {
            source: o.source.clone(),
            line: Some(o.line),
            key: Some(o.what.clone()),
            message: format!("sets {key}: {why}"),
        })
    }

    /// Re-read the parameters from the scenario and profile that will run
    /// (after `--set`), so the report shows what ran.
    pub fn refresh(&mut self, scenario: &Scenario, profile: &KernelProfile) {
        let s: toml::Table = toml::from_str(&scenario.to_toml()).unwrap_or_default();
        let p: toml::Table = toml::from_str(&profile.to_toml()).unwrap_or_default();
        for (key, value) in self.parameters.iter_mut() {
            let (table, path) = match key.strip_prefix("kernel.") {
                Some(rest) => (&p, rest),
                None => (&s, key.as_str()),
            };
            let mut cur: Option<&toml::Value> = None;
            for part in path.split('.') {
                cur = match cur {
                    None => table.get(part),
                    Some(v) => v.get(part),
                };
            }
            if let Some(v) = cur {
                *value = v.clone();
            }
        }
    }
}

fn input_error(source: &str, line: Option<usize>, message: String) -> InputError {
    InputError { source: source.to_string(), line, key: None, message }
}

fn int(n: impl Into<i64>) -> toml::Value {
    toml::Value::Integer(n.into())
}

/// Apply the files to a scenario and its kernel profile. A file that does
/// not apply to the scenario is an error, as is a value the scenario cannot use.
pub fn apply_inputs(
    scenario: &mut Scenario,
    profile: &mut KernelProfile,
    inputs: &Inputs,
) -> Result<Applied, InputError> {
    let mut applied = Applied::default();
    let name = scenario.name();
    if inputs.resolv_conf.is_some() && !matches!(scenario, Scenario::Dns(_)) {
        return Err(input_error(
            "--resolv-conf",
            None,
            format!("does not apply to the {name} scenario (only dns reads a resolv.conf)"),
        ));
    }
    if inputs.iptables_save.is_some() && !matches!(scenario, Scenario::Dns(_) | Scenario::Snat(_)) {
        return Err(input_error(
            "--iptables-save",
            None,
            format!("does not apply to the {name} scenario (dns reads its services, snat its SNAT rule)"),
        ));
    }
    if inputs.service.is_some() && inputs.iptables_save.is_none() {
        return Err(input_error("--service", None, "needs --iptables-save (it names one of its services)".into()));
    }
    let resolv = match &inputs.resolv_conf {
        Some(f) => {
            applied.files.insert("resolv_conf", f.source.clone());
            Some((f, resolv::parse(&f.text, &f.source)?))
        }
        None => None,
    };
    if let Some(f) = &inputs.iptables_save {
        applied.files.insert("iptables_save", f.source.clone());
        let nat = iptables::parse(&f.text, &f.source)?;
        let nameserver = resolv.as_ref().and_then(|(_, r)| r.nameservers.first().copied());
        apply_nat(scenario, &nat, f, inputs.service.as_deref(), nameserver, &mut applied)?;
    }
    if let Some((f, r)) = &resolv {
        apply_resolv(scenario, r, f, &mut applied);
    }
    if let Some(f) = &inputs.sysctl {
        applied.files.insert("sysctl", f.source.clone());
        let settings = sysctl::parse(&f.text, &f.source)?;
        apply_sysctl(scenario, profile, &settings, f, &mut applied)?;
    }
    // A value no run can use (1500 endpoints, say) is the file's fault: say where.
    if let Err((key, why)) = scenario.validate() {
        return Err(applied
            .locate(&key, &why)
            .unwrap_or_else(|| input_error(name, None, format!("key `{key}`: {why}"))));
    }
    if let Err((key, why)) = profile.validate() {
        let k = format!("kernel.{key}");
        return Err(applied
            .locate(&k, &why)
            .unwrap_or_else(|| input_error(&profile.name, None, format!("key `{key}`: {why}"))));
    }
    Ok(applied)
}

/// Pick the service the dns scenario models.
fn dns_service<'a>(
    nat: &'a NatTable,
    f: &InputFile,
    spec: Option<&str>,
    nameserver: Option<IpAddr>,
) -> Result<&'a NatService, InputError> {
    let list =
        || nat.services.iter().map(|s| s.name.clone().unwrap_or_else(|| s.address())).collect::<Vec<_>>().join(", ");
    if let Some(spec) = spec {
        let found: Vec<&NatService> = nat.services.iter().filter(|s| s.matches(spec)).collect();
        return found.iter().find(|s| s.proto == "udp").or(found.first()).copied().ok_or_else(|| {
            input_error("--service", None, format!("`{spec}`: no such service in {} (it has: {})", f.source, list()))
        });
    }
    let dns: Vec<&NatService> =
        nat.services.iter().filter(|s| s.kind == ServiceKind::ClusterIp && s.port == 53 && s.proto == "udp").collect();
    if let Some(ns) = nameserver {
        if let Some(s) = dns.iter().find(|s| s.addr == Some(ns)) {
            return Ok(s);
        }
    }
    match dns[..] {
        [one] => Ok(one),
        [] => Err(input_error(
            &f.source,
            None,
            format!("no ClusterIP service on port 53/udp; name the DNS service with --service (services: {})", list()),
        )),
        _ => {
            let kube_dns = dns.iter().find(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("kube-system/kube-dns") || n.starts_with("kube-system/coredns"))
            });
            kube_dns.copied().ok_or_else(|| {
                let names: Vec<String> = dns.iter().map(|s| s.name.clone().unwrap_or_else(|| s.address())).collect();
                input_error(
                    &f.source,
                    None,
                    format!("several services on port 53/udp ({}): name one with --service", names.join(", ")),
                )
            })
        }
    }
}

fn apply_nat(
    scenario: &mut Scenario,
    nat: &NatTable,
    f: &InputFile,
    spec: Option<&str>,
    nameserver: Option<IpAddr>,
    applied: &mut Applied,
) -> Result<(), InputError> {
    for n in &nat.notes {
        applied.note(n.clone());
    }
    applied.services = nat.services.iter().map(ChosenService::of).collect();
    let origin = |line: usize, what: &str| Origin { source: f.source.clone(), line, what: what.to_string() };
    match scenario {
        Scenario::Dns(s) => {
            let svc = dns_service(nat, f, spec, nameserver)?;
            let n = svc.endpoints.len() as u32;
            let what = format!("service {}", svc.address());
            s.service.endpoints = n;
            applied.set("service.endpoints", int(n), origin(svc.line, &what));
            let (selector, probabilities) = if svc.uniform() && svc.nth {
                (SelectorKind::IptablesNth, Vec::new())
            } else if svc.uniform() {
                (SelectorKind::Iptables, Vec::new())
            } else {
                applied.note(Note {
                    source: f.source.clone(),
                    line: Some(svc.line),
                    kind: NoteKind::Info,
                    message: format!(
                        "{}: endpoint shares are not uniform ({}); modelled with explicit probabilities",
                        svc.address(),
                        svc.endpoints.iter().map(|e| format!("{:.4}", e.share)).collect::<Vec<_>>().join(", ")
                    ),
                });
                (SelectorKind::Iptables, svc.rule_probabilities())
            };
            s.service.selector = selector;
            let sel = if selector == SelectorKind::IptablesNth { "iptables-nth" } else { "iptables" };
            applied.set("service.selector", toml::Value::String(sel.into()), origin(svc.line, &what));
            applied.set(
                "service.probabilities",
                toml::Value::Array(probabilities.iter().map(|&p| toml::Value::Float(p)).collect()),
                origin(svc.line, &what),
            );
            s.service.probabilities = probabilities;
            applied.service = Some(ChosenService::of(svc));
            if let Some(ns) = nameserver {
                if svc.addr != Some(ns) && ns != NODE_LOCAL_DNS {
                    applied.note(Note {
                        source: f.source.clone(),
                        line: None,
                        kind: NoteKind::Info,
                        message: format!(
                            "the resolv.conf nameserver {ns} is not the service modelled ({})",
                            svc.address()
                        ),
                    });
                }
            }
        }
        Scenario::Snat(s) => {
            match &nat.snat {
                Some(r) => {
                    let what = format!("-j {}", r.target);
                    s.snat.random = r.random;
                    s.snat.random_fully = r.random_fully;
                    applied.set("snat.random", toml::Value::Boolean(r.random), origin(r.line, &what));
                    applied.set("snat.random_fully", toml::Value::Boolean(r.random_fully), origin(r.line, &what));
                    if let Some((lo, hi)) = r.ports {
                        s.snat.port_min = lo;
                        s.snat.port_max = hi;
                        applied.set("snat.port_min", int(lo), origin(r.line, &what));
                        applied.set("snat.port_max", int(hi), origin(r.line, &what));
                    }
                    applied.snat = Some(r.clone());
                }
                None => applied.note(Note {
                    source: f.source.clone(),
                    line: None,
                    kind: NoteKind::Info,
                    message: "no MASQUERADE or SNAT rule: the snat parameters are left as they are".into(),
                }),
            }
            let nodeports: Vec<&NatService> = match spec {
                Some(spec) => {
                    let v: Vec<&NatService> = nat.services.iter().filter(|x| x.matches(spec)).collect();
                    if v.is_empty() {
                        return Err(input_error(
                            "--service",
                            None,
                            format!("`{spec}`: no such service in {}", f.source),
                        ));
                    }
                    v
                }
                None => nat.services.iter().filter(|x| x.kind == ServiceKind::NodePort).collect(),
            };
            match nodeports[..] {
                [svc] => {
                    let n = svc.endpoints.len() as u32;
                    s.backends = n;
                    applied.set("backends", int(n), origin(svc.line, &format!("service {}", svc.address())));
                    applied.service = Some(ChosenService::of(svc));
                }
                [] => {}
                _ => applied.note(Note {
                    source: f.source.clone(),
                    line: None,
                    kind: NoteKind::Info,
                    message: format!(
                        "{} NodePort services: `backends` left as it is; name one with --service",
                        nodeports.len()
                    ),
                }),
            }
        }
        _ => {}
    }
    Ok(())
}

fn apply_resolv(scenario: &mut Scenario, r: &ResolvFile, f: &InputFile, applied: &mut Applied) {
    for n in &r.notes {
        applied.note(n.clone());
    }
    let Scenario::Dns(s) = scenario else { return };
    // What the file does not say is glibc's default, not the scenario's.
    let origin = |what: &str| Origin { source: f.source.clone(), line: line_of(&f.text, what), what: what.to_string() };
    let rc = &mut s.resolv;
    rc.search = r.search.unwrap_or(0);
    rc.ndots = r.ndots.unwrap_or(1);
    rc.timeout = r.timeout.unwrap_or(5);
    rc.attempts = r.attempts.unwrap_or(2);
    rc.single_request = r.single_request;
    rc.single_request_reopen = r.single_request_reopen;
    rc.use_vc = r.use_vc;
    let values = [
        ("resolv.search", int(rc.search), "search"),
        ("resolv.ndots", int(rc.ndots), "ndots"),
        ("resolv.timeout", int(rc.timeout), "timeout"),
        ("resolv.attempts", int(rc.attempts), "attempts"),
        ("resolv.single_request", toml::Value::Boolean(rc.single_request), "single-request"),
        ("resolv.single_request_reopen", toml::Value::Boolean(rc.single_request_reopen), "single-request-reopen"),
        ("resolv.use_vc", toml::Value::Boolean(rc.use_vc), "use-vc"),
    ];
    for (key, v, what) in values {
        applied.set(key, v, origin(what));
    }
    if r.nameservers.first() == Some(&NODE_LOCAL_DNS) {
        s.mitigations.node_local_cache = true;
        applied.set("mitigations.node_local_cache", toml::Value::Boolean(true), origin("nameserver"));
        applied.note(Note {
            source: f.source.clone(),
            line: Some(line_of(&f.text, "nameserver")),
            kind: NoteKind::Info,
            message: format!("nameserver {NODE_LOCAL_DNS} is NodeLocal DNSCache: modelled as node_local_cache = true"),
        });
    }
    if r.nameservers.len() > 1 {
        applied.note(Note {
            source: f.source.clone(),
            line: None,
            kind: NoteKind::Ignored,
            message: format!("{} nameservers: racetrack models queries to the first", r.nameservers.len()),
        });
    }
}

/// The last line mentioning `word` (the one glibc would act on), or 1.
fn line_of(text: &str, word: &str) -> usize {
    text.split('\n')
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim();
            !l.starts_with('#') && !l.starts_with(';') && l.split([' ', '\t', ':']).any(|w| w == word)
        })
        .last()
        .map_or(1, |(i, _)| i + 1)
}

fn apply_sysctl(
    scenario: &mut Scenario,
    profile: &mut KernelProfile,
    settings: &[Setting],
    f: &InputFile,
    applied: &mut Applied,
) -> Result<(), InputError> {
    let mut count = 0;
    for st in settings {
        let origin = Origin { source: f.source.clone(), line: st.line, what: st.key.clone() };
        let n = match st.value {
            Value::Number(n) => n,
            Value::PortRange(lo, hi) => {
                applied.note(Note {
                    source: f.source.clone(),
                    line: Some(st.line),
                    kind: NoteKind::Ignored,
                    message: format!(
                        "{} = {lo} {hi} read but not modelled: the scenarios' clients are pods and hosts with their own range",
                        st.key
                    ),
                });
                continue;
            }
        };
        let secs = |n: u64| toml::Value::String(humantime::format_duration(Duration::from_secs(n)).to_string());
        let t = &mut profile.timeouts;
        let timeout = match st.key.strip_prefix("net.netfilter.nf_conntrack_") {
            Some("udp_timeout") => Some(("udp", &mut t.udp)),
            Some("udp_timeout_stream") => Some(("udp_stream", &mut t.udp_stream)),
            Some("icmp_timeout") => Some(("icmp", &mut t.icmp)),
            Some("tcp_timeout_syn_sent") => Some(("tcp_syn_sent", &mut t.tcp_syn_sent)),
            Some("tcp_timeout_syn_recv") => Some(("tcp_syn_recv", &mut t.tcp_syn_recv)),
            Some("tcp_timeout_established") => Some(("tcp_established", &mut t.tcp_established)),
            Some("tcp_timeout_fin_wait") => Some(("tcp_fin_wait", &mut t.tcp_fin_wait)),
            Some("tcp_timeout_close_wait") => Some(("tcp_close_wait", &mut t.tcp_close_wait)),
            Some("tcp_timeout_last_ack") => Some(("tcp_last_ack", &mut t.tcp_last_ack)),
            Some("tcp_timeout_time_wait") => Some(("tcp_time_wait", &mut t.tcp_time_wait)),
            Some("tcp_timeout_close") => Some(("tcp_close", &mut t.tcp_close)),
            _ => None,
        };
        if let Some((field, slot)) = timeout {
            *slot = Duration::from_secs(n);
            applied.set(&format!("kernel.timeouts.{field}"), secs(n), origin);
            count += 1;
            continue;
        }
        let n32 = n as u32; // KEYS bounds every number below by u32::MAX.
        match (st.key.as_str(), &mut *scenario) {
            ("net.netfilter.nf_conntrack_max", _) => {
                profile.conntrack.max = n32;
                applied.set("kernel.conntrack.max", int(n32), origin);
            }
            ("net.netfilter.nf_conntrack_buckets", _) => {
                profile.conntrack.buckets = n32;
                applied.set("kernel.conntrack.buckets", int(n32), origin);
            }
            ("net.ipv4.tcp_tw_recycle", s) => {
                if n == 1 && !profile.tcp.tw_recycle_available {
                    // The same words as the tw-recycle scenario's own check.
                    let probe = crate::tw_recycle::TwRecycleScenario::default();
                    let why = probe.check(profile).err().map(|(_, w)| w).unwrap_or_default();
                    // The check's advice is about the scenario key; this is a file.
                    let why = match why.split_once("; use") {
                        Some((gone, _)) => {
                            format!("{gone}; this file is from an older kernel: use a 4.11 or older profile")
                        }
                        None => why,
                    };
                    return Err(InputError {
                        source: f.source.clone(),
                        line: Some(st.line),
                        key: Some(st.key.clone()),
                        message: why,
                    });
                }
                let Scenario::TwRecycle(s) = s else { continue };
                s.server.tw_recycle = n == 1;
                applied.set("server.tw_recycle", toml::Value::Boolean(n == 1), origin);
            }
            ("net.ipv4.tcp_timestamps", Scenario::TwRecycle(s)) => {
                s.server.timestamps = n != 0;
                applied.set("server.timestamps", toml::Value::Boolean(n != 0), origin);
            }
            ("net.ipv4.tcp_max_syn_backlog", s) => {
                profile.tcp.max_syn_backlog = n32;
                applied.set("kernel.tcp.max_syn_backlog", int(n32), origin.clone());
                if let Scenario::SynBacklog(s) = s {
                    s.listener.tcp_max_syn_backlog = n32;
                    applied.set("listener.tcp_max_syn_backlog", int(n32), origin);
                }
            }
            ("net.core.somaxconn", s) => {
                profile.tcp.somaxconn = n32;
                applied.set("kernel.tcp.somaxconn", int(n32), origin.clone());
                if let Scenario::SynBacklog(s) = s {
                    s.listener.somaxconn = n32;
                    applied.set("listener.somaxconn", int(n32), origin);
                }
            }
            ("net.ipv4.tcp_syncookies", Scenario::SynBacklog(s)) => {
                s.listener.tcp_syncookies = n as u8;
                applied.set("listener.tcp_syncookies", int(n as u8), origin);
            }
            _ => continue,
        }
        count += 1;
    }
    applied.sysctl_applied = Some(count);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_must_be_text() {
        let e = InputFile::from_bytes("f", b"*nat\n:A - [0:0]\n\xff\n").unwrap_err();
        assert_eq!(e.to_string(), "f:3: not UTF-8 text");
        let e = InputFile::from_bytes("f", b"a = 1\n\nb\x00c\n").unwrap_err();
        assert_eq!(e.to_string(), "f:3: binary data (control character U+0000): not a text file");
        let f = InputFile::from_bytes("f", "\u{feff}*nat\r\nCOMMIT\r\n".as_bytes()).unwrap();
        assert_eq!(f.text, "*nat\r\nCOMMIT\r\n");
    }

    #[test]
    fn notes_print_as_file_line_message() {
        let n = Note {
            source: "nat.txt".into(),
            line: Some(42),
            kind: NoteKind::Ignored,
            message: "ignored -j REDIRECT (not modelled)".into(),
        };
        assert_eq!(n.to_string(), "nat.txt:42: ignored -j REDIRECT (not modelled)");
    }

    #[test]
    fn service_alone_and_misplaced_files_are_refused() {
        let mut s = Scenario::builtin("dns").unwrap();
        let mut p = KernelProfile::resolve("4.19").unwrap();
        let inputs = Inputs { service: Some("kube-system/kube-dns".into()), ..Inputs::default() };
        let e = apply_inputs(&mut s, &mut p, &inputs).unwrap_err();
        assert_eq!(e.to_string(), "--service: needs --iptables-save (it names one of its services)");
        let mut s = Scenario::builtin("snat").unwrap();
        let resolv = InputFile { source: "r".into(), text: "nameserver 10.96.0.10\n".into() };
        let e = apply_inputs(&mut s, &mut p, &Inputs { resolv_conf: Some(resolv), ..Inputs::default() }).unwrap_err();
        assert!(e.to_string().starts_with("--resolv-conf: does not apply to the snat scenario"), "{e}");
    }
}
