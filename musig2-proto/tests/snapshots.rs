//! Pins the byte encoding of every message type.
//!
//! `tests/snapshots/wire.txt` holds the hex of deterministic examples; the "Examples" section of
//! `docs/wire-format.md` is generated from the same data. A wire-format change makes this test
//! fail; if the change is intended, regenerate both with
//! `UPDATE_SNAPSHOTS=1 cargo test -p musig2-proto --test snapshots` and review the diff.
//! `WRITE_FUZZ_SEEDS=1` also writes each frame as a seed into `fuzz/corpus/*/`.

mod common;

use std::fmt::Write as _;
use std::path::PathBuf;

use common::*;
use musig2_proto::{
    AbortReason, Body, FinalSignatures, Frame, Limits, NonceCommitment, PartialSigBytes,
    Signature64, SignedEnvelope, Topology, decode_frame,
};

struct Example {
    name: &'static str,
    what: String,
    hex: String,
}

fn examples() -> Vec<Example> {
    let mut out = Vec::new();
    let signed = signed_announcement(2, Topology::Star);
    let a = signed.verify(NOW, &Limits::default()).expect("verify");
    let frame = |name: &'static str, what: &str, bytes: Vec<u8>| Example {
        name,
        what: what.to_string(),
        hex: hex::encode(bytes),
    };
    out.push(Example {
        name: "session_id",
        what: "session id of the announcement below".into(),
        hex: hex::encode(a.session_id().to_bytes()),
    });
    out.push(frame(
        "announcement",
        "announcement frame: 2 signers with peer ids, one x-only tweak, star topology",
        signed.to_frame_bytes(),
    ));
    let att = attempt(0);
    let commitment = NonceCommitment::compute(&a.session_id(), idx(1), att, &[pub_nonce(2)]);
    out.push(Example {
        name: "nonce_commitment",
        what: "nonce commitment of signer 1, attempt 0, to the nonce in `env_nonce`".into(),
        hex: hex::encode(commitment.to_bytes()),
    });
    let bodies: Vec<(&'static str, &str, u16, Body)> = vec![
        (
            "env_join",
            "Join from signer 1",
            1,
            Body::Join { peer_id: peer(1) },
        ),
        (
            "env_nonce_commit",
            "NonceCommit from signer 1",
            1,
            Body::NonceCommit {
                attempt: att,
                commitment,
            },
        ),
        (
            "env_nonce",
            "Nonce from signer 1",
            1,
            Body::Nonce {
                attempt: att,
                pub_nonces: vec![pub_nonce(2)],
            },
        ),
        (
            "env_partial_sig",
            "PartialSig from signer 1",
            1,
            Body::PartialSig {
                attempt: att,
                partial_sigs: vec![PartialSigBytes::from_bytes([0x42; 32]).expect("valid")],
                aggregate: Some(Body::aggregate_ref(
                    &a.session_id(),
                    att,
                    &[agg_nonce(&a, 0)],
                )),
            },
        ),
        (
            "env_aggregate_nonce",
            "AggregateNonce from signer 0 (star coordinator): the aggregate and the digest of both signed nonces",
            0,
            Body::aggregate_nonce(&a, att, &nonce_envelopes(&a, 0))
                .expect("aggregate")
                .0,
        ),
        (
            "env_nonce_set",
            "NonceSet from signer 0 (star coordinator, on failure) revealing both signed nonces",
            0,
            Body::aggregate_nonce(&a, att, &nonce_envelopes(&a, 0))
                .expect("aggregate")
                .1,
        ),
        (
            "env_final_signature",
            "FinalSignature from signer 0",
            0,
            Body::FinalSignature {
                attempt: att,
                signatures: vec![Signature64([0x5C; 64])],
            },
        ),
        (
            "env_broadcast_confirmed",
            "BroadcastConfirmed from signer 0 with a 32-byte receipt",
            0,
            Body::BroadcastConfirmed {
                attempt: att,
                receipt: vec![0xEE; 32],
            },
        ),
        (
            "env_failover_claim",
            "FailoverClaim from signer 1 (rank 1)",
            1,
            Body::FailoverClaim {
                attempt: att,
                rank: 1,
            },
        ),
        (
            "env_abort",
            "Abort from signer 0 blaming signer 1 for an invalid partial signature",
            0,
            Body::Abort {
                reason: AbortReason::InvalidPartialSig,
                blamed: Some(idx(1)),
            },
        ),
        (
            "env_restart",
            "Restart from signer 1 (attempt 1)",
            1,
            Body::Restart {
                attempt: attempt(1),
            },
        ),
    ];
    let mut batch: Vec<SignedEnvelope> = Vec::new();
    for (k, (name, what, who, body)) in bodies.into_iter().enumerate() {
        let e = envelope(&a, who, u64::try_from(k).expect("small") + 1, body);
        e.verify(&a).expect("example envelopes verify");
        if name == "env_nonce" || name == "env_partial_sig" {
            batch.push(e.clone());
        }
        out.push(frame(name, what, e.to_frame_bytes()));
    }
    out.push(frame(
        "batch",
        "Batch frame holding `env_nonce` and `env_partial_sig`",
        Frame::encode_batch(&batch),
    ));
    // Batch authentication (ADR 0016): three envelopes of signer 1 under one signature; the
    // second carries a two-level path.
    let kp1 = std::sync::Arc::new(keypair(1));
    let pending: Vec<SignedEnvelope> = (20..23u64)
        .map(|s| {
            musig2_proto::Envelope::sign_batchable(
                a.session_id(),
                idx(1),
                seq(s),
                NOW + s,
                Body::Restart {
                    attempt: attempt(1),
                },
                kp1.clone(),
                true,
            )
        })
        .collect();
    SignedEnvelope::seal_batch_with_aux_rand(&pending, &[0x44; 32]);
    pending[1]
        .verify(&a)
        .expect("batch-signed example verifies");
    out.push(frame(
        "env_batch_signed",
        "Restart from signer 1, seq 21, batch-signed with seqs 20 and 22 (ADR 0016): path of 2, index 1",
        pending[1].to_frame_bytes(),
    ));
    // An announcement batch-signed with an envelope of its creator (ADR 0017): path of 1.
    let kp0 = std::sync::Arc::new(keypair(0));
    let mut mesh = announcement(2, Topology::Mesh);
    mesh.salt = [0x66; 32];
    let batched = mesh
        .sign_batchable(kp0.clone(), NOW, &Limits::default())
        .expect("sign announcement");
    let join = musig2_proto::Envelope::sign_batchable(
        batched.session_id(),
        idx(0),
        seq(1),
        NOW,
        Body::Join { peer_id: peer(0) },
        kp0,
        true,
    );
    let mut both = musig2_proto::Batch::new();
    both.add_announcement(batched.signed()).add_envelope(&join);
    both.seal_with_aux_rand(&[0x45; 32]);
    let ann_bytes = batched.signed().to_frame_bytes();
    let decoded =
        musig2_proto::SignedAnnouncement::decode(&ann_bytes, &Limits::default()).expect("decode");
    let again = decoded
        .verify(NOW, &Limits::default())
        .expect("batch-signed announcement verifies");
    join.verify(&again).expect("its batch companion verifies");
    out.push(frame(
        "announcement_batch_signed",
        "announcement frame, 2 signers, mesh, batch-signed with the creator's Join (ADR 0017): path of 1, index 0",
        ann_bytes,
    ));
    // A mesh request (ADR 0023): signer 1 asks for the nonces.
    let mesh_verified = verified(2, Topology::Mesh);
    let request = envelope(
        &mesh_verified,
        1,
        2,
        Body::Request {
            attempt: attempt(0),
            set: musig2_proto::RequestedSet::Nonces,
        },
    );
    request
        .verify(&mesh_verified)
        .expect("example request verifies");
    out.push(frame(
        "env_request",
        "Request from signer 1 in a 2-signer mesh session: the nonces of attempt 0 (ADR 0023)",
        request.to_frame_bytes(),
    ));
    out.push(frame(
        "final_signatures",
        "Final signatures (unsigned, ADR 0015): one 64-byte signature, attempt 0",
        FinalSignatures::new(a.session_id(), attempt(0), vec![Signature64([0x77; 64])])
            .to_frame_bytes(),
    ));
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn snapshot_text(ex: &[Example]) -> String {
    let mut s = String::from("# Generated by tests/snapshots.rs; do not edit.\n");
    for e in ex {
        writeln!(s, "{}: {}", e.name, e.hex).expect("write to string");
    }
    s
}

const BEGIN: &str = "<!-- BEGIN GENERATED EXAMPLES -->";
const END: &str = "<!-- END GENERATED EXAMPLES -->";

fn doc_block(ex: &[Example]) -> String {
    let mut s = format!("{BEGIN}\n");
    s.push_str(
        "Keys: signer i has secret key `0x11 || 00.. || i+1` (see `tests/common/mod.rs`); \
         announcement and envelope signatures use auxiliary randomness `5a..5a` and `33..33`; \
         created at 1700000000000 ms, expiring 600000 ms later.\n\n",
    );
    for e in ex {
        writeln!(s, "**{}** — {}\n\n```text", e.name, e.what).expect("write");
        for chunk in e.hex.as_bytes().chunks(64) {
            writeln!(s, "{}", std::str::from_utf8(chunk).expect("hex is ascii")).expect("write");
        }
        s.push_str("```\n\n");
    }
    s.push_str(END);
    s
}

#[test]
fn wire_encoding_is_pinned() {
    let ex = examples();
    // Every example frame decodes back to the same bytes.
    for e in &ex {
        if e.name.starts_with("env_")
            || matches!(e.name, "announcement" | "batch" | "final_signatures")
        {
            let bytes = hex::decode(&e.hex).expect("hex");
            let frame = decode_frame(&bytes, &Limits::default()).expect("example decodes");
            assert_eq!(frame.encode(), bytes, "{}", e.name);
        }
    }
    let snap_path = root().join("tests/snapshots/wire.txt");
    let doc_path = root().join("../docs/wire-format.md");
    let text = snapshot_text(&ex);
    let block = doc_block(&ex);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snap_path, &text).expect("write snapshot");
        let doc = std::fs::read_to_string(&doc_path).expect("read docs/wire-format.md");
        let (head, rest) = doc.split_once(BEGIN).expect("doc has the BEGIN marker");
        let (_, tail) = rest.split_once(END).expect("doc has the END marker");
        std::fs::write(&doc_path, format!("{head}{block}{tail}")).expect("write doc");
    }
    if std::env::var_os("WRITE_FUZZ_SEEDS").is_some() {
        for e in &ex {
            let bytes = hex::decode(&e.hex).expect("hex");
            let targets: &[&str] = match e.name {
                "announcement" | "announcement_batch_signed" => {
                    &["decode_frame", "decode_announcement"]
                }
                "batch" | "final_signatures" => &["decode_frame"],
                n if n.starts_with("env_") => {
                    &["decode_frame", "decode_envelope", "verify_resigned"]
                }
                _ => &[],
            };
            for t in targets {
                let dir = root().join("../fuzz/corpus").join(t);
                std::fs::create_dir_all(&dir).expect("mkdir");
                std::fs::write(dir.join(format!("seed-{}", e.name)), &bytes).expect("write seed");
            }
        }
    }
    let pinned = std::fs::read_to_string(&snap_path).expect("tests/snapshots/wire.txt exists");
    assert_eq!(
        pinned, text,
        "wire encoding changed: if intended, run UPDATE_SNAPSHOTS=1 cargo test -p musig2-proto \
         --test snapshots and review the diff"
    );
    let doc = std::fs::read_to_string(&doc_path).expect("read docs/wire-format.md");
    assert!(
        doc.contains(&block),
        "docs/wire-format.md examples are stale: run UPDATE_SNAPSHOTS=1 cargo test -p \
         musig2-proto --test snapshots"
    );
}

#[test]
fn encoded_sizes_are_as_documented() {
    let a2 = signed_announcement(2, Topology::Star)
        .to_frame_bytes()
        .len();
    let a128 = signed_announcement(128, Topology::Star)
        .to_frame_bytes()
        .len();
    // Per signer: 33-byte key + Option tag + 1-byte length + 38-byte peer id = 73 bytes.
    assert_eq!(
        a128 - a2,
        126 * 73 + 1,
        "signer count varint grows from 1 to 2 bytes at 128"
    );
    assert!(a128 <= 16 * 1024);
    let a = verified(2, Topology::Mesh);
    let psig = envelope(
        &a,
        1,
        1,
        Body::PartialSig {
            attempt: attempt(0),
            partial_sigs: vec![PartialSigBytes::from_bytes([1; 32]).expect("ok")],
            aggregate: Some(musig2_proto::AggregateRef([0x24; 32])),
        },
    )
    .to_frame_bytes()
    .len();
    // tag + version + id + signer + seq + 6-byte timestamp + body tag + attempt + count + psig
    // + the aggregate it names + direct authentication (empty path, index, signature).
    assert_eq!(
        psig,
        1 + 1 + 32 + 1 + 1 + 6 + 1 + 1 + 1 + 32 + 1 + 32 + 2 + 64
    );
    // Final signatures travel unsigned: tag + version + id + attempt + count + signature.
    let finals = FinalSignatures::new(a.session_id(), attempt(0), vec![Signature64([7; 64])])
        .to_frame_bytes()
        .len();
    assert_eq!(finals, 1 + 1 + 32 + 1 + 1 + 64);
    // A star partial signature is the same size (both name their aggregate nonce).
    let star = verified(2, Topology::Star);
    let star_psig = envelope(
        &star,
        1,
        1,
        Body::PartialSig {
            attempt: attempt(0),
            partial_sigs: vec![PartialSigBytes::from_bytes([1; 32]).expect("ok")],
            aggregate: Some(Body::aggregate_ref(
                &star.session_id(),
                attempt(0),
                &[agg_nonce(&star, 0)],
            )),
        },
    )
    .to_frame_bytes()
    .len();
    assert_eq!(star_psig, psig);
    // The star AggregateNonce is O(1) in the number of signers (ADR 0011); the NonceSet, sent
    // only on failure, is what the AggregateNonce used to be.
    let sizes = |n: usize| {
        let a = verified(n, Topology::Star);
        let (agg, set) =
            Body::aggregate_nonce(&a, attempt(0), &nonce_envelopes(&a, 0)).expect("aggregate");
        (
            envelope(&a, 0, 1, agg).to_frame_bytes().len(),
            envelope(&a, 0, 1, set).to_frame_bytes().len(),
        )
    };
    let (agg3, set3) = sizes(3);
    let (agg100, set100) = sizes(100);
    assert_eq!(agg3, agg100);
    assert_eq!(agg3, 1 + 1 + 32 + 1 + 1 + 6 + 1 + 1 + 1 + 66 + 32 + 2 + 64);
    assert!(set100 >= set3 + 97 * (66 + 2 + 64));

    // Without peer ids: 34 bytes per signer.
    let mut bare = announcement(128, Topology::Star);
    for signer in &mut bare.signers {
        signer.peer_id = None;
    }
    let limits = Limits::default();
    let bare = bare
        .sign(&keypair(0), &limits)
        .expect("sign")
        .to_frame_bytes()
        .len();
    // (+ 2: an empty batch path and its index, ADR 0017.)
    assert_eq!(bare, 4547);
    // Worst case at default limits: 64-byte peer ids, 4 KiB message, 16 tweaks.
    let mut worst = announcement(128, Topology::Star);
    for signer in &mut worst.signers {
        signer.peer_id = Some(musig2_proto::PeerIdBytes::new(vec![7; 64]).expect("64 bytes"));
    }
    worst.messages[0].message = vec![0; limits.max_message_bytes];
    worst.messages[0].tweaks =
        vec![musig2_proto::Tweak::new([1; 32], false).expect("valid"); limits.max_tweaks];
    let worst = worst
        .sign(&keypair(0), &limits)
        .expect("sign")
        .to_frame_bytes();
    assert_eq!(worst.len(), 17436, "documented in docs/bench-proto.md");
    assert!(worst.len() <= limits.max_frame_bytes);
    assert!(decode_frame(&worst, &limits).is_ok());
}
