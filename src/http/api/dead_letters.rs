//! `/v1/dead-letters`: what will not be sent, and replaying it.
use super::*;

/// `GET /v1/dead-letters?limit=&cursor=`: the team's dead letters, newest first.
pub(super) async fn dead_letters(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let limit = paging::limit(&q)?;
    let before = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            paging::decode(&st, &team.name, "dead-letters", c)
                .await?
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest("query parameter `cursor` is damaged".into()))?,
        ),
    };
    let name = team.name.clone();
    let (items, next) = st
        .store
        .run(move |s| s.dead_letters_page(&name, before, limit))
        .await?;
    let next = match next {
        Some(id) => Some(paging::encode(&st, &team.name, "dead-letters", &id.to_string()).await?),
        None => None,
    };
    Ok(Json(json!({"deadLetters": items, "next": next})))
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
