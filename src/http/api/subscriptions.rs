//! `/v1/subscriptions`: subscribe a job, list, show, mute, unsubscribe; a team sees only its own.
use super::*;
use crate::store::Inserted;

pub(super) async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let team = team_for(&st, &headers)?;
    let obj = json_object(&body, &["farmId", "queueId", "jobId", "channels", "events"])?;
    let job = JobKey::parse(
        field_str(&obj, "farmId")?,
        field_str(&obj, "queueId")?,
        field_str(&obj, "jobId")?,
    )
    .map_err(|e| ApiError::BadRequest(format!("field `{}` must match {}", e.field, e.pattern)))?;
    team.admits(&job).map_err(ApiError::Forbidden)?;
    let channels = match field_list(&obj, "channels")? {
        None => team.channels.iter().map(|c| c.name.clone()).collect(),
        Some(list) if list.is_empty() => {
            return Err(ApiError::BadRequest(
                "field `channels` must not be empty".into(),
            ));
        }
        Some(list) => {
            for c in &list {
                if team.channel(c).is_none() {
                    let names: Vec<_> = team.channels.iter().map(|c| c.name.as_str()).collect();
                    return Err(ApiError::BadRequest(format!(
                        "field `channels`: team {:?} has no channel {:?} (it has: {})",
                        team.name,
                        c,
                        names.join(", ")
                    )));
                }
            }
            // Each channel once, in the order given (["a", "b", "a"] is ["a", "b"]).
            let mut seen = std::collections::HashSet::new();
            list.into_iter()
                .filter(|c| seen.insert(c.clone()))
                .collect()
        }
    };
    let events = match field_list(&obj, "events")? {
        None => Event::DEFAULTS.to_vec(),
        Some(list) if list.is_empty() => {
            return Err(ApiError::BadRequest(
                "field `events` must not be empty".into(),
            ));
        }
        Some(list) => list
            .iter()
            .map(|s| {
                Event::parse(s).ok_or_else(|| {
                    let all: Vec<_> = Event::ALL.iter().map(|e| e.as_str()).collect();
                    ApiError::BadRequest(format!(
                        "field `events`: unknown event {s:?}; expected one of {}",
                        all.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .fold(Vec::new(), |mut acc, e| {
                if !acc.contains(&e) {
                    acc.push(e);
                }
                acc
            }),
    };
    let sub = Subscription {
        id: format!("sub-{}", uuid::Uuid::new_v4().simple()),
        team: team.name.clone(),
        job,
        channels,
        events,
        created_at: st.clock.now(),
        state: "active".into(),
        ended_reason: None,
        watch: None,
        muted: false,
        finished_at: None,
        job_name: None,
    };
    let cap = st.live.current().config.server.max_subscriptions_per_team;
    let (sub, created) = match st
        .store
        .run(move |s| {
            let r = s.insert_subscription_capped(sub, cap)?;
            // A 201 promises the subscription survives a crash.
            if matches!(r, Inserted::Created(_)) {
                s.sync()?;
            }
            Ok(r)
        })
        .await?
    {
        Inserted::Created(s) => (s, true),
        Inserted::Existing(s) => (s, false),
        Inserted::OverCap(cap) => {
            return Err(ApiError::Limit {
                key: "server.max_subscriptions_per_team",
                message: format!(
                    "team {:?} already has {cap} active subscriptions, the limit set by \
                     [server] max_subscriptions_per_team; unsubscribe finished jobs or raise the limit",
                    team.name
                ),
            });
        }
    };
    if created {
        tracing::info!(team = %sub.team, job = %sub.job, subscription = %sub.id, "subscribed");
        st.watch.notify(SubChange::Added(sub.clone()));
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sub)).into_response())
}

/// `GET /v1/subscriptions?state=active|finished|all&limit=&cursor=&q=`: one page
/// of the team's subscriptions, newest first, and the cursor of the next page.
pub(super) async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    use crate::store::{PageFrom, SubClass};
    let team = team_for(&st, &headers)?;
    let state = q.get("state").map_or("active", String::as_str);
    let classes: &'static [SubClass] = match state {
        "active" => &[SubClass::Active],
        "finished" => &[SubClass::Finished],
        "all" => &[SubClass::Active, SubClass::Finished],
        other => {
            return Err(ApiError::BadRequest(format!(
                "query parameter `state`: {other:?} is not one of active, finished, all"
            )));
        }
    };
    let limit = paging::limit(&q)?;
    let list = format!("subscriptions/{state}");
    let from = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            let payload = paging::decode(&st, &team.name, &list, c).await?;
            let (ts, id) = payload.split_once(':').ok_or_else(|| {
                ApiError::BadRequest("query parameter `cursor` is damaged".into())
            })?;
            Some(PageFrom {
                newest_first: ts.parse().map_err(|_| {
                    ApiError::BadRequest("query parameter `cursor` is damaged".into())
                })?,
                id: id.to_string(),
            })
        }
    };
    let needle = match q.get("q").map(|s| s.trim().to_lowercase()) {
        Some(n) if n.chars().count() > 200 => {
            return Err(ApiError::BadRequest(
                "query parameter `q` is longer than 200 characters".into(),
            ));
        }
        Some(n) if !n.is_empty() => Some(n),
        _ => None,
    };
    let (name, health) = (team.name.clone(), st.health.clone());
    let (rows, next) = st
        .store
        .run(move |s| {
            let wanted = |sub: &Subscription| match &needle {
                None => true,
                Some(n) => {
                    sub.job.job_id.to_lowercase().contains(n.as_str())
                        || health
                            .view(&sub.job)
                            .map(|v| v.name)
                            .or_else(|| sub.job_name.clone())
                            .is_some_and(|name| name.to_lowercase().contains(n.as_str()))
                }
            };
            let page = s.subscriptions_page(&name, classes, from.as_ref(), limit, &wanted)?;
            let rows = page
                .items
                .into_iter()
                .map(|sub| {
                    Ok((
                        s.notices(&sub.team, &sub.job)?,
                        s.anchors_of(&sub.team, &sub.job)?,
                        sub,
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok((rows, page.next))
        })
        .await?;
    let subs: Vec<_> = rows
        .into_iter()
        .map(|(notices, anchors, s)| sub_json(&st, s, notices, anchors))
        .collect();
    let next = match next {
        Some(p) => Some(
            paging::encode(
                &st,
                &team.name,
                &list,
                &format!("{}:{}", p.newest_first, p.id),
            )
            .await?,
        ),
        None => None,
    };
    Ok(Json(json!({"subscriptions": subs, "next": next})))
}

/// A subscription as the API shows it, with what is known of its job: `job` (name,
/// status and task counts as last read), `pollError` when the last read failed,
/// `notifications` (the latest per channel), `lastNotification` (the latest of those)
/// and `livingMessages` (per Slack app channel, the job's one message and its link).
pub(super) fn sub_json(
    st: &AppState,
    s: Subscription,
    mut notices: Vec<crate::domain::Notice>,
    anchors: Vec<(String, crate::domain::Anchor)>,
) -> Value {
    let living: Vec<Value> = anchors
        .into_iter()
        .filter(|(c, _)| s.channels.contains(c))
        .map(|(c, a)| json!({"channel": c, "url": a.permalink, "postedAt": a.posted_at}))
        .collect();
    let err = st.health.poll_error(&s.job);
    let view = st.health.view(&s.job);
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        if let Some(err) = err {
            m.insert("pollError".into(), Value::String(err));
        }
        m.insert("job".into(), json!(view));
        notices.sort_by_key(|n| n.at);
        m.insert("lastNotification".into(), json!(notices.last()));
        m.insert("notifications".into(), json!(notices));
        m.insert("livingMessages".into(), json!(living));
    }
    v
}

pub(super) async fn sub_with_notices(st: &AppState, s: Subscription) -> Result<Value, ApiError> {
    let (team, job) = (s.team.clone(), s.job.clone());
    let (notices, anchors) = st
        .store
        .run(move |x| Ok((x.notices(&team, &job)?, x.anchors_of(&team, &job)?)))
        .await?;
    Ok(sub_json(st, s, notices, anchors))
}

pub(super) async fn owned(st: &AppState, team: &Team, id: &str) -> Result<Subscription, ApiError> {
    let id = id.to_string();
    match st.store.run(move |s| s.subscription(&id)).await? {
        Some(s) if s.team == team.name => Ok(s),
        _ => Err(ApiError::NotFound("subscription")),
    }
}

pub(super) async fn show(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let sub = owned(&st, &team, &id).await?;
    Ok(Json(sub_with_notices(&st, sub).await?))
}

pub(super) async fn remove(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let team = team_for(&st, &headers)?;
    let sub = owned(&st, &team, &id).await?;
    let gone = sub.clone();
    st.store.run(move |s| s.delete_subscription(&gone)).await?;
    tracing::info!(team = %sub.team, job = %sub.job, subscription = %sub.id, "unsubscribed");
    st.watch.notify(SubChange::Removed(sub.clone()));
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /v1/subscriptions/{id}` with `{"muted": bool}`: a muted subscription keeps
/// following its job but sends nothing.
pub(super) async fn patch_subscription(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let obj = json_object(&body, &["muted"])?;
    let muted = match obj.get("muted") {
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "field `muted` must be true or false".into(),
            ));
        }
        None => return Err(ApiError::BadRequest("field `muted` is required".into())),
    };
    let mut sub = owned(&st, &team, &id).await?;
    if sub.muted != muted {
        sub.muted = muted;
        let saved = sub.clone();
        st.store.run(move |s| s.update_subscription(&saved)).await?;
        if sub.is_active() {
            st.watch.notify(SubChange::Added(sub.clone()));
        }
        tracing::info!(team = %team.name, subscription = %sub.id, muted, "subscription muted state changed");
    }
    Ok(Json(sub_with_notices(&st, sub).await?))
}
