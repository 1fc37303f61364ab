//! Soak: many sessions back to back and concurrently through three `musig2-node run` daemons on
//! loopback (a plain binary, `harness = false`; never part of `cargo test`).
//!
//! Each daemon is a real process with its own directory, key and session store
//! (`DIR/sessions.redb`), bootstrapped off the first one, keeping finished sessions under
//! `--keep-finished 1h --max-finished N` (the count bound is the one that bites). The bench
//! speaks the daemons' control protocol (`musig2_node::control`, what the CLI sends) over their
//! Unix sockets: `create` on one daemon (the creator rotates; mesh and star alternate), `join` on
//! the two others, then `wait` on all three; every signature is checked with
//! `secp256k1::schnorr::verify` under the session's output key, and the three must agree.
//!
//! While it runs it samples each daemon's resident memory (`/proc/PID/status` VmRSS), open file
//! descriptors (`/proc/PID/fd`), sessions held (`list` over the control socket) and store size (`sessions.redb`). After the warm-up every figure must stay within
//! the bounds printed at the end (see BENCHMARKS.md, "Soak"); the bench exits non-zero if one
//! does not.
//!
//! ```text
//! cargo build --release -p musig2-node
//! cargo bench -p musig2-benches --bench soak
//! SOAK_SESSIONS=2000 SOAK_CONCURRENCY=8 cargo bench -p musig2-benches --bench soak
//! ```
//!
//! Settings (environment): `SOAK_SESSIONS` (10000), `SOAK_CONCURRENCY` (sessions in flight,
//! 12), `SOAK_MAX_FINISHED` (256), `SOAK_BIN` (the daemon binary; default
//! `target/release/musig2-node`), `SOAK_NETNS=1`: each daemon in its own network namespace on
//! a bridge in 198.51.100.192/26 (as root; the namespaces are removed at the end), instead of
//! all three on loopback.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use musig2_node::control::{self, Request, TopologyName};
use secp256k1::{XOnlyPublicKey, schnorr};
use serde_json::Value;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One `musig2-node run` process.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    key: String,
    peer: String,
    address: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts `run` on `dir`, inside network namespace `netns` when given (listening on every
    /// interface there; others bootstrap off its 198.51.100.x address) or on loopback.
    fn start(
        bin: &Path,
        dir: &Path,
        netns: Option<&str>,
        bootstrap: Option<&str>,
        max_finished: usize,
    ) -> Self {
        let keys = Command::new(bin)
            .env_remove("MUSIG2_DIR")
            .arg("--dir")
            .arg(dir)
            .args(["--json", "keygen"])
            .output()
            .expect("keygen");
        assert!(keys.status.success(), "keygen: {keys:?}");
        let log = std::fs::File::create(dir.with_extension("log")).expect("log file");
        let (mut command, listen, reach) = match netns {
            // `ip netns exec` execs the daemon: the child's pid is the daemon's.
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(bin);
                (command, "/ip4/0.0.0.0/tcp/4001", "/ip4/198.51.100.")
            }
            None => (Command::new(bin), "/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/"),
        };
        command
            .env_remove("MUSIG2_DIR")
            .env("RUST_LOG", "warn")
            .arg("--dir")
            .arg(dir)
            .args(["--json", "run", "--listen", listen])
            .args(["--keep-finished", "1h"])
            .args(["--max-finished", &max_finished.to_string()]);
        if let Some(peer) = bootstrap {
            command.args(["--bootstrap", peer]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start musig2-node run");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("start line");
        let started: Value = serde_json::from_str(&first).expect("JSON start line");
        assert_eq!(started["event"], "started", "{started}");
        // The daemon prints every event; keep reading so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = [0u8; 64 * 1024];
            while matches!(stdout.read(&mut sink), Ok(n) if n > 0) {}
        });
        let text = |v: &Value| v.as_str().expect("string field").to_owned();
        Self {
            child,
            dir: dir.to_owned(),
            socket: PathBuf::from(text(&started["control"])),
            key: text(&started["public_key"]),
            peer: text(&started["peer_id"]),
            address: started["addresses"]
                .as_array()
                .expect("addresses")
                .iter()
                .filter_map(Value::as_str)
                .find(|a| a.starts_with(reach))
                .expect("an address others reach")
                .to_owned(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// What one daemon looked like at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    rss_kib: u64,
    fds: u64,
    held: u64,
    store_bytes: u64,
}

fn usage(daemon: &Daemon, held: u64) -> Usage {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let store_bytes = std::fs::metadata(daemon.dir.join("sessions.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    Usage {
        rss_kib,
        fds,
        held,
        store_bytes,
    }
}

/// Sessions the daemon holds (running and finished), as `session list` shows them.
async fn sessions_held(daemon: &Daemon) -> u64 {
    let list = call(
        &daemon.socket,
        Request::List {
            phase: None,
            waiting_for_me: false,
            since_secs: None,
        },
    )
    .await;
    list["sessions"].as_array().map_or(0, |s| s.len() as u64)
}

/// Three network namespaces on one bridge (in a fourth), 198.51.100.193-195/26; removed (with
/// every process in them) on drop.
struct Netns {
    names: Vec<String>,
}

impl Netns {
    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn create() -> Result<Self, String> {
        let prefix = format!("m2s-{}", std::process::id());
        let switch = format!("{prefix}-sw");
        let mut netns = Self {
            names: vec![switch.clone()],
        };
        Self::ip(&["netns", "add", &switch])?;
        Self::ip(&["-n", &switch, "link", "add", "sw0", "type", "bridge"])?;
        Self::ip(&["-n", &switch, "link", "set", "sw0", "up"])?;
        for i in 0..3 {
            let ns = format!("{prefix}-d{i}");
            Self::ip(&["netns", "add", &ns])?;
            netns.names.push(ns.clone());
            let port = format!("p{i}");
            Self::ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            Self::ip(&["-n", &switch, "link", "set", &port, "master", "sw0", "up"])?;
            let addr = format!("198.51.100.{}/26", 193 + i);
            Self::ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            Self::ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            Self::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(netns)
    }

    fn daemon(&self, i: usize) -> &str {
        &self.names[i + 1]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.names {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Self::ip(&["netns", "del", ns]);
        }
    }
}

struct Sample {
    at: Duration,
    done: usize,
    daemons: Vec<Usage>,
}

async fn call(socket: &Path, request: Request) -> Value {
    control::call(socket, &request)
        .await
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

/// One session: created on `creator`, joined by the others, waited for on all three; returns
/// the time from `create` to the last signature.
async fn one_session(daemons: &[Daemon], i: usize) -> Duration {
    let creator = i % daemons.len();
    let message = format!("soak session {i}");
    let started = Instant::now();
    let created = call(
        &daemons[creator].socket,
        Request::Create {
            signers: daemons.iter().map(|d| d.key.clone()).collect(),
            peers: daemons.iter().map(|d| Some(d.peer.clone())).collect(),
            message_hex: Some(hex::encode(message.as_bytes())),
            messages: Vec::new(),
            document_digest: None,
            topology: if i % 2 == 0 {
                TopologyName::Mesh
            } else {
                TopologyName::Star
            },
            commitments: None,
            tweaks: Vec::new(),
            taproot: None,
            join_timeout_secs: Some(120),
            max_failovers: None,
        },
    )
    .await;
    let session = created["session"].as_str().expect("session").to_owned();
    let key = XOnlyPublicKey::from_str(created["output_key"].as_str().expect("output key"))
        .expect("x-only key");
    let joins = daemons
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != creator)
        .map(|(_, d)| {
            call(
                &d.socket,
                Request::Join {
                    session: session.clone(),
                },
            )
        });
    futures::future::join_all(joins).await;
    let waits = daemons.iter().map(|d| {
        call(
            &d.socket,
            Request::Wait {
                session: session.clone(),
                timeout_secs: Some(120),
            },
        )
    });
    let signatures: Vec<String> = futures::future::join_all(waits)
        .await
        .iter()
        .map(|v| v["signature"].as_str().expect("signature").to_owned())
        .collect();
    let elapsed = started.elapsed();
    assert!(
        signatures.windows(2).all(|w| w[0] == w[1]),
        "session {session}: {signatures:?}"
    );
    let signature = schnorr::Signature::from_str(&signatures[0]).expect("signature hex");
    schnorr::verify(&signature, message.as_bytes(), &key).expect("a valid BIP340 signature");
    elapsed
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let sessions = env_usize("SOAK_SESSIONS", 10_000);
    let concurrency = env_usize("SOAK_CONCURRENCY", 12).max(1);
    let max_finished = env_usize("SOAK_MAX_FINISHED", 256);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = std::env::var_os("SOAK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/musig2-node"));
    if !bin.exists() {
        eprintln!(
            "soak: no daemon binary at {} (run `cargo build --release -p musig2-node` first, or \
             set SOAK_BIN)",
            bin.display()
        );
        std::process::exit(2);
    }
    let base = std::env::temp_dir().join(format!("musig2-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("base dir");

    let netns = if std::env::var("SOAK_NETNS").is_ok_and(|v| v == "1") {
        match Netns::create() {
            Ok(netns) => Some(netns),
            Err(e) => {
                eprintln!(
                    "soak: cannot make network namespaces (root with CAP_NET_ADMIN needed): {e}"
                );
                std::process::exit(2);
            }
        }
    } else {
        None
    };
    let ns = |i: usize| netns.as_ref().map(|n| n.daemon(i));
    let first = Daemon::start(&bin, &base.join("d0"), ns(0), None, max_finished);
    let bootstrap = first.address.clone();
    let mut daemons = vec![first];
    for i in 1..3 {
        daemons.push(Daemon::start(
            &bin,
            &base.join(format!("d{i}")),
            ns(i),
            Some(&bootstrap),
            max_finished,
        ));
    }
    for d in &daemons {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = call(&d.socket, Request::Info).await;
            if info["connected_peers"]["count"].as_u64() >= Some(2) {
                break;
            }
            assert!(Instant::now() < deadline, "daemons did not connect: {info}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "soak: {sessions} sessions, {concurrency} in flight, 3 daemons ({}) {}, \
         --max-finished {max_finished}",
        bin.display(),
        if netns.is_some() {
            "in network namespaces on 198.51.100.192/26"
        } else {
            "on loopback"
        }
    );

    let daemons = Arc::new(daemons);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (daemons, next, done) = (daemons.clone(), next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= sessions {
                    return latencies;
                }
                latencies.push(one_session(&daemons, i).await);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let sampler = {
        let (daemons, done) = (daemons.clone(), done.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let finished = done.load(Ordering::Relaxed);
                let mut held = Vec::new();
                for d in daemons.iter() {
                    held.push(sessions_held(d).await);
                }
                let daemons = daemons.clone();
                let usages = tokio::task::spawn_blocking(move || {
                    daemons
                        .iter()
                        .zip(held)
                        .map(|(d, held)| usage(d, held))
                        .collect::<Vec<_>>()
                })
                .await
                .expect("sample");
                samples.push(Sample {
                    at: started.elapsed(),
                    done: finished,
                    daemons: usages,
                });
                if finished >= sessions {
                    return samples;
                }
            }
        })
    };
    let mut latencies = Vec::with_capacity(sessions);
    for worker in workers {
        latencies.extend(worker.await.expect("worker"));
    }
    let wall = started.elapsed();
    let samples = sampler.await.expect("sampler");
    latencies.sort();

    println!();
    println!(
        "{} sessions in {:.1} s: {:.1} sessions/s",
        latencies.len(),
        wall.as_secs_f64(),
        latencies.len() as f64 / wall.as_secs_f64()
    );
    println!(
        "latency create -> all three hold the signature: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} \
         ms, max {:.1} ms",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(percentile(&latencies, 100.0)),
    );
    println!();
    println!(
        "{:>7} {:>7}  {:>26}  {:>14}  {:>17}  {:>26}",
        "t (s)", "done", "RSS MiB (d0 d1 d2)", "fds", "sessions held", "store KiB"
    );
    let step = (samples.len() / 20).max(1);
    for (k, s) in samples.iter().enumerate() {
        if k % step != 0 && k + 1 != samples.len() {
            continue;
        }
        let col =
            |f: &dyn Fn(&Usage) -> String| s.daemons.iter().map(f).collect::<Vec<_>>().join(" ");
        println!(
            "{:>7.0} {:>7}  {:>26}  {:>14}  {:>17}  {:>26}",
            s.at.as_secs_f64(),
            s.done,
            col(&|u| format!("{:.1}", u.rss_kib as f64 / 1024.0)),
            col(&|u| u.fds.to_string()),
            col(&|u| u.held.to_string()),
            col(&|u| (u.store_bytes / 1024).to_string()),
        );
    }

    // Bounds after warm-up (the first tenth of the sessions, and at least the first
    // max_finished sessions per daemon so retention is full): each figure, per daemon,
    // compared with its value at the end of the warm-up.
    let warm = (sessions / 10).max(3 * max_finished).min(sessions);
    let warmed: Vec<&Sample> = samples.iter().filter(|s| s.done >= warm).collect();
    let mut failed = Vec::new();
    if warmed.len() < 2 {
        println!("\n(too few samples after the warm-up to check bounds; run more sessions)");
    } else {
        let base_sample = warmed[0];
        println!("\nafter warm-up ({warm} sessions), per daemon (max over the run after it):");
        for d in 0..3 {
            let at_warm = base_sample.daemons[d];
            let max =
                |f: fn(&Usage) -> u64| warmed.iter().map(|s| f(&s.daemons[d])).max().unwrap_or(0);
            let rss = max(|u| u.rss_kib);
            let fds = max(|u| u.fds);
            let held = max(|u| u.held);
            let store = max(|u| u.store_bytes);
            println!(
                "  d{d}: RSS {:.1} -> max {:.1} MiB, fds {} -> max {}, held max {}, store {} -> \
                 max {} KiB",
                at_warm.rss_kib as f64 / 1024.0,
                rss as f64 / 1024.0,
                at_warm.fds,
                fds,
                held,
                at_warm.store_bytes / 1024,
                store / 1024
            );
            // Documented bounds (BENCHMARKS.md, "Soak").
            if rss > at_warm.rss_kib + at_warm.rss_kib / 2 + 16 * 1024 {
                failed.push(format!(
                    "d{d}: RSS grew past 1.5x + 16 MiB of its warm-up value"
                ));
            }
            if fds > at_warm.fds + 32 {
                failed.push(format!("d{d}: open fds grew by more than 32"));
            }
            if held > (max_finished + 3 * concurrency) as u64 {
                failed.push(format!(
                    "d{d}: held {held} sessions, over max_finished + 3 x in flight"
                ));
            }
            if store > 2 * at_warm.store_bytes + 1024 * 1024 {
                failed.push(format!(
                    "d{d}: store grew past 2x + 1 MiB of its warm-up size"
                ));
            }
        }
    }
    drop(daemons);
    drop(netns);
    let _ = std::fs::remove_dir_all(&base);
    if failed.is_empty() {
        println!("\nbounds: all held");
    } else {
        for f in &failed {
            println!("bound broken: {f}");
        }
        std::process::exit(1);
    }
}
