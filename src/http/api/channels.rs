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
    let now = st.clock.now();
    let rfc = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    for (c, s) in team.channels.iter().zip(states) {
        let (held, next_digest) = st.backlogs.held(&team.name, &c.name);
        let quiet_until = crate::notify::quiet::quiet_until(&c.defer.quiet, now);
        // For the page: the end in the zone of the range in force ("08:00 (Europe/London)").
        let quiet_local = quiet_until.and_then(|end| {
            let tz = c.defer.quiet.first()?.tz;
            Some(format!(
                "{} ({})",
                end.with_timezone(&tz).format("%H:%M"),
                tz.name()
            ))
        });
        out.push(json!({
            "name": c.name, "kind": c.kind, "events": c.events,
            "disabled": s.disabled_reason.is_some(), "disabledReason": s.disabled_reason, "disabledAt": s.disabled_at,
            "held": held, "quietUntil": rfc(quiet_until), "quietUntilLocal": quiet_local,
            "nextDigest": rfc(next_digest),
            "quietHours": !c.defer.quiet.is_empty(), "digest": c.defer.digest.map(|d| humantime::format_duration(d).to_string()),
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
    let entry = crate::domain::OutboxEntry::due_now(
        format!(
            "{}{}",
            crate::domain::TEST_MESSAGE_PREFIX,
            uuid::Uuid::new_v4().simple()
        ),
        &team.name,
        &channel.name,
        channel.kind.as_str(),
        job.key.clone(),
        tr.event,
        now,
        payload,
    );
    let key = (team.name.clone(), channel.name.clone());
    admit_test(&st, &key).await?;
    let queued = match st.store.run(move |s| s.enqueue(vec![entry])).await {
        Ok(q) => q,
        Err(e) => {
            st.tests().remove(&key);
            return Err(e.into());
        }
    };
    if let Some(t) = st.tests().get_mut(&key) {
        t.seq = queued.first().map(|e| e.seq);
    }
    st.wakers.wake(&team.name, &channel.name);
    tracing::info!(team = %team.name, channel = %channel.name, "test message queued");
    Ok((StatusCode::ACCEPTED, Json(json!(queued.first()))).into_response())
}

/// A test message at least this long after the last one accepted for a channel.
pub(super) const TEST_MESSAGE_GAP: std::time::Duration = std::time::Duration::from_secs(10);

/// At most one test message waits per channel, and one is accepted at most every
/// [`TEST_MESSAGE_GAP`]: a channel cannot be flooded with them. Reserves the
/// channel's turn when it admits one.
async fn admit_test(st: &AppState, key: &(String, String)) -> Result<(), ApiError> {
    let last = st.tests().get(key).copied();
    if let Some(last) = last {
        let since = crate::clock::monotonic().saturating_duration_since(last.at);
        if since < TEST_MESSAGE_GAP {
            let wait = (TEST_MESSAGE_GAP - since).as_secs_f64().ceil() as u64;
            return Err(ApiError::TooSoon {
                retry_after: wait,
                message: format!(
                    "a test message was sent to channel {:?} less than {}s ago; try again in {wait}s",
                    key.1,
                    TEST_MESSAGE_GAP.as_secs()
                ),
            });
        }
        if let Some(seq) = last.seq {
            let (t, c) = key.clone();
            if st
                .store
                .run(move |s| s.outbox_entry(&t, &c, seq))
                .await?
                .is_some()
            {
                return Err(ApiError::TooSoon {
                    retry_after: TEST_MESSAGE_GAP.as_secs(),
                    message: format!(
                        "a test message for channel {:?} is still waiting to be delivered",
                        key.1
                    ),
                });
            }
        }
    }
    let mut tests = st.tests();
    // Another request may have taken the turn while the store was read.
    if tests.get(key).map(|t| t.at) != last.map(|t| t.at) {
        return Err(ApiError::TooSoon {
            retry_after: TEST_MESSAGE_GAP.as_secs(),
            message: format!("a test message for channel {:?} was just queued", key.1),
        });
    }
    tests.insert(
        key.clone(),
        TestMessage {
            at: crate::clock::monotonic(),
            seq: None,
        },
    );
    Ok(())
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

/// `POST /v1/channels/{name}/flush`: what the channel holds goes now, as one digest.
pub(super) async fn flush(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let team = team_for(&st, &headers)?;
    if team.channel(&name).is_none() {
        return Err(ApiError::NotFound("channel"));
    }
    let (held, _) = st.backlogs.held(&team.name, &name);
    st.backlogs.request_flush(&team.name, &name);
    st.wakers.wake(&team.name, &name);
    tracing::info!(team = %team.name, channel = %name, held, "held messages released now as one digest");
    Ok((StatusCode::ACCEPTED, Json(json!({"held": held}))).into_response())
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
