//! Helpers for multi-process tests: a `launcher up` cluster in the
//! background, and running the real CLI against it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_launcher")
}

/// Why namespaces cannot be used here, if they cannot.
pub fn netns_unavailable() -> Option<String> {
    launcher::up::netns::available().err()
}

/// A `launcher up` running in the background until dropped.
pub struct Cluster {
    child: Child,
    pub cred: PathBuf,
    pub dir: tempfile::TempDir,
    pub netns: bool,
    /// With namespaces: the bridge name (`lb<tag>`) and its address, from `launcher up`'s banner.
    pub bridge: Option<(String, String)>,
}

impl Cluster {
    pub fn start(nodes: usize, cpus: u32, netns: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["up", "--nodes", &nodes.to_string(), "--cpus-per-node", &cpus.to_string(), "--kill-grace", "3"])
            .arg("--state-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !netns {
            cmd.arg("--no-netns");
        }
        let mut child = cmd.spawn().expect("start launcher up");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = String::new();
        let mut bridge = None;
        let cred = loop {
            assert!(Instant::now() < deadline, "launcher up did not become ready:\n{seen}");
            let Some(Ok(line)) = lines.next() else { panic!("launcher up exited early:\n{seen}") };
            seen.push_str(&line);
            seen.push('\n');
            // "... each in its own network namespace on bridge lbXXXXX (10.77.N.1/24)"
            if let Some(rest) = line.split(" on bridge ").nth(1) {
                let mut w = rest.split_whitespace();
                if let (Some(name), Some(addr)) = (w.next(), w.next()) {
                    let addr = addr.trim_start_matches('(').split('/').next().unwrap_or_default();
                    bridge = Some((name.to_string(), addr.to_string()));
                }
            }
            if let Some(p) = line.trim().strip_prefix("export LAUNCHER_CRED=") {
                break PathBuf::from(p);
            }
        };
        // Keep draining stderr so the cluster never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Cluster { child, cred, dir, netns, bridge }
    }

    /// The nodes' subnet as a CIDR (`10.77.N.0/24`), with namespaces.
    pub fn subnet(&self) -> Option<String> {
        let (_, gw) = self.bridge.as_ref()?;
        let (net, _) = gw.rsplit_once('.')?;
        Some(format!("{net}.0/24"))
    }

    /// Bytes node `i` has sent and received over its veth so far, with namespaces.
    pub fn node_traffic(&self, i: usize) -> Option<(u64, u64)> {
        let (bridge, _) = self.bridge.as_ref()?;
        let (rx, tx) = launcher::up::netns::host_veth_traffic(bridge, i).expect("veth counters");
        Some((rx, tx))
    }

    /// Run the CLI with this cluster's credential.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[])
    }

    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin());
        c.args(args).env("LAUNCHER_CRED", &self.cred).stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run launcher")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("valid JSON")
    }

    /// Wait until a job is terminal; returns its JSON.
    pub fn wait_job(&self, id: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.json(&["show", id, "--json"]);
            let st = j["state"].as_str().unwrap().to_string();
            if ["Succeeded", "Failed", "Cancelled"].contains(&st.as_str()) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} still {st} after {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn controller_dir(&self) -> PathBuf {
        self.dir.path().join("controller")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

impl Cluster {
    /// `launcher submit --parsable ARGS`; returns the job id.
    pub fn submit(&self, args: &[&str]) -> String {
        let mut full = vec!["submit", "--parsable"];
        full.extend_from_slice(args);
        let out = self.cli(&full);
        assert!(out.status.success(), "submit {args:?} failed: {}", stderr(&out));
        stdout(&out).trim().to_string()
    }

    /// `launcher show ID --json`.
    pub fn show(&self, id: &str) -> serde_json::Value {
        self.json(&["show", id, "--json"])
    }

    /// Poll `show` until `pred` holds; returns that JSON.
    pub fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.show(id);
            if pred(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} never got {what} within {timeout:?}; now: {j}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Poll until the job is in `state` (e.g. `Running`).
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> serde_json::Value {
        self.wait_for(id, timeout, state, |j| j["state"] == state)
    }
}
