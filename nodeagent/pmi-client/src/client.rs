//! The PMI-1 simple-protocol client, over any byte stream.
//!
//! One request, one reply: a line of `key=value` tokens separated by spaces and
//! ended by `\n`. `value=` (and `msg=`) run to the end of the line, because Open
//! MPI's encoded values contain spaces.

use std::fmt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

/// What went wrong talking to the PMI server.
#[derive(Debug)]
pub enum PmiError {
    /// The environment does not say how to reach a PMI server, or says it badly.
    Env(String),
    /// Reading or writing the connection failed (or it was closed).
    Io(std::io::Error),
    /// The server answered something unexpected or an error (`rc` != 0).
    Protocol(String),
}

impl fmt::Display for PmiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PmiError::Env(m) => write!(f, "PMI environment: {m}"),
            PmiError::Io(e) => write!(f, "PMI connection: {e}"),
            PmiError::Protocol(m) => write!(f, "PMI protocol: {m}"),
        }
    }
}

impl std::error::Error for PmiError {}

impl From<std::io::Error> for PmiError {
    fn from(e: std::io::Error) -> Self {
        PmiError::Io(e)
    }
}

/// The connection to the agent: an inherited socket (`PMI_FD`) or TCP (`PMI_PORT`).
#[derive(Debug)]
pub enum Conn {
    /// `PMI_FD`: one end of a socketpair.
    Unix(UnixStream),
    /// `PMI_PORT`.
    Tcp(TcpStream),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

/// One parsed reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The `cmd=` of the reply.
    pub cmd: String,
    fields: Vec<(String, String)>,
}

impl Reply {
    /// Parses `cmd=NAME k=v k=v ... [value=rest of line]`. A word without `=`
    /// continues the previous field (a `msg=` with spaces in it).
    pub fn parse(line: &str) -> Result<Reply, PmiError> {
        let line = line.trim_end_matches(['\n', '\r']);
        let mut rest = line.trim_start_matches(' ');
        let mut cmd = None;
        let mut fields: Vec<(String, String)> = Vec::new();
        while !rest.is_empty() {
            let (word, next) = match rest.find(' ') {
                Some(sp) => (&rest[..sp], &rest[sp + 1..]),
                None => (rest, ""),
            };
            if let Some(value) = rest.strip_prefix("value=") {
                fields.push(("value".into(), value.to_string()));
                break;
            }
            match word.split_once('=') {
                Some(("cmd", v)) if cmd.is_none() => cmd = Some(v.to_string()),
                Some((k, v)) if !k.is_empty() => fields.push((k.to_string(), v.to_string())),
                _ => match fields.last_mut() {
                    Some((_, v)) => {
                        v.push(' ');
                        v.push_str(word);
                    }
                    None => return Err(PmiError::Protocol(format!("malformed reply {line:?}"))),
                },
            }
            rest = next.trim_start_matches(' ');
        }
        let cmd = cmd.ok_or_else(|| PmiError::Protocol(format!("reply without cmd=: {line:?}")))?;
        Ok(Reply { cmd, fields })
    }

    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// `rc=` (0 when absent, as in hydra's replies without one).
    pub fn rc(&self) -> i32 {
        self.get("rc").and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    fn number(&self, key: &str) -> Result<i32, PmiError> {
        let v = self.get(key).ok_or_else(|| PmiError::Protocol(format!("cmd={} has no {key}=", self.cmd)))?;
        v.parse().map_err(|_| PmiError::Protocol(format!("cmd={}: {key}={v:?} is not a number", self.cmd)))
    }
}

/// Server limits from `get_maxes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maxes {
    /// Longest KVS name.
    pub kvsname: i32,
    /// Longest key.
    pub key: i32,
    /// Longest value.
    pub value: i32,
}

/// A connected, initialized PMI-1 client.
#[derive(Debug)]
pub struct Client<S> {
    io: S,
    buf: Vec<u8>,
    rank: i32,
    size: i32,
    debug: bool,
    maxes: Option<Maxes>,
    kvsname: Option<String>,
    clique: Option<Vec<i32>>,
}

fn env_number(name: &str) -> Result<Option<i32>, PmiError> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map(Some).map_err(|_| PmiError::Env(format!("{name}={v:?} is not a number"))),
        Err(_) => Ok(None),
    }
}

impl Client<Conn> {
    /// Connects as the environment says (`PMI_FD` or `PMI_PORT`) and sends `init`.
    pub fn from_env() -> Result<Client<Conn>, PmiError> {
        let debug = std::env::var("LAUNCHER_PMI_DEBUG").is_ok_and(|v| !v.is_empty() && v != "0");
        let rank = env_number("PMI_RANK")?;
        let size = env_number("PMI_SIZE")?;
        let mut client = if let Some(fd) = env_number("PMI_FD")? {
            if fd < 0 {
                return Err(PmiError::Env(format!("PMI_FD={fd} is not a descriptor")));
            }
            // Safety of from_raw_fd: the launcher hands each rank this descriptor
            // for the PMI connection; nothing else in the process owns it.
            // SAFETY: see above.
            let stream = unsafe { UnixStream::from_raw_fd(fd) };
            Client::new(Conn::Unix(stream), rank.unwrap_or(0), size.unwrap_or(1), debug)
        } else if let Ok(port) = std::env::var("PMI_PORT") {
            let stream = TcpStream::connect(port.trim())
                .map_err(|e| PmiError::Env(format!("cannot connect to PMI_PORT={port}: {e}")))?;
            let _ = stream.set_nodelay(true);
            let mut c = Client::new(Conn::Tcp(stream), rank.unwrap_or(0), size.unwrap_or(1), debug);
            if let Some(id) = env_number("PMI_ID")? {
                c.initack(id)?;
            }
            c
        } else {
            return Err(PmiError::Env(
                "neither PMI_FD nor PMI_PORT is set: start the program with `launcher run` (or another PMI-1 launcher)"
                    .into(),
            ));
        };
        client.init()?;
        Ok(client)
    }
}

impl<S: Read + Write> Client<S> {
    /// A client over `io` for `rank` of `size`; call [`Client::init`] next.
    pub fn new(io: S, rank: i32, size: i32, debug: bool) -> Client<S> {
        Client { io, buf: Vec::new(), rank, size, debug, maxes: None, kvsname: None, clique: None }
    }

    /// The `PMI_PORT` + `PMI_ID` handshake: the server tells us size and rank.
    pub fn initack(&mut self, id: i32) -> Result<(), PmiError> {
        self.send(&format!("cmd=initack pmiid={id}"))?;
        let ack = Reply::parse(&self.read_line()?)?;
        if ack.cmd != "initack" {
            return Err(PmiError::Protocol(format!("expected cmd=initack, got cmd={}", ack.cmd)));
        }
        for _ in 0..3 {
            let set = Reply::parse(&self.read_line()?)?;
            if set.cmd != "set" {
                return Err(PmiError::Protocol(format!("expected cmd=set after initack, got cmd={}", set.cmd)));
            }
            if let Some(v) = set.get("size") {
                self.size = set.number("size").map_err(|_| PmiError::Protocol(format!("bad size={v}")))?;
            }
            if set.get("rank").is_some() {
                self.rank = set.number("rank")?;
            }
        }
        Ok(())
    }

    /// `cmd=init pmi_version=1 pmi_subversion=1`.
    pub fn init(&mut self) -> Result<(), PmiError> {
        self.call("cmd=init pmi_version=1 pmi_subversion=1", "response_to_init").map(drop)
    }

    /// This process's rank.
    pub fn rank(&self) -> i32 {
        self.rank
    }

    /// The number of processes in the job.
    pub fn size(&self) -> i32 {
        self.size
    }

    /// The server's limits.
    pub fn maxes(&mut self) -> Result<Maxes, PmiError> {
        if let Some(m) = self.maxes {
            return Ok(m);
        }
        let r = self.call("cmd=get_maxes", "maxes")?;
        let m =
            Maxes { kvsname: r.number("kvsname_max")?, key: r.number("keylen_max")?, value: r.number("vallen_max")? };
        self.maxes = Some(m);
        Ok(m)
    }

    /// The job's KVS name.
    pub fn kvsname(&mut self) -> Result<String, PmiError> {
        if let Some(k) = &self.kvsname {
            return Ok(k.clone());
        }
        let r = self.call("cmd=get_my_kvsname", "my_kvsname")?;
        let k = r.get("kvsname").ok_or_else(|| PmiError::Protocol("my_kvsname without kvsname=".into()))?.to_string();
        self.kvsname = Some(k.clone());
        Ok(k)
    }

    /// `cmd=get_appnum`.
    pub fn appnum(&mut self) -> Result<i32, PmiError> {
        self.call("cmd=get_appnum", "appnum")?.number("appnum")
    }

    /// `cmd=get_universe_size`.
    pub fn universe_size(&mut self) -> Result<i32, PmiError> {
        self.call("cmd=get_universe_size", "universe_size")?.number("size")
    }

    /// `cmd=put`: visible to every rank after the next barrier.
    pub fn put(&mut self, kvsname: &str, key: &str, value: &str) -> Result<(), PmiError> {
        if value.contains('\n') || key.contains([' ', '\n', '=']) {
            return Err(PmiError::Protocol(format!("key {key:?} or its value cannot be sent on one line")));
        }
        self.call(&format!("cmd=put kvsname={kvsname} key={key} value={value}"), "put_result").map(drop)
    }

    /// `cmd=get`: `None` when the key does not exist.
    pub fn get(&mut self, kvsname: &str, key: &str) -> Result<Option<String>, PmiError> {
        self.send(&format!("cmd=get kvsname={kvsname} key={key}"))?;
        let r = Reply::parse(&self.read_line()?)?;
        if r.cmd != "get_result" {
            return Err(PmiError::Protocol(format!("expected cmd=get_result, got cmd={}", r.cmd)));
        }
        if r.rc() != 0 {
            return Ok(None);
        }
        Ok(Some(r.get("value").unwrap_or("").to_string()))
    }

    /// `cmd=barrier_in`, returning at `cmd=barrier_out` (when every rank is in).
    pub fn barrier(&mut self) -> Result<(), PmiError> {
        self.call("cmd=barrier_in", "barrier_out").map(drop)
    }

    /// `cmd=finalize`.
    pub fn finalize(&mut self) -> Result<(), PmiError> {
        self.call("cmd=finalize", "finalize_ack").map(drop)
    }

    /// `cmd=abort`: the server ends the whole job with `code`. Returns only if
    /// the connection closes without that happening.
    pub fn abort(&mut self, code: i32, message: &str) -> Result<(), PmiError> {
        let message: String = message.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
        // Open MPI passes "N/A" when MPI_Abort has no message.
        let line = if message.trim().is_empty() || message.trim() == "N/A" {
            format!("cmd=abort exitcode={code}")
        } else {
            format!("cmd=abort exitcode={code} message={}", message.trim())
        };
        self.send(&line)?;
        // The server kills us; a reply or end of file means it did not.
        self.read_line().map(drop)
    }

    /// The ranks on this node (this rank's "clique"), from `PMI_process_mapping`;
    /// just this rank when the server has no mapping.
    pub fn clique(&mut self) -> Result<Vec<i32>, PmiError> {
        if let Some(c) = &self.clique {
            return Ok(c.clone());
        }
        let kvs = self.kvsname()?;
        let c = match self.get(&kvs, "PMI_process_mapping")? {
            Some(m) => clique(&m, self.size, self.rank).unwrap_or_else(|| vec![self.rank]),
            None => vec![self.rank],
        };
        self.clique = Some(c.clone());
        Ok(c)
    }

    fn call(&mut self, line: &str, expect: &str) -> Result<Reply, PmiError> {
        self.send(line)?;
        let r = Reply::parse(&self.read_line()?)?;
        if r.cmd != expect {
            return Err(PmiError::Protocol(format!("sent {line:?}, expected cmd={expect}, got cmd={}", r.cmd)));
        }
        if r.rc() != 0 {
            let msg = r.get("msg").unwrap_or("no message");
            return Err(PmiError::Protocol(format!("{expect} failed: rc={} {msg}", r.rc())));
        }
        Ok(r)
    }

    fn send(&mut self, line: &str) -> Result<(), PmiError> {
        if self.debug {
            eprintln!("[pmi rank {}] -> {}", self.rank, line);
        }
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.io.write_all(&bytes)?;
        self.io.flush()?;
        Ok(())
    }

    fn read_line(&mut self) -> Result<String, PmiError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let rest = self.buf.split_off(nl + 1);
                let line = std::mem::replace(&mut self.buf, rest);
                let line = String::from_utf8_lossy(&line[..nl]).into_owned();
                if self.debug {
                    eprintln!("[pmi rank {}] <- {}", self.rank, line);
                }
                return Ok(line);
            }
            let mut chunk = [0u8; 4096];
            let n = match self.io.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(PmiError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the PMI server closed the connection",
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The ranks on `rank`'s node according to a `PMI_process_mapping` value
/// such as `(vector,(0,2,2),(2,1,3))`: blocks of (first node, node count,
/// ranks per node), in rank order. `None` if it cannot be parsed or does not
/// place `rank`.
pub fn clique(mapping: &str, size: i32, rank: i32) -> Option<Vec<i32>> {
    let body = mapping.trim().strip_prefix("(vector")?.strip_suffix(')')?;
    let mut node_of = Vec::new();
    for block in body.split('(').skip(1) {
        let nums: Vec<i64> = block
            .trim_end_matches([')', ',', ' '])
            .split(',')
            .map(|n| n.trim().parse::<i64>())
            .collect::<Result<_, _>>()
            .ok()?;
        let [first, count, per] = nums[..] else { return None };
        for n in 0..count {
            for _ in 0..per {
                if node_of.len() >= size.max(0) as usize {
                    break;
                }
                node_of.push(first + n);
            }
        }
    }
    let mine = *node_of.get(usize::try_from(rank).ok()?)?;
    Some((0..node_of.len()).filter(|r| node_of[*r] == mine).map(|r| r as i32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::thread;

    #[test]
    fn replies_keep_value_to_end_of_line() {
        let r = Reply::parse("cmd=get_result rc=0 msg=success value=a b  c-\n").unwrap();
        assert_eq!(r.cmd, "get_result");
        assert_eq!(r.rc(), 0);
        assert_eq!((r.get("msg"), r.get("value")), (Some("success"), Some("a b  c-")));
        let r = Reply::parse("cmd=put_result rc=-1 msg=no such key").unwrap();
        assert_eq!((r.rc(), r.get("msg")), (-1, Some("no such key")));
        let r = Reply::parse("cmd=get_result rc=-1 value=unknown").unwrap();
        assert_eq!((r.rc(), r.get("value")), (-1, Some("unknown")));
        assert!(Reply::parse("garbage").is_err());
        assert!(Reply::parse("cmd=x =y").is_err());
        assert!(Reply::parse("rc=0").is_err());
    }

    #[test]
    fn cliques_from_the_mapping() {
        assert_eq!(clique("(vector,(0,1,4))", 4, 2), Some(vec![0, 1, 2, 3]));
        assert_eq!(clique("(vector,(0,2,2))", 4, 3), Some(vec![2, 3]));
        assert_eq!(clique("(vector,(0,1,3),(1,2,2))", 7, 4), Some(vec![3, 4]));
        assert_eq!(clique("(vector,(0,1,3),(1,2,2))", 7, 6), Some(vec![5, 6]));
        assert_eq!(clique("(vector,(0,1,2),(2,1,2))", 4, 2), Some(vec![2, 3]));
        assert_eq!(clique("(vector,(0,3,1))", 3, 5), None);
        assert_eq!(clique("nonsense", 3, 0), None);
    }

    /// A scripted server on the other end of a socketpair: answers each request
    /// line with the scripted reply, recording what it got.
    fn scripted(script: Vec<(&'static str, &'static str)>) -> (UnixStream, thread::JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let h = thread::spawn(move || {
            let mut w = theirs.try_clone().unwrap();
            let mut r = BufReader::new(theirs);
            for (want, reply) in script {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                assert_eq!(line.trim_end(), want);
                w.write_all(reply.as_bytes()).unwrap();
            }
        });
        (ours, h)
    }

    #[test]
    fn a_session_like_open_mpi_makes() {
        let long = "x".repeat(1023);
        let put = Box::leak(format!("cmd=put kvsname=kvs_1_0 key=1-0-key0 value={long} ab -").into_boxed_str());
        let (io, h) = scripted(vec![
            ("cmd=init pmi_version=1 pmi_subversion=1", "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n"),
            ("cmd=get_maxes", "cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n"),
            ("cmd=get_my_kvsname", "cmd=my_kvsname kvsname=kvs_1_0\n"),
            (
                "cmd=get kvsname=kvs_1_0 key=PMI_process_mapping",
                "cmd=get_result rc=0 msg=success value=(vector,(0,2,2))\n",
            ),
            ("cmd=get_universe_size", "cmd=universe_size size=4\n"),
            ("cmd=get_appnum", "cmd=appnum appnum=0\n"),
            (put, "cmd=put_result rc=0 msg=success\n"),
            ("cmd=barrier_in", "cmd=barrier_out\n"),
            ("cmd=get kvsname=kvs_1_0 key=nope", "cmd=get_result rc=-1 msg=key_nope_not_found value=unknown\n"),
            ("cmd=finalize", "cmd=finalize_ack\n"),
        ]);
        let mut c = Client::new(io, 3, 4, false);
        c.init().unwrap();
        assert_eq!(c.maxes().unwrap(), Maxes { kvsname: 256, key: 64, value: 1024 });
        assert_eq!(c.maxes().unwrap().value, 1024, "cached, no second request");
        assert_eq!(c.clique().unwrap(), vec![2, 3]);
        assert_eq!(c.universe_size().unwrap(), 4);
        assert_eq!(c.appnum().unwrap(), 0);
        c.put("kvs_1_0", "1-0-key0", &format!("{long} ab -")).unwrap();
        c.barrier().unwrap();
        assert_eq!(c.get("kvs_1_0", "nope").unwrap(), None);
        c.finalize().unwrap();
        h.join().unwrap();
    }

    #[test]
    fn errors_are_reported_not_swallowed() {
        let (io, h) = scripted(vec![(
            "cmd=init pmi_version=1 pmi_subversion=1",
            "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=-1 msg=version_mismatch\n",
        )]);
        let mut c = Client::new(io, 0, 1, false);
        let e = c.init().unwrap_err().to_string();
        assert!(e.contains("rc=-1 version_mismatch"), "{e}");
        h.join().unwrap();
        // The server went away: an I/O error, not a hang.
        assert!(matches!(c.barrier(), Err(PmiError::Io(_))));
    }

    #[test]
    fn port_handshake_sets_rank_and_size() {
        let (io, h) = scripted(vec![
            ("cmd=initack pmiid=5", "cmd=initack\ncmd=set size=8\ncmd=set rank=5\ncmd=set debug=0\n"),
            ("cmd=init pmi_version=1 pmi_subversion=1", "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n"),
        ]);
        let mut c = Client::new(io, 0, 1, false);
        c.initack(5).unwrap();
        c.init().unwrap();
        assert_eq!((c.rank(), c.size()), (5, 8));
        h.join().unwrap();
    }
}
