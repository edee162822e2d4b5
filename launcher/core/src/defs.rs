//! Compute environments, job queues, fair-share policies and job
//! definitions: the admin side of the scheduler.

use crate::core::{Core, Effects, QueueState, Record};
use crate::retry::glob_match;
use crate::Time;
use launcher_proto::{
    AdminOp, CeDef, CeInfo, JobDef, JobId, JobState, NodeId, NodeSelector, PolicyDef, QueueDef, QueueInfo, Strategy,
};
use std::collections::BTreeSet;

/// The compute environment every cluster starts with: all nodes, best fit.
pub fn default_ce() -> CeDef {
    CeDef { name: "default".into(), enabled: true, selector: NodeSelector::All, strategy: Strategy::BestFit }
}

/// The queue every cluster starts with.
pub fn default_queue() -> QueueDef {
    QueueDef { name: "default".into(), priority: 1, enabled: true, ces: vec!["default".into()], policy: None }
}

/// The weight of `share` in a policy: an exact entry, else the longest
/// matching prefix (`team*`), else 1.0.
pub fn share_weight(p: &PolicyDef, share: &str) -> f64 {
    let exact = p.shares.iter().find(|s| s.share == share);
    let prefix =
        p.shares.iter().filter(|s| s.share.ends_with('*') && glob_match(&s.share, share)).max_by_key(|s| s.share.len());
    exact.or(prefix).map(|s| f64::from(s.weight_x10k) / 10_000.0).unwrap_or(1.0)
}

fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("{kind} name {name:?} must be 1-128 letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

/// Expand a hostlist expression: `node[1-3,7],gpu[01-02]` → node1 node2 node3 node7 gpu01 gpu02.
pub fn expand_hostlist(expr: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    let mut parts = Vec::new();
    for c in expr.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    for p in parts.into_iter().filter(|p| !p.is_empty()) {
        let Some(open) = p.find('[') else {
            out.push(p);
            continue;
        };
        let close = p.find(']').ok_or_else(|| format!("hostlist {p:?}: '[' without ']'"))?;
        let (prefix, body, suffix) = (&p[..open], &p[open + 1..close], &p[close + 1..]);
        for r in body.split(',') {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let width = a.len();
            let (x, y): (u64, u64) = match (a.parse(), b.parse()) {
                (Ok(x), Ok(y)) if x <= y && y - x < 100_000 => (x, y),
                _ => return Err(format!("hostlist {p:?}: bad range {r:?}; write e.g. node[1-4,7]")),
            };
            for i in x..=y {
                out.push(format!("{prefix}{i:0width$}{suffix}"));
            }
        }
    }
    if out.is_empty() {
        return Err("empty node list".into());
    }
    Ok(out)
}

impl Core {
    pub(crate) fn install_ce(&mut self, def: CeDef) {
        self.ces.insert(def.name.clone(), def);
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.unindex_node(id);
            self.refresh_membership(id);
            self.index_node(id);
        }
        self.dirty = true;
    }

    pub(crate) fn install_queue(&mut self, def: QueueDef) {
        self.fits_cache.borrow_mut().clear();
        let usage = self.queues.remove(&def.name).map(|q| q.usage).unwrap_or_default();
        let running = self
            .jobs
            .values()
            .filter(|j| j.spec.queue == def.name && matches!(j.state, JobState::Starting | JobState::Running))
            .map(|j| j.alloc.iter().map(|a| u64::from(a.cpus)).sum::<u64>())
            .sum();
        self.queues
            .insert(def.name.clone(), QueueState { def, waiting: Default::default(), usage, running_cpus: running });
        self.requeue_all();
    }

    /// Rebuild every queue's waiting set (after definitions changed).
    pub(crate) fn requeue_all(&mut self) {
        for q in self.queues.values_mut() {
            q.waiting.clear();
        }
        self.ineligible.clear();
        let ids: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.id.index().is_none() && !self.dep_wait.contains(&j.id))
            .filter(|j| match &j.array {
                Some(_) => self.arrays.get(&j.id).is_some_and(|l| !l.runnable.is_empty()) && !j.state.is_terminal(),
                None => j.state == JobState::Runnable,
            })
            .map(|j| j.id)
            .collect();
        for id in ids {
            self.enqueue(id);
        }
        self.dirty = true;
    }

    /// Recompute which compute environments hold `id` (the caller re-indexes).
    pub(crate) fn refresh_membership(&mut self, id: NodeId) {
        self.fits_cache.borrow_mut().clear();
        let n = &self.nodes[&id];
        let ces: Vec<String> = self
            .ces
            .values()
            .filter(|c| match &c.selector {
                NodeSelector::All => true,
                NodeSelector::Nodes(names) => names.contains(&n.rec.name),
                NodeSelector::Feature(f) => n.rec.inventory.features.contains(f),
            })
            .map(|c| c.name.clone())
            .collect();
        for (name, members) in self.ce_members.iter_mut() {
            if !ces.contains(name) {
                members.remove(&id);
            }
        }
        for c in &ces {
            self.ce_members.entry(c.clone()).or_default().insert(id);
        }
        self.ce_members.retain(|name, _| self.ces.contains_key(name));
        self.ce_free.retain(|name, _| self.ces.contains_key(name));
        self.nodes.get_mut(&id).expect("node").ces = ces;
    }

    fn validate_ce(def: &CeDef) -> Result<(), String> {
        check_name("compute environment", &def.name)?;
        match &def.selector {
            NodeSelector::Nodes(v) if v.is_empty() => Err("--nodes needs at least one node name".into()),
            NodeSelector::Feature(f) if f.is_empty() => Err("--feature needs a feature name".into()),
            _ => Ok(()),
        }
    }

    fn validate_queue(&self, def: &QueueDef) -> Result<(), String> {
        check_name("queue", &def.name)?;
        if def.ces.is_empty() || def.ces.len() > 3 {
            return Err(format!(
                "queue {} lists {} compute environments; give 1 to 3 with --ce CE1[,CE2,CE3]",
                def.name,
                def.ces.len()
            ));
        }
        let distinct: BTreeSet<&String> = def.ces.iter().collect();
        if distinct.len() != def.ces.len() {
            return Err("--ce lists a compute environment twice".into());
        }
        for c in &def.ces {
            if !self.ces.contains_key(c) {
                return Err(format!("no compute environment {c:?}; create it with `launcher ce create {c} ...`"));
            }
        }
        if let Some(p) = &def.policy {
            if !self.policies.contains_key(p) {
                return Err(format!("no scheduling policy {p:?}; create it with `launcher policy create {p} ...`"));
            }
        }
        Ok(())
    }

    fn validate_policy(p: &PolicyDef) -> Result<(), String> {
        check_name("policy", &p.name)?;
        if p.share_decay_s > 604_800 {
            return Err(format!("--share-decay {} s is over a week (604800 s)", p.share_decay_s));
        }
        if p.compute_reservation > 99 {
            return Err(format!("--compute-reservation {} must be 0 to 99 (percent)", p.compute_reservation));
        }
        let mut seen = BTreeSet::new();
        for s in &p.shares {
            if !(1..=9_999_999).contains(&s.weight_x10k) {
                return Err(format!("share {:?}: weight must be between 0.0001 and 999.9999", s.share));
            }
            let body = s.share.strip_suffix('*').unwrap_or(&s.share);
            if body.contains('*') || !seen.insert(s.share.clone()) {
                return Err(format!("share {:?} is listed twice or has a '*' before its end", s.share));
            }
        }
        Ok(())
    }

    fn jobs_in_queue(&self, name: &str) -> (u64, u64) {
        let mut waiting = 0u64;
        let mut running = 0u64;
        for j in self.jobs.values().filter(|j| j.spec.queue == name) {
            match (&j.array, j.state) {
                (Some(arr), s) if !s.is_terminal() => {
                    for c in &arr.states {
                        match c {
                            crate::job::ChildState::Pending | crate::job::ChildState::Runnable => waiting += 1,
                            _ => {}
                        }
                    }
                }
                (None, JobState::Submitted | JobState::Pending | JobState::Runnable) => waiting += 1,
                (None, JobState::Starting | JobState::Running) => running += 1,
                _ => {}
            }
        }
        (waiting, running)
    }

    /// An admin change. Ok: a sentence saying what changed.
    pub fn on_admin(&mut self, now: Time, fx: &mut impl Effects, op: AdminOp) -> Result<String, String> {
        let _ = now;
        let msg = match op {
            AdminOp::CeCreate(def) => {
                Self::validate_ce(&def)?;
                if self.ces.contains_key(&def.name) {
                    return Err(format!("compute environment {} exists; use `launcher ce update`", def.name));
                }
                let name = def.name.clone();
                fx.persist(Record::Ce(def.clone()));
                self.install_ce(def);
                format!(
                    "compute environment {name} created with {} node(s)",
                    self.ce_members.get(&name).map_or(0, |m| m.len())
                )
            }
            AdminOp::CeUpdate(def) => {
                Self::validate_ce(&def)?;
                if !self.ces.contains_key(&def.name) {
                    return Err(format!("no compute environment {:?}", def.name));
                }
                let name = def.name.clone();
                let state = if def.enabled { "ENABLED" } else { "DISABLED" };
                fx.persist(Record::Ce(def.clone()));
                self.install_ce(def);
                self.requeue_all();
                format!("compute environment {name} updated ({state})")
            }
            AdminOp::CeDelete(name) => {
                if !self.ces.contains_key(&name) {
                    return Err(format!("no compute environment {name:?}"));
                }
                if let Some(q) = self.queues.values().find(|q| q.def.ces.contains(&name)) {
                    return Err(format!(
                        "queue {} uses compute environment {name}; remove it from the queue first",
                        q.def.name
                    ));
                }
                self.ces.remove(&name);
                self.fits_cache.borrow_mut().clear();
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                for id in ids {
                    self.unindex_node(id);
                    self.refresh_membership(id);
                    self.index_node(id);
                }
                fx.persist(Record::Deleted { kind: "ce", name: name.clone() });
                format!("compute environment {name} deleted")
            }
            AdminOp::QueueCreate(def) => {
                self.validate_queue(&def)?;
                if self.queues.contains_key(&def.name) {
                    return Err(format!("queue {} exists; use `launcher queue-admin update`", def.name));
                }
                let name = def.name.clone();
                fx.persist(Record::Queue(def.clone()));
                self.install_queue(def);
                format!("queue {name} created")
            }
            AdminOp::QueueUpdate(def) => {
                self.validate_queue(&def)?;
                if !self.queues.contains_key(&def.name) {
                    return Err(format!("no queue {:?}", def.name));
                }
                let name = def.name.clone();
                let state = if def.enabled { "ENABLED" } else { "DISABLED" };
                fx.persist(Record::Queue(def.clone()));
                self.install_queue(def);
                format!("queue {name} updated ({state})")
            }
            AdminOp::QueueDelete(name) => {
                if !self.queues.contains_key(&name) {
                    return Err(format!("no queue {name:?}"));
                }
                let (w, r) = self.jobs_in_queue(&name);
                if w + r > 0 {
                    return Err(format!(
                        "queue {name} still has {w} waiting and {r} running job(s); disable it and let them finish (or cancel them) first"
                    ));
                }
                self.queues.remove(&name);
                self.usage_version += 1;
                fx.persist(Record::Deleted { kind: "queue", name: name.clone() });
                format!("queue {name} deleted")
            }
            AdminOp::PolicyCreate(p) | AdminOp::PolicyUpdate(p) if Self::validate_policy(&p).is_err() => {
                return Err(Self::validate_policy(&p).unwrap_err());
            }
            AdminOp::PolicyCreate(p) => {
                if self.policies.contains_key(&p.name) {
                    return Err(format!("policy {} exists; use `launcher policy update`", p.name));
                }
                let name = p.name.clone();
                fx.persist(Record::Policy(p.clone()));
                self.policies.insert(name.clone(), p);
                format!("policy {name} created")
            }
            AdminOp::PolicyUpdate(p) => {
                if !self.policies.contains_key(&p.name) {
                    return Err(format!("no policy {:?}", p.name));
                }
                let name = p.name.clone();
                fx.persist(Record::Policy(p.clone()));
                self.policies.insert(name.clone(), p);
                self.dirty = true;
                format!("policy {name} updated")
            }
            AdminOp::PolicyDelete(name) => {
                if !self.policies.contains_key(&name) {
                    return Err(format!("no policy {name:?}"));
                }
                if let Some(q) = self.queues.values().find(|q| q.def.policy.as_ref() == Some(&name)) {
                    return Err(format!("queue {} uses policy {name}", q.def.name));
                }
                self.policies.remove(&name);
                fx.persist(Record::Deleted { kind: "policy", name: name.clone() });
                format!("policy {name} deleted")
            }
        };
        Ok(msg)
    }

    /// Register the next revision of a job definition.
    pub fn jobdef_register(&mut self, fx: &mut impl Effects, mut def: JobDef) -> Result<JobDef, String> {
        check_name("job definition", &def.name)?;
        let rev = self.jobdefs.range((def.name.clone(), 0)..=(def.name.clone(), u32::MAX)).map(|(k, _)| k.1).max();
        def.revision = rev.unwrap_or(0) + 1;
        def.active = true;
        fx.persist(Record::Jobdef(Box::new(def.clone())));
        self.jobdefs.insert((def.name.clone(), def.revision), def.clone());
        Ok(def)
    }

    /// Deregister one revision (kept for display, no longer usable).
    pub fn jobdef_deregister(&mut self, fx: &mut impl Effects, name: &str, revision: u32) -> Result<String, String> {
        let Some(d) = self.jobdefs.get_mut(&(name.to_string(), revision)) else {
            return Err(format!("no job definition {name}:{revision}"));
        };
        d.active = false;
        fx.persist(Record::Jobdef(Box::new(d.clone())));
        Ok(format!("job definition {name}:{revision} deregistered"))
    }

    /// Job definitions: one name or all, newest revision last.
    pub fn jobdefs(&self, name: Option<&str>, all: bool) -> Vec<JobDef> {
        self.jobdefs
            .values()
            .filter(|d| name.is_none_or(|n| d.name == n))
            .filter(|d| all || d.active)
            .cloned()
            .collect()
    }

    /// Compute environments with their nodes.
    pub fn ce_infos(&self) -> Vec<CeInfo> {
        self.ces
            .values()
            .map(|c| CeInfo {
                def: c.clone(),
                nodes: self
                    .ce_members
                    .get(&c.name)
                    .map(|m| m.iter().map(|n| self.nodes[n].rec.name.clone()).collect())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Queues with job counts, highest priority first.
    pub fn queue_infos(&self) -> Vec<QueueInfo> {
        let mut v: Vec<QueueInfo> = self
            .queues
            .values()
            .map(|q| {
                let (waiting, running) = self.jobs_in_queue(&q.def.name);
                QueueInfo { def: q.def.clone(), waiting, running }
            })
            .collect();
        v.sort_by_key(|q| (std::cmp::Reverse(q.def.priority), q.def.name.clone()));
        v
    }

    /// Fair-share policies.
    pub fn policy_list(&self) -> Vec<PolicyDef> {
        self.policies.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use launcher_proto::ShareWeight;

    #[test]
    fn hostlists_expand() {
        assert_eq!(
            expand_hostlist("node[1-3,7],gpu[01-02],x").unwrap(),
            vec!["node1", "node2", "node3", "node7", "gpu01", "gpu02", "x"]
        );
        assert!(expand_hostlist("node[3-1]").unwrap_err().contains("bad range"));
        assert!(expand_hostlist("node[1-3").unwrap_err().contains("without"));
    }

    #[test]
    fn weights_exact_then_longest_prefix() {
        let p = PolicyDef {
            name: "p".into(),
            share_decay_s: 0,
            compute_reservation: 0,
            shares: vec![
                ShareWeight { share: "team*".into(), weight_x10k: 5_000 },
                ShareWeight { share: "teamA*".into(), weight_x10k: 2_500 },
                ShareWeight { share: "teamA1".into(), weight_x10k: 1_250 },
            ],
        };
        assert_eq!(share_weight(&p, "teamA1"), 0.125);
        assert_eq!(share_weight(&p, "teamA2"), 0.25);
        assert_eq!(share_weight(&p, "teamB"), 0.5);
        assert_eq!(share_weight(&p, "other"), 1.0);
    }
}
