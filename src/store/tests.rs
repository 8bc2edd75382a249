//! The store's own tests: atomic commits, the group commit, damage detection.
use super::*;
use crate::domain::{Event, JobSnapshot, JobStatus};

fn key(n: u8) -> JobKey {
    JobKey {
        farm_id: format!("farm-{}", "a".repeat(32)).into(),
        queue_id: format!("queue-{}", "b".repeat(32)).into(),
        job_id: format!("job-{:032x}", n).into(),
    }
}

fn entry(team: &str, ch: &str, job: JobKey) -> OutboxEntry {
    OutboxEntry::due_now(
        "msg_x".into(),
        team,
        ch,
        "webhook",
        job,
        Event::Succeeded,
        crate::clock::wall_now(),
        serde_json::json!({}),
    )
}

fn state(n: u8) -> JobState {
    JobState {
        job: key(n),
        status: JobStatus::of(&JobSnapshot::sample(key(n), "a")),
        since: crate::clock::wall_now(),
        terminal_since: None,
        progress: Default::default(),
    }
}

fn sub(id: &str, team: &str, n: u8) -> Subscription {
    Subscription {
        id: id.into(),
        team: team.into(),
        job: key(n),
        channels: vec![],
        events: vec![],
        created_at: crate::clock::wall_now(),
        state: "active".into(),
        ended_reason: None,
        watch: None,
        muted: false,
        finished_at: None,
        job_name: None,
    }
}

#[test]
fn state_and_outbox_commit_together_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    {
        let s = Store::open(&p).unwrap();
        let q = s
            .commit_observation(
                &state(1),
                vec![entry("t", "c", key(1)), entry("t", "c", key(1))],
            )
            .unwrap();
        assert!(q[0].seq < q[1].seq);
        s.sync().unwrap();
        assert!(*s.durable().borrow() >= q[1].seq);
    }
    let s = Store::reopen(&p).unwrap();
    assert!(s.job_state(&key(1)).unwrap().is_some());
    assert_eq!(s.outbox_len(), 2);
    let head = s.outbox_head("t", "c").unwrap().unwrap();
    s.delivered(&head, crate::clock::wall_now()).unwrap();
    assert!(s.was_delivered("msg_x").unwrap());
    let next = s.outbox_head("t", "c").unwrap().unwrap();
    assert!(next.seq > head.seq);
    let dl = s
        .dead_letter(&next, "HTTP 400", crate::clock::wall_now())
        .unwrap();
    assert!(s.outbox_head("t", "c").unwrap().is_none());
    assert_eq!((s.outbox_len(), s.dead_letter_count()), (0, 1));
    let back = s
        .replay_dead_letter(dl.id, crate::clock::wall_now())
        .unwrap()
        .unwrap();
    assert_eq!(back.webhook_id, "msg_x");
    assert!(s.dead_letters().unwrap().is_empty());
    assert_eq!((s.outbox_len(), s.dead_letter_count()), (1, 0));
}

#[test]
fn one_subscription_per_team_and_job() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db")).unwrap();
    assert!(s.insert_subscription(sub("a", "t1", 2)).unwrap().1);
    let (existing, created) = s.insert_subscription(sub("b", "t1", 2)).unwrap();
    assert!(!created);
    assert_eq!(existing.id, "a");
    assert!(s.insert_subscription(sub("c", "t2", 2)).unwrap().1);
    assert_eq!(s.subscription_count(), 2);
    s.delete_subscription(&existing).unwrap();
    assert_eq!(s.subscription_count(), 1);
    assert!(s.insert_subscription(sub("d", "t1", 2)).unwrap().1);
    assert_eq!(s.subscription_count(), 2);
}

#[test]
fn second_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    let _a = Store::open(&p).unwrap();
    // sled holds an exclusive file lock; a second open in the same process also fails.
    let err = Store::open(&p)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(&p.display().to_string()), "{err}");
}

#[test]
fn nothing_is_durable_while_the_sync_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db")).unwrap();
    let before = *s.durable().borrow();
    let hold = s.hold_syncs();
    let q = s
        .commit_observation(&state(1), vec![entry("t", "c", key(1))])
        .unwrap();
    // A caller waits for a flush: without the hold the syncer would flush now.
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waiter = {
        let (s, released) = (s.clone(), released.clone());
        std::thread::spawn(move || {
            s.sync().unwrap();
            assert!(
                released.load(std::sync::atomic::Ordering::SeqCst),
                "a flush ran while the sync was held"
            );
        })
    };
    // The control: the syncer has seen that request and held it back.
    {
        let sh = &s.inner.sync;
        let deadline = crate::clock::monotonic() + Duration::from_secs(10);
        let mut st = sh.lock();
        while !(st.requested > st.done && st.held_back == st.requested) {
            assert!(
                crate::clock::monotonic() < deadline,
                "the syncer never looked at the request"
            );
            st = sh
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    assert_eq!(*s.durable().borrow(), before, "published while held");
    released.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(hold);
    waiter.join().unwrap();
    assert!(*s.durable().borrow() >= q[0].seq);
}

#[test]
fn delivered_is_synced_by_the_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db")).unwrap();
    let q = s
        .commit_observation(&state(1), vec![entry("t", "c", key(1))])
        .unwrap();
    s.sync().unwrap();
    s.delivered(&q[0], crate::clock::wall_now()).unwrap();
    // The syncer runs by itself (no caller waits): the dirty flag is cleared
    // once it has flushed.
    let deadline = crate::clock::monotonic() + Duration::from_secs(10);
    while s.inner.sync.lock().dirty_since.is_some() {
        assert!(
            crate::clock::monotonic() < deadline,
            "group commit never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn reopen_err(p: &Path) -> String {
    Store::reopen(p)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[test]
fn a_damaged_value_is_refused_naming_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    {
        let s = Store::open(&p).unwrap();
        s.insert_subscription(sub("a", "t", 1)).unwrap();
        s.damage_subscription_for_tests("a").unwrap();
        let e = s.subscription("a").unwrap_err().to_string();
        assert!(
            e.contains("checksum") && e.contains(&p.display().to_string()),
            "{e}"
        );
    }
    let e = reopen_err(&p);
    assert!(
        e.contains("checksum") && e.contains(&p.display().to_string()),
        "{e}"
    );
}

#[test]
fn a_missing_record_is_a_count_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    {
        let s = Store::open(&p).unwrap();
        s.insert_subscription(sub("a", "t", 1)).unwrap();
        s.insert_subscription(sub("b", "t", 2)).unwrap();
        // Behind the store's back, as lost data would be.
        s.inner.subs.remove(b"a").unwrap();
        s.inner.db.flush().unwrap();
    }
    let e = reopen_err(&p);
    assert!(
        e.contains("the store is corrupt") && e.contains("export"),
        "{e}"
    );
    assert!(e.contains("subscriptions holds 1 records but 2"), "{e}");
}

#[test]
fn an_emptied_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    {
        let s = Store::open(&p).unwrap();
        s.insert_subscription(sub("a", "t", 1)).unwrap();
    }
    for entry in std::fs::read_dir(&p).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != MARKER_FILE {
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
    let e = reopen_err(&p);
    assert!(e.contains("holds nothing"), "{e}");
}

#[test]
fn a_rolled_back_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    {
        let _s = Store::open(&p).unwrap();
    }
    let m: Marker = serde_json::from_slice(&std::fs::read(p.join(MARKER_FILE)).unwrap()).unwrap();
    write_marker_file(
        &p,
        &Marker {
            store_id: m.store_id,
            epoch: m.epoch + 1000,
        },
    )
    .unwrap();
    let e = reopen_err(&p);
    assert!(e.contains("rolled back"), "{e}");
}

#[test]
fn a_store_from_before_checksums_is_sealed_on_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    {
        let db = sled::Config::new()
            .path(&p)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let subs = db.open_tree("subscriptions").unwrap();
        subs.insert(b"a", serde_json::to_vec(&sub("a", "t", 1)).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    {
        let s = Store::reopen(&p).unwrap();
        assert_eq!(s.subscription_count(), 1);
        assert_eq!(s.subscription("a").unwrap().unwrap().team, "t");
    }
    let s = Store::reopen(&p).unwrap();
    assert_eq!(s.verify().unwrap().subscriptions, 1);
}

#[test]
fn the_per_team_cap_counts_active_subscriptions_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    {
        let s = Store::open(&path).unwrap();
        for n in 0..3 {
            assert!(matches!(
                s.insert_subscription_capped(sub(&format!("a{n}"), "t", n), 3)
                    .unwrap(),
                Inserted::Created(_)
            ));
        }
        assert!(matches!(
            s.insert_subscription_capped(sub("a9", "t", 9), 3).unwrap(),
            Inserted::OverCap(3)
        ));
        // The job already subscribed is answered, cap or not; other teams count apart.
        assert!(matches!(
            s.insert_subscription_capped(sub("again", "t", 0), 3)
                .unwrap(),
            Inserted::Existing(_)
        ));
        assert!(matches!(
            s.insert_subscription_capped(sub("o", "other", 9), 3)
                .unwrap(),
            Inserted::Created(_)
        ));
        // Ending and deleting free places.
        s.end_subscriptions_by_id(&["a0".into()], "gone").unwrap();
        assert_eq!(s.active_subscriptions("t"), 2);
        let a1 = s.subscription("a1").unwrap().unwrap();
        s.delete_subscription(&a1).unwrap();
        assert_eq!(s.active_subscriptions("t"), 1);
    }
    let s = Store::reopen(&path).unwrap();
    assert_eq!(s.active_subscriptions("t"), 1);
    assert_eq!(s.active_subscriptions("other"), 1);
    // Finishing and reviving move the count; the counts kept beside the index are
    // what a reopen reads.
    s.set_subscription_states(
        &["a2".into()],
        "finished",
        crate::clock::wall_now(),
        None,
        None,
    )
    .unwrap();
    assert_eq!(s.active_subscriptions("t"), 0);
    drop(s);
    let s = Store::reopen(&path).unwrap();
    assert_eq!(s.active_subscriptions("t"), 0);
    s.set_subscription_states(
        &["a2".into()],
        "active",
        crate::clock::wall_now(),
        None,
        None,
    )
    .unwrap();
    // A store from before the kept counts (no marker, a stale count) is counted
    // from its index rows once.
    s.inner.sub_order.remove(super::lifecycle::COUNTED).unwrap();
    s.inner
        .sub_order
        .insert(super::lifecycle::active_count_key("t"), &7i64.to_be_bytes())
        .unwrap();
    drop(s);
    let s = Store::reopen(&path).unwrap();
    assert_eq!(s.active_subscriptions("t"), 1);
    assert_eq!(s.active_subscriptions("other"), 1);
    drop(s);
    let s = Store::reopen(&path).unwrap();
    assert_eq!(s.active_subscriptions("t"), 1);
}

#[test]
fn watches_are_found_by_name_and_deleted_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s")).unwrap();
    let w = |id: &str, team: &str, name: &str| crate::domain::Watch {
        id: id.into(),
        team: team.into(),
        name: name.into(),
        farm_id: "f".into(),
        queue_ids: vec!["q".into()],
        created_by: None,
        name_matches: None,
        events: vec![Event::Succeeded],
        channels: vec!["c".into()],
        source: "api".into(),
        created_at: crate::clock::wall_now(),
    };
    assert!(s.insert_watch(w("w1", "t", "a")).unwrap().1);
    let (kept, created) = s.insert_watch(w("w2", "t", "a")).unwrap();
    assert!(!created);
    assert_eq!(kept.id, "w1");
    assert!(s.insert_watch(w("w3", "u", "a")).unwrap().1);
    assert_eq!(s.team_watches("t").unwrap().len(), 1);
    s.delete_watch("w1").unwrap();
    assert!(s.team_watches("t").unwrap().is_empty());
    assert!(s.insert_watch(w("w4", "t", "a")).unwrap().1);
    assert_eq!(s.watches().unwrap().len(), 2);
}

#[test]
fn unmapped_people_survive_reopen_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let now = crate::clock::wall_now();
    {
        let s = Store::open(&path).unwrap();
        s.note_unmapped("bob", now).unwrap();
        s.note_unmapped("old", now - chrono::Duration::days(31))
            .unwrap();
        s.sync().unwrap();
    }
    let s = Store::reopen(&path).unwrap();
    let cutoff = now - chrono::Duration::days(30);
    assert_eq!(
        s.unmapped_people(cutoff).unwrap(),
        vec![("bob".to_string(), now)]
    );
    // The expired one is gone for good, not only filtered.
    assert_eq!(
        s.unmapped_people(now - chrono::Duration::days(60))
            .unwrap()
            .len(),
        1
    );
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn sub_at(id: &str, team: &str, n: u8, created: i64) -> Subscription {
    Subscription {
        created_at: at(created),
        ..sub(id, team, n)
    }
}

#[test]
fn finished_subscriptions_leave_after_keep_finished_and_revive_on_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s")).unwrap();
    for n in 0..4 {
        s.insert_subscription(sub_at(&format!("s{n}"), "t", n, n as i64))
            .unwrap();
        s.commit_observation(&state(n), vec![]).unwrap();
    }
    // s0, s1 finish at 100; s2 ends (its job is gone) at 100; s3 stays active.
    let ids = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let changed = s
        .set_subscription_states(&ids(&["s0", "s1"]), "finished", at(100), Some("comp"), None)
        .unwrap();
    assert_eq!(changed.len(), 2);
    assert_eq!(changed[0].job_name.as_deref(), Some("comp"));
    s.set_subscription_states(&ids(&["s2"]), "ended", at(100), None, Some("gone"))
        .unwrap();
    assert_eq!(s.active_subscriptions("t"), 1);
    // A requeue: s1 is active again, and its clock stops.
    s.set_subscription_states(&ids(&["s1"]), "active", at(150), None, None)
        .unwrap();
    assert_eq!(s.active_subscriptions("t"), 2);
    // Nothing before its time.
    assert!(s.sweep_finished(at(100), 10, at(200)).unwrap().is_empty());
    // Past it: s0 and s2, in batches of one; s1 and s3 (active) untouched.
    let first = s.sweep_finished(at(101), 1, at(200)).unwrap();
    assert_eq!(first.len(), 1, "bounded by the batch");
    let second = s.sweep_finished(at(101), 1, at(200)).unwrap();
    let mut gone: Vec<_> = first.iter().chain(&second).map(|x| x.id.clone()).collect();
    gone.sort();
    assert_eq!(gone, ["s0", "s2"]);
    assert!(s.sweep_finished(at(101), 10, at(200)).unwrap().is_empty());
    assert!(s.subscription("s0").unwrap().is_none());
    assert!(s.subscription("s1").unwrap().unwrap().is_active());
    assert!(s.subscription("s3").unwrap().unwrap().is_active());
    assert_eq!(s.subscription_count(), 2);
    // A watch never takes a removed job up again; the marks expire.
    assert!(s.was_removed("t", &key(0)).unwrap());
    assert!(!s.was_removed("t", &key(1)).unwrap());
    assert_eq!(s.prune_removed(at(199), 10).unwrap(), 0);
    assert_eq!(s.prune_removed(at(201), 10).unwrap(), 2);
    assert!(!s.was_removed("t", &key(0)).unwrap());
    // Job states: deleted on request (the watcher asks when nothing follows a job).
    s.delete_job_state(&key(0)).unwrap();
    assert!(s.job_state(&key(0)).unwrap().is_none());
    assert!(s.job_state(&key(3)).unwrap().is_some());
}

#[test]
fn keep_zero_and_forever() {
    use crate::config::Keep;
    let now = at(1000);
    assert_eq!(Keep::For(std::time::Duration::ZERO).cutoff(now), Some(now));
    assert_eq!(Keep::Forever.cutoff(now), None);
    assert_eq!(
        Keep::For(std::time::Duration::from_secs(30)).cutoff(now),
        Some(at(970))
    );
    // At least once a minute, ten times per period, at most once a second.
    assert_eq!(
        Keep::For(std::time::Duration::from_secs(86_400 * 30))
            .sweep_every()
            .as_secs(),
        60
    );
    assert_eq!(
        Keep::For(std::time::Duration::from_secs(30))
            .sweep_every()
            .as_secs(),
        3
    );
    assert_eq!(
        Keep::For(std::time::Duration::ZERO).sweep_every().as_secs(),
        1
    );
}

#[test]
fn pages_are_newest_first_stable_and_per_team() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s")).unwrap();
    for n in 0..25u8 {
        s.insert_subscription(sub_at(&format!("a{n:02}"), "t", n, n as i64))
            .unwrap();
    }
    s.insert_subscription(sub_at("other", "u", 200, 50))
        .unwrap();
    s.set_subscription_states(&["a03".to_string()], "finished", at(60), None, None)
        .unwrap();
    let all = |_: &Subscription| true;
    let active = [SubClass::Active];
    let p1 = s.subscriptions_page("t", &active, None, 10, &all).unwrap();
    let ids: Vec<_> = p1.items.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids[..3], ["a24", "a23", "a22"]);
    assert_eq!(p1.items.len(), 10);
    // Newer ones arriving meanwhile do not shift the next pages.
    s.insert_subscription(sub_at("new", "t", 100, 99)).unwrap();
    let p2 = s
        .subscriptions_page("t", &active, p1.next.as_ref(), 10, &all)
        .unwrap();
    let p3 = s
        .subscriptions_page("t", &active, p2.next.as_ref(), 10, &all)
        .unwrap();
    assert!(p3.next.is_none());
    let seen: Vec<_> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|p| p.items.iter().map(|x| x.id.clone()))
        .collect();
    assert_eq!(seen.len(), 24, "{seen:?}");
    assert!(!seen.contains(&"a03".to_string()) && !seen.contains(&"new".to_string()));
    assert!(!seen.contains(&"other".to_string()));
    let finished = s
        .subscriptions_page("t", &[SubClass::Finished], None, 10, &all)
        .unwrap();
    assert_eq!(finished.items.len(), 1);
    let both = s
        .subscriptions_page(
            "t",
            &[SubClass::Active, SubClass::Finished],
            None,
            100,
            &all,
        )
        .unwrap();
    assert_eq!(both.items.len(), 26);
    assert_eq!(both.items[0].id, "new");
    // The index survives a reopen, and is built for a store written before it.
    drop(s);
    let s = Store::reopen(&dir.path().join("s")).unwrap();
    s.inner.sub_order.clear().unwrap();
    s.inner.finished.clear().unwrap();
    drop(s);
    let s = Store::reopen(&dir.path().join("s")).unwrap();
    let both = s
        .subscriptions_page(
            "t",
            &[SubClass::Active, SubClass::Finished],
            None,
            100,
            &all,
        )
        .unwrap();
    assert_eq!(both.items.len(), 26);
}

#[test]
fn a_filtered_page_reads_a_bounded_slice_and_the_cursor_finds_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s")).unwrap();
    let t0 = crate::clock::wall_now();
    let n = lifecycle::SCAN_BUDGET * 2 + 10;
    let subs: Vec<Subscription> = (0..n)
        .map(|i| {
            let mut x = sub(&format!("s{i:05}"), "t", 0);
            x.job.job_id = format!("job-{i:032x}").into();
            x.created_at = t0 + chrono::Duration::seconds(i as i64);
            x.job_name = Some(if i == 3 {
                "the one".into()
            } else {
                format!("shot {i}")
            });
            x
        })
        .collect();
    s.insert_subscriptions_bulk(&subs).unwrap();
    let wanted = |x: &Subscription| x.job_name.as_deref() == Some("the one");
    let mut from = None;
    let mut pages = 0;
    let mut found = Vec::new();
    loop {
        let p = s
            .subscriptions_page("t", &[SubClass::Active], from.as_ref(), 100, &wanted)
            .unwrap();
        pages += 1;
        found.extend(p.items.into_iter().map(|x| x.id));
        match p.next {
            Some(f) => from = Some(f),
            None => break,
        }
    }
    // The oldest match is reached by following the cursor, no page reading more
    // than its budget: three pages for twice the budget and ten more.
    assert_eq!(found, vec!["s00003".to_string()]);
    assert_eq!(pages, 3);
}

/// A repeat of an event's messages is not queued again: the notice of the same
/// job and channel already carries the message's id. A new message (another id)
/// and another channel are queued, and plain `enqueue` never skips.
#[test]
fn enqueue_once_leaves_out_what_was_queued_before() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db")).unwrap();
    let with_id = |id: &str, ch: &str| {
        let mut e = entry("t", ch, key(1));
        e.webhook_id = id.into();
        e
    };
    let first = s
        .enqueue_once(vec![with_id("msg_a", "c1"), with_id("msg_a", "c2")])
        .unwrap();
    assert_eq!(first.len(), 2);
    assert!(
        s.enqueue_once(vec![with_id("msg_a", "c1")])
            .unwrap()
            .is_empty()
    );
    let again = s
        .enqueue_once(vec![with_id("msg_a", "c2"), with_id("msg_b", "c1")])
        .unwrap();
    assert_eq!(
        again
            .iter()
            .map(|e| e.webhook_id.as_str())
            .collect::<Vec<_>>(),
        ["msg_b"]
    );
    assert_eq!(s.enqueue(vec![with_id("msg_b", "c1")]).unwrap().len(), 1);
    assert_eq!(s.outbox_len(), 4);
}
