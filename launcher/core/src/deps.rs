//! Dependencies: `afterok`, `afterany`, `afternotok` between jobs (and array
//! children), array SEQUENTIAL and N_TO_N (`aftercorr`). A job waits PENDING
//! until every dependency is satisfied; one that can never be satisfied
//! fails it. Endings propagate through a work list, never by recursion, so a
//! chain of 100,000 dependent jobs cannot overflow the stack.

use crate::core::{Core, Effects, Record};
use crate::job::{ChildEnd, ChildState, FailReason};
use crate::Time;
use launcher_proto::{DepKind, Dependency, JobId, JobSpec, JobState};

/// Largest number of dependencies per job (AWS Batch's limit).
pub const MAX_DEPS: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DepStatus {
    Satisfied,
    Waiting,
    Never(String),
}

fn combine(all: impl Iterator<Item = DepStatus>) -> DepStatus {
    let mut waiting = false;
    for s in all {
        match s {
            DepStatus::Never(w) => return DepStatus::Never(w),
            DepStatus::Waiting => waiting = true,
            DepStatus::Satisfied => {}
        }
    }
    if waiting {
        DepStatus::Waiting
    } else {
        DepStatus::Satisfied
    }
}

impl Core {
    /// Reject dependencies on jobs that do not exist (which also rules out
    /// cycles: a new job can only name jobs submitted before it).
    pub(crate) fn check_deps(&self, spec: &JobSpec) -> Result<(), String> {
        if spec.depends.len() > MAX_DEPS {
            return Err(format!("{} dependencies given; a job may have at most {MAX_DEPS}", spec.depends.len()));
        }
        for d in &spec.depends {
            let exists = match d.job.index() {
                Some(_) => self.child_state(d.job).is_some(),
                None => self.jobs.contains_key(&d.job),
            };
            if !exists {
                return Err(format!(
                    "--depend {d}: there is no job {}; dependencies must name jobs that were already submitted",
                    d.job
                ));
            }
            if d.kind == DepKind::AfterCorr {
                if spec.array.is_none() {
                    return Err(format!("--depend {d}: aftercorr (N_TO_N) needs --array on this job"));
                }
                if d.job.index().is_some() || self.jobs.get(&d.job).is_none_or(|j| j.array.is_none()) {
                    return Err(format!("--depend {d}: aftercorr must name an array job"));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn add_waiter(&mut self, id: JobId, d: &Dependency) {
        let map = if d.kind == DepKind::AfterCorr { &mut self.corr_waiters } else { &mut self.waiters };
        map.entry(d.job).or_default().insert(id);
    }

    /// State of a dependency target (job, array parent or child).
    fn target_state(&self, t: JobId) -> Option<JobState> {
        match t.index() {
            Some(_) => self.child_state(t).map(ChildState::job_state),
            None => self.jobs.get(&t).map(|j| j.state),
        }
    }

    pub(crate) fn dep_status(&self, d: &Dependency) -> DepStatus {
        let Some(state) = self.target_state(d.job) else {
            return DepStatus::Never(format!("job {} does not exist", d.job));
        };
        let ok = state == JobState::Succeeded;
        let notok = matches!(state, JobState::Failed | JobState::Cancelled);
        match d.kind {
            DepKind::AfterCorr => DepStatus::Satisfied,
            DepKind::AfterAny if ok || notok => DepStatus::Satisfied,
            DepKind::AfterOk if ok => DepStatus::Satisfied,
            DepKind::AfterOk if notok => DepStatus::Never(format!("job {} ended {state}", d.job)),
            DepKind::AfterNotOk if notok => DepStatus::Satisfied,
            DepKind::AfterNotOk if ok => DepStatus::Never(format!("job {} SUCCEEDED", d.job)),
            _ => DepStatus::Waiting,
        }
    }

    fn job_dep_status(&self, id: JobId) -> DepStatus {
        combine(self.jobs[&id].spec.depends.iter().map(|d| self.dep_status(d)))
    }

    pub(crate) fn deps_satisfied_now(&self, id: JobId) -> bool {
        self.job_dep_status(id) == DepStatus::Satisfied
    }

    /// The first unsatisfied dependency of a job, for `show`.
    pub(crate) fn dep_text(&self, id: JobId) -> String {
        let job = &self.jobs[&id];
        let waiting: Vec<String> = job
            .spec
            .depends
            .iter()
            .filter(|d| self.dep_status(d) != DepStatus::Satisfied)
            .map(|d| match self.target_state(d.job) {
                Some(s) => format!("{d} (job {} is {s})", d.job),
                None => d.to_string(),
            })
            .collect();
        format!("waiting for {}", waiting.join(" and "))
    }

    /// Child `pos` of array `a`: SEQUENTIAL and N_TO_N.
    pub(crate) fn child_dep_status(&self, a: JobId, pos: u32) -> DepStatus {
        let job = &self.jobs[&a];
        let aspec = job.spec.array.as_ref().expect("array");
        let arr = job.array.as_ref().expect("array");
        let index = aspec.index_at(pos);
        let mut out = Vec::new();
        if aspec.sequential && pos > 0 {
            let prev = a.child(aspec.index_at(pos - 1));
            out.push(match arr.states[pos as usize - 1] {
                ChildState::Succeeded => DepStatus::Satisfied,
                ChildState::Failed | ChildState::Cancelled => {
                    DepStatus::Never(format!("SEQUENTIAL: the previous child {prev} did not succeed"))
                }
                _ => DepStatus::Waiting,
            });
        }
        for d in job.spec.depends.iter().filter(|d| d.kind == DepKind::AfterCorr) {
            let other = d.job.child(index);
            out.push(match self.child_state(other) {
                None | Some(ChildState::Succeeded) => DepStatus::Satisfied,
                Some(ChildState::Failed | ChildState::Cancelled) => {
                    DepStatus::Never(format!("aftercorr: child {other} did not succeed"))
                }
                Some(_) => DepStatus::Waiting,
            });
        }
        combine(out.into_iter())
    }

    /// Decide a job in `dep_wait`: still PENDING, RUNNABLE, or FAILED.
    pub(crate) fn reevaluate(&mut self, now: Time, fx: &mut impl Effects, id: JobId) {
        if !self.dep_wait.contains(&id) {
            return;
        }
        match self.job_dep_status(id) {
            DepStatus::Waiting => {}
            DepStatus::Satisfied => {
                self.dep_wait.remove(&id);
                self.make_runnable(now, fx, id);
            }
            DepStatus::Never(why) => {
                self.dep_wait.remove(&id);
                let dep = self.jobs[&id]
                    .spec
                    .depends
                    .iter()
                    .find(|d| matches!(self.dep_status(d), DepStatus::Never(_)))
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                self.fail_unrunnable(now, fx, id, FailReason::DependencyNeverSatisfied { dep, why });
            }
        }
    }

    /// Dependencies met: a plain job becomes RUNNABLE; an array's children
    /// are decided one by one.
    fn make_runnable(&mut self, now: Time, fx: &mut impl Effects, id: JobId) {
        if self.jobs[&id].array.is_none() {
            let job = self.jobs.get_mut(&id).expect("job");
            job.state = JobState::Runnable;
            fx.persist(Record::job(job));
            fx.job_changed(id);
            self.enqueue(id);
            return;
        }
        let n = self.jobs[&id].array.as_ref().expect("array").states.len() as u32;
        for pos in 0..n {
            self.decide_child(now, fx, id, pos);
        }
        self.array_progress(now, fx, id);
    }

    /// A PENDING child whose array is past its job-level dependencies.
    fn decide_child(&mut self, now: Time, fx: &mut impl Effects, a: JobId, pos: u32) {
        let arr = self.jobs[&a].array.as_ref().expect("array");
        if arr.states[pos as usize] != ChildState::Pending {
            return;
        }
        match self.child_dep_status(a, pos) {
            DepStatus::Waiting => {}
            DepStatus::Satisfied => {
                self.set_child_state(fx, a, pos, ChildState::Runnable);
                let live = self.arrays.get_mut(&a).expect("array live");
                let was_empty = live.runnable.is_empty();
                live.runnable.insert(pos);
                if was_empty || !self.is_queued(a) {
                    self.enqueue(a);
                }
                let _ = now;
            }
            DepStatus::Never(why) => {
                let index = self.jobs[&a].spec.array.as_ref().expect("array").index_at(pos);
                let fail = FailReason::DependencyNeverSatisfied { dep: "array".into(), why };
                let arr = self.jobs.get_mut(&a).and_then(|j| j.array.as_mut()).expect("array");
                arr.ends.insert(pos, ChildEnd { exit_code: 1, fail });
                self.set_child_state(fx, a, pos, ChildState::Failed);
                self.ended.push_back(a.child(index));
            }
        }
    }

    /// Whether an entry sits in its queue or aside.
    pub(crate) fn is_queued(&self, id: JobId) -> bool {
        if self.ineligible.contains_key(&id) {
            return true;
        }
        let Some(job) = self.jobs.get(&id) else { return false };
        let Some(q) = self.queues.get(&job.spec.queue) else { return false };
        let key = if q.def.policy.is_some() { self.share_of(id) } else { String::new() };
        q.waiting.get(&key).is_some_and(|s| s.contains(&(std::cmp::Reverse(job.spec.scheduling_priority), id)))
    }

    /// A job or array that can never run ends FAILED without running.
    fn fail_unrunnable(&mut self, now: Time, fx: &mut impl Effects, id: JobId, fail: FailReason) {
        self.unqueue(id);
        let job = self.jobs.get_mut(&id).expect("job");
        if let (Some(arr), Some(aspec)) = (job.array.as_ref(), job.spec.array.clone()) {
            let waiting: Vec<u32> = (0..arr.states.len() as u32)
                .filter(|&p| matches!(arr.states[p as usize], ChildState::Pending | ChildState::Runnable))
                .collect();
            job.fail = Some(fail.clone());
            for pos in waiting {
                let arr = self.jobs.get_mut(&id).and_then(|j| j.array.as_mut()).expect("array");
                arr.ends.insert(pos, ChildEnd { exit_code: 1, fail: fail.clone() });
                self.set_child_state(fx, id, pos, ChildState::Failed);
                self.ended.push_back(id.child(aspec.index_at(pos)));
            }
            self.arrays.get_mut(&id).expect("array live").runnable.clear();
            self.array_progress(now, fx, id);
            return;
        }
        job.state = JobState::Failed;
        job.exit_code = Some(1);
        job.end_time = Some(now.0);
        fx.persist(Record::Event { job: id, time: now, text: format!("failed: {}", fail.text()) });
        job.fail = Some(fail);
        fx.persist(Record::job(job));
        fx.job_changed(id);
        self.ended.push_back(id);
    }

    /// A plain job, array parent or array child ended: note it for [`Core::drain`].
    pub(crate) fn child_ended(&mut self, _now: Time, _fx: &mut impl Effects, id: JobId) {
        self.ended.push_back(id);
    }

    /// Same as [`Core::child_ended`], for jobs and parents.
    pub(crate) fn wake_dependents(&mut self, _now: Time, _fx: &mut impl Effects, id: JobId) {
        self.ended.push_back(id);
    }

    /// Propagate every ending noted so far to the jobs that depend on it.
    pub(crate) fn drain(&mut self, now: Time, fx: &mut impl Effects) {
        while let Some(id) = self.ended.pop_front() {
            if let Some(ws) = self.waiters.get(&id) {
                let ws: Vec<JobId> = ws.iter().copied().collect();
                for w in ws {
                    self.reevaluate(now, fx, w);
                }
            }
            let Some(index) = id.index() else { continue };
            let parent = id.parent();
            if let Some(ws) = self.corr_waiters.get(&parent) {
                let ws: Vec<JobId> = ws.iter().copied().collect();
                for w in ws {
                    if self.dep_wait.contains(&w) {
                        continue;
                    }
                    let Some(pos) = self.jobs.get(&w).and_then(|j| j.spec.array.as_ref()?.pos_of(index)) else {
                        continue;
                    };
                    self.decide_child(now, fx, w, pos);
                    self.array_progress(now, fx, w);
                }
            }
            let Some(p) = self.jobs.get(&parent) else { continue };
            let Some(aspec) = p.spec.array.as_ref() else { continue };
            if aspec.sequential && !self.dep_wait.contains(&parent) {
                if let Some(pos) = aspec.pos_of(index) {
                    if pos + 1 < aspec.len() {
                        self.decide_child(now, fx, parent, pos + 1);
                        self.array_progress(now, fx, parent);
                    }
                }
            }
        }
    }
}
