//! `musig2-node verify-transcript` through the binary: a transcript of a signed session,
//! recorded the way a node stores it, verifies (exit 0, text and `--json`); the same file with
//! one envelope byte changed is refused (exit 2, naming the envelope and its signer).

use std::path::{Path, PathBuf};
use std::process::Command;

use musig2_coordinator::{Outcome, Record, StoredSession, Transcript};
use musig2_core::{AggNonce, KeyAggContext, NonceGen, PubNonce, SessionContext};
use musig2_proto::{
    Announcement, Attempt, Body, Limits, NonceCommitment, PartialSigBytes, PubNonceBytes, SeqNo,
    SignedEnvelope, SignerIndex,
};
use secp256k1::{Keypair, schnorr};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_musig2-node");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("musig2-tx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn run(args: &[&str], file: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .env_remove("MUSIG2_DIR")
        .arg("verify-transcript")
        .arg(file)
        .args(args)
        .output()
        .expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_line(stdout: &str) -> Value {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stdout:?}");
    serde_json::from_str(lines[0]).expect("JSON")
}

/// A signed 2-of-2 mesh session as signer 0's node records it (message with a terminal escape).
fn signed_session() -> (Transcript, schnorr::Signature) {
    let now = 1_700_000_000_000u64;
    let keys: Vec<Keypair> = (0..2).map(|_| Keypair::new(&mut rand::rng())).collect();
    let idx = |i: u16| SignerIndex::new(i).expect("index");
    let announcement = Announcement::new(
        keys.iter().map(Keypair::public_key).collect(),
        b"pay Carol\x1b[31m".to_vec(),
        idx(0),
        now,
        now + 600_000,
    )
    .sign(&keys[0], &Limits::default())
    .expect("sign");
    let ann = announcement
        .verify(now, &Limits::default())
        .expect("verify");
    let key_agg = KeyAggContext::new(&ann.signer_keys()).expect("key agg");
    let msg = ann.announcement().messages[0].message.clone();
    let a = Attempt::FIRST;
    let mut stored = StoredSession::new(announcement.clone(), now);
    let mut record = |env: SignedEnvelope| stored.apply(&Record::Envelope(env));
    let mut nonces = Vec::new();
    for (i, kp) in keys.iter().enumerate() {
        let sk = kp.secret_key();
        let (sec, public) = NonceGen::new(kp.public_key())
            .secret_key(&sk)
            .key_agg(&key_agg)
            .message(&msg)
            .generate(&mut rand::rng())
            .expect("nonce");
        let pub_nonce = PubNonceBytes::from_bytes(public.to_bytes()).expect("nonce");
        let signer = idx(u16::try_from(i).expect("small"));
        let commitment = NonceCommitment::compute(&ann.session_id(), signer, a, &[pub_nonce]);
        let body = Body::NonceCommit {
            attempt: a,
            commitment,
        };
        record(
            ann.sign_envelope(signer, SeqNo::FIRST, now, body, kp)
                .expect("env"),
        );
        nonces.push((sec, public, pub_nonce));
    }
    let seq2 = SeqNo::new(2).expect("seq");
    for (i, (_, _, pub_nonce)) in nonces.iter().enumerate() {
        let signer = idx(u16::try_from(i).expect("small"));
        let body = Body::Nonce {
            attempt: a,
            pub_nonces: vec![*pub_nonce],
        };
        record(
            ann.sign_envelope(signer, seq2, now, body, &keys[i])
                .expect("env"),
        );
    }
    let pubs: Vec<PubNonce> = nonces.iter().map(|n| n.1).collect();
    let ctx = SessionContext::new(&key_agg, &AggNonce::aggregate(&pubs), &msg);
    let mut psigs = Vec::new();
    let seq3 = SeqNo::new(3).expect("seq");
    for (i, (sec, _, _)) in nonces.into_iter().enumerate() {
        let psig = ctx.sign(sec, &keys[i]).expect("psig");
        psigs.push(psig);
        let body = Body::PartialSig {
            attempt: a,
            partial_sigs: vec![PartialSigBytes::from_bytes(psig.to_bytes()).expect("psig")],
            aggregate: None,
        };
        let signer = idx(u16::try_from(i).expect("small"));
        record(
            ann.sign_envelope(signer, seq3, now, body, &keys[i])
                .expect("env"),
        );
    }
    let sig = ctx.aggregate(&psigs).expect("aggregate");
    stored.apply(&Record::Outcome {
        session: ann.session_id(),
        outcome: Outcome::Signed(vec![sig]),
        at_ms: now,
    });
    (Transcript::from_stored(&stored, Some(idx(0))), sig)
}

#[test]
fn verify_transcript_accepts_a_good_file_and_refuses_a_tampered_one() {
    let dir = temp_dir("verify");
    let (transcript, sig) = signed_session();
    let good = dir.join("good.transcript");
    let bytes = transcript.encode();
    std::fs::write(&good, &bytes).expect("write");

    let (code, stdout, stderr) = run(&[], &good);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains(&sig.to_string()), "{stdout}");
    assert!(stdout.contains("(valid)"), "{stdout}");
    assert!(stdout.contains("Proven misbehaviour: none"), "{stdout}");
    // The message's terminal escape never reaches the terminal.
    assert!(!stdout.contains('\x1b'), "{stdout:?}");
    assert!(stdout.contains("pay Carol\\u{001b}[31m"), "{stdout}");

    let (code, stdout, stderr) = run(&["--json"], &good);
    assert_eq!(code, 0, "{stdout} {stderr}");
    let report = json_line(&stdout);
    assert_eq!(report["valid"], true);
    assert_eq!(report["signature"]["hex"], sig.to_string());
    assert_eq!(report["signature"]["valid"], true);
    assert_eq!(report["session"], transcript.session_id().to_string());
    assert_eq!(report["envelopes_verified"], 6);
    assert_eq!(report["partial_sigs_checked"], 2);
    assert_eq!(report["proofs"], Value::Array(Vec::new()));
    assert_eq!(report["message"]["escaped"], true);

    // Flip the last signature byte of envelope 3 (signer 1's nonce).
    let frame = transcript.envelopes[3].to_frame_bytes();
    let at = bytes
        .windows(frame.len())
        .position(|w| w == frame.as_slice())
        .expect("frame in file");
    let mut tampered = bytes.clone();
    tampered[at + frame.len() - 1] ^= 0x80;
    let bad = dir.join("tampered.transcript");
    std::fs::write(&bad, &tampered).expect("write");

    let (code, stdout, stderr) = run(&[], &bad);
    assert_eq!(code, 2, "{stdout} {stderr}");
    assert!(stderr.contains("envelope 3 (claimed signer 1)"), "{stderr}");

    let (code, stdout, _) = run(&["--json"], &bad);
    assert_eq!(code, 2, "{stdout}");
    let error = json_line(&stdout);
    assert_eq!(error["error"]["kind"], "usage");
    assert_eq!(error["error"]["details"]["envelope"], 3);
    assert_eq!(error["error"]["details"]["signer"], 1);

    // Not a transcript at all, and a missing file.
    let junk = dir.join("junk");
    std::fs::write(&junk, b"hello").expect("write");
    assert_eq!(run(&[], &junk).0, 2);
    assert_eq!(run(&[], &dir.join("missing")).0, 1);
    // A recorded signature that is not the session's: the report, and exit 2.
    let mut other = sig.to_byte_array();
    other[63] ^= 1;
    let forged = Transcript {
        outcome: Some(Outcome::Signed(vec![schnorr::Signature::from_byte_array(
            other,
        )])),
        ..transcript
    };
    let wrong = dir.join("wrong-signature.transcript");
    std::fs::write(&wrong, forged.encode()).expect("write");
    let (code, stdout, stderr) = run(&[], &wrong);
    assert_eq!(code, 2, "{stdout} {stderr}");
    assert!(stdout.contains("(INVALID)"), "{stdout}");
    let (code, stdout, _) = run(&["--json"], &wrong);
    assert_eq!(code, 2, "{stdout}");
    let error = json_line(&stdout);
    assert_eq!(error["error"]["details"]["valid"], false);
    assert_eq!(error["error"]["details"]["signature"]["valid"], false);

    let _ = std::fs::remove_dir_all(&dir);
}
