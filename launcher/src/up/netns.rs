//! Per-node Linux network (and UTS) namespaces for `launcher up --nodes N`.
//!
//! When `launcher up` builds a whole cluster on one machine and runs as root with
//! `ip` (iproute2) and `unshare` (util-linux) available, every node agent gets its
//! own network namespace with its own IPv4 address, so that the cluster looks like
//! real separate hosts. The controller stays in the root namespace.
//!
//! Layout of one cluster (tag `lXXXXX`, 5 hex digits, unique per cluster, `P` = the
//! chosen 10.77.X prefix):
//!
//! ```text
//!   root namespace                                 namespace launcher-<tag>-<node_i>
//!   ───────────────────────────────────────       ─────────────────────────────────
//!   bridge lb<tag>   P.1/24  (controller)
//!     ├── veth lv<tag>n0  ◄──────────────────────► eth0  P.2/24, lo up, default via P.1
//!     ├── veth lv<tag>n1  ◄──────────────────────► eth0  P.3/24, ...
//!     └── ...
//! ```
//!
//! * Interface names stay within Linux's 15-character limit: the bridge is
//!   `lb<tag>` (8 chars), host-side veths `lv<tag>n<i>` (at most 12 chars here).
//! * The subnet `10.77.X.0/24` (X in 1..=254) is picked so that it does not clash
//!   with any address (or route) on the host. Subnet and tag allocation are
//!   serialized across processes by an `flock` on [`LOCK_PATH`], held until the
//!   bridge carries its address, so concurrent clusters (e.g. parallel tests) never
//!   collide.
//! * Ownership is recorded in `/run/launcher-netns/<tag>.pid` (our pid and process
//!   start time). Before creating a new cluster, clusters whose owner is gone are
//!   removed (namespaces, veths, bridge, pid file).
//! * [`NetnsCluster::command`] runs a program inside a node's network namespace and
//!   a fresh UTS namespace whose hostname is the node's name:
//!   `ip netns exec <ns> unshare --uts -- sh -c 'hostname "$0" && exec "$@"' <node> <program> <args..>`.
//! * Every namespace gets `/etc/netns/<ns>/hosts` naming all nodes, which `ip netns exec`
//!   mounts over /etc/hosts: node names resolve without DNS (MPI launchers look them up).
//! * [`NetnsCluster::teardown`] (also run on drop) deletes the veths, namespaces,
//!   bridge and pid file. Processes still running in a namespace keep it alive
//!   (isolated) until they exit; callers should stop node agents first.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};

/// Lock file serializing tag/subnet allocation across processes.
pub const LOCK_PATH: &str = "/run/launcher-netns.lock";
/// Directory holding `<tag>.pid` ownership records.
pub const PID_DIR: &str = "/run/launcher-netns";
/// Where iproute2 keeps named network namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Per-namespace files `ip netns exec` bind-mounts over /etc (we write `hosts`).
const ETC_NETNS_DIR: &str = "/etc/netns";
/// Prefix of all namespace names created here.
const NS_PREFIX: &str = "launcher-";
/// Linux interface name limit (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
/// First two octets of the private subnets used.
const SUBNET_A: u8 = 10;
const SUBNET_B: u8 = 77;
/// Node addresses are .2 ..= .254.
const MAX_NODES: usize = 253;
const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
/// Shell snippet run by `unshare --uts`: set the hostname, then exec the program.
const HOSTNAME_SCRIPT: &str = "hostname \"$0\" && exec \"$@\"";

static TAG_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether namespaces can be used here: running as root, `ip` and `unshare` on
/// PATH, and `ip netns list` works. Returns the reason otherwise.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".to_string());
    }
    let ip = find_on_path("ip").ok_or_else(|| "ip (iproute2) not found".to_string())?;
    find_on_path("unshare").ok_or_else(|| "unshare (util-linux) not found".to_string())?;
    if let Some(missing) = missing_capabilities() {
        return Err(format!("missing capabilities: {missing}"));
    }
    let mut cmd = Command::new(&ip);
    cmd.args(["netns", "list"]);
    run(&mut cmd).map_err(|e| format!("{e:#}"))?;
    Ok(())
}

/// Per-node state.
#[derive(Debug)]
struct Node {
    name: String,
    ns: String,
    veth: String,
    addr: Ipv4Addr,
}

/// A set of per-node network namespaces joined by a private bridge.
#[derive(Debug)]
pub struct NetnsCluster {
    tag: String,
    ip: PathBuf,
    unshare: PathBuf,
    bridge: String,
    gateway: Ipv4Addr,
    nodes: Vec<Node>,
    pid_file: PathBuf,
    torn_down: bool,
}

impl NetnsCluster {
    /// Create a bridge with address `<prefix>.1/24` and one namespace per node,
    /// node `i` (0-based) getting `<prefix>.(i+2)/24` on a veth whose namespace end
    /// is `eth0`, with `lo` up and a default route via the bridge address.
    ///
    /// On error everything created so far is removed again.
    pub fn create(node_names: &[String]) -> anyhow::Result<NetnsCluster> {
        validate_names(node_names)?;
        let ip = find_on_path("ip").ok_or_else(|| anyhow!("ip (iproute2) not found on PATH"))?;
        let unshare = find_on_path("unshare").ok_or_else(|| anyhow!("unshare (util-linux) not found on PATH"))?;
        fs::create_dir_all(PID_DIR).with_context(|| format!("creating {PID_DIR}"))?;

        let lock = FileLock::acquire(Path::new(LOCK_PATH))?;

        remove_stale_clusters(&ip);

        let tag = choose_tag()?;
        let bridge = format!("lb{tag}");
        let pid_file = Path::new(PID_DIR).join(format!("{tag}.pid"));
        write_pid_file(&pid_file)?;

        // From here on, dropping `cluster` cleans up whatever exists under our tag.
        let mut cluster = NetnsCluster {
            tag: tag.clone(),
            ip,
            unshare,
            bridge,
            gateway: Ipv4Addr::UNSPECIFIED,
            nodes: Vec::with_capacity(node_names.len()),
            pid_file,
            torn_down: false,
        };
        for (i, name) in node_names.iter().enumerate() {
            let veth = format!("lv{tag}n{i}");
            if veth.len() > IFNAME_MAX {
                bail!("interface name {veth} exceeds {IFNAME_MAX} characters");
            }
            cluster.nodes.push(Node {
                name: name.clone(),
                ns: format!("{NS_PREFIX}{tag}-{name}"),
                veth,
                addr: Ipv4Addr::UNSPECIFIED,
            });
        }

        let x = choose_subnet(&cluster.ip)?;
        cluster.gateway = Ipv4Addr::new(SUBNET_A, SUBNET_B, x, 1);
        for (i, node) in cluster.nodes.iter_mut().enumerate() {
            // validate_names guarantees i + 2 <= 254.
            let host = u8::try_from(i + 2).context("too many nodes")?;
            node.addr = Ipv4Addr::new(SUBNET_A, SUBNET_B, x, host);
        }

        let gw_cidr = format!("{}/24", cluster.gateway);
        cluster.ip_cmd(&["link", "add", &cluster.bridge, "type", "bridge"])?;
        cluster.ip_cmd(&["addr", "add", &gw_cidr, "dev", &cluster.bridge])?;
        // The subnet is now visibly taken: other processes may allocate.
        drop(lock);

        // Make sure bridged traffic is not pushed through iptables (best effort).
        if Path::new(BRIDGE_NF_CALL_IPTABLES).exists() {
            let _ = fs::write(BRIDGE_NF_CALL_IPTABLES, "0\n");
        }
        cluster.ip_cmd(&["link", "set", &cluster.bridge, "up"])?;

        for node in &cluster.nodes {
            let cidr = format!("{}/24", node.addr);
            let gw = cluster.gateway.to_string();
            cluster.ip_cmd(&["netns", "add", &node.ns])?;
            cluster.ip_cmd(&["link", "add", &node.veth, "type", "veth", "peer", "name", "eth0", "netns", &node.ns])?;
            cluster.ip_cmd(&["link", "set", &node.veth, "master", &cluster.bridge, "up"])?;
            cluster.ip_cmd(&["-n", &node.ns, "link", "set", "lo", "up"])?;
            cluster.ip_cmd(&["-n", &node.ns, "addr", "add", &cidr, "dev", "eth0"])?;
            cluster.ip_cmd(&["-n", &node.ns, "link", "set", "eth0", "up"])?;
            cluster.ip_cmd(&["-n", &node.ns, "route", "add", "default", "via", &gw])?;
        }
        // Node names resolve inside every namespace without DNS (the host's resolver
        // is usually unreachable from the bridge: every lookup of `node2` would wait
        // 20 s). `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts.
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for node in &cluster.nodes {
            hosts += &format!("{} {}\n", node.addr, node.name);
        }
        for node in &cluster.nodes {
            let dir = Path::new(ETC_NETNS_DIR).join(&node.ns);
            fs::create_dir_all(&dir)
                .and_then(|()| fs::write(dir.join("hosts"), &hosts))
                .with_context(|| format!("writing {}/hosts", dir.display()))?;
        }
        Ok(cluster)
    }

    /// The cluster's unique tag (part of every interface and namespace name).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Name of the bridge in the root namespace.
    pub fn bridge_name(&self) -> &str {
        &self.bridge
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The bridge address (controller side), e.g. 10.77.5.1.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Node `i`'s address. Panics if `i` is out of range.
    pub fn node_addr(&self, i: usize) -> Ipv4Addr {
        self.nodes[i].addr
    }

    /// Node `i`'s namespace name. Panics if `i` is out of range.
    pub fn ns_name(&self, i: usize) -> &str {
        &self.nodes[i].ns
    }

    /// Node `i`'s name (also its hostname inside [`command`](Self::command)).
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// A command running `program args..` inside node `i`'s network namespace and a
    /// fresh UTS namespace whose hostname is the node name. Program and arguments
    /// are passed as separate argv entries, never interpolated into a shell string.
    pub fn command(&self, i: usize, program: &Path, args: &[OsString]) -> Command {
        let node = &self.nodes[i];
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec"])
            .arg(&node.ns)
            .arg(&self.unshare)
            .args(["--uts", "--", "sh", "-c", HOSTNAME_SCRIPT])
            .arg(&node.name)
            .arg(program)
            .args(args);
        cmd
    }

    /// `(rx_bytes, tx_bytes)` of node `i`'s `eth0`.
    pub fn node_traffic(&self, i: usize) -> anyhow::Result<(u64, u64)> {
        let node = &self.nodes[i];
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec"]).arg(&node.ns).args([
            "cat",
            "/sys/class/net/eth0/statistics/rx_bytes",
            "/sys/class/net/eth0/statistics/tx_bytes",
        ]);
        let out = run(&mut cmd)?;
        let mut lines = out.lines().map(str::trim);
        let mut next = |what: &str| -> anyhow::Result<u64> {
            let s = lines.next().ok_or_else(|| anyhow!("missing {what} for {}: {out:?}", node.ns))?;
            s.parse::<u64>().with_context(|| format!("parsing {what} {s:?} for {}", node.ns))
        };
        let rx = next("rx_bytes")?;
        let tx = next("tx_bytes")?;
        Ok((rx, tx))
    }

    /// Delete the veths, namespaces, bridge and pid file. Idempotent; errors are
    /// logged to stderr.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        let nodes = self.nodes.iter().map(|n| (n.ns.clone(), n.veth.clone())).collect::<Vec<_>>();
        for (ns, veth) in &nodes {
            delete_link(&self.ip, veth);
            delete_netns(&self.ip, ns);
        }
        // Also catch anything carrying our tag that the node list doesn't cover.
        remove_tag_resources(&self.ip, &self.tag);
        if let Err(e) = fs::remove_file(&self.pid_file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                say!("netns teardown: removing {}: {e}", self.pid_file.display());
            }
        }
    }

    fn ip_cmd(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.ip);
        cmd.args(args);
        run(&mut cmd).with_context(|| format!("setting up network namespaces (cluster {})", self.tag))
    }
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        self.teardown()
    }
}

// ----------------------------------------------------------------------------
// helpers

/// Run a command, returning its stdout; on failure the error names the command
/// line, exit status and stderr.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let line = command_line(cmd);
    let out = cmd.stdin(std::process::Stdio::null()).output().with_context(|| format!("running `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(OsStr::to_string_lossy).collect::<Vec<_>>().join(" ")
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    // root's PATH normally has the sbin directories, but be lenient.
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(program))
        .find(|p| fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

/// Names of required capabilities missing from the effective set, if any.
fn missing_capabilities() -> Option<String> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    let missing = [(CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]
        .iter()
        .filter(|(bit, _)| caps & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>();
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn validate_names(names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        bail!("a namespace cluster needs at least one node");
    }
    if names.len() > MAX_NODES {
        bail!("at most {MAX_NODES} nodes fit in a /24 namespace cluster, got {}", names.len());
    }
    let mut seen = BTreeSet::new();
    for name in names {
        let ok = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with(['-', '.'])
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            bail!("invalid node name {name:?} for a namespace/hostname (use [A-Za-z0-9._-], at most 63 chars)");
        }
        if !seen.insert(name.as_str()) {
            bail!("duplicate node name {name:?}");
        }
    }
    Ok(())
}

/// Exclusive `flock` on a file; released when dropped (the file is closed).
struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &Path) -> anyhow::Result<FileLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        loop {
            // SAFETY: the fd is valid for the lifetime of `file`.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("flock {}", path.display()));
            }
        }
    }
}

/// Process start time (clock ticks since boot), field 22 of /proc/<pid>/stat.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces/parens; fields after the last ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    let pid = std::process::id();
    let start = process_start_time(pid).map(|s| s.to_string()).unwrap_or_default();
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{pid}\n{start}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Whether the owner recorded in a pid file is still running.
fn owner_alive(pid_file: &Path) -> bool {
    let Ok(text) = fs::read_to_string(pid_file) else {
        return false;
    };
    let mut lines = text.lines().map(str::trim);
    let Some(pid) = lines.next().and_then(|l| l.parse::<u32>().ok()) else {
        return false;
    };
    let Some(now_start) = process_start_time(pid) else {
        return false; // no such process
    };
    match lines.next().and_then(|l| l.parse::<u64>().ok()) {
        Some(recorded) => recorded == now_start, // differs: pid was reused
        None => true,
    }
}

fn is_tag(s: &str) -> bool {
    s.len() == 6 && s.starts_with('l') && s[1..].chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

fn list_dir(dir: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// Tags of all clusters visible on this host (namespaces, links, pid files).
fn existing_tags() -> BTreeSet<String> {
    let mut tags = BTreeSet::new();
    for ns in list_dir(NETNS_DIR) {
        if let Some(t) = ns.strip_prefix(NS_PREFIX).and_then(|r| r.get(..6)) {
            if is_tag(t) && ns.as_bytes().get(NS_PREFIX.len() + 6) == Some(&b'-') {
                tags.insert(t.to_string());
            }
        }
    }
    for link in list_dir("/sys/class/net") {
        let rest = link.strip_prefix("lb").or_else(|| link.strip_prefix("lv"));
        if let Some(t) = rest.and_then(|r| r.get(..6)) {
            if is_tag(t) {
                tags.insert(t.to_string());
            }
        }
    }
    for f in list_dir(PID_DIR) {
        if let Some(t) = f.strip_suffix(".pid") {
            if is_tag(t) {
                tags.insert(t.to_string());
            }
        }
    }
    tags
}

/// Remove clusters whose owning process is gone. Must run under the lock.
fn remove_stale_clusters(ip: &Path) {
    for tag in existing_tags() {
        let pid_file = Path::new(PID_DIR).join(format!("{tag}.pid"));
        if owner_alive(&pid_file) {
            continue;
        }
        remove_tag_resources(ip, &tag);
        if let Err(e) = fs::remove_file(&pid_file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                say!("netns: removing stale {}: {e}", pid_file.display());
            }
        }
    }
}

/// Delete every veth, namespace and bridge carrying `tag`.
fn remove_tag_resources(ip: &Path, tag: &str) {
    let veth_prefix = format!("lv{tag}n");
    for link in list_dir("/sys/class/net") {
        if link.starts_with(&veth_prefix) {
            delete_link(ip, &link);
        }
    }
    let ns_prefix = format!("{NS_PREFIX}{tag}-");
    for ns in list_dir(NETNS_DIR) {
        if ns.starts_with(&ns_prefix) {
            delete_netns(ip, &ns);
        }
    }
    delete_link(ip, &format!("lb{tag}"));
}

fn delete_link(ip: &Path, name: &str) {
    if !Path::new("/sys/class/net").join(name).exists() {
        return;
    }
    let mut cmd = Command::new(ip);
    cmd.args(["link", "del", name]);
    if let Err(e) = run(&mut cmd) {
        if Path::new("/sys/class/net").join(name).exists() {
            say!("netns teardown: {e:#}");
        }
    }
}

fn delete_netns(ip: &Path, name: &str) {
    let _ = fs::remove_dir_all(Path::new(ETC_NETNS_DIR).join(name));
    if !Path::new(NETNS_DIR).join(name).exists() {
        return;
    }
    let mut cmd = Command::new(ip);
    cmd.args(["netns", "del", name]);
    if let Err(e) = run(&mut cmd) {
        say!("netns teardown: {e:#}");
    }
}

/// Pick a tag ("l" + 5 hex digits, from pid and a counter) not used on the host.
/// Must run under the lock.
fn choose_tag() -> anyhow::Result<String> {
    let taken = existing_tags();
    let pid = std::process::id();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    for _ in 0..64 {
        let n = TAG_COUNTER.fetch_add(1, Ordering::Relaxed);
        // Mix pid, counter and time; keep 20 bits.
        let mut h = u64::from(pid)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(u64::from(n).wrapping_mul(0xBF58_476D_1CE4_E5B9))
            .wrapping_add(u64::from(nanos));
        h ^= h >> 31;
        h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 29;
        let tag = format!("l{:05x}", h & 0xF_FFFF);
        if !taken.contains(&tag) {
            return Ok(tag);
        }
    }
    bail!("could not find an unused namespace cluster tag")
}

/// IPv4 networks (address, prefix length) present on the host: interface addresses
/// and route destinations.
fn host_networks(ip: &Path) -> anyhow::Result<Vec<(Ipv4Addr, u8)>> {
    let mut nets = Vec::new();
    let mut cmd = Command::new(ip);
    cmd.args(["-o", "-4", "addr", "show"]);
    let addrs = run(&mut cmd)?;
    for line in addrs.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" {
                if let Some(net) = words.next().and_then(parse_cidr) {
                    nets.push(net);
                }
                break;
            }
        }
    }
    let mut cmd = Command::new(ip);
    cmd.args(["-4", "route", "show"]);
    if let Ok(routes) = run(&mut cmd) {
        for line in routes.lines() {
            if let Some(net) = line.split_whitespace().next().and_then(parse_cidr) {
                nets.push(net);
            }
        }
    }
    Ok(nets)
}

/// Parse "a.b.c.d/len" or "a.b.c.d" (as /32).
fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok()?),
        None => (s, 32),
    };
    let addr = addr.parse::<Ipv4Addr>().ok()?;
    (len <= 32).then_some((addr, len))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// Whether 10.77.x.0/24 clashes with a host network. Networks wider than /16
/// (e.g. a 10.0.0.0/8 route) are ignored: our /24 is more specific and wins.
fn subnet_conflicts(x: u8, nets: &[(Ipv4Addr, u8)]) -> bool {
    let cand = u32::from(Ipv4Addr::new(SUBNET_A, SUBNET_B, x, 0));
    nets.iter().any(|&(addr, len)| {
        let a = u32::from(addr);
        if len >= 24 {
            a & mask(24) == cand
        } else if len >= 16 {
            cand & mask(len) == a & mask(len)
        } else {
            false
        }
    })
}

/// Choose X for 10.77.X.0/24 not used on the host. Must run under the lock.
fn choose_subnet(ip: &Path) -> anyhow::Result<u8> {
    let nets = host_networks(ip)?;
    (1..=254u8)
        .find(|&x| !subnet_conflicts(x, &nets))
        .ok_or_else(|| anyhow!("no free 10.77.X.0/24 subnet for a namespace cluster"))
}

/// `(rx_bytes, tx_bytes)` of the root-namespace end of node `i`'s veth in the
/// cluster whose bridge is `bridge` (`lb<tag>`, as `launcher up` prints it).
/// What the node sends, this end receives: rx here is the node's tx. Needs no
/// namespace switch, so another process (a test) can read a running cluster's
/// counters.
pub fn host_veth_traffic(bridge: &str, i: usize) -> anyhow::Result<(u64, u64)> {
    let tag = bridge.strip_prefix("lb").ok_or_else(|| anyhow!("{bridge:?} is not a launcher bridge name (lb<tag>)"))?;
    let dir = Path::new("/sys/class/net").join(format!("lv{tag}n{i}")).join("statistics");
    let read = |what: &str| -> anyhow::Result<u64> {
        let p = dir.join(what);
        let s = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        s.trim().parse::<u64>().with_context(|| format!("parsing {} ({s:?})", p.display()))
    };
    Ok((read("rx_bytes")?, read("tx_bytes")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node{i}")).collect()
    }

    fn netns_list() -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "list"]);
        run(&mut cmd).unwrap()
    }

    fn listed(list: &str, ns: &str) -> bool {
        list.lines().any(|l| l.split_whitespace().next() == Some(ns))
    }

    #[test]
    fn pure_helpers() {
        assert!(is_tag("l0a3f9"));
        assert!(!is_tag("l0a3fg"));
        assert!(!is_tag("x0a3f9"));
        assert_eq!(parse_cidr("10.77.3.1/24"), Some((Ipv4Addr::new(10, 77, 3, 1), 24)));
        assert_eq!(parse_cidr("default"), None);
        let nets =
            [(Ipv4Addr::new(10, 77, 1, 1), 24), (Ipv4Addr::new(10, 0, 0, 1), 8), (Ipv4Addr::new(10, 77, 5, 9), 32)];
        assert!(subnet_conflicts(1, &nets));
        assert!(!subnet_conflicts(2, &nets));
        assert!(subnet_conflicts(5, &nets));
        assert!(subnet_conflicts(200, &[(Ipv4Addr::new(10, 77, 0, 0), 16)]));
        assert!(validate_names(&names(3)).is_ok());
        assert!(validate_names(&["a/b".to_string()]).is_err());
        assert!(validate_names(&["a".to_string(), "a".to_string()]).is_err());
        assert!(validate_names(&[]).is_err());
        assert!(validate_names(&names(254)).is_err());
        // Longest veth name for the largest cluster fits IFNAMSIZ.
        assert!(format!("lvl0a3f9n{}", MAX_NODES - 1).len() <= IFNAME_MAX);
    }

    #[test]
    fn run_error_names_command_and_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo oops >&2; exit 3"]);
        let err = format!("{:#}", run(&mut cmd).unwrap_err());
        assert!(err.contains("sh -c echo oops"), "{err}");
        assert!(err.contains("oops"), "{err}");
        assert!(err.contains('3'), "{err}");
    }

    #[test]
    fn two_node_cluster() {
        if let Err(reason) = available() {
            println!("SKIP: {reason}");
            return;
        }
        let mut c = NetnsCluster::create(&names(2)).expect("create cluster");
        let gw = c.gateway();
        assert_eq!(gw.octets()[..2], [10, 77]);
        assert_eq!(gw.octets()[3], 1);
        assert_eq!(c.node_addr(0), Ipv4Addr::new(10, 77, gw.octets()[2], 2));
        assert_eq!(c.node_addr(1), Ipv4Addr::new(10, 77, gw.octets()[2], 3));

        let list = netns_list();
        for i in 0..2 {
            assert!(listed(&list, c.ns_name(i)), "{} not in {list}", c.ns_name(i));
        }

        // Hostname inside the UTS namespace is the node name.
        let out = c.command(0, Path::new("sh"), &["-c".into(), "hostname".into()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node1");

        // Argument quoting: args with shell metacharacters arrive verbatim.
        let tricky = "a b;$(echo x)'\"";
        let out = c.command(1, Path::new("printf"), &["%s".into(), tricky.into()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), tricky);

        // Node 1 reaches the gateway (root namespace) over UDP.
        let (_, tx_before) = c.node_traffic(1).unwrap();
        let sock = UdpSocket::bind((gw, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = sock.local_addr().unwrap().port();
        let script = format!("echo hi > /dev/udp/{gw}/{port}");
        let status = c.command(1, Path::new("bash"), &["-c".into(), script.into()]).status().unwrap();
        assert!(status.success());
        let mut buf = [0u8; 64];
        let (n, from) = sock.recv_from(&mut buf).expect("datagram from node 1");
        assert_eq!(&buf[..n], b"hi\n");
        assert_eq!(from.ip(), std::net::IpAddr::V4(c.node_addr(1)));
        let (_, tx_after) = c.node_traffic(1).unwrap();
        assert!(tx_after > tx_before, "tx {tx_before} -> {tx_after}");

        let ns: Vec<String> = (0..2).map(|i| c.ns_name(i).to_string()).collect();
        let bridge = c.bridge_name().to_string();
        let pid_file = Path::new(PID_DIR).join(format!("{}.pid", c.tag()));
        assert!(pid_file.exists());
        // A process still running inside a namespace must not keep the veth/bridge.
        let mut sleeper = c.command(0, Path::new("sleep"), &["30".into()]).spawn().unwrap();
        c.teardown();
        c.teardown(); // idempotent
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(!Path::new("/sys/class/net").join(format!("lv{}n0", c.tag())).exists());
        let list = netns_list();
        for n in &ns {
            assert!(!listed(&list, n), "{n} still in {list}");
        }
        assert!(!Path::new("/sys/class/net").join(&bridge).exists());
        assert!(!pid_file.exists());
    }

    #[test]
    fn concurrent_clusters_are_distinct() {
        if let Err(reason) = available() {
            println!("SKIP: {reason}");
            return;
        }
        let handles: Vec<_> =
            (0..2).map(|_| std::thread::spawn(|| NetnsCluster::create(&names(2)).expect("create"))).collect();
        let clusters: Vec<NetnsCluster> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_ne!(clusters[0].tag(), clusters[1].tag());
        assert_ne!(clusters[0].gateway(), clusters[1].gateway());
        assert_ne!(clusters[0].ns_name(0), clusters[1].ns_name(0));
        let bridges: Vec<String> = clusters.iter().map(|c| c.bridge_name().to_string()).collect();
        drop(clusters);
        for b in bridges {
            assert!(!Path::new("/sys/class/net").join(b).exists());
        }
    }

    #[test]
    fn stale_cluster_is_removed() {
        if let Err(reason) = available() {
            println!("SKIP: {reason}");
            return;
        }
        // Forge a cluster owned by a dead process: create one, then rewrite its pid
        // file to name a pid that no longer exists, and leak it.
        let c = NetnsCluster::create(&names(1)).expect("create");
        let tag = c.tag().to_string();
        let ns = c.ns_name(0).to_string();
        let bridge = c.bridge_name().to_string();
        let pid_file = Path::new(PID_DIR).join(format!("{tag}.pid"));
        let mut child = Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        fs::write(&pid_file, format!("{dead_pid}\n0\n")).unwrap();
        std::mem::forget(c);

        let fresh = NetnsCluster::create(&names(1)).expect("create");
        assert!(!Path::new(NETNS_DIR).join(&ns).exists(), "stale {ns} left");
        assert!(!Path::new("/sys/class/net").join(&bridge).exists());
        assert!(!pid_file.exists());
        drop(fresh);
    }
}
