//! The `syn-backlog` scenario: bursts of new connections against one
//! listener, whose SYN queue and accept queue overflow.
//!
//! The rules are those of `tcp_conn_request` since 4.4, with the limits of
//! the listening socket (`min(listen backlog, net.core.somaxconn)`):
//! - SYN queue (requests waiting for the client's ACK) at the limit: with
//!   `tcp_syncookies` the SYN is answered with a cookie, without it dropped;
//! - accept queue (connections waiting for `accept()`) over the limit: the
//!   SYN is dropped (`ListenOverflows`);
//! - without syncookies, a SYN is also dropped once fewer than a quarter of
//!   `tcp_max_syn_backlog` remain free in the SYN queue.
//!
//! The SYNs cross the server node's conntrack first and are accepted there,
//! so `conntrack` shows no drop: the listener's drops are in `tcp`.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

use racetrack_engine::{KernelProfile, Nanos, Tuple};
use rand::Rng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::listener::{run_listener, HostStats, ListenerReport};
use crate::node::{Node, SteeringKind};
use crate::params::Validate;
use crate::report::Prediction;
use crate::tcp::{ArrivalKind, Conn, Load, Refusal, SynAnswer, Tcp, TcpStats, Timing};

/// The listening socket and the sysctls that bound its queues.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// The `backlog` argument of `listen()`.
    pub backlog: u32,
    /// `net.core.somaxconn` (128 before 5.4, 4096 since; often raised on nodes).
    pub somaxconn: u32,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub tcp_max_syn_backlog: u32,
    /// `net.ipv4.tcp_syncookies`: 0 off, 1 when the SYN queue is full (the kernel default), 2 always.
    pub tcp_syncookies: u8,
    /// Connections the application accepts per second.
    pub accept_rate: f64,
}

/// The whole scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynBacklogScenario {
    /// Always `"syn-backlog"`.
    pub scenario: String,
    /// Seed of the run's random generator.
    pub seed: u64,
    /// The server's node.
    pub node: Node,
    /// Client hosts.
    pub clients: u32,
    /// The offered load: bursts by default.
    pub load: Load,
    /// Client TCP timing.
    pub tcp: Timing,
    /// The listener.
    pub listener: Listener,
}

impl Default for SynBacklogScenario {
    fn default() -> Self {
        Self {
            scenario: "syn-backlog".into(),
            seed: 1,
            node: Node::new(2, SteeringKind::FlowHash),
            clients: 500,
            load: Load {
                connections: 6000,
                rate: 1500.0,
                arrival: ArrivalKind::Bursts,
                burst: 1500,
                burst_spread: Duration::from_millis(2),
            },
            tcp: Timing { rtt: Duration::from_millis(5), ..Timing::default() },
            listener: Listener {
                backlog: 4096,
                somaxconn: 4096,
                tcp_max_syn_backlog: 1024,
                tcp_syncookies: 0,
                accept_rate: 50_000.0,
            },
        }
    }
}

impl Validate for SynBacklogScenario {
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if self.scenario != "syn-backlog" {
            return bad("scenario", "must be \"syn-backlog\" in a syn-backlog scenario file");
        }
        self.node.validate()?;
        self.load.validate("load")?;
        self.tcp.validate("tcp")?;
        let l = &self.listener;
        if self.clients == 0 || self.clients > 1 << 20 {
            return bad("clients", "must be 1 to 1048576");
        }
        if l.backlog == 0 {
            return bad("listener.backlog", "must be at least 1");
        }
        if l.somaxconn == 0 {
            return bad("listener.somaxconn", "must be at least 1");
        }
        if l.tcp_max_syn_backlog < 4 {
            return bad("listener.tcp_max_syn_backlog", "must be at least 4");
        }
        if l.tcp_syncookies > 2 {
            return bad("listener.tcp_syncookies", "must be 0, 1 or 2");
        }
        if !(l.accept_rate >= crate::tcp::MIN_RATE && l.accept_rate <= 1e9) {
            return bad("listener.accept_rate", "must be 0.01 to 1e9 connections per second");
        }
        Ok(())
    }
}

/// A listening socket's two queues, under the rules of `tcp_conn_request`.
#[derive(Clone, Debug)]
pub struct Queues {
    listener: Listener,
    limit: usize,
    syn_queue: usize,
    /// Arrival times of connections waiting for accept().
    accept_queue: VecDeque<Nanos>,
    app_free: Nanos,
    accept_every: Nanos,
}

impl Queues {
    /// Empty queues of `listener`.
    pub fn new(listener: &Listener) -> Self {
        Self {
            limit: listener.backlog.min(listener.somaxconn) as usize,
            listener: listener.clone(),
            syn_queue: 0,
            accept_queue: VecDeque::new(),
            app_free: 0,
            accept_every: (1e9 / listener.accept_rate) as Nanos,
        }
    }

    /// The socket's queue limit: `min(listen backlog, somaxconn)`.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// `net.ipv4.tcp_max_syn_backlog`.
    pub fn max_syn_backlog(&self) -> u32 {
        self.listener.tcp_max_syn_backlog
    }

    /// Requests in the SYN queue.
    pub fn syn_queue(&self) -> usize {
        self.syn_queue
    }

    /// Connections waiting for `accept()`.
    pub fn accept_queue(&self) -> usize {
        self.accept_queue.len()
    }

    /// The application takes connections off the accept queue, one every `accept_every`.
    pub fn drain(&mut self, now: Nanos) {
        while let Some(&t) = self.accept_queue.front() {
            let start = t.max(self.app_free);
            if start > now {
                break;
            }
            self.accept_queue.pop_front();
            self.app_free = start + self.accept_every;
        }
    }

    /// A SYN for which no request is queued yet. A [`SynAnswer::SynAck`]
    /// queues a request (complete it with [`Queues::established`]).
    pub fn syn(&mut self, now: Nanos) -> SynAnswer {
        self.drain(now);
        let l = &self.listener;
        if l.tcp_syncookies == 2 || (self.syn_queue >= self.limit && l.tcp_syncookies == 1) {
            SynAnswer::Cookie
        } else if self.syn_queue >= self.limit {
            SynAnswer::Drop(Refusal::SynQueue)
        } else if self.accept_queue.len() > self.limit {
            SynAnswer::Drop(Refusal::AcceptQueue)
        } else if l.tcp_syncookies == 0
            && (l.tcp_max_syn_backlog as usize).saturating_sub(self.syn_queue) < (l.tcp_max_syn_backlog >> 2) as usize
        {
            SynAnswer::Drop(Refusal::SynQueue)
        } else {
            self.syn_queue += 1;
            SynAnswer::SynAck
        }
    }

    /// The client's ACK completed the handshake; `queued`: it had a request
    /// in the SYN queue (not a syncookie).
    pub fn established(&mut self, now: Nanos, queued: bool) {
        self.drain(now);
        if queued {
            self.syn_queue -= 1;
        }
        self.accept_queue.push_back(now);
    }
}

struct Side<'s> {
    s: &'s SynBacklogScenario,
    /// Connections holding a request in the SYN queue.
    requests: Vec<bool>,
    queues: Queues,
    first_dropped: Vec<bool>,
}

impl Tcp for Side<'_> {
    fn open(&mut self, _i: u32, _now: Nanos, rng: &mut Pcg64Mcg) -> (u32, Tuple) {
        self.requests.push(false);
        self.first_dropped.push(false);
        let h = rng.random_range(0..self.s.clients);
        let n = h + 2;
        let src = Ipv4Addr::new(100, 64 + ((n >> 16) & 0x3f) as u8, (n >> 8) as u8, n as u8);
        (h, Tuple::tcp(src, rng.random_range(32768..=60999), Ipv4Addr::new(192, 0, 2, 10), 80))
    }

    fn syn(&mut self, now: Nanos, id: u32, c: &Conn) -> SynAnswer {
        let answer = if self.requests[id as usize] {
            self.queues.drain(now);
            SynAnswer::SynAck // a retransmitted SYN for a queued request
        } else {
            let a = self.queues.syn(now);
            self.requests[id as usize] = a == SynAnswer::SynAck;
            a
        };
        if matches!(answer, SynAnswer::Drop(_)) && c.attempt == 0 {
            self.first_dropped[id as usize] = true;
        }
        answer
    }

    fn established(&mut self, now: Nanos, id: u32, _c: &Conn) {
        let queued = std::mem::take(&mut self.requests[id as usize]);
        self.queues.established(now, queued);
    }
}

/// Run the scenario on the server's kernel profile.
pub fn run(s: &SynBacklogScenario, profile: KernelProfile) -> ListenerReport {
    let queues = Queues::new(&s.listener);
    let limit = queues.limit();
    let side = Side {
        s,
        requests: Vec::with_capacity(s.load.connections as usize),
        queues,
        first_dropped: Vec::with_capacity(s.load.connections as usize),
    };
    run_listener(
        "syn-backlog",
        s.seed,
        profile,
        &s.node,
        &s.load,
        &s.tcp,
        None,
        side,
        |side, id| side.first_dropped[id as usize],
        |side, _stats: &TcpStats, hosts: &[HostStats]| predictions(side.s, limit, hosts),
    )
}

fn predictions(s: &SynBacklogScenario, limit: usize, hosts: &[HostStats]) -> Vec<Prediction> {
    let l = &s.listener;
    let dropped: u64 = hosts.iter().map(|h| h.first_syn_dropped).sum();
    // A burst's requests stay in the SYN queue for one round trip; those
    // arriving within one round trip are in it together.
    let spread = s.load.burst_spread.as_secs_f64();
    let rtt = s.tcp.rtt.as_secs_f64();
    let in_flight = if spread <= rtt { f64::from(s.load.burst) } else { f64::from(s.load.burst) * rtt / spread };
    let (cap, why) = match l.tcp_syncookies {
        0 => {
            // A SYN is dropped once `max - qlen < max / 4`, so the queue
            // still takes the SYN that finds exactly a quarter free.
            let rule = f64::from(l.tcp_max_syn_backlog - (l.tcp_max_syn_backlog >> 2) + 1);
            let cap = rule.min(limit as f64);
            (cap, format!("min(backlog, somaxconn, ¾·tcp_max_syn_backlog + 1) = {cap}"))
        }
        _ => (f64::INFINITY, "syncookies answer a full SYN queue: no SYN-queue drops".to_string()),
    };
    let bursts = (f64::from(s.load.connections) / f64::from(s.load.burst)).ceil();
    let per_burst = (in_flight - cap).max(0.0);
    vec![Prediction {
        name: "first SYNs dropped by the listener",
        formula: format!(
            "bursts × max(0, SYNs within one RTT − cap) = {bursts} × max(0, {in_flight:.0} − cap), cap: {why}"
        ),
        predicted: bursts * per_burst.min(f64::from(s.load.burst)),
        simulated: Some(dropped as f64),
    }]
}
