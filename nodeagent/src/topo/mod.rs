//! What this machine is, the way placement needs it: packages, NUMA nodes,
//! cores, PUs and caches from hwloc; GPUs from NVML (behind [`gpu::GpuSource`]);
//! NICs from sysfs (`/sys/class/net`, `/sys/class/infiniband`). Every device
//! carries its locality (nearest cpuset, NUMA nodes, and the chain of PCI
//! bridges above it, so "under the same PCIe switch" is a comparison).
//!
//! Discovery takes a [`Source`]: the live system, or an hwloc XML file plus a
//! sysfs directory plus a GPU list, so tests run on checked-in fixtures
//! (`nodeagent/tests/fixtures/<node>/`). The result is a plain serde
//! [`Topology`]: the hwloc handle never leaves [`hw`], so an API change in the
//! alpha `hwlocality` crate touches one file.

pub mod gpu;
#[cfg(feature = "hwloc")]
pub mod hw;
#[cfg(not(feature = "hwloc"))]
#[path = "hw_sysfs.rs"]
pub mod hw;
pub mod sysfs;

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A PCI address, parsed, so NVML's `00000000:3B:00.0` and hwloc's `0000:3b:00.0` compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PciAddr {
    /// PCI domain (segment).
    pub domain: u32,
    /// Bus.
    pub bus: u8,
    /// Device.
    pub dev: u8,
    /// Function.
    pub func: u8,
}

impl std::str::FromStr for PciAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a PCI address like 0000:3b:00.0");
        let (rest, func) = s.trim().rsplit_once('.').ok_or_else(bad)?;
        let mut parts = rest.rsplitn(3, ':');
        let dev = parts.next().ok_or_else(bad)?;
        let bus = parts.next().ok_or_else(bad)?;
        let domain = parts.next().unwrap_or("0");
        Ok(PciAddr {
            domain: u32::from_str_radix(domain, 16).map_err(|_| bad())?,
            bus: u8::from_str_radix(bus, 16).map_err(|_| bad())?,
            dev: u8::from_str_radix(dev, 16).map_err(|_| bad())?,
            func: u8::from_str_radix(func, 16).map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for PciAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.dev, self.func)
    }
}

/// Where a device sits relative to the CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locality {
    /// PUs of the nearest CPU-side object (what to pin a user of the device to).
    pub cpus: Vec<u32>,
    /// NUMA nodes of that object.
    pub numa: Vec<u32>,
    /// PCI bridges from the host bridge down to the device (hwloc ids); two
    /// devices share a PCIe switch when these share two or more entries.
    pub pci_path: Vec<u64>,
}

impl Locality {
    /// How many bridges two devices share (2+ = same PCIe switch, 1 = same host bridge).
    pub fn shared_bridges(&self, other: &Locality) -> usize {
        self.pci_path.iter().zip(&other.pci_path).take_while(|(a, b)| a == b).count()
    }
}

/// A processor package (socket).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// OS index.
    pub index: u32,
    /// CPU model, when known.
    pub model: String,
    /// Its PUs.
    pub cpus: Vec<u32>,
    /// Its NUMA nodes.
    pub numa: Vec<u32>,
}

/// A NUMA node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    /// OS index (as in `/sys/devices/system/node/nodeN`).
    pub index: u32,
    /// Local memory in bytes.
    pub memory_bytes: u64,
    /// PUs local to it.
    pub cpus: Vec<u32>,
    /// Package it belongs to.
    pub package: u32,
}

/// A physical core.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Core {
    /// Logical index (hwloc order: by package, then NUMA node, then core).
    pub index: u32,
    /// Package.
    pub package: u32,
    /// NUMA node (the first, if several).
    pub numa: u32,
    /// Its hardware threads (PU OS indices).
    pub pus: Vec<u32>,
}

/// A CPU cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cache {
    /// 1, 2, 3...
    pub level: u32,
    /// Size in bytes.
    pub size_bytes: u64,
    /// PUs sharing it.
    pub cpus: Vec<u32>,
}

/// A PCI device with its locality.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDevice {
    /// Address.
    pub addr: PciAddr,
    /// Class (`0x0302` 3D controller, `0x0200` Ethernet, `0x0207` InfiniBand...).
    pub class: u16,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// OS devices hwloc found on it (`nvml0`, `mlx5_0`, `eth0`...).
    pub os_devices: Vec<String>,
    /// Where it is.
    pub locality: Locality,
}

/// A GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// NVML index (PCI bus order), the number `CUDA_VISIBLE_DEVICES` takes with `CUDA_DEVICE_ORDER=PCI_BUS_ID`.
    pub index: u32,
    /// Model.
    pub name: String,
    /// `GPU-...` UUID.
    pub uuid: String,
    /// PCI address.
    pub pci: Option<PciAddr>,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// NVLink peers (GPU indices).
    pub nvlink_peers: Vec<u32>,
    /// Where it is (from hwloc by PCI address; NUMA from NVML when hwloc does not know it).
    pub locality: Locality,
}

/// What kind of network a NIC is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NicKind {
    /// Ethernet (possibly with RoCE).
    Ethernet,
    /// InfiniBand HCA.
    InfiniBand,
    /// AWS Elastic Fabric Adapter.
    Efa,
}

impl NicKind {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            NicKind::Ethernet => "eth",
            NicKind::InfiniBand => "ib",
            NicKind::Efa => "efa",
        }
    }
}

/// A network interface: a PCI function with a netdev, an RDMA device, or both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Display name: the netdev, else the RDMA device.
    pub name: String,
    /// Kernel network interface (`eth0`, `ib0`), if any.
    pub netdev: Option<String>,
    /// RDMA device (`mlx5_0`, `rdmap19s0`), if any.
    pub rdma: Option<String>,
    /// Kernel driver.
    pub driver: String,
    /// Kind.
    pub kind: NicKind,
    /// Link speed in Mb/s, when known.
    pub speed_mbps: Option<u64>,
    /// PCI address, when it is a PCI device.
    pub pci: Option<PciAddr>,
    /// Where it is.
    pub locality: Locality,
}

impl Nic {
    /// Whether it can do RDMA (verbs or EFA).
    pub fn rdma_capable(&self) -> bool {
        self.rdma.is_some()
    }
}

/// The node, as placement sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Host name hwloc recorded (empty if none).
    pub hostname: String,
    /// Packages.
    pub packages: Vec<Package>,
    /// NUMA nodes.
    pub numa: Vec<NumaNode>,
    /// Cores in logical order.
    pub cores: Vec<Core>,
    /// CPU caches.
    pub caches: Vec<Cache>,
    /// PCI devices.
    pub pci: Vec<PciDevice>,
    /// GPUs in index order.
    pub gpus: Vec<Gpu>,
    /// NICs (physical only: loopback and virtual devices are left out).
    pub nics: Vec<Nic>,
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// hwloc could not load or build the topology.
    #[error("hwloc cannot {what}{}: {detail}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Hwloc {
        /// What we asked hwloc to do.
        what: &'static str,
        /// The XML file, if one was given.
        path: Option<PathBuf>,
        /// hwloc's error text.
        detail: String,
    },
    /// A GPU list file could not be read.
    #[error("cannot read the GPU list {}: {source}", path.display())]
    GpuFile {
        /// The file.
        path: PathBuf,
        /// The I/O or JSON error.
        #[source]
        source: std::io::Error,
    },
    /// A GPU list file is not valid JSON of the expected shape.
    #[error("GPU list {} is not a JSON array of GPUs (index, name, uuid, pci_bus_id, memory_mib, numa_node, nvlink_peers): {source}", path.display())]
    GpuJson {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// NVML answered but a query failed.
    #[error("NVML: {0}")]
    Nvml(String),
}

/// Where to discover from.
pub struct Source<'a> {
    /// hwloc XML file; None = this machine.
    pub xml: Option<&'a Path>,
    /// sysfs root (`/sys` live).
    pub sysfs: &'a Path,
    /// GPUs.
    pub gpus: &'a dyn gpu::GpuSource,
    /// Keep only NICs whose netdev exists in this process's network namespace
    /// (live discovery: `/sys/class/net` may show another namespace's devices).
    pub own_netns_only: bool,
}

/// Discover a node.
pub fn discover(src: &Source<'_>) -> Result<Topology, TopologyError> {
    let mut topo = hw::load(src.xml)?;
    // GPUs: NVML (or the fixture) says what they are; hwloc says where, matched by parsed PCI address.
    for g in src.gpus.gpus()? {
        let pci: Option<PciAddr> = g.pci_bus_id.parse().ok();
        let mut locality = pci.and_then(|a| topo.pci.iter().find(|d| d.addr == a)).map(|d| d.locality.clone());
        if locality.is_none() {
            if let Some(n) = g.numa_node.and_then(|n| topo.numa.iter().find(|x| x.index == n)) {
                locality = Some(Locality { cpus: n.cpus.clone(), numa: vec![n.index], pci_path: vec![] });
            }
        }
        topo.gpus.push(Gpu {
            index: g.index,
            name: g.name,
            uuid: g.uuid,
            pci,
            memory_mib: g.memory_mib,
            nvlink_peers: g.nvlink_peers,
            locality: locality.unwrap_or_default(),
        });
    }
    topo.gpus.sort_by_key(|g| g.index);
    let mut nics = sysfs::nics(src.sysfs);
    if src.own_netns_only {
        nics.retain(|n| n.netdev.as_deref().is_none_or(sysfs::in_own_netns));
    }
    for n in &mut nics {
        if let Some(d) = n.pci.and_then(|a| topo.pci.iter().find(|d| d.addr == a)) {
            n.locality = d.locality.clone();
        }
    }
    topo.nics = nics;
    Ok(topo)
}

impl Topology {
    /// Every PU, ascending.
    pub fn pus(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.cores.iter().flat_map(|c| c.pus.iter().copied()).collect();
        v.sort_unstable();
        v
    }

    /// NUMA nodes holding any of `cpus`.
    pub fn numa_of(&self, cpus: &[u32]) -> Vec<u32> {
        self.numa.iter().filter(|n| n.cpus.iter().any(|c| cpus.contains(c))).map(|n| n.index).collect()
    }

    /// One-line summary: `2 packages, 4 NUMA, 32 cores, 64 PUs, 256 GiB, 0 GPUs, NICs: ens2f0(eth)`.
    pub fn summary(&self) -> String {
        let mem: u64 = self.numa.iter().map(|n| n.memory_bytes).sum();
        let nics: Vec<String> = self.nics.iter().map(|n| format!("{}({})", n.name, n.kind.as_str())).collect();
        format!(
            "{} package(s), {} NUMA node(s), {} cores, {} PUs, {} GiB, {} GPU(s), NICs: {}",
            self.packages.len(),
            self.numa.len(),
            self.cores.len(),
            self.pus().len(),
            mem >> 30,
            self.gpus.len(),
            if nics.is_empty() { "none".into() } else { nics.join(" ") }
        )
    }

    /// A readable tree (what `nodeagent inventory` prints).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.summary());
        for p in &self.packages {
            let _ = writeln!(s, "Package {}  {}  cpus {}", p.index, p.model, cpulist(&p.cpus));
            for n in self.numa.iter().filter(|n| n.package == p.index) {
                let cores = self.cores.iter().filter(|c| c.numa == n.index).count();
                let _ = writeln!(
                    s,
                    "  NUMA {}  {} GiB  {} cores  cpus {}",
                    n.index,
                    n.memory_bytes >> 30,
                    cores,
                    cpulist(&n.cpus)
                );
                for g in self.gpus.iter().filter(|g| g.locality.numa.first() == Some(&n.index)) {
                    let _ = writeln!(
                        s,
                        "    GPU {}  {}  {}  {} MiB  pci {}{}",
                        g.index,
                        g.name,
                        g.uuid,
                        g.memory_mib,
                        g.pci.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
                        if g.nvlink_peers.is_empty() {
                            String::new()
                        } else {
                            format!("  nvlink {}", cpulist(&g.nvlink_peers))
                        }
                    );
                }
                for nic in self.nics.iter().filter(|x| x.locality.numa.first() == Some(&n.index)) {
                    let _ = writeln!(s, "    NIC {}", nic_line(nic));
                }
            }
            let mut l3: Vec<&Cache> = self.caches.iter().filter(|c| c.level == 3).collect();
            l3.retain(|c| c.cpus.iter().all(|x| p.cpus.contains(x)));
            for c in l3 {
                let _ = writeln!(s, "  L3 {} MiB  cpus {}", c.size_bytes >> 20, cpulist(&c.cpus));
            }
        }
        for g in self.gpus.iter().filter(|g| g.locality.numa.is_empty()) {
            let _ = writeln!(s, "GPU {}  {}  {} (locality unknown)", g.index, g.name, g.uuid);
        }
        for nic in self.nics.iter().filter(|x| x.locality.numa.is_empty()) {
            let _ = writeln!(s, "NIC {} (locality unknown)", nic_line(nic));
        }
        s
    }
}

fn nic_line(n: &Nic) -> String {
    let mut s = format!("{}  {}  driver {}", n.name, n.kind.as_str(), n.driver);
    if let (Some(r), Some(_)) = (&n.rdma, &n.netdev) {
        let _ = write!(s, "  rdma {r}");
    }
    if let Some(sp) = n.speed_mbps {
        let _ = write!(s, "  {} Gb/s", sp / 1000);
    }
    if let Some(a) = n.pci {
        let _ = write!(s, "  pci {a}");
    }
    s
}

/// Linux cpulist text (`0-3,8,10-11`) of a set of numbers.
pub fn cpulist(cpus: &[u32]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j == i {
            let _ = write!(out, "{}", v[i]);
        } else {
            let _ = write!(out, "{}-{}", v[i], v[j]);
        }
        i = j + 1;
    }
    out
}

/// Parse Linux cpulist text (`0-3,8`); the inverse of [`cpulist`].
pub fn parse_cpulist(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("{s:?} is not a cpulist like 0-3,8");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_from_nvml_and_hwloc_compare_equal() {
        let a: PciAddr = "00000000:3B:00.0".parse().unwrap();
        let b: PciAddr = "0000:3b:00.0".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "0000:3b:00.0");
        assert!("3b:00".parse::<PciAddr>().is_err());
    }

    #[test]
    fn cpulists_round_trip() {
        assert_eq!(cpulist(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(parse_cpulist("0-3,8,10-11").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(cpulist(&[]), "");
    }
}
