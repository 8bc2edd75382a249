//! Notices: events that concern no job (a budget crossing a threshold), rendered per
//! channel from `<event>.hbs` with the kind's escaping, like any job message. The
//! budget's name is user text, escaped like a job's name.
use super::{RenderError, Renderer};
use crate::domain::Event;
use crate::domain::budget::{BudgetCrossed, BudgetFacts};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// `80` for 80.0, `87.5` otherwise: how a person writes a number.
fn number(x: f64) -> String {
    if (x.fract()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// `20,137.50`, `25,000`: dollars with thousands grouped, cents when there are any.
fn dollars(x: f64) -> String {
    let cents = (x * 100.0).round() as i64;
    let (whole, frac) = (cents.abs() / 100, cents.abs() % 100);
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if cents < 0 { "-" } else { "" };
    if frac == 0 {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac:02}")
    }
}

fn action_words(kind: &str) -> String {
    match kind {
        "STOP_SCHEDULING_AND_COMPLETE_TASKS" => "scheduling stops; running tasks complete".into(),
        "STOP_SCHEDULING_AND_CANCEL_TASKS" => "scheduling stops; running tasks are canceled".into(),
        other => crate::domain::text::sanitize(other),
    }
}

/// The template context of a budget notice, and the facts a webhook carries.
pub fn budget_context(
    team: &str,
    channel: &str,
    crossed: &BudgetCrossed,
    facts: &BudgetFacts,
) -> (Value, Value) {
    let used_percent = match (facts.used_dollars, facts.limit_dollars) {
        (Some(u), Some(l)) if l > 0.0 => Some(number((u / l * 100.0).round())),
        _ => None,
    };
    let actions: Vec<Value> = facts
        .actions
        .iter()
        .map(|(kind, at)| json!({"action": action_words(kind), "threshold": number(*at)}))
        .collect();
    let ctx = json!({
        "team": team,
        "channel": channel,
        "event": Event::BudgetThreshold.as_str(),
        "farmId": crossed.farm_id,
        "budgetId": crossed.budget_id,
        "budgetName": facts.name,
        "thresholdPercent": number(crossed.threshold_percent),
        "queueId": facts.queue_id,
        "status": facts.status,
        "limitDollars": facts.limit_dollars.map(dollars),
        "usedDollars": facts.used_dollars.map(dollars),
        "usedPercent": used_percent,
        "actions": actions,
        "at": crossed.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    let data = json!({
        "farmId": crossed.farm_id,
        "budgetId": crossed.budget_id,
        "budgetName": crate::domain::text::sanitize(&facts.name),
        "thresholdPercent": crossed.threshold_percent,
        "queueId": facts.queue_id,
        "status": facts.status,
        "approximateDollarLimit": facts.limit_dollars,
        "approximateDollarUsage": facts.used_dollars,
        "eventId": crossed.event_id,
    });
    (ctx, data)
}

/// A budget with every field set, for checking templates and the golden files.
pub fn sample_budget() -> (BudgetCrossed, BudgetFacts) {
    let at: DateTime<Utc> = "2026-12-05T20:00:00Z".parse().unwrap_or_default();
    (
        BudgetCrossed {
            farm_id: format!("farm-{:032x}", 0xfa_u64),
            budget_id: format!("budget-{:032x}", 0xb0_u64),
            threshold_percent: 80.0,
            event_id: "6a7e8feb-b491-4cf7-a9f1-bf3703467718".into(),
            at,
        },
        BudgetFacts {
            name: "Episode 104 <lighting> & comp".into(),
            queue_id: Some(format!("queue-{:032x}", 0x9e_u64)),
            status: Some("ACTIVE".into()),
            limit_dollars: Some(25_000.0),
            used_dollars: Some(20_137.5),
            actions: vec![("STOP_SCHEDULING_AND_COMPLETE_TASKS".into(), 100.0)],
        },
    )
}

impl Renderer {
    /// Finds each notice event's template for (team, kind): the team's own, else
    /// the default (a file, else the one built in).
    pub(super) fn find_notices(
        &mut self,
        dir: &std::path::Path,
        team: &str,
        kind: crate::notify::ChannelKind,
        loaded: &mut std::collections::HashMap<String, String>,
    ) -> Result<(), RenderError> {
        for event in Event::NOTICES {
            let candidates = [
                format!("{team}/{kind}/{}.hbs", event.as_str()),
                format!("default/{kind}/{}.hbs", event.as_str()),
            ];
            if let Some(rel) = self.find_template(dir, &candidates, loaded)? {
                self.notices.insert((team.to_string(), kind, event), rel);
            }
        }
        Ok(())
    }

    /// Renders every notice template once with every fact, once as a deleted
    /// budget leaves it (name only): strict mode finds a misspelt field at start-up.
    pub(super) fn check_notices(
        &self,
        loaded: &std::collections::HashMap<String, String>,
    ) -> Result<(), RenderError> {
        let (crossed, facts) = sample_budget();
        let bare = BudgetFacts {
            name: facts.name.clone(),
            ..Default::default()
        };
        for ((team, kind, _), rel) in &self.notices {
            for f in [&facts, &bare] {
                let (ctx, _) = budget_context(team, "check", &crossed, f);
                self.render_named(rel, *kind, &ctx)
                    .map_err(|e| e.in_file(&loaded[rel]))?;
            }
        }
        Ok(())
    }

    /// A notice's payload for one channel: context → `<event>.hbs` → the kind's
    /// escaping → the kind's payload.
    pub fn notice_payload(
        &self,
        team: &str,
        channel: &crate::notify::Channel,
        event: Event,
        ctx: &Value,
        data: &Value,
        at: DateTime<Utc>,
    ) -> Result<Value, RenderError> {
        let rel = self
            .notices
            .get(&(team.to_string(), channel.kind, event))
            .ok_or_else(|| RenderError::Template {
                file: format!("{team}/{}/{}.hbs", channel.kind, event.as_str()),
                message: "this channel kind has no template for this event".into(),
            })?;
        let rendered = self.render_named(rel, channel.kind, ctx)?;
        Ok(channel.kind.notice_payload(&crate::notify::Notice {
            team,
            event,
            rendered: &rendered,
            link: None,
            data,
            at,
            card_only: channel.card_only,
        }))
    }

    /// A budget notice's payload (see [`budget_context`]).
    pub fn budget_payload(
        &self,
        team: &str,
        channel: &crate::notify::Channel,
        crossed: &BudgetCrossed,
        facts: &BudgetFacts,
    ) -> Result<Value, RenderError> {
        let (ctx, data) = budget_context(team, &channel.name, crossed, facts);
        self.notice_payload(
            team,
            channel,
            Event::BudgetThreshold,
            &ctx,
            &data,
            crossed.at,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(number(80.0), "80");
        assert_eq!(number(87.5), "87.5");
        assert_eq!(number(20137.5), "20137.5");
        assert_eq!(dollars(20137.5), "20,137.50");
        assert_eq!(dollars(25_000.0), "25,000");
        assert_eq!(dollars(999.0), "999");
        assert_eq!(dollars(1_234_567.891), "1,234,567.89");
        let (c, f) = sample_budget();
        let (ctx, data) = budget_context("t", "c", &c, &f);
        assert_eq!(ctx["usedPercent"], json!("81"));
        assert_eq!(data["thresholdPercent"], json!(80.0));
    }
}
