//! The CLI's client for the HTTP API (`subscribe`, `unsubscribe`, `subscriptions`).
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {server}: {message}")]
    Transport { server: String, message: String },
    #[error("server answered HTTP {status}: {message}")]
    Api { status: u16, message: String },
}

pub struct ApiClient {
    server: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(server: &str, token: &str) -> ApiClient {
        ApiClient {
            server: server.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Transport {
            server: self.server.clone(),
            message: e.without_url().to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 400 {
            let message = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or(text);
            return Err(ClientError::Api { status, message });
        }
        Ok((status, v))
    }

    pub async fn subscribe(&self, body: Value) -> Result<(bool, Value), ClientError> {
        let (status, v) = self
            .call(reqwest::Method::POST, "/v1/subscriptions", Some(body))
            .await?;
        Ok((status == 201, v))
    }

    /// POSTs a new resource; returns whether it was created (201) and the answer.
    pub async fn create(&self, path: &str, body: Value) -> Result<(bool, Value), ClientError> {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await?;
        Ok((status == 201, v))
    }

    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call(reqwest::Method::DELETE, path, None)
            .await
            .map(|_| ())
    }

    pub async fn unsubscribe(&self, id: &str) -> Result<(), ClientError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/subscriptions/{id}"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Every subscription in `state` (`active`, `finished` or `all`), following
    /// the pages to the end.
    pub async fn subscriptions(&self, state: &str) -> Result<Value, ClientError> {
        self.get_all(
            &format!("/v1/subscriptions?state={state}&limit=500"),
            "subscriptions",
        )
        .await
    }

    /// A paged list whole: follows `next` until the last page, gathering `key`.
    pub async fn get_all(&self, path: &str, key: &str) -> Result<Value, ClientError> {
        let mut all = Vec::new();
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut next: Option<String> = None;
        loop {
            let url = match &next {
                None => path.to_string(),
                Some(c) => format!(
                    "{path}{sep}cursor={}",
                    url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
                ),
            };
            let page = self.get(&url).await?;
            if let Some(items) = page.get(key).and_then(Value::as_array) {
                all.extend(items.iter().cloned());
            }
            match page.get("next").and_then(Value::as_str) {
                Some(c) if !c.is_empty() => next = Some(c.to_string()),
                _ => break,
            }
        }
        Ok(serde_json::json!({ key: all }))
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, path, None)
            .await
            .map(|(_, v)| v)
    }

    pub async fn post(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::POST, path, None)
            .await
            .map(|(_, v)| v)
    }
}
