//! The scheduling pass: queue order (queue priority, then FIFO or fair
//! share), gang allocation within one compute environment by its strategy,
//! and EASY backfill around one reservation.
//!
//! A pass is cheap at 10,000 nodes and 100,000 waiting jobs because:
//! - nodes are indexed per compute environment by free CPUs, so a fit is a
//!   range walk, not a scan;
//! - running allocations are indexed by deadline (`Core::releases`), so the
//!   reservation reads the earliest-ending ones until enough nodes have room;
//! - the queue is read as the pass goes, so a pass costs the entries it
//!   looks at (at most `max_backfill_scan` once a reservation is held);
//! - a job shape that failed to fit makes every job at least as large in the
//!   same queue fail at once (within a pass free resources only shrink);
//! - when nothing was freed since the last pass, only new entries are
//!   looked at ("fresh-only" pass).

use crate::core::{natural_cmp, tasks_per_node, Core, Effects, Node};
use crate::job::{Alloc, ChildState, Job};
use crate::Time;
use launcher_proto::{JobId, JobSpec, NodeId, Strategy};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

/// Nodes that take one extra task, and the others.
type Tiers = (Vec<NodeId>, Vec<NodeId>);

/// A waiting entry's place in its share's set: (higher scheduling priority
/// first, then submit order).
type EntryKey = (Reverse<u32>, JobId);

/// "Never" for reservation times.
pub const NEVER: u64 = u64::MAX;

/// The reservation EASY backfill protects: the first job in queue order that
/// could not start, with the nodes it will get and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The entry holding it (plain job or array parent).
    pub entry: JobId,
    /// The unit that will start (the job, or the array's next child).
    pub unit: JobId,
    /// Earliest start, µs since epoch ([`NEVER`] when a node it needs runs a job without a time limit).
    pub time: u64,
    /// Nodes it will start on.
    pub nodes: BTreeSet<NodeId>,
    /// CPUs it needs on each of them.
    pub need_cpus: u32,
    /// When the reservation was computed.
    pub computed_at: u64,
}

/// Fair-share usage of one share in one queue.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShareUsage {
    /// CPUs its running jobs hold.
    pub running_cpus: u64,
    /// Decayed CPU-seconds used by finished attempts, as of `at`.
    pub hist: f64,
    /// When `hist` was last decayed.
    pub at: Time,
}

/// The fair-share history of one share in one queue, as plain data: what the
/// controller saves now and then and hands back to [`Core::restore`], so a
/// restart does not forget who used the cluster. CPUs held by running jobs
/// are not part of it: a restore counts them again from the running jobs.
#[derive(Clone, Debug, PartialEq)]
pub struct ShareHistory {
    /// The queue.
    pub queue: String,
    /// The share.
    pub share: String,
    /// Decayed CPU-seconds used by finished attempts, as of `at`.
    pub hist: f64,
    /// When `hist` was last decayed; it keeps decaying from here.
    pub at: Time,
}

impl ShareUsage {
    fn decayed(&self, now: Time, decay_s: u64) -> f64 {
        if decay_s == 0 {
            return 0.0;
        }
        let dt = now.0.saturating_sub(self.at.0) as f64 / 1e6;
        self.hist * 0.5f64.powf(dt / decay_s as f64)
    }

    /// Add CPU-seconds used, decaying what was there (half-life = `shareDecaySeconds`).
    pub fn add_history(&mut self, now: Time, decay_s: u64, cpu_s: f64) {
        self.hist = self.decayed(now, decay_s) + if decay_s == 0 { 0.0 } else { cpu_s };
        self.at = now;
    }

    /// Usage × weight: CPUs held now plus the decayed average CPUs over the
    /// decay window. The share with the lowest value goes next.
    pub fn metric(&self, now: Time, decay_s: u64, weight: f64) -> f64 {
        let avg = if decay_s == 0 { 0.0 } else { self.decayed(now, decay_s) / decay_s as f64 };
        (self.running_cpus as f64 + avg) * weight
    }
}

/// What a unit needs, for fits and for the failed-shape cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    nodes: u32,
    big: u32,
    small: u32,
    extra: u32,
    mem: u64,
}

impl Shape {
    /// From the block distribution of [`tasks_per_node`], without building it
    /// (this runs for every entry a pass looks at): the first `tasks % nodes`
    /// nodes take one task more.
    fn of(spec: &JobSpec) -> Shape {
        let (base, rem) = (spec.tasks / spec.nodes, spec.tasks % spec.nodes);
        let big = base + u32::from(rem > 0);
        Shape {
            nodes: spec.nodes,
            big: big.saturating_mul(spec.cpus_per_task),
            small: base.saturating_mul(spec.cpus_per_task),
            extra: if rem > 0 { rem } else { spec.nodes },
            mem: spec.mem_mib,
        }
    }

    fn covers(&self, other: &Shape) -> bool {
        self.nodes <= other.nodes && self.big <= other.big && self.small <= other.small && self.mem <= other.mem
    }
}

enum Outcome {
    Started,
    Blocked,
    /// No CPU is free anywhere: the pass can stop.
    Full,
}

struct Pass {
    full: bool,
    started: usize,
    /// Entries looked at since the first one that could not start.
    scanned_blocked: usize,
    /// (shape, whether reserved nodes were allowed, whether it would have
    /// fit on reserved nodes) that did not fit, in the queue being scanned.
    failed: Vec<(Shape, bool, bool)>,
    /// CPUs of the connected nodes of the queue being scanned, once a
    /// fair-share check needed them (nodes do not change within a pass).
    capacity: Option<u64>,
}

impl Core {
    /// One scheduling pass. Returns how many jobs (or array children) started.
    pub fn schedule(&mut self, now: Time, fx: &mut impl Effects) -> usize {
        if std::mem::take(&mut self.settle) {
            let pending: Vec<JobId> = self.dep_wait.iter().copied().collect();
            for id in pending {
                self.reevaluate(now, fx, id);
            }
        }
        self.drain(now, fx);
        if !self.dirty {
            if self.fresh.is_empty() {
                return 0;
            }
            let head_key = self.reservation.as_ref().map(|r| self.order_key(r.entry));
            for &f in &self.fresh {
                let q = self.jobs.get(&f).and_then(|j| self.queues.get(&j.spec.queue));
                if q.is_some_and(|q| q.def.policy.is_some())
                    || head_key.as_ref().is_some_and(|h| self.order_key(f) < *h)
                {
                    self.dirty = true;
                    break;
                }
            }
        }
        let mut pass = Pass { full: self.dirty, started: 0, scanned_blocked: 0, failed: Vec::new(), capacity: None };
        self.dirty = false;
        let fresh = std::mem::take(&mut self.fresh);
        if pass.full {
            self.reservation = None;
            self.backfill_blocked.clear();
        }
        let mut order: Vec<(Reverse<i32>, String)> = self
            .queues
            .values()
            .filter(|q| q.def.enabled)
            .map(|q| (Reverse(q.def.priority), q.def.name.clone()))
            .collect();
        order.sort();
        'queues: for (_, qname) in order {
            // Failed shapes and capacity speak for one queue (its compute environments).
            pass.failed.clear();
            pass.capacity = None;
            let q = &self.queues[&qname];
            if q.def.policy.is_some() && pass.full {
                if !self.fair_share_queue(now, fx, &qname, &mut pass) {
                    break 'queues;
                }
                continue;
            }
            if pass.full {
                // At most what the scan may look at, plus what can start before it.
                let limit = self.cfg.max_backfill_scan.saturating_add(self.free_cpus_total as usize).saturating_add(1);
                if !self.scan_queue(now, fx, &qname, limit, &mut pass) {
                    break 'queues;
                }
                continue;
            }
            let mut entries: Vec<EntryKey> = fresh
                .iter()
                .filter(|id| self.jobs.get(id).is_some_and(|j| j.spec.queue == qname))
                .map(|id| (Reverse(self.jobs[id].spec.scheduling_priority), *id))
                .collect();
            entries.sort();
            for (_, id) in entries {
                if !self.try_all_units(now, fx, &qname, id, &mut pass) {
                    break 'queues;
                }
            }
        }
        pass.started
    }

    /// A full pass over a FIFO queue: its waiting entries in order, at most
    /// `limit` of them. Read from the queue a chunk at a time (as the pass
    /// goes) rather than copied whole first: a pass that stops after a few
    /// entries costs a few entries. Returns false when the cluster is full.
    fn scan_queue(&mut self, now: Time, fx: &mut impl Effects, qname: &str, limit: usize, pass: &mut Pass) -> bool {
        let shares: Vec<String> = self.queues[qname].waiting.keys().cloned().collect();
        let mut left = limit;
        for share in shares {
            let mut after = Bound::Unbounded;
            let mut chunk_len = 32;
            while left > 0 {
                let Some(set) = self.queues[qname].waiting.get(&share) else { break };
                let chunk: Vec<EntryKey> =
                    set.range((after, Bound::Unbounded)).take(chunk_len.min(left)).copied().collect();
                let Some(&last) = chunk.last() else { break };
                after = Bound::Excluded(last);
                left -= chunk.len();
                chunk_len = (chunk_len * 2).min(1024);
                for (_, id) in chunk {
                    if !self.try_all_units(now, fx, qname, id, pass) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Try an entry until it blocks (an array may start several children).
    /// Returns false when the cluster is full.
    fn try_all_units(&mut self, now: Time, fx: &mut impl Effects, qname: &str, id: JobId, pass: &mut Pass) -> bool {
        loop {
            match self.try_entry(now, fx, qname, id, pass) {
                (Outcome::Full, _) => return false,
                (Outcome::Started, true) => continue,
                _ => return true,
            }
        }
    }

    /// A fair-share queue: repeatedly the share with the lowest usage × weight
    /// gets its next job. Returns false when the cluster is full.
    fn fair_share_queue(&mut self, now: Time, fx: &mut impl Effects, qname: &str, pass: &mut Pass) -> bool {
        // Each share's next entry, read from the queue as the pass goes.
        let mut heads: Vec<(String, Option<EntryKey>)> =
            self.queues[qname].waiting.iter().map(|(share, set)| (share.clone(), set.first().copied())).collect();
        loop {
            let mut best: Option<(f64, usize)> = None;
            for (i, (share, head)) in heads.iter().enumerate() {
                if head.is_none() {
                    continue;
                }
                let m = self.share_metric(now, qname, share);
                if best.is_none_or(|(b, _)| m < b) {
                    best = Some((m, i));
                }
            }
            let Some((_, i)) = best else { return true };
            let key = heads[i].1.expect("chosen share has a next entry");
            match self.try_entry(now, fx, qname, key.1, pass) {
                (Outcome::Full, _) => return false,
                (Outcome::Started, true) => {} // same entry again: the array has more children
                _ => {
                    let next = self.queues[qname]
                        .waiting
                        .get(&heads[i].0)
                        .and_then(|set| set.range((Bound::Excluded(key), Bound::Unbounded)).next().copied());
                    heads[i].1 = next;
                }
            }
        }
    }

    /// Weighted usage of a share.
    pub(crate) fn share_metric(&self, now: Time, qname: &str, share: &str) -> f64 {
        let q = &self.queues[qname];
        let policy = q.def.policy.as_ref().and_then(|p| self.policies.get(p));
        let (decay, weight) = match policy {
            Some(p) => (p.share_decay_s, crate::defs::share_weight(p, share)),
            None => (0, 1.0),
        };
        q.usage.get(share).map(|u| u.metric(now, decay, weight)).unwrap_or(0.0)
    }

    pub(crate) fn queue_decay_s(&self, qname: &str) -> u64 {
        self.queues
            .get(qname)
            .and_then(|q| q.def.policy.as_ref())
            .and_then(|p| self.policies.get(p))
            .map(|p| p.share_decay_s)
            .unwrap_or(0)
    }

    /// Sort key of an entry in global queue order.
    fn order_key(&self, id: JobId) -> (Reverse<i32>, String, Reverse<u32>, JobId) {
        let j = &self.jobs[&id];
        let prio = self.queues.get(&j.spec.queue).map(|q| q.def.priority).unwrap_or(i32::MIN);
        (Reverse(prio), j.spec.queue.clone(), Reverse(j.spec.scheduling_priority), id)
    }

    /// Try to start the next unit of an entry. The bool says whether the entry
    /// may have another unit to try (an array with more runnable children).
    fn try_entry(
        &mut self,
        now: Time,
        fx: &mut impl Effects,
        qname: &str,
        id: JobId,
        pass: &mut Pass,
    ) -> (Outcome, bool) {
        if self.free_cpus_total == 0 {
            return (Outcome::Full, false);
        }
        if self.reservation.is_some() {
            pass.scanned_blocked += 1;
            if pass.scanned_blocked > self.cfg.max_backfill_scan {
                return (Outcome::Full, false);
            }
        }
        let Some(job) = self.jobs.get(&id) else { return (Outcome::Blocked, false) };
        let (unit, more) = match (&job.array, &job.spec.array) {
            (Some(_), Some(aspec)) => {
                let live = &self.arrays[&id];
                if aspec.max_running.is_some_and(|m| live.active >= m) {
                    return (Outcome::Blocked, false);
                }
                let Some(&pos) = live.runnable.first() else { return (Outcome::Blocked, false) };
                (id.child(aspec.index_at(pos)), live.runnable.len() > 1)
            }
            _ => {
                if job.state != launcher_proto::JobState::Runnable {
                    return (Outcome::Blocked, false);
                }
                (id, false)
            }
        };
        let spec = &job.spec;
        let shape = Shape::of(spec);
        let limit_us = spec.time_limit_s.map(|s| s.saturating_mul(1_000_000));
        let may_use_reserved = match &self.reservation {
            None => true,
            Some(r) => r.time != NEVER && limit_us.is_some_and(|l| now.0.saturating_add(l) <= r.time),
        };
        let dominated = pass.failed.iter().find(|(s, allowed, _)| s.covers(&shape) && (*allowed || !may_use_reserved));
        if let Some((s, _, fits_unreserved)) = dominated {
            if *fits_unreserved && *s == shape {
                self.backfill_blocked.insert(id);
            }
            return (Outcome::Blocked, false);
        }
        if !self.fair_share_room(qname, &shape, &mut pass.capacity) {
            return (Outcome::Blocked, false);
        }
        let exclude = if may_use_reserved { None } else { self.reservation.as_ref().map(|r| &r.nodes) };
        if let Some(alloc) = self.try_alloc(spec, qname, exclude) {
            self.start(now, fx, unit, alloc);
            pass.started += 1;
            return (Outcome::Started, more);
        }
        if let Some(why) = self.never_fits(&self.jobs[&id]) {
            pass.failed.push((shape, may_use_reserved, false));
            self.unqueue(id);
            self.ineligible.insert(id, why);
            return (Outcome::Blocked, false);
        }
        let mut fits_unreserved = false;
        if self.reservation.is_none() {
            self.reservation = self.compute_reservation(now, id, unit, qname);
        } else if exclude.is_some() && self.try_alloc(&self.jobs[&id].spec, qname, None).is_some() {
            fits_unreserved = true;
            self.backfill_blocked.insert(id);
        }
        pass.failed.push((shape, may_use_reserved, fits_unreserved));
        (Outcome::Blocked, false)
    }

    /// Fair share's `computeReservation`: active shares together may use at
    /// most (1 - (r/100)^active) of the queue's CPUs. `capacity` caches those
    /// CPUs (a walk of the queue's nodes) for the rest of a pass.
    fn fair_share_room(&self, qname: &str, shape: &Shape, capacity: &mut Option<u64>) -> bool {
        let q = &self.queues[qname];
        let Some(p) = q.def.policy.as_ref().and_then(|p| self.policies.get(p)) else { return true };
        if p.compute_reservation == 0 {
            return true;
        }
        let active = q
            .usage
            .iter()
            .filter(|(s, u)| u.running_cpus > 0 || q.waiting.contains_key(*s))
            .count()
            .max(q.waiting.len()) as i32;
        let cap = *capacity.get_or_insert_with(|| self.queue_capacity(qname)) as f64;
        let limit = cap * (1.0 - (f64::from(p.compute_reservation) / 100.0).powi(active.max(1)));
        let need = u64::from(shape.big) * u64::from(shape.nodes);
        (q.running_cpus + need) as f64 <= limit.max(0.0) || q.running_cpus == 0 && need as f64 > limit
    }

    /// CPUs of the connected nodes of a queue's compute environments.
    pub(crate) fn queue_capacity(&self, qname: &str) -> u64 {
        let q = &self.queues[qname];
        let mut seen = BTreeSet::new();
        for ce in &q.def.ces {
            if let Some(m) = self.ce_members.get(ce) {
                seen.extend(m.iter().copied());
            }
        }
        seen.iter()
            .filter_map(|n| self.nodes.get(n))
            .filter(|n| n.connected())
            .map(|n| u64::from(n.rec.inventory.cpus))
            .sum()
    }

    /// Choose nodes for a job now in the first of its queue's enabled compute
    /// environments that can hold it, or None.
    pub(crate) fn try_alloc(
        &self,
        spec: &JobSpec,
        qname: &str,
        exclude: Option<&BTreeSet<NodeId>>,
    ) -> Option<Vec<Alloc>> {
        let q = self.queues.get(qname)?;
        let shape = Shape::of(spec);
        for ce in &q.def.ces {
            let Some(def) = self.ces.get(ce) else { continue };
            if !def.enabled {
                continue;
            }
            if let Some(nodes) = self.alloc_in_ce(ce, def.strategy, spec, &shape, exclude) {
                return Some(self.build_alloc(spec, &shape, nodes));
            }
        }
        None
    }

    fn alloc_in_ce(
        &self,
        ce: &str,
        strategy: Strategy,
        spec: &JobSpec,
        shape: &Shape,
        exclude: Option<&BTreeSet<NodeId>>,
    ) -> Option<Tiers> {
        let index = self.ce_free.get(ce)?;
        let usable = |id: &NodeId| {
            let n = &self.nodes[id];
            n.free_mem() >= shape.mem && exclude.is_none_or(|x| !x.contains(id)) && self.gres_fit_now(n, spec)
        };
        let range = index.range((shape.small, NodeId(0))..);
        match strategy {
            Strategy::BestFit => pick_tiers(range.filter(|(_, id)| usable(id)).copied(), shape),
            Strategy::Spread => pick_tiers(range.rev().filter(|(_, id)| usable(id)).copied(), shape),
            Strategy::Topology => {
                let mut groups: BTreeMap<String, Vec<(u32, NodeId)>> = BTreeMap::new();
                for &(free, id) in range.filter(|(_, id)| usable(id)) {
                    groups.entry(switch_of(&self.nodes[&id])).or_default().push((free, id));
                }
                // The tightest single switch that holds the whole job, else best fit anywhere.
                let mut best: Option<(u64, Tiers)> = None;
                for members in groups.values() {
                    if let Some(t) = pick_tiers(members.iter().copied(), shape) {
                        let total: u64 = members.iter().map(|(f, _)| u64::from(*f)).sum();
                        if best.as_ref().is_none_or(|(b, _)| total < *b) {
                            best = Some((total, t));
                        }
                    }
                }
                match best {
                    Some((_, t)) => Some(t),
                    None => {
                        pick_tiers(index.range((shape.small, NodeId(0))..).filter(|(_, id)| usable(id)).copied(), shape)
                    }
                }
            }
        }
    }

    fn build_alloc(
        &self,
        spec: &JobSpec,
        shape: &Shape,
        (mut big, mut small): (Vec<NodeId>, Vec<NodeId>),
    ) -> Vec<Alloc> {
        let name = |id: &NodeId| self.nodes[id].rec.name.as_str();
        big.sort_by(|a, b| natural_cmp(name(a), name(b)));
        small.sort_by(|a, b| natural_cmp(name(a), name(b)));
        let per = tasks_per_node(spec.tasks, spec.nodes);
        let (tb, ts) = (per[0], *per.last().expect("nodes >= 1"));
        let mut out = Vec::with_capacity(spec.nodes as usize);
        let mut rank = 0;
        for (id, t, cpus) in big.iter().map(|n| (n, tb, shape.big)).chain(small.iter().map(|n| (n, ts, shape.small))) {
            let n = &self.nodes[id];
            out.push(Alloc {
                node: *id,
                name: n.rec.name.clone(),
                addr: n.rec.inventory.addr.clone(),
                first_rank: rank,
                tasks: t,
                cpus,
                mem_mib: spec.mem_mib,
                started: false,
            });
            rank += t;
        }
        out
    }

    /// Put a running attempt's allocations in the release index (after `start`).
    pub(crate) fn index_releases(&mut self, id: JobId) {
        let job = &self.jobs[&id];
        let end = job.deadline().unwrap_or(NEVER);
        for a in &job.alloc {
            self.releases.insert((end, a.node, id), (a.cpus, a.mem_mib));
        }
    }

    /// Take them out again (when the attempt ends, before its record changes).
    pub(crate) fn unindex_releases(&mut self, id: JobId) {
        let job = &self.jobs[&id];
        let end = job.deadline().unwrap_or(NEVER);
        for a in &job.alloc {
            self.releases.remove(&(end, a.node, id));
        }
    }

    /// Where and when the blocked `unit` of entry `id` will start, given the
    /// time limits of what runs now: the earliest time `nodes` nodes of one
    /// enabled compute environment each have the CPUs and memory free, and
    /// of the nodes free by then the ones that free up last (nodes free
    /// earlier stay available for backfill).
    fn compute_reservation(&self, now: Time, id: JobId, unit: JobId, qname: &str) -> Option<Reservation> {
        let spec = &self.jobs[&id].spec;
        let shape = Shape::of(spec);
        let q = self.queues.get(qname)?;
        let mut best: Option<(u64, Vec<NodeId>)> = None;
        for ce in &q.def.ces {
            if !self.ces.get(ce).is_some_and(|c| c.enabled) {
                continue;
            }
            let Some(members) = self.ce_members.get(ce) else { continue };
            if members.len() < shape.nodes as usize {
                continue;
            }
            let Some((t, nodes)) = self.reservation_in_ce(now, ce, members, spec, &shape) else { continue };
            if best.as_ref().is_none_or(|(b, _)| t < *b) {
                best = Some((t, nodes));
            }
        }
        let (time, nodes) = best?;
        Some(Reservation {
            entry: id,
            unit,
            time,
            nodes: nodes.into_iter().collect(),
            need_cpus: shape.big,
            computed_at: now.0,
        })
    }

    /// The reservation within one compute environment: (time, nodes), or
    /// None if it has too few nodes that could ever hold the job.
    ///
    /// A node's time is when it first has the job's CPUs and memory free,
    /// counting its running allocations as ending at their deadlines. Walking
    /// `releases` (every running allocation by deadline) from the earliest
    /// gives the nodes in order of that time, so the walk stops as soon as
    /// `nodes` of them have room and the ones that get room at that same
    /// instant are seen: after one job ends in a full cluster, that is a few
    /// allocations, not every member node.
    fn reservation_in_ce(
        &self,
        now: Time,
        ce: &str,
        members: &BTreeSet<NodeId>,
        spec: &JobSpec,
        shape: &Shape,
    ) -> Option<(u64, Vec<NodeId>)> {
        let k = shape.nodes as usize;
        let could_ever = |n: &Node| {
            let inv = &n.rec.inventory;
            n.connected() && inv.cpus >= shape.big && inv.mem_mib >= shape.mem && gres_fit_ever(n, spec)
        };
        let room_now = |n: &Node| n.free_cpus() >= shape.big && n.free_mem() >= shape.mem;
        // Nodes with room now: their time is `now`.
        let now_nodes: Vec<NodeId> = self
            .ce_free
            .get(ce)
            .into_iter()
            .flat_map(|idx| idx.range((shape.big, NodeId(0))..))
            .map(|&(_, nid)| nid)
            .filter(|nid| {
                let n = &self.nodes[nid];
                members.contains(nid) && room_now(n) && could_ever(n)
            })
            .collect();
        // (time, node) of the nodes that have room by `at`.
        let mut reached: Vec<(u64, NodeId)> = Vec::new();
        // Free CPUs and memory of a node as its allocations end; None once it
        // has room (or when it is free now, or could never hold the job).
        let mut room: HashMap<NodeId, Option<(u32, u64)>> = HashMap::new();
        // When the k-th node has room.
        let mut at: Option<u64> = None;
        // Allocations past their deadline (being killed) end "before now".
        let split = (now.0, NodeId(0), JobId(0));
        let events = self
            .releases
            .range(..split)
            .map(Some)
            .chain(std::iter::once(None))
            .chain(self.releases.range(split..).map(Some));
        for ev in events {
            let Some((&(t, nid, _), &(cpus, mem))) = ev else {
                if at.is_some() {
                    break;
                }
                reached.extend(now_nodes.iter().map(|&nid| (now.0, nid)));
                if reached.len() >= k {
                    at = Some(now.0);
                }
                continue;
            };
            if t == NEVER || at.is_some_and(|a| t > a) {
                break;
            }
            let slot = room.entry(nid).or_insert_with(|| {
                let n = &self.nodes[&nid];
                (members.contains(&nid) && could_ever(n) && !room_now(n)).then(|| (n.free_cpus(), n.free_mem()))
            });
            let Some((c, m)) = slot else { continue };
            *c += cpus;
            *m += mem;
            if *c >= shape.big && *m >= shape.mem {
                *slot = None;
                reached.push((t, nid));
                if reached.len() >= k && at.is_none() {
                    at = Some(t);
                }
            }
        }
        let time = match at {
            Some(t) => t,
            None => {
                // Fewer than k nodes ever get room from jobs with a time
                // limit: the others that could hold the job wait on jobs
                // without one ("never"), if there are enough of them.
                let mut never: Vec<NodeId> = members
                    .iter()
                    .filter(|nid| {
                        let n = &self.nodes[nid];
                        could_ever(n) && !room_now(n) && !room.get(nid).is_some_and(Option::is_none)
                    })
                    .copied()
                    .collect();
                if reached.len() + never.len() < k {
                    return None;
                }
                never.truncate(k);
                reached.extend(never.into_iter().map(|nid| (NEVER, nid)));
                NEVER
            }
        };
        // Of the nodes with room by then, the ones that get it last.
        reached.sort_unstable_by_key(|&(x, nid)| (Reverse(x), nid));
        reached.truncate(k);
        Some((time, reached.into_iter().map(|(_, nid)| nid).collect()))
    }

    /// Why no node of the job's queue could ever hold it (one compute
    /// environment must hold all its nodes), or None if some could.
    pub(crate) fn never_fits(&self, job: &Job) -> Option<String> {
        let spec = &job.spec;
        let shape = Shape::of(spec);
        // The verdict depends only on the queue, the shape and the node set:
        // cached until a node or a definition changes (see `Core::fits_changed`).
        let key = (spec.queue.clone(), shape.nodes, shape.big, shape.mem, spec.gpus_per_node, spec.constraint.clone());
        if let Some(v) = self.fits_cache.borrow().get(&key) {
            return v.clone();
        }
        let v = self.never_fits_uncached(spec, &shape);
        self.fits_cache.borrow_mut().insert(key, v.clone());
        v
    }

    fn never_fits_uncached(&self, spec: &JobSpec, shape: &Shape) -> Option<String> {
        let shape = *shape;
        let q = self.queues.get(&spec.queue)?;
        let mut best = (0usize, 0u32, 0usize, String::new(), 0u64);
        for ce in &q.def.ces {
            let Some(members) = self.ce_members.get(ce) else { continue };
            let live: Vec<&Node> =
                members.iter().map(|n| &self.nodes[n]).filter(|n| n.conn != crate::core::Conn::Down).collect();
            let fitting = live
                .iter()
                .filter(|n| n.rec.inventory.cpus >= shape.big && n.rec.inventory.mem_mib >= shape.mem)
                .filter(|n| gres_fit_ever(n, spec))
                .count();
            if fitting >= shape.nodes as usize {
                return None;
            }
            let biggest = live.iter().map(|n| n.rec.inventory.cpus).max().unwrap_or(0);
            let most_mem = live.iter().map(|n| n.rec.inventory.mem_mib).max().unwrap_or(0);
            if fitting >= best.0 {
                best = (fitting, biggest, live.len(), ce.clone(), most_mem);
            }
        }
        let (fitting, biggest, live, ce, most_mem) = best;
        Some(format!(
            "needs {} node(s) with at least {} CPUs{} in one compute environment of queue {}; the largest, {}, has {} node(s) up, {} of them that large (largest: {} CPUs{})",
            shape.nodes,
            shape.big,
            if shape.mem > 0 { format!(" and {} MiB", shape.mem) } else { String::new() },
            spec.queue,
            if ce.is_empty() { "(none)".to_string() } else { ce },
            live,
            fitting,
            biggest,
            if shape.mem > 0 { format!(", most memory: {most_mem} MiB") } else { String::new() }
        ))
    }

    /// Re-check set-aside entries after the node set changed.
    pub(crate) fn refresh_eligibility(&mut self) {
        let ids: Vec<JobId> = self.ineligible.keys().copied().collect();
        for id in ids {
            if self.never_fits(&self.jobs[&id]).is_none() {
                self.ineligible.remove(&id);
                self.enqueue(id);
            }
        }
    }

    /// The reservation is never delayed: on each reserved node, the CPUs held
    /// past the reservation time by running jobs leave room for the head.
    pub(crate) fn check_reservation(&self) {
        let Some(r) = &self.reservation else { return };
        if self.dirty || r.time == NEVER {
            return;
        }
        for nid in &r.nodes {
            let n = &self.nodes[nid];
            if !n.connected() {
                continue;
            }
            let held: u32 = n
                .jobs
                .iter()
                .filter_map(|j| self.jobs.get(j))
                .filter(|j| j.deadline().is_none_or(|d| d > r.time))
                .filter_map(|j| j.alloc.iter().find(|a| a.node == *nid).map(|a| a.cpus))
                .sum();
            assert!(
                n.rec.inventory.cpus.saturating_sub(held) >= r.need_cpus,
                "reservation for {} on {} at {} is delayed: {} CPUs held past it",
                r.unit,
                n.rec.name,
                r.time,
                held
            );
        }
    }

    // ---------------------------------------------------------------- reasons

    /// (code, sentence) for `launcher show`.
    /// A running job some of whose nodes stopped answering: which ones, and
    /// what happens if they stay away.
    fn unreachable_reason(&self, job: &Job) -> (Option<String>, Option<String>) {
        let lost: Vec<&str> = job
            .alloc
            .iter()
            .filter(|a| matches!(self.nodes.get(&a.node).map(|n| &n.conn), Some(crate::core::Conn::Unreachable { .. })))
            .map(|a| a.name.as_str())
            .collect();
        if lost.is_empty() {
            return (None, None);
        }
        let text = format!(
            "{} stopped answering; the job goes on, and fails (NodeFail) unless {} back within {} s of losing contact (`launcher serve --node-timeout`)",
            lost.join(","),
            if lost.len() == 1 { "it is" } else { "they are" },
            self.cfg.node_timeout_ms / 1000
        );
        (Some("NodeUnreachable".into()), Some(text))
    }

    pub(crate) fn reason(&self, job: &Job) -> (Option<String>, Option<String>) {
        use launcher_proto::JobState as S;
        match job.state {
            S::Submitted | S::Pending | S::Runnable => {
                if self.dep_wait.contains(&job.id) {
                    return (Some("Dependency".into()), Some(self.dep_text(job.id)));
                }
                if let Some(arr) = &job.array {
                    let aspec = job.spec.array.as_ref().expect("array");
                    if let Some(pos) = arr.states.iter().position(|s| *s == ChildState::Runnable) {
                        let c = job.id.child(aspec.index_at(pos as u32));
                        let (code, text) = self.waiting_reason(job.id);
                        return (code, text.map(|t| format!("next child {c}: {t}")));
                    }
                    if let Some(pos) = arr.states.iter().position(|s| *s == ChildState::Pending) {
                        let c = job.id.child(aspec.index_at(pos as u32));
                        return self.child_reason(c, ChildState::Pending);
                    }
                    return (None, Some("children running".into()));
                }
                self.waiting_reason(job.id)
            }
            S::Starting | S::Running => match &job.killing {
                Some(k) => (Some(k.code().into()), Some(format!("terminating: {}", k.text()))),
                None => self.unreachable_reason(job),
            },
            S::Failed => match &job.fail {
                Some(f) => (Some(f.code().into()), Some(f.text())),
                None => (None, None),
            },
            S::Cancelled => (Some("Cancelled".into()), Some("cancelled before it started".into())),
            S::Succeeded => (None, None),
        }
    }

    /// Why a waiting array child has not started.
    pub(crate) fn child_reason(&self, id: JobId, state: ChildState) -> (Option<String>, Option<String>) {
        let parent = id.parent();
        if self.dep_wait.contains(&parent) {
            return (Some("Dependency".into()), Some(format!("its array {}", self.dep_text(parent))));
        }
        if state == ChildState::Pending {
            let pos = self.child_pos(id).unwrap_or(0);
            let why = match self.child_dep_status(parent, pos) {
                crate::deps::DepStatus::Never(w) => w,
                _ => {
                    let p = &self.jobs[&parent];
                    let aspec = p.spec.array.as_ref().expect("array");
                    if aspec.sequential && pos > 0 {
                        format!("SEQUENTIAL: waiting for child {} to succeed", parent.child(aspec.index_at(pos - 1)))
                    } else {
                        let idx = aspec.index_at(pos);
                        let others: Vec<String> = p
                            .spec
                            .depends
                            .iter()
                            .filter(|d| d.kind == launcher_proto::DepKind::AfterCorr)
                            .map(|d| d.job.child(idx).to_string())
                            .collect();
                        format!("aftercorr: waiting for {} to succeed", others.join(" and "))
                    }
                }
            };
            return (Some("Dependency".into()), Some(why));
        }
        self.waiting_reason(parent)
    }

    /// Why a RUNNABLE entry (plain job or array) has not started.
    fn waiting_reason(&self, id: JobId) -> (Option<String>, Option<String>) {
        let job = &self.jobs[&id];
        if let Some(why) = self.ineligible.get(&id) {
            return (Some("NoEligibleNodes".into()), Some(format!("no node can ever run it: {why}")));
        }
        let Some(q) = self.queues.get(&job.spec.queue) else {
            return (Some("QueueDisabled".into()), Some(format!("queue {} no longer exists", job.spec.queue)));
        };
        if !q.def.enabled {
            return (
                Some("QueueDisabled".into()),
                Some(format!(
                    "queue {} is DISABLED; jobs wait until an admin runs `launcher queue-admin enable {}`",
                    q.def.name, q.def.name
                )),
            );
        }
        if q.def.ces.iter().all(|c| !self.ces.get(c).is_some_and(|c| c.enabled)) {
            return (
                Some("Resources".into()),
                Some(format!(
                    "every compute environment of queue {} is DISABLED; jobs wait until an admin enables one (`launcher ce enable CE`)",
                    q.def.name
                )),
            );
        }
        if let (Some(aspec), Some(live)) = (job.spec.array.as_ref(), self.arrays.get(&id)) {
            if aspec.max_running.is_some_and(|m| live.active >= m) {
                return (
                    Some("ArrayTaskLimit".into()),
                    Some(format!(
                        "the array already runs {} children, its %{} limit",
                        live.active,
                        aspec.max_running.unwrap_or(0)
                    )),
                );
            }
        }
        if let Some(r) = &self.reservation {
            if r.entry == id {
                let when = if r.time == NEVER {
                    "when jobs without a time limit on them end".to_string()
                } else {
                    format!("in about {} s", r.time.saturating_sub(r.computed_at).div_ceil(1_000_000))
                };
                let names: Vec<&str> = r.nodes.iter().map(|n| self.nodes[n].rec.name.as_str()).collect();
                return (
                    Some("Resources".into()),
                    Some(format!(
                        "first in line, waiting for {} node(s) with {} free CPUs at once; reserved {} {when}",
                        job.spec.nodes,
                        r.need_cpus,
                        names.join(",")
                    )),
                );
            }
            if self.backfill_blocked.contains(&id) {
                let limit = match job.spec.time_limit_s {
                    Some(s) => format!("its --time of {s} s"),
                    None => "it has no --time limit, so it".into(),
                };
                return (
                    Some("BackfillReserved".into()),
                    Some(format!(
                        "it would fit now, but {limit} would run past the reservation of job {} (nodes reserved {}); a shorter --time lets it backfill",
                        r.unit,
                        if r.time == NEVER { "until jobs without limits end".to_string() } else { format!("in about {} s", r.time.saturating_sub(r.computed_at).div_ceil(1_000_000)) }
                    )),
                );
            }
        }
        if q.def.policy.is_some() {
            let share = self.share_of(id);
            let now = Time(self.reservation.as_ref().map(|r| r.computed_at).unwrap_or(job.submit_time));
            let mine = self.share_metric(now, &q.def.name, &share);
            let lower = q
                .waiting
                .keys()
                .filter(|s| **s != share)
                .map(|s| (self.share_metric(now, &q.def.name, s), s))
                .filter(|(m, _)| *m < mine)
                .min_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((m, s)) = lower {
                return (
                    Some("FairShare".into()),
                    Some(format!(
                        "share {share:?} has weighted usage {mine:.1}, above share {s:?} ({m:.1}); shares with less usage go first"
                    )),
                );
            }
            if !self.fair_share_room(&q.def.name, &Shape::of(&job.spec), &mut None) {
                return (
                    Some("FairShare".into()),
                    Some(
                        "the policy's computeReservation keeps the remaining CPUs for shares that have no jobs yet"
                            .into(),
                    ),
                );
            }
        }
        match &self.reservation {
            Some(r) => {
                (Some("Priority".into()), Some(format!("waiting behind job {}, which is first in line", r.unit)))
            }
            None => {
                (Some("Resources".into()), Some("waiting for free CPUs in its queue's compute environments".into()))
            }
        }
    }
}

// ------------------------------------------- GPUs and node features
// Kept apart from the CPU/memory fit: a node fits if it has the job's GPUs
// free and every feature the job asks for (`--gpus-per-node`, `--constraint`).

/// Whether a node could ever hold the job's GPUs and has all its features.
pub(crate) fn gres_fit_ever(n: &Node, spec: &JobSpec) -> bool {
    n.rec.inventory.gpus >= spec.gpus_per_node && spec.constraint.iter().all(|f| n.rec.inventory.features.contains(f))
}

impl Core {
    /// GPUs held on a node by the jobs allocated there.
    fn gpus_in_use(&self, n: &Node) -> u32 {
        n.jobs.iter().filter_map(|j| self.jobs.get(j)).map(|j| j.spec.gpus_per_node).sum()
    }

    /// Whether a node has the job's GPUs free now and all its features.
    pub(crate) fn gres_fit_now(&self, n: &Node, spec: &JobSpec) -> bool {
        if spec.gpus_per_node == 0 && spec.constraint.is_empty() {
            return true;
        }
        gres_fit_ever(n, spec) && n.rec.inventory.gpus.saturating_sub(self.gpus_in_use(n)) >= spec.gpus_per_node
    }

    /// At submit: why no node this cluster has ever registered could run the
    /// job for lack of GPUs or features (None if enough could, or if no node
    /// has registered yet).
    pub(crate) fn gres_refusal(&self, spec: &JobSpec) -> Option<String> {
        if (spec.gpus_per_node == 0 && spec.constraint.is_empty()) || self.nodes.is_empty() {
            return None;
        }
        let fitting = self.nodes.values().filter(|n| gres_fit_ever(n, spec)).count();
        if fitting >= spec.nodes as usize {
            return None;
        }
        let most = self.nodes.values().map(|n| n.rec.inventory.gpus).max().unwrap_or(0);
        let features: BTreeSet<&str> =
            self.nodes.values().flat_map(|n| n.rec.inventory.features.iter().map(String::as_str)).collect();
        let mut want = Vec::new();
        if spec.gpus_per_node > 0 {
            want.push(format!("{} GPU(s)", spec.gpus_per_node));
        }
        if !spec.constraint.is_empty() {
            want.push(format!("feature(s) {}", spec.constraint.join(",")));
        }
        Some(format!(
            "no way to run: it needs {} node(s) with {}, but only {} of the cluster's {} node(s) have that (most GPUs on a node: {}; features: {})",
            spec.nodes,
            want.join(" and "),
            fitting,
            self.nodes.len(),
            most,
            if features.is_empty() { "none".to_string() } else { features.into_iter().collect::<Vec<_>>().join(",") }
        ))
    }
}

/// The `switch=NAME` feature of a node ("" when it has none).
fn switch_of(n: &Node) -> String {
    n.rec.inventory.features.iter().find_map(|f| f.strip_prefix("switch=")).unwrap_or("").to_string()
}

/// Fill the big tier (nodes that take one extra task) and the small tier from
/// candidates in preference order. None if they cannot be filled.
fn pick_tiers(cands: impl Iterator<Item = (u32, NodeId)>, shape: &Shape) -> Option<Tiers> {
    let extra = shape.extra as usize;
    let n_small = shape.nodes as usize - extra;
    let mut big = Vec::with_capacity(extra);
    let mut small = Vec::with_capacity(n_small);
    for (free, id) in cands {
        if big.len() < extra && free >= shape.big {
            big.push(id);
        } else if small.len() < n_small && free >= shape.small {
            small.push(id);
        }
        if big.len() == extra && small.len() == n_small {
            return Some((big, small));
        }
    }
    None
}

#[cfg(test)]
#[path = "sched_tests.rs"]
mod tests;
