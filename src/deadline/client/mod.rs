//! The Deadline Cloud client: `aws-sdk-deadline` through the standard `aws-config`
//! credential, region and endpoint chain. SDK types stop here.
mod details;

use super::{FetchResult, Fetched, JobSummary, SourceError};
use crate::config::DeadlineConfig;
use crate::domain::{
    CompactView, JobKey, JobSnapshot, JobStatus, LifecycleStatus, ParameterValue, TaskRunStatus,
};
use aws_sdk_deadline as dl;
use aws_sdk_deadline::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_deadline::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_deadline::error::{BoxError, ProvideErrorMetadata, SdkError};
use chrono::{DateTime, Utc};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Up to this many identifiers per BatchGetJob call (the API's limit).
pub const BATCH_LIMIT: usize = 100;

/// The SDK prepends `management.` to every host, even a custom endpoint's, so
/// `http://127.0.0.1:PORT` would become an unresolvable `management.127.0.0.1`.
/// Installed only when a custom endpoint is configured, and never touches AWS hosts.
#[derive(Debug)]
struct StripHostPrefix;

fn is_aws_host(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h.ends_with(".amazonaws.com") || h.ends_with(".amazonaws.com.cn") || h.ends_with(".api.aws")
}

/// `scheme://management.rest` → `scheme://rest`, unless `rest` is an AWS hostname.
fn strip_prefix(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let after = rest.strip_prefix("management.")?;
    let host = after.split(['/', ':', '?']).next().unwrap_or("");
    if is_aws_host(host) {
        return None;
    }
    Some(format!("{scheme}://{after}"))
}

impl Intercept for StripHostPrefix {
    fn name(&self) -> &'static str {
        "StripHostPrefixForCustomEndpoint"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = context.request_mut();
        if let Some(new) = strip_prefix(req.uri()) {
            req.set_uri(new)?;
        }
        Ok(())
    }
}

/// GetJob's output and BatchGetJob's items have the same accessors but no shared type.
macro_rules! snapshot {
    ($o:expr, $key:expr) => {{
        let o = &$o;
        JobSnapshot {
            key: $key,
            name: o.name().to_string(),
            description: o.description().map(str::to_string),
            lifecycle_status: LifecycleStatus::from_wire(o.lifecycle_status().as_str()),
            lifecycle_status_message: o.lifecycle_status_message().to_string(),
            priority: o.priority(),
            created_at: time(o.created_at()),
            created_by: o.created_by().to_string(),
            updated_at: o.updated_at().map(time),
            updated_by: o.updated_by().map(str::to_string),
            started_at: o.started_at().map(time),
            ended_at: o.ended_at().map(time),
            task_run_status: o
                .task_run_status()
                .map(|s| TaskRunStatus::from_wire(s.as_str())),
            target_task_run_status: o.target_task_run_status().map(|s| s.as_str().to_string()),
            task_run_status_counts: o
                .task_run_status_counts()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.as_str().to_string(), i64::from(*v)))
                        .collect()
                })
                .unwrap_or_default(),
            task_failure_retry_count: o.task_failure_retry_count(),
            max_failed_tasks_count: o.max_failed_tasks_count(),
            max_retries_per_task: o.max_retries_per_task(),
            max_worker_count: o.max_worker_count(),
            storage_profile_id: o.storage_profile_id().map(str::to_string),
            parameters: o
                .parameters()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), param(v))).collect())
                .unwrap_or_default(),
            attachments: o.attachments().map(attachments),
            source_job_id: o.source_job_id().map(str::to_string),
        }
    }};
}

/// The compact status of an SDK job (GetJob output or BatchGetJob item).
macro_rules! status {
    ($o:expr) => {{
        let o = &$o;
        JobStatus {
            task_run_status: o
                .task_run_status()
                .map(|s| TaskRunStatus::from_wire(s.as_str())),
            lifecycle_status: LifecycleStatus::from_wire(o.lifecycle_status().as_str()),
            failed_tasks: o
                .task_run_status_counts()
                .and_then(|m| m.get(&dl::types::TaskRunStatus::Failed))
                .map_or(0, |n| i64::from(*n)),
        }
    }};
}

/// One job as read: its compact status now, the full [`JobSnapshot`] only on demand.
/// Most polls find nothing changed, and converting every field of every job (some
/// twenty allocations) was a large part of the cost of a check.
#[derive(Debug)]
pub struct Observed {
    pub status: JobStatus,
    raw: Raw,
}

/// The SDK value, kept private: SDK types stop in this module.
#[derive(Debug)]
enum Raw {
    Item(Box<dl::types::BatchGetJobItem>),
    Output(Box<dl::operation::get_job::GetJobOutput>),
}

impl Observed {
    /// Refreshes the job's in-memory view in place (allocating only when the name
    /// changed or the view is new).
    pub fn refresh_view(
        &self,
        slot: Option<&mut CompactView>,
        now: DateTime<Utc>,
    ) -> Option<CompactView> {
        let mut counts = [0u32; 12];
        let name: &str = match &self.raw {
            Raw::Item(o) => {
                fill(&mut counts, o.task_run_status_counts());
                o.name()
            }
            Raw::Output(o) => {
                fill(&mut counts, o.task_run_status_counts());
                o.name()
            }
        };
        fn fill(counts: &mut [u32; 12], m: Option<&HashMap<dl::types::TaskRunStatus, i32>>) {
            for (k, v) in m.into_iter().flatten() {
                if let Some(i) = CompactView::slot(k.as_str()) {
                    counts[i] = u32::try_from(*v).unwrap_or(0);
                }
            }
        }
        match slot {
            Some(v) => {
                if &*v.name != name {
                    v.name = name.into();
                }
                if v.task_run_status != self.status.task_run_status {
                    v.task_run_status = self.status.task_run_status.clone();
                }
                if v.lifecycle_status != self.status.lifecycle_status {
                    v.lifecycle_status = self.status.lifecycle_status.clone();
                }
                v.counts = counts;
                v.read_at = now;
                None
            }
            None => Some(CompactView {
                name: name.into(),
                task_run_status: self.status.task_run_status.clone(),
                lifecycle_status: self.status.lifecycle_status.clone(),
                counts,
                read_at: now,
            }),
        }
    }

    /// (succeeded, total, running tasks, started at): what progress and stalls are
    /// judged on, read on every poll without building the snapshot.
    pub fn progress(&self) -> (i64, i64, i64, Option<DateTime<Utc>>) {
        fn of(
            counts: Option<&HashMap<dl::types::TaskRunStatus, i32>>,
            started: Option<&aws_sdk_deadline::primitives::DateTime>,
        ) -> (i64, i64, i64, Option<DateTime<Utc>>) {
            let get = |s: dl::types::TaskRunStatus| {
                counts.and_then(|m| m.get(&s)).map_or(0, |n| i64::from(*n))
            };
            let total = counts.map_or(0, |m| m.values().map(|n| i64::from(*n)).sum());
            (
                get(dl::types::TaskRunStatus::Succeeded),
                total,
                get(dl::types::TaskRunStatus::Running),
                started.map(time),
            )
        }
        match &self.raw {
            Raw::Item(o) => of(o.task_run_status_counts(), o.started_at()),
            Raw::Output(o) => of(o.task_run_status_counts(), o.started_at()),
        }
    }

    pub fn snapshot(self, key: JobKey) -> JobSnapshot {
        match self.raw {
            Raw::Item(o) => snapshot!(o, key),
            Raw::Output(o) => snapshot!(o, key),
        }
    }
}

/// Polls jobs with BatchGetJob, falling back to GetJob when BatchGetJob is refused.
pub struct DeadlineClient {
    client: dl::Client,
    /// The region the AWS chain resolved (env, profile, IMDS), for monitor links
    /// when `[deadline] region` is not set.
    region: Option<String>,
    batch_refused: AtomicBool,
    /// Jobs whose record the SDK cannot decode: read alone with GetJob, so one bad
    /// record never blinds a batch of a hundred.
    undecodable: std::sync::Mutex<std::collections::HashSet<JobKey>>,
    /// Whether a search answer held an id that is not a Deadline id (logged once).
    invalid_id_seen: AtomicBool,
}

fn custom_endpoint(cfg: &DeadlineConfig) -> Option<String> {
    let ignore = std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    cfg.endpoint_url.clone().or_else(|| {
        if ignore {
            return None;
        }
        super::first_env(&["AWS_ENDPOINT_URL_DEADLINE", "AWS_ENDPOINT_URL"])
    })
}

impl DeadlineClient {
    /// Builds the client from the standard AWS chain (env, profile, IMDS …) plus
    /// `[deadline]` overrides.
    pub async fn from_config(cfg: &DeadlineConfig) -> DeadlineClient {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &cfg.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        Self::from_sdk_config(&sdk, cfg, custom_endpoint(cfg).is_some())
    }

    /// For the demo: fixed credentials and region, a known local endpoint.
    pub fn local(endpoint: &str, cfg: &DeadlineConfig) -> DeadlineClient {
        let conf = dl::Config::builder()
            .behavior_version(dl::config::BehaviorVersion::latest())
            .region(dl::config::Region::new("us-west-2"))
            .credentials_provider(dl::config::Credentials::new(
                "demo", "demo", None, None, "demo",
            ))
            .endpoint_url(endpoint)
            .retry_config(
                dl::config::retry::RetryConfig::standard().with_max_attempts(cfg.max_attempts),
            )
            .interceptor(StripHostPrefix)
            .build();
        DeadlineClient {
            client: dl::Client::from_conf(conf),
            // The endpoint's region is fixed; links follow the environment's.
            region: super::region_from_env(),
            batch_refused: AtomicBool::new(false),
            undecodable: Default::default(),
            invalid_id_seen: AtomicBool::new(false),
        }
    }

    fn from_sdk_config(
        sdk: &aws_config::SdkConfig,
        cfg: &DeadlineConfig,
        custom: bool,
    ) -> DeadlineClient {
        let mut b = dl::config::Builder::from(sdk).retry_config(
            dl::config::retry::RetryConfig::standard().with_max_attempts(cfg.max_attempts),
        );
        if custom {
            b = b.interceptor(StripHostPrefix);
        }
        DeadlineClient {
            client: dl::Client::from_conf(b.build()),
            region: sdk.region().map(|r| r.to_string()),
            batch_refused: AtomicBool::new(false),
            undecodable: Default::default(),
            invalid_id_seen: AtomicBool::new(false),
        }
    }

    /// The region the AWS chain resolved when this client was built.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// Reads every job in `keys` (any mix of farms and queues).
    pub async fn fetch<K>(&self, keys: &[K]) -> FetchResult<K>
    where
        K: Borrow<JobKey> + Clone + Send + Sync,
    {
        let mut out = Vec::with_capacity(keys.len());
        let (alone, batched): (Vec<&K>, Vec<&K>) = {
            let bad = self.undecodable.lock().unwrap_or_else(|e| e.into_inner());
            keys.iter().partition(|k| bad.contains((*k).borrow()))
        };
        for chunk in batched.chunks(BATCH_LIMIT) {
            if self.batch_refused.load(Ordering::Relaxed) {
                for &key in chunk {
                    out.push((key.clone(), self.get_one(key.borrow()).await?));
                }
            } else {
                self.batch_isolating(chunk, &mut out).await?;
            }
        }
        for key in alone {
            out.push((key.clone(), self.get_one(key.borrow()).await?));
        }
        Ok(out)
    }

    /// BatchGetJob on `keys`. A response the SDK cannot decode is split in halves
    /// until the job that breaks it is alone; that one is then read with GetJob.
    fn batch_isolating<'a, K>(
        &'a self,
        keys: &'a [&'a K],
        out: &'a mut Vec<(K, Fetched)>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SourceError>> + Send + 'a>>
    where
        K: Borrow<JobKey> + Clone + Send + Sync,
    {
        Box::pin(async move {
            match self.batch(keys).await {
                Ok(mut v) => out.append(&mut v),
                Err(BatchErr::Refused(why)) => {
                    tracing::warn!(reason = %why, "BatchGetJob refused; falling back to GetJob per job");
                    self.batch_refused.store(true, Ordering::Relaxed);
                    for &key in keys {
                        out.push((key.clone(), self.get_one(key.borrow()).await?));
                    }
                }
                Err(BatchErr::Undecodable(why)) if keys.len() == 1 => {
                    let key: &JobKey = keys[0].borrow();
                    let newly = self
                        .undecodable
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone());
                    if newly {
                        tracing::warn!(job = %key, error = %why, "Deadline Cloud returned a record of this job that cannot be decoded; reading it alone with GetJob from now on");
                    }
                    out.push((keys[0].clone(), self.get_one(key).await?));
                }
                Err(BatchErr::Undecodable(_)) => {
                    let (a, b) = keys.split_at(keys.len() / 2);
                    self.batch_isolating(a, out).await?;
                    self.batch_isolating(b, out).await?;
                }
                Err(BatchErr::Source(e)) => return Err(e),
            }
            metrics::gauge!("deadline_notifier_undecodable_jobs").set(
                self.undecodable
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .len() as f64,
            );
            Ok(())
        })
    }

    /// Every job of one queue (ListJobs, all pages).
    pub async fn list_jobs(
        &self,
        farm_id: &str,
        queue_id: &str,
    ) -> Result<Vec<JobSummary>, SourceError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_jobs()
            .farm_id(farm_id)
            .queue_id(queue_id)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| SourceError::Other(format!("ListJobs: {}", describe(&e))))?;
            for j in page.jobs() {
                out.push(JobSummary {
                    key: JobKey {
                        farm_id: farm_id.into(),
                        queue_id: queue_id.into(),
                        job_id: j.job_id().into(),
                    },
                    name: j.name().into(),
                    task_run_status: j
                        .task_run_status()
                        .map(|s| TaskRunStatus::from_wire(s.as_str())),
                    lifecycle_status: LifecycleStatus::from_wire(j.lifecycle_status().as_str()),
                });
            }
        }
        Ok(out)
    }

    /// Jobs of up to 10 queues of one farm (SearchJobs, all pages by item offset).
    pub async fn search_jobs(
        &self,
        farm_id: &str,
        queue_ids: &[String],
    ) -> Result<Vec<JobSummary>, SourceError> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let page = self
                .client
                .search_jobs()
                .farm_id(farm_id)
                .set_queue_ids(Some(queue_ids.to_vec()))
                .item_offset(offset)
                .page_size(100)
                .send()
                .await
                .map_err(|e| SourceError::Other(format!("SearchJobs: {}", describe(&e))))?;
            for j in page.jobs() {
                let (Some(job_id), Some(queue_id)) = (j.job_id(), j.queue_id()) else {
                    continue;
                };
                out.push(JobSummary {
                    key: JobKey {
                        farm_id: farm_id.into(),
                        queue_id: queue_id.into(),
                        job_id: job_id.into(),
                    },
                    name: j.name().unwrap_or_default().into(),
                    task_run_status: j
                        .task_run_status()
                        .map(|s| TaskRunStatus::from_wire(s.as_str())),
                    lifecycle_status: LifecycleStatus::from_wire(
                        j.lifecycle_status().map_or("", |s| s.as_str()),
                    ),
                });
            }
            match page.next_item_offset() {
                Some(next) if next > offset => offset = next,
                _ => return Ok(out),
            }
        }
    }

    /// Jobs of up to 10 queues of one farm created at or after `since`, oldest
    /// first (`CREATED_AT ≥ since`, sorted ascending, paged by `itemOffset`, which
    /// SearchJobs caps at 10,000). Returns the jobs and the number of calls made.
    pub async fn search_created_since(
        &self,
        farm_id: &str,
        queue_ids: &[String],
        since: DateTime<Utc>,
    ) -> Result<(Vec<super::NewJob>, u32), SourceError> {
        let filter = dl::types::SearchGroupedFilterExpressions::builder()
            .filters(dl::types::SearchFilterExpression::DateTimeFilter(
                dl::types::DateTimeFilterExpression::builder()
                    .name("CREATED_AT")
                    .operator(dl::types::ComparisonOperator::GreaterThanEqualTo)
                    .date_time(aws_sdk_deadline::primitives::DateTime::from_millis(
                        since.timestamp_millis(),
                    ))
                    .build()
                    .map_err(|e| SourceError::Other(e.to_string()))?,
            ))
            .operator(dl::types::LogicalOperator::And)
            .build()
            .map_err(|e| SourceError::Other(e.to_string()))?;
        let sort = dl::types::SearchSortExpression::FieldSort(
            dl::types::FieldSortExpression::builder()
                .name("CREATED_AT")
                .sort_order(dl::types::SortOrder::Ascending)
                .build()
                .map_err(|e| SourceError::Other(e.to_string()))?,
        );
        let mut out = Vec::new();
        let mut offset = 0;
        let mut calls = 0;
        loop {
            calls += 1;
            let page = self
                .client
                .search_jobs()
                .farm_id(farm_id)
                .set_queue_ids(Some(queue_ids.to_vec()))
                .filter_expressions(filter.clone())
                .sort_expressions(sort.clone())
                .item_offset(offset)
                .page_size(100)
                .send()
                .await;
            let page = match page {
                Ok(p) => {
                    api_call("SearchJobs", "ok");
                    p
                }
                Err(e) => {
                    if let Some(se) = e.as_service_error() {
                        if se.is_throttling_exception() {
                            api_call("SearchJobs", "throttled");
                            return Err(SourceError::Throttled {
                                retry_after: None,
                                message: format!("SearchJobs: {}", describe(&e)),
                            });
                        }
                        if se.is_resource_not_found_exception() || se.is_access_denied_exception() {
                            api_call("SearchJobs", "refused");
                            return Err(SourceError::Other(format!(
                                "SearchJobs refused: {}: {}",
                                se.code().unwrap_or("error"),
                                se.message().unwrap_or("")
                            )));
                        }
                    }
                    api_call("SearchJobs", "error");
                    return Err(SourceError::Other(format!("SearchJobs: {}", describe(&e))));
                }
            };
            for j in page.jobs() {
                let (Some(job_id), Some(queue_id)) = (j.job_id(), j.queue_id()) else {
                    continue;
                };
                // The ids become store keys and URL paths: only Deadline's own shape.
                let key = match JobKey::parse(farm_id, queue_id, job_id) {
                    Ok(k) => k,
                    Err(e) => {
                        metrics::counter!("deadline_notifier_discovery_invalid_ids_total")
                            .increment(1);
                        if !self.invalid_id_seen.swap(true, Ordering::Relaxed) {
                            tracing::warn!(farm = farm_id, error = %e, "SearchJobs answered a job id that is not a Deadline id; skipping it (and any later ones, counted in deadline_notifier_discovery_invalid_ids_total)");
                        }
                        continue;
                    }
                };
                out.push(super::NewJob {
                    key,
                    name: j.name().unwrap_or_default().into(),
                    created_by: j.created_by().unwrap_or_default().into(),
                    created_at: j.created_at().map(time).unwrap_or(since),
                });
            }
            match page.next_item_offset() {
                Some(next) if next > offset && next < 10_000 => offset = next,
                _ => return Ok((out, calls)),
            }
        }
    }

    async fn batch<K>(&self, keys: &[&K]) -> Result<Vec<(K, Fetched)>, BatchErr>
    where
        K: Borrow<JobKey> + Clone,
    {
        let mut req = self.client.batch_get_job();
        for k in keys {
            let k: &JobKey = (*k).borrow();
            let id = dl::types::BatchGetJobIdentifier::builder()
                .farm_id(&k.farm_id)
                .queue_id(&k.queue_id)
                .job_id(&k.job_id)
                .build()
                .map_err(|e| BatchErr::Source(SourceError::Other(e.to_string())))?;
            req = req.identifiers(id);
        }
        let resp = match req.send().await {
            Ok(r) => {
                api_call("BatchGetJob", "ok");
                r
            }
            Err(e) => {
                let e = classify_batch(e);
                api_call(
                    "BatchGetJob",
                    match &e {
                        BatchErr::Refused(_) => "refused",
                        BatchErr::Undecodable(_) => "undecodable",
                        BatchErr::Source(SourceError::Throttled { .. }) => "throttled",
                        BatchErr::Source(_) => "error",
                    },
                );
                return Err(e);
            }
        };
        // Answers are matched to the request by their ids (borrowed, nothing
        // copied); each slot is filled once.
        let index: HashMap<(&str, &str, &str), usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let k: &JobKey = (*k).borrow();
                ((&*k.farm_id, &*k.queue_id, &*k.job_id), i)
            })
            .collect();
        let mut slots: Vec<Option<Fetched>> = (0..keys.len()).map(|_| None).collect();
        let dl::operation::batch_get_job::BatchGetJobOutput { jobs, errors, .. } = resp;
        for item in jobs {
            // Looked up before the item moves into its observation.
            let slot = index
                .get(&(item.farm_id(), item.queue_id(), item.job_id()))
                .copied();
            let status = status!(item);
            let observed = Observed {
                status,
                raw: Raw::Item(Box::new(item)),
            };
            if let Some(i) = slot {
                slots[i] = Some(Fetched::Found(Box::new(observed)));
            }
        }
        for err in errors {
            let msg = format!("{}: {}", err.code().as_str(), err.message());
            let f = if err.code() == &dl::types::BatchGetJobErrorCode::ResourceNotFoundException {
                Fetched::Gone(msg)
            } else {
                Fetched::Failed(msg)
            };
            if let Some(&i) = index.get(&(err.farm_id(), err.queue_id(), err.job_id())) {
                slots[i] = Some(f);
            }
        }
        Ok(slots
            .into_iter()
            .zip(keys)
            .map(|(slot, &k)| {
                let f = slot
                    .unwrap_or_else(|| Fetched::Failed("missing from BatchGetJob response".into()));
                (k.clone(), f)
            })
            .collect())
    }

    async fn get_one(&self, key: &JobKey) -> Result<Fetched, SourceError> {
        let resp = self
            .client
            .get_job()
            .farm_id(&key.farm_id)
            .queue_id(&key.queue_id)
            .job_id(&key.job_id)
            .send()
            .await;
        api_call(
            "GetJob",
            match &resp {
                Ok(_) => "ok",
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|se| se.is_throttling_exception()) =>
                {
                    "throttled"
                }
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|se| se.is_resource_not_found_exception()) =>
                {
                    "not_found"
                }
                Err(_) => "error",
            },
        );
        if let Err(e) = &resp
            && undecodable(e)
        {
            metrics::counter!("deadline_notifier_job_poll_errors_total", "reason" => "undecodable")
                .increment(1);
            return Ok(Fetched::Failed(format!(
                "Deadline Cloud returned a record the SDK cannot decode: {}",
                describe(e)
            )));
        }
        match resp {
            Ok(out) => {
                let was_bad = self
                    .undecodable
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(key);
                if was_bad {
                    tracing::info!(job = %key, "the job's record decodes again; back in batches");
                }
                Ok(Fetched::Found(Box::new(Observed {
                    status: status!(out),
                    raw: Raw::Output(Box::new(out)),
                })))
            }
            Err(SdkError::ServiceError(se)) => {
                let e = se.err();
                match e {
                    dl::operation::get_job::GetJobError::ResourceNotFoundException(nf) => Ok(
                        Fetched::Gone(format!("ResourceNotFoundException: {}", nf.message())),
                    ),
                    dl::operation::get_job::GetJobError::ThrottlingException(t) => {
                        Err(SourceError::Throttled {
                            retry_after: t
                                .retry_after_seconds()
                                .map(|s| Duration::from_secs(s.max(0) as u64)),
                            message: t.message().to_string(),
                        })
                    }
                    dl::operation::get_job::GetJobError::AccessDeniedException(_)
                    | dl::operation::get_job::GetJobError::ValidationException(_) => {
                        Ok(Fetched::Failed(format!(
                            "{}: {}",
                            e.code().unwrap_or("error"),
                            e.message().unwrap_or("")
                        )))
                    }
                    other => Err(SourceError::Other(format!(
                        "GetJob: {}: {}",
                        other.code().unwrap_or("error"),
                        other.message().unwrap_or("")
                    ))),
                }
            }
            Err(e) => Err(SourceError::Other(format!("GetJob: {}", describe(&e)))),
        }
    }
}

fn api_call(operation: &'static str, outcome: &'static str) {
    metrics::counter!("deadline_notifier_deadline_api_calls_total", "operation" => operation, "outcome" => outcome).increment(1);
}

enum BatchErr {
    Refused(String),
    /// The answer came (2xx) but the SDK could not decode it: some record in it is bad.
    Undecodable(String),
    Source(SourceError),
}

/// A 2xx answer the SDK could not decode, or a response it could not read at all.
fn undecodable<E>(e: &SdkError<E, aws_sdk_deadline::config::http::HttpResponse>) -> bool {
    match e {
        SdkError::ResponseError(_) => true,
        SdkError::ServiceError(se) => se.raw().status().is_success(),
        _ => false,
    }
}

fn classify_batch(
    e: SdkError<
        dl::operation::batch_get_job::BatchGetJobError,
        aws_sdk_deadline::config::http::HttpResponse,
    >,
) -> BatchErr {
    use dl::operation::batch_get_job::BatchGetJobError as E;
    if undecodable(&e) {
        return BatchErr::Undecodable(describe(&e));
    }
    if let SdkError::ServiceError(se) = &e {
        let err = se.err();
        let status = se.raw().status().as_u16();
        match err {
            E::AccessDeniedException(_) => {
                return BatchErr::Refused(format!(
                    "AccessDeniedException: {}",
                    err.message().unwrap_or("")
                ));
            }
            E::ValidationException(v)
                if v.reason() == &dl::types::ValidationExceptionReason::UnknownOperation =>
            {
                return BatchErr::Refused("ValidationException: UNKNOWN_OPERATION".into());
            }
            E::ThrottlingException(t) => {
                return BatchErr::Source(SourceError::Throttled {
                    retry_after: t
                        .retry_after_seconds()
                        .map(|s| Duration::from_secs(s.max(0) as u64)),
                    message: t.message().to_string(),
                });
            }
            _ if matches!(
                err.code(),
                Some("UnknownOperationException") | Some("UnknownOperation")
            ) || status == 404
                || status == 405 =>
            {
                return BatchErr::Refused(format!("HTTP {status} {}", err.code().unwrap_or("")));
            }
            _ => {}
        }
        return BatchErr::Source(SourceError::Other(format!(
            "BatchGetJob: HTTP {status} {}: {}",
            err.code().unwrap_or("error"),
            err.message().unwrap_or("")
        )));
    }
    BatchErr::Source(SourceError::Other(format!("BatchGetJob: {}", describe(&e))))
}

fn describe<E: std::error::Error + 'static>(e: &E) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn time(t: &aws_sdk_deadline::primitives::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos()).unwrap_or_default()
}

fn param(p: &dl::types::JobParameter) -> ParameterValue {
    use dl::types::JobParameter as P;
    let (kind, value) = match p {
        P::Int(v) => ("int", v.clone()),
        P::Float(v) => ("float", v.clone()),
        P::String(v) => ("string", v.clone()),
        P::Path(v) => ("path", v.clone()),
        P::Bool(v) => ("bool", v.clone()),
        P::RangeExpr(v) => ("rangeExpr", v.clone()),
        P::IntList(v) => ("intList", v.join(", ")),
        P::FloatList(v) => ("floatList", v.join(", ")),
        P::StringList(v) => ("stringList", v.join(", ")),
        P::PathList(v) => ("pathList", v.join(", ")),
        P::BoolList(v) => ("boolList", v.join(", ")),
        P::IntListList(v) => (
            "intListList",
            v.iter().map(|x| x.join(" ")).collect::<Vec<_>>().join(", "),
        ),
        _ => ("unknown", String::new()),
    };
    ParameterValue {
        kind: kind.into(),
        value,
    }
}

fn attachments(a: &dl::types::Attachments) -> serde_json::Value {
    let manifests: Vec<_> = a
        .manifests()
        .iter()
        .map(|m| {
            serde_json::json!({
                "fileSystemLocationName": m.file_system_location_name(),
                "rootPath": m.root_path(),
                "rootPathFormat": m.root_path_format().as_str(),
                "outputRelativeDirectories": m.output_relative_directories(),
                "inputManifestPath": m.input_manifest_path(),
                "inputManifestHash": m.input_manifest_hash(),
            })
        })
        .collect();
    serde_json::json!({"manifests": manifests, "fileSystem": a.file_system().as_str()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_stripped_only_for_custom_hosts() {
        assert_eq!(
            strip_prefix("http://management.127.0.0.1:4566/x").as_deref(),
            Some("http://127.0.0.1:4566/x")
        );
        assert_eq!(
            strip_prefix("http://management.localhost:1/x").as_deref(),
            Some("http://localhost:1/x")
        );
        assert_eq!(
            strip_prefix("https://management.deadline.us-west-2.amazonaws.com/x"),
            None
        );
        assert_eq!(
            strip_prefix("https://management.deadline.us-west-2.api.aws/x"),
            None
        );
        assert_eq!(strip_prefix("http://127.0.0.1:4566/x"), None);
    }
}
