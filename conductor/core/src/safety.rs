//! Pipeline safety: does a new revision weaken what the current one
//! guarantees? Pure: two pipelines (and, when the inventory is known, their
//! plans) in, the weakenings out.
//!
//! A revision weakens a pipeline when it
//! - lowers, for some approval group, the highest quorum any gate of that
//!   group asks for (a gate removed, its group changed, its quorum lowered);
//! - lets more cells deploy before `q` approvals of a group than today, for
//!   any quorum `q` the group's gates ask for today (cells moved in front of
//!   a gate, a wave that no longer waits for a gated wave). A cell is behind
//!   a gate when its wave, or a wave it waits for (directly or not), has it;
//! - removes the deploy windows, or allows a minute of the week (in the
//!   cell's time zone or in UTC, each compared on its own) that no current
//!   window allows;
//! - changes `on_failure` to a rule that rolls back less
//!   (`rollback_train` > `rollback_cell_and_halt`).
//!
//! Adding gates, raising quorums, narrowing windows, adding or changing
//! steps, and renaming waves (as long as the same cells stay behind the same
//! gates) are not weakenings. Every rule is monotone, so a series of
//! revisions none of which weakens the pipeline cannot add up to one that
//! does (property-tested below).

use crate::pipeline::{OnFailure, Pipeline};
use crate::plan::Plan;
use crate::window::{Window, WindowTz};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Highest quorum the language allows.
const MAX_QUORUM: u32 = 20;
const WEEK_MINUTES: usize = 7 * 1440;

/// What kind of safety a revision gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    GateRemoved,
    GroupChanged,
    QuorumLowered,
    CellsUngated,
    WindowsRemoved,
    WindowsWidened,
    OnFailure,
}

/// One way a revision weakens its pipeline, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weakening {
    pub kind: Kind,
    pub message: String,
}

impl fmt::Display for Weakening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A pipeline and, when the inventory is known, its plan.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub pipeline: &'a Pipeline,
    pub plan: Option<&'a Plan>,
}

/// Everything `proposed` weakens compared with `current`. Both plans must
/// come from the same inventory; without them only the rules that need no
/// cells apply.
pub fn weakenings(current: Side<'_>, proposed: Side<'_>) -> Vec<Weakening> {
    let mut out = Vec::new();
    let cur_q = max_quorums(current.pipeline);
    let new_q = max_quorums(proposed.pipeline);
    let mut reported = BTreeSet::new();
    for (group, (q, wave)) in &cur_q {
        let now = new_q.get(group).map_or(0, |x| x.0);
        if now >= *q {
            continue;
        }
        reported.insert(group.clone());
        out.push(gate_change(proposed.pipeline, group, *q, now, wave));
    }
    if let (Some(cp), Some(np)) = (current.plan, proposed.plan) {
        let (cur_req, new_req) = (requirements(cp), requirements(np));
        for (group, (max, _)) in &cur_q {
            if reported.contains(group) {
                continue;
            }
            // The lowest quorum at which more cells go ungated than today.
            let worse = (1..=*max.min(&MAX_QUORUM)).find_map(|q| {
                let (a, b) = (ungated(&cur_req, group, q), ungated(&new_req, group, q));
                (b.len() > a.len()).then_some((q, a, b))
            });
            if let Some((q, a, b)) = worse {
                let newly: Vec<&str> = b.difference(&a).map(|s| s.as_str()).take(8).collect();
                out.push(Weakening {
                    kind: Kind::CellsUngated,
                    message: format!(
                        "{} of {} cells would deploy before {} by {group} (today {} of {}){}",
                        b.len(),
                        new_req.len(),
                        approvals(q),
                        a.len(),
                        cur_req.len(),
                        if newly.is_empty() {
                            String::new()
                        } else {
                            format!(", e.g. {}", newly.join(", "))
                        }
                    ),
                });
            }
        }
    }
    let (cw, nw) = (
        current.pipeline.parsed_windows(),
        proposed.pipeline.parsed_windows(),
    );
    if !cw.is_empty() {
        if nw.is_empty() {
            out.push(Weakening {
                kind: Kind::WindowsRemoved,
                message: "the deploy windows are removed: deploys could run at any time".into(),
            });
        } else {
            for tz in [WindowTz::Cell, WindowTz::Utc] {
                let (c, n) = (minutes(&cw, &tz), minutes(&nw, &tz));
                if let Some(m) = (0..WEEK_MINUTES).find(|&m| n[m] && !c[m]) {
                    out.push(Weakening {
                        kind: Kind::WindowsWidened,
                        message: format!(
                            "the deploy windows allow more: {} {:02}:{:02} ({}) is outside every current window",
                            DAYS[m / 1440],
                            m % 1440 / 60,
                            m % 60,
                            match tz {
                                WindowTz::Cell => "the cell's time zone",
                                WindowTz::Utc => "UTC",
                            }
                        ),
                    });
                }
            }
        }
    }
    let (cf, nf) = (current.pipeline.on_failure, proposed.pipeline.on_failure);
    if rollback_rank(nf) < rollback_rank(cf) {
        out.push(Weakening {
            kind: Kind::OnFailure,
            message: format!(
                "on_failure changes from {} to {}, which rolls back less",
                on_failure_name(cf),
                on_failure_name(nf)
            ),
        });
    }
    out
}

/// The approval groups of a pipeline's gates: who may approve a revision
/// that weakens it (a member of every one of them, or an admin).
pub fn approver_groups(p: &Pipeline) -> BTreeSet<String> {
    p.waves
        .iter()
        .filter_map(|w| w.approval.as_ref().map(|g| g.group.clone()))
        .collect()
}

/// Why `by` may not approve a revision written by `author` that needs a
/// member of every group in `required` (None: they may). Admins may
/// approve whatever the groups; nobody approves their own revision. The
/// caller checks the role (approver or admin) first.
pub fn approval_refusal(
    required: &BTreeSet<String>,
    author: &str,
    by: &str,
    by_groups: &[String],
    admin: bool,
) -> Option<String> {
    if by == author {
        return Some(format!(
            "{by} wrote this revision; someone else must approve it"
        ));
    }
    if admin {
        return None;
    }
    let missing: Vec<&str> = required
        .iter()
        .filter(|g| !by_groups.contains(g))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "approving this revision needs a member of {} (the groups of the pipeline's gates)",
            missing.join(" and ")
        ))
    }
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn approvals(q: u32) -> String {
    if q == 1 {
        "an approval".into()
    } else {
        format!("{q} approvals")
    }
}

fn on_failure_name(o: OnFailure) -> &'static str {
    match o {
        OnFailure::RollbackCellAndHalt => "rollback_cell_and_halt",
        OnFailure::RollbackTrain => "rollback_train",
    }
}

/// How much a failure rule rolls back (more is safer). Exhaustive on
/// purpose: a new rule must be ranked here before it compiles.
fn rollback_rank(o: OnFailure) -> u8 {
    match o {
        OnFailure::RollbackCellAndHalt => 1,
        OnFailure::RollbackTrain => 2,
    }
}

/// Per group, the highest quorum of its gates and a wave that asks for it.
fn max_quorums(p: &Pipeline) -> BTreeMap<String, (u32, String)> {
    let mut m: BTreeMap<String, (u32, String)> = BTreeMap::new();
    for w in &p.waves {
        if let Some(g) = &w.approval {
            let e = m.entry(g.group.clone()).or_insert((0, w.name.clone()));
            if g.quorum > e.0 {
                *e = (g.quorum, w.name.clone());
            }
        }
    }
    m
}

/// Describe a group whose highest quorum went from `q` to `now`.
fn gate_change(proposed: &Pipeline, group: &str, q: u32, now: u32, wave: &str) -> Weakening {
    let same = proposed.waves.iter().find(|w| w.name == wave);
    match same.and_then(|w| w.approval.as_ref()) {
        Some(g) if g.group == group => Weakening {
            kind: Kind::QuorumLowered,
            message: format!(
                "wave {wave}: the approval by {group} needs {} instead of {}",
                approvals(g.quorum),
                approvals(q)
            ),
        },
        Some(g) => Weakening {
            kind: Kind::GroupChanged,
            message: format!(
                "wave {wave}: the approval group changes from {group} to {}",
                g.group
            ),
        },
        None if now > 0 => Weakening {
            kind: Kind::QuorumLowered,
            message: format!(
                "no wave needs {} by {group} any more (at most {})",
                approvals(q),
                approvals(now)
            ),
        },
        None => Weakening {
            kind: Kind::GateRemoved,
            message: match same {
                Some(_) => format!("wave {wave}: the approval by {group} is removed"),
                None => format!("wave {wave} and its approval by {group} are removed"),
            },
        },
    }
}

/// Per cell, the highest quorum of each group it waits for (the gates of
/// its wave and of every wave its wave waits for, directly or not).
fn requirements(plan: &Plan) -> BTreeMap<String, BTreeMap<String, u32>> {
    let n = plan.waves.len();
    let mut memo: Vec<Option<BTreeMap<String, u32>>> = vec![None; n];
    fn gates(
        plan: &Plan,
        i: usize,
        memo: &mut Vec<Option<BTreeMap<String, u32>>>,
        depth: usize,
    ) -> BTreeMap<String, u32> {
        if let Some(Some(m)) = memo.get(i) {
            return m.clone();
        }
        let mut m = BTreeMap::new();
        // Plans are acyclic; the depth bound only guards against a corrupt one.
        if depth <= plan.waves.len() {
            if let Some(w) = plan.waves.get(i) {
                if let Some(g) = &w.approval {
                    m.insert(g.group.clone(), g.quorum);
                }
                for &d in &w.after {
                    for (grp, q) in gates(plan, d, memo, depth + 1) {
                        let e = m.entry(grp).or_insert(0);
                        *e = (*e).max(q);
                    }
                }
            }
        }
        if let Some(slot) = memo.get_mut(i) {
            *slot = Some(m.clone());
        }
        m
    }
    let mut out = BTreeMap::new();
    for i in 0..n {
        let g = gates(plan, i, &mut memo, 0);
        for c in &plan.waves[i].cells {
            out.insert(c.clone(), g.clone());
        }
    }
    out
}

/// Cells that can deploy before `q` approvals by `group`.
fn ungated(req: &BTreeMap<String, BTreeMap<String, u32>>, group: &str, q: u32) -> BTreeSet<String> {
    req.iter()
        .filter(|(_, g)| g.get(group).copied().unwrap_or(0) < q)
        .map(|(c, _)| c.clone())
        .collect()
}

/// The minutes of the week the windows of one kind of clock allow.
fn minutes(ws: &[Window], tz: &WindowTz) -> Vec<bool> {
    let mut m = vec![false; WEEK_MINUTES];
    for w in ws.iter().filter(|w| &w.tz == tz) {
        for day in 0..7 {
            if !w.days[day] {
                continue;
            }
            let (start, end) = (w.start as usize, w.end as usize);
            if start < end {
                for x in start..end.min(1440) {
                    m[day * 1440 + x] = true;
                }
            } else {
                // Overnight: from start to midnight, then the next morning.
                for x in start..1440 {
                    m[day * 1440 + x] = true;
                }
                let next = (day + 1) % 7;
                for x in 0..end.min(1440) {
                    m[next * 1440 + x] = true;
                }
            }
        }
    }
    m
}

#[cfg(test)]
#[path = "safety_tests.rs"]
mod tests;
