//! `/v1/team`, `/v1/channels` (test message, re-enable) and `/v1/preview`.
use super::*;

/// `GET /v1/team`: who the token belongs to, and what a subscription may choose from.
pub(super) async fn team_info(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let events: Vec<_> = Event::ALL
        .iter()
        .map(|e| json!({"name": e.as_str(), "default": Event::DEFAULTS.contains(e)}))
        .collect();
    let channels: Vec<_> = team.channels.iter().map(|c| c.name.clone()).collect();
    Ok(Json(json!({
        "name": team.name,
        "channels": channels,
        "events": events,
        "farmIds": team.farm_ids,
        "queueIds": team.queue_ids,
    })))
}

pub(super) async fn channels(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let mut out = Vec::new();
    let (tname, names): (String, Vec<String>) = (
        team.name.clone(),
        team.channels.iter().map(|c| c.name.clone()).collect(),
    );
    let states = st
        .store
        .run(move |s| {
            names
                .iter()
                .map(|n| s.channel_state(&tname, n))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    for (c, s) in team.channels.iter().zip(states) {
        out.push(json!({
            "name": c.name, "kind": c.kind, "events": c.events,
            "disabled": s.disabled_reason.is_some(), "disabledReason": s.disabled_reason, "disabledAt": s.disabled_at,
        }));
    }
    Ok(Json(json!({"channels": out})))
}

/// `POST /v1/channels/{name}/test`: queues a sample notification through the normal
/// outbox path → 202 with the outbox entry.
pub(super) async fn test_channel(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let team = team_for(&st, &headers)?;
    let channel = team
        .channel(&name)
        .ok_or(ApiError::NotFound("channel"))?
        .clone();
    let active = st.live.current();
    let (job, mut tr) = crate::render::sample_job(Event::Succeeded);
    let now = st.clock.now();
    tr.detected_at = now;
    let payload = active
        .renderer
        .payload(&team.name, &channel, &job, &tr)
        .map_err(|e| ApiError::BadRequest(format!("the channel's template fails: {e}")))?;
    let entry = crate::domain::OutboxEntry {
        seq: 0,
        webhook_id: format!(
            "{}{}",
            crate::domain::TEST_MESSAGE_PREFIX,
            uuid::Uuid::new_v4().simple()
        ),
        team: team.name.clone(),
        channel: channel.name.clone(),
        kind: channel.kind.as_str().to_string(),
        job: job.key.clone(),
        event: tr.event,
        created_at: now,
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        payload,
        triage_until: None,
        failure: None,
        snapshot: None,
        transition: None,
    };
    let queued = st.store.run(move |s| s.enqueue(vec![entry])).await?;
    st.wakers.wake(&team.name, &channel.name);
    tracing::info!(team = %team.name, channel = %channel.name, "test message queued");
    Ok((StatusCode::ACCEPTED, Json(json!(queued.first()))).into_response())
}

/// `GET /v1/preview?channel=…&event=…`: the exact payload the team's template
/// renders for a sample job.
pub(super) async fn preview(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let name = q
        .get("channel")
        .ok_or_else(|| ApiError::BadRequest("query parameter `channel` is required".into()))?;
    let channel = team
        .channel(name)
        .ok_or(ApiError::NotFound("channel"))?
        .clone();
    let event = match q.get("event") {
        None => Event::Failed,
        Some(e) => Event::parse(e).ok_or_else(|| {
            ApiError::BadRequest(format!("query parameter `event`: unknown event {e:?}"))
        })?,
    };
    let (job, tr) = crate::render::sample_job(event);
    let active = st.live.current();
    let failure = crate::domain::failure::EVENTS
        .contains(&event)
        .then(|| crate::domain::failure::sample_failure(&job.key, active.renderer.monitor()));
    let payload = active
        .renderer
        .payload_with(&team.name, &channel, &job, &tr, failure.as_ref())
        .map_err(|e| ApiError::BadRequest(format!("the channel's template fails: {e}")))?;
    Ok(Json(payload))
}

pub(super) async fn enable(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let team = team_for(&st, &headers)?;
    if team.channel(&name).is_none() {
        return Err(ApiError::NotFound("channel"));
    }
    let (t, n) = (team.name.clone(), name.clone());
    st.store
        .run(move |s| s.set_channel_state(&t, &n, &ChannelState::default()))
        .await?;
    st.wakers.wake(&team.name, &name);
    tracing::info!(team = %team.name, channel = %name, "channel enabled");
    Ok(StatusCode::NO_CONTENT)
}
