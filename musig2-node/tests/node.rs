//! The node binary and its daemon, on 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use musig2_core::KeyAggContext;
use musig2_node::control::{self, Request, TaprootSpec, TopologyName};
use musig2_node::daemon::{Daemon, DaemonConfig};
use musig2_transport::split_peer_address;
use secp256k1::{PublicKey, XOnlyPublicKey, schnorr};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_musig2-node");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("musig2-node-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run the binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn verify(signature: &str, message: &[u8], aggregate: &XOnlyPublicKey) {
    let signature = schnorr::Signature::from_str(signature).expect("signature hex");
    schnorr::verify(&signature, message, aggregate).expect("the signature verifies");
}

#[test]
fn keygen_writes_owner_only_keys_and_never_replaces_them() {
    let dir = temp_dir("keygen");
    let node = dir.join("node");
    let node_arg = node.to_str().expect("utf-8 path");
    let (ok, out, err) = run(&["--json", "keygen", "--dir", node_arg]);
    assert!(ok, "{err}");
    let info = json(&out);
    PublicKey::from_str(info["public_key"].as_str().expect("public key")).expect("a key");
    assert!(
        info["peer_id"]
            .as_str()
            .expect("peer id")
            .starts_with("12D3Koo")
    );
    let (ok, out, _) = run(&["--json", "keygen", "--dir", node_arg]);
    assert!(!ok, "a second keygen must fail");
    assert_eq!(json(&out)["error"]["kind"], "io");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_signs_and_reports_a_verifiable_signature() {
    for topology in ["mesh", "star"] {
        let (ok, out, err) = run(&["--json", "demo", "--signers", "3", "--topology", topology]);
        assert!(ok, "{err}");
        let report = json(&out);
        assert_eq!(report["signers"].as_array().map(Vec::len), Some(3));
        let aggregate = XOnlyPublicKey::from_str(report["aggregate_key"].as_str().expect("key"))
            .expect("x-only key");
        verify(
            report["signature"].as_str().expect("signature"),
            musig2_node::demo::DEMO_MESSAGE,
            &aggregate,
        );
        let phases = report["phases"].as_array().expect("phases");
        assert_eq!(phases.len(), 6);
        assert!(
            phases.iter().all(|p| p["since_start_ms"].is_number()),
            "{phases:?}"
        );
    }
}

/// Runs the binary with `args`, which must fail with `reason` in its error output.
fn refused(args: &[&str], reason: &str) {
    let (ok, _, err) = run(args);
    assert!(!ok, "{args:?} must fail");
    assert!(err.contains(reason), "{args:?}: {err}");
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    refused(&["demo", "--signers", "1"], "between 2 and 128");
    refused(
        &[
            "run",
            "--dir",
            "/nonexistent",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/1",
        ],
        "/p2p/<peer id>",
    );
    refused(
        &[
            "session",
            "--dir",
            "/nonexistent",
            "create",
            "--signer",
            "021111111111111111111111111111111111111111111111111111111111111111",
            "--message",
            "00",
            "--tweak",
            "sideways:00",
        ],
        "plain:HEX or xonly:HEX",
    );
    refused(
        &["session", "--dir", "/nonexistent", "status"],
        "no node answers",
    );
}

async fn start(dir: &Path, bootstrap: Option<&Daemon>, auto_join: bool) -> Daemon {
    musig2_node::keys::generate(dir).expect("keys");
    Daemon::start(DaemonConfig {
        bootstrap: bootstrap
            .map(|b| vec![split_peer_address(b.addresses()[0].clone()).expect("peer address")])
            .unwrap_or_default(),
        auto_join,
        ..DaemonConfig::new(dir, vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")])
    })
    .await
    .expect("daemon")
}

/// Sends `line` as is and returns the node's answer; `None` if the node closed the connection
/// without one (it stops reading at the size cap, so a writer past it can see a reset).
async fn raw(socket: &Path, line: &[u8]) -> Option<Value> {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let _ = stream.write_all(line).await;
    let _ = stream.shutdown().await;
    let mut answer = String::new();
    match stream.read_to_string(&mut answer).await {
        Ok(_) if !answer.is_empty() => Some(json(&answer)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_sign_through_their_control_sockets() {
    let base = temp_dir("daemons");
    let alice = start(&base.join("alice"), None, false).await;
    let bob = start(&base.join("bob"), Some(&alice), true).await;
    let carol = start(&base.join("carol"), Some(&alice), false).await;
    let daemons = [&alice, &bob, &carol];
    let keys: Vec<PublicKey> = daemons.iter().map(|d| d.node().public_key()).collect();
    // A Taproot key-path output: the signature is under the tweaked aggregate key.
    let aggregate = KeyAggContext::new(&keys)
        .and_then(|ctx| ctx.with_taproot_tweak(None))
        .expect("keyagg")
        .x_only_key();
    let message = b"three operators agree";

    // Bob's peer is listed (he gets the announcement and auto-joins); Carol's is not (she
    // looks the session up in the DHT when told to join).
    let created = control::call(
        alice.control_socket(),
        &Request::Create {
            signers: keys.iter().map(ToString::to_string).collect(),
            peers: vec![
                Some(alice.node().peer_id().to_string()),
                Some(bob.node().peer_id().to_string()),
                None,
            ],
            message_hex: Some(hex::encode(message)),
            messages: Vec::new(),
            document_digest: None,
            topology: TopologyName::Star,
            commitments: Some(true),
            tweaks: Vec::new(),
            taproot: Some(TaprootSpec::default()),
            join_timeout_secs: None,
            max_failovers: None,
        },
    )
    .await
    .expect("create");
    let session = created["session"].as_str().expect("session").to_owned();
    assert_eq!(created["aggregate_key"], aggregate.to_string());
    // Carol reads what she is asked to sign (from the DHT) before she joins.
    let shown = control::call(
        carol.control_socket(),
        &Request::Show {
            session: session.clone(),
            taproot_merkle_root: None,
        },
    )
    .await
    .expect("show");
    assert_eq!(shown["message"]["text"], "three operators agree");
    assert_eq!(shown["message"]["escaped"], false);
    assert_eq!(shown["tweak_details"]["taproot"], true);
    assert_eq!(shown["tweak_details"]["taproot_key_path_only"], true);
    assert_eq!(shown["output_key"], aggregate.to_string());
    assert_eq!(shown["aggregate_key"], aggregate.to_string());
    assert_eq!(shown["signers"].as_array().map(Vec::len), Some(3));
    assert_eq!(shown["signers"][2]["peer_id"], Value::Null);
    assert_eq!(shown["topology"], "star");
    assert_eq!(shown["signers"][2]["this_node"], true);
    // Carol waits for a session she has not joined yet: the wait holds until it is signed.
    let carol_waits = tokio::spawn({
        let (socket, session) = (carol.control_socket().to_owned(), session.clone());
        async move {
            control::call(
                &socket,
                &Request::Wait {
                    session,
                    timeout_secs: Some(30),
                },
            )
            .await
        }
    });
    control::call(
        carol.control_socket(),
        &Request::Join {
            session: session.clone(),
        },
    )
    .await
    .expect("carol joins");
    let early = carol_waits.await.expect("task").expect("signature");
    verify(
        early["signature"].as_str().expect("signature"),
        message,
        &aggregate,
    );
    for daemon in daemons {
        let done = control::call(
            daemon.control_socket(),
            &Request::Wait {
                session: session.clone(),
                timeout_secs: Some(30),
            },
        )
        .await
        .expect("signature");
        verify(
            done["signature"].as_str().expect("signature"),
            message,
            &aggregate,
        );
        let status = control::call(
            daemon.control_socket(),
            &Request::Status {
                session: Some(session.clone()),
            },
        )
        .await
        .expect("status");
        assert_eq!(status["phase"], "done");
    }

    // Bad requests get typed error replies, and the socket keeps serving.
    let socket = alice.control_socket();
    let garbage = raw(socket, b"{\"op\":\"explode\"}\n")
        .await
        .expect("an answer");
    assert_eq!(garbage["error"]["kind"], "usage", "{garbage}");
    if let Some(oversized) = raw(socket, &vec![b'x'; control::MAX_REQUEST_BYTES + 10]).await {
        assert_eq!(oversized["error"]["kind"], "usage", "{oversized}");
    }
    let unknown = control::call(
        socket,
        &Request::Status {
            session: Some("00".repeat(32)),
        },
    )
    .await
    .expect_err("unknown session");
    assert!(unknown.to_string().contains("unknown session"), "{unknown}");
    assert_eq!(unknown.kind(), musig2_node::ErrorKind::NotFound);
    let info = control::call(socket, &Request::Info)
        .await
        .expect("still serving");
    assert_eq!(info["peer_id"], alice.node().peer_id().to_string());
    assert_eq!(info["blocked_peers"], serde_json::json!([]));

    // A second node on the same directory's socket is refused.
    let second = Daemon::start(DaemonConfig {
        control: alice.control_socket().to_owned(),
        ..DaemonConfig::new(
            base.join("alice"),
            vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        )
    })
    .await
    .expect_err("socket in use");
    assert!(second.to_string().contains("another node"), "{second}");

    for daemon in [alice, bob, carol] {
        let socket = daemon.control_socket().to_owned();
        tokio::time::timeout(Duration::from_secs(10), daemon.shutdown())
            .await
            .expect("shutdown in time")
            .expect("shutdown");
        assert!(!socket.exists(), "the control socket is removed");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_signature_runs_for_the_node_whose_turn_it_is_and_confirms_with_its_output() {
    let base = temp_dir("on-signature");
    let record = base.join("ran");
    // The command records what it was given and answers with a txid-like receipt.
    let command = format!(
        "echo \"$MUSIG2_SESSION $MUSIG2_SIGNATURE $MUSIG2_MESSAGE $MUSIG2_POSITION\" >> {}; \
         echo c0ffee",
        record.display()
    );
    let mut daemons: Vec<Daemon> = Vec::new();
    for name in ["alice", "bob"] {
        let dir = base.join(name);
        musig2_node::keys::generate(&dir).expect("keys");
        let first = daemons.first();
        daemons.push(
            Daemon::start(DaemonConfig {
                bootstrap: first
                    .map(|b| vec![split_peer_address(b.addresses()[0].clone()).expect("peer")])
                    .unwrap_or_default(),
                auto_join: name == "bob",
                on_signature: Some(command.clone()),
                ..DaemonConfig::new(&dir, vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")])
            })
            .await
            .expect("daemon"),
        );
    }
    let (alice, bob) = (&daemons[0], &daemons[1]);
    let mut confirmed: Vec<_> = daemons.iter().map(|d| d.node().events()).collect();
    let created = control::call(
        alice.control_socket(),
        &Request::Create {
            signers: daemons
                .iter()
                .map(|d| d.node().public_key().to_string())
                .collect(),
            peers: daemons
                .iter()
                .map(|d| Some(d.node().peer_id().to_string()))
                .collect(),
            message_hex: Some(hex::encode(b"publish me")),
            messages: Vec::new(),
            document_digest: None,
            topology: TopologyName::Mesh,
            commitments: Some(false),
            tweaks: Vec::new(),
            taproot: None,
            join_timeout_secs: None,
            max_failovers: Some(1),
        },
    )
    .await
    .expect("create");
    let session = created["session"].as_str().expect("session").to_owned();
    let signed = control::call(
        alice.control_socket(),
        &Request::Wait {
            session: session.clone(),
            timeout_secs: Some(30),
        },
    )
    .await
    .expect("signed");
    let signature = signed["signature"].as_str().expect("signature").to_owned();
    for (i, events) in confirmed.iter_mut().enumerate() {
        let receipt = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(musig2_coordinator::Event::BroadcastConfirmed { receipt, .. }) =
                    events.recv().await
                {
                    return receipt;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("daemon {i} saw no confirmation"));
        assert_eq!(receipt, vec![0xc0, 0xff, 0xee]);
    }
    // Exactly one node (the one whose turn it was) ran the command, with the right values.
    let ran = std::fs::read_to_string(&record).expect("the command ran");
    let lines: Vec<&str> = ran.lines().collect();
    assert_eq!(lines.len(), 1, "{ran}");
    assert_eq!(
        lines[0],
        format!("{session} {signature} {} 0", hex::encode(b"publish me"))
    );
    let _ = bob;
    for daemon in daemons {
        tokio::time::timeout(Duration::from_secs(10), daemon.shutdown())
            .await
            .expect("shutdown in time")
            .expect("shutdown");
    }
    let _ = std::fs::remove_dir_all(&base);
}
