//! Digests: the messages a channel held (quiet hours, a digest window) folded into
//! one message, paged so each page is within its platform's limits.
//!
//! One line per job, newest state first: name, status in words, the events it went
//! through ("started → 2 tasks failed → succeeded"), duration, owner, link; the
//! counts of final states on top. The text comes from `digest.hbs` (escaped like
//! every template); each kind builds its payload (`Kind::digest_payload`).
use super::{RenderError, Renderer};
use crate::domain::{Brief, Event, OutboxEntry};
use crate::notify::{Channel, Digest, DigestJob};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// One job's part of a digest.
#[derive(Debug, Clone)]
struct JobLine {
    brief: Brief,
    job_id: String,
    events: Vec<(Event, i64)>,
    newest: DateTime<Utc>,
    /// The held messages' own payloads, in order.
    items: Vec<Value>,
}

/// An event as a step of a job's path in a digest.
fn step(e: Event, failed_tasks: i64) -> String {
    match e {
        Event::Started => "started".into(),
        Event::Succeeded => "succeeded".into(),
        Event::Failed => "failed".into(),
        Event::Canceled => "canceled".into(),
        Event::Suspended => "suspended".into(),
        Event::NotCompatible => "not compatible".into(),
        Event::Requeued => "requeued".into(),
        Event::TasksFailed if failed_tasks == 1 => "1 task failed".into(),
        Event::TasksFailed => format!("{failed_tasks} tasks failed"),
        Event::CreateFailed => "failed to create".into(),
        Event::UploadFailed => "upload failed".into(),
        Event::UpdateFailed => "update failed".into(),
        Event::Archived => "archived".into(),
        Event::Stalled => "stalled".into(),
        Event::Progress => "progress".into(),
        Event::BudgetThreshold => "budget threshold".into(),
    }
}

/// Jobs in first-seen order of `held`, each with its events in order; then newest
/// state first.
fn lines(held: &[OutboxEntry]) -> Vec<JobLine> {
    let mut out: Vec<JobLine> = Vec::new();
    for e in held {
        let brief = e.brief.clone().unwrap_or_else(|| Brief {
            name: e.job.job_id.to_string(),
            status: e.event.as_str().into(),
            ..Default::default()
        });
        let failed = brief.failed_tasks;
        match out.iter_mut().find(|l| l.job_id == e.job.job_id.as_str()) {
            Some(l) => {
                l.events.push((e.event, failed));
                l.brief = brief;
                l.newest = l.newest.max(e.created_at);
                l.items.push(e.payload.clone());
            }
            None => out.push(JobLine {
                brief,
                job_id: e.job.job_id.to_string(),
                events: vec![(e.event, failed)],
                newest: e.created_at,
                items: vec![e.payload.clone()],
            }),
        }
    }
    // Stable: jobs with the same time keep their first-seen order.
    out.sort_by_key(|l| std::cmp::Reverse(l.newest));
    out
}

/// "14 succeeded, 2 failed, 1 canceled": final states, most common first.
fn counts(lines: &[JobLine]) -> String {
    let mut c: Vec<(String, usize)> = Vec::new();
    for l in lines {
        let s = l.brief.status.to_lowercase();
        match c.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => c.push((s, 1)),
        }
    }
    c.sort_by_key(|x| std::cmp::Reverse(x.1));
    c.iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn context(channel: &str, all: &[JobLine], page: &[JobLine], at: (usize, usize)) -> Value {
    let jobs: Vec<Value> = page
        .iter()
        .map(|l| {
            let path: Vec<String> = l.events.iter().map(|(e, f)| step(*e, *f)).collect();
            json!({
                "name": l.brief.name,
                "status": l.brief.status,
                "path": path.join(" → "),
                "duration": l.brief.duration,
                "owner": l.brief.owner.as_ref().map(|n| json!({"name": n, "mention": format!("@{n}")})),
                "monitorUrl": l.brief.link,
                "jobId": l.job_id,
            })
        })
        .collect();
    json!({
        "channel": channel,
        "jobCount": all.len(),
        "counts": counts(all),
        "jobs": jobs,
        "page": at.0,
        "pages": (at.1 > 1).then_some(at.1),
    })
}

/// A digest context with every field set, for the start-up check.
pub(super) fn sample_digest_context(_team: &str) -> Value {
    let brief = Brief {
        name: "shot_010 comp v3".into(),
        status: "Succeeded".into(),
        failed_tasks: 2,
        duration: Some("1h 0m 0s".into()),
        owner: Some("Jane Doe".into()),
        mention_slack: None,
        link: Some("https://monitor.example.com/".into()),
    };
    let line = JobLine {
        brief,
        job_id: format!("job-{}", "0".repeat(32)),
        events: vec![
            (Event::Started, 0),
            (Event::TasksFailed, 2),
            (Event::Succeeded, 2),
        ],
        newest: DateTime::UNIX_EPOCH,
        items: Vec::new(),
    };
    let all = vec![line.clone(), line];
    context("check", &all, &all, (1, 2))
}

impl Renderer {
    /// The digest of `held` (one channel's held messages, in outbox order) as pages,
    /// each within the kind's limits. A job that alone exceeds them still gets a
    /// page of its own (its kind cuts what it must).
    pub fn digest_pages(
        &self,
        team: &str,
        channel: &Channel,
        held: &[OutboxEntry],
    ) -> Result<Vec<Value>, RenderError> {
        let rel = self
            .digests
            .get(&(team.to_string(), channel.kind))
            .ok_or_else(|| RenderError::Template {
                file: format!("{team}/{}/digest.hbs", channel.kind),
                message: "this channel kind has no digest template".into(),
            })?;
        let all = lines(held);
        let from = held
            .iter()
            .map(|e| e.created_at)
            .min()
            .unwrap_or(DateTime::UNIX_EPOCH);
        let to = held.iter().map(|e| e.created_at).max().unwrap_or(from);
        let build = |page: &[JobLine], at: (usize, usize)| -> Result<(Value, bool), RenderError> {
            let ctx = context(&channel.name, &all, page, at);
            let rendered = self.render_named(rel, channel.kind, &ctx)?;
            let jobs: Vec<DigestJob> = page
                .iter()
                .map(|l| DigestJob {
                    name: l.brief.name.clone(),
                    link: l.brief.link.clone(),
                    mention_slack: l.brief.mention_slack.clone(),
                })
                .collect();
            let items: Vec<Value> = page.iter().flat_map(|l| l.items.iter().cloned()).collect();
            Ok(channel.kind.digest_payload(&Digest {
                channel: &channel.name,
                rendered: &rendered,
                from,
                to,
                jobs: &jobs,
                items: &items,
                card_only: channel.card_only,
            }))
        };
        // Greedy: as many jobs per page as fit (numbered as if there were many, so
        // the page numbers added afterwards cannot push a page over).
        // The largest page that fits is found by doubling, then halving the step:
        // a few builds per page, not one per job.
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        while start < all.len() {
            let fits = |end: usize| -> Result<bool, RenderError> {
                Ok(build(&all[start..end], (99, 99))?.1)
            };
            let mut good = start + 1;
            let mut step = 1;
            while good < all.len() && fits((good + step).min(all.len()))? {
                good = (good + step).min(all.len());
                step *= 2;
            }
            while step > 1 && good < all.len() {
                step /= 2;
                if fits((good + step).min(all.len()))? {
                    good = (good + step).min(all.len());
                }
            }
            cuts.push((start, good));
            start = good;
        }
        let n = cuts.len();
        cuts.iter()
            .enumerate()
            .map(|(i, (a, b))| build(&all[*a..*b], (i + 1, n)).map(|(v, _)| v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_counts() {
        assert_eq!(step(Event::TasksFailed, 2), "2 tasks failed");
        let l = |s: &str| JobLine {
            brief: Brief {
                status: s.into(),
                ..Default::default()
            },
            job_id: String::new(),
            events: vec![],
            newest: DateTime::UNIX_EPOCH,
            items: vec![],
        };
        assert_eq!(
            counts(&[l("Succeeded"), l("Failed"), l("Succeeded")]),
            "2 succeeded, 1 failed"
        );
    }
}
