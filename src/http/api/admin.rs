//! Admin-token routes: `POST /-/reload` and `/v1/people/unmapped`.
use super::*;

/// `GET /v1/people/unmapped` (admin token): `createdBy` values seen in the last 30
/// days that map to nobody in `[[people]]`, most recent first.
pub(super) async fn unmapped_people(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(r) = admin(&st, &headers, "GET /v1/people/unmapped")? {
        return Ok(r);
    }
    let since = st.clock.now() - chrono::Duration::days(30);
    let list: Vec<Value> = st
        .health
        .unmapped_since(since)
        .into_iter()
        .map(|(created_by, at)| json!({"createdBy": created_by, "lastSeen": at}))
        .collect();
    Ok(Json(json!({"unmapped": list})).into_response())
}

/// `POST /-/reload` (admin token): re-reads config and templates, as SIGHUP does.
pub(super) async fn reload(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(r) = admin(&st, &headers, "reload over HTTP (SIGHUP still reloads)")? {
        return Ok(r);
    }
    let live = st.live.clone();
    let result = tokio::task::spawn_blocking(move || live.reload("POST /-/reload"))
        .await
        .map_err(|e| ApiError::BadRequest(format!("reload did not finish: {e}")))?;
    Ok(match result {
        Ok(report) => (
            StatusCode::OK,
            Json(json!({"status": "reloaded", "report": report})),
        )
            .into_response(),
        // The new files are refused (the old set stays): a 400 naming file, line,
        // column and key, never their contents.
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "status": "failed",
                "error": e.to_string(),
                "generation": st.live.current().generation,
            })),
        )
            .into_response(),
    })
}
