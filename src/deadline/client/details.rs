//! The calls failure triage makes: ListSteps, ListTasks, BatchGetSessionAction and
//! BatchGetSession, converted to our own facts here (SDK types stop in this module).
use super::{DeadlineClient, api_call, describe, dl, time};
use crate::deadline::{ActionFacts, SessionFacts, SourceError, StepFacts, TaskFacts};
use crate::domain::JobKey;
use aws_sdk_deadline::error::{ProvideErrorMetadata, SdkError};
use std::collections::BTreeMap;

/// Pages read per listing at most (a job with more steps than this is unusual).
const MAX_PAGES: usize = 10;

fn failed<E, R>(operation: &'static str, e: &SdkError<E, R>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    if let Some(se) = e.as_service_error()
        && se.code() == Some("ThrottlingException")
    {
        api_call(operation, "throttled");
        return SourceError::Throttled {
            retry_after: None,
            message: format!("{operation}: {}", se.message().unwrap_or("rate exceeded")),
        };
    }
    api_call(operation, "error");
    SourceError::Other(format!("{operation}: {}", describe(e)))
}

fn task_param(v: &dl::types::TaskParameterValue) -> String {
    use dl::types::TaskParameterValue as P;
    match v {
        P::Int(s) | P::Float(s) | P::String(s) | P::Path(s) | P::ChunkInt(s) => s.clone(),
        _ => "?".into(),
    }
}

impl DeadlineClient {
    /// The job's steps with their failed-task counts, in the job's order.
    pub async fn steps(&self, key: &JobKey) -> Result<Vec<StepFacts>, SourceError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .list_steps()
                .farm_id(&key.farm_id)
                .queue_id(&key.queue_id)
                .job_id(&key.job_id)
                .set_next_token(token.take())
                .max_results(100)
                .send()
                .await
                .map_err(|e| failed("ListSteps", &e))?;
            api_call("ListSteps", "ok");
            for s in page.steps() {
                out.push(StepFacts {
                    step_id: s.step_id().to_string(),
                    name: s.name().to_string(),
                    failed: s
                        .task_run_status_counts()
                        .get(&dl::types::TaskRunStatus::Failed)
                        .map_or(0, |n| i64::from(*n)),
                });
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// The first `limit` tasks of a step whose run status is FAILED (ListTasks,
    /// filtered here: the API documents no status filter).
    pub async fn failed_tasks(
        &self,
        key: &JobKey,
        step_id: &str,
        limit: usize,
    ) -> Result<Vec<TaskFacts>, SourceError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .list_tasks()
                .farm_id(&key.farm_id)
                .queue_id(&key.queue_id)
                .job_id(&key.job_id)
                .step_id(step_id)
                .set_next_token(token.take())
                .max_results(100)
                .send()
                .await
                .map_err(|e| failed("ListTasks", &e))?;
            api_call("ListTasks", "ok");
            for t in page.tasks() {
                if *t.run_status() != dl::types::TaskRunStatus::Failed {
                    continue;
                }
                let parameters: BTreeMap<String, String> = t
                    .parameters()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), task_param(v))).collect())
                    .unwrap_or_default();
                out.push(TaskFacts {
                    task_id: t.task_id().to_string(),
                    run_status: t.run_status().as_str().to_string(),
                    parameters,
                    retries: t.failure_retry_count(),
                    latest_session_action_id: t.latest_session_action_id().map(str::to_string),
                });
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Session actions by id (one BatchGetSessionAction call for up to 100); ids the
    /// service could not return are left out.
    pub async fn session_actions(
        &self,
        key: &JobKey,
        ids: &[String],
    ) -> Result<Vec<ActionFacts>, SourceError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut req = self.client.batch_get_session_action();
        for id in ids.iter().take(100) {
            let ident = dl::types::BatchGetSessionActionIdentifier::builder()
                .farm_id(&key.farm_id)
                .queue_id(&key.queue_id)
                .job_id(&key.job_id)
                .session_action_id(id)
                .build()
                .map_err(|e| SourceError::Other(format!("BatchGetSessionAction: {e}")))?;
            req = req.identifiers(ident);
        }
        let out = req
            .send()
            .await
            .map_err(|e| failed("BatchGetSessionAction", &e))?;
        api_call("BatchGetSessionAction", "ok");
        Ok(out
            .session_actions()
            .iter()
            .map(|a| ActionFacts {
                session_action_id: a.session_action_id().to_string(),
                session_id: a.session_id().to_string(),
                exit_code: a.process_exit_code(),
                progress_message: a.progress_message().map(str::to_string),
                started_at: a.started_at().map(time),
                ended_at: a.ended_at().map(time),
            })
            .collect())
    }

    /// Sessions by id (one BatchGetSession call for up to 100).
    pub async fn sessions(
        &self,
        key: &JobKey,
        ids: &[String],
    ) -> Result<Vec<SessionFacts>, SourceError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut req = self.client.batch_get_session();
        for id in ids.iter().take(100) {
            let ident = dl::types::BatchGetSessionIdentifier::builder()
                .farm_id(&key.farm_id)
                .queue_id(&key.queue_id)
                .job_id(&key.job_id)
                .session_id(id)
                .build()
                .map_err(|e| SourceError::Other(format!("BatchGetSession: {e}")))?;
            req = req.identifiers(ident);
        }
        let out = req
            .send()
            .await
            .map_err(|e| failed("BatchGetSession", &e))?;
        api_call("BatchGetSession", "ok");
        Ok(out
            .sessions()
            .iter()
            .map(|s| {
                let opts = s.log().and_then(|l| l.options());
                let opt = |k: &str| opts.and_then(|o| o.get(k)).cloned();
                SessionFacts {
                    session_id: s.session_id().to_string(),
                    host: s
                        .host_properties()
                        .and_then(|h| h.host_name())
                        .map(str::to_string),
                    log_group: opt("logGroupName"),
                    log_stream: opt("logStreamName"),
                }
            })
            .collect())
    }
}

impl DeadlineClient {
    /// GetBudget: the budget's name, limit, usage and actions. `Ok(None)`: it no
    /// longer exists.
    pub async fn budget(
        &self,
        farm_id: &str,
        budget_id: &str,
    ) -> Result<Option<crate::domain::budget::BudgetFacts>, SourceError> {
        let out = match self
            .client
            .get_budget()
            .farm_id(farm_id)
            .budget_id(budget_id)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.code() == Some("ResourceNotFoundException")) =>
            {
                api_call("GetBudget", "not_found");
                return Ok(None);
            }
            Err(e) => return Err(failed("GetBudget", &e)),
        };
        api_call("GetBudget", "ok");
        let queue_id = match out.usage_tracking_resource() {
            Some(dl::types::UsageTrackingResource::QueueId(q)) => Some(q.clone()),
            _ => None,
        };
        Ok(Some(crate::domain::budget::BudgetFacts {
            name: out.display_name().to_string(),
            queue_id,
            status: Some(out.status().as_str().to_string()),
            limit_dollars: Some(f64::from(out.approximate_dollar_limit())),
            used_dollars: out
                .usages()
                .map(|u| f64::from(u.approximate_dollar_usage())),
            actions: out
                .actions()
                .iter()
                .map(|a| {
                    (
                        a.r#type().as_str().to_string(),
                        f64::from(a.threshold_percentage()),
                    )
                })
                .collect(),
        }))
    }
}
