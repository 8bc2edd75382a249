//! The people directory: who a job's `createdBy` is in chat. Mentions only ever come
//! from here, never from job data.
use crate::domain::Event;
use std::collections::HashMap;
use std::sync::Arc;

/// One person, as configured in `[[people]]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Person {
    /// The `createdBy` values Deadline reports for this person.
    pub deadline: Vec<String>,
    /// Slack member ID (`U…`/`W…`).
    pub slack: Option<String>,
    /// Teams user principal name or AAD object id.
    pub teams: Option<String>,
    /// Work e-mail: a Slack app finds the member by it (`users.lookupByEmail`)
    /// when `slack` is not set.
    pub email: Option<String>,
    /// Display name.
    pub name: String,
}

/// `createdBy` → person.
#[derive(Debug, Clone, Default)]
pub struct People {
    by_created_by: HashMap<String, Arc<Person>>,
}

impl People {
    pub fn new(people: Vec<Person>) -> People {
        let mut by_created_by = HashMap::new();
        for p in people.into_iter().map(Arc::new) {
            for d in &p.deadline {
                by_created_by.insert(d.clone(), p.clone());
            }
        }
        People { by_created_by }
    }

    pub fn owner(&self, created_by: &str) -> Option<&Person> {
        self.by_created_by.get(created_by).map(|p| &**p)
    }

    pub fn is_empty(&self) -> bool {
        self.by_created_by.is_empty()
    }
}

/// Events on which a channel mentions the job's owner by default.
pub const DEFAULT_MENTION_EVENTS: [Event; 3] =
    [Event::Failed, Event::TasksFailed, Event::CreateFailed];

/// A Slack member ID: `U`/`W` and upper-case letters or digits.
pub fn valid_slack_id(s: &str) -> bool {
    (s.starts_with('U') || s.starts_with('W'))
        && (3..=24).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// An address `users.lookupByEmail` can take: one `@`, no spaces or markup.
pub fn valid_email(s: &str) -> bool {
    let Some((user, host)) = s.split_once('@') else {
        return false;
    };
    !user.is_empty()
        && host.contains('.')
        && !host.contains('@')
        && s.len() <= 254
        && !s.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '&' | '|' | '"')
        })
}

/// A Teams id: a UPN/email or an object id, with nothing that could close a tag.
pub fn valid_teams_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._-+".contains(c))
}

/// A display name that can stand inside `<at>…</at>` and a JSON string.
pub fn valid_name(s: &str) -> bool {
    let n = s.chars().count();
    (1..=100).contains(&n) && !s.chars().any(|c| c.is_control() || "<>&".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_any_created_by_value() {
        let p = People::new(vec![Person {
            deadline: vec![
                "jane".into(),
                "arn:aws:sts::1:assumed-role/Artist/jane".into(),
            ],
            slack: Some("U024BE7LH".into()),
            teams: Some("jane@studio.com".into()),
            email: None,
            name: "Jane Doe".into(),
        }]);
        assert_eq!(p.owner("jane").unwrap().name, "Jane Doe");
        assert!(p.owner("arn:aws:sts::1:assumed-role/Artist/jane").is_some());
        assert!(p.owner("bob").is_none());
        assert!(valid_slack_id("U024BE7LH") && !valid_slack_id("<!channel>"));
        assert!(valid_teams_id("jane@studio.com") && !valid_teams_id("x</at>"));
        assert!(valid_name("Jane Doe") && !valid_name("<at>x</at>"));
        assert!(valid_email("jane@studio.com"));
        for bad in [
            "jane",
            "@studio.com",
            "jane@host",
            "a@b@c.com",
            "<!channel>@x.com",
            "j ane@x.com",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
