//! Kernel profiles: which conntrack/NAT/TCP behaviour a kernel version has.
//!
//! A [`KernelProfile`] is plain data. Presets (see [`presets`]) stand for the
//! kernel versions where a behaviour racetrack models changed; a user who
//! wants to validate a proposed change copies a preset with
//! `racetrack profiles --show NAME`, edits one field and passes the file to
//! `--kernel`. Every field is documented in `docs/reference/profile.md`.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod presets;
pub use presets::{preset, preset_names, presets};

/// Everything racetrack needs to know about one kernel's behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelProfile {
    /// Short name (`4.19`, `5.4.172`, or anything for a custom profile).
    pub name: String,
    /// One line: what distinguishes this kernel.
    pub summary: String,
    /// Connection tracking table and confirm-time clash handling.
    pub conntrack: ConntrackProfile,
    /// Which `conntrack -S` counter moves on which outcome.
    pub counters: CounterSemantics,
    /// NAT tuple selection.
    pub nat: NatProfile,
    /// Conntrack timeouts per protocol and state.
    pub timeouts: Timeouts,
    /// TCP listener behaviour: timestamps, `tcp_tw_recycle`, backlogs.
    pub tcp: TcpProfile,
}

/// What `__nf_conntrack_confirm` does when the tuple it inserts is already present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClashPolicy {
    /// Always drop the loser (3.10 – 4.7).
    Drop,
    /// Merge a UDP loser into the winner if the winner has no NAT
    /// (71d8c47fc653 + 590b52e10d41, 4.8 – 4.18).
    MergeWithoutNat,
    /// As `merge-without-nat`, and also merge when both tuples of the two
    /// entries are equal (`nf_ct_match`, ed07d9a021df: 4.19, 4.14.173).
    MergeMatching,
    /// As `merge-matching`; when that fails and the loser's reply tuple is
    /// unique, insert it reply-only as a NAT_CLASH entry with a short fixed
    /// timeout (6a757c07e51f, 5.6+).
    MergeOrNatClash,
}

/// The per-insert chain length limit of 5.15+ (d7e7747ac5c2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainLimit {
    /// The smallest limit (kernel `MIN_CHAINLEN`, 50).
    pub min: u32,
    /// The limit is `min + random(0..spread)` per insert (kernel: 30).
    pub spread: u32,
}

/// Conntrack table sizing and clash behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackProfile {
    /// Confirm-time clash handling.
    pub clash: ClashPolicy,
    /// Protocols whose clashes may be resolved (`l4proto->allow_clash`).
    pub allow_clash: Vec<crate::tuple::L4Proto>,
    /// A NAT probe ignores a tuple held by an entry with the same original
    /// tuple (4e35c1cb9460, 5.0): two packets of one flow keep one mapping.
    pub nat_same_origin_not_taken: bool,
    /// Lifetime of a reply-only NAT_CLASH entry (`merge-or-nat-clash`; 1 s).
    #[serde(with = "humantime_serde")]
    pub nat_clash_timeout: Duration,
    /// Per-insert limit on the bucket chains walked at confirm, if any.
    pub chain_limit: Option<ChainLimit>,
    /// Hash buckets (`nf_conntrack_buckets`).
    pub buckets: u32,
    /// Maximum number of conntrack entries (`nf_conntrack_max`).
    pub max: u32,
    /// Buckets scanned for a non-assured victim when the table is full
    /// (`NF_CT_EVICTION_RANGE`, 8).
    pub early_drop_buckets: u32,
    /// Timer frequency: timeouts are kept in jiffies of `1/hz` s, so a refresh
    /// within the same jiffy writes nothing.
    pub hz: u32,
    /// A packet moves its connection's timeout only if that makes it expire
    /// at least this much later (or earlier at all). Kernels before 4.7 kept
    /// a timer per entry and re-armed it only when the new expiry was at
    /// least `HZ` jiffies (1 s) past the old one; 4.7 replaced the timer by a
    /// stored expiry, written whenever it changes (0). Absent: 0.
    #[serde(default, with = "humantime_serde")]
    pub refresh_min: Duration,
}

/// Which counter moves on which outcome (their meaning changed between versions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterSemantics {
    /// A clean insert counts `insert`.
    pub insert: bool,
    /// A lookup hit counts `found` (older kernels); otherwise `found` counts
    /// only NAT probes that found their tuple taken.
    pub found_on_lookup: bool,
    /// An unresolved clash counts `drop` as well as `insert_failed` (4.7+).
    pub drop_on_clash: bool,
    /// Resolved clashes count `clash_resolve` (5.10+). Without it a merge
    /// counts `insert_failed` and a NAT_CLASH insert counts nothing.
    pub clash_resolve: bool,
    /// A packet refused because the table is full counts `drop`.
    pub drop_on_table_full: bool,
}

/// Where a NAT port search starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortOffset {
    /// The shared per-protocol rover, written back after every search (before 6ed5943f8735).
    Rover,
    /// A keyed hash of the addresses and destination port (`secure_port`).
    SecureHash,
    /// A fresh random number.
    Random,
}

/// How many ports a NAT search may probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum PortSearch {
    /// Every port of the range; if all are taken the last candidate is used
    /// anyway and the clash surfaces at confirm.
    Exhaustive,
    /// `attempts` probes from a random offset; after a failed round, stop if
    /// the round covered the range or was smaller than `min_round`, otherwise
    /// halve and restart at a new random offset (a504b703bb1d: 128, 16 → 248 probes).
    Bounded {
        /// Probes in the first round (kernel: 128).
        attempts: u32,
        /// No new round once a round is smaller than this (kernel: 16).
        min_round: u32,
    },
}

/// NAT behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatProfile {
    /// Search start without `--random`/`--random-fully`.
    pub default_offset: PortOffset,
    /// Search start with `--random`.
    pub random_offset: PortOffset,
    /// The bound on probes.
    pub search: PortSearch,
    /// In the last quarter of a bounded search, a new TCP flow may take over
    /// a port held by a closing (TIME_WAIT or later) SNAT entry (6.5+).
    pub evict_closing_tcp: bool,
}

/// Conntrack timeouts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// UDP, no reply seen (`nf_conntrack_udp_timeout`).
    #[serde(with = "humantime_serde")]
    pub udp: Duration,
    /// UDP stream (`nf_conntrack_udp_timeout_stream`).
    #[serde(with = "humantime_serde")]
    pub udp_stream: Duration,
    /// A replied UDP flow is a stream only once this much time has passed
    /// since its first packet (d535c8a69c19, 5.0); absent: any reply makes it one.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub udp_stream_after: Option<Duration>,
    /// ICMP.
    #[serde(with = "humantime_serde")]
    pub icmp: Duration,
    /// TCP SYN_SENT.
    #[serde(with = "humantime_serde")]
    pub tcp_syn_sent: Duration,
    /// TCP SYN_RECV.
    #[serde(with = "humantime_serde")]
    pub tcp_syn_recv: Duration,
    /// TCP ESTABLISHED.
    #[serde(with = "humantime_serde")]
    pub tcp_established: Duration,
    /// TCP FIN_WAIT.
    #[serde(with = "humantime_serde")]
    pub tcp_fin_wait: Duration,
    /// TCP CLOSE_WAIT.
    #[serde(with = "humantime_serde")]
    pub tcp_close_wait: Duration,
    /// TCP LAST_ACK.
    #[serde(with = "humantime_serde")]
    pub tcp_last_ack: Duration,
    /// TCP TIME_WAIT.
    #[serde(with = "humantime_serde")]
    pub tcp_time_wait: Duration,
    /// TCP CLOSE.
    #[serde(with = "humantime_serde")]
    pub tcp_close: Duration,
}

/// How a host derives the TCP timestamps it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TsOffsets {
    /// One clock per host (≤ 4.9).
    PerHost,
    /// A random offset per connection (95a22caee396, 4.10; again from 165573e41f2f).
    PerConnection,
    /// An offset per (source, destination) address pair (28ee1b746f49).
    PerHostPair,
}

/// TCP listener and timestamp behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProfile {
    /// `net.ipv4.tcp_tw_recycle` exists (removed in 4.12 by 4396e46187ca).
    pub tw_recycle_available: bool,
    /// With tw_recycle, a SYN without a timestamp is also rejected when the
    /// peer has a recent cache entry (the 4.x `tcp_peer_is_proven` form).
    pub paws_rejects_syn_without_timestamp: bool,
    /// How this kernel, as a client, offsets the timestamps it sends.
    pub ts_offsets: TsOffsets,
    /// `net.core.somaxconn` default (128 before 5.4, then 4096).
    pub somaxconn: u32,
    /// `net.ipv4.tcp_max_syn_backlog` default.
    pub max_syn_backlog: u32,
    /// How long a peer's cached timestamp is trusted (`TCP_PAWS_MSL`, 60 s).
    #[serde(with = "humantime_serde")]
    pub paws_msl: Duration,
    /// Length of TIME_WAIT on the host (`TCP_TIMEWAIT_LEN`, 60 s).
    #[serde(with = "humantime_serde")]
    pub time_wait: Duration,
}

/// A profile that could not be loaded or is inconsistent.
pub type ProfileError = crate::input::InputError;

impl KernelProfile {
    /// Resolve `--kernel`: a preset name, or a path to a TOML profile.
    pub fn resolve(spec: &str) -> Result<KernelProfile, ProfileError> {
        if let Some(p) = preset(spec) {
            return Ok(p);
        }
        let path = Path::new(spec);
        let looks_like_file = spec.ends_with(".toml") || spec.contains('/') || path.exists();
        if !looks_like_file {
            return Err(ProfileError {
                source: spec.to_string(),
                line: None,
                key: None,
                message: format!("no such kernel preset (known: {})", preset_names().join(", ")),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| ProfileError {
            source: spec.to_string(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::from_toml(crate::input::utf8_text(spec, &bytes)?, spec)
    }

    /// Parse and validate a TOML profile; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<KernelProfile, ProfileError> {
        let profile: KernelProfile = toml::from_str(text).map_err(|e| ProfileError::from_toml(&e, text, source))?;
        profile.validate().map_err(|(key, message)| ProfileError::invalid(text, source, key, message))?;
        Ok(profile)
    }

    /// The profile as TOML, loadable by [`KernelProfile::from_toml`].
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a profile always serialises")
    }

    /// Check values no kernel could have; `Err((key, why))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let c = &self.conntrack;
        if c.buckets == 0 {
            return Err(("conntrack.buckets", "must be at least 1".into()));
        }
        if c.buckets > 1 << 26 {
            return Err(("conntrack.buckets", format!("{} is more than racetrack supports (2^26)", c.buckets)));
        }
        if c.max == 0 {
            return Err(("conntrack.max", "must be at least 1".into()));
        }
        if c.max > 1 << 28 {
            return Err(("conntrack.max", format!("{} is more than racetrack supports (2^28)", c.max)));
        }
        if c.hz == 0 || c.hz > 10_000 {
            return Err(("conntrack.hz", format!("{} is not a timer frequency (1..=10000)", c.hz)));
        }
        if let Some(l) = c.chain_limit {
            if l.min == 0 {
                return Err(("conntrack.chain_limit.min", "must be at least 1".into()));
            }
            if l.spread == 0 {
                return Err(("conntrack.chain_limit.spread", "must be at least 1 (1 means a fixed limit)".into()));
            }
        }
        if c.nat_clash_timeout.is_zero() && c.clash == ClashPolicy::MergeOrNatClash {
            return Err(("conntrack.nat_clash_timeout", "must be longer than 0s".into()));
        }
        if let PortSearch::Bounded { attempts, min_round } = self.nat.search {
            if attempts == 0 {
                return Err(("nat.search.attempts", "must be at least 1".into()));
            }
            if min_round == 0 {
                return Err(("nat.search.min_round", "must be at least 1".into()));
            }
        }
        if self.nat.evict_closing_tcp && self.nat.search == PortSearch::Exhaustive {
            return Err((
                "nat.evict_closing_tcp",
                "needs a bounded search (it applies to the last quarter of the attempts)".into(),
            ));
        }
        if self.tcp.paws_msl.is_zero() {
            return Err(("tcp.paws_msl", "must be longer than 0s".into()));
        }
        if self.tcp.somaxconn == 0 {
            return Err(("tcp.somaxconn", "must be at least 1".into()));
        }
        if self.tcp.max_syn_backlog == 0 {
            return Err(("tcp.max_syn_backlog", "must be at least 1".into()));
        }
        let t = &self.timeouts;
        for (key, d) in [
            ("timeouts.udp", t.udp),
            ("timeouts.udp_stream", t.udp_stream),
            ("timeouts.icmp", t.icmp),
            ("timeouts.tcp_syn_sent", t.tcp_syn_sent),
            ("timeouts.tcp_syn_recv", t.tcp_syn_recv),
            ("timeouts.tcp_established", t.tcp_established),
            ("timeouts.tcp_fin_wait", t.tcp_fin_wait),
            ("timeouts.tcp_close_wait", t.tcp_close_wait),
            ("timeouts.tcp_last_ack", t.tcp_last_ack),
            ("timeouts.tcp_time_wait", t.tcp_time_wait),
            ("timeouts.tcp_close", t.tcp_close),
        ] {
            if d.is_zero() {
                return Err((key, "must be longer than 0s".into()));
            }
        }
        Ok(())
    }
}
