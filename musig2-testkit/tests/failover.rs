//! explore
use std::time::Duration;
use musig2_proto::Topology;
use musig2_testkit::{CrashPoint, Scenario};

#[tokio::test(start_paused = true)]
async fn explore() {
    for commitments in [true, false] {
        for point in CrashPoint::ALL {
            for down in [12u64, 25] {
            let r = Scenario::new(7, 4)
                .topology(Topology::Star)
                .commitments(commitments)
                .max_failovers(2)
                .crash_restart(0, point)
                .restart_after(Duration::from_secs(down))
                .run()
                .await
                .unwrap();
            println!("== commit {commitments} {point:?} down {down}: crash {:?}", r.crash.as_ref().map(|c| c.crashed));
            for h in &r.honest {
                println!("  {} {:?} {:?} coord {:?} att {:?}", h.signer, h.outcome, h.failovers.iter().map(|f| (f.attempt, f.coordinator.as_usize(), f.at.as_millis())).collect::<Vec<_>>(), h.health.as_ref().map(|x| x.coordinator.as_usize()), h.health.as_ref().map(|x| x.attempt.get()));
            }
            println!("  violations {:?}", r.randomized_violations());
            }
        }
    }
}
