//! `sysctl -a` output (or a `sysctl.conf`): `key = value` lines. The keys
//! racetrack models are read and checked; every other key is skipped.

use racetrack_engine::input::InputError;

/// A key racetrack reads, and the values it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A whole number in `min..=max`.
    Number {
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// Two port numbers, `low high`.
    PortRange,
}

/// The keys racetrack reads (the `net.netfilter.` ones also under their old
/// `net.nf_conntrack_max` name).
pub const KEYS: &[(&str, Kind)] = &[
    ("net.netfilter.nf_conntrack_max", Kind::Number { min: 1, max: 1 << 28 }),
    ("net.nf_conntrack_max", Kind::Number { min: 1, max: 1 << 28 }),
    ("net.netfilter.nf_conntrack_buckets", Kind::Number { min: 1, max: 1 << 26 }),
    ("net.netfilter.nf_conntrack_udp_timeout", SECS),
    ("net.netfilter.nf_conntrack_udp_timeout_stream", SECS),
    ("net.netfilter.nf_conntrack_icmp_timeout", SECS),
    ("net.netfilter.nf_conntrack_tcp_timeout_syn_sent", SECS),
    ("net.netfilter.nf_conntrack_tcp_timeout_syn_recv", SECS),
    ("net.netfilter.nf_conntrack_tcp_timeout_established", SECS),
    ("net.netfilter.nf_conntrack_tcp_timeout_fin_wait", SECS),
    ("net.netfilter.nf_conntrack_tcp_timeout_close_wait", SECS),
    ("net.netfilter.nf_conntrack_tcp_timeout_last_ack", SECS),
    ("net.netfilter.nf_conntrack_tcp_timeout_time_wait", SECS),
    ("net.netfilter.nf_conntrack_tcp_timeout_close", SECS),
    ("net.ipv4.tcp_tw_recycle", Kind::Number { min: 0, max: 1 }),
    ("net.ipv4.tcp_timestamps", Kind::Number { min: 0, max: 2 }),
    ("net.ipv4.tcp_max_syn_backlog", Kind::Number { min: 1, max: u32::MAX as u64 }),
    ("net.core.somaxconn", Kind::Number { min: 1, max: u32::MAX as u64 }),
    ("net.ipv4.tcp_syncookies", Kind::Number { min: 0, max: 2 }),
    ("net.ipv4.ip_local_port_range", Kind::PortRange),
];

/// A timeout in seconds (the kernel's `jiffies` sysctls print seconds).
const SECS: Kind = Kind::Number { min: 1, max: 10 * 365 * 24 * 3600 };

/// A value of a key racetrack reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// A number.
    Number(u64),
    /// A port range.
    PortRange(u16, u16),
}

/// One key racetrack reads, with its value and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Its name with dots (`net/core/somaxconn` is read as `net.core.somaxconn`).
    pub key: String,
    /// The value.
    pub value: Value,
    /// 1-based line.
    pub line: usize,
}

/// Parse `sysctl -a` text: the keys of [`KEYS`], each at its last setting.
pub fn parse(text: &str, source: &str) -> Result<Vec<Setting>, InputError> {
    let mut out: Vec<Setting> = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let l = raw.trim();
        // `sysctl -a 2>&1` mixes in its complaints about unreadable keys.
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') || l.starts_with("sysctl:") {
            continue;
        }
        let err = |key: Option<&str>, message: String| InputError {
            source: source.to_string(),
            line: Some(line),
            key: key.map(str::to_string),
            message,
        };
        let Some((key, value)) = l.split_once('=') else {
            return Err(err(None, format!("`{}` is not `key = value`", l.chars().take(60).collect::<String>())));
        };
        // `-key = value` in sysctl.conf: ignore errors setting it; the value still counts.
        let key = key.trim().trim_start_matches('-').replace('/', ".");
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(err(None, format!("`{}` is not a sysctl key", key.chars().take(60).collect::<String>())));
        }
        let Some(&(_, kind)) = KEYS.iter().find(|(k, _)| *k == key) else { continue };
        let value = value.trim();
        let number = |v: &str| v.parse::<u64>().ok();
        let value = match kind {
            Kind::Number { min, max } => match number(value) {
                Some(n) if (min..=max).contains(&n) => Value::Number(n),
                Some(_) => return Err(err(Some(&key), format!("`{value}` is not in {min}..={max}"))),
                None => return Err(err(Some(&key), format!("`{value}` is not a whole number"))),
            },
            Kind::PortRange => {
                let parts: Vec<&str> = value.split_whitespace().collect();
                let ports: Vec<Option<u16>> = parts.iter().map(|p| p.parse::<u16>().ok().filter(|&p| p > 0)).collect();
                match ports[..] {
                    [Some(lo), Some(hi)] if lo <= hi => Value::PortRange(lo, hi),
                    _ => {
                        return Err(err(Some(&key), format!("`{value}` is not two ports `LOW HIGH` with LOW <= HIGH")))
                    }
                }
            }
        };
        let key = if key == "net.nf_conntrack_max" { "net.netfilter.nf_conntrack_max".to_string() } else { key };
        out.retain(|s| s.key != key);
        out.push(Setting { key, value, line });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_modelled_keys_and_skips_the_rest() {
        let text = "kernel.pid_max = 4194304\nnet.core.somaxconn = 4096\nnet.ipv4.ip_local_port_range = 32768\t60999\n\
                    net/netfilter/nf_conntrack_max = 262144\nnet.core.somaxconn=8192\n";
        let s = parse(text, "s").unwrap();
        let got: Vec<(&str, Value, usize)> = s.iter().map(|s| (s.key.as_str(), s.value, s.line)).collect();
        assert_eq!(
            got,
            vec![
                ("net.ipv4.ip_local_port_range", Value::PortRange(32768, 60999), 3),
                ("net.netfilter.nf_conntrack_max", Value::Number(262144), 4),
                ("net.core.somaxconn", Value::Number(8192), 5),
            ]
        );
    }

    #[test]
    fn bad_values_name_line_and_key() {
        let e = parse("a = 1\nnet.core.somaxconn = lots\n", "s").unwrap_err();
        assert_eq!(e.to_string(), "s:2: key `net.core.somaxconn`: `lots` is not a whole number");
        let e = parse("net.ipv4.tcp_tw_recycle = 2\n", "s").unwrap_err();
        assert_eq!(e.to_string(), "s:1: key `net.ipv4.tcp_tw_recycle`: `2` is not in 0..=1");
        let e = parse("net.ipv4.ip_local_port_range = 60999 32768\n", "s").unwrap_err();
        assert!(e.to_string().starts_with("s:1: key `net.ipv4.ip_local_port_range`:"), "{e}");
        assert_eq!(parse("just words\n", "s").unwrap_err().line, Some(1));
    }
}
