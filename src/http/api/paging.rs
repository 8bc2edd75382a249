//! Paged lists: `limit` and an opaque `cursor` that only the team it was given to
//! can use on the list it came from (signed with the store's id, the team and the
//! list's name); a forged or foreign cursor is a `400`.
use super::*;

/// Rows per page unless `limit` says otherwise, and at most.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 500;

/// `limit` from the query: 1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`].
pub(super) fn limit(q: &std::collections::HashMap<String, String>) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "query parameter `limit` must be a number from 1 to {MAX_LIMIT}"
            ))),
        },
    }
}

fn mac(key: &[u8], team: &str, list: &str, payload: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [key, team.as_bytes(), list.as_bytes(), payload.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A cursor for `payload` (what the list needs to resume) on `team`'s `list`.
pub(super) async fn encode(
    st: &AppState,
    team: &str,
    list: &str,
    payload: &str,
) -> Result<String, ApiError> {
    use base64::Engine;
    let key = st.store.run(|s| s.cursor_key()).await?;
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
    Ok(format!("{body}.{}", mac(&key, team, list, payload)))
}

/// The payload of a cursor this service gave `team` for `list`; anything else is a 400.
pub(super) async fn decode(
    st: &AppState,
    team: &str,
    list: &str,
    cursor: &str,
) -> Result<String, ApiError> {
    use base64::Engine;
    let bad = || {
        ApiError::BadRequest("query parameter `cursor` is not a cursor this list gave you".into())
    };
    let (body, sig) = cursor.split_once('.').ok_or_else(bad)?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let key = st.store.run(|s| s.cursor_key()).await?;
    use subtle::ConstantTimeEq;
    let want = mac(&key, team, list, &payload);
    if want.as_bytes().ct_eq(sig.as_bytes()).into() {
        Ok(payload)
    } else {
        Err(bad())
    }
}
