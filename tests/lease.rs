//! The Lease semaphore against the simulator, through the real kube client:
//! mutual exclusion under contention, the takeover rule, resume after our
//! own reboot, and waking within seconds of a release.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drydock::testing::cluster::lease::{LeaseClient, LeaseError};
use drydock::testing::cluster::observe::observe;
use drydock::testing::config::Settings;
use drydock::testing::gates::{self, AlertObservation};
use drydock::testing::sim::{Scenario, SimHandle};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn settings(duration: Duration) -> Settings {
    let mut s = Settings::default();
    s.lease.duration = duration;
    s.gates.soak = Duration::ZERO;
    s
}

fn client_for(sim: &SimHandle, s: &Settings, node: &str) -> LeaseClient {
    LeaseClient::new(sim.client().expect("client"), s, node)
}

/// Puts a Lease held by `holder`, last renewed `age` ago, for 10 s.
async fn stale_lease(sim: &SimHandle, slot: &str, holder: &str, age: Duration) -> TestResult {
    let leases: Api<Lease> = Api::namespaced(sim.client()?, "drydock");
    let renewed = Timestamp::now() - jiff::SignedDuration::try_from(age)?;
    leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some(slot.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.into()),
                    lease_duration_seconds: Some(10),
                    acquire_time: Some(MicroTime(renewed)),
                    renew_time: Some(MicroTime(renewed)),
                    ..Default::default()
                }),
            },
        )
        .await?;
    Ok(())
}

async fn holder(sim: &SimHandle, slot: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(sim.client().ok()?, "drydock");
    leases
        .get(slot)
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_contenders_never_hold_the_single_slot_together() -> TestResult {
    const ROUNDS: usize = 40;
    let sim = Scenario::cluster(0, 2).start().await?;
    let s = settings(Duration::from_secs(120));
    let inside = Arc::new(AtomicUsize::new(0));
    let winners = Arc::new(AtomicUsize::new(0));
    // Both contenders start every round together, so they race for real.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for node in ["worker-1", "worker-2"] {
        let lease = client_for(&sim, &s, node);
        let (inside, winners, barrier) = (inside.clone(), winners.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut wins = 0;
            for _ in 0..ROUNDS {
                barrier.wait().await;
                let held = lease.acquire(true).await.expect("acquire");
                if held.is_some() {
                    let before = inside.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(before, 0, "{node} got the slot while another held it");
                    winners.fetch_add(1, Ordering::SeqCst);
                    wins += 1;
                }
                // Both have tried; the winner still holds it here.
                barrier.wait().await;
                if let Some(held) = held {
                    inside.fetch_sub(1, Ordering::SeqCst);
                    lease.release(&held).await.expect("release");
                }
                barrier.wait().await;
            }
            wins
        }));
    }
    let mut per_node = Vec::new();
    for t in tasks {
        per_node.push(t.await?);
    }
    // Exactly one winner per round: never two, never none.
    assert_eq!(winners.load(Ordering::SeqCst), ROUNDS, "{per_node:?}");
    assert!(
        per_node.iter().all(|w| *w > 0),
        "both should win sometimes: {per_node:?}"
    );
    // The races were real: the losers' writes got 409 Conflict.
    let stats = sim.stats();
    let conflicts = stats.get("update", "leases").errors + stats.get("create", "leases").errors;
    assert!(conflicts > 0, "{stats}");
    assert_eq!(holder(&sim, "drydock-default-0").await, None);
    Ok(())
}

#[tokio::test]
async fn concurrency_two_gives_two_distinct_slots() -> TestResult {
    let sim = Scenario::cluster(0, 3).start().await?;
    let mut s = settings(Duration::from_secs(120));
    s.lease.concurrency = 2;
    let a = client_for(&sim, &s, "worker-1")
        .acquire(true)
        .await?
        .expect("a");
    let b = client_for(&sim, &s, "worker-2")
        .acquire(true)
        .await?
        .expect("b");
    assert_ne!(a.slot, b.slot);
    assert!(
        client_for(&sim, &s, "worker-3")
            .acquire(true)
            .await?
            .is_none()
    );
    let slots = client_for(&sim, &s, "worker-3").slots().await?;
    let holders: Vec<_> = slots.iter().map(|s| s.holder.clone()).collect();
    assert_eq!(
        holders,
        [Some("worker-1".to_string()), Some("worker-2".to_string())]
    );
    assert!(slots.iter().all(|s| !s.expired && s.expires_at.is_some()));
    Ok(())
}

#[tokio::test]
async fn expired_lease_of_a_deleted_node_is_reclaimed() -> TestResult {
    let sim = Scenario::cluster(0, 2).start().await?;
    let s = settings(Duration::from_secs(120));
    stale_lease(
        &sim,
        "drydock-default-0",
        "worker-2",
        Duration::from_secs(60),
    )
    .await?;
    let me = client_for(&sim, &s, "worker-1");
    // The holder exists and the gates block: hands off.
    assert!(me.acquire(false).await?.is_none());
    assert_eq!(
        holder(&sim, "drydock-default-0").await.as_deref(),
        Some("worker-2")
    );
    sim.delete_node("worker-2")?;
    let held = me
        .acquire(false)
        .await?
        .expect("reclaimed from a deleted node");
    assert_eq!(held.slot, "drydock-default-0");
    assert_eq!(
        holder(&sim, "drydock-default-0").await.as_deref(),
        Some("worker-1")
    );
    Ok(())
}

#[tokio::test]
async fn expired_lease_of_a_not_ready_holder_is_not_taken_over() -> TestResult {
    let sim = Scenario::cluster(0, 3).start().await?;
    let s = settings(Duration::from_secs(120));
    stale_lease(
        &sim,
        "drydock-default-0",
        "worker-2",
        Duration::from_secs(60),
    )
    .await?;
    sim.set_node_ready("worker-2", false)?;
    let client = sim.client()?;
    let me = client_for(&sim, &s, "worker-1");

    // The real pipeline: observe, gates, then acquire with their verdict.
    let obs = observe(&client, &s, "worker-1").await?;
    let reports =
        gates::evaluate_cluster(&s, &obs, &AlertObservation::NotConfigured, Timestamp::now());
    let block = gates::first_block(&reports).expect("a gate blocks");
    assert_eq!(block.gate, "nodes-ready");
    assert!(
        block
            .verdict
            .reason()
            .unwrap()
            .starts_with("node worker-2 NotReady"),
        "{block:?}"
    );
    assert!(me.acquire(gates::all_pass(&reports)).await?.is_none());
    assert_eq!(
        holder(&sim, "drydock-default-0").await.as_deref(),
        Some("worker-2")
    );

    // A live (unexpired) lease is never taken, even with passing gates.
    sim.set_node_ready("worker-2", true)?;
    let other = client_for(&sim, &s, "worker-3");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "drydock");
    let mut l = leases.get("drydock-default-0").await?;
    l.spec.as_mut().unwrap().renew_time = Some(MicroTime(Timestamp::now()));
    leases
        .replace("drydock-default-0", &PostParams::default(), &l)
        .await?;
    assert!(other.acquire(true).await?.is_none());

    // Once it has expired and the gates pass, it is taken over.
    l = leases.get("drydock-default-0").await?;
    l.spec.as_mut().unwrap().renew_time = Some(MicroTime(
        Timestamp::now() - jiff::SignedDuration::from_secs(11),
    ));
    leases
        .replace("drydock-default-0", &PostParams::default(), &l)
        .await?;
    let obs = observe(&client, &s, "worker-1").await?;
    let reports =
        gates::evaluate_cluster(&s, &obs, &AlertObservation::NotConfigured, Timestamp::now());
    assert!(gates::all_pass(&reports), "{reports:?}");
    let held = me.acquire(true).await?.expect("takeover");
    assert_eq!(held.slot, "drydock-default-0");
    Ok(())
}

#[tokio::test]
async fn our_own_lease_is_resumed_and_renewed_not_reacquired() -> TestResult {
    let sim = Scenario::cluster(0, 2).start().await?;
    let s = settings(Duration::from_secs(120));
    let first = client_for(&sim, &s, "worker-1")
        .acquire(true)
        .await?
        .expect("held");
    let acquired_at = first.acquired_at();
    // A new process (after our reboot) finds it ours.
    let again = client_for(&sim, &s, "worker-1");
    let mine = again.mine().await?.expect("still ours");
    assert!(mine.resumed);
    assert_eq!(mine.acquired_at(), acquired_at);
    assert!(mine.renewed_at() > first.renewed_at());
    let resumed = again.acquire(true).await?.expect("ours");
    assert!(resumed.resumed);
    assert_eq!(resumed.slot, first.slot);
    assert_eq!(resumed.acquired_at(), acquired_at);
    assert!(client_for(&sim, &s, "worker-2").mine().await?.is_none());
    Ok(())
}

#[tokio::test]
async fn renewing_a_lease_taken_over_by_another_node_fails() -> TestResult {
    let sim = Scenario::cluster(0, 2).start().await?;
    let short = settings(Duration::from_secs(1));
    let a = client_for(&sim, &short, "worker-1");
    let mut held = a.acquire(true).await?.expect("held");
    a.renew(&mut held).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = client_for(&sim, &short, "worker-2");
    assert!(
        b.acquire(true).await?.is_some(),
        "expired + gates pass: takeover"
    );
    match a.renew(&mut held).await {
        Err(LeaseError::Lost { holder, .. }) => assert_eq!(holder.as_deref(), Some("worker-2")),
        other => panic!("expected Lost, got {other:?}"),
    }
    // Releasing what is no longer ours leaves the new holder alone.
    a.release(&held).await?;
    assert_eq!(
        holder(&sim, "drydock-default-0").await.as_deref(),
        Some("worker-2")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_node_wakes_within_two_seconds_of_a_release() -> TestResult {
    let sim = Scenario::cluster(0, 2).start().await?;
    let s = settings(Duration::from_secs(120));
    let a = client_for(&sim, &s, "worker-1");
    let mut held = a.acquire(true).await?.expect("a holds");
    let b = Arc::new(client_for(&sim, &s, "worker-2"));
    assert!(b.acquire(true).await?.is_none());

    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let r = b.wait_for_change(Duration::from_secs(30)).await;
            (r, Instant::now())
        })
    };
    // A renewal is not a change: the waiter keeps waiting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.renew(&mut held).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "woke on a mere renewal");

    let released = Instant::now();
    a.release(&held).await?;
    let (changed, woke) = waiter.await?;
    assert!(changed?, "should report a change");
    let delay = woke.duration_since(released);
    assert!(
        delay < Duration::from_secs(2),
        "woke {delay:?} after release"
    );
    let got = b.acquire(true).await?.expect("b takes the freed slot");
    assert_eq!(got.slot, "drydock-default-0");
    let total = released.elapsed();
    assert!(
        total < Duration::from_secs(2),
        "acquired {total:?} after release"
    );
    Ok(())
}

#[tokio::test]
async fn waiting_node_wakes_when_the_holder_stops_renewing() -> TestResult {
    let sim = Scenario::cluster(0, 2).start().await?;
    let a = client_for(&sim, &settings(Duration::from_secs(1)), "worker-1");
    a.acquire(true).await?.expect("a holds");
    let b = client_for(&sim, &settings(Duration::from_secs(120)), "worker-2");
    assert!(b.acquire(true).await?.is_none());
    let start = Instant::now();
    assert!(b.wait_for_change(Duration::from_secs(10)).await?);
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    b.acquire(true)
        .await?
        .expect("expired, gates pass: b takes over");
    // A live holder and no release: a plain timeout, "no change".
    let c = client_for(&sim, &settings(Duration::from_secs(120)), "worker-1");
    assert_eq!(c.slots().await?[0].holder.as_deref(), Some("worker-2"));
    let start = Instant::now();
    assert!(!c.wait_for_change(Duration::from_millis(1500)).await?);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    Ok(())
}

#[tokio::test]
async fn own_expired_lease_after_a_long_reboot_is_resumed() -> TestResult {
    let sim = Scenario::cluster(0, 2).start().await?;
    let short = settings(Duration::from_secs(1));
    let first = client_for(&sim, &short, "worker-1")
        .acquire(true)
        .await?
        .expect("held");
    // "Rebooting" for longer than the lease lasts, and nobody took it over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = client_for(&sim, &short, "worker-1");
    assert!(after.slots().await?[0].expired);
    let resumed = after.acquire(true).await?.expect("still ours");
    assert!(resumed.resumed);
    assert_eq!(resumed.acquired_at(), first.acquired_at());
    assert!(!after.slots().await?[0].expired);
    Ok(())
}

#[tokio::test]
async fn compacted_watch_history_wakes_the_waiter_to_re_list() -> TestResult {
    let sim = Scenario::cluster(0, 2).history_limit(3).start().await?;
    let s = settings(Duration::from_secs(120));
    client_for(&sim, &s, "worker-1")
        .acquire(true)
        .await?
        .expect("held");
    let waiter = client_for(&sim, &s, "worker-2");
    assert_eq!(waiter.slots().await?[0].holder.as_deref(), Some("worker-1"));
    // Unrelated changes push the listed resourceVersion out of the history.
    for i in 0..6 {
        sim.set_node_ready("worker-1", i % 2 == 1)?;
    }
    let start = Instant::now();
    assert!(waiter.wait_for_change(Duration::from_secs(10)).await?);
    assert!(start.elapsed() < Duration::from_secs(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_renews_in_the_background_and_says_at_once_when_the_slot_is_taken() -> TestResult {
    use drydock::testing::cluster::lease::{Claim, LeaseKeeper};
    let sim = Scenario::cluster(0, 2).start().await?;
    let s = settings(Duration::from_secs(3));
    let lease = Arc::new(client_for(&sim, &s, "worker-1"));
    let held = lease.acquire(true).await?.expect("free slot");
    let keeper = LeaseKeeper::spawn(lease.clone(), held, Duration::from_millis(200));
    let mut claim = keeper.claim();
    let first = match claim.borrow().clone() {
        Claim::Held { expires_at, .. } => expires_at,
        lost => panic!("{lost:?}"),
    };
    // Renewed without anyone asking.
    claim.changed().await?;
    match claim.borrow_and_update().clone() {
        Claim::Held { expires_at, .. } => assert!(expires_at > first),
        lost => panic!("{lost:?}"),
    }
    // Another node writes itself in: the keeper says so within one period.
    let leases: Api<Lease> = Api::namespaced(sim.client()?, "drydock");
    let mut l = leases.get("drydock-default-0").await?;
    l.spec.as_mut().unwrap().holder_identity = Some("worker-2".into());
    leases
        .replace("drydock-default-0", &PostParams::default(), &l)
        .await?;
    let taken = Instant::now();
    let lost = tokio::time::timeout(
        Duration::from_secs(2),
        drydock::testing::cluster::lease::claim_lost(&mut claim),
    )
    .await?;
    assert!(
        taken.elapsed() < Duration::from_millis(700),
        "{:?}",
        taken.elapsed()
    );
    assert_eq!(
        lost,
        Claim::Lost {
            slot: "drydock-default-0".into(),
            holder: Some("worker-2".into()),
            reason: "taken by worker-2".into()
        }
    );
    // Releasing what is no longer ours leaves the new holder alone.
    keeper.release(&lease).await?;
    assert_eq!(
        holder(&sim, "drydock-default-0").await.as_deref(),
        Some("worker-2")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_gives_the_slot_up_before_it_expires_when_renewals_fail() -> TestResult {
    use drydock::testing::cluster::lease::{Claim, LeaseKeeper};
    let sim = Scenario::cluster(0, 2).start().await?;
    let s = settings(Duration::from_secs(3));
    let mut cfg = sim.config();
    cfg.default_retry = false;
    let lease = Arc::new(LeaseClient::new(
        kube::Client::try_from(cfg)?,
        &s,
        "worker-1",
    ));
    let held = lease.acquire(true).await?.expect("free slot");
    let keeper = LeaseKeeper::spawn(lease.clone(), held, Duration::from_secs(1));
    let mut claim = keeper.claim();
    claim.changed().await?;
    let Claim::Held { expires_at, .. } = claim.borrow_and_update().clone() else {
        panic!("lost early")
    };
    sim.set_fault(Some(drydock::testing::sim::Fault::Status(503)));
    let lost = tokio::time::timeout(
        Duration::from_secs(5),
        drydock::testing::cluster::lease::claim_lost(&mut claim),
    )
    .await?;
    let gave_up = Timestamp::now();
    sim.set_fault(None);
    assert!(
        gave_up < expires_at,
        "gave up at {gave_up}, after the expiry {expires_at}"
    );
    let Claim::Lost { holder, reason, .. } = lost else {
        unreachable!()
    };
    assert_eq!(holder, None);
    assert!(reason.contains("not renewed before it expired"), "{reason}");
    // Final: no more renewals once lost.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(keeper.is_lost());
    Ok(())
}
