//! Durable sessions through the binary: `run` daemons on loopback with their own directories,
//! one SIGKILLed mid-session and started again on the same directory; and the session verbs
//! that go with the store (`list` filters, `export`/`import`, `prune`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use secp256k1::{XOnlyPublicKey, schnorr};
use serde_json::Value;

mod common;

use common::{BIN, Out, scrape};

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("restart", name)
}

fn cli(dir: &Path, args: &[&str]) -> Out {
    let out = Command::new(BIN)
        .env_remove("MUSIG2_DIR")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A `musig2-node --json run` process.
struct Running {
    child: Child,
    started: Value,
}

impl Running {
    /// Starts `run` on `dir` listening on a free loopback port, bootstrapping from `peers`;
    /// its log goes to `DIR/../NAME.log` (appended, so a restart keeps the first run's).
    fn start(dir: &Path, peers: &[&Running], extra: &[&str]) -> Self {
        let log_path = dir.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let mut command = Command::new(BIN);
        command
            .env("MUSIG2_DIR", dir)
            .env("RUST_LOG", "info")
            .args(["--json", "run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(extra);
        for peer in peers {
            command.arg("--bootstrap").arg(peer.address());
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the node prints its start line");
        let started: Value = serde_json::from_str(&first).expect("JSON line");
        assert_eq!(started["event"], "started", "{started}");
        // Keep reading so the node never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        Self { child, started }
    }

    /// The loopback address others bootstrap from.
    fn address(&self) -> String {
        self.started["addresses"]
            .as_array()
            .expect("addresses")
            .iter()
            .filter_map(Value::as_str)
            .find(|a| a.starts_with("/ip4/127.0.0.1/"))
            .expect("a loopback address")
            .to_owned()
    }

    /// Sends the process `signal` (`STOP`, `CONT`).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGKILL: no shutdown, no goodbye to the peers.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node directory with fresh keys; returns (directory, public key, peer id).
fn keygen(base: &Path, name: &str) -> (PathBuf, String, String) {
    let dir = base.join(name);
    let keys = cli(&dir, &["--json", "keygen"]).ok();
    let text = |k: &str| keys[k].as_str().expect("key field").to_owned();
    (dir, text("public_key"), text("peer_id"))
}

/// Polls `check` every 50 ms until it gives a value, panicking after `limit`.
fn poll<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn connected(dir: &Path, peers: usize) {
    poll("connections", Duration::from_secs(15), || {
        let info = cli(dir, &["--json", "info"]).ok();
        (info["connected_peers"]["count"].as_u64() >= Some(peers as u64)).then_some(())
    });
}

/// Waits until `dir`'s node has seen `joined` joins of `session`. A join leaves a node only
/// once it is in the node's store, so a join seen elsewhere survives a SIGKILL (`session join`
/// returns before the store commit; see the final report).
fn joins_seen(dir: &Path, session: &str, joined: u64) {
    poll("the join to arrive", Duration::from_secs(10), || {
        (status(dir, session)["joined"].as_u64() >= Some(joined)).then_some(())
    });
}

/// Waits until Carol's join has reached a signer that needs it: in mesh everyone, so Alice; in
/// star the coordinator alone (ADR 0019). A quiet star coordinator sends its join to nobody:
/// if Carol is the coordinator there is nothing to wait for (`session join` returned once her
/// join was stored).
fn carol_join_arrived(signers: &[Signer; 3], session: &str, topology: &str) {
    let creator = status(&signers[0].dir, session);
    let coordinator = creator["coordinator"].as_u64().expect("coordinator");
    match (topology, coordinator) {
        ("star", 2) => {}
        // Bob has not joined: Carol's is the one join he holds.
        ("star", 1) => joins_seen(&signers[1].dir, session, 1),
        _ => joins_seen(&signers[0].dir, session, 2),
    }
}

fn status(dir: &Path, session: &str) -> Value {
    cli(dir, &["--json", "session", "status", session]).ok()
}

struct Signer {
    dir: PathBuf,
    key: String,
    peer: String,
}

/// Creates a session of the three signers on `creator` (signer #0); returns (session id,
/// output key).
fn create(signers: &[Signer; 3], topology: &str, text: &str, join: &str) -> (String, String) {
    let mut args = vec!["--json", "session", "create"];
    for s in signers {
        args.extend(["--signer", &s.key]);
    }
    for s in signers {
        args.extend(["--peer", &s.peer]);
    }
    args.extend([
        "--message-text",
        text,
        "--topology",
        topology,
        "--join-timeout",
        join,
    ]);
    let created = cli(&signers[0].dir, &args).ok();
    (
        created["session"].as_str().expect("session").to_owned(),
        created["output_key"].as_str().expect("key").to_owned(),
    )
}

fn three(base: &Path) -> [Signer; 3] {
    ["alice", "bob", "carol"].map(|name| {
        let (dir, key, peer) = keygen(base, name);
        Signer { dir, key, peer }
    })
}

#[test]
fn a_signer_killed_mid_session_resumes_on_restart_and_everyone_signs() {
    kill_and_resume("resume", false);
}

/// Bob joins while Carol is down, so Alice and Bob are in the commitment round when she comes
/// back at attempt 1: Alice's attempt-1 commitment may reach Bob before Carol's `Restart` does
/// (it then waits at Bob for the restart instead of being dropped).
#[test]
fn a_signer_killed_while_the_others_start_the_rounds_resumes_and_everyone_signs() {
    kill_and_resume("rounds", true);
}

fn kill_and_resume(name: &str, bob_joins_while_carol_is_down: bool) {
    let started = Instant::now();
    let base = temp_dir(name);
    let signers = three(&base);
    let [a, b, c] = &signers;
    let alice = Running::start(&a.dir, &[], &["--metrics", "127.0.0.1:0"]);
    let bob = Running::start(&b.dir, &[&alice], &[]);
    let mut carol = Running::start(&c.dir, &[&alice, &bob], &[]);
    assert_eq!(carol.started["resumed_sessions"]["count"], 0);
    connected(&c.dir, 2);

    for (round, topology) in ["mesh", "star"].into_iter().enumerate() {
        let text = format!("restart {topology}");
        let (session, output_key) = create(&signers, topology, &text, "2m");
        // Carol joins; the session cannot go on before Bob joins, so Carol is killed
        // mid-session for certain: joined (stored), nothing signed.
        cli(&c.dir, &["--json", "session", "join", &session]).ok();
        carol_join_arrived(&signers, &session, topology);
        carol.kill();
        if bob_joins_while_carol_is_down {
            // Alice and Bob start the rounds and wait for her.
            cli(&b.dir, &["--json", "session", "join", &session]).ok();
        }
        if bob_joins_while_carol_is_down {
            carol = Running::start(&c.dir, &[&alice, &bob], &[]);
        } else {
            // Carol starts again at attempt 1 (she may have sent a nonce before she died).
            // Alice, in the commitment round since she created the session, answers the
            // `Restart` with her commitment of the new attempt, which Bob drops unless he has
            // seen the `Restart` first (see the ignored test above): Alice is paused until he
            // has. Then Bob joins, and the rounds run at attempt 1.
            alice.signal("STOP");
            carol = Running::start(&c.dir, &[&bob], &[]);
            poll("bob follows the restart", Duration::from_secs(10), || {
                (status(&b.dir, &session)["attempt"].as_u64() > Some(0)).then_some(())
            });
            alice.signal("CONT");
            poll("alice follows the restart", Duration::from_secs(10), || {
                (status(&a.dir, &session)["attempt"].as_u64() > Some(0)).then_some(())
            });
            cli(&b.dir, &["--json", "session", "join", &session]).ok();
        }
        assert!(
            carol.started["resumed_sessions"]["count"].as_u64() >= Some(round as u64 + 1),
            "{}",
            carol.started
        );
        assert!(
            carol.started["resumed_sessions"]["unfinished"].as_u64() >= Some(1),
            "{}",
            carol.started
        );
        let key = XOnlyPublicKey::from_str(&output_key).expect("key");
        let mut signatures = Vec::new();
        for s in &signers {
            let done = cli(
                &s.dir,
                &["--json", "session", "wait", &session, "--timeout", "20"],
            );
            if done.code != 0 {
                let states: Vec<Value> = signers.iter().map(|s| status(&s.dir, &session)).collect();
                let log = std::fs::read_to_string(c.dir.with_extension("log")).unwrap_or_default();
                panic!(
                    "{topology}: {} did not sign: {}\nstatus: {states:#?}\ncarol's log: {log}",
                    s.dir.display(),
                    done.stdout
                );
            }
            let done = done.json();
            let signature = schnorr::Signature::from_str(done["signature"].as_str().expect("sig"))
                .expect("hex");
            schnorr::verify(&signature, text.as_bytes(), &key).expect("valid signature");
            signatures.push(signature);
        }
        assert!(signatures.windows(2).all(|w| w[0] == w[1]), "{topology}");
        // Carol started again at a new attempt: her status says so.
        let carol_status = status(&c.dir, &session);
        assert_eq!(carol_status["phase"], "done", "{carol_status}");
        assert!(
            carol_status["attempt"].as_u64() >= Some(1),
            "{carol_status}"
        );

        // Her transcript verifies offline: valid signature, nobody provably to blame.
        let file = base.join(format!("{topology}.transcript"));
        let exported = cli(
            &c.dir,
            &[
                "--json",
                "session",
                "export",
                &session,
                "--out",
                file.to_str().expect("utf-8"),
            ],
        )
        .ok();
        assert_eq!(exported["finished"], true, "{exported}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let report = cli(
            &c.dir,
            &["--json", "verify-transcript", file.to_str().expect("utf-8")],
        )
        .ok();
        assert_eq!(report["valid"], true, "{report}");
        assert_eq!(report["signature"]["valid"], true, "{report}");
        assert_eq!(report["proofs"], serde_json::json!([]), "{report}");
        assert_eq!(report["exporter"], 2, "{report}");
    }
    let log = std::fs::read_to_string(c.dir.with_extension("log")).expect("log");
    assert!(log.contains("resumed 2 stored sessions"), "{log}");
    // Alice counted Carol's restarts.
    let url = alice.started["metrics"].as_str().expect("metrics url");
    let metrics = scrape(url);
    let restarts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("musig2_restarts_total{who=\"other\"}"))
        .and_then(|n| n.trim().parse::<f64>().ok());
    assert_eq!(restarts, Some(2.0), "{metrics}");
    drop((alice, bob, carol));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn a_signer_restarted_after_the_others_aborted_learns_how_it_ended() {
    let base = temp_dir("late");
    let signers = three(&base);
    let [a, b, c] = &signers;
    // Alice's sessions give each round 3 seconds (the creator starts the commitment round at
    // once; its deadline, not the join window's, ends a session nobody else joined).
    std::fs::write(a.dir.join("config.toml"), "[timeouts]\nnonce = 3\n").expect("config");
    let alice = Running::start(&a.dir, &[], &[]);
    let bob = Running::start(&b.dir, &[&alice], &[]);
    let carol = Running::start(&c.dir, &[&alice, &bob], &[]);
    connected(&c.dir, 2);

    // A 2-second join window Bob lets pass; Carol joins and is killed.
    let (session, _) = create(&signers, "mesh", "never signed", "2s");
    cli(&c.dir, &["--json", "session", "join", &session]).ok();
    joins_seen(&a.dir, &session, 2);
    carol.kill();
    let ended = poll("alice aborts", Duration::from_secs(15), || {
        let s = status(&a.dir, &session);
        (s["phase"] == "aborted").then_some(s)
    });
    assert_eq!(ended["abort"]["reason"], "timeout", "{ended}");
    assert_eq!(ended["abort"]["origin"]["kind"], "local", "{ended}");

    // Carol comes back after the end: she asks, Alice answers how it ended.
    let carol = Running::start(&c.dir, &[&alice, &bob], &[]);
    let told = poll("carol learns the end", Duration::from_secs(20), || {
        let s = status(&c.dir, &session);
        (s["phase"] == "aborted").then_some(s)
    });
    let abort = &told["abort"];
    assert_eq!(abort["origin"]["kind"], "remote", "{told}");
    assert_eq!(abort["origin"]["signer"]["index"], 0, "{told}");
    assert_eq!(abort["reason"], "timeout", "{told}");
    assert!(
        abort["blamed"]
            .as_array()
            .is_some_and(|b| b.iter().any(|s| s["index"] == 1)),
        "{told}"
    );
    assert!(told["attempt"].is_u64(), "{told}");
    // In words too: whose claim it was, and the attempt.
    let text = cli(&c.dir, &["session", "status", &session]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("claimed by signer #0"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("attempt:"), "{}", text.stdout);
    cli(&c.dir, &["--json", "session", "wait", &session]).error(6, "aborted");
    drop((alice, bob, carol));
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn list_filters_export_import_and_prune_through_the_cli() {
    let base = temp_dir("verbs");
    let (a_dir, a_key, a_peer) = keygen(&base, "alice");
    let (b_dir, b_key, b_peer) = keygen(&base, "bob");
    let alice = Running::start(
        &a_dir,
        &[],
        &["--keep-finished", "1h", "--max-finished", "50"],
    );
    let bob = Running::start(&b_dir, &[&alice], &[]);
    connected(&b_dir, 1);
    let stranger = secp256k1::Keypair::new(&mut rand::rng())
        .public_key()
        .to_string();
    let session_of = |v: Value| v["session"].as_str().expect("session").to_owned();

    // Signed by both.
    let signed = session_of(
        cli(
            &a_dir,
            &[
                "--json",
                "session",
                "create",
                "--signer",
                &a_key,
                "--signer",
                &b_key,
                "--peer",
                &a_peer,
                "--peer",
                &b_peer,
                "--message-text",
                "signed",
            ],
        )
        .ok(),
    );
    cli(
        &b_dir,
        &["--json", "session", "sign", &signed, "--timeout", "20"],
    )
    .ok();
    cli(&a_dir, &["--json", "session", "wait", &signed]).ok();
    // Aborted: a stranger never joins a 1-second window.
    let aborted = session_of(
        cli(
            &a_dir,
            &[
                "--json",
                "session",
                "create",
                "--signer",
                &a_key,
                "--signer",
                &stranger,
                "--message-text",
                "aborted",
                "--join-timeout",
                "1s",
            ],
        )
        .ok(),
    );
    cli(&a_dir, &["--json", "session", "wait", &aborted]).error(6, "aborted");
    // Waiting for Alice: Bob's session, not joined by her.
    let for_alice = session_of(
        cli(
            &b_dir,
            &[
                "--json",
                "session",
                "create",
                "--signer",
                &b_key,
                "--signer",
                &a_key,
                "--peer",
                &b_peer,
                "--peer",
                &a_peer,
                "--message-text",
                "for alice",
            ],
        )
        .ok(),
    );
    poll("alice hears of it", Duration::from_secs(10), || {
        (cli(&a_dir, &["--json", "session", "status", &for_alice]).code == 0).then_some(())
    });

    let ids = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["--json", "session", "list"];
        full.extend(args);
        let listed = cli(&a_dir, &full).ok();
        listed["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["session"].as_str().expect("id").to_owned())
            .collect()
    };
    assert_eq!(ids(&["--phase", "done"]), vec![signed.clone()]);
    assert_eq!(ids(&["--phase", "aborted"]), vec![aborted.clone()]);
    assert_eq!(ids(&["--waiting-for-me"]), vec![for_alice.clone()]);
    assert_eq!(ids(&[]).len(), 3);
    assert_eq!(ids(&["--since", "1h"]).len(), 3);
    assert_eq!(
        ids(&["--since", "1s", "--phase", "aborted"]),
        Vec::<String>::new(),
        "the aborted session is older than its 1-second window"
    );
    let bad = cli(&a_dir, &["--json", "session", "list", "--phase", "bogus"]);
    bad.error(2, "usage");
    // `status` without a session is unchanged: every session.
    let all = cli(&a_dir, &["--json", "session", "status"]).ok();
    assert_eq!(all["sessions"].as_array().map(Vec::len), Some(3));

    // Export from Alice; a second export to the same file is refused (never replaced).
    let file = base.join("signed.transcript");
    let path = file.to_str().expect("utf-8");
    let exported = cli(
        &a_dir,
        &["--json", "session", "export", &signed, "--out", path],
    )
    .ok();
    assert_eq!(exported["session"], signed.as_str());
    assert!(exported["bytes"].as_u64() > Some(0), "{exported}");
    assert!(exported["envelopes"].as_u64() > Some(0), "{exported}");
    cli(
        &a_dir,
        &["--json", "session", "export", &signed, "--out", path],
    )
    .error(1, "io");
    cli(&a_dir, &["--json", "verify-transcript", path]).ok();

    // Bob holds the session: importing it again is refused; pruned, it imports.
    cli(&b_dir, &["--json", "session", "import", path]).error(7, "rejected");
    let pruned = cli(&b_dir, &["--json", "session", "prune"]).ok();
    assert!(pruned["pruned"].as_u64() >= Some(1), "{pruned}");
    cli(&b_dir, &["--json", "session", "status", &signed]).error(4, "not_found");
    let imported = cli(&b_dir, &["--json", "session", "import", path]).ok();
    assert_eq!(imported["session"], signed.as_str(), "{imported}");
    assert_eq!(imported["phase"], "done", "{imported}");
    assert_eq!(imported["finished"], true, "{imported}");
    let back = status(&b_dir, &signed);
    assert_eq!(back["phase"], "done", "{back}");
    assert!(back["signature"].is_string(), "{back}");
    // A file that is not a transcript is invalid input.
    let junk = base.join("junk.transcript");
    std::fs::write(&junk, b"not a transcript").expect("write");
    cli(
        &b_dir,
        &["--json", "session", "import", junk.to_str().expect("utf-8")],
    )
    .error(2, "usage");

    // Alice forgets her two finished sessions; the running one stays.
    let pruned = cli(&a_dir, &["--json", "session", "prune"]).ok();
    assert_eq!(pruned["pruned"], 2, "{pruned}");
    assert_eq!(ids(&[]), vec![for_alice.clone()]);
    let text = cli(&a_dir, &["session", "prune"]);
    assert_eq!(text.stdout.trim(), "forgot 0 finished sessions");

    // A second node on Alice's directory (another socket) cannot have her store.
    let other_socket = base.join("other.sock");
    let clash = cli(
        &a_dir,
        &[
            "--json",
            "--control",
            other_socket.to_str().expect("utf-8"),
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
    );
    let error = clash.error(1, "io");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("sessions.redb") && message.contains("in use"),
        "{message}"
    );
    assert!(!other_socket.exists(), "no socket left behind");
    drop((alice, bob));
    let _ = std::fs::remove_dir_all(&base);
}
