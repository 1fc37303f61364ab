//! `musig2-core` side by side with libsecp256k1's MuSig2 module (`secp256k1::musig`) and the
//! `musig2` 0.4 crate, on identical inputs, for n = 2, 16 and 128 signers.
//!
//! Every operation is a criterion group with one line per implementation:
//! `<op>/ours/<n>`, `<op>/libsecp/<n>`, `<op>/musig2crate/<n>`. Parsing and every input the
//! operation does not itself produce are prepared outside the timed part. Before anything is
//! timed, the fixture checks that the three implementations agree (same aggregate key, nonces,
//! partial and final signatures), so the lines compare the same work.
//!
//! Run: `cargo bench -p musig2-benches --bench core -- --warm-up-time 1 --measurement-time 2`
//!
//! On a loaded machine criterion's medians of different lines are inflated unequally. With
//! `CORE_BENCH_PAIRED=1` the same closures run instead in alternation (3 ms batches, 41 rounds)
//! and each line prints its median and minimum per-iteration time over the rounds; ratios of
//! the minima do not depend on the load. Results and analysis: `docs/bench-core.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkGroup, BenchmarkId, Criterion, measurement::WallTime};
use musig2_core::secp256k1::{self, Keypair, PublicKey, SecretKey, XOnlyPublicKey, schnorr};
use musig2_core::{
    AggNonce, KeyAggContext, NonceGen, PartialSignature, PubNonce, SecNonce, SessionContext,
};
use musig2_ref::secp::{MaybeScalar, Point, Scalar as RefScalar};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use secp256k1::musig as lib;

const SIZES: [usize; 3] = [2, 16, 128];

/// Everything one benchmark size needs, for all three implementations, already parsed.
struct Fixture {
    n: usize,
    msg: [u8; 32],
    keypairs: Vec<Keypair>,
    pubkeys: Vec<PublicKey>,
    /// Signer 0's NonceGen input `rand'`.
    rand0: [u8; 32],

    ours_ctx: KeyAggContext,
    ours_pubnonces: Vec<PubNonce>,
    ours_aggnonce: AggNonce,
    ours_session: SessionContext,
    ours_psigs: Vec<PartialSignature>,
    ours_sig: schnorr::Signature,
    /// Signer 0's secret nonce, `k1 || k2 || pk`.
    secnonce0: [u8; 97],

    lib_cache: lib::KeyAggCache,
    lib_pubnonces: Vec<lib::PublicNonce>,
    lib_aggnonce: lib::AggregatedNonce,
    lib_session: lib::Session,
    lib_psigs: Vec<lib::PartialSignature>,
    lib_secnonce0: [u8; 132],
    lib_aggpk: XOnlyPublicKey,

    ref_pubkeys: Vec<Point>,
    ref_seckey0: RefScalar,
    ref_ctx: musig2_ref::KeyAggContext,
    ref_aggpk: Point,
    ref_pubnonces: Vec<musig2_ref::PubNonce>,
    ref_aggnonce: musig2_ref::AggNonce,
    ref_secnonce0: musig2_ref::SecNonce,
    ref_psigs: Vec<MaybeScalar>,
    ref_sig: musig2_ref::CompactSignature,
}

impl Fixture {
    fn new(n: usize) -> Fixture {
        let mut rng = ChaCha20Rng::seed_from_u64(0xbe7c_0000 + n as u64);
        let keypairs: Vec<Keypair> = (0..n)
            .map(|_| {
                loop {
                    if let Ok(sk) = SecretKey::from_secret_bytes(rng.random()) {
                        break Keypair::from_secret_key(&sk);
                    }
                }
            })
            .collect();
        let pubkeys: Vec<PublicKey> = keypairs.iter().map(Keypair::public_key).collect();
        let msg: [u8; 32] = rng.random();
        let rands: Vec<[u8; 32]> = (0..n).map(|_| rng.random()).collect();

        // Ours.
        let ours_ctx = KeyAggContext::new(&pubkeys).expect("key aggregation");
        let mut ours_secnonces = Vec::with_capacity(n);
        let mut ours_pubnonces = Vec::with_capacity(n);
        for (kp, rand) in keypairs.iter().zip(&rands) {
            let sk = kp.secret_key();
            let (sec, public) = NonceGen::new(kp.public_key())
                .secret_key(&sk)
                .key_agg(&ours_ctx)
                .message(&msg)
                .generate_from_rand(rand)
                .expect("nonce");
            ours_secnonces.push(sec);
            ours_pubnonces.push(public);
        }
        let secnonce0 = ours_secnonce_bytes(&keypairs[0], &ours_ctx, &msg, &rands[0]);
        let ours_aggnonce = AggNonce::aggregate(&ours_pubnonces);
        let ours_session = SessionContext::new(&ours_ctx, &ours_aggnonce, &msg);
        let ours_psigs: Vec<PartialSignature> = keypairs
            .iter()
            .zip(ours_secnonces)
            .map(|(kp, sec)| ours_session.sign(sec, kp).expect("sign"))
            .collect();
        let ours_sig = ours_session
            .aggregate_and_verify(&ours_psigs, &ours_pubnonces)
            .expect("valid");

        // libsecp256k1.
        let refs: Vec<&PublicKey> = pubkeys.iter().collect();
        let lib_cache = lib::KeyAggCache::new(&refs);
        let lib_aggpk = lib_cache.agg_pk();
        let mut lib_secnonces = Vec::with_capacity(n);
        let mut lib_pubnonces = Vec::with_capacity(n);
        for (kp, rand) in keypairs.iter().zip(&rands) {
            let (sec, public) = lib::new_nonce_pair(
                lib::SessionSecretRand::assume_uniformly_random(*rand),
                Some(&lib_cache),
                Some(kp.secret_key()),
                kp.public_key(),
                Some(&msg),
                None,
            );
            lib_secnonces.push(sec);
            lib_pubnonces.push(public);
        }
        let lib_secnonce0 = lib::new_nonce_pair(
            lib::SessionSecretRand::assume_uniformly_random(rands[0]),
            Some(&lib_cache),
            Some(keypairs[0].secret_key()),
            keypairs[0].public_key(),
            Some(&msg),
            None,
        )
        .0
        .dangerous_into_bytes();
        let lib_nonce_refs: Vec<&lib::PublicNonce> = lib_pubnonces.iter().collect();
        let lib_aggnonce = lib::AggregatedNonce::new(&lib_nonce_refs);
        let lib_session = lib::Session::new(&lib_cache, lib_aggnonce, &msg);
        let lib_psigs: Vec<lib::PartialSignature> = keypairs
            .iter()
            .zip(lib_secnonces)
            .map(|(kp, sec)| lib_session.partial_sign(sec, kp, &lib_cache))
            .collect();

        // The musig2 crate.
        let ref_pubkeys: Vec<Point> = pubkeys
            .iter()
            .map(|pk| Point::from_slice(&pk.serialize()).expect("point"))
            .collect();
        let ref_seckeys: Vec<RefScalar> = keypairs
            .iter()
            .map(|kp| RefScalar::from_slice(&kp.secret_key().to_secret_bytes()).expect("scalar"))
            .collect();
        let ref_ctx = musig2_ref::KeyAggContext::new(ref_pubkeys.iter().copied()).expect("agg");
        let ref_aggpk: Point = ref_ctx.aggregated_pubkey();
        let ref_secnonces: Vec<musig2_ref::SecNonce> = ref_seckeys
            .iter()
            .zip(&rands)
            .map(|(sk, rand)| ref_secnonce(*rand, *sk, ref_aggpk, &msg))
            .collect();
        let ref_pubnonces: Vec<musig2_ref::PubNonce> =
            ref_secnonces.iter().map(|s| s.public_nonce()).collect();
        let ref_aggnonce = musig2_ref::AggNonce::sum(ref_pubnonces.iter());
        let ref_psigs: Vec<MaybeScalar> = ref_seckeys
            .iter()
            .zip(ref_secnonces.iter().cloned())
            .map(|(sk, sec)| {
                musig2_ref::sign_partial(&ref_ctx, *sk, sec, &ref_aggnonce, msg).expect("sign")
            })
            .collect();
        let ref_sig: musig2_ref::CompactSignature = musig2_ref::aggregate_partial_signatures(
            &ref_ctx,
            &ref_aggnonce,
            ref_psigs.clone(),
            msg,
        )
        .expect("aggregate");

        // The three agree, so every line below times the same work.
        assert_eq!(ours_ctx.x_only_key(), lib_aggpk);
        assert_eq!(ours_ctx.aggregate_key().serialize(), ref_aggpk.serialize());
        for i in 0..n {
            assert_eq!(ours_pubnonces[i].to_bytes(), lib_pubnonces[i].serialize());
            let r = &ref_pubnonces[i];
            assert_eq!(
                ours_pubnonces[i].to_bytes()[..33],
                r.R1.serialize(),
                "musig2 crate R1 {i}"
            );
            assert_eq!(ours_psigs[i].to_bytes(), lib_psigs[i].serialize());
            assert_eq!(ours_psigs[i].to_bytes(), ref_psigs[i].serialize());
        }
        assert_eq!(ours_aggnonce.to_bytes(), lib_aggnonce.serialize());
        let imported = SecNonce::dangerous_from_bytes(&secnonce0).expect("secnonce");
        assert_eq!(
            ours_session.sign(imported, &keypairs[0]).expect("sign"),
            ours_psigs[0],
            "imported secret nonce of signer 0"
        );
        assert_eq!(ours_sig.to_byte_array()[..32], ref_sig.rx);
        assert_eq!(ours_sig.to_byte_array()[32..], ref_sig.s.serialize());

        Fixture {
            n,
            msg,
            rand0: rands[0],
            ours_ctx,
            ours_pubnonces,
            ours_aggnonce,
            ours_session,
            ours_psigs,
            ours_sig,
            secnonce0,
            lib_cache,
            lib_pubnonces,
            lib_aggnonce,
            lib_session,
            lib_psigs,
            lib_secnonce0,
            lib_aggpk,
            ref_seckey0: ref_seckeys[0],
            ref_pubkeys,
            ref_ctx,
            ref_aggpk,
            ref_pubnonces,
            ref_aggnonce,
            ref_secnonce0: ref_secnonces[0].clone(),
            ref_psigs,
            ref_sig,
            keypairs,
            pubkeys,
        }
    }
}

/// Signer 0's secret nonce as BIP327's 97 bytes, recomputed from the same NonceGen inputs (our
/// `SecNonce` is deliberately not exportable; the bytes are k1, k2 as NonceGen derives them).
fn ours_secnonce_bytes(
    kp: &Keypair,
    ctx: &KeyAggContext,
    msg: &[u8; 32],
    rand: &[u8; 32],
) -> [u8; 97] {
    // The musig2 crate's SecNonce serialises to exactly this layout.
    let sk = RefScalar::from_slice(&kp.secret_key().to_secret_bytes()).expect("scalar");
    let aggpk = Point::from_slice(&ctx.aggregate_key().serialize()).expect("point");
    let sec = ref_secnonce(*rand, sk, aggpk, msg);
    musig2_ref::BinaryEncoding::to_bytes(&sec)
}

fn ref_secnonce(
    rand: [u8; 32],
    sk: RefScalar,
    aggpk: Point,
    msg: &[u8; 32],
) -> musig2_ref::SecNonce {
    musig2_ref::SecNonce::build_with_seckey(rand, sk)
        .with_aggregated_pubkey(aggpk)
        .with_message(msg)
        .build()
}

/// Whether to run the interleaved A/B/C comparison instead of criterion (see the module docs).
fn paired_mode() -> bool {
    std::env::var_os("CORE_BENCH_PAIRED").is_some()
}

/// One implementation's benchmark closure, kept for paired mode.
type Line<'f> = Box<dyn FnMut(&mut Timer<'_, '_>) + 'f>;

/// One operation at one n: a criterion group, or (in paired mode) the lines to interleave.
struct Bench<'c, 'f> {
    name: &'static str,
    n: usize,
    group: Option<BenchmarkGroup<'c, WallTime>>,
    lines: Vec<(&'static str, Line<'f>)>,
}

impl<'c, 'f> Bench<'c, 'f> {
    fn new(c: &'c mut Criterion, name: &'static str, n: usize) -> Self {
        let group = (!paired_mode()).then(|| {
            let mut g = c.benchmark_group(name);
            // Large n makes one iteration milliseconds long: fewer samples keep the run short.
            g.sample_size(match n {
                0..=2 => 50,
                3..=16 => 20,
                _ => 10,
            });
            g
        });
        Bench {
            name,
            n,
            group,
            lines: Vec::new(),
        }
    }

    fn measurement_time(&mut self, d: Duration) {
        if let Some(g) = &mut self.group {
            g.measurement_time(d);
        }
    }

    fn bench_function<F>(&mut self, implementation: &'static str, mut f: F)
    where
        F: for<'r, 'b> FnMut(&mut Timer<'r, 'b>) + 'f,
    {
        match &mut self.group {
            Some(g) => {
                g.bench_function(BenchmarkId::new(implementation, self.n), |b| {
                    f(&mut Timer::Criterion(b))
                });
            }
            None => self.lines.push((implementation, Box::new(f))),
        }
    }

    fn finish(self) {
        match self.group {
            Some(g) => g.finish(),
            None => run_paired(self.name, self.n, self.lines),
        }
    }
}

/// Criterion's `Bencher`, or a plain timer running a fixed number of iterations.
enum Timer<'r, 'b> {
    Criterion(&'r mut criterion::Bencher<'b, WallTime>),
    Paired { iters: u64, elapsed: Duration },
}

impl Timer<'_, '_> {
    fn iter<O, R: FnMut() -> O>(&mut self, mut routine: R) {
        match self {
            Timer::Criterion(b) => b.iter(routine),
            Timer::Paired { iters, elapsed } => {
                let start = Instant::now();
                for _ in 0..*iters {
                    black_box(routine());
                }
                *elapsed = start.elapsed();
            }
        }
    }

    fn iter_batched<I, O, S, R>(&mut self, mut setup: S, mut routine: R, size: BatchSize)
    where
        S: FnMut() -> I,
        R: FnMut(I) -> O,
    {
        match self {
            Timer::Criterion(b) => b.iter_batched(setup, routine, size),
            Timer::Paired { iters, elapsed } => {
                let inputs: Vec<I> = (0..*iters).map(|_| setup()).collect();
                let start = Instant::now();
                for input in inputs {
                    black_box(routine(input));
                }
                *elapsed = start.elapsed();
            }
        }
    }
}

/// Paired mode: the implementations' lines run in alternation, a few milliseconds each, for
/// `ROUNDS` rounds, so load from other processes hits all of them alike. Prints, per line, the
/// median and minimum per-iteration time over the rounds.
fn run_paired(name: &str, n: usize, mut lines: Vec<(&'static str, Line<'_>)>) {
    const ROUNDS: usize = 41;
    const BATCH: Duration = Duration::from_millis(3);
    let run = |f: &mut Line<'_>, iters: u64| {
        let mut t = Timer::Paired {
            iters,
            elapsed: Duration::ZERO,
        };
        f(&mut t);
        match t {
            Timer::Paired { elapsed, .. } => elapsed,
            Timer::Criterion(_) => unreachable!("paired timer"),
        }
    };
    // Calibrate the iterations per batch (after one warm-up batch).
    let mut iters = Vec::with_capacity(lines.len());
    for (_, f) in lines.iter_mut() {
        run(f, 1);
        let mut k = 1u64;
        loop {
            let t = run(f, k);
            if t >= BATCH / 4 || k >= 1 << 20 {
                let per = t.as_nanos().max(1) / u128::from(k);
                iters.push(u64::try_from((BATCH.as_nanos() / per.max(1)).max(1)).unwrap_or(1));
                break;
            }
            k *= 4;
        }
    }
    let mut samples = vec![Vec::with_capacity(ROUNDS); lines.len()];
    for _ in 0..ROUNDS {
        for (i, (_, f)) in lines.iter_mut().enumerate() {
            let t = run(f, iters[i]);
            samples[i].push(t.as_secs_f64() * 1e6 / iters[i] as f64);
        }
    }
    for ((implementation, _), s) in lines.iter().zip(&mut samples) {
        s.sort_by(f64::total_cmp);
        println!(
            "paired {name}/{implementation}/{n} median_us {:.4} min_us {:.4}",
            s[s.len() / 2],
            s[0]
        );
    }
}

fn bench_key_agg(c: &mut Criterion, f: &Fixture) {
    let mut g = Bench::new(c, "key_agg", f.n);
    g.bench_function("ours", |b| {
        b.iter(|| KeyAggContext::new(black_box(&f.pubkeys)).expect("agg"))
    });
    let refs: Vec<&PublicKey> = f.pubkeys.iter().collect();
    g.bench_function("libsecp", move |b| {
        b.iter(|| lib::KeyAggCache::new(black_box(&refs)))
    });
    g.bench_function("musig2crate", |b| {
        b.iter(|| {
            musig2_ref::KeyAggContext::new(black_box(&f.ref_pubkeys).iter().copied()).expect("agg")
        })
    });
    g.finish();
}

fn bench_nonce_gen(c: &mut Criterion, f: &Fixture) {
    let mut g = Bench::new(c, "nonce_gen", f.n);
    let kp = f.keypairs[0];
    let sk = kp.secret_key();
    let pk = kp.public_key();
    g.bench_function("ours", |b| {
        b.iter(|| {
            NonceGen::new(pk)
                .secret_key(&sk)
                .key_agg(&f.ours_ctx)
                .message(&f.msg)
                .generate_from_rand(black_box(&f.rand0))
                .expect("nonce")
        })
    });
    g.bench_function("libsecp", |b| {
        b.iter(|| {
            lib::new_nonce_pair(
                lib::SessionSecretRand::assume_uniformly_random(black_box(f.rand0)),
                Some(&f.lib_cache),
                Some(sk),
                pk,
                Some(&f.msg),
                None,
            )
        })
    });
    g.bench_function("musig2crate", |b| {
        b.iter(|| {
            let sec = ref_secnonce(black_box(f.rand0), f.ref_seckey0, f.ref_aggpk, &f.msg);
            let public = sec.public_nonce();
            (sec, public)
        })
    });
    g.finish();
}

fn bench_nonce_agg(c: &mut Criterion, f: &Fixture) {
    let mut g = Bench::new(c, "nonce_agg", f.n);
    g.bench_function("ours", |b| {
        b.iter(|| AggNonce::aggregate(black_box(&f.ours_pubnonces)))
    });
    let refs: Vec<&lib::PublicNonce> = f.lib_pubnonces.iter().collect();
    g.bench_function("libsecp", move |b| {
        b.iter(|| lib::AggregatedNonce::new(black_box(&refs)))
    });
    g.bench_function("musig2crate", |b| {
        b.iter(|| musig2_ref::AggNonce::sum(black_box(&f.ref_pubnonces).iter()))
    });
    g.finish();
}

/// The musig2 crate's session values (it has no session object: `sign_partial` and
/// `verify_partial` recompute these on every call).
fn ref_session_values(f: &Fixture) -> (MaybeScalar, Point, MaybeScalar) {
    let b: MaybeScalar = f.ref_aggnonce.nonce_coefficient(f.ref_aggpk, f.msg);
    let r: Point = f.ref_aggnonce.final_nonce(b);
    let e: MaybeScalar =
        musig2_ref::compute_challenge_hash_tweak(&r.serialize_xonly(), &f.ref_aggpk, f.msg);
    (b, r, e)
}

fn bench_session(c: &mut Criterion, f: &Fixture) {
    let mut g = Bench::new(c, "session", f.n);
    g.bench_function("ours", |b| {
        b.iter(|| SessionContext::new(&f.ours_ctx, black_box(&f.ours_aggnonce), &f.msg))
    });
    g.bench_function("libsecp", |b| {
        b.iter(|| lib::Session::new(&f.lib_cache, black_box(f.lib_aggnonce), &f.msg))
    });
    g.bench_function("musig2crate", |b| {
        b.iter(|| ref_session_values(black_box(f)))
    });
    g.finish();
}

fn bench_sign(c: &mut Criterion, f: &Fixture) {
    let mut g = Bench::new(c, "sign", f.n);
    // Our signing takes well under a microsecond while importing the consumed secret nonce
    // (untimed, but wall-clock) takes several: a shorter measurement keeps the run short and
    // still times over a hundred thousand signatures.
    g.measurement_time(Duration::from_millis(300));
    let kp = f.keypairs[0];
    // Each iteration consumes a secret nonce; importing one (untimed) is a copy plus a point
    // parse, much cheaper than generating one.
    g.bench_function("ours", |b| {
        b.iter_batched(
            || SecNonce::dangerous_from_bytes(&f.secnonce0).expect("secnonce"),
            |sec| f.ours_session.sign(sec, &kp).expect("sign"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("libsecp", |b| {
        b.iter_batched(
            || lib::SecretNonce::dangerous_from_bytes(f.lib_secnonce0),
            |sec| f.lib_session.partial_sign(sec, &kp, &f.lib_cache),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("musig2crate", |b| {
        b.iter_batched(
            || f.ref_secnonce0.clone(),
            |sec| {
                musig2_ref::sign_partial::<MaybeScalar>(
                    &f.ref_ctx,
                    f.ref_seckey0,
                    sec,
                    &f.ref_aggnonce,
                    f.msg,
                )
                .expect("sign")
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_partial_verify(c: &mut Criterion, f: &Fixture) {
    let mut g = Bench::new(c, "partial_verify", f.n);
    let i = f.n - 1;
    g.bench_function("ours", |b| {
        b.iter(|| {
            f.ours_session
                .verify_partial(i, black_box(&f.ours_psigs[i]), &f.ours_pubnonces[i])
                .expect("valid")
        })
    });
    g.bench_function("libsecp", |b| {
        b.iter(|| {
            assert!(f.lib_session.partial_verify(
                &f.lib_cache,
                black_box(&f.lib_psigs[i]),
                &f.lib_pubnonces[i],
                f.pubkeys[i],
            ))
        })
    });
    g.bench_function("musig2crate", |b| {
        b.iter(|| {
            musig2_ref::verify_partial(
                &f.ref_ctx,
                black_box(f.ref_psigs[i]),
                &f.ref_aggnonce,
                f.ref_pubkeys[i],
                &f.ref_pubnonces[i],
                f.msg,
            )
            .expect("valid")
        })
    });
    g.finish();
}

fn bench_sig_agg(c: &mut Criterion, f: &Fixture) {
    let mut g = Bench::new(c, "sig_agg", f.n);
    g.bench_function("ours", |b| {
        b.iter(|| {
            f.ours_session
                .aggregate(black_box(&f.ours_psigs))
                .expect("agg")
        })
    });
    let refs: Vec<&lib::PartialSignature> = f.lib_psigs.iter().collect();
    g.bench_function("libsecp", move |b| {
        b.iter(|| f.lib_session.partial_sig_agg(black_box(&refs)))
    });
    // The crate's `aggregate_partial_signatures` always verifies; this is the same sum from
    // its public parts, without verification, with the session values it recomputes.
    g.bench_function("musig2crate", |b| {
        b.iter(|| {
            let (_, r, e) = ref_session_values(f);
            let tweak: MaybeScalar = f.ref_ctx.tweak_sum().unwrap_or(MaybeScalar::Zero);
            let s = black_box(&f.ref_psigs).iter().copied().sum::<MaybeScalar>()
                + (e * tweak).negate_if(f.ref_aggpk.parity());
            musig2_ref::CompactSignature::new(r, s)
        })
    });
    g.finish();
}

fn bench_final_verify(c: &mut Criterion, f: &Fixture) {
    let mut g = Bench::new(c, "final_verify", f.n);
    g.bench_function("ours", |b| {
        b.iter(|| {
            musig2_core::verify_signature(black_box(&f.ours_sig), &f.msg, &f.ours_ctx.x_only_key())
                .expect("valid")
        })
    });
    g.bench_function("libsecp", |b| {
        b.iter(|| schnorr::verify(black_box(&f.ours_sig), &f.msg, &f.lib_aggpk).expect("valid"))
    });
    g.bench_function("musig2crate", |b| {
        b.iter(|| {
            musig2_ref::verify_single(f.ref_aggpk, black_box(f.ref_sig), f.msg).expect("valid")
        })
    });
    g.finish();
}

fn bench_aggregate_and_verify(c: &mut Criterion, f: &Fixture) {
    let mut g = Bench::new(c, "aggregate_and_verify", f.n);
    g.bench_function("ours", |b| {
        b.iter(|| {
            f.ours_session
                .aggregate_and_verify(black_box(&f.ours_psigs), &f.ours_pubnonces)
                .expect("valid")
        })
    });
    let refs: Vec<&lib::PartialSignature> = f.lib_psigs.iter().collect();
    g.bench_function("libsecp", move |b| {
        b.iter(|| {
            let sig = f
                .lib_session
                .partial_sig_agg(black_box(&refs))
                .assume_valid();
            schnorr::verify(&sig, &f.msg, &f.lib_aggpk).expect("valid");
            sig
        })
    });
    g.bench_function("musig2crate", |b| {
        b.iter(|| {
            musig2_ref::aggregate_partial_signatures::<_, musig2_ref::CompactSignature>(
                &f.ref_ctx,
                &f.ref_aggnonce,
                black_box(&f.ref_psigs).iter().copied(),
                f.msg,
            )
            .expect("valid")
        })
    });
    // The alternative the fast path avoids: verifying every partial signature.
    g.bench_function("libsecp_verify_each", |b| {
        b.iter(|| {
            for i in 0..f.n {
                assert!(f.lib_session.partial_verify(
                    &f.lib_cache,
                    black_box(&f.lib_psigs[i]),
                    &f.lib_pubnonces[i],
                    f.pubkeys[i],
                ));
            }
        })
    });
    g.finish();
}

/// The `secp256k1` 0.33 calls the operations above are built from, for the profile in
/// docs/bench-core.md.
fn bench_primitives(c: &mut Criterion) {
    let mut g = c.benchmark_group("primitives");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(700));
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let sk = loop {
        if let Ok(sk) = SecretKey::from_secret_bytes(rng.random()) {
            break sk;
        }
    };
    let pk = PublicKey::from_secret_key(&sk);
    let pk2 = PublicKey::from_secret_key(&SecretKey::from_secret_bytes([3; 32]).expect("key"));
    let generator = PublicKey::from_secret_key(
        &SecretKey::from_secret_bytes({
            let mut one = [0u8; 32];
            one[31] = 1;
            one
        })
        .expect("one"),
    );
    let tweak = secp256k1::Scalar::from_be_bytes(rng.random::<[u8; 32]>().map(|b| b & 0x7f))
        .expect("tweak");
    g.bench_function("from_secret_key", |b| {
        b.iter(|| PublicKey::from_secret_key(black_box(&sk)))
    });
    g.bench_function("ecdh_point_with_G", |b| {
        b.iter(|| secp256k1::ecdh::shared_secret_point(&generator, black_box(&sk)))
    });
    g.bench_function("mul_tweak", |b| b.iter(|| black_box(pk).mul_tweak(&tweak)));
    g.bench_function("add_exp_tweak", |b| {
        b.iter(|| black_box(pk).add_exp_tweak(&tweak))
    });
    g.bench_function("combine_keys_2", |b| {
        b.iter(|| PublicKey::combine_keys(&[black_box(&pk), &pk2]))
    });
    g.finish();
}

fn main() {
    let mut c = if paired_mode() {
        Criterion::default()
    } else {
        let mut c = Criterion::default().configure_from_args();
        bench_primitives(&mut c);
        c
    };
    for n in SIZES {
        let f = Fixture::new(n);
        if paired_mode() {
            println!("paired fixture n={n} ready");
        }
        bench_key_agg(&mut c, &f);
        bench_nonce_gen(&mut c, &f);
        bench_nonce_agg(&mut c, &f);
        bench_session(&mut c, &f);
        bench_sign(&mut c, &f);
        bench_partial_verify(&mut c, &f);
        bench_sig_agg(&mut c, &f);
        bench_final_verify(&mut c, &f);
        bench_aggregate_and_verify(&mut c, &f);
    }
    if !paired_mode() {
        c.final_summary();
    }
}
