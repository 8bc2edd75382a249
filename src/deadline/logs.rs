//! Session logs from CloudWatch Logs (`GetLogEvents`), through
//! `aws-sdk-cloudwatchlogs` and the standard AWS chain: `AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`
//! points it anywhere, as `AWS_ENDPOINT_URL_DEADLINE` does the Deadline client.
use super::SourceError;
use crate::config::DeadlineConfig;
use aws_sdk_cloudwatchlogs as cwl;
use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use chrono::{DateTime, Utc};

pub struct LogsClient {
    client: cwl::Client,
}

impl LogsClient {
    pub async fn from_config(cfg: &DeadlineConfig) -> LogsClient {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &cfg.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        let conf = cwl::config::Builder::from(&sdk)
            .retry_config(
                cwl::config::retry::RetryConfig::standard().with_max_attempts(cfg.max_attempts),
            )
            .build();
        LogsClient {
            client: cwl::Client::from_conf(conf),
        }
    }

    /// For the demo: fixed credentials and region, a known local endpoint.
    pub fn local(endpoint: &str) -> LogsClient {
        let conf = cwl::Config::builder()
            .behavior_version(cwl::config::BehaviorVersion::latest())
            .region(cwl::config::Region::new("us-west-2"))
            .credentials_provider(cwl::config::Credentials::new(
                "demo", "demo", None, None, "demo",
            ))
            .endpoint_url(endpoint)
            .build();
        LogsClient {
            client: cwl::Client::from_conf(conf),
        }
    }

    /// The last `lines` events of a stream between `start` and `end` (inclusive), oldest
    /// first. One call: read from the end (`startFromHead=false`) with a limit.
    pub async fn tail(
        &self,
        group: &str,
        stream: &str,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        lines: usize,
    ) -> Result<Vec<String>, SourceError> {
        let r = self
            .client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .set_start_time(start.map(|t| t.timestamp_millis()))
            // endTime is exclusive; the action's last line may carry its end time.
            .set_end_time(end.map(|t| t.timestamp_millis() + 1))
            .start_from_head(false)
            .limit(lines.clamp(1, 10_000) as i32)
            .send()
            .await;
        match r {
            Ok(out) => {
                metrics::counter!("deadline_notifier_logs_api_calls_total", "outcome" => "ok")
                    .increment(1);
                let mut events: Vec<_> = out
                    .events()
                    .iter()
                    .map(|e| {
                        (
                            e.timestamp().unwrap_or(0),
                            e.message().unwrap_or("").to_string(),
                        )
                    })
                    .collect();
                events.sort_by_key(|(t, _)| *t);
                let skip = events.len().saturating_sub(lines);
                Ok(events.into_iter().skip(skip).map(|(_, m)| m).collect())
            }
            Err(e) => {
                let throttled = e
                    .as_service_error()
                    .is_some_and(|se| se.code() == Some("ThrottlingException"));
                metrics::counter!("deadline_notifier_logs_api_calls_total", "outcome" => if throttled { "throttled" } else { "error" })
                    .increment(1);
                let message = match e.as_service_error() {
                    Some(se) => format!(
                        "GetLogEvents: {}: {}",
                        se.code().unwrap_or("error"),
                        se.message().unwrap_or("")
                    ),
                    None => format!("GetLogEvents: {e}"),
                };
                Err(if throttled {
                    SourceError::Throttled {
                        retry_after: None,
                        message,
                    }
                } else {
                    SourceError::Other(message)
                })
            }
        }
    }
}
