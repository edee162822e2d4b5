//! The PMI-1 server engine for one job step on one node.
//!
//! The engine is a deterministic state machine with no sockets, tasks or clock. The driver owns the
//! per-rank connections and the link to the controller, splits the byte streams into lines, and
//! calls the `on_*` handlers. Each handler returns the [`Effect`]s to apply, in order.
//!
//! State:
//! * a **replica** of the job's key-value space. A `put` is visible to `get`s on
//!   this node at once, and to other nodes after the next fence. That is
//!   stronger than PMI-1 promises: PMI-1 only guarantees visibility after a barrier.
//! * the **delta**, the puts made on this node since the last fence, in put order. If a key
//!   is put twice, it appears twice, and the later put wins when the delta is merged.
//! * the **barrier**, the local ranks that have sent `barrier_in` in the current fence. When
//!   it holds every local rank, the delta leaves as [`Effect::FenceReady`] and the
//!   fence is *in flight* until [`Engine::on_fence_done`] brings the merged delta
//!   of all nodes back. That call merges it in delta order (the last write of a key wins) and releases
//!   the ranks with `barrier_out`.
//! * per rank: whether it finalized, disconnected, did the `PMI_PORT` handshake, or is
//!   inside a multi-line `mcmd=spawn` block.
//!
//! `PMI_process_mapping` is a virtual key answered from [`JobInfo::tasks_per_node`].
//! If that is empty, or the mapping string would not fit MPICH's clamped value
//! buffer ([`wire::MPICH_CLAMPED_VALLEN`]), the key is "not found". MPICH then
//! falls back to exchanging hostnames (research §2.3), and the Open MPI shim must treat
//! each rank as its own clique.
//!
//! Error policy: when a client breaks the protocol, the driver gets an
//! [`Effect::ProtocolError`], and the client also gets an `rc=-1` reply when it is
//! blocked waiting for one. Ordinary refusals, such as a key that is not found or
//! an unsupported command (`publish_name`, spawn), are replies only. Commands are not
//! checked against `init` order, because hydra does not check it either.

use std::collections::{BTreeMap, BTreeSet};

use super::mapping::process_mapping;
use super::wire::{self, Reply, Request};
use super::PmiError;

/// The virtual key that carries the node map.
pub const PROCESS_MAPPING_KEY: &str = "PMI_process_mapping";

/// What the engine needs to know about the job step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// Name of the key-value space (`get_my_kvsname`), at most [`wire::KVSNAME_MAX`] bytes.
    pub kvsname: String,
    /// Number of ranks in the job (`PMI_SIZE`).
    pub size: u32,
    /// `get_universe_size`.
    pub universe_size: u32,
    /// `get_appnum`.
    pub appnum: u32,
    /// Ranks per node, in node order, for `PMI_process_mapping` (block placement).
    /// Leave it empty to not serve the mapping.
    pub tasks_per_node: Vec<u32>,
    /// The global ranks served by this node.
    pub local_ranks: Vec<u32>,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write `line` (which ends in `\n`, and holds four lines for the initack reply) to `rank`'s connection.
    Reply {
        /// The destination rank.
        rank: u32,
        /// The bytes to write.
        line: String,
    },
    /// Every local rank is in the barrier. The driver sends these puts (made on this node since the last fence,
    /// in put order) to the controller for the cross-node allgather, and later calls
    /// [`Engine::on_fence_done`] with the merged result.
    FenceReady {
        /// This node's delta.
        puts: Vec<(String, String)>,
    },
    /// `cmd=abort`: the driver must kill the whole job on every node and end it with `exit_code`.
    /// The rank gets no reply.
    Abort {
        /// The aborting rank.
        rank: u32,
        /// The exit code the job should report.
        exit_code: i32,
        /// The reason, if the client gave one.
        message: Option<String>,
    },
    /// The rank sent `cmd=finalize`. It follows the `finalize_ack` reply.
    Finalized {
        /// The rank.
        rank: u32,
    },
    /// The rank broke the protocol. The driver logs it and decides what to do, typically kill the rank.
    ProtocolError {
        /// The rank.
        rank: u32,
        /// What it did.
        error: PmiError,
    },
}

/// Progress through an `mcmd=spawn` request, which the engine swallows and refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spawn {
    /// Inside a block, before `endcmd`.
    InBlock { total: Option<u32>, so_far: Option<u32> },
    /// Between blocks: `spawnssofar < totspawns`, so another `mcmd=spawn` block follows.
    BetweenBlocks,
}

#[derive(Debug, Clone, Default)]
struct RankState {
    finalized: bool,
    disconnected: bool,
    initacked: bool,
    spawn: Option<Spawn>,
}

/// The PMI-1 server for one job step on one node.
#[derive(Debug)]
pub struct Engine {
    info: JobInfo,
    /// The `PMI_process_mapping` value, if it is served.
    mapping: Option<String>,
    kvs: BTreeMap<String, String>,
    delta: Vec<(String, String)>,
    ranks: BTreeMap<u32, RankState>,
    barrier: BTreeSet<u32>,
    fence_in_flight: bool,
    fences_done: u64,
}

impl Engine {
    /// Creates the engine for a job step on this node.
    ///
    /// Fails if a local rank is outside `0..size` or listed twice, if `tasks_per_node`
    /// (when not empty) does not add up to `size`, or if the kvsname is longer than
    /// advertised.
    pub fn new(info: JobInfo) -> Result<Engine, PmiError> {
        if info.kvsname.len() > wire::KVSNAME_MAX {
            return Err(PmiError::TooLong { what: "kvsname", len: info.kvsname.len(), max: wire::KVSNAME_MAX });
        }
        let mut ranks = BTreeMap::new();
        for &rank in &info.local_ranks {
            if rank >= info.size {
                return Err(PmiError::RankOutOfRange { rank, size: info.size });
            }
            if ranks.insert(rank, RankState::default()).is_some() {
                return Err(PmiError::DuplicateLocalRank(rank));
            }
        }
        let mapping = if info.tasks_per_node.is_empty() {
            None
        } else {
            let sum: u64 = info.tasks_per_node.iter().map(|&n| u64::from(n)).sum();
            if sum != u64::from(info.size) {
                return Err(PmiError::TasksPerNodeMismatch { sum, size: info.size });
            }
            // MPICH reads the value into a buffer of its clamped vallen, NUL included.
            Some(process_mapping(&info.tasks_per_node)).filter(|m| m.len() < wire::MPICH_CLAMPED_VALLEN)
        };
        Ok(Engine {
            info,
            mapping,
            kvs: BTreeMap::new(),
            delta: Vec::new(),
            ranks,
            barrier: BTreeSet::new(),
            fence_in_flight: false,
            fences_done: 0,
        })
    }

    /// A line arrived from `rank` (with or without its trailing `\n` or `\r\n`). Returns the effects, in order.
    pub fn on_line(&mut self, rank: u32, line: &str) -> Vec<Effect> {
        let mut fx = Vec::new();
        let line = wire::strip_terminator(line);
        let Some(state) = self.ranks.get(&rank) else {
            fx.push(Effect::ProtocolError { rank, error: PmiError::UnknownRank(rank) });
            return fx;
        };
        if state.finalized {
            fx.push(Effect::ProtocolError { rank, error: PmiError::AfterFinalize { rank } });
            return fx;
        }
        if line.len() > wire::MAX_REQUEST_LINE {
            let error = PmiError::TooLong { what: "request line", len: line.len(), max: wire::MAX_REQUEST_LINE };
            fx.push(Effect::ProtocolError { rank, error });
            return fx;
        }
        if let Some(Spawn::InBlock { total, so_far }) = state.spawn {
            self.on_spawn_body(rank, line, total, so_far, &mut fx);
            return fx;
        }
        match Request::parse(line) {
            Ok(request) => self.on_request(rank, request, &mut fx),
            Err(error) => {
                let cmd = error.command().map(str::to_string);
                if let Some(cmd) = &cmd {
                    if cmd != "abort" {
                        reply(&mut fx, rank, Reply::Error { cmd: wire::reply_cmd(cmd), msg: error.wire_msg() });
                    }
                }
                let message = error.to_string();
                fx.push(Effect::ProtocolError { rank, error });
                // A garbled abort is still an abort: the client blocks until it is killed.
                if cmd.as_deref() == Some("abort") {
                    fx.push(Effect::Abort { rank, exit_code: 1, message: Some(message) });
                }
            }
        }
        fx
    }

    /// The first line on a `PMI_PORT` connection, `cmd=initack pmiid=<rank>`, which identifies the rank.
    ///
    /// Returns the rank and the four-line reply (one [`Effect::Reply`]). An error
    /// means the connection cannot be served (unparsable line, unknown or repeated
    /// rank). The driver should log it and close the connection.
    pub fn on_initack(&mut self, line: &str) -> Result<(u32, Vec<Effect>), PmiError> {
        let rank = match Request::parse(line)? {
            Request::InitAck { pmiid } => pmiid,
            _ => {
                return Err(PmiError::Malformed {
                    line: wire::strip_terminator(line).to_string(),
                    reason: "expected cmd=initack pmiid=<rank> first on a PMI_PORT connection",
                    cmd: None,
                })
            }
        };
        let state = self.ranks.get_mut(&rank).ok_or(PmiError::UnknownRank(rank))?;
        if state.initacked {
            return Err(PmiError::DuplicateInitack(rank));
        }
        state.initacked = true;
        let line = Reply::InitAck { size: self.info.size, rank }.encode();
        Ok((rank, vec![Effect::Reply { rank, line }]))
    }

    /// The controller returned the merged delta of all nodes for the current fence, ours included.
    ///
    /// The delta is merged into the replica in order, and every rank in the barrier is released
    /// with `barrier_out`, in rank order. Ranks that have disconnected get no reply. An error means that no fence was in
    /// flight, which is a driver or controller bug such as a duplicate result. The replica is left untouched.
    pub fn on_fence_done(&mut self, merged: Vec<(String, String)>) -> Result<Vec<Effect>, PmiError> {
        if !self.fence_in_flight {
            return Err(PmiError::NoFenceInFlight { completed: self.fences_done });
        }
        self.kvs.extend(merged);
        self.fence_in_flight = false;
        self.fences_done += 1;
        let released = std::mem::take(&mut self.barrier);
        let mut fx = Vec::with_capacity(released.len());
        for rank in released {
            if !self.ranks[&rank].disconnected {
                reply(&mut fx, rank, Reply::BarrierOut);
            }
        }
        Ok(fx)
    }

    /// A rank's connection closed (EOF). Returns whether the rank had finalized, so `false` means it died
    /// before `finalize`, and always for a rank this engine does not serve.
    pub fn on_disconnect(&mut self, rank: u32) -> bool {
        match self.ranks.get_mut(&rank) {
            Some(state) => {
                state.disconnected = true;
                state.finalized
            }
            None => false,
        }
    }

    /// Completed fences.
    pub fn fence_count(&self) -> u64 {
        self.fences_done
    }

    /// Whether a fence is waiting for [`Engine::on_fence_done`].
    pub fn fence_in_flight(&self) -> bool {
        self.fence_in_flight
    }

    /// The `PMI_process_mapping` value this engine serves, if any.
    pub fn process_mapping(&self) -> Option<&str> {
        self.mapping.as_deref()
    }

    /// Checks the engine's invariants, and panics with a message if one is broken.
    pub fn sanity_check(&self) {
        for rank in &self.barrier {
            assert!(self.ranks.contains_key(rank), "rank {rank} in the barrier is not local");
        }
        if self.fence_in_flight {
            assert_eq!(self.barrier.len(), self.ranks.len(), "fence in flight without every local rank in it");
        } else {
            assert!(
                self.barrier.len() < self.ranks.len() || self.ranks.is_empty(),
                "every local rank is in the barrier but no fence is in flight"
            );
        }
        for (key, _) in &self.delta {
            assert!(self.kvs.contains_key(key), "delta key {key:?} missing from the replica");
        }
        for (rank, state) in &self.ranks {
            assert!(*rank < self.info.size, "local rank {rank} outside the job");
            assert!(!(state.finalized && state.spawn.is_some()), "rank {rank} finalized inside a spawn request");
        }
    }

    fn on_request(&mut self, rank: u32, request: Request, fx: &mut Vec<Effect>) {
        match request {
            Request::Init { version, subversion } => {
                if version == wire::PMI_VERSION && subversion <= wire::PMI_SUBVERSION {
                    reply(fx, rank, Reply::ResponseToInit { error: None });
                } else {
                    let error = PmiError::VersionMismatch { version, subversion };
                    reply(fx, rank, Reply::ResponseToInit { error: Some(error.wire_msg()) });
                    fx.push(Effect::ProtocolError { rank, error });
                }
            }
            Request::InitAck { .. } => {
                // The handshake belongs to on_initack, before the driver knows the rank.
                let error = PmiError::UnexpectedInitack { rank };
                reply(fx, rank, Reply::Error { cmd: wire::reply_cmd("initack"), msg: error.wire_msg() });
                fx.push(Effect::ProtocolError { rank, error });
            }
            Request::GetMaxes => reply(fx, rank, Reply::Maxes),
            Request::GetAppnum => reply(fx, rank, Reply::Appnum(self.info.appnum)),
            Request::GetMyKvsname => reply(fx, rank, Reply::MyKvsname(self.info.kvsname.clone())),
            Request::GetUniverseSize => reply(fx, rank, Reply::UniverseSize(self.info.universe_size)),
            Request::Put { kvsname, key, value } => {
                let checked = self
                    .check_kvsname(kvsname)
                    .and_then(|()| check_len("key", &key, wire::KEYLEN_MAX))
                    .and_then(|()| check_len("value", &value, wire::VALLEN_MAX));
                match checked {
                    Ok(()) => {
                        self.kvs.insert(key.clone(), value.clone());
                        self.delta.push((key, value));
                        reply(fx, rank, Reply::PutOk);
                    }
                    Err(error) => {
                        reply(fx, rank, Reply::Error { cmd: wire::reply_cmd("put"), msg: error.wire_msg() });
                        fx.push(Effect::ProtocolError { rank, error });
                    }
                }
            }
            Request::Get { kvsname, key } => {
                if let Err(error) = self.check_kvsname(kvsname) {
                    reply(fx, rank, Reply::Error { cmd: wire::reply_cmd("get"), msg: error.wire_msg() });
                    fx.push(Effect::ProtocolError { rank, error });
                    return;
                }
                let found = match (&self.mapping, key.as_str()) {
                    (Some(mapping), PROCESS_MAPPING_KEY) => Some(mapping),
                    _ => self.kvs.get(&key),
                };
                match found {
                    Some(value) => reply(fx, rank, Reply::GetFound(value.clone())),
                    None => reply(fx, rank, Reply::GetNotFound(key)),
                }
            }
            Request::BarrierIn => self.on_barrier_in(rank, fx),
            Request::Finalize => {
                let state = self.ranks.get_mut(&rank).expect("local rank");
                state.finalized = true;
                state.spawn = None;
                reply(fx, rank, Reply::FinalizeAck);
                fx.push(Effect::Finalized { rank });
            }
            Request::Abort { exit_code, message } => fx.push(Effect::Abort { rank, exit_code, message }),
            Request::Unsupported { cmd } => {
                reply(fx, rank, Reply::Error { cmd: wire::reply_cmd(&cmd), msg: "unsupported".to_string() });
            }
            Request::SpawnBlock => {
                self.ranks.get_mut(&rank).expect("local rank").spawn =
                    Some(Spawn::InBlock { total: None, so_far: None });
            }
        }
    }

    fn on_barrier_in(&mut self, rank: u32, fx: &mut Vec<Effect>) {
        if !self.barrier.insert(rank) {
            let error = PmiError::DoubleBarrier { rank, fence: self.fences_done };
            fx.push(Effect::ProtocolError { rank, error });
            return;
        }
        if self.barrier.len() == self.ranks.len() {
            self.fence_in_flight = true;
            fx.push(Effect::FenceReady { puts: std::mem::take(&mut self.delta) });
        }
    }

    /// A line inside an `mcmd=spawn` block (`nprocs=2`, `totspawns=1`, ..., `endcmd`).
    fn on_spawn_body(&mut self, rank: u32, line: &str, total: Option<u32>, so_far: Option<u32>, fx: &mut Vec<Effect>) {
        let state = self.ranks.get_mut(&rank).expect("local rank");
        let (total, so_far) = match line.split_once('=') {
            Some(("totspawns", n)) => (n.trim().parse().ok(), so_far),
            Some(("spawnssofar", n)) => (total, n.trim().parse().ok()),
            _ if line.trim() == "endcmd" => {
                // MPICH sends one block per command of MPI_Comm_spawn_multiple and
                // reads a single spawn_result after the last one.
                let more = matches!((total, so_far), (Some(t), Some(s)) if s < t);
                if more {
                    state.spawn = Some(Spawn::BetweenBlocks);
                } else {
                    state.spawn = None;
                    reply(fx, rank, Reply::Error { cmd: wire::reply_cmd("spawn"), msg: "unsupported".to_string() });
                }
                return;
            }
            _ => (total, so_far),
        };
        state.spawn = Some(Spawn::InBlock { total, so_far });
    }

    fn check_kvsname(&self, kvsname: Option<String>) -> Result<(), PmiError> {
        match kvsname {
            Some(got) if got != self.info.kvsname => {
                Err(PmiError::KvsnameMismatch { got, expected: self.info.kvsname.clone() })
            }
            _ => Ok(()),
        }
    }
}

fn check_len(what: &'static str, s: &str, max: usize) -> Result<(), PmiError> {
    if s.len() > max {
        Err(PmiError::TooLong { what, len: s.len(), max })
    } else {
        Ok(())
    }
}

fn reply(fx: &mut Vec<Effect>, rank: u32, reply: Reply) {
    fx.push(Effect::Reply { rank, line: reply.encode() });
}

#[cfg(test)]
mod tests {
    use super::*;

    const KVS: &str = "kvs_probe_0";

    fn job(tasks_per_node: &[u32], local_ranks: impl IntoIterator<Item = u32>) -> JobInfo {
        let size = tasks_per_node.iter().sum();
        JobInfo {
            kvsname: KVS.to_string(),
            size,
            universe_size: size,
            appnum: 0,
            tasks_per_node: tasks_per_node.to_vec(),
            local_ranks: local_ranks.into_iter().collect(),
        }
    }

    /// Block placement: the local ranks of `node`.
    fn node_ranks(tasks_per_node: &[u32], node: usize) -> std::ops::Range<u32> {
        let start: u32 = tasks_per_node[..node].iter().sum();
        start..start + tasks_per_node[node]
    }

    fn engine(tasks_per_node: &[u32], local_ranks: impl IntoIterator<Item = u32>) -> Engine {
        Engine::new(job(tasks_per_node, local_ranks)).unwrap()
    }

    fn r(rank: u32, line: &str) -> Effect {
        Effect::Reply { rank, line: line.to_string() }
    }

    /// Sends `line` and expects exactly one reply, which it returns.
    fn ask(e: &mut Engine, rank: u32, line: &str) -> String {
        let fx = e.on_line(rank, line);
        e.sanity_check();
        match fx.as_slice() {
            [Effect::Reply { rank: to, line }] if *to == rank => line.clone(),
            other => panic!("{line:?} from rank {rank}: expected one reply, got {other:?}"),
        }
    }

    fn put_line(key: &str, value: &str) -> String {
        format!("cmd=put kvsname={KVS} key={key} value={value}\n")
    }

    fn get_line(key: &str) -> String {
        format!("cmd=get kvsname={KVS} key={key}\n")
    }

    /// A controller for several nodes: it collects FenceReady deltas and, once every node sent one,
    /// hands the concatenation (in node order) to every node.
    struct FakeController {
        nodes: Vec<Engine>,
        pending: Vec<Option<Vec<(String, String)>>>,
        /// Replies released by the last completed fence, per node.
        released: Vec<Vec<Effect>>,
    }

    impl FakeController {
        fn new(tasks_per_node: &[u32]) -> FakeController {
            let nodes: Vec<Engine> =
                (0..tasks_per_node.len()).map(|n| engine(tasks_per_node, node_ranks(tasks_per_node, n))).collect();
            let n = nodes.len();
            FakeController { nodes, pending: vec![None; n], released: vec![Vec::new(); n] }
        }

        /// Feeds a line to `node`, routes any FenceReady, and returns the node's other effects.
        fn send(&mut self, node: usize, rank: u32, line: &str) -> Vec<Effect> {
            let mut out = Vec::new();
            for effect in self.nodes[node].on_line(rank, line) {
                match effect {
                    Effect::FenceReady { puts } => {
                        assert!(self.pending[node].is_none(), "node {node} fenced twice");
                        self.pending[node] = Some(puts);
                        if self.pending.iter().all(Option::is_some) {
                            let merged: Vec<_> = self.pending.iter_mut().flat_map(|p| p.take().unwrap()).collect();
                            for (i, e) in self.nodes.iter_mut().enumerate() {
                                self.released[i] = e.on_fence_done(merged.clone()).unwrap();
                            }
                        }
                    }
                    other => out.push(other),
                }
            }
            for e in &self.nodes {
                e.sanity_check();
            }
            out
        }
    }

    /// Research §2.3: MPICH 4.0.2, 2 ranks on one node, FD mode. Both ranks, interleaved the
    /// way a poll loop would see them. Every reply is checked byte for byte.
    #[test]
    fn mpich_transcript_two_ranks_one_node() {
        let mut e = engine(&[2], [0, 1]);
        let addr = |rank: u32| format!("{:0>480}", format!("{rank}A0F3"));
        for rank in [0, 1] {
            assert_eq!(
                ask(&mut e, rank, "cmd=init pmi_version=1 pmi_subversion=1\n"),
                "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n"
            );
            assert_eq!(
                ask(&mut e, rank, "cmd=get_maxes\n"),
                "cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n"
            );
            assert_eq!(ask(&mut e, rank, "cmd=get_appnum\n"), "cmd=appnum appnum=0\n");
            assert_eq!(ask(&mut e, rank, "cmd=get_my_kvsname\n"), "cmd=my_kvsname kvsname=kvs_probe_0\n");
            assert_eq!(
                ask(&mut e, rank, &get_line("PMI_process_mapping")),
                "cmd=get_result rc=0 msg=success value=(vector,(0,1,2))\n"
            );
        }
        let barrier = |e: &mut Engine, want_puts: Vec<(String, String)>| {
            assert_eq!(e.on_line(0, "cmd=barrier_in\n"), []);
            e.sanity_check();
            let fx = e.on_line(1, "cmd=barrier_in\n");
            assert_eq!(fx, [Effect::FenceReady { puts: want_puts.clone() }]);
            assert!(e.fence_in_flight());
            e.sanity_check();
            // One node: the controller's merged delta is our own delta.
            let before = e.fence_count();
            let fx = e.on_fence_done(want_puts).unwrap();
            assert_eq!(fx, [r(0, "cmd=barrier_out\n"), r(1, "cmd=barrier_out\n")]);
            assert_eq!(e.fence_count(), before + 1);
            e.sanity_check();
        };
        // Fence 1: node map established.
        barrier(&mut e, vec![]);
        // Fence 2: the node root broadcasts the shm segment name (hex).
        let shm = "2F6465762F73686D2F6D706963685F736861725F746D70";
        assert_eq!(ask(&mut e, 0, &put_line("-bcast-1-0", shm)), "cmd=put_result rc=0 msg=success\n");
        barrier(&mut e, vec![("-bcast-1-0".into(), shm.into())]);
        assert_eq!(ask(&mut e, 1, &get_line("-bcast-1-0")), format!("cmd=get_result rc=0 msg=success value={shm}\n"));
        // Fence 3: allgather of the UCX worker addresses (~480 hex chars).
        for rank in [0, 1] {
            let key = format!("-allgather-shm-1-{rank}");
            assert_eq!(ask(&mut e, rank, &put_line(&key, &addr(rank))), "cmd=put_result rc=0 msg=success\n");
        }
        barrier(&mut e, vec![("-allgather-shm-1-0".into(), addr(0)), ("-allgather-shm-1-1".into(), addr(1))]);
        for rank in [0, 1] {
            let line = ask(&mut e, rank, &get_line("-allgather-shm-1-0"));
            assert_eq!(line, format!("cmd=get_result rc=0 msg=success value={}\n", addr(0)));
            assert!(line.len() <= wire::MPICH_MAX_LINE);
        }
        // Fence 4: inside MPI_Finalize.
        barrier(&mut e, vec![]);
        assert_eq!(e.fence_count(), 4);
        for rank in [0, 1] {
            let fx = e.on_line(rank, "cmd=finalize\n");
            assert_eq!(fx, [r(rank, "cmd=finalize_ack\n"), Effect::Finalized { rank }]);
            assert!(e.on_disconnect(rank));
        }
        e.sanity_check();
    }

    #[test]
    fn two_nodes_see_each_others_puts_only_after_the_fence() {
        let tpn = [2, 2];
        let mut c = FakeController::new(&tpn);
        let mapping = "cmd=get_result rc=0 msg=success value=(vector,(0,2,2))\n";
        assert_eq!(c.send(1, 2, &get_line("PMI_process_mapping")), [r(2, mapping)]);
        assert_eq!(c.send(0, 0, &get_line("PMI_process_mapping")), [r(0, mapping)]);

        // Rank 0 (node A) puts; rank 1 (same node) sees it at once, rank 3 (node B) does not.
        assert_eq!(c.send(0, 0, &put_line("-bcast-1-0", "ABCD")), [r(0, "cmd=put_result rc=0 msg=success\n")]);
        assert_eq!(c.send(0, 1, &get_line("-bcast-1-0")), [r(1, "cmd=get_result rc=0 msg=success value=ABCD\n")]);
        let not_found = "cmd=get_result rc=-1 msg=key_-bcast-1-0_not_found value=unknown\n";
        assert_eq!(c.send(1, 3, &get_line("-bcast-1-0")), [r(3, not_found)]);
        assert_eq!(c.send(1, 2, &put_line("-bcast-1-2", "EF")), [r(2, "cmd=put_result rc=0 msg=success\n")]);

        // Node A enters the fence; nothing is released until node B does too.
        assert!(c.send(0, 0, "cmd=barrier_in\n").is_empty());
        assert!(c.send(0, 1, "cmd=barrier_in\n").is_empty());
        assert!(c.nodes[0].fence_in_flight());
        assert!(c.send(1, 3, "cmd=barrier_in\n").is_empty());
        // Still not visible on node B while the fence is incomplete.
        assert_eq!(c.nodes[1].kvs.get("-bcast-1-0"), None);
        assert!(c.send(1, 2, "cmd=barrier_in\n").is_empty());
        assert_eq!(c.released[0], [r(0, "cmd=barrier_out\n"), r(1, "cmd=barrier_out\n")]);
        assert_eq!(c.released[1], [r(2, "cmd=barrier_out\n"), r(3, "cmd=barrier_out\n")]);
        assert_eq!((c.nodes[0].fence_count(), c.nodes[1].fence_count()), (1, 1));

        assert_eq!(c.send(1, 3, &get_line("-bcast-1-0")), [r(3, "cmd=get_result rc=0 msg=success value=ABCD\n")]);
        assert_eq!(c.send(0, 1, &get_line("-bcast-1-2")), [r(1, "cmd=get_result rc=0 msg=success value=EF\n")]);
    }

    #[test]
    fn fences_allgather_for_many_shapes() {
        // proptest is not available here: loop over node counts and ranks per node instead.
        for nodes in 1..=4usize {
            for per_node in 1..=3u32 {
                let mut tpn = vec![per_node; nodes];
                tpn[0] += 1; // an uneven first node
                let size: u32 = tpn.iter().sum();
                let mut c = FakeController::new(&tpn);
                let node_of = |rank: u32| (0..nodes).find(|&n| node_ranks(&tpn, n).contains(&rank)).unwrap();
                for round in 0..3 {
                    for rank in 0..size {
                        let line = put_line(&format!("k{round}-{rank}"), &format!("v {round} {rank}"));
                        assert_eq!(c.send(node_of(rank), rank, &line), [r(rank, "cmd=put_result rc=0 msg=success\n")]);
                    }
                    for rank in 0..size {
                        assert!(c.send(node_of(rank), rank, "cmd=barrier_in\n").is_empty());
                    }
                    for (n, released) in c.released.iter().enumerate() {
                        let want: Vec<Effect> = node_ranks(&tpn, n).map(|k| r(k, "cmd=barrier_out\n")).collect();
                        assert_eq!(released, &want, "{tpn:?} round {round} node {n}");
                    }
                    for rank in 0..size {
                        let peer = (rank + 1) % size;
                        let want = format!("cmd=get_result rc=0 msg=success value=v {round} {peer}\n");
                        assert_eq!(
                            c.send(node_of(rank), rank, &get_line(&format!("k{round}-{peer}"))),
                            [r(rank, &want)]
                        );
                    }
                }
                assert!(c.nodes.iter().all(|e| e.fence_count() == 3));
            }
        }
    }

    #[test]
    fn open_mpi_values_survive_exactly() {
        let mut e = engine(&[2], [0, 1]);
        // base64 padded with spaces instead of '=', chunk ends with '-', plus a literal '='.
        for value in ["QUJDRA  -", "a b=c  d -", " leading", "trailing   ", "-"] {
            assert_eq!(ask(&mut e, 0, &put_line("1-0-key0", value)), "cmd=put_result rc=0 msg=success\n");
            assert_eq!(
                ask(&mut e, 1, &get_line("1-0-key0")),
                format!("cmd=get_result rc=0 msg=success value={value}\n")
            );
        }
        // Open MPI puts values of vallen_max - 1 = 1023 bytes: the line is longer than 1024 and still accepted.
        let value: String = "Zm9v ".repeat(205)[..1022].to_string() + "-";
        assert_eq!(value.len(), 1023);
        let line = put_line("1-0-key5", &value);
        assert!(line.len() > 1024);
        assert_eq!(ask(&mut e, 0, &line), "cmd=put_result rc=0 msg=success\n");
        let reply = ask(&mut e, 1, &get_line("1-0-key5"));
        assert_eq!(reply, format!("cmd=get_result rc=0 msg=success value={value}\n"));
        // The Open MPI shim reads with a bigger buffer; this is the longest reply a valid put can cause.
        assert_eq!(reply.len(), "cmd=get_result rc=0 msg=success value=".len() + 1023 + 1);
        // A full vallen_max value is accepted too.
        let full = "x".repeat(wire::VALLEN_MAX);
        assert_eq!(ask(&mut e, 0, &put_line("full", &full)), "cmd=put_result rc=0 msg=success\n");
    }

    #[test]
    fn replies_fit_mpichs_line_buffer() {
        // MPICH clamps its vallen to 674 (research §2.4), so it never puts or gets longer values.
        // For every value length up to that, and the longest keys, our replies fit PMIU_readline's 1023 bytes.
        let mut e = engine(&[1], [0]);
        let long_key = "k".repeat(wire::KEYLEN_MAX);
        for len in (0..=wire::MPICH_CLAMPED_VALLEN).step_by(7).chain([wire::MPICH_CLAMPED_VALLEN]) {
            let value = "F".repeat(len);
            for line in [ask(&mut e, 0, &put_line(&long_key, &value)), ask(&mut e, 0, &get_line(&long_key))] {
                assert!(line.len() <= wire::MPICH_MAX_LINE, "value of {len}: reply of {} bytes", line.len());
            }
        }
        let missing = ask(&mut e, 0, &get_line(&"m".repeat(wire::KEYLEN_MAX)));
        assert!(missing.starts_with("cmd=get_result rc=-1 msg=key_mmm") && missing.len() <= wire::MPICH_MAX_LINE);
        for line in ["cmd=init pmi_version=1 pmi_subversion=1", "cmd=get_maxes", "cmd=get_my_kvsname"] {
            assert!(ask(&mut e, 0, line).len() <= wire::MPICH_MAX_LINE);
        }
    }

    #[test]
    fn too_long_keys_and_values_are_refused() {
        let mut e = engine(&[1], [0]);
        let fx = e.on_line(0, &put_line(&"k".repeat(65), "v"));
        assert_eq!(
            fx,
            [
                r(0, "cmd=put_result rc=-1 msg=key_too_long_65_bytes_max_64\n"),
                Effect::ProtocolError { rank: 0, error: PmiError::TooLong { what: "key", len: 65, max: 64 } },
            ]
        );
        let fx = e.on_line(0, &put_line("k", &"v".repeat(1025)));
        assert_eq!(fx[0], r(0, "cmd=put_result rc=-1 msg=value_too_long_1025_bytes_max_1024\n"));
        assert!(matches!(fx[1], Effect::ProtocolError { error: PmiError::TooLong { what: "value", .. }, .. }));
        // Nothing was stored or queued for the fence.
        assert!(e.kvs.is_empty() && e.delta.is_empty());
        // A line longer than any legitimate request is refused outright.
        let fx = e.on_line(0, &put_line("k", &"v".repeat(wire::MAX_REQUEST_LINE)));
        assert!(matches!(
            fx.as_slice(),
            [Effect::ProtocolError { error: PmiError::TooLong { what: "request line", .. }, .. }]
        ));
        e.sanity_check();
    }

    #[test]
    fn abort_kills_the_job_without_a_reply() {
        let mut e = engine(&[2], [0, 1]);
        assert_eq!(e.on_line(1, "cmd=abort exitcode=7\n"), [Effect::Abort { rank: 1, exit_code: 7, message: None }]);
        assert_eq!(e.on_line(0, "cmd=abort exitcode=-1\n"), [Effect::Abort { rank: 0, exit_code: -1, message: None }]);
        let fx = e.on_line(0, "cmd=abort exitcode=3 message=bad input file\n");
        assert_eq!(fx, [Effect::Abort { rank: 0, exit_code: 3, message: Some("bad input file".into()) }]);
        // A garbled abort still aborts, and says why.
        let fx = e.on_line(1, "cmd=abort\n");
        assert!(matches!(
            &fx[0],
            Effect::ProtocolError { rank: 1, error: PmiError::MissingField { field: "exitcode", .. } }
        ));
        assert!(matches!(&fx[1], Effect::Abort { rank: 1, exit_code: 1, message: Some(m) } if m.contains("exitcode")));
        assert_eq!(fx.len(), 2);
        e.sanity_check();
    }

    #[test]
    fn double_barrier_in_is_a_protocol_error() {
        let mut e = engine(&[3], [0, 1, 2]);
        assert!(e.on_line(0, "cmd=barrier_in\n").is_empty());
        assert_eq!(
            e.on_line(0, "cmd=barrier_in\n"),
            [Effect::ProtocolError { rank: 0, error: PmiError::DoubleBarrier { rank: 0, fence: 0 } }]
        );
        assert!(e.on_line(1, "cmd=barrier_in\n").is_empty());
        assert_eq!(e.on_line(2, "cmd=barrier_in\n"), [Effect::FenceReady { puts: vec![] }]);
        // Once in flight, any barrier_in is a repeat.
        assert!(matches!(e.on_line(2, "cmd=barrier_in\n")[..], [Effect::ProtocolError { .. }]));
        assert_eq!(e.on_fence_done(vec![]).unwrap().len(), 3);
        assert_eq!(e.fence_count(), 1);
        e.sanity_check();
    }

    #[test]
    fn disconnect_reports_whether_the_rank_finalized() {
        let mut e = engine(&[2], [0, 1]);
        assert!(!e.on_disconnect(0));
        assert_eq!(e.on_line(1, "cmd=finalize\n"), [r(1, "cmd=finalize_ack\n"), Effect::Finalized { rank: 1 }]);
        assert!(e.on_disconnect(1));
        assert!(!e.on_disconnect(9), "a rank this node does not serve never finalized here");
        // A line after finalize is an error.
        assert_eq!(
            e.on_line(1, "cmd=get_maxes\n"),
            [Effect::ProtocolError { rank: 1, error: PmiError::AfterFinalize { rank: 1 } }]
        );
        e.sanity_check();
    }

    #[test]
    fn disconnected_ranks_get_no_barrier_out() {
        let mut e = engine(&[2], [0, 1]);
        assert!(e.on_line(0, "cmd=barrier_in\n").is_empty());
        assert!(!e.on_disconnect(0));
        assert_eq!(e.on_line(1, "cmd=barrier_in\n"), [Effect::FenceReady { puts: vec![] }]);
        assert_eq!(e.on_fence_done(vec![]).unwrap(), [r(1, "cmd=barrier_out\n")]);
        e.sanity_check();
    }

    #[test]
    fn fence_result_without_a_fence_is_an_error() {
        let mut e = engine(&[2], [0, 1]);
        let err = e.on_fence_done(vec![("k".into(), "v".into())]).unwrap_err();
        assert_eq!(err, PmiError::NoFenceInFlight { completed: 0 });
        assert!(e.kvs.is_empty());
        e.sanity_check();
    }

    #[test]
    fn unknown_and_unsupported_commands() {
        let mut e = engine(&[1], [0]);
        let fx = e.on_line(0, "cmd=frobnicate x=1\n");
        assert_eq!(
            fx,
            [
                r(0, "cmd=frobnicate_result rc=-1 msg=unknown_command\n"),
                Effect::ProtocolError { rank: 0, error: PmiError::UnknownCommand { cmd: "frobnicate".into() } },
            ]
        );
        assert_eq!(ask(&mut e, 0, "cmd=publish_name service=s port=p"), "cmd=publish_result rc=-1 msg=unsupported\n");
        assert_eq!(ask(&mut e, 0, "cmd=unpublish_name service=s"), "cmd=unpublish_result rc=-1 msg=unsupported\n");
        assert_eq!(ask(&mut e, 0, "cmd=lookup_name service=s"), "cmd=lookup_result rc=-1 msg=unsupported\n");
        // A line that is not a command at all gets no reply: we cannot tell what the client waits for.
        let fx = e.on_line(0, "garbage\n");
        assert!(matches!(fx.as_slice(), [Effect::ProtocolError { error: PmiError::Malformed { cmd: None, .. }, .. }]));
        // A known command with a bad field gets an rc=-1 reply in the right form.
        let fx = e.on_line(0, "cmd=get kvsname=kvs_probe_0\n");
        assert_eq!(fx[0], r(0, "cmd=get_result rc=-1 msg=missing_field_key\n"));
        assert!(matches!(fx[1], Effect::ProtocolError { error: PmiError::MissingField { .. }, .. }));
        e.sanity_check();
    }

    #[test]
    fn multi_line_spawn_is_refused_after_the_last_block() {
        let mut e = engine(&[1], [0]);
        // MPI_Comm_spawn_multiple with two commands: two blocks, one reply (MPICH simple_pmi.c).
        for (i, block) in [1, 2].into_iter().enumerate() {
            let lines = [
                "mcmd=spawn".to_string(),
                "nprocs=2".to_string(),
                "execname=/bin/worker".to_string(),
                "totspawns=2".to_string(),
                format!("spawnssofar={block}"),
                "argcnt=1".to_string(),
                "arg1=a b=c".to_string(),
                "preput_num=0".to_string(),
                "info_num=0".to_string(),
            ];
            for line in &lines {
                assert_eq!(e.on_line(0, &format!("{line}\n")), [], "{line}");
            }
            let fx = e.on_line(0, "endcmd\n");
            if i == 0 {
                assert_eq!(fx, []);
            } else {
                assert_eq!(fx, [r(0, "cmd=spawn_result rc=-1 msg=unsupported\n")]);
            }
            e.sanity_check();
        }
        // Back to normal.
        assert_eq!(ask(&mut e, 0, "cmd=get_appnum"), "cmd=appnum appnum=0\n");
        // A single block without counts is answered at endcmd; `cmd=spawn` gets the same answer.
        for line in ["mcmd=spawn\n", "nprocs=1\n"] {
            assert_eq!(e.on_line(0, line), []);
        }
        assert_eq!(e.on_line(0, "endcmd\n"), [r(0, "cmd=spawn_result rc=-1 msg=unsupported\n")]);
        assert_eq!(ask(&mut e, 0, "cmd=spawn nprocs=1"), "cmd=spawn_result rc=-1 msg=unsupported\n");
    }

    #[test]
    fn pmi2_init_is_refused_on_this_socket() {
        let mut e = engine(&[1], [0]);
        let fx = e.on_line(0, "cmd=init pmi_version=2 pmi_subversion=0\n");
        assert_eq!(
            fx,
            [
                r(
                    0,
                    "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=-1 \
                     msg=pmi_version_2.0_unsupported_this_server_speaks_1.1\n"
                ),
                Effect::ProtocolError { rank: 0, error: PmiError::VersionMismatch { version: 2, subversion: 0 } },
            ]
        );
        // PMI-1.0 clients are served.
        assert_eq!(
            ask(&mut e, 0, "cmd=init pmi_version=1 pmi_subversion=0"),
            "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n"
        );
    }

    #[test]
    fn pmi_port_initack_handshake() {
        let mut e = engine(&[2, 2], [2, 3]);
        let (rank, fx) = e.on_initack("cmd=initack pmiid=3\n").unwrap();
        assert_eq!(rank, 3);
        assert_eq!(fx, [r(3, "cmd=initack\ncmd=set size=4\ncmd=set rank=3\ncmd=set debug=0\n")]);
        assert_eq!(e.on_initack("cmd=initack pmiid=3\n").unwrap_err(), PmiError::DuplicateInitack(3));
        assert_eq!(e.on_initack("cmd=initack pmiid=0\n").unwrap_err(), PmiError::UnknownRank(0));
        assert!(matches!(e.on_initack("cmd=initack\n").unwrap_err(), PmiError::MissingField { field: "pmiid", .. }));
        assert!(matches!(
            e.on_initack("cmd=init pmi_version=1 pmi_subversion=1\n").unwrap_err(),
            PmiError::Malformed { .. }
        ));
        // After the handshake the client speaks the normal protocol.
        assert_eq!(
            ask(&mut e, 3, "cmd=init pmi_version=1 pmi_subversion=1"),
            "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n"
        );
        // An initack on an identified connection is refused.
        let fx = e.on_line(2, "cmd=initack pmiid=2\n");
        assert!(matches!(fx[1], Effect::ProtocolError { error: PmiError::UnexpectedInitack { rank: 2 }, .. }));
        e.sanity_check();
    }

    #[test]
    fn unknown_rank_and_kvsname() {
        let mut e = engine(&[2, 2], [0, 1]);
        assert_eq!(
            e.on_line(2, "cmd=get_maxes\n"),
            [Effect::ProtocolError { rank: 2, error: PmiError::UnknownRank(2) }]
        );
        let fx = e.on_line(0, "cmd=put kvsname=other key=k value=v\n");
        assert_eq!(fx[0], r(0, "cmd=put_result rc=-1 msg=unknown_kvsname\n"));
        assert!(matches!(fx[1], Effect::ProtocolError { error: PmiError::KvsnameMismatch { .. }, .. }));
        let fx = e.on_line(0, "cmd=get kvsname=other key=k\n");
        assert_eq!(fx[0], r(0, "cmd=get_result rc=-1 msg=unknown_kvsname\n"));
        // kvsname may be left out.
        assert_eq!(ask(&mut e, 0, "cmd=put key=k value=v"), "cmd=put_result rc=0 msg=success\n");
        assert_eq!(ask(&mut e, 1, "cmd=get key=k"), "cmd=get_result rc=0 msg=success value=v\n");
    }

    #[test]
    fn job_attributes() {
        let info = JobInfo { universe_size: 8, appnum: 2, ..job(&[3, 2, 2], [3, 4]) };
        let mut e = Engine::new(info).unwrap();
        assert_eq!(ask(&mut e, 3, "cmd=get_universe_size"), "cmd=universe_size size=8\n");
        assert_eq!(ask(&mut e, 4, "cmd=get_appnum"), "cmd=appnum appnum=2\n");
        assert_eq!(
            ask(&mut e, 4, &get_line("PMI_process_mapping")),
            "cmd=get_result rc=0 msg=success value=(vector,(0,1,3),(1,2,2))\n"
        );
        // MPICH may ask for the dead-process list; it is simply not found.
        assert_eq!(
            ask(&mut e, 3, &get_line("PMI_dead_processes")),
            "cmd=get_result rc=-1 msg=key_PMI_dead_processes_not_found value=unknown\n"
        );
    }

    #[test]
    fn mapping_is_not_served_when_unknown_or_too_long() {
        let mut e = engine(&[], []);
        assert_eq!(e.process_mapping(), None);
        let mut e2 = Engine::new(JobInfo { size: 2, local_ranks: vec![0, 1], ..job(&[], []) }).unwrap();
        assert_eq!(
            ask(&mut e2, 0, &get_line("PMI_process_mapping")),
            "cmd=get_result rc=-1 msg=key_PMI_process_mapping_not_found value=unknown\n"
        );
        // 100 nodes with alternating counts cannot be merged: the mapping would overflow MPICH's buffer.
        let tpn: Vec<u32> = (0..100).map(|n| 1 + n % 2).collect();
        assert!(process_mapping(&tpn).len() >= wire::MPICH_CLAMPED_VALLEN);
        e = engine(&tpn, [0]);
        assert_eq!(e.process_mapping(), None);
        assert!(ask(&mut e, 0, &get_line("PMI_process_mapping")).starts_with("cmd=get_result rc=-1"));
        // Regular allocations compress to one block whatever their size.
        assert_eq!(engine(&[64; 10_000], [0]).process_mapping(), Some("(vector,(0,10000,64))"));
    }

    #[test]
    fn bad_job_info_is_rejected() {
        let err = Engine::new(job(&[2], [0, 2])).unwrap_err();
        assert_eq!(err, PmiError::RankOutOfRange { rank: 2, size: 2 });
        assert_eq!(Engine::new(job(&[2], [1, 1])).unwrap_err(), PmiError::DuplicateLocalRank(1));
        let err = Engine::new(JobInfo { size: 5, ..job(&[2, 2], [0]) }).unwrap_err();
        assert_eq!(err, PmiError::TasksPerNodeMismatch { sum: 4, size: 5 });
        let err = Engine::new(JobInfo { kvsname: "k".repeat(257), ..job(&[1], [0]) }).unwrap_err();
        assert!(matches!(err, PmiError::TooLong { what: "kvsname", .. }));
        assert!(err.to_string().contains("257"), "{err}");
    }
}
