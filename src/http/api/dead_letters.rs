//! `/v1/dead-letters`: what will not be sent, and replaying it.
use super::*;

pub(super) async fn dead_letters(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let items: Vec<_> = st
        .store
        .run(|s| s.dead_letters())
        .await?
        .into_iter()
        .filter(|d| d.entry.team == team.name)
        .collect();
    Ok(Json(json!({"deadLetters": items})))
}

pub(super) async fn replay(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let team = team_for(&st, &headers)?;
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound("dead letter"))?;
    let owned = st
        .store
        .run(move |s| s.dead_letter_by_id(id))
        .await?
        .is_some_and(|d| d.entry.team == team.name);
    if !owned {
        return Err(ApiError::NotFound("dead letter"));
    }
    let e = st
        .store
        .run({
            let now = st.clock.now();
            move |s| s.replay_dead_letter(id, now)
        })
        .await?
        .ok_or(ApiError::NotFound("dead letter"))?;
    st.wakers.wake(&e.team, &e.channel);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"requeued": e.webhook_id, "channel": e.channel})),
    )
        .into_response())
}
