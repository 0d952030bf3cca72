//! Preset profiles, one per kernel version where modelled behaviour changed.
//!
//! Each preset is the previous one plus the changes that release brought, so
//! the chain below reads as a changelog. Sources and confidence for each step
//! are in `docs/reference/kernel-profiles.md`.

use std::time::Duration;

use super::*;
use crate::tuple::L4Proto;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// 3.10: clashes always dropped (only `insert_failed` moves), shared port
/// rover with an exhaustive search, `tcp_tw_recycle` with per-host timestamps.
fn v3_10() -> KernelProfile {
    KernelProfile {
        name: "3.10".into(),
        summary: "no clash resolution: every insert race drops (insert_failed only); NAT port rover; tw_recycle".into(),
        conntrack: ConntrackProfile {
            clash: ClashPolicy::Drop,
            allow_clash: vec![],
            nat_same_origin_not_taken: false,
            nat_clash_timeout: secs(1),
            chain_limit: None,
            buckets: 16384,
            max: 65536,
            early_drop_buckets: 8,
            hz: 250,
            // Timer-based conntrack: re-armed only when it moves >= HZ jiffies.
            refresh_min: secs(1),
        },
        counters: CounterSemantics {
            insert: true,
            found_on_lookup: true,
            drop_on_clash: false,
            clash_resolve: false,
            drop_on_table_full: true,
        },
        nat: NatProfile {
            default_offset: PortOffset::Rover,
            random_offset: PortOffset::SecureHash,
            search: PortSearch::Exhaustive,
            evict_closing_tcp: false,
        },
        timeouts: Timeouts {
            udp: secs(30),
            udp_stream: secs(180),
            udp_stream_after: None,
            icmp: secs(30),
            tcp_syn_sent: secs(120),
            tcp_syn_recv: secs(60),
            tcp_established: secs(5 * 24 * 3600),
            tcp_fin_wait: secs(120),
            tcp_close_wait: secs(60),
            tcp_last_ack: secs(30),
            tcp_time_wait: secs(120),
            tcp_close: secs(10),
        },
        tcp: TcpProfile {
            tw_recycle_available: true,
            paws_rejects_syn_without_timestamp: false,
            ts_offsets: TsOffsets::PerHost,
            somaxconn: 128,
            max_syn_backlog: 1024,
            paws_msl: secs(60),
            time_wait: secs(60),
        },
    }
}

fn derive(base: KernelProfile, name: &str, summary: &str, change: impl FnOnce(&mut KernelProfile)) -> KernelProfile {
    let mut p = base;
    p.name = name.into();
    p.summary = summary.into();
    change(&mut p);
    p
}

/// All presets, oldest first.
pub fn presets() -> Vec<KernelProfile> {
    let v3_10 = v3_10();
    let rhel7 = derive(
        v3_10.clone(),
        "rhel-7.8",
        "3.10.0-1127.el7: 3.10 with the 4.19 clash merge, the 5.0 NAT search and same-origin rule backported; HZ 1000",
        |p| {
            // Read in the 3.10.0-1127 source: `nf_ct_resolve_clash` merges
            // when the winner has no NAT or `nf_ct_match` holds.
            p.conntrack.clash = ClashPolicy::MergeMatching;
            p.conntrack.allow_clash = vec![L4Proto::Udp];
            p.conntrack.nat_same_origin_not_taken = true;
            p.counters.drop_on_clash = true;
            p.conntrack.buckets = 65536;
            p.conntrack.max = 262144;
            p.conntrack.hz = 1000;
            // No rover: a random start and at most 248 probes; `--random`
            // still starts at the keyed hash.
            p.nat.default_offset = PortOffset::Random;
            p.nat.search = PortSearch::Bounded { attempts: 128, min_round: 16 };
            p.tcp.paws_rejects_syn_without_timestamp = true;
        },
    );
    let v4_4 = derive(
        v3_10.clone(),
        "4.4",
        "as 3.10 (no clash resolution); PAWS also rejects SYNs without a timestamp; 65536 buckets on big hosts",
        |p| {
            p.tcp.paws_rejects_syn_without_timestamp = true;
            // 4.0 gave hosts with more than 4 GiB 65536 buckets (max_factor 4
            // as before); the presets have no 4.0 step, so it enters here.
            p.conntrack.buckets = 65536;
            p.conntrack.max = 262144;
        },
    );
    let v4_9 = derive(
        v4_4.clone(),
        "4.9",
        "UDP clash merged only if the winner has no NAT (DNAT races still drop); insert_failed counts merges too; \
         insert and found no longer counted",
        |p| {
            p.conntrack.clash = ClashPolicy::MergeWithoutNat;
            p.conntrack.allow_clash = vec![L4Proto::Udp];
            p.counters.drop_on_clash = true;
            // 4.9 dropped the per-entry timer: the expiry is written whenever it changes.
            p.conntrack.refresh_min = Duration::ZERO;
            // Confirm no longer counts `insert`, nor a lookup hit `found`
            // (both are in 4.8's `nf_conntrack_core.c`, neither in 4.9's).
            p.counters.insert = false;
            p.counters.found_on_lookup = false;
            // `early_drop` walks `reciprocal_scale(_hash++, hsize)`: eight
            // consecutive hash values scale to the same bucket, so it scans
            // one chain eight times (fixed in 4.20).
            p.conntrack.early_drop_buckets = 1;
        },
    );
    let v4_14 = derive(
        v4_9.clone(),
        "4.14",
        "as 4.9 for conntrack; tcp_tw_recycle removed, timestamps offset per address pair",
        |p| {
            p.tcp.tw_recycle_available = false;
            p.tcp.ts_offsets = TsOffsets::PerHostPair;
        },
    );
    let v4_14_173 = derive(
        v4_14.clone(),
        "4.14.173",
        "4.14 stable with the 4.19 merge of identical NATed entries and the same-origin NAT rule backported",
        |p| {
            p.conntrack.clash = ClashPolicy::MergeMatching;
            p.conntrack.nat_same_origin_not_taken = true;
        },
    );
    let v4_19 = derive(
        v4_14.clone(),
        "4.19",
        "UDP clash merged when both entries match (same DNAT endpoint); different endpoints still drop",
        |p| p.conntrack.clash = ClashPolicy::MergeMatching,
    );
    let v5_0 = derive(
        v4_19.clone(),
        "5.0",
        "NAT: random start, at most 248 probes, no rover; same-origin rule; UDP stream after 2 s, 120 s",
        |p| {
            p.conntrack.nat_same_origin_not_taken = true;
            p.timeouts.udp_stream = secs(120);
            p.timeouts.udp_stream_after = Some(secs(2));
            // a504b703bb1d + 6ed5943f8735 are in 5.0 (the 4.x stable trees
            // got them in 2022).
            bounded_random_nat(p);
            // 4.20 made early_drop step bucket by bucket again.
            p.conntrack.early_drop_buckets = 8;
        },
    );
    let v5_4 = derive(v5_0.clone(), "5.4", "as 5.0; somaxconn 4096", |p| p.tcp.somaxconn = 4096);
    // Kept so that files and commands naming it still work: 5.4 already has
    // the NAT search this name once stood for.
    let v5_4_172 = derive(v5_4.clone(), "5.4.172", "as 5.4 (its NAT search has been in mainline since 5.0)", |_| {});
    let v5_6 = derive(
        v5_4.clone(),
        "5.6",
        "a clash that cannot merge is inserted reply-only (NAT_CLASH, 1 s): DNAT races no longer drop",
        |p| p.conntrack.clash = ClashPolicy::MergeOrNatClash,
    );
    let v5_10 =
        derive(v5_6.clone(), "5.10", "clash_resolve counter: resolved clashes no longer count insert_failed", |p| {
            p.counters.clash_resolve = true
        });
    let v5_15 = derive(
        v5_10.clone(),
        "5.15",
        "chain length limit at insert (8..31, chaintoolong); buckets = max = 262144 on big hosts",
        |p| {
            p.conntrack.chain_limit = Some(ChainLimit { min: 8, spread: 24 });
            p.conntrack.buckets = 262144;
            p.conntrack.max = 262144;
        },
    );
    let v6_1 = derive(v5_15.clone(), "6.1", "as 5.15 (LTS)", |_| {});
    let v6_6 = derive(
        v6_1.clone(),
        "6.6",
        "chain length limit 50..79 (6.4); SNAT may evict a closing TCP entry in the last 32 probes (6.5)",
        |p| {
            p.conntrack.chain_limit = Some(ChainLimit { min: 50, spread: 30 });
            p.nat.evict_closing_tcp = true;
        },
    );
    let v6_12 = derive(v6_6.clone(), "6.12", "as 6.6 (LTS)", |_| {});
    vec![v3_10, rhel7, v4_4, v4_9, v4_14, v4_14_173, v4_19, v5_0, v5_4, v5_4_172, v5_6, v5_10, v5_15, v6_1, v6_6, v6_12]
}

fn bounded_random_nat(p: &mut KernelProfile) {
    p.nat.default_offset = PortOffset::Random;
    p.nat.random_offset = PortOffset::Random;
    p.nat.search = PortSearch::Bounded { attempts: 128, min_round: 16 };
}

/// The names of all presets, oldest first.
pub fn preset_names() -> Vec<String> {
    presets().into_iter().map(|p| p.name).collect()
}

/// A preset by name (`4.19`, `5.4.172`, `rhel-7.8`).
pub fn preset(name: &str) -> Option<KernelProfile> {
    presets().into_iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_validates_and_round_trips_through_toml() {
        for p in presets() {
            p.validate().unwrap_or_else(|(k, m)| panic!("{}: {k}: {m}", p.name));
            let text = p.to_toml();
            let back = KernelProfile::from_toml(&text, &p.name).unwrap();
            assert_eq!(back, p, "{} does not round-trip", p.name);
        }
    }

    /// The default table size on a 64-bit host with more than 4 GiB, by the
    /// kernel's `nf_conntrack_init_start`: 16384 buckets (max 4x) up to 3.19,
    /// 65536 (max 4x) from 4.0 (and in RHEL 7.8's backport), 262144 (max 1x)
    /// from 5.15.
    #[test]
    fn every_preset_sizes_its_table_as_its_kernel_does_on_a_big_host() {
        for p in presets() {
            let want = match p.name.as_str() {
                "3.10" => (16384, 65536),
                "5.15" | "6.1" | "6.6" | "6.12" => (262144, 262144),
                _ => (65536, 262144),
            };
            assert_eq!((p.conntrack.buckets, p.conntrack.max), want, "{}", p.name);
        }
    }

    /// The counters and NAT search each release's source shows (4.8.15
    /// against 4.9.0 for `insert` and `found`, 4.20.1 against 5.0.0 for the
    /// NAT search, 5.15.55 and 6.4.0 for the chain limit, 4.9–4.19 for the
    /// `early_drop` that scans one bucket).
    #[test]
    fn every_preset_counts_and_searches_as_its_kernel_source_does() {
        for p in presets() {
            let n = p.name.as_str();
            let old = matches!(n, "3.10" | "rhel-7.8" | "4.4");
            assert_eq!(p.counters.insert, old, "{n}: insert");
            assert_eq!(p.counters.found_on_lookup, old, "{n}: found");
            let rover = matches!(n, "3.10" | "4.4" | "4.9" | "4.14" | "4.14.173" | "4.19");
            assert_eq!(p.nat.default_offset == PortOffset::Rover, rover, "{n}: rover");
            assert_eq!(p.nat.search == PortSearch::Exhaustive, rover, "{n}: search");
            let chain = match n {
                "5.15" | "6.1" => Some((8, 24)),
                "6.6" | "6.12" => Some((50, 30)),
                _ => None,
            };
            assert_eq!(p.conntrack.chain_limit.map(|c| (c.min, c.spread)), chain, "{n}: chain limit");
            let one_bucket = matches!(n, "4.9" | "4.14" | "4.14.173" | "4.19");
            assert_eq!(p.conntrack.early_drop_buckets, if one_bucket { 1 } else { 8 }, "{n}: early drop");
        }
    }

    #[test]
    fn preset_names_are_unique() {
        let mut names = preset_names();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let mut text = preset("4.19").unwrap().to_toml();
        text = text.replacen("[conntrack]\n", "[conntrack]\nbukets = 5\n", 1);
        let err = KernelProfile::from_toml(&text, "my.toml").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("conntrack.bukets"), "{err}");
        let line = text.lines().position(|l| l.starts_with("bukets")).unwrap() + 1;
        assert_eq!(err.line, Some(line));
        assert!(err.to_string().starts_with(&format!("my.toml:{line}: ")), "{err}");
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn wrong_type_and_impossible_value_are_reported_by_key() {
        let set_max = |v: &str| {
            let text = preset("5.15").unwrap().to_toml();
            text.lines()
                .map(|l| if l.starts_with("max = ") { format!("max = {v}") } else { l.to_string() })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let err = KernelProfile::from_toml(&set_max("\"lots\""), "p.toml").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("conntrack.max"), "{err}");
        let text = set_max("0");
        let err = KernelProfile::from_toml(&text, "p.toml").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("conntrack.max"), "{err}");
        assert!(err.line.is_some());
    }
}
