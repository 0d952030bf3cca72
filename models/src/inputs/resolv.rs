//! `/etc/resolv.conf`, read as glibc's `res_init` reads it.
//!
//! Keywords start a line; `#` and `;` start a comment line. Numeric options
//! are clamped as glibc clamps them (`RES_MAXNDOTS` 15, `RES_MAXRETRANS` 30,
//! `RES_MAXRETRY` 5); options glibc does not know are ignored, as glibc
//! ignores them. A keyword glibc does not know is an error here: it is far
//! more likely a typo than a file glibc would be happy with.

use std::net::IpAddr;

use racetrack_engine::input::InputError;
use serde::Serialize;

use super::{Note, NoteKind};

/// glibc's `MAXNS`: nameservers after the third are not used.
pub const MAX_NAMESERVERS: usize = 3;
/// The most search domains the dns scenario models.
pub const MAX_SEARCH: u32 = 6;

/// What a resolv.conf sets. `None`: the file does not say (the scenario keeps its value).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ResolvFile {
    /// `nameserver` addresses, in order (at most [`MAX_NAMESERVERS`]).
    pub nameservers: Vec<IpAddr>,
    /// Number of search domains (`search`, or 1 for `domain`).
    pub search: Option<u32>,
    /// `options ndots:N`.
    pub ndots: Option<u32>,
    /// `options timeout:N`.
    pub timeout: Option<u32>,
    /// `options attempts:N`.
    pub attempts: Option<u32>,
    /// `options rotate`.
    pub rotate: bool,
    /// `options single-request`.
    pub single_request: bool,
    /// `options single-request-reopen`.
    pub single_request_reopen: bool,
    /// `options use-vc`.
    pub use_vc: bool,
    /// Clamps, ignored options and lines.
    #[serde(skip)]
    pub notes: Vec<Note>,
}

/// Options glibc knows that the dns scenario does not model.
const NOT_MODELLED: &[&str] = &[
    "edns0",
    "trust-ad",
    "no-aaaa",
    "no-check-names",
    "inet6",
    "ip6-bytestring",
    "ip6-dotint",
    "no-ip6-dotint",
    "debug",
    "no-tld-query",
    "no-reload",
    "insecure1",
    "insecure2",
];

/// Parse resolv.conf text; `source` names the file in errors and notes.
pub fn parse(text: &str, source: &str) -> Result<ResolvFile, InputError> {
    let mut out = ResolvFile::default();
    let err =
        |line: usize, message: String| InputError { source: source.to_string(), line: Some(line), key: None, message };
    let mut notes = Vec::new();
    let mut note = |kind: NoteKind, line: usize, message: String| {
        notes.push(Note { source: source.to_string(), line: Some(line), kind, message })
    };
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        let mut words = l.split_whitespace();
        let keyword = words.next().unwrap_or("");
        let args: Vec<&str> = words.take_while(|w| !w.starts_with('#') && !w.starts_with(';')).collect();
        match keyword {
            "nameserver" => {
                let Some(a) = args.first() else {
                    return Err(err(line, "`nameserver` without an address".into()));
                };
                // glibc skips an address it cannot parse; so does racetrack, aloud.
                match a.split('%').next().unwrap_or("").parse::<IpAddr>() {
                    Ok(addr) if out.nameservers.len() < MAX_NAMESERVERS => out.nameservers.push(addr),
                    Ok(_) => note(
                        NoteKind::Ignored,
                        line,
                        format!("ignored nameserver {a}: glibc uses the first {MAX_NAMESERVERS}"),
                    ),
                    Err(_) => note(NoteKind::Ignored, line, format!("ignored nameserver `{a}`: not an IP address")),
                }
            }
            "search" | "domain" => {
                // The last `search` or `domain` line wins.
                let n = if keyword == "domain" { u32::from(!args.is_empty()) } else { args.len() as u32 };
                if n > MAX_SEARCH {
                    note(
                        NoteKind::Clamped,
                        line,
                        format!("{n} search domains: racetrack models at most {MAX_SEARCH}; using {MAX_SEARCH}"),
                    );
                }
                out.search = Some(n.min(MAX_SEARCH));
            }
            "options" => {
                for opt in args {
                    options(&mut out, opt, line, &err, &mut note)?;
                }
            }
            "sortlist" => note(NoteKind::Ignored, line, "ignored sortlist (not modelled)".into()),
            _ => {
                return Err(err(
                    line,
                    format!(
                        "unknown keyword `{keyword}` (resolv.conf has nameserver, search, domain, options, sortlist)"
                    ),
                ))
            }
        }
    }
    out.notes = notes;
    Ok(out)
}

fn options(
    out: &mut ResolvFile,
    opt: &str,
    line: usize,
    err: &dyn Fn(usize, String) -> InputError,
    note: &mut dyn FnMut(NoteKind, usize, String),
) -> Result<(), InputError> {
    if let Some((name, value)) = opt.split_once(':') {
        let (slot, max, min) = match name {
            "ndots" => (&mut out.ndots, 15, 0),
            "timeout" => (&mut out.timeout, 30, 1),
            "attempts" => (&mut out.attempts, 5, 1),
            _ => {
                note(NoteKind::Ignored, line, format!("ignored option `{opt}` (glibc ignores unknown options)"));
                return Ok(());
            }
        };
        // All digits but past u64 is still a (huge) whole number: clamp it too.
        let n: u64 = match value.parse() {
            Ok(n) => n,
            Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => u64::MAX,
            Err(_) => return Err(err(line, format!("option `{opt}`: `{value}` is not a whole number"))),
        };
        let clamped = n.clamp(min, max) as u32;
        if u64::from(clamped) != n {
            let why =
                if n > max { format!("glibc caps {name} at {max}") } else { format!("racetrack needs at least {min}") };
            note(NoteKind::Clamped, line, format!("{name}:{n} clamped to {clamped} ({why})"));
        }
        *slot = Some(clamped);
        return Ok(());
    }
    match opt {
        "rotate" => {
            out.rotate = true;
            note(
                NoteKind::Ignored,
                line,
                "option rotate read but not modelled: racetrack queries one nameserver".into(),
            );
        }
        "single-request" => out.single_request = true,
        "single-request-reopen" => out.single_request_reopen = true,
        "use-vc" => out.use_vc = true,
        o if NOT_MODELLED.contains(&o) => {
            note(NoteKind::Ignored, line, format!("ignored option {o} (not modelled)"));
        }
        "ndots" | "timeout" | "attempts" => {
            return Err(err(line, format!("option `{opt}` needs a value (`{opt}:N`)")));
        }
        _ => note(NoteKind::Ignored, line, format!("ignored option `{opt}` (glibc ignores unknown options)")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_resolv_conf() {
        let text = "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n";
        let r = parse(text, "resolv.conf").unwrap();
        assert_eq!(r.nameservers, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!((r.search, r.ndots, r.timeout), (Some(3), Some(5), None));
        assert!(r.notes.is_empty());
    }

    #[test]
    fn clamps_like_glibc_and_notes_it() {
        let r = parse("options ndots:20 timeout:60 attempts:0 edns0 rotate foo:1\n", "r").unwrap();
        assert_eq!((r.ndots, r.timeout, r.attempts), (Some(15), Some(30), Some(1)));
        let notes: Vec<String> = r.notes.iter().map(|n| n.to_string()).collect();
        assert_eq!(notes.len(), 6, "{notes:?}");
        assert_eq!(notes[0], "r:1: ndots:20 clamped to 15 (glibc caps ndots at 15)");
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        let e = parse("# hi\nnameserver 10.96.0.10\noptions ndots:x\n", "r").unwrap_err();
        assert_eq!(e.to_string(), "r:3: option `ndots:x`: `x` is not a whole number");
        // Digits past u64 are clamped like any number over the cap.
        let r = parse("options ndots:99999999999999999999\n", "r").unwrap();
        assert_eq!(r.ndots, Some(15));
        let e = parse("nameservr 10.96.0.10\n", "r").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("unknown keyword `nameservr`"), "{e}");
    }
}
