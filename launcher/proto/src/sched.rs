//! Scheduling vocabulary shared by the CLI, the controller and the core:
//! dependencies, arrays, retry rules, compute environments, job queues,
//! fair-share policies and job definitions (AWS Batch's nouns).

use crate::JobId;
use serde::{Deserialize, Serialize};

/// What a dependency waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DepKind {
    /// The job succeeded.
    AfterOk,
    /// The job ended, however.
    AfterAny,
    /// The job failed or was cancelled.
    AfterNotOk,
    /// Array N_TO_N: child `i` waits for child `i` of the other array to succeed.
    AfterCorr,
}

impl DepKind {
    /// Slurm's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DepKind::AfterOk => "afterok",
            DepKind::AfterAny => "afterany",
            DepKind::AfterNotOk => "afternotok",
            DepKind::AfterCorr => "aftercorr",
        }
    }
}

/// One dependency of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Dependency {
    /// What to wait for.
    pub kind: DepKind,
    /// On which job (or array child).
    pub job: JobId,
}

impl std::fmt::Display for Dependency {
    /// As `--depend` takes it back: an array child is `ID_INDEX` there.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.job.index() {
            Some(i) => write!(f, "{}:{}_{}", self.kind.as_str(), self.job.parent(), i),
            None => write!(f, "{}:{}", self.kind.as_str(), self.job),
        }
    }
}

/// `--array START-END[:STEP][%MAX]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArraySpec {
    /// First index.
    pub start: u32,
    /// Last index (inclusive).
    pub end: u32,
    /// Stride (>= 1).
    pub step: u32,
    /// At most this many children running at once (`%K`).
    pub max_running: Option<u32>,
    /// AWS Batch SEQUENTIAL: child i waits for child i-1 to succeed.
    pub sequential: bool,
}

impl ArraySpec {
    /// Number of children.
    pub fn len(&self) -> u32 {
        if self.end < self.start || self.step == 0 {
            0
        } else {
            (self.end - self.start) / self.step + 1
        }
    }

    /// Whether there are no children.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The user-visible index of the `pos`-th child.
    pub fn index_at(&self, pos: u32) -> u32 {
        self.start + pos * self.step
    }

    /// The position of user-visible `index`, if it is one of ours.
    pub fn pos_of(&self, index: u32) -> Option<u32> {
        if index < self.start || index > self.end || (index - self.start) % self.step != 0 {
            None
        } else {
            Some((index - self.start) / self.step)
        }
    }
}

impl std::fmt::Display for ArraySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)?;
        if self.step != 1 {
            write!(f, ":{}", self.step)?;
        }
        if let Some(m) = self.max_running {
            write!(f, "%{m}")?;
        }
        Ok(())
    }
}

/// What to do when an `evaluateOnExit` rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitAction {
    /// Try again (if attempts are left).
    Retry,
    /// Stop: the job fails now.
    Exit,
}

/// One `evaluateOnExit` rule. Every condition given must match (AWS globs: a
/// trailing `*` matches any suffix).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRule {
    /// The action.
    pub action: ExitAction,
    /// Glob over the exit code, e.g. `137` or `1*`.
    pub on_exit_code: Option<String>,
    /// Glob over the machine-readable reason (`NonZeroExit`, `NodeFail`, `LaunchFailed`, `MpiAbort`).
    pub on_reason: Option<String>,
    /// Glob over the one-sentence reason text.
    pub on_status_reason: Option<String>,
}

/// `--attempts` and its rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrySpec {
    /// Attempts in all, 1..=10.
    pub attempts: u32,
    /// Up to 5 rules, first match wins; no match means retry.
    pub evaluate_on_exit: Vec<ExitRule>,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec { attempts: 1, evaluate_on_exit: Vec::new() }
    }
}

/// How a compute environment picks nodes for a job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Pack: the fullest nodes that fit first.
    #[default]
    BestFit,
    /// Spread: the emptiest nodes first.
    Spread,
    /// Prefer nodes under one switch (feature `switch=NAME`), then best fit.
    Topology,
}

impl Strategy {
    /// CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::BestFit => "best-fit",
            Strategy::Spread => "spread",
            Strategy::Topology => "topology",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "best-fit" | "bestfit" | "pack" => Ok(Strategy::BestFit),
            "spread" => Ok(Strategy::Spread),
            "topology" => Ok(Strategy::Topology),
            _ => Err(format!("unknown allocation strategy {s:?}: use best-fit, spread or topology")),
        }
    }
}

/// Which nodes a compute environment holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeSelector {
    /// Every node.
    All,
    /// These node names (a hostlist expression such as `node[1-4],gpu7`, expanded).
    Nodes(Vec<String>),
    /// Nodes whose agent carries this feature (`nodeagent --feature F`).
    Feature(String),
}

/// A compute environment: a named pool of nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CeDef {
    /// Name.
    pub name: String,
    /// ENABLED (true) or DISABLED: a disabled CE takes no new jobs.
    pub enabled: bool,
    /// Its nodes.
    pub selector: NodeSelector,
    /// Node choice.
    pub strategy: Strategy,
}

/// A job queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Name.
    pub name: String,
    /// Higher first.
    pub priority: i32,
    /// ENABLED (true) or DISABLED: jobs stay RUNNABLE with reason `QueueDisabled`.
    pub enabled: bool,
    /// Up to 3 compute environments, tried in order.
    pub ces: Vec<String>,
    /// Fair-share policy name; None = FIFO.
    pub policy: Option<String>,
}

/// A share's weight in a fair-share policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareWeight {
    /// Share identifier, or a prefix ending in `*`.
    pub share: String,
    /// `weightFactor` × 10,000 (AWS allows 0.0001 .. 999.9999; lower gets more).
    pub weight_x10k: u32,
}

/// A fair-share scheduling policy (AWS Batch `fairsharePolicy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDef {
    /// Name.
    pub name: String,
    /// Usage half-life window in seconds (0 = only current usage).
    pub share_decay_s: u64,
    /// Percent of capacity kept for shares with no jobs yet (0..99).
    pub compute_reservation: u8,
    /// Per-share weights; shares not listed weigh 1.0.
    pub shares: Vec<ShareWeight>,
}

/// A registered job definition revision: a template for submissions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDef {
    /// Name.
    pub name: String,
    /// Revision, from 1.
    pub revision: u32,
    /// Still usable for new submissions.
    pub active: bool,
    /// The template: every field a submission does not override.
    pub spec: crate::JobSpec,
}

/// An array job's progress, counted by child state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayInfo {
    /// The array.
    pub spec: Option<ArraySpec>,
    /// Children in total.
    pub size: u32,
    /// Waiting on a dependency.
    pub pending: u32,
    /// Waiting for resources.
    pub runnable: u32,
    /// Starting or running.
    pub running: u32,
    /// Done, succeeded.
    pub succeeded: u32,
    /// Done, failed (or cancelled).
    pub failed: u32,
}

/// A compute environment as shown to users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CeInfo {
    /// The definition.
    pub def: CeDef,
    /// Nodes it holds now, by name.
    pub nodes: Vec<String>,
}

/// A queue as shown to users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// The definition.
    pub def: QueueDef,
    /// Jobs waiting (SUBMITTED/PENDING/RUNNABLE; array children counted one by one).
    pub waiting: u64,
    /// Jobs starting or running.
    pub running: u64,
}

/// Admin requests on compute environments, queues, policies and job definitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    /// Create a compute environment.
    CeCreate(CeDef),
    /// Replace a compute environment's definition (same name).
    CeUpdate(CeDef),
    /// Delete an unused compute environment.
    CeDelete(String),
    /// Create a queue.
    QueueCreate(QueueDef),
    /// Replace a queue's definition (same name).
    QueueUpdate(QueueDef),
    /// Delete a queue with no waiting or running jobs.
    QueueDelete(String),
    /// Create a fair-share policy.
    PolicyCreate(PolicyDef),
    /// Replace a policy (same name).
    PolicyUpdate(PolicyDef),
    /// Delete a policy no queue uses.
    PolicyDelete(String),
}
