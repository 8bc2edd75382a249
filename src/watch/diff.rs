//! Pure transition detection: (previous, current) snapshot → events. No I/O, no clock.
//!
//! Working from two snapshots rather than from a stream of status changes means a
//! skipped intermediate state loses nothing: READY seen, then SUCCEEDED seen, is still
//! `job.succeeded`.
use crate::domain::{Event, JobStatus, LifecycleStatus, TaskRunStatus};

/// Events implied by moving from `prev` to `cur`, in the order they should be told.
/// `prev == None` is the first observation: a baseline, which produces nothing.
pub fn diff(prev: Option<&JobStatus>, cur: &JobStatus) -> Vec<Event> {
    let Some(prev) = prev else { return Vec::new() };
    let mut events = Vec::new();

    if prev.lifecycle_status != cur.lifecycle_status {
        match cur.lifecycle_status {
            LifecycleStatus::CreateFailed => events.push(Event::CreateFailed),
            LifecycleStatus::UploadFailed => events.push(Event::UploadFailed),
            LifecycleStatus::UpdateFailed => events.push(Event::UpdateFailed),
            _ => {}
        }
    }

    let (was, now) = (prev.task_run_status.as_ref(), cur.task_run_status.as_ref());
    if was != now
        && let Some(now) = now
    {
        let was_terminal = was.is_some_and(TaskRunStatus::is_terminal);
        if was_terminal && now.is_runnable() {
            events.push(Event::Requeued);
        }
        match now {
            TaskRunStatus::Running => events.push(Event::Started),
            TaskRunStatus::Succeeded => events.push(Event::Succeeded),
            TaskRunStatus::Failed => events.push(Event::Failed),
            TaskRunStatus::Canceled => events.push(Event::Canceled),
            TaskRunStatus::Suspended => events.push(Event::Suspended),
            TaskRunStatus::NotCompatible => events.push(Event::NotCompatible),
            // Unknown values are stored but never guessed at.
            _ => {}
        }
    }

    let failed_rose = cur.failed_tasks > prev.failed_tasks;
    if failed_rose && !cur.is_terminal() {
        events.push(Event::TasksFailed);
    }

    if prev.lifecycle_status != LifecycleStatus::Archived
        && cur.lifecycle_status == LifecycleStatus::Archived
    {
        events.push(Event::Archived);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobKey, JobSnapshot};

    fn job(status: &str) -> JobStatus {
        let key = JobKey::parse(
            &format!("farm-{}", "1".repeat(32)),
            &format!("queue-{}", "2".repeat(32)),
            &format!("job-{}", "3".repeat(32)),
        )
        .unwrap();
        let mut s = JobSnapshot::sample(key, "shot");
        s.task_run_status = Some(TaskRunStatus::from_wire(status));
        JobStatus::of(&s)
    }

    #[test]
    fn first_observation_is_a_baseline() {
        assert!(diff(None, &job("SUCCEEDED")).is_empty());
    }

    #[test]
    fn status_table() {
        let cases = [
            ("READY", "RUNNING", vec![Event::Started]),
            ("RUNNING", "SUCCEEDED", vec![Event::Succeeded]),
            ("READY", "SUCCEEDED", vec![Event::Succeeded]),
            ("RUNNING", "FAILED", vec![Event::Failed]),
            ("RUNNING", "CANCELED", vec![Event::Canceled]),
            ("RUNNING", "SUSPENDED", vec![Event::Suspended]),
            ("READY", "NOT_COMPATIBLE", vec![Event::NotCompatible]),
            ("FAILED", "READY", vec![Event::Requeued]),
            (
                "SUCCEEDED",
                "RUNNING",
                vec![Event::Requeued, Event::Started],
            ),
            ("SUSPENDED", "PENDING", vec![Event::Requeued]),
            ("RUNNING", "RUNNING", vec![]),
            ("RUNNING", "ASSIGNED", vec![]),
            ("RUNNING", "BRAND_NEW", vec![]),
            ("BRAND_NEW", "READY", vec![]),
        ];
        for (from, to, want) in cases {
            assert_eq!(diff(Some(&job(from)), &job(to)), want, "{from} -> {to}");
        }
    }

    #[test]
    fn lifecycle_events() {
        let prev = job("READY");
        for (lc, ev) in [
            ("CREATE_FAILED", Event::CreateFailed),
            ("UPLOAD_FAILED", Event::UploadFailed),
            ("UPDATE_FAILED", Event::UpdateFailed),
            ("ARCHIVED", Event::Archived),
        ] {
            let mut cur = prev.clone();
            cur.lifecycle_status = LifecycleStatus::from_wire(lc);
            assert_eq!(diff(Some(&prev), &cur), vec![ev], "{lc}");
        }
    }

    #[test]
    fn failed_tasks_rising_while_running() {
        let mut prev = job("RUNNING");
        prev.failed_tasks = 1;
        let mut cur = prev.clone();
        cur.failed_tasks = 3;
        assert_eq!(diff(Some(&prev), &cur), vec![Event::TasksFailed]);
        // Once terminal, the terminal event tells the story.
        cur.task_run_status = Some(TaskRunStatus::Failed);
        assert_eq!(diff(Some(&prev), &cur), vec![Event::Failed]);
    }
}
