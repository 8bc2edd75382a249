//! The SQS queue an EventBridge rule fills with Deadline Cloud's events, through
//! `aws-sdk-sqs` and the standard AWS chain (`AWS_ENDPOINT_URL_SQS` points it
//! anywhere). SDK types stop here: callers see bodies and receipt handles.
use aws_sdk_sqs as sqs;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use std::time::Duration;

/// One received message.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Answered with an error: access denied, queue missing, throttled.
    #[error("SQS refused {operation}: {code}: {message}")]
    Refused {
        operation: &'static str,
        code: String,
        message: String,
    },
    /// No answer: unreachable, timed out, unreadable.
    #[error("SQS {operation} failed: {message}")]
    Unreachable {
        operation: &'static str,
        message: String,
    },
}

fn classify<E, R>(operation: &'static str, e: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(s) => QueueError::Refused {
            operation,
            code: s.err().code().unwrap_or("Unknown").to_string(),
            message: s.err().message().unwrap_or("").to_string(),
        },
        _ => QueueError::Unreachable {
            operation,
            message: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
        },
    }
}

pub struct EventQueue {
    client: sqs::Client,
    url: String,
}

/// `https://sqs.<region>.amazonaws.com/…` → the region, so a queue in another region
/// than the chain's is still signed for its own.
fn region_of(url: &str) -> Option<String> {
    let host = url::Url::parse(url).ok()?.host_str()?.to_ascii_lowercase();
    let rest = host.strip_prefix("sqs.")?;
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))?;
    (!region.is_empty() && !region.contains('.')).then(|| region.to_string())
}

impl EventQueue {
    /// Builds the client from the standard AWS chain for the queue at `url`.
    pub async fn from_chain(url: &str, max_attempts: u32) -> EventQueue {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = region_of(url) {
            loader = loader.region(aws_config::Region::new(region));
        }
        let sdk = loader.load().await;
        let conf = sqs::config::Builder::from(&sdk)
            .retry_config(
                sqs::config::retry::RetryConfig::standard().with_max_attempts(max_attempts),
            )
            .build();
        EventQueue {
            client: sqs::Client::from_conf(conf),
            url: url.to_string(),
        }
    }

    /// For the demo and benchmarks: fixed credentials and region, a local endpoint.
    pub fn local(endpoint: &str, url: &str) -> EventQueue {
        let conf = sqs::Config::builder()
            .behavior_version(sqs::config::BehaviorVersion::latest())
            .region(sqs::config::Region::new("us-west-2"))
            .credentials_provider(sqs::config::Credentials::new(
                "demo", "demo", None, None, "demo",
            ))
            .endpoint_url(endpoint)
            .build();
        EventQueue {
            client: sqs::Client::from_conf(conf),
            url: url.to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One long poll: up to 10 messages, waiting up to `wait` for the first.
    pub async fn receive(
        &self,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait.as_secs() as i32)
            .visibility_timeout(visibility.as_secs().min(i32::MAX as u64) as i32)
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(Received {
                    message_id: m.message_id().unwrap_or_default().to_string(),
                    receipt: m.receipt_handle()?.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                })
            })
            .collect())
    }

    /// Deletes up to 10 messages per call; returns the receipts that failed, with why.
    pub async fn delete(&self, receipts: &[String]) -> Result<Vec<(String, String)>, QueueError> {
        let mut failed = Vec::new();
        for chunk in receipts.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .ok()
                })
                .collect();
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify("DeleteMessageBatch", e))?;
            for f in out.failed() {
                if let Some(r) = f.id().parse::<usize>().ok().and_then(|i| chunk.get(i)) {
                    failed.push((
                        r.clone(),
                        format!("{}: {}", f.code(), f.message().unwrap_or("")),
                    ));
                }
            }
        }
        Ok(failed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_queue_url_names_its_region() {
        use super::region_of;
        assert_eq!(
            region_of("https://sqs.us-west-2.amazonaws.com/111122223333/q").as_deref(),
            Some("us-west-2")
        );
        assert_eq!(region_of("http://127.0.0.1:9000/111122223333/q"), None);
        assert_eq!(region_of("https://sqs.amazonaws.com/1/q"), None);
    }
}
