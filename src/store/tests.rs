//! The store's unit tests (real sled files in temporary folders).

use super::*;
use crate::clock::wall_ms;
use crate::job::{FinishReason, Receipt};

pub(crate) fn req(text: &str) -> ChatRequest {
    ChatRequest { max_tokens: 8, ..crate::testing::chat_request("m", text) }
}

async fn submit_key(s: &Store, text: &str, priority: i32, key: Option<&str>) -> Submitted {
    let seq = s.next_seq().unwrap();
    let new = NewJob {
        origin: Origin::Job,
        priority,
        request: req(text),
        idempotency_key: key.map(str::to_string),
        deadline_ms: None,
        deferral: None,
    };
    s.submit(seq, new, "L0".into(), seq).await.unwrap()
}

async fn submit(s: &Store, text: &str, priority: i32) -> Job {
    submit_key(s, text, priority, None).await.job
}

fn open(dir: &Path) -> Store {
    let s = Store::open(dir).unwrap();
    s.recover(3).unwrap();
    s
}

fn result(id: &str) -> JobResult {
    JobResult {
        text: "ok".into(),
        finish_reason: FinishReason::Stop,
        prompt_tokens: 1,
        completion_tokens: 1,
        receipt: Receipt {
            directive: "L0".into(),
            job_id: id.into(),
            energy_j: 1.0,
            carbon_g: 0.1,
            operational_g: 0.1,
            embodied_g: 0.0,
            intensity_gco2_per_kwh: 400.0,
            duration_s: 0.1,
            estimated: true,
            backend: "local".into(),
            zone: "GB".into(),
        },
        tool_calls: vec![],
        logprobs: None,
    }
}

fn entry(id: &str) -> LedgerEntry {
    LedgerEntry { job_id: id.into(), duration_s: 0.1, operational_g: 0.1, carbon_g: 0.1, ..crate::testing::ledger_entry("L0", "question", 1.0) }
}

#[tokio::test]
async fn claims_by_priority_then_fifo_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = submit(&s, "a", 0).await;
    let b = submit(&s, "b", -5).await;
    let c = submit(&s, "c", 0).await;
    let d = submit(&s, "d", 10).await;
    let pos = s.positions(&[a.clone(), b.clone(), c.clone(), d.clone()]).unwrap();
    assert_eq!(pos[&b.id], 0);
    assert_eq!(pos[&a.id], 1);
    assert_eq!(pos[&c.id], 2);
    assert_eq!(pos[&d.id], 3);
    let queued: Vec<_> = s.list(Some(JobState::Queued), 10).unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(queued, [b.id.clone(), a.id.clone(), c.id.clone(), d.id.clone()]);
    assert_eq!(s.queued_len(), 4);
    let order: Vec<_> = std::iter::from_fn(|| s.claim().unwrap()).map(|j| j.id).collect();
    assert_eq!(order, [b.id, a.id, c.id, d.id]);
    assert_eq!(s.queued_len(), 0);
    assert_eq!(s.running_len(), 4);
}

#[tokio::test]
async fn running_jobs_are_requeued_on_reopen_and_results_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = {
        let s = open(dir.path());
        let a = submit(&s, "a", 0).await;
        let b = submit(&s, "b", 0).await;
        let ca = s.claim().unwrap().unwrap();
        s.finish(&ca.id, JobState::Succeeded, Some(result(&ca.id)), None, Some(entry(&ca.id))).await.unwrap();
        let cb = s.claim().unwrap().unwrap();
        assert_eq!(cb.state, JobState::Running);
        (a, b)
    };
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.recover(3).unwrap(), Recovery { requeued: 1, failed: 0 });
    let a = s.get(&a.id).unwrap();
    assert_eq!(a.state, JobState::Succeeded);
    assert_eq!(a.result.unwrap().text, "ok");
    assert_eq!(s.queued_len(), 1);
    let b2 = s.claim().unwrap().unwrap();
    assert_eq!(b2.id, b.id);
    assert_eq!(b2.attempts, 2, "the interrupted attempt counts");
    // Finishing twice is refused: a job completes once.
    s.finish(&b2.id, JobState::Succeeded, Some(result(&b2.id)), None, Some(entry(&b2.id))).await.unwrap();
    assert!(matches!(
        s.finish(&b2.id, JobState::Succeeded, None, None, None).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(s.ledger(0).unwrap().len(), 2);
}

#[test]
fn opening_waits_for_a_lock_being_released_but_not_for_one_held() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap();
    // Held for good: refused, once the wait is over.
    let t0 = std::time::Instant::now();
    let e = Store::open(dir.path()).err().expect("the lock is held");
    assert!(e.to_string().contains("could not acquire lock"), "{e}");
    assert!(t0.elapsed() >= LOCK_WAIT, "{:?}", t0.elapsed());
    // Released a moment later (as sled does after a drop): opened.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(first);
    });
    let second = Store::open(dir.path());
    release.join().unwrap();
    assert!(second.is_ok(), "{:?}", second.err());
}

#[tokio::test]
async fn a_job_interrupted_max_attempts_times_fails() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let s = open(dir.path());
        submit(&s, "a", 0).await.id
    };
    for round in 1..=3 {
        let s = Store::open(dir.path()).unwrap();
        let rec = s.recover(2).unwrap();
        if round == 3 {
            assert_eq!(rec, Recovery { requeued: 0, failed: 1 });
            let j = s.get(&id).unwrap();
            assert_eq!(j.state, JobState::Failed);
            assert!(j.error.unwrap().contains("interrupted 2 times"));
            assert!(s.claim().unwrap().is_none());
        } else {
            let j = s.claim().unwrap().unwrap(); // then "crash"
            assert_eq!(j.attempts, round);
        }
    }
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let first = submit_key(&s, "a", 0, Some("k1")).await;
    let again = submit_key(&s, "different body", 0, Some("k1")).await;
    let other = submit_key(&s, "a", 0, Some("k2")).await;
    assert!(first.created && !again.created && other.created);
    assert_eq!(first.job.id, again.job.id);
    assert_ne!(first.job.id, other.job.id);
    assert_eq!(s.queued_len(), 2);
}

#[tokio::test]
async fn cancel_queued_running_and_finished() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = submit(&s, "a", 0).await;
    let b = submit(&s, "b", 0).await;
    let CancelOutcome::Cancelled(j) = s.cancel(&b.id).await.unwrap() else { panic!() };
    assert_eq!(j.state, JobState::Cancelled);
    assert_eq!(s.queued_len(), 1);
    let running = s.claim().unwrap().unwrap();
    assert_eq!(running.id, a.id);
    assert!(matches!(s.cancel(&a.id).await.unwrap(), CancelOutcome::Running(_)));
    assert!(matches!(s.cancel(&b.id).await, Err(StoreError::Conflict { .. })));
    assert!(matches!(s.cancel("job-nope").await, Err(StoreError::NotFound(_))));
    assert!(s.claim().unwrap().is_none());
}

#[tokio::test]
async fn retention_collects_results_but_keeps_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = submit_key(&s, "a", 0, Some("key")).await.job;
    let j = s.claim().unwrap().unwrap();
    s.finish(&j.id, JobState::Succeeded, Some(result(&j.id)), None, Some(entry(&j.id))).await.unwrap();
    let queued = submit(&s, "b", 0).await;
    assert_eq!(s.collect_finished(wall_ms() - 60_000).unwrap(), 0, "too recent");
    assert_eq!(s.collect_finished(wall_ms() + 1).unwrap(), 1);
    assert!(matches!(s.get(&a.id), Err(StoreError::NotFound(_))));
    assert_eq!(s.get(&queued.id).unwrap().state, JobState::Queued, "unfinished jobs stay");
    assert_eq!(s.ledger(0).unwrap().len(), 1);
    // The key is free again.
    assert!(submit_key(&s, "a", 0, Some("key")).await.created);
    // Newest first, limited.
    let k = s.claim().unwrap().unwrap();
    s.finish(&k.id, JobState::Succeeded, Some(result(&k.id)), None, Some(entry(&k.id))).await.unwrap();
    let recent = s.ledger_recent(0, 1).unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].job_id, k.id);
    assert_eq!(s.ledger_recent(0, 10).unwrap().len(), 2);
}

#[tokio::test]
async fn deferred_jobs_wait_for_their_time_then_queue_and_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let hold = |until_ms| crate::job::Deferral { until_ms, forecast_gco2_per_kwh: 50.0, submit_gco2_per_kwh: 300.0 };
    {
        let s = open(dir.path());
        for (text, until) in [("a", 5_000), ("b", 9_000)] {
            let seq = s.next_seq().unwrap();
            let new = NewJob {
                origin: Origin::Job,
                priority: 0,
                request: req(text),
                idempotency_key: None,
                deadline_ms: Some(20_000),
                deferral: Some(hold(until)),
            };
            let j = s.submit(seq, new, "L0".into(), 1).await.unwrap().job;
            assert_eq!(j.state, JobState::Deferred);
        }
        assert_eq!((s.deferred_len(), s.queued_len()), (2, 0));
        assert_eq!(s.next_deferred_ms().unwrap(), Some(5_000));
        assert!(s.claim().unwrap().is_none(), "a deferred job is not claimable");
        assert_eq!(s.promote_due(4_999).await.unwrap(), 0);
    }
    // Held across a restart.
    let s = open(dir.path());
    assert_eq!(s.deferred_len(), 2);
    assert_eq!(s.promote_due(5_000).await.unwrap(), 1);
    assert_eq!(s.next_deferred_ms().unwrap(), Some(9_000));
    let a = s.claim().unwrap().unwrap();
    assert_eq!((a.request.messages[0].content.as_str(), a.state), ("a", JobState::Running));
    let b = s.list(Some(JobState::Deferred), 10).unwrap().remove(0);
    let CancelOutcome::Cancelled(b) = s.cancel(&b.id).await.unwrap() else { panic!("expected cancelled") };
    assert_eq!(b.state, JobState::Cancelled);
    assert_eq!(s.deferred_len(), 0);
    assert_eq!(s.next_deferred_ms().unwrap(), None);
    assert_eq!(s.promote_due(u64::MAX / 2).await.unwrap(), 0);
}

#[tokio::test]
async fn a_store_from_another_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta").unwrap().insert("schema_version", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(Store::open(dir.path()), Err(StoreError::Schema { found: 99, .. })));
}

#[test]
fn the_watermark_line_round_trips_and_rejects_damage() {
    let w = Watermark { count: 350, max_seq: 0x15e };
    let line = w.to_line();
    assert_eq!(line.len(), 59);
    assert_eq!(Watermark::parse_line(&line), Some(w));
    assert_eq!(Watermark::parse_line(&line.replace("350", "351")), None);
    assert_eq!(Watermark::parse_line(&line[..30]), None);
    assert_eq!(Watermark::parse_line(""), None);
}

#[tokio::test]
async fn acknowledged_jobs_missing_from_the_store_are_detected_and_can_be_accepted_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let s = open(dir.path());
        for i in 0..3 {
            ids.push(submit(&s, &format!("job {i}"), 0).await.id);
        }
        assert_eq!(s.watermark().count, 3);
    }
    let file = dir.path().join(WATERMARK_FILE);
    let on_file = Watermark::parse_line(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(on_file.count, 3);
    // As if the store's last two acknowledged jobs were lost with its tail.
    let lost = Watermark { count: 5, max_seq: on_file.max_seq + 2 };
    std::fs::write(&file, lost.to_line()).unwrap();
    match Store::open(dir.path()) {
        Err(StoreError::Missing { count: 2, after, last, .. }) => {
            assert_eq!((after, last), (on_file.max_seq, on_file.max_seq + 2));
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    {
        let s = Store::open_accepting_loss(dir.path()).unwrap();
        assert_eq!(s.get(&ids[2]).unwrap().id, ids[2]);
        // New ids never reuse a lost one.
        assert!(s.next_seq().unwrap() > lost.max_seq);
    }
    Store::open(dir.path()).unwrap();
    // A damaged watermark file is refused, not guessed at.
    std::fs::write(&file, "garbage\n").unwrap();
    assert!(matches!(Store::open(dir.path()), Err(StoreError::Damaged { .. })));
}

#[test]
fn the_reservoir_refills_the_slots_that_retention_freed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let sample = |i: u64| PromptSample { text: format!("prompt {i}"), class: "chat".into(), at_ms: i };
    for i in 0..5 {
        s.sample_prompt(&sample(i), 4, 0).unwrap();
    }
    // Full at 4; r = 0 always lands in a slot once full: the 5th replaced slot 0.
    assert_eq!(s.samples_len(), 4);
    assert_eq!(s.samples().unwrap().iter().map(|p| p.at_ms).collect::<Vec<_>>(), vec![4, 1, 2, 3]);
    // Retention drops those taken before t = 3: two left, moved down to slots 0 and 1.
    assert_eq!(s.collect_samples(3).unwrap(), 2);
    assert_eq!(s.samples_len(), 2);
    assert_eq!(s.samples().unwrap().iter().map(|p| p.at_ms).collect::<Vec<_>>(), vec![4, 3]);
    // The next prompts fill the freed slots whatever the draw, up to the cap again.
    for i in 10..13 {
        s.sample_prompt(&sample(i), 4, u64::MAX).unwrap();
    }
    assert_eq!(s.samples_len(), 4);
    assert_eq!(s.samples().unwrap().iter().map(|p| p.at_ms).collect::<Vec<_>>(), vec![4, 3, 10, 11]);
    // Nothing to collect: nothing moves. The count survives a reopen.
    assert_eq!(s.collect_samples(3).unwrap(), 0);
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.samples_len(), 4);
}

#[tokio::test]
async fn a_restart_cancels_only_the_daemons_own_queued_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let mut ids = Vec::new();
    for (origin, priority) in [(Origin::Daemon, i32::MAX), (Origin::Job, i32::MAX), (Origin::Job, 0), (Origin::Daemon, i32::MAX)] {
        let seq = s.next_seq().unwrap();
        let new = NewJob { origin, priority, request: req("x"), idempotency_key: None, deadline_ms: None, deferral: None };
        ids.push(s.submit(seq, new, "L0".into(), seq).await.unwrap().job.id);
    }
    assert_eq!(s.cancel_orphaned_daemon_work().await.unwrap(), 2);
    let states: Vec<JobState> = ids.iter().map(|id| s.get(id).unwrap().state).collect();
    assert_eq!(states, [JobState::Cancelled, JobState::Queued, JobState::Queued, JobState::Cancelled]);
    assert!(s.get(&ids[0]).unwrap().error.unwrap().contains("interrupted by a restart"));
    assert_eq!(s.queued_len(), 2);
    assert_eq!(s.cancel_orphaned_daemon_work().await.unwrap(), 0);
}
