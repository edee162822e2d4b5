//! SQLite state: one row per job and node (postcard snapshots of the core's
//! records), an append-only job event history, issued certificates and join
//! tokens, and a snapshot of the fair-share history (`share_usage`, one row
//! per queue and share, rewritten now and then by the driver).
//!
//! WAL with `synchronous=FULL`: a commit is on disk when `commit` returns.
//! The driver calls `commit` once per batch of inputs (group commit), so many
//! concurrent submissions share one fsync.

use launcher_core::{ChildEnd, ChildState, Defs, Job, NodeRecord, Record, ShareHistory, Time};
use launcher_proto::{decode, encode};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A newer launcher wrote this database.
    #[error(
        "state database {} has schema version {version}, newer than this launcher's ({SCHEMA_VERSION}): run the launcher version that wrote it, or restore a backup made with this one",
        path.display()
    )]
    Newer {
        /// The database.
        path: std::path::PathBuf,
        /// Its `user_version`.
        version: i64,
    },
    /// The write-ahead log could not be synced.
    #[error("state database log: {0}")]
    Io(#[from] std::io::Error),
    /// A row could not be decoded (written by an incompatible version?).
    #[error("state database row {table}/{id} is unreadable: {source}")]
    Decode {
        /// Table.
        table: &'static str,
        /// Row id.
        id: i64,
        /// Why.
        #[source]
        source: launcher_proto::DecodeError,
    },
}

/// Who a certificate belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    /// `agent` or `user`.
    pub kind: String,
    /// Node or user name.
    pub name: String,
    /// `admin`, `user` or `agent`.
    pub role: String,
}

/// The state database.
///
/// Durability: a batch that changes something for a client (a submission, a
/// cancel, an admin change) commits with `synchronous=FULL`, so it is on disk before the
/// answer leaves; a batch of agent news only (task starts and ends) commits
/// with `synchronous=NORMAL`: safe against a controller crash at once (the OS
/// holds it), and on disk with the next durable commit or [`Store::sync`],
/// which the driver runs within [`SYNC_WITHIN`].
pub struct Store {
    conn: Connection,
    wal: std::path::PathBuf,
    /// The connection is in `synchronous=NORMAL`.
    relaxed: bool,
    /// Commits since the last fsync of the write-ahead log.
    unsynced: bool,
}

/// The layout of the tables this launcher reads and writes (`PRAGMA user_version`).
/// `share_usage` came later without a bump: it is created where missing, and
/// a launcher that does not know it leaves it alone.
pub const SCHEMA_VERSION: i64 = 1;

/// The longest a relaxed commit waits for its fsync.
pub const SYNC_WITHIN: std::time::Duration = std::time::Duration::from_millis(100);

impl Store {
    /// Open (creating tables if needed).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        // Refuse a database a newer launcher wrote before touching it: its rows
        // may not decode here, and writing them back would lose what they hold.
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Newer { path: path.to_path_buf(), version });
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, data BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, data BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, job INTEGER NOT NULL, time INTEGER NOT NULL, text TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS events_job ON events(job);
             CREATE TABLE IF NOT EXISTS certs (fingerprint TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, expires INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS defs (kind TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (kind, name));
             CREATE TABLE IF NOT EXISTS children (parent INTEGER NOT NULL, pos INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (parent, pos));
             CREATE TABLE IF NOT EXISTS share_usage (queue TEXT NOT NULL, share TEXT NOT NULL, hist REAL NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (queue, share));",
        )?;
        if version < SCHEMA_VERSION {
            // New, or written before versions were recorded (the same tables).
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(Store { conn, wal: wal.into(), relaxed: false, unsynced: false })
    }

    fn set_relaxed(&mut self, relaxed: bool) -> Result<(), StoreError> {
        if self.relaxed != relaxed {
            self.conn.pragma_update(None, "synchronous", if relaxed { "NORMAL" } else { "FULL" })?;
            self.relaxed = relaxed;
        }
        Ok(())
    }

    /// Whether relaxed commits are waiting for an fsync.
    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// Put every commit so far on disk (fsync the write-ahead log).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.unsynced {
            match std::fs::File::open(&self.wal).and_then(|f| f.sync_data()) {
                // No log: a checkpoint moved everything into the synced database.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(StoreError::Io(e)),
                _ => {}
            }
            self.unsynced = false;
        }
        Ok(())
    }

    /// Write a batch of core records in one transaction. Later records of the
    /// same job replace earlier ones within the batch.
    /// `durable`: on disk (with every earlier commit) before this returns.
    pub fn commit(&mut self, records: &[Record], durable: bool) -> Result<(), StoreError> {
        if records.is_empty() {
            return if durable { self.sync() } else { Ok(()) };
        }
        self.set_relaxed(!durable)?;
        // The last record of each job in the batch is the one that counts.
        let mut last_job: HashMap<u64, usize> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            match r {
                Record::Job(j) => {
                    last_job.insert(j.id.0, i);
                }
                Record::RemoveJob(id) => {
                    last_job.insert(id.0, i);
                }
                _ => {}
            }
        }
        // BEGIN and COMMIT as cached statements: rusqlite's Transaction parses
        // both anew each time, a few percent of a busy controller.
        self.conn.prepare_cached("BEGIN")?.execute([])?;
        let written = (|| -> Result<(), StoreError> {
            let tx = &self.conn;
            let mut put_job = tx.prepare_cached("INSERT OR REPLACE INTO jobs (id, state, data) VALUES (?1, ?2, ?3)")?;
            let mut put_node =
                tx.prepare_cached("INSERT OR REPLACE INTO nodes (id, name, data) VALUES (?1, ?2, ?3)")?;
            let mut put_event = tx.prepare_cached("INSERT INTO events (job, time, text) VALUES (?1, ?2, ?3)")?;
            let mut put_def =
                tx.prepare_cached("INSERT OR REPLACE INTO defs (kind, name, data) VALUES (?1, ?2, ?3)")?;
            let mut del_def = tx.prepare_cached("DELETE FROM defs WHERE kind = ?1 AND name = ?2")?;
            let mut put_child =
                tx.prepare_cached("INSERT OR REPLACE INTO children (parent, pos, data) VALUES (?1, ?2, ?3)")?;
            let mut del_children = tx.prepare_cached("DELETE FROM children WHERE parent = ?1")?;
            let mut del_job = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?;
            for (i, r) in records.iter().enumerate() {
                match r {
                    Record::Job(j) if last_job.get(&j.id.0) == Some(&i) => {
                        put_job.execute(params![j.id.0 as i64, j.state.as_str(), encode(&**j)])?;
                        if j.array.is_some() {
                            // The full record holds every child: older child rows are stale.
                            del_children.execute(params![j.id.0 as i64])?;
                        }
                    }
                    Record::Job(_) => {}
                    Record::RemoveJob(id) if last_job.get(&id.0) == Some(&i) => {
                        del_job.execute(params![id.0 as i64])?;
                    }
                    Record::RemoveJob(_) => {}
                    Record::Node(n) => {
                        put_node.execute(params![n.id.0 as i64, n.name, encode(n)])?;
                    }
                    Record::Event { job, time, text } => {
                        put_event.execute(params![job.0 as i64, time.0 as i64, text])?;
                    }
                    Record::Ce(c) => {
                        put_def.execute(params!["ce", c.name, encode(c)])?;
                    }
                    Record::Queue(q) => {
                        put_def.execute(params!["queue", q.name, encode(q)])?;
                    }
                    Record::Policy(p) => {
                        put_def.execute(params!["policy", p.name, encode(p)])?;
                    }
                    Record::Jobdef(d) => {
                        put_def.execute(params!["jobdef", format!("{}:{}", d.name, d.revision), encode(&**d)])?;
                    }
                    Record::Deleted { kind, name } => {
                        del_def.execute(params![kind, name])?;
                    }
                    // A child change the parent's full record later in this batch already holds.
                    Record::Child { parent, .. } if last_job.get(&parent.0).is_some_and(|&j| j > i) => {}
                    Record::Child { parent, pos, state, attempts, end } => {
                        put_child.execute(params![
                            parent.0 as i64,
                            *pos as i64,
                            encode(&(*state, *attempts, end.clone()))
                        ])?;
                    }
                }
            }
            Ok(())
        })();
        let committed = written.and_then(|()| Ok(self.conn.prepare_cached("COMMIT")?.execute([]).map(drop)?));
        if let Err(e) = committed {
            // Leave no transaction open behind a failed one.
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        // A FULL commit fsyncs the whole log, earlier relaxed frames included.
        self.unsynced = !durable;
        Ok(())
    }

    /// Replace the saved fair-share history with `usage` (the whole of it:
    /// shares not in it are forgotten). A relaxed commit, like agents' news:
    /// on disk with the next durable commit or [`Store::sync`].
    pub fn save_share_usage(&mut self, usage: &[ShareHistory]) -> Result<(), StoreError> {
        self.set_relaxed(true)?;
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM share_usage", [])?;
        {
            let mut put =
                tx.prepare_cached("INSERT INTO share_usage (queue, share, hist, at) VALUES (?1, ?2, ?3, ?4)")?;
            for u in usage {
                put.execute(params![u.queue, u.share, u.hist, u.at.0 as i64])?;
            }
        }
        tx.commit()?;
        self.unsynced = true;
        Ok(())
    }

    /// Compute environments, queues, policies, job definitions and the saved
    /// fair-share history.
    pub fn load_defs(&self) -> Result<Defs, StoreError> {
        let mut defs = Defs::default();
        let mut st = self.conn.prepare("SELECT kind, data FROM defs ORDER BY kind, name")?;
        let mut rows = st.query([])?;
        while let Some(row) = rows.next()? {
            let kind: String = row.get(0)?;
            let data: Vec<u8> = row.get(1)?;
            let bad = |source| StoreError::Decode { table: "defs", id: 0, source };
            match kind.as_str() {
                "ce" => defs.ces.push(decode(&data).map_err(bad)?),
                "queue" => defs.queues.push(decode(&data).map_err(bad)?),
                "policy" => defs.policies.push(decode(&data).map_err(bad)?),
                "jobdef" => defs.jobdefs.push(decode(&data).map_err(bad)?),
                _ => {}
            }
        }
        // The built-in `default` compute environment and queue are never written
        // unless changed; with anything else on record, `Core::restore` keeps
        // only what is on record, so they come back here.
        if !defs.ces.is_empty() || !defs.queues.is_empty() {
            if !defs.ces.iter().any(|c| c.name == "default") {
                defs.ces.push(launcher_core::default_ce());
            }
            if !defs.queues.iter().any(|q| q.name == "default") {
                defs.queues.push(launcher_core::default_queue());
            }
        }
        let mut st = self.conn.prepare("SELECT queue, share, hist, at FROM share_usage ORDER BY queue, share")?;
        let rows = st.query_map([], |r| {
            Ok(ShareHistory {
                queue: r.get(0)?,
                share: r.get(1)?,
                hist: r.get(2)?,
                at: Time(r.get::<_, i64>(3)? as u64),
            })
        })?;
        defs.usage = rows.collect::<Result<_, _>>()?;
        Ok(defs)
    }

    /// Every `(id, data)` row of `table`, decoded, by id.
    fn decode_rows<T: serde::de::DeserializeOwned>(&self, table: &'static str) -> Result<Vec<T>, StoreError> {
        let mut st = self.conn.prepare(&format!("SELECT id, data FROM {table} ORDER BY id"))?;
        let mut rows = st.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let data: Vec<u8> = row.get(1)?;
            out.push(decode(&data).map_err(|source| StoreError::Decode { table, id, source })?);
        }
        Ok(out)
    }

    /// Everything needed to rebuild the core.
    pub fn load(&self) -> Result<(Vec<NodeRecord>, Vec<Job>), StoreError> {
        let nodes: Vec<NodeRecord> = self.decode_rows("nodes")?;
        // Records of ended array children, which earlier versions kept: the
        // parent's byte says all there is, so they go (in one transaction).
        let (ended, mut jobs): (Vec<Job>, Vec<Job>) =
            self.decode_rows::<Job>("jobs")?.into_iter().partition(|j| j.id.index().is_some() && j.state.is_terminal());
        if !ended.is_empty() {
            let tx = self.conn.unchecked_transaction()?;
            {
                let mut del = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?;
                for j in &ended {
                    del.execute([j.id.0 as i64])?;
                }
            }
            tx.commit()?;
        }
        // Array children changed since their parent's record was written.
        let by_id: HashMap<u64, usize> = jobs.iter().enumerate().map(|(i, j)| (j.id.0, i)).collect();
        let mut st = self.conn.prepare("SELECT parent, pos, data FROM children ORDER BY parent, pos")?;
        let mut rows = st.query([])?;
        while let Some(row) = rows.next()? {
            let parent: i64 = row.get(0)?;
            let pos: i64 = row.get(1)?;
            let data: Vec<u8> = row.get(2)?;
            let (state, attempts, end): (ChildState, u32, Option<ChildEnd>) =
                decode(&data).map_err(|source| StoreError::Decode { table: "children", id: parent, source })?;
            if let Some(arr) = by_id.get(&(parent as u64)).and_then(|&i| jobs[i].array.as_mut()) {
                arr.apply_child(pos as u32, state, attempts, end);
            }
        }
        Ok((nodes, jobs))
    }

    /// A job's event history.
    pub fn events(&self, job: u64) -> Result<Vec<(u64, String)>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT time, text FROM events WHERE job = ?1 ORDER BY seq")?;
        let rows = st.query_map([job as i64], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Record an issued certificate.
    pub fn add_cert(&mut self, fp: &[u8; 32], id: &CertIdentity) -> Result<(), StoreError> {
        self.set_relaxed(false)?;
        self.conn.execute(
            "INSERT OR REPLACE INTO certs (fingerprint, kind, name, role, revoked) VALUES (?1, ?2, ?3, ?4, 0)",
            params![nodeagent::wire::hex(fp), id.kind, id.name, id.role],
        )?;
        Ok(())
    }

    /// Revoke every agent certificate issued for `name`; returns their fingerprints.
    pub fn revoke_agent(&mut self, name: &str) -> Result<Vec<[u8; 32]>, StoreError> {
        self.set_relaxed(false)?;
        let mut st =
            self.conn.prepare("SELECT fingerprint FROM certs WHERE kind = 'agent' AND name = ?1 AND revoked = 0")?;
        let fps: Vec<String> = st.query_map([name], |r| r.get(0))?.collect::<Result<_, _>>()?;
        self.conn.execute("UPDATE certs SET revoked = 1 WHERE kind = 'agent' AND name = ?1", [name])?;
        Ok(fps.iter().filter_map(|f| nodeagent::wire::unhex32(f)).collect())
    }

    /// All valid certificates.
    pub fn certs(&self) -> Result<HashMap<[u8; 32], CertIdentity>, StoreError> {
        let mut st = self.conn.prepare("SELECT fingerprint, kind, name, role FROM certs WHERE revoked = 0")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, CertIdentity { kind: r.get(1)?, name: r.get(2)?, role: r.get(3)? }))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (fp, id) = row?;
            if let Some(k) = nodeagent::wire::unhex32(&fp) {
                out.insert(k, id);
            }
        }
        Ok(out)
    }

    /// Remember a join token (by hash) until `expires` (µs since epoch).
    pub fn add_token(&mut self, hash: &str, expires: u64) -> Result<(), StoreError> {
        self.set_relaxed(false)?;
        self.conn.execute("INSERT INTO tokens (hash, expires) VALUES (?1, ?2)", params![hash, expires as i64])?;
        Ok(())
    }

    /// Consume a token: Ok(None) if valid (now used), Ok(Some(why)) if not.
    pub fn use_token(&mut self, hash: &str, now: u64) -> Result<Option<&'static str>, StoreError> {
        self.set_relaxed(false)?;
        let row: Option<(i64, i64)> = self
            .conn
            .query_row("SELECT expires, used FROM tokens WHERE hash = ?1", [hash], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(match row {
            None => Some("unknown join token (was it created on this cluster?)"),
            Some((_, used)) if used != 0 => {
                Some("this join token was already used; tokens are one-time, create a new one")
            }
            Some((exp, _)) if (exp as u64) < now => Some("this join token has expired; create a new one"),
            Some(_) => {
                self.conn.execute("UPDATE tokens SET used = 1 WHERE hash = ?1", [hash])?;
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_newer_schema_is_refused_and_an_old_one_is_stamped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.db");
        drop(Store::open(&p).unwrap());
        let version = |p: &Path| -> i64 {
            Connection::open(p).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap()
        };
        assert_eq!(version(&p), SCHEMA_VERSION);
        Connection::open(&p).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        let e = Store::open(&p).err().expect("a newer schema must be refused").to_string();
        assert!(e.contains("newer than this launcher") && e.contains(&p.display().to_string()), "{e}");
        // Still refused, untouched.
        assert_eq!(version(&p), SCHEMA_VERSION + 1);
    }

    use super::*;
    use launcher_core::{Config, Core, Effects, SubmitOutcome, Time};
    use launcher_proto::{JobSpec, NodeId, ToAgent};

    #[derive(Default)]
    struct Fx(Vec<Record>);
    impl Effects for Fx {
        fn send(&mut self, _: NodeId, _: ToAgent) {}
        fn persist(&mut self, r: Record) {
            self.0.push(r);
        }
        fn job_changed(&mut self, _: launcher_proto::JobId) {}
    }

    #[test]
    fn array_children_are_rows_after_submit_and_come_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        let mut core = Core::new(Config::default());
        let mut fx = Fx::default();
        let reg = launcher_proto::RegisterMsg {
            name: "n1".into(),
            inventory: launcher_proto::Inventory { cpus: 2, mem_mib: 100, ..Default::default() },
            jobs: vec![],
        };
        let (node, _) = core.on_register(Time(1), &mut fx, reg);
        let spec = JobSpec {
            queue: "default".into(),
            nodes: 1,
            tasks: 1,
            cpus_per_task: 1,
            command: vec!["true".into()],
            array: Some(launcher_proto::ArraySpec {
                start: 0,
                end: 9_999,
                step: 1,
                max_running: None,
                sequential: false,
            }),
            ..Default::default()
        };
        let SubmitOutcome::Accepted(id) = core.on_submit(Time(5), &mut fx, spec, None) else { panic!() };
        let mut s = Store::open(&p).unwrap();
        s.commit(&fx.0, true).unwrap();
        let count = |s: &Store, table: &str| -> i64 {
            s.conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).unwrap()
        };
        assert_eq!(count(&s, "children"), 0, "a 10,000-child submit writes no child rows");
        assert_eq!(count(&s, "jobs"), 1);
        fx.0.clear();
        core.schedule(Time(6), &mut fx);
        s.commit(&fx.0, true).unwrap();
        // A started child is its own record (without the parent's spec), no child row.
        assert_eq!((count(&s, "children"), count(&s, "jobs")), (0, 3));
        let restored = |s: &Store| {
            let (nodes, jobs) = s.load().unwrap();
            let core2 = Core::restore(Config::default(), Time(7), nodes, jobs, Default::default());
            core2.sanity_check();
            core2
        };
        let core2 = restored(&s);
        let a = core2.job_info(id).unwrap().array.unwrap();
        assert_eq!((a.running, a.runnable), (2, 9_998));
        assert_eq!(core2.job(id.child(1)).unwrap().spec.command, ["true"], "the spec comes from the parent");
        // One child ends: its record goes, its end is one child row.
        fx.0.clear();
        let child = id.child(0);
        core.on_agent(Time(8), &mut fx, node, launcher_proto::FromAgent::Started { job: child, attempt: 1 });
        let status = launcher_proto::ExitStatus::Code(0);
        core.on_agent(
            Time(9),
            &mut fx,
            node,
            launcher_proto::FromAgent::TaskExited { job: child, attempt: 1, rank: 0, status },
        );
        s.commit(&fx.0, true).unwrap();
        assert_eq!((count(&s, "children"), count(&s, "jobs")), (1, 2));
        drop(s);
        let s = Store::open(&p).unwrap();
        let a = restored(&s).job_info(id).unwrap().array.unwrap();
        assert_eq!((a.running, a.succeeded, a.runnable), (1, 1, 9_998));
    }

    #[test]
    fn ended_child_records_of_older_versions_go_on_load() {
        use launcher_proto::{JobId, JobState};
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(&d.path().join("state.db")).unwrap();
        let job = |id: JobId, state: JobState| {
            Record::Job(Box::new(Job {
                id,
                spec: JobSpec::default(),
                key: None,
                state,
                attempt: 1,
                alloc: vec![],
                exits: Default::default(),
                fail: None,
                killing: None,
                submit_time: 1,
                start_time: None,
                end_time: None,
                exit_code: state.is_terminal().then_some(0),
                array: None,
            }))
        };
        let recs = [
            job(JobId(7), JobState::Succeeded),
            job(JobId(7).child(1), JobState::Succeeded),
            job(JobId(7).child(2), JobState::Running),
        ];
        s.commit(&recs, true).unwrap();
        let (_, jobs) = s.load().unwrap();
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids, [JobId(7), JobId(7).child(2)], "the ended child's record is dropped, the rest kept");
        let rows: i64 = s.conn.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 2, "and deleted from the table");
    }

    #[test]
    fn committed_jobs_come_back_after_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        let mut core = Core::new(Config::default());
        let mut fx = Fx::default();
        let spec = JobSpec {
            queue: "default".into(),
            nodes: 1,
            tasks: 1,
            cpus_per_task: 1,
            command: vec!["true".into()],
            ..Default::default()
        };
        for _ in 0..3 {
            assert!(matches!(core.on_submit(Time(5), &mut fx, spec.clone(), None), SubmitOutcome::Accepted(_)));
        }
        let mut s = Store::open(&p).unwrap();
        s.commit(&fx.0, true).unwrap();
        drop(s);
        let s = Store::open(&p).unwrap();
        let (nodes, jobs) = s.load().unwrap();
        assert!(nodes.is_empty());
        assert_eq!(jobs.len(), 3);
        let core2 = Core::restore(Config::default(), Time(6), nodes, jobs, Default::default());
        core2.sanity_check();
        assert_eq!(core2.job_infos(false).len(), 3);
    }

    #[test]
    fn fair_share_history_is_replaced_whole_and_comes_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        let h = |queue: &str, share: &str, hist: f64, at: u64| ShareHistory {
            queue: queue.into(),
            share: share.into(),
            hist,
            at: Time(at),
        };
        let mut s = Store::open(&p).unwrap();
        assert!(s.load_defs().unwrap().usage.is_empty());
        s.save_share_usage(&[h("fair", "old", 1.0, 5)]).unwrap();
        let usage = vec![h("fair", "teamA", 2400.125, 1_700_000_000_000_000), h("research", "", 0.5, 7)];
        s.save_share_usage(&usage).unwrap();
        assert!(s.unsynced(), "a relaxed commit: synced with the next durable one");
        s.commit(&[], true).unwrap();
        assert!(!s.unsynced());
        drop(s);
        let s = Store::open(&p).unwrap();
        assert_eq!(s.load_defs().unwrap().usage, usage, "exactly the last snapshot, bit for bit");
        drop(s);
        // A database from before the table existed (same user_version) opens and gains it.
        Connection::open(&p).unwrap().execute_batch("DROP TABLE share_usage").unwrap();
        let mut s = Store::open(&p).unwrap();
        assert!(s.load_defs().unwrap().usage.is_empty());
        s.save_share_usage(&usage[..1]).unwrap();
        assert_eq!(s.load_defs().unwrap().usage, usage[..1]);
    }

    #[test]
    fn the_default_queue_and_compute_environment_survive_creating_others() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.db");
        let mut core = Core::new(Config::default());
        let mut fx = Fx::default();
        let q = launcher_proto::QueueDef {
            name: "research".into(),
            priority: 5,
            enabled: true,
            ces: vec!["default".into()],
            policy: None,
        };
        core.on_admin(Time(1), &mut fx, launcher_proto::AdminOp::QueueCreate(q)).unwrap();
        let mut s = Store::open(&p).unwrap();
        s.commit(&fx.0, true).unwrap();
        let core2 = Core::restore(Config::default(), Time(2), vec![], vec![], s.load_defs().unwrap());
        let ces: Vec<String> = core2.ce_infos().into_iter().map(|c| c.def.name).collect();
        let queues: Vec<String> = core2.queue_infos().into_iter().map(|q| q.def.name).collect();
        assert_eq!((ces, queues), (vec!["default".to_string()], vec!["research".to_string(), "default".to_string()]));
    }

    #[test]
    fn tokens_are_one_time_and_expire() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(&d.path().join("s.db")).unwrap();
        s.add_token("h1", 100).unwrap();
        s.add_token("h2", 10).unwrap();
        assert_eq!(s.use_token("h1", 50).unwrap(), None);
        assert!(s.use_token("h1", 50).unwrap().unwrap().contains("already used"));
        assert!(s.use_token("h2", 50).unwrap().unwrap().contains("expired"));
        assert!(s.use_token("nope", 50).unwrap().unwrap().contains("unknown"));
    }
}
