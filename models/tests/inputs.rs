//! The node-file parsers: they never panic, and what they read from
//! kube-proxy-shaped chains is what those chains do.

use proptest::prelude::*;
use racetrack_engine::KernelProfile;
use racetrack_models::dns::SelectorKind;
use racetrack_models::inputs::{apply_inputs, iptables, resolv, sysctl, InputFile, Inputs};
use racetrack_models::scenario::{Scenario, BUILTINS};

const NAT: &str = include_str!("../../tests/fixtures/iptables-save.txt");
const RESOLV: &str = include_str!("../../tests/fixtures/resolv.conf");
const SYSCTL: &str = include_str!("../../tests/fixtures/sysctl.txt");

/// A kube-proxy style nat table: one service, a statistic rule per endpoint but the last.
fn chain(probabilities: &[f64]) -> String {
    let n = probabilities.len() + 1;
    let mut t = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n");
    for i in 0..n {
        t += &format!(":KUBE-SEP-{i} - [0:0]\n");
    }
    t += "-A PREROUTING -j KUBE-SERVICES\n";
    t += "-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m udp --dport 53 -j KUBE-SVC-X\n";
    for (i, p) in probabilities.iter().enumerate() {
        t += &format!("-A KUBE-SVC-X -m statistic --mode random --probability {p:.11} -j KUBE-SEP-{i}\n");
    }
    t += &format!("-A KUBE-SVC-X -j KUBE-SEP-{}\n", n - 1);
    for i in 0..n {
        t += &format!("-A KUBE-SEP-{i} -p udp -m udp -j DNAT --to-destination 10.244.0.{}:53\n", i + 2);
    }
    t + "COMMIT\n"
}

/// Every line of a text with one of them replaced, cut, or doubled.
fn mutate(text: &str, line: usize, how: u8, junk: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let i = line % lines.len();
    match how % 4 {
        0 => lines[i] = junk.to_string(),
        1 => {
            let cut = lines[i].char_indices().map(|(k, _)| k).nth(junk.len()).unwrap_or(0);
            lines[i].truncate(cut);
        }
        2 => lines.insert(i, lines[i].clone()),
        _ => lines[i] = format!("{} {junk}", lines[i]),
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(f) = InputFile::from_bytes("f", &bytes) {
            let _ = iptables::parse(&f.text, "f");
            let _ = resolv::parse(&f.text, "f");
            let _ = sysctl::parse(&f.text, "f");
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_text(text in "(\\PC|\n|\t| ){0,400}") {
        let _ = iptables::parse(&text, "f");
        let _ = resolv::parse(&text, "f");
        let _ = sysctl::parse(&text, "f");
    }

    #[test]
    fn damaged_real_files_error_or_parse_but_never_panic(
        line in 0usize..400, how in any::<u8>(), junk in "[-a-zA-Z0-9 :./\"!=]{0,40}",
    ) {
        let nat = mutate(NAT, line, how, &junk);
        if let Ok(t) = iptables::parse(&nat, "f") {
            for s in &t.services {
                let total: f64 = s.endpoints.iter().map(|e| e.share).sum();
                prop_assert!((total - 1.0).abs() < 1e-9, "{:?}", s);
            }
        }
        let _ = resolv::parse(&mutate(RESOLV, line, how, &junk), "f");
        let _ = sysctl::parse(&mutate(SYSCTL, line, how, &junk), "f");
    }

    #[test]
    fn applying_damaged_files_never_panics(line in 0usize..400, how in any::<u8>(), junk in "[-a-z0-9 :./=]{0,30}", which in 0usize..4) {
        let inputs = Inputs {
            iptables_save: Some(InputFile { source: "n".into(), text: mutate(NAT, line, how, &junk) }),
            resolv_conf: None,
            sysctl: Some(InputFile { source: "s".into(), text: mutate(SYSCTL, line, how, &junk) }),
            service: None,
        };
        let mut s = Scenario::builtin(BUILTINS[which].name).unwrap();
        let mut p = KernelProfile::resolve("4.19").unwrap();
        if apply_inputs(&mut s, &mut p, &inputs).is_ok() {
            prop_assert!(s.validate().is_ok());
            prop_assert!(p.validate().is_ok());
        }
    }

    #[test]
    fn statistic_chains_give_the_shares_they_encode(probabilities in proptest::collection::vec(0.01f64..0.99, 1..12)) {
        let t = iptables::parse(&chain(&probabilities), "f").unwrap();
        let s = &t.services[0];
        prop_assert_eq!(s.endpoints.len(), probabilities.len() + 1);
        // Rule i takes p_i of what the rules before it left.
        let mut left = 1.0;
        for (e, p) in s.endpoints.iter().zip(&probabilities) {
            let p = (p * 1e11).round() / 1e11;
            prop_assert!((e.share - left * p).abs() < 1e-9);
            left *= 1.0 - p;
        }
        prop_assert!((s.endpoints.last().unwrap().share - left).abs() < 1e-9);
        // And back: the probabilities the engine's selector is given are the file's.
        for (got, want) in s.rule_probabilities().iter().zip(&probabilities) {
            prop_assert!((got - want).abs() < 1e-8, "{} vs {}", got, want);
        }
    }
}

#[test]
fn kube_proxy_chains_are_uniform_for_any_endpoint_count() {
    for n in 1..=40usize {
        // kube-proxy's 1/(n-i), as iptables-save prints it.
        let probabilities: Vec<f64> = (0..n - 1).map(|i| 1.0 / (n - i) as f64).collect();
        let t = iptables::parse(&chain(&probabilities), "f").unwrap();
        assert_eq!(t.services[0].endpoints.len(), n);
        assert!(t.services[0].uniform(), "n = {n}");
    }
}

#[test]
fn realistic_files_set_the_dns_scenario() {
    let inputs = Inputs {
        iptables_save: Some(InputFile { source: "nat".into(), text: NAT.into() }),
        resolv_conf: Some(InputFile { source: "resolv".into(), text: RESOLV.into() }),
        sysctl: Some(InputFile { source: "sysctl".into(), text: SYSCTL.into() }),
        service: None,
    };
    let mut s = Scenario::builtin("dns").unwrap();
    let mut p = KernelProfile::resolve("4.19").unwrap();
    let applied = apply_inputs(&mut s, &mut p, &inputs).unwrap();
    let Scenario::Dns(d) = &s else { panic!("dns") };
    // kube-dns's udp/53 chain in the fixture has two endpoint rules.
    let udp53 =
        NAT.lines().filter(|l| l.starts_with("-A KUBE-SEP-") && l.contains("kube-dns:dns\" -m udp -j DNAT")).count();
    assert_eq!(d.service.endpoints as usize, udp53);
    assert_eq!((d.service.selector, d.service.probabilities.len()), (SelectorKind::Iptables, 0));
    assert_eq!((d.resolv.search, d.resolv.ndots), (3, 5));
    let max: u32 =
        SYSCTL.lines().find_map(|l| l.strip_prefix("net.netfilter.nf_conntrack_max = ")).unwrap().parse().unwrap();
    assert_eq!(p.conntrack.max, max);
    assert!(applied.ignored.iter().any(|n| n.contains("REDIRECT")), "{:?}", applied.ignored);
}
