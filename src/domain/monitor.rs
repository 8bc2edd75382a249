//! Deep links into the Deadline Cloud monitor, built as the official client builds
//! them (aws-deadline/deadline-cloud `_monitor_urls.py`): the monitor's host, then
//! `/<farm-region>/farms/<farm>/queues/<queue>`, and a job, step or task is
//! *selected on the queue page* with `?jobId=…&stepId=…&taskId=…`. The farm's region
//! (the path) can differ from the monitor's (the host).
use crate::domain::JobKey;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Monitor {
    base: url::Url,
    /// `[deadline] region`, else the AWS region chain's (resolved once, at start-up).
    region: Option<String>,
    /// `[deadline] farm_regions`: farms that live elsewhere.
    farm_regions: BTreeMap<String, String>,
}

impl Monitor {
    /// `None` when there is no monitor URL (messages then carry no link) or it does
    /// not parse. `region` is `[deadline] region`, else what the AWS region chain
    /// resolved at start-up; `farm_regions` names farms that live elsewhere.
    pub fn new(
        monitor_url: Option<&str>,
        region: Option<String>,
        farm_regions: BTreeMap<String, String>,
    ) -> Option<Monitor> {
        let base = url::Url::parse(monitor_url?).ok()?;
        Some(Monitor {
            base,
            region,
            farm_regions,
        })
    }

    /// A monitor in a fixed region (samples, previews, tests).
    pub fn fixed(base: &str, region: &str) -> Monitor {
        Monitor {
            base: url::Url::parse(base).expect("a valid sample URL"),
            region: Some(region.to_string()),
            farm_regions: BTreeMap::new(),
        }
    }

    pub fn region_for(&self, farm_id: &str) -> Option<&str> {
        self.farm_regions
            .get(farm_id)
            .or(self.region.as_ref())
            .map(String::as_str)
    }

    /// The queue page with the job selected; `None` when the farm's region is unknown.
    pub fn job(&self, key: &JobKey) -> Option<String> {
        self.link(key, &[("jobId", &key.job_id)])
    }

    pub fn step(&self, key: &JobKey, step_id: &str) -> Option<String> {
        self.link(key, &[("jobId", &key.job_id), ("stepId", step_id)])
    }

    pub fn task(&self, key: &JobKey, step_id: &str, task_id: &str) -> Option<String> {
        self.link(
            key,
            &[
                ("jobId", &key.job_id),
                ("stepId", step_id),
                ("taskId", task_id),
            ],
        )
    }

    fn link(&self, key: &JobKey, select: &[(&str, &str)]) -> Option<String> {
        let region = self.region_for(&key.farm_id)?;
        let mut u = self.base.clone();
        u.set_query(None);
        u.set_fragment(None);
        {
            // Percent-encodes each segment and value: ids are validated, but the
            // link must stay one link whatever they hold.
            let mut path = u.path_segments_mut().ok()?;
            path.pop_if_empty()
                .extend([region, "farms", &key.farm_id, "queues", &key.queue_id]);
        }
        u.query_pairs_mut().extend_pairs(select);
        Some(u.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> JobKey {
        JobKey {
            farm_id: "farm-1234".into(),
            queue_id: "queue-5678".into(),
            job_id: "job-9abc".into(),
        }
    }

    #[test]
    fn job_step_and_task_are_selected_on_the_queue_page() {
        let m = Monitor::fixed(
            "https://studio.us-west-2.deadlinecloud.amazonaws.com",
            "us-west-2",
        );
        assert_eq!(
            m.job(&key()).unwrap(),
            "https://studio.us-west-2.deadlinecloud.amazonaws.com/us-west-2/farms/farm-1234/queues/queue-5678?jobId=job-9abc"
        );
        assert_eq!(
            m.task(&key(), "step-1", "task-1-7").unwrap(),
            "https://studio.us-west-2.deadlinecloud.amazonaws.com/us-west-2/farms/farm-1234/queues/queue-5678?jobId=job-9abc&stepId=step-1&taskId=task-1-7"
        );
        assert!(
            m.step(&key(), "step-1")
                .unwrap()
                .ends_with("?jobId=job-9abc&stepId=step-1")
        );
    }

    #[test]
    fn a_farm_in_another_region_keeps_the_monitor_host() {
        let mut m = Monitor::fixed(
            "https://studio.us-west-2.deadlinecloud.amazonaws.com/",
            "us-west-2",
        );
        m.farm_regions
            .insert("farm-1234".into(), "eu-west-1".into());
        assert_eq!(
            m.job(&key()).unwrap(),
            "https://studio.us-west-2.deadlinecloud.amazonaws.com/eu-west-1/farms/farm-1234/queues/queue-5678?jobId=job-9abc"
        );
    }

    #[test]
    fn ids_are_percent_encoded_and_no_region_means_no_link() {
        let m = Monitor::fixed("https://m.example.com", "us-west-2");
        let odd = JobKey {
            farm_id: "farm-a/b".into(),
            queue_id: "queue-?x".into(),
            job_id: "job-&y=1#z".into(),
        };
        assert_eq!(
            m.job(&odd).unwrap(),
            "https://m.example.com/us-west-2/farms/farm-a%2Fb/queues/queue-%3Fx?jobId=job-%26y%3D1%23z"
        );
        let none = Monitor { region: None, ..m };
        assert_eq!(none.job(&key()), None);
    }
}
