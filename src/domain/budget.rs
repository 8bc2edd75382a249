//! A farm budget that crossed a threshold: what the event said, and what GetBudget
//! adds. Budget names, like job names, are user text: treat them as hostile.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A `Budget Threshold Reached` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetCrossed {
    pub farm_id: String,
    pub budget_id: String,
    pub threshold_percent: f64,
    /// The EventBridge event id: duplicates of one event share it.
    pub event_id: String,
    /// When EventBridge says it happened.
    pub at: DateTime<Utc>,
}

/// What GetBudget says of the budget (all optional but the name: a budget deleted
/// since, or a read that failed, still gets its notice).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetFacts {
    pub name: String,
    pub queue_id: Option<String>,
    pub status: Option<String>,
    pub limit_dollars: Option<f64>,
    pub used_dollars: Option<f64>,
    /// What the budget does at its thresholds: (action type, threshold percent).
    pub actions: Vec<(String, f64)>,
}
