//! Message types, named by direction.
//!
//! Compatibility rule: [`Hello`] and [`HelloReply`] never change shape. Every
//! other type may change between protocol versions, and the handshake refuses
//! a version mismatch before any of them is decoded.

use crate::{JobId, NodeId};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

/// What a connecting peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A node agent with a certificate issued at join time.
    Agent,
    /// A user or admin CLI with a credential.
    Client,
    /// A node agent without a certificate yet, presenting a join token.
    Join,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Agent => "agent",
            Role::Client => "client",
            Role::Join => "join",
        })
    }
}

/// First frame on the first stream of every connection. Frozen across versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`crate::PROTOCOL_VERSION`].
    pub version: u32,
    /// What the sender claims to be; checked against its certificate.
    pub role: Role,
}

/// The controller's answer to [`Hello`]. Frozen across versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Accepted; role-specific frames follow.
    Welcome {
        /// The controller's protocol version (equal to the peer's).
        version: u32,
        /// Cluster name, for display.
        cluster: String,
        /// Who the controller believes the peer is (`user/alice`, `agent/node3`).
        identity: String,
    },
    /// Refused; the connection is closed after this frame.
    Rejected(HandshakeError),
}

/// Why a handshake was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum HandshakeError {
    /// Protocol versions differ; upgrade one side.
    #[error("protocol version mismatch: controller speaks version {ours}, this peer speaks version {theirs}; run the same launcher release on both sides")]
    VersionMismatch {
        /// The controller's version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The certificate does not allow the claimed role.
    #[error("certificate is for {cert_role} but the peer connected as {claimed}")]
    RoleMismatch {
        /// Role the certificate was issued for.
        cert_role: String,
        /// Role claimed in [`Hello`].
        claimed: Role,
    },
    /// No certificate and not joining, or a certificate this cluster never issued or revoked.
    #[error("{0}")]
    Unauthenticated(String),
}

impl HandshakeError {
    /// Whether reconnecting unchanged could succeed. None of these can.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Sent by an agent on a `Join` connection after the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinMsg {
    /// The one-time token from `launcher token create`.
    pub token: String,
    /// The node name the agent wants.
    pub name: String,
    /// Raw ECDSA P-256 public key of the agent (the private key never leaves the node).
    pub public_key: Vec<u8>,
}

/// The controller's answer to [`JoinMsg`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinReply {
    /// The agent's certificate (PEM) and the cluster CA (PEM).
    Accepted {
        /// Certificate for the agent's key, role agent.
        cert_pem: String,
        /// The cluster CA certificate.
        ca_pem: String,
    },
    /// Refused, with the reason.
    Rejected(String),
}

// ---------------------------------------------------------------------------
// Controller <-> agent
// ---------------------------------------------------------------------------

/// What a node offers, as reported by its agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Schedulable CPUs (slots).
    pub cpus: u32,
    /// Schedulable memory in MiB.
    pub mem_mib: u64,
    /// Sockets found.
    pub sockets: u32,
    /// Physical cores found.
    pub cores: u32,
    /// Hardware threads found.
    pub threads: u32,
    /// NUMA nodes found.
    pub numa_nodes: u32,
    /// Hostname as the node sees itself.
    pub hostname: String,
    /// The node's address on the cluster network, as the controller should show it.
    pub addr: String,
    /// Free-form features/labels given to the agent (`--feature`).
    pub features: Vec<String>,
    /// Agent software version.
    pub agent_version: String,
    /// GPUs found (NVML, or a fixture); schedulable with `--gpus-per-node`.
    pub gpus: u32,
    /// GPU model names, one per GPU in index order (for display).
    pub gpu_models: Vec<String>,
    /// High-speed NICs by name with their kind (`efa`, `ib`, `eth`), for display.
    pub nics: Vec<String>,
}

/// What an agent knows about one job attempt when it (re)connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReport {
    /// The job.
    pub job: JobId,
    /// The attempt it was launched as.
    pub attempt: u32,
    /// Exits of local tasks that have ended, by global rank.
    pub exits: Vec<(u32, ExitStatus)>,
    /// Global ranks still running.
    pub running: Vec<u32>,
}

/// First frame an agent sends on its control stream after `Welcome`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterMsg {
    /// Node name (must match the certificate).
    pub name: String,
    /// Hardware and labels.
    pub inventory: Inventory,
    /// Every job attempt the agent still holds (running or finished but not acknowledged).
    pub jobs: Vec<JobReport>,
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Never started: the error that prevented it.
    LaunchFailed(String),
    /// The node was lost while the task ran.
    NodeLost,
    /// Every rank of its MPI step had called `MPI_Finalize` and some had exited
    /// 0, but this one was still running after the job's `--finalize-grace`
    /// (seconds): killed and counted as a clean exit.
    KilledAfterFinalize {
        /// The grace it was given, in seconds.
        grace_s: u32,
    },
}

impl ExitStatus {
    /// Shell-style number: the code, 128+signal, 255 for launch failures and lost nodes.
    pub fn code(&self) -> i32 {
        match self {
            ExitStatus::Code(c) => *c,
            ExitStatus::Signal(s) => 128 + s,
            ExitStatus::LaunchFailed(_) | ExitStatus::NodeLost => 255,
            ExitStatus::KilledAfterFinalize { .. } => 0,
        }
    }

    /// True for a clean exit 0, and for a rank killed after `MPI_Finalize` by `--finalize-grace`.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0) | ExitStatus::KilledAfterFinalize { .. })
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
            ExitStatus::LaunchFailed(e) => write!(f, "launch failed: {e}"),
            ExitStatus::NodeLost => write!(f, "node lost"),
            ExitStatus::KilledAfterFinalize { grace_s } => {
                write!(f, "killed after --finalize-grace {grace_s}s; it had called MPI_Finalize (counted as exit 0)")
            }
        }
    }
}

/// One task (rank) to start on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMsg {
    /// Global rank.
    pub rank: u32,
    /// Rank among the tasks on this node.
    pub local_rank: u32,
}

/// Start the local part of a job attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchMsg {
    /// The job.
    pub job: JobId,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The job as submitted.
    pub spec: JobSpec,
    /// This node's index in the allocation (0 = main node).
    pub node_rank: u32,
    /// Names of all allocated nodes, in node-rank order.
    pub nodelist: Vec<String>,
    /// Addresses of all allocated nodes, in node-rank order.
    pub node_addrs: Vec<String>,
    /// Tasks per node, in node-rank order.
    pub tasks_per_node: Vec<u32>,
    /// Tasks to start here.
    pub tasks: Vec<TaskMsg>,
    /// For an array child: its array (for `SLURM_ARRAY_TASK_COUNT`, `_MIN`, `_MAX`, `_STEP`).
    pub array: Option<crate::ArraySpec>,
}

/// Why tasks are being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KillReason {
    /// A user or admin cancelled the job.
    Cancelled,
    /// The attempt ran past its time limit.
    Timeout,
    /// Another task of the job failed or could not start.
    PeerFailed,
    /// The controller does not know this job attempt (any more).
    Orphaned,
}

/// Stop the local tasks of a job attempt: SIGTERM to every task's process group,
/// SIGKILL after `grace_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillMsg {
    /// The job.
    pub job: JobId,
    /// The attempt.
    pub attempt: u32,
    /// Why.
    pub reason: KillReason,
    /// Milliseconds between SIGTERM and SIGKILL.
    pub grace_ms: u64,
}

/// Controller to agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToAgent {
    /// Registration accepted.
    Registered {
        /// The node's id.
        node: NodeId,
        /// How often to heartbeat.
        heartbeat_ms: u64,
    },
    /// Start tasks (boxed: by far the largest variant).
    Launch(Box<LaunchMsg>),
    /// Stop tasks.
    Kill(KillMsg),
    /// Fence `seq` is complete: the puts of all nodes, in node-rank order.
    FenceDone {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// Fence number.
        seq: u64,
        /// Merged puts.
        puts: Vec<(String, String)>,
    },
    /// The controller durably recorded every exit of this attempt on this node;
    /// the agent may forget it.
    Forget {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
    },
    /// Every rank of the attempt's PMI step called `MPI_Finalize` and some rank
    /// exited 0: local ranks that finalized and still run after `grace_ms` are
    /// killed and reported as [`ExitStatus::KilledAfterFinalize`].
    FinalizeGrace {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// Milliseconds to wait before killing.
        grace_ms: u64,
    },
    /// Run a command on this node for a task of a job on another (or this)
    /// node (`launcher exec`): stream its output back with
    /// [`FromAgent::ExecOutput`] and end with [`FromAgent::ExecExited`].
    Exec(Box<ExecMsg>),
    /// Output of a command this agent asked for with [`FromAgent::ExecStart`].
    ExecOutput {
        /// The agent-local id the request was started with.
        id: u64,
        /// Which stream.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The command of request `id` ended (or could not start: `LaunchFailed`
    /// carries why, e.g. a node outside the job's allocation).
    ExecExited {
        /// The agent-local id the request was started with.
        id: u64,
        /// How it ended.
        status: ExitStatus,
    },
    /// Stop the command started for (`origin`, `id`): the caller went away.
    ExecKill {
        /// The node that asked.
        origin: NodeId,
        /// Its id for the request.
        id: u64,
    },
}

/// A remote command for [`ToAgent::Exec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecMsg {
    /// The node that asked (answers go back there).
    pub origin: NodeId,
    /// Its id for the request.
    pub id: u64,
    /// The caller's job.
    pub job: JobId,
    /// Its attempt.
    pub attempt: u32,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Run `argv` joined by spaces through `/bin/sh -c` (the ssh-style form).
    pub shell: bool,
    /// Working directory (empty: the job's).
    pub cwd: String,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Agent to controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromAgent {
    /// First message on the control stream.
    Register(RegisterMsg),
    /// All local tasks of the attempt were spawned.
    Started {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
    },
    /// Output from a task. `offset` is where `data` starts in that rank's
    /// stream, so chunks resent after a reconnect are written once.
    Output {
        /// The job.
        job: JobId,
        /// The attempt the output belongs to (each attempt's streams start at offset 0).
        attempt: u32,
        /// Global rank.
        rank: u32,
        /// Which stream.
        stream: Stream,
        /// Byte offset of `data` in the stream.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A task ended (or could not start).
    TaskExited {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// Global rank.
        rank: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// Every local rank of the attempt entered a PMI barrier: this node's puts
    /// since the previous fence. The controller answers `FenceDone` to every node
    /// once all of the job's nodes sent fence `seq`. Resent after a reconnect
    /// until answered.
    Fence {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// Fence number, from 1, per attempt.
        seq: u64,
        /// How many consecutive node ranks, from the sender's, `puts` covers:
        /// 1 for the sender alone; a subtree root in a fence tree would send its
        /// whole subtree's deltas, concatenated in node-rank order. The
        /// controller answers only the nodes that contributed.
        span: u32,
        /// Key-value puts, in put order.
        puts: Vec<(String, String)>,
    },
    /// Where the local tasks of an attempt were placed (sent before `Started`).
    Bindings {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// One per local task.
        tasks: Vec<TaskBinding>,
    },
    /// A rank called `MPI_Abort` (PMI `cmd=abort`): the whole job must end.
    MpiAbort {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// The aborting rank.
        rank: u32,
        /// The exit code it asked for.
        code: i32,
        /// Its message, if any.
        message: Option<String>,
    },
    /// Local ranks of the attempt sent PMI `cmd=finalize` (`MPI_Finalize`).
    PmiFinalized {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// The ranks.
        ranks: Vec<u32>,
    },
    /// A rank that had started PMI (`MPI_Init`) exited before `MPI_Finalize`:
    /// the whole job must end, even when it exited 0. Sent before its `TaskExited`.
    PmiExitBeforeFinalize {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// The rank.
        rank: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// A task asks to run a command on node `node` of its own job (`launcher exec`).
    ExecStart {
        /// Agent-local id for the request.
        id: u64,
        /// The caller's job.
        job: JobId,
        /// Its attempt.
        attempt: u32,
        /// Target node name.
        node: String,
        /// Program and arguments.
        argv: Vec<String>,
        /// Run through `/bin/sh -c` (ssh-style).
        shell: bool,
        /// Working directory (empty: the job's).
        cwd: String,
        /// Extra environment.
        env: Vec<(String, String)>,
    },
    /// Output of a command started by [`ToAgent::Exec`].
    ExecOutput {
        /// The node that asked.
        origin: NodeId,
        /// Its id for the request.
        id: u64,
        /// Which stream.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A command started by [`ToAgent::Exec`] ended.
    ExecExited {
        /// The node that asked.
        origin: NodeId,
        /// Its id for the request.
        id: u64,
        /// How it ended.
        status: ExitStatus,
    },
    /// The caller of request `id` went away: stop its command on `node`.
    ExecKill {
        /// Agent-local id of the request.
        id: u64,
        /// The caller's job.
        job: JobId,
        /// Target node name.
        node: String,
    },
    /// Liveness.
    Heartbeat {
        /// Tasks running on the node.
        running_tasks: u32,
    },
}

// ---------------------------------------------------------------------------
// Client <-> controller
// ---------------------------------------------------------------------------

/// Everything a submission asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Display name.
    pub name: String,
    /// Queue name.
    pub queue: String,
    /// Nodes (`-N`).
    pub nodes: u32,
    /// Tasks (`-n`), spread block-wise over the nodes.
    pub tasks: u32,
    /// CPUs per task (`-c`).
    pub cpus_per_task: u32,
    /// Memory per node in MiB (0 = no request).
    pub mem_mib: u64,
    /// Time limit per attempt in seconds (None = unlimited).
    pub time_limit_s: Option<u64>,
    /// Extra environment for every task.
    pub env: Vec<(String, String)>,
    /// Program and arguments. When `script` is set these are the script's arguments.
    pub command: Vec<String>,
    /// A batch script's text, copied at submit time; run with its shebang.
    pub script: Option<String>,
    /// Working directory on the nodes.
    pub cwd: String,
    /// Output file pattern on the nodes (`%j` job, `%t` rank, `%N` node name, `%n` node index, `%x` name, `%%`).
    pub output: Option<String>,
    /// Error file pattern (defaults to `output` when only that is given).
    pub error: Option<String>,
    /// Submitting user, from the credential.
    pub user: String,
    /// Whether tasks get a PMI-1 server (direct MPI launch).
    pub mpi: MpiMode,
    /// Dependencies; all must be satisfied (AND).
    pub depends: Vec<crate::Dependency>,
    /// Array job: one child per index.
    pub array: Option<crate::ArraySpec>,
    /// Attempts and `evaluateOnExit` rules.
    pub retry: crate::RetrySpec,
    /// Fair-share identifier (`--share`).
    pub share: Option<String>,
    /// Order within a share: higher first (0..9999).
    pub scheduling_priority: u32,
    /// The job definition this was made from (`name:revision`), for display.
    pub jobdef: Option<String>,
    /// `--finalize-grace`: seconds a rank that called `MPI_Finalize` may keep
    /// running once every rank has finalized and some exited 0 (None: the
    /// default, [`crate::DEFAULT_FINALIZE_GRACE_S`]; 0: never kill).
    pub finalize_grace_s: Option<u32>,
    /// GPUs each allocated node must have free (`--gpus-per-node`; 0 = none).
    pub gpus_per_node: u32,
    /// Node features every allocated node must have (`--constraint`).
    pub constraint: Vec<String>,
    /// How tasks are placed on a node's CPUs, GPUs and NICs.
    pub bind: BindSpec,
}

/// CPU binding of each task (`--cpu-bind`, Slurm's vocabulary).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuBind {
    /// `cores` when every task can have its own cores, else no binding.
    #[default]
    Auto,
    /// No binding: tasks may run on any CPU of the node.
    None,
    /// Each task gets whole cores, enough to hold `cpus-per-task` hardware threads.
    Cores,
    /// Each task gets `cpus-per-task` hardware threads.
    Threads,
    /// Each task gets every CPU of one NUMA node.
    Numa,
    /// Local task `i` gets CPU `list[i % len]` (OS numbering).
    Map(Vec<u32>),
}

/// Order in which a node's tasks take CPUs (`--distribution`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Distribution {
    /// Consecutive tasks fill one socket (or NUMA node) before the next.
    #[default]
    Block,
    /// Consecutive tasks go round-robin over sockets (NUMA nodes for `--cpu-bind numa`).
    Cyclic,
}

/// GPU binding of each task (`--gpu-bind`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GpuBind {
    /// Each task gets `gpus-per-task` GPUs, close to each other, and its CPUs near them.
    #[default]
    Closest,
    /// Every task sees all the step's GPUs on the node.
    None,
    /// Local task `i` gets GPU `list[i % len]` (NVML index).
    Map(Vec<u32>),
}

/// Which NIC a task's fabric hints name (`--nic`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NicSelect {
    /// The NIC closest to the task's GPU (same PCIe switch), else to its CPUs.
    #[default]
    Closest,
    /// This interface (network or RDMA device name) for every task.
    Name(String),
    /// No fabric hints.
    None,
}

/// Placement options of a job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindSpec {
    /// CPU binding.
    pub cpu: CpuBind,
    /// Task order over sockets.
    pub distribution: Distribution,
    /// GPUs per task (0 = none).
    pub gpus_per_task: u32,
    /// GPU binding.
    pub gpu: GpuBind,
    /// NIC choice.
    pub nic: NicSelect,
}

fn parse_list(v: &str, what: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in v.split(',') {
        let part = part.trim();
        let bad = || format!("{what} {v:?}: expected a list of numbers like 0,2,4 or 0-3");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if b < a || b - a > 4096 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

impl std::str::FromStr for CpuBind {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        Ok(match v {
            "auto" => CpuBind::Auto,
            "none" | "no" => CpuBind::None,
            "cores" => CpuBind::Cores,
            "threads" => CpuBind::Threads,
            "numa" | "ldoms" => CpuBind::Numa,
            _ => match v.strip_prefix("map:").or_else(|| v.strip_prefix("map_cpu:")) {
                Some(l) => CpuBind::Map(parse_list(l, "--cpu-bind map:")?),
                None => {
                    return Err(format!(
                        "--cpu-bind {v:?}: expected auto, none, cores, threads, numa or map:LIST (e.g. map:0,2)"
                    ))
                }
            },
        })
    }
}

impl std::str::FromStr for Distribution {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        match v {
            "block" => Ok(Distribution::Block),
            "cyclic" => Ok(Distribution::Cyclic),
            _ => Err(format!("--distribution {v:?}: expected block or cyclic")),
        }
    }
}

impl std::str::FromStr for GpuBind {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        match v {
            "closest" => Ok(GpuBind::Closest),
            "none" => Ok(GpuBind::None),
            _ => match v.strip_prefix("map:").or_else(|| v.strip_prefix("map_gpu:")) {
                Some(l) => Ok(GpuBind::Map(parse_list(l, "--gpu-bind map:")?)),
                None => Err(format!("--gpu-bind {v:?}: expected closest, none or map:LIST (e.g. map:0,1)")),
            },
        }
    }
}

impl std::str::FromStr for NicSelect {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        match v {
            "closest" => Ok(NicSelect::Closest),
            "none" => Ok(NicSelect::None),
            "" => Err("--nic: expected closest, none or an interface name".into()),
            name if name.len() > 64 || name.contains(['/', ' ', '\0']) => {
                Err(format!("--nic {name:?}: not an interface name"))
            }
            name => Ok(NicSelect::Name(name.to_string())),
        }
    }
}

/// Where one task was placed, as the agent applied it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskBinding {
    /// Global rank.
    pub rank: u32,
    /// Node name.
    pub node: String,
    /// CPUs it may run on, as a Linux cpulist (`0-3,64-67`); empty = not bound.
    pub cpus: String,
    /// NUMA nodes of those CPUs.
    pub numa: Vec<u32>,
    /// GPU indices it sees (`CUDA_VISIBLE_DEVICES`).
    pub gpus: Vec<u32>,
    /// NIC named in its fabric hints.
    pub nic: Option<String>,
}

/// PMI service for a job's tasks (`--mpi`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MpiMode {
    /// Serve PMI-1 to every job with more than one task.
    #[default]
    Auto,
    /// Always serve PMI-1.
    Pmi1,
    /// Never.
    None,
}

/// Job states (AWS Batch's, plus CANCELLED for jobs cancelled before they start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Accepted, not yet evaluated.
    Submitted,
    /// Waiting for dependencies.
    Pending,
    /// Waiting for resources.
    Runnable,
    /// Allocated; tasks being started.
    Starting,
    /// All nodes started their tasks.
    Running,
    /// Every task exited 0.
    Succeeded,
    /// Some task failed, timed out, was cancelled while running, or a node was lost.
    Failed,
    /// Cancelled before it started.
    Cancelled,
}

impl JobState {
    /// True for SUCCEEDED, FAILED and CANCELLED.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    /// Upper-case name as shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Submitted => "SUBMITTED",
            JobState::Pending => "PENDING",
            JobState::Runnable => "RUNNABLE",
            JobState::Starting => "STARTING",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-task record in [`JobInfo`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Global rank.
    pub rank: u32,
    /// Node it ran on.
    pub node: String,
    /// How it ended, if it has.
    pub exit: Option<ExitStatus>,
}

/// A job as reported to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Id.
    pub id: JobId,
    /// The submission.
    pub spec: JobSpec,
    /// State.
    pub state: JobState,
    /// Machine-readable reason for a waiting or failed job (`Resources`, `Priority`, `NonZeroExit`, ...).
    pub reason: Option<String>,
    /// One-sentence explanation.
    pub reason_text: Option<String>,
    /// Attempt number (0 before the first start).
    pub attempt: u32,
    /// Allocated nodes, in node-rank order.
    pub nodes: Vec<String>,
    /// Per-task state (empty before the job starts).
    pub tasks: Vec<TaskInfo>,
    /// Job exit code (highest task code) once terminal.
    pub exit_code: Option<i32>,
    /// Microseconds since the Unix epoch.
    pub submit_time: u64,
    /// When the current attempt started.
    pub start_time: Option<u64>,
    /// When the job ended.
    pub end_time: Option<u64>,
    /// For an array parent: counts of its children by state.
    pub array: Option<crate::ArrayInfo>,
    /// Where the current attempt's tasks were placed, by rank (as reported by the agents).
    pub bindings: Vec<TaskBinding>,
}

/// Node states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Connected, nothing allocated.
    Idle,
    /// Connected, partly allocated.
    Mixed,
    /// Connected, fully allocated.
    Allocated,
    /// Connection lost recently; its tasks are presumed alive until the node timeout.
    Unreachable,
    /// Lost for longer than the node timeout; its jobs were failed.
    Down,
}

impl NodeState {
    /// Lower-case name as shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Idle => "idle",
            NodeState::Mixed => "mixed",
            NodeState::Allocated => "allocated",
            NodeState::Unreachable => "unreachable",
            NodeState::Down => "down",
        }
    }
}

/// A node as reported to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Id.
    pub id: NodeId,
    /// Name.
    pub name: String,
    /// State.
    pub state: NodeState,
    /// Inventory as last reported.
    pub inventory: Inventory,
    /// CPUs allocated to running jobs.
    pub alloc_cpus: u32,
    /// Memory allocated, MiB.
    pub alloc_mem_mib: u64,
    /// Jobs with tasks on the node.
    pub jobs: Vec<JobId>,
}

/// A client request; one per stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Submit a job. `key` makes resubmission after a lost reply idempotent.
    Submit {
        /// The job (boxed: by far the largest variant).
        spec: Box<JobSpec>,
        /// Client-chosen idempotency key (random 128 bits).
        key: Option<u128>,
    },
    /// List jobs; `all` includes finished ones.
    Queue {
        /// Include terminal jobs.
        all: bool,
    },
    /// One job.
    Show {
        /// The job.
        job: JobId,
    },
    /// Cancel jobs.
    Cancel {
        /// The jobs.
        jobs: Vec<JobId>,
    },
    /// Output of a job; with `follow`, stream until the job ends.
    Logs {
        /// The job.
        job: JobId,
        /// Only this rank.
        rank: Option<u32>,
        /// Keep streaming until the job is terminal.
        follow: bool,
    },
    /// Nodes.
    Nodes,
    /// Create a one-time join token (admin).
    CreateToken {
        /// Lifetime in seconds.
        ttl_s: u64,
    },
    /// Create a user credential (admin).
    AddUser {
        /// User name.
        name: String,
        /// `admin` or `user`.
        role: String,
    },
    /// Change compute environments, queues or policies (admin).
    Admin(crate::AdminOp),
    /// Compute environments.
    Ces,
    /// Job queues.
    Queues,
    /// Fair-share policies.
    Policies,
    /// Register a new revision of a job definition (its `revision` is ignored).
    JobdefRegister(Box<crate::JobDef>),
    /// Job definitions: one name (every revision) or all; inactive ones only with `all`.
    Jobdefs {
        /// Only this name.
        name: Option<String>,
        /// Include deregistered revisions.
        all: bool,
    },
    /// Deregister one revision.
    JobdefDeregister {
        /// Name.
        name: String,
        /// Revision.
        revision: u32,
    },
}

/// Result of cancelling one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelOutcome {
    /// Was waiting; now CANCELLED.
    Cancelled,
    /// Was running; its tasks are being terminated.
    Terminating,
    /// Already finished; nothing done.
    AlreadyDone(JobState),
    /// No such job.
    NotFound,
    /// Someone else's job, and the caller is not an admin; nothing done.
    NotYours,
}

/// Error categories a client can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is invalid; fix it and retry.
    BadRequest,
    /// The job or node does not exist.
    NotFound,
    /// The credential does not allow this.
    Forbidden,
    /// The controller failed internally; the request was not applied.
    Internal,
}

/// A refused request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Category.
    pub kind: ErrorKind,
    /// Human-readable message naming the problem and the fix.
    pub message: String,
}

/// Controller to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A job was accepted and durably recorded.
    Submitted {
        /// Its id.
        job: JobId,
    },
    /// Jobs.
    Jobs(Vec<JobInfo>),
    /// One job.
    Job(Box<JobInfo>),
    /// Per-job cancel results, in request order.
    Cancelled(Vec<(JobId, CancelOutcome)>),
    /// Output; a `Logs` stream sends many of these.
    Output {
        /// Global rank.
        rank: u32,
        /// Which stream.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Last frame of a `Logs` stream: the job's final record.
    LogsEnd(Box<JobInfo>),
    /// Nodes.
    Nodes(Vec<NodeInfo>),
    /// A join token.
    Token(String),
    /// A credential file's contents (JSON).
    Credential(String),
    /// An admin change was applied; a sentence saying what.
    Done(String),
    /// Compute environments.
    Ces(Vec<crate::CeInfo>),
    /// Job queues.
    Queues(Vec<crate::QueueInfo>),
    /// Fair-share policies.
    Policies(Vec<crate::PolicyDef>),
    /// Job definitions.
    Jobdefs(Vec<crate::JobDef>),
    /// The request was refused and changed nothing.
    Error(ErrorMsg),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};

    /// Golden bytes: the handshake must never change shape, or version
    /// mismatches could no longer be reported.
    #[test]
    fn hello_is_frozen() {
        let h = Hello { version: 1, role: Role::Agent };
        assert_eq!(encode(&h), vec![0x01, 0x00]);
        let h = Hello { version: 300, role: Role::Join };
        assert_eq!(encode(&h), vec![0xac, 0x02, 0x02]);
        let r = HelloReply::Rejected(HandshakeError::VersionMismatch { ours: 1, theirs: 2 });
        assert_eq!(encode(&r), vec![0x01, 0x00, 0x01, 0x02]);
    }

    #[test]
    fn golden_submit_request() {
        let spec = JobSpec {
            name: "a".into(),
            queue: "q".into(),
            nodes: 2,
            tasks: 4,
            cpus_per_task: 1,
            command: vec!["true".into()],
            ..Default::default()
        };
        let bytes = encode(&Request::Submit { spec: Box::new(spec), key: Some(5) });
        assert_eq!(
            bytes,
            vec![
                0, // Request::Submit
                1, b'a', 1, b'q', 2, 4, 1, 0, // name queue nodes tasks cpus mem
                0, 0, // time_limit None, env []
                1, 4, b't', b'r', b'u', b'e', // command
                0, 0, 0, 0, 0, // script cwd output error user
                0, // mpi Auto
                0, 0, // depends [], array None
                1, 0, // retry: attempts 1, evaluate_on_exit []
                0, 0, 0, // share None, scheduling_priority 0, jobdef None
                0, // finalize_grace_s None
                0, 0, // gpus_per_node constraint
                0, 0, 0, 0, 0, // bind: cpu Auto, distribution Block, gpus_per_task, gpu Closest, nic Closest
                1, 5 // key Some(5)
            ]
        );
        let back: Request = decode(&bytes).unwrap();
        assert!(matches!(back, Request::Submit { key: Some(5), .. }));
    }

    #[test]
    fn placement_options_parse_with_clear_errors() {
        assert_eq!("cores".parse::<CpuBind>().unwrap(), CpuBind::Cores);
        assert_eq!("map:0,2-3".parse::<CpuBind>().unwrap(), CpuBind::Map(vec![0, 2, 3]));
        assert_eq!("map_cpu:5".parse::<CpuBind>().unwrap(), CpuBind::Map(vec![5]));
        assert!("map:x".parse::<CpuBind>().unwrap_err().contains("list of numbers"));
        assert!("sockets".parse::<CpuBind>().unwrap_err().contains("expected auto, none, cores, threads, numa"));
        assert_eq!("cyclic".parse::<Distribution>().unwrap(), Distribution::Cyclic);
        assert!("plane".parse::<Distribution>().is_err());
        assert_eq!("map:1,0".parse::<GpuBind>().unwrap(), GpuBind::Map(vec![1, 0]));
        assert_eq!("ib0".parse::<NicSelect>().unwrap(), NicSelect::Name("ib0".into()));
        assert_eq!("none".parse::<NicSelect>().unwrap(), NicSelect::None);
        assert!("a b".parse::<NicSelect>().is_err());
    }

    #[test]
    fn exit_status_codes() {
        assert_eq!(ExitStatus::Code(3).code(), 3);
        assert_eq!(ExitStatus::Signal(9).code(), 137);
        assert!(!ExitStatus::Signal(9).success());
        assert!(ExitStatus::Code(0).success());
    }
}
