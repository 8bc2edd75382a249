//! `/v1/watches`: the team's watches, config-declared (read-only) and created here.
use super::*;

/// API field names of a watch, by the config field names `check_watch` reports.
pub(super) fn watch_field(config_field: &str) -> &'static str {
    match config_field {
        "farm_id" => "farmId",
        "queue_ids" => "queueIds",
        "created_by" => "createdBy",
        "name_matches" => "nameMatches",
        "events" => "events",
        "channels" => "channels",
        _ => "name",
    }
}

pub(super) async fn create_watch(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let team = team_for(&st, &headers)?;
    let obj = json_object(
        &body,
        &[
            "name",
            "farmId",
            "queueIds",
            "createdBy",
            "nameMatches",
            "events",
            "channels",
        ],
    )?;
    let name = field_str(&obj, "name")?.to_string();
    let farm_id = field_str(&obj, "farmId")?.to_string();
    let queue_ids = field_list(&obj, "queueIds")?
        .ok_or_else(|| ApiError::BadRequest("field `queueIds` is required".into()))?;
    let name_matches = match obj.get("nameMatches") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "field `nameMatches` must be a string".into(),
            ));
        }
    };
    let events = match field_list(&obj, "events")? {
        None => Event::DEFAULTS.to_vec(),
        Some(list) => list
            .iter()
            .map(|s| {
                Event::parse(s).ok_or_else(|| {
                    ApiError::BadRequest(format!("field `events`: unknown event {s:?}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let channels = field_list(&obj, "channels")?
        .unwrap_or_else(|| team.channels.iter().map(|c| c.name.clone()).collect());
    let candidate = crate::domain::Watch {
        id: format!("watch-{}", uuid::Uuid::new_v4().simple()),
        team: team.name.clone(),
        name,
        farm_id,
        queue_ids,
        created_by: field_list(&obj, "createdBy")?,
        name_matches,
        events,
        channels,
        source: "api".into(),
        created_at: st.clock.now(),
    };
    let w = crate::config::check_watch(&team, candidate).map_err(|(field, m)| {
        if m.contains("_ids") && m.contains("is not in team") {
            ApiError::Forbidden(m)
        } else {
            ApiError::BadRequest(format!("field `{}`: {m}", watch_field(field)))
        }
    })?;
    if let Some(c) = team.watches.iter().find(|c| c.name == w.name) {
        return Err(ApiError::Conflict(format!(
            "watch {:?} is declared in the config file {}",
            c.name,
            st.live.current().config.path.display()
        )));
    }
    check_watch_limits(&st, &team, &w).await?;
    let asked = w.clone();
    let (stored, created) = st.store.run(move |s| s.insert_watch(w)).await?;
    if created {
        st.watch.notify(SubChange::Watches);
    }
    if !created && !same_watch(&stored, &asked) {
        return Err(ApiError::Conflict(format!(
            "a watch named {:?} already exists with other settings; delete it first",
            stored.name
        )));
    }
    if created {
        tracing::info!(team = %team.name, watch = %stored.name, id = %stored.id, "watch created");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(watch_json(&st, &stored))).into_response())
}

/// A new watch within `[server] max_watches_per_team` and
/// `max_watched_queues_per_team` (a watch of the same name is left to the insert,
/// which answers with the stored one).
async fn check_watch_limits(
    st: &AppState,
    team: &Team,
    w: &crate::domain::Watch,
) -> Result<(), ApiError> {
    let server = st.live.current().config.server.clone();
    let existing = team_watches(st, team).await?;
    if existing.iter().any(|x| x.name == w.name) {
        return Ok(());
    }
    let api = existing.iter().filter(|x| x.source == "api").count();
    if api >= server.max_watches_per_team {
        return Err(ApiError::Limit {
            key: "server.max_watches_per_team",
            message: format!(
                "team {:?} already has {api} watches, the limit set by [server] max_watches_per_team; \
                 delete one or raise the limit",
                team.name
            ),
        });
    }
    let queues: std::collections::HashSet<(&str, &str)> = existing
        .iter()
        .chain(std::iter::once(w))
        .flat_map(|x| x.queue_ids.iter().map(|q| (x.farm_id.as_str(), q.as_str())))
        .collect();
    if queues.len() > server.max_watched_queues_per_team {
        return Err(ApiError::Limit {
            key: "server.max_watched_queues_per_team",
            message: format!(
                "this watch would bring team {:?} to {} distinct watched queues, over the limit of {} \
                 set by [server] max_watched_queues_per_team",
                team.name,
                queues.len(),
                server.max_watched_queues_per_team
            ),
        });
    }
    Ok(())
}

/// Same settings (ids and times aside).
pub(super) fn same_watch(a: &crate::domain::Watch, b: &crate::domain::Watch) -> bool {
    a.farm_id == b.farm_id
        && a.queue_ids == b.queue_ids
        && a.created_by == b.created_by
        && a.name_matches == b.name_matches
        && a.events == b.events
        && a.channels == b.channels
}

/// A watch as the API shows it, with the discovery error of its queues, if any.
pub(super) fn watch_json(st: &AppState, w: &crate::domain::Watch) -> Value {
    let mut v = serde_json::to_value(w).unwrap_or(Value::Null);
    if let (Some((message, since)), Some(m)) = (st.health.watch_error(w), v.as_object_mut()) {
        m.insert("error".into(), json!({"message": message, "since": since}));
    }
    v
}

/// The team's watches: config-declared ones first, then the API's.
pub(super) async fn team_watches(
    st: &AppState,
    team: &Team,
) -> Result<Vec<crate::domain::Watch>, ApiError> {
    let name = team.name.clone();
    let mut all = team.watches.clone();
    all.extend(st.store.run(move |s| s.team_watches(&name)).await?);
    Ok(all)
}

/// One of the team's watches; another team's is a 404.
pub(super) async fn owned_watch(
    st: &AppState,
    team: &Team,
    id: &str,
) -> Result<crate::domain::Watch, ApiError> {
    team_watches(st, team)
        .await?
        .into_iter()
        .find(|w| w.id == id)
        .ok_or(ApiError::NotFound("watch"))
}

/// `GET /v1/watches?limit=&cursor=`: config-declared watches first, then the
/// API's, newest first.
pub(super) async fn list_watches(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let limit = paging::limit(&q)?;
    let skip = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => paging::decode(&st, &team.name, "watches", c)
            .await?
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest("query parameter `cursor` is damaged".into()))?,
    };
    let mut all = team_watches(&st, &team).await?;
    // Config watches keep their file order; the API's are newest first.
    let split = all.iter().filter(|w| w.source == "config").count();
    all[split..].sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    let list: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(limit)
        .map(|w| watch_json(&st, w))
        .collect();
    let next = if skip + limit < all.len() {
        Some(paging::encode(&st, &team.name, "watches", &(skip + limit).to_string()).await?)
    } else {
        None
    };
    Ok(Json(json!({"watches": list, "next": next})))
}

pub(super) async fn show_watch(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let team = team_for(&st, &headers)?;
    let w = owned_watch(&st, &team, &id).await?;
    Ok(Json(watch_json(&st, &w)))
}

pub(super) async fn remove_watch(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let team = team_for(&st, &headers)?;
    let w = owned_watch(&st, &team, &id).await?;
    if w.source == "config" {
        return Err(ApiError::Conflict(format!(
            "watch {:?} is declared in the config file {}; remove it there",
            w.name,
            st.live.current().config.path.display()
        )));
    }
    st.store.run(move |s| s.delete_watch(&id)).await?;
    st.watch.notify(SubChange::Watches);
    tracing::info!(team = %team.name, watch = %w.name, "watch deleted; its subscriptions run to their end");
    Ok(StatusCode::NO_CONTENT)
}
