//! `racetrack explain`: the scripted races, asserted on the structured step
//! records (what the engine answered), and the binary as a user runs it.

use std::process::{Command, Output};

use racetrack_engine::profile::preset;
use racetrack_models::explain::{explain, Answer, ConfirmResult, Event, Explanation, Race, Run, Step};
use racetrack_models::tw_recycle::PawsCheck;

fn ex(race: Race, kernel: &str) -> Explanation {
    explain(race, &preset(kernel).unwrap())
}

fn run<'e>(e: &'e Explanation, name_starts: &str) -> &'e Run {
    e.runs
        .iter()
        .find(|r| r.name.starts_with(name_starts))
        .unwrap_or_else(|| panic!("no run `{name_starts}` in {:?}", e.runs.iter().map(|r| &r.name).collect::<Vec<_>>()))
}

/// The confirm steps of a run: (cpu, result, cause).
fn confirms(r: &Run) -> Vec<(Option<usize>, ConfirmResult, Option<&'static str>)> {
    r.steps
        .iter()
        .filter_map(|s| match &s.event {
            Event::Confirm { result, cause, .. } => Some((s.cpu, *result, *cause)),
            _ => None,
        })
        .collect()
}

fn confirm_step(r: &Run, cpu: usize) -> &Step {
    r.steps.iter().find(|s| s.cpu == Some(cpu) && matches!(s.event, Event::Confirm { .. })).expect("a confirm")
}

fn counter(s: &Step, name: &str) -> u64 {
    s.counters.get(name).copied().unwrap_or(0)
}

#[test]
fn dns_on_4_14_drops_the_second_confirm_and_waits_the_resolver_timeout() {
    let e = ex(Race::DnsDnat, "4.14");
    for name in ["race, one endpoint", "race, two endpoints"] {
        let r = run(&e, name);
        assert_eq!(
            confirms(r),
            vec![(Some(0), ConfirmResult::Inserted, None), (Some(1), ConfirmResult::Dropped, Some("nat-differs"))],
            "{name}"
        );
        let lost = confirm_step(r, 1);
        assert_eq!(counter(lost, "insert_failed"), 1, "{name}");
        assert_eq!(counter(lost, "drop"), 1, "{name}: 4.7+ counts drop too");
        assert_eq!(lost.table_size, 1, "{name}: only A's entry");
        assert!(lost.check.is_some(), "{name}: the failed check is named");
        // The resolver waited its 5 s timeout, then the lookup found A's entry.
        assert!(r.steps.iter().any(|s| matches!(s.event, Event::Timeout { waited_ns: 5_000_000_000 })));
        assert!(r.outcome.latency_ns.unwrap() >= 5_000_000_000, "{name}");
        assert_eq!((r.outcome.lost, r.outcome.conntrack_drops), (1, 1));
    }
}

#[test]
fn dns_on_4_4_counts_insert_failed_only() {
    let e = ex(Race::DnsDnat, "4.4");
    let r = run(&e, "race, one endpoint");
    let lost = confirm_step(r, 1);
    assert!(matches!(lost.event, Event::Confirm { result: ConfirmResult::Dropped, cause: Some("policy"), .. }));
    assert_eq!((counter(lost, "insert_failed"), counter(lost, "drop")), (1, 0));
}

#[test]
fn dns_on_4_19_merges_one_endpoint_and_drops_two() {
    let e = ex(Race::DnsDnat, "4.19");
    let one = run(&e, "race, one endpoint");
    assert_eq!(confirms(one)[1], (Some(1), ConfirmResult::Merged, None));
    // 4.19 counts the merge as insert_failed although nothing is lost.
    assert_eq!(counter(confirm_step(one, 1), "insert_failed"), 1);
    assert_eq!(one.outcome.lost, 0);
    assert!(one.outcome.latency_ns.unwrap() < 1_000_000);
    let two = run(&e, "race, two endpoints");
    assert_eq!(confirms(two)[1], (Some(1), ConfirmResult::Dropped, Some("nat-differs")));
    // The two DNAT steps chose different endpoints.
    let eps: Vec<usize> = two
        .steps
        .iter()
        .filter_map(|s| if let Event::Dnat { index, .. } = s.event { Some(index) } else { None })
        .collect();
    assert_eq!(eps, [0, 1]);
}

#[test]
fn dns_on_5_6_inserts_a_reply_only_nat_clash_entry_for_one_second() {
    let p = preset("5.6").unwrap();
    let e = explain(Race::DnsDnat, &p);
    let r = run(&e, "race, two endpoints");
    let s = confirm_step(r, 1);
    assert!(matches!(s.event, Event::Confirm { result: ConfirmResult::NatClash, .. }));
    assert_eq!(s.table_size, 2);
    let clash: Vec<_> = s.table.iter().filter(|e| e.status.iter().any(|b| b == "NAT_CLASH")).collect();
    assert_eq!(clash.len(), 1, "{:?}", s.table);
    let limit = p.conntrack.nat_clash_timeout.as_nanos() as u64;
    assert!(clash[0].expires_in_ns <= limit && clash[0].expires_in_ns > limit / 2, "{:?}", clash[0]);
    // 5.6 counts neither insert_failed nor clash_resolve for it.
    assert!(s.counters.is_empty(), "{:?}", s.counters);
    // The AAAA answer consumes it.
    let consumed = r
        .steps
        .iter()
        .find(|s| matches!(s.event, Event::LookupHit { update: "clash-entry-consumed", .. }))
        .expect("the reply consumes the NAT_CLASH entry");
    assert_eq!(consumed.table_size, 1);
    assert_eq!(r.outcome.lost, 0);
}

#[test]
fn dns_on_5_10_counts_clash_resolve() {
    let e = ex(Race::DnsDnat, "5.10");
    let s = confirm_step(run(&e, "race, two endpoints"), 1);
    assert!(matches!(s.event, Event::Confirm { result: ConfirmResult::NatClash, .. }));
    assert_eq!(s.counters.iter().collect::<Vec<_>>(), vec![(&"clash_resolve", &1)]);
}

#[test]
fn dns_fixes_remove_the_clash() {
    let e = ex(Race::DnsDnat, "4.14");
    let reopen = run(&e, "fix: options single-request-reopen");
    assert_eq!(confirms(reopen).iter().map(|c| c.1).collect::<Vec<_>>(), [ConfirmResult::Inserted; 2]);
    assert_eq!(reopen.steps.iter().map(|s| s.table_size).max(), Some(2));
    let one = run(&e, "fix: both queries on one CPU");
    assert!(one.steps.iter().all(|s| s.cpu.is_none_or(|c| c == 0)));
    assert_eq!(confirms(one).len(), 1, "AAAA never creates an entry");
    assert!(one.steps.iter().any(|s| s.actor == "AAAA" && matches!(s.event, Event::LookupHit { dir: "original", .. })));
    for k in ["5.6", "6.6"] {
        let up = run(&e, &format!("fix: kernel {k}"));
        assert_eq!(up.kernel, k);
        assert_eq!(confirms(up)[1].1, ConfirmResult::NatClash, "{k}");
        assert_eq!(up.outcome.lost, 0);
    }
    let cache = run(&e, "fix: node-local DNS cache");
    assert!(cache.steps.iter().all(|s| matches!(s.event, Event::Untracked { .. })));
    assert!(cache.steps.iter().all(|s| s.table_size == 0 && s.counters.is_empty()));
    assert!(cache.outcome.counters.is_empty());
    // The race runs lose a query, every fix run none.
    for r in &e.runs {
        assert_eq!(r.fix, r.outcome.lost == 0, "{}", r.name);
    }
}

/// Source ports of the Snat steps of clients 1 and 2 (in step order).
fn snat_ports(r: &Run) -> Vec<(String, u16, bool)> {
    r.steps
        .iter()
        .filter_map(|s| match s.event {
            Event::Snat { port, kept_original, .. } if s.actor != "client 3" => {
                Some((s.actor.clone(), port, kept_original))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn snat_race_keeps_one_port_twice_and_random_fully_does_not() {
    let e = ex(Race::SnatPort, "4.19");
    let race = run(&e, "race (kernel");
    let ports = snat_ports(race);
    assert_eq!(ports[..2], [("client 1".into(), 40000, true), ("client 2".into(), 40000, true)]);
    let lost = confirm_step(race, 1);
    assert!(matches!(
        lost.event,
        Event::Confirm { result: ConfirmResult::Dropped, cause: Some("protocol"), taken: Some("reply") }
    ));
    assert_eq!((counter(lost, "insert_failed"), counter(lost, "drop")), (1, 1));
    // The retransmission one second later found 40000 taken and moved.
    assert_eq!(ports.len(), 3);
    assert_ne!(ports[2].1, 40000);
    assert!(race.steps.iter().any(|s| matches!(s.event, Event::Timeout { waited_ns: 1_000_000_000 })));

    let rf = run(&e, "fix: MASQUERADE --random-fully");
    let ports = snat_ports(rf);
    assert_eq!(ports.len(), 2);
    assert!(ports.iter().all(|p| !p.2), "--random-fully never keeps the port");
    assert_ne!(ports[0].1, ports[1].1);
    assert_eq!(confirms(rf).iter().map(|c| c.1).collect::<Vec<_>>(), [ConfirmResult::Inserted; 2]);
    // The chosen ports are the ones in the table's reply tuples.
    let last = rf.steps.last().unwrap();
    for (_, port, _) in &ports {
        assert!(last.table.iter().any(|e| e.reply.ends_with(&format!(":{port}"))), "{port}: {:?}", last.table);
    }

    let one = run(&e, "fix: both connections on one CPU");
    let ports = snat_ports(one);
    assert_ne!(ports[0].1, ports[1].1);
    assert_eq!(one.outcome.counters.get("found"), Some(&1), "the probe that found 40000 taken");
}

#[test]
fn snat_rover_races_both_searches_onto_one_port_until_6_1() {
    let e = ex(Race::SnatPort, "4.19");
    let held = run(&e, "race, port 40000 already in use");
    let ports = snat_ports(held);
    assert!(!ports[0].2 && !ports[1].2, "both had to search");
    assert_eq!(ports[0].1, ports[1].1, "the shared rover gives both the same start");
    assert_eq!(confirms(held)[2].1, ConfirmResult::Dropped);
    let fixed = run(&e, "fix: kernel 6.1");
    let ports = snat_ports(fixed);
    assert_ne!(ports[0].1, ports[1].1);
    assert_eq!(fixed.outcome.lost, 0);
    // A kernel without the rover has no such extra run.
    assert!(ex(Race::SnatPort, "6.1").runs.iter().all(|r| !r.name.starts_with("fix: kernel 6.1")));
}

#[test]
fn tw_recycle_rejects_the_second_host_by_paws_not_conntrack() {
    let e = ex(Race::TwRecycle, "4.9");
    let race = run(&e, "race");
    let answers: Vec<(Answer, Option<PawsCheck>)> = race
        .steps
        .iter()
        .filter_map(|s| match s.event {
            Event::Listener { answer, paws, .. } => Some((answer, paws)),
            _ => None,
        })
        .collect();
    // A is let in, then B's first SYN and its retransmissions are rejected
    // until the cached timestamp is older than 60 s.
    assert_eq!(answers[0], (Answer::SynAck, Some(PawsCheck::NotCached)));
    assert_eq!(answers[1], (Answer::DroppedPaws, Some(PawsCheck::Rejected)));
    let rejected = answers.iter().filter(|a| a.0 == Answer::DroppedPaws).count();
    assert!(rejected >= 2, "{answers:?}");
    assert_eq!(answers.last().unwrap(), &(Answer::SynAck, Some(PawsCheck::Stale)));
    let waits: Vec<u64> = race
        .steps
        .iter()
        .filter_map(|s| if let Event::Timeout { waited_ns } = s.event { Some(waited_ns / 1_000_000_000) } else { None })
        .collect();
    assert_eq!(waits[..3], [1, 2, 4], "retransmissions after 1 s, 3 s, 7 s");
    // Conntrack let every SYN through.
    assert_eq!(race.outcome.conntrack_drops, 0);
    assert!(race.steps.iter().all(|s| counter(s, "drop") == 0 && counter(s, "insert_failed") == 0));
    assert_eq!(race.outcome.lost as usize, rejected);

    for fix in ["fix: net.ipv4.tcp_tw_recycle = 0", "fix: server kernel 4.14"] {
        let r = run(&e, fix);
        assert_eq!(r.outcome.lost, 0, "{fix}");
        assert!(r.outcome.latency_ns.unwrap() < 10_000_000, "{fix}");
    }
    // On a kernel without tcp_tw_recycle the race itself does not happen.
    assert_eq!(run(&ex(Race::TwRecycle, "4.14"), "race").outcome.lost, 0);
}

fn syn_groups(r: &Run) -> Vec<(u32, u32, Answer)> {
    r.steps
        .iter()
        .filter_map(|s| match s.event {
            Event::Syns { first, last, answer, .. } => Some((first, last, answer)),
            _ => None,
        })
        .collect()
}

#[test]
fn syn_backlog_drops_are_the_listeners_and_the_fixes_avoid_them() {
    let p = preset("5.10").unwrap();
    let e = explain(Race::SynBacklog, &p);
    let race = run(&e, "race");
    let burst = p.tcp.max_syn_backlog + p.tcp.max_syn_backlog / 4;
    let groups = syn_groups(race);
    // The first wave covers the whole burst once, in order.
    let mut next = 1;
    let mut dropped = 0;
    for g in &groups {
        if g.0 != next {
            break;
        }
        next = g.1 + 1;
        if g.2.dropped() {
            dropped += g.1 - g.0 + 1;
        }
    }
    assert_eq!(next, burst + 1, "{groups:?}");
    assert!(dropped > 0, "{groups:?}");
    assert_eq!(groups[0].2, Answer::SynAck, "the first SYNs are queued");
    assert!(groups.iter().any(|g| g.2 == Answer::DroppedSynQueue));
    // Conntrack accepted all of them: once the first wave has passed, every
    // SYN has its entry (5.10 does not count `insert`).
    let wave_end = race
        .steps
        .iter()
        .find(|s| matches!(s.event, Event::Syns { last, .. } if last == burst))
        .expect("a step ends the first wave");
    assert_eq!(wave_end.table_size, burst as usize);
    assert!(!race.outcome.counters.contains_key("insert"));
    assert!(!race.outcome.counters.contains_key("drop") && !race.outcome.counters.contains_key("insert_failed"));
    assert_eq!(race.outcome.conntrack_drops, 0);
    assert_eq!(race.outcome.lost, dropped);
    // The dropped ones got in after the 1 s retransmission.
    assert!(race.outcome.latency_ns.unwrap() >= 1_000_000_000);

    for fix in ["fix: net.ipv4.tcp_max_syn_backlog = 8096", "fix: net.ipv4.tcp_syncookies = 1"] {
        let r = run(&e, fix);
        assert!(syn_groups(r).iter().all(|g| !g.2.dropped()), "{fix}");
        assert_eq!(r.outcome.lost, 0, "{fix}");
    }
    // On 4.14 somaxconn (128) is the tighter limit: raising tcp_max_syn_backlog
    // alone changes nothing, raising somaxconn alone leaves the
    // tcp_max_syn_backlog rule binding (as on 5.10), syncookies answer all.
    let old = ex(Race::SynBacklog, "4.14");
    let lost = |name: &str| run(&old, name).outcome.lost;
    assert!(lost("race") > race.outcome.lost);
    assert_eq!(lost("fix: net.ipv4.tcp_max_syn_backlog"), lost("race"));
    assert_eq!(lost("fix: net.core.somaxconn"), race.outcome.lost);
    assert_eq!(lost("fix: net.ipv4.tcp_syncookies"), 0);
}

#[test]
fn steps_are_numbered_in_time_order() {
    for race in Race::ALL {
        let e = ex(race, race.default_kernel());
        assert!(e.runs.len() >= 3, "{}: a race and fixes", race.name());
        for r in &e.runs {
            for (i, s) in r.steps.iter().enumerate() {
                assert_eq!(s.step, i + 1);
            }
            assert!(r.steps.windows(2).all(|w| w[0].at_ns <= w[1].at_ns), "{} / {}", race.name(), r.name);
        }
    }
}

// ----- the binary ------------------------------------------------------------

fn racetrack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_racetrack")).args(args).output().expect("run racetrack")
}

#[test]
fn every_race_runs_as_a_table_within_100_columns_and_as_json_lines() {
    for race in Race::names() {
        let t = racetrack(&["explain", race, "--format", "table"]);
        assert!(t.status.success(), "{race}: {}", String::from_utf8_lossy(&t.stderr));
        let text = String::from_utf8(t.stdout).unwrap();
        assert!(text.contains("CPU 0") && text.contains("| CPU 1") && text.contains("table:"), "{race}");
        for l in text.lines() {
            assert!(l.chars().count() <= 100, "{race}: {} chars: {l}", l.chars().count());
        }
        let j = racetrack(&["explain", race, "--format", "json"]);
        assert!(j.status.success());
        let mut steps = 0;
        let mut outcomes = 0;
        for l in String::from_utf8(j.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            match v["type"].as_str().unwrap() {
                "step" => {
                    steps += 1;
                    assert_eq!(v["data"]["race"], race);
                    assert!(v["data"]["event"]["kind"].is_string() && v["data"]["counters"].is_object());
                }
                "outcome" => {
                    outcomes += 1;
                    assert!(v["data"]["summary"].is_string() && v["data"]["run"].is_string());
                }
                other => panic!("unexpected record type {other}"),
            }
        }
        assert!(steps > outcomes && outcomes >= 3, "{race}: {steps} steps, {outcomes} outcomes");
    }
}

#[test]
fn the_kernel_changes_the_story_and_a_seedless_run_repeats_exactly() {
    let confirm_results = |k: &str| -> Vec<String> {
        let o = racetrack(&["explain", "dns-dnat", "--kernel", k, "--format", "json"]);
        assert!(o.status.success());
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "step" && v["data"]["run"] == "race, two endpoints (kernel ".to_string() + k + ")")
            .filter(|v| v["data"]["event"]["kind"] == "confirm")
            .map(|v| v["data"]["event"]["result"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(confirm_results("4.14"), ["inserted", "dropped"]);
    assert_eq!(confirm_results("5.6"), ["inserted", "nat-clash"]);
    let a = racetrack(&["explain", "snat-port", "--format", "table"]);
    let b = racetrack(&["explain", "snat-port", "--format", "table"]);
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn bad_race_or_kernel_exits_2_with_one_line() {
    let o = racetrack(&["explain", "dns"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    for r in Race::names() {
        assert!(err.contains(r), "{err}");
    }
    let o = racetrack(&["explain", "tw-recycle", "--kernel", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(String::from_utf8(o.stderr).unwrap().lines().count(), 1);
}

#[test]
fn a_profile_file_with_one_changed_field_changes_the_outcome() {
    // 4.19 with the 5.6 clash policy: the two-endpoint race no longer drops.
    let text = racetrack_engine::profile::preset("4.19").unwrap().to_toml();
    let changed = text.replacen("clash = \"merge-matching\"", "clash = \"merge-or-nat-clash\"", 1);
    assert_ne!(changed, text, "the preset names its clash policy");
    let dir = std::env::temp_dir().join(format!("racetrack-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proposed.toml");
    std::fs::write(&path, changed).unwrap();
    let p = racetrack_engine::KernelProfile::resolve(path.to_str().unwrap()).unwrap();
    let e = explain(Race::DnsDnat, &p);
    assert_eq!(confirms(run(&e, "race, two endpoints"))[1].1, ConfirmResult::NatClash);
    let o = racetrack(&["explain", "dns-dnat", "--kernel", path.to_str().unwrap(), "--format", "table"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8(o.stdout).unwrap().contains("NAT_CLASH, expires in"));
}
