//! The operator's view, through the binary only: the README's machine-to-machine steps with two
//! `run` processes (on 127.0.0.1), `--json` output one object per line for every command,
//! exit codes, escaped messages, the join window, contacts and groups, the metrics endpoint.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use secp256k1::{XOnlyPublicKey, schnorr};
use serde_json::Value;

mod common;

use common::{Out, Running, cli_in, scrape};

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("op", name)
}

fn cli(dir: &Path, args: &[&str]) -> Out {
    cli_in(Some(dir), args, None)
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[test]
fn the_readme_walk_with_two_nodes_through_the_cli_only() {
    let base = temp_dir("walk");
    let (alice_dir, bob_dir) = (base.join("alice"), base.join("bob"));

    // keygen: one JSON object each; the directory is owner-only.
    let alice_keys = cli(&alice_dir, &["--json", "keygen"]).ok();
    let bob_keys = cli(&bob_dir, &["--json", "keygen"]).ok();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&alice_dir)
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    // info without a running node: the keys.
    let offline = cli(&alice_dir, &["--json", "info"]).ok();
    assert_eq!(offline["running"], false);
    assert_eq!(offline["public_key"], alice_keys["public_key"]);
    assert_eq!(offline["peer_id"], alice_keys["peer_id"]);

    // Alice's address book: Bob as a contact, the two of them as a group; short lookups.
    std::fs::write(
        alice_dir.join("config.toml"),
        format!(
            "[timeouts]\ndiscovery = 2\n[contacts.bob]\nkey = \"{}\"\npeer = \"{}\"\n\
             [groups]\ntreasury = [\"self\", \"bob\"]\n",
            bob_keys["public_key"].as_str().expect("key"),
            bob_keys["peer_id"].as_str().expect("peer"),
        ),
    )
    .expect("config");

    let book = cli(&alice_dir, &["--json", "contacts"]).ok();
    assert_eq!(book["contacts"][0]["name"], "bob");
    assert_eq!(book["contacts"][0]["problems"], serde_json::json!([]));
    assert_eq!(
        book["groups"][0]["signers"],
        serde_json::json!(["self", "bob"])
    );

    // Machine 1 listens on every interface and serves metrics on loopback.
    let (alice, _) = Running::start(
        &alice_dir,
        &[
            "--listen",
            "/ip4/0.0.0.0/tcp/0",
            "--external-addr",
            "/ip4/203.0.113.7/tcp/4001",
            "--metrics",
            "127.0.0.1:0",
        ],
        None,
    );
    let info = cli(&alice_dir, &["--json", "info"]).ok();
    assert_eq!(info["running"], true);
    let addresses: Vec<String> = info["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .map(|a| a.as_str().expect("address").to_owned())
        .collect();
    assert!(
        addresses[0].starts_with("/ip4/203.0.113.7/tcp/4001/p2p/"),
        "the external address comes first: {addresses:?}"
    );
    assert!(
        addresses[1..].iter().any(|a| !a.starts_with("/ip4/127.")),
        "an unspecified listen advertises the machine's interfaces: {addresses:?}"
    );
    assert!(
        addresses.iter().all(|a| a.contains("/p2p/12D3")),
        "{addresses:?}"
    );
    let metrics_url = info["metrics"].as_str().expect("metrics url").to_owned();
    let before = scrape(&metrics_url);
    assert_eq!(
        metric(
            &before,
            "musig2_sessions_finished_total{outcome=\"signed\"}"
        ),
        None
    );

    // A second node on Alice's port is refused.
    let port = addresses[1].split('/').nth(4).expect("port").to_owned();
    let clash = cli(
        &bob_dir,
        &[
            "--json",
            "run",
            "--listen",
            &format!("/ip4/127.0.0.1/tcp/{port}"),
        ],
    );
    let error = clash.error(2, "usage");
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("in use"),
        "{error}"
    );

    // Machine 2 bootstraps from what `info` printed (its loopback line: this test stays on
    // 127.0.0.1).
    let loopback = addresses
        .iter()
        .find(|a| a.starts_with("/ip4/127.0.0.1/"))
        .expect("a loopback address");
    let bob_log = base.join("bob.log");
    let (bob, _) = Running::start(
        &bob_dir,
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            loopback,
            "--log-format",
            "json",
        ],
        Some(&bob_log),
    );
    let connected = Instant::now();
    loop {
        let info = cli(&alice_dir, &["--json", "info"]).ok();
        // Connected, and identify has told Alice where Bob saw her.
        let observed = info["observed_addresses"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if info["connected_peers"]["count"] == 1 && observed {
            assert_eq!(info["connected_peers"]["peers"][0], bob_keys["peer_id"]);
            break;
        }
        assert!(connected.elapsed() < Duration::from_secs(10), "{info}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Alice creates for the group, the message from stdin, with a 2-minute join window.
    let spoof = b"pay 100 BTC to Mallory\rpay 1 BTC to Carol\x1b[2K\xe2\x80\xae";
    let created = cli_in(
        Some(&alice_dir),
        &[
            "--json",
            "session",
            "create",
            "--group",
            "treasury",
            "--message-file",
            "-",
            "--join-timeout",
            "2m",
        ],
        Some(spoof),
    )
    .ok();
    let session = created["session"].as_str().expect("session").to_owned();
    // During the session (Bob has not joined): Alice's node serves it as unfinished.
    let during = scrape(&metrics_url);
    let unfinished: f64 = ["joined", "nonce_commit", "nonce", "partial_signature"]
        .iter()
        .filter_map(|p| metric(&during, &format!("musig2_sessions{{phase=\"{p}\"}}")))
        .sum();
    assert!(
        unfinished >= 1.0,
        "the session in progress is served: {during}"
    );
    let window = created["join_deadline"]["at_ms"]
        .as_u64()
        .expect("deadline")
        - musig2_node::view::now_ms();
    assert!(
        (100_000..=120_000).contains(&window),
        "the join window is 2 minutes: {window} ms left"
    );

    // Bob reads it: escaped, with the hex, in JSON and in text.
    let shown = cli(&bob_dir, &["--json", "session", "show", &session]).ok();
    assert_eq!(
        shown["message"]["text"],
        "pay 100 BTC to Mallory\\rpay 1 BTC to Carol\\u{001b}[2K\\u{202e}"
    );
    assert_eq!(shown["message"]["escaped"], true);
    assert_eq!(shown["message"]["hex"], hex::encode(spoof));
    assert_eq!(
        shown["join_deadline"]["at_ms"],
        created["join_deadline"]["at_ms"]
    );
    assert_eq!(shown["signers"][1]["this_node"], true);
    assert_eq!(shown["timeouts_ms"]["join"], 120_000);
    let text = cli(&bob_dir, &["session", "show", &session]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        !text.stdout.contains(['\r', '\x1b', '\u{202e}']),
        "raw control characters reached the terminal: {:?}",
        text.stdout
    );
    assert!(
        text.stdout.contains("Mallory\\rpay 1 BTC"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains(&hex::encode(spoof)), "{}", text.stdout);
    assert!(text.stdout.contains("Join by:"), "{}", text.stdout);

    // Bob signs; the signature verifies under the key `create` named.
    let signed = cli(
        &bob_dir,
        &["--json", "session", "sign", &session, "--timeout", "30"],
    )
    .ok();
    let signature =
        schnorr::Signature::from_str(signed["signature"].as_str().expect("sig")).expect("hex");
    let key =
        XOnlyPublicKey::from_str(created["aggregate_key"].as_str().expect("key")).expect("key");
    schnorr::verify(&signature, spoof, &key).expect("valid signature");
    let waited = cli(&alice_dir, &["--json", "session", "wait", &session]).ok();
    assert_eq!(waited["signature"], signed["signature"]);
    let status = cli(&alice_dir, &["--json", "session", "status", &session]).ok();
    assert_eq!(status["phase"], "done");
    let cancel = cli(&alice_dir, &["--json", "session", "cancel", &session]);
    cancel.error(7, "rejected");

    // A signer that never joins: the abort names it, with its key, as this node's finding.
    let stranger = secp256k1::Keypair::new(&mut rand::rng())
        .public_key()
        .to_string();
    let doomed = cli(
        &alice_dir,
        &[
            "--json",
            "session",
            "create",
            "--group",
            "treasury",
            "--signer",
            &stranger,
            "--peer",
            "-",
            "--peer",
            "-",
            "--peer",
            "-",
            "--message-text",
            "never",
            "--join-timeout",
            "1s",
        ],
    )
    .ok();
    let doomed = doomed["session"].as_str().expect("session").to_owned();
    let aborted = cli(&alice_dir, &["--json", "session", "wait", &doomed]).error(6, "aborted");
    let details = &aborted["details"];
    assert_eq!(details["reason"], "timeout");
    assert_eq!(details["origin"]["kind"], "local");
    let blamed = details["blamed"].as_array().expect("blamed");
    assert!(
        blamed
            .iter()
            .any(|b| b["index"] == 2 && b["public_key"] == stranger.as_str()),
        "{details}"
    );
    assert!(!aborted.to_string().contains("SignerIndex"), "{aborted}");
    let status = cli(&alice_dir, &["--json", "session", "status", &doomed]).ok();
    assert_eq!(status["phase"], "aborted");
    assert_eq!(status["abort"]["reason"], "timeout");
    cli(&alice_dir, &["--json", "session", "cancel", &doomed]).error(7, "rejected");
    // Bob comes too late: the join window has ended, so he is refused rather than joined.
    let late = cli(&bob_dir, &["--json", "session", "sign", &doomed]).error(7, "rejected");
    assert!(
        late["message"]
            .as_str()
            .expect("message")
            .contains("join window"),
        "{late}"
    );
    let all = cli(&alice_dir, &["--json", "session", "status"]).ok();
    assert_eq!(all["sessions"].as_array().map(Vec::len), Some(2));

    // A session still waiting for a signer: `wait` gives up with the timeout code.
    let pending = cli(
        &alice_dir,
        &[
            "--json",
            "session",
            "create",
            "--signer",
            "self",
            "--signer",
            &stranger,
            "--message-text",
            "later",
            "--taproot-merkle-root",
            &"5a".repeat(32),
        ],
    )
    .ok();
    let pending_key = pending["output_key"].clone();
    let pending = pending["session"].as_str().expect("session").to_owned();
    // A Taproot output with a script tree: `show` checks a Merkle root against the tweak.
    for (root, matches) in [("5a", true), ("5b", false)] {
        let root = root.repeat(32);
        let shown = cli(
            &alice_dir,
            &[
                "--json",
                "session",
                "show",
                &pending,
                "--taproot-merkle-root",
                &root,
            ],
        )
        .ok();
        let tweaks = &shown["tweak_details"];
        assert_eq!(tweaks["taproot_merkle_root_matches"], matches, "{tweaks}");
        assert_eq!(tweaks["taproot"], matches, "{tweaks}");
        assert_eq!(tweaks["taproot_key_path_only"], false, "{tweaks}");
        assert_eq!(tweaks["tweaks"].as_array().map(Vec::len), Some(1));
        assert_ne!(tweaks["taproot_internal_key"], pending_key, "{tweaks}");
        assert_eq!(shown["output_key"], pending_key);
    }
    cli(
        &alice_dir,
        &["--json", "session", "wait", &pending, "--timeout", "1"],
    )
    .error(5, "timeout");
    // A session nobody announced: not found once the DHT lookup gives up.
    let started = Instant::now();
    cli(
        &alice_dir,
        &[
            "--json",
            "session",
            "wait",
            &"ab".repeat(32),
            "--timeout",
            "30",
        ],
    )
    .error(4, "not_found");
    assert!(started.elapsed() < Duration::from_secs(20));

    // Usage errors and an unreachable node, in JSON too.
    cli(&alice_dir, &["--json", "session", "create"]).error(2, "usage");
    cli(
        &alice_dir,
        &[
            "--json",
            "session",
            "create",
            "--signer",
            "nobody",
            "--message",
            "00",
        ],
    )
    .error(2, "usage");
    cli_in(
        None,
        &[
            "--json",
            "--control",
            "/nonexistent/control.sock",
            "session",
            "status",
        ],
        None,
    )
    .error(3, "unreachable");

    // The metrics moved.
    let after = scrape(&metrics_url);
    assert_eq!(
        metric(&after, "musig2_sessions_finished_total{outcome=\"signed\"}"),
        Some(1.0),
        "{after}"
    );
    assert!(
        metric(
            &after,
            "musig2_aborts_total{reason=\"timeout\",origin=\"local\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{after}"
    );
    for direction in ["in", "out"] {
        assert!(
            metric(
                &after,
                &format!("musig2_frames_total{{direction=\"{direction}\"}}")
            )
            .is_some_and(|n| n >= 2.0),
            "frames {direction}: {after}"
        );
    }
    assert_eq!(
        metric(&after, "musig2_connected_peers"),
        Some(1.0),
        "{after}"
    );
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("libp2p_swarm_connections_established_total{")),
        "libp2p's own metrics are served: {after}"
    );

    // Every line `run --json` printed is one JSON object with a timestamp.
    for (who, lines) in [("alice", alice.stop()), ("bob", bob.stop())] {
        assert!(
            lines
                .iter()
                .all(|l| l["at_ms"].is_u64() && l["event"].is_string()),
            "{who}"
        );
        assert_eq!(
            lines.last().map(|l| &l["event"]),
            Some(&Value::from("stopped"))
        );
        if who == "alice" {
            assert!(lines.iter().any(|l| l["event"] == "signature_ready"));
            assert!(lines.iter().any(|l| {
                l["event"] == "aborted"
                    && l["blamed"]
                        .as_array()
                        .is_some_and(|b| b.iter().any(|b| b["public_key"] == stranger.as_str()))
            }));
        }
    }
    // Bob's log went to a file: JSON lines, no colour.
    let log = std::fs::read_to_string(&bob_log).expect("log");
    assert!(log.lines().count() > 0, "debug logging produced lines");
    for line in log.lines() {
        assert!(!line.contains('\x1b'), "colour in a log file: {line}");
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn help_completions_and_man_page_come_from_the_clap_definitions() {
    for verb in [
        &["keygen"][..],
        &["run"],
        &["info"],
        &["demo"],
        &["session", "create"],
        &["session", "show"],
        &["session", "sign"],
        &["session", "wait"],
        &["session", "status"],
        &["session", "cancel"],
        &["session", "join"],
        &["session", "list"],
        &["session", "export"],
        &["session", "import"],
        &["session", "prune"],
        &["contacts"],
    ] {
        let mut args = verb.to_vec();
        args.push("--help");
        let out = cli_in(None, &args, None);
        assert_eq!(out.code, 0, "{verb:?}");
        assert!(
            out.stdout.contains("Example"),
            "{verb:?} --help has an example"
        );
    }
    let bash = cli_in(None, &["completions", "bash"], None);
    assert_eq!(bash.code, 0);
    assert!(bash.stdout.contains("musig2-node") && bash.stdout.contains("--join-timeout"));
    let man = cli_in(None, &["man"], None);
    assert_eq!(man.code, 0);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH"),
        "{}",
        man.stdout
    );
}

#[test]
fn messages_over_the_limit_are_refused_with_the_limit() {
    let dir = temp_dir("limit");
    let file = dir.join("big.bin");
    std::fs::write(&file, vec![7u8; 100_000]).expect("write");
    let out = cli_in(
        Some(&dir),
        &[
            "--json",
            "session",
            "create",
            "--signer",
            &format!("02{}", "11".repeat(32)),
            "--message-file",
            file.to_str().expect("utf-8"),
        ],
        None,
    );
    let error = out.error(2, "usage");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("100000 bytes") && message.contains("4096"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
