//! musig2-proto: encode+sign and decode+verify of envelopes and announcements, against the
//! floor of one bare BIP340 sign / verify measured in the same run.
//!
//! Run: `cargo bench -p musig2-benches --bench proto -- --warm-up-time 1 --measurement-time 3`

#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented pub fn"
)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use musig2_proto::{
    Announcement, Body, Envelope, Frame, Limits, PartialSigBytes, PubNonceBytes, SeqNo,
    SignedAnnouncement, SignedEnvelope, SignerIndex, Topology, VerifiedAnnouncement, decode_frame,
};
use secp256k1::{Keypair, PublicKey, SecretKey, XOnlyPublicKey, schnorr};

const NOW: u64 = 1_700_000_000_000;

fn keypair(i: usize) -> Keypair {
    let mut sk = [0u8; 32];
    sk[0] = 0x11;
    sk[30] = u8::try_from((i + 1) >> 8).expect("small");
    sk[31] = u8::try_from((i + 1) & 0xFF).expect("small");
    Keypair::from_secret_bytes(sk).expect("valid key")
}

fn announcement(n: usize) -> Announcement {
    let keys: Vec<PublicKey> = (0..n).map(|i| keypair(i).public_key()).collect();
    let mut a = Announcement::new(
        keys,
        b"bench message: a 32-byte sighash".to_vec(),
        SignerIndex::new(0).expect("index"),
        NOW,
        NOW + 600_000,
    );
    a.policy.topology = Topology::Star;
    for (i, s) in a.signers.iter_mut().enumerate() {
        let mut peer = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        peer.extend_from_slice(&[u8::try_from(i % 256).expect("fits"); 32]);
        s.peer_id = Some(musig2_proto::PeerIdBytes::new(peer).expect("peer id"));
    }
    a
}

fn verified(n: usize) -> VerifiedAnnouncement {
    announcement(n)
        .sign(&keypair(0), &Limits::default())
        .expect("sign")
        .verify(NOW, &Limits::default())
        .expect("verify")
}

fn pub_nonce() -> PubNonceBytes {
    let p = |s: u8| {
        PublicKey::from_secret_key(&SecretKey::from_secret_bytes([s; 32]).expect("valid"))
            .serialize()
    };
    let mut b = [0u8; 66];
    b[..33].copy_from_slice(&p(3));
    b[33..].copy_from_slice(&p(4));
    PubNonceBytes::from_bytes(b).expect("valid nonce")
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let kp = keypair(1);
    let xonly: XOnlyPublicKey = kp.x_only_public_key().0;
    let msg = [0x42u8; 32];
    let sig = kp.sign_schnorr(&msg);

    let mut floor = c.benchmark_group("floor");
    floor.bench_function("bip340_sign", |b| {
        b.iter(|| black_box(&kp).sign_schnorr(black_box(&msg)))
    });
    floor.bench_function("bip340_verify", |b| {
        b.iter(|| schnorr::verify(black_box(&sig), black_box(&msg), black_box(&xonly)))
    });
    floor.finish();

    let a = verified(3);
    let bodies = [
        (
            "partial_sig",
            Body::PartialSig {
                attempt: musig2_proto::Attempt::FIRST,
                partial_sigs: vec![PartialSigBytes::from_bytes([0x42; 32]).expect("valid")],
                aggregate: Some(musig2_proto::AggregateRef([0x24; 32])),
            },
        ),
        (
            "nonce",
            Body::Nonce {
                attempt: musig2_proto::Attempt::FIRST,
                pub_nonces: vec![pub_nonce()],
            },
        ),
    ];
    let mut env = c.benchmark_group("envelope");
    for (name, body) in &bodies {
        env.bench_function(BenchmarkId::new("encode_sign", name), |b| {
            b.iter(|| {
                Envelope::sign(
                    &a,
                    SignerIndex::new(1).expect("index"),
                    SeqNo::FIRST,
                    NOW,
                    black_box(body.clone()),
                    &kp,
                )
                .to_frame_bytes()
            })
        });
        let wire = Envelope::sign(
            &a,
            SignerIndex::new(1).expect("index"),
            SeqNo::FIRST,
            NOW,
            body.clone(),
            &kp,
        )
        .to_frame_bytes();
        let signed = Envelope::sign(
            &a,
            SignerIndex::new(1).expect("index"),
            SeqNo::FIRST,
            NOW,
            body.clone(),
            &kp,
        );
        // The parts that are not the signature: encoding (plus the signing hash) and decoding.
        env.bench_function(BenchmarkId::new("encode_only", name), |b| {
            b.iter(|| {
                (
                    black_box(&signed).envelope().signing_hash(),
                    black_box(&signed).to_frame_bytes(),
                )
            })
        });
        env.bench_function(BenchmarkId::new("decode_only", name), |b| {
            b.iter(|| decode_frame(black_box(&wire), &limits).expect("decode"))
        });
        env.bench_function(BenchmarkId::new("decode_verify", name), |b| {
            b.iter(|| match decode_frame(black_box(&wire), &limits) {
                Ok(Frame::Envelope(e)) => e.verify(&a).expect("valid"),
                other => panic!("unexpected {other:?}"),
            })
        });
    }
    env.finish();

    let mut ann = c.benchmark_group("announcement");
    for n in [2usize, 16, 128] {
        let unsigned = announcement(n);
        let creator = keypair(0);
        ann.bench_function(BenchmarkId::new("encode_sign", n), |b| {
            b.iter(|| {
                black_box(unsigned.clone())
                    .sign(&creator, &limits)
                    .expect("sign")
                    .to_frame_bytes()
            })
        });
        let wire = unsigned
            .clone()
            .sign(&creator, &limits)
            .expect("sign")
            .to_frame_bytes();
        ann.bench_function(BenchmarkId::new("decode_verify", n), |b| {
            b.iter(|| {
                SignedAnnouncement::decode(black_box(&wire), &limits)
                    .expect("decode")
                    .verify(NOW, &limits)
                    .expect("verify")
            })
        });
    }
    ann.finish();
}

/// Paired measurement, robust to load from other processes on a shared machine: alternates short
/// blocks of the floor and of the operation and reports the median of the per-round ratios.
fn paired(name: &str, k: u32, mut floor: impl FnMut(), mut op: impl FnMut()) {
    const ROUNDS: usize = 101;
    let mut ratios = Vec::with_capacity(ROUNDS);
    let mut op_times = Vec::with_capacity(ROUNDS);
    let mut floor_times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            for _ in 0..k {
                f();
            }
            t.elapsed().as_secs_f64() / f64::from(k)
        };
        let (f, o) = if round % 2 == 0 {
            let f = time(&mut floor);
            (f, time(&mut op))
        } else {
            let o = time(&mut op);
            (time(&mut floor), o)
        };
        ratios.push(o / f);
        op_times.push(o);
        floor_times.push(f);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let r = median(&mut ratios);
    println!(
        "paired {name}: op {:.2} us, floor {:.2} us, overhead {:+.1} %",
        median(&mut op_times) * 1e6,
        median(&mut floor_times) * 1e6,
        (r - 1.0) * 100.0
    );
}

fn bench_paired(_c: &mut Criterion) {
    let limits = Limits::default();
    let kp = keypair(1);
    let xonly: XOnlyPublicKey = kp.x_only_public_key().0;
    let msg = [0x42u8; 32];
    let sig = kp.sign_schnorr(&msg);
    let a = verified(3);
    let bodies = [
        (
            "partial_sig",
            Body::PartialSig {
                attempt: musig2_proto::Attempt::FIRST,
                partial_sigs: vec![PartialSigBytes::from_bytes([0x42; 32]).expect("valid")],
                aggregate: Some(musig2_proto::AggregateRef([0x24; 32])),
            },
        ),
        (
            "nonce",
            Body::Nonce {
                attempt: musig2_proto::Attempt::FIRST,
                pub_nonces: vec![pub_nonce()],
            },
        ),
    ];
    let index = SignerIndex::new(1).expect("index");
    for (name, body) in &bodies {
        paired(
            &format!("envelope/encode_sign/{name}"),
            50,
            || {
                black_box(kp.sign_schnorr(black_box(&msg)));
            },
            || {
                black_box(
                    Envelope::sign(&a, index, SeqNo::FIRST, NOW, body.clone(), &kp)
                        .to_frame_bytes(),
                );
            },
        );
        let wire = Envelope::sign(&a, index, SeqNo::FIRST, NOW, body.clone(), &kp).to_frame_bytes();
        paired(
            &format!("envelope/decode_verify/{name}"),
            50,
            || {
                black_box(schnorr::verify(&sig, black_box(&msg), &xonly).is_ok());
            },
            || {
                let e = SignedEnvelope::decode(black_box(&wire), &limits).expect("decode");
                black_box(e.verify(&a).expect("verify"));
            },
        );
    }
    for n in [2usize, 16, 128] {
        let unsigned = announcement(n);
        let creator = keypair(0);
        let k = if n == 128 { 5 } else { 20 };
        paired(
            &format!("announcement/encode_sign/{n}"),
            k,
            || {
                black_box(creator.sign_schnorr(black_box(&msg)));
            },
            || {
                black_box(
                    unsigned
                        .clone()
                        .sign(&creator, &limits)
                        .expect("sign")
                        .to_frame_bytes(),
                );
            },
        );
        let wire = unsigned
            .clone()
            .sign(&creator, &limits)
            .expect("sign")
            .to_frame_bytes();
        paired(
            &format!("announcement/decode_verify/{n}"),
            k,
            || {
                black_box(schnorr::verify(&sig, black_box(&msg), &xonly).is_ok());
            },
            || {
                let s = SignedAnnouncement::decode(black_box(&wire), &limits).expect("decode");
                black_box(s.verify(NOW, &limits).expect("verify"));
            },
        );
    }
}

criterion_group!(benches, bench_paired, bench);
criterion_main!(benches);
