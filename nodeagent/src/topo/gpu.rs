//! GPU discovery behind a trait, so the agent and its tests run without a GPU.
//!
//! [`Nvml`] asks the NVIDIA driver (libnvidia-ml is loaded at run time by
//! `nvml-wrapper`; a machine without it simply has no NVML GPUs).
//! [`FixtureGpus`] reads the same facts from a JSON file shipped with each
//! test fixture. Locality is not taken from here: discovery matches each GPU's
//! PCI address with hwloc's.

use super::TopologyError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a GPU source reports about one GPU (also the `gpus.json` fixture format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML index.
    pub index: u32,
    /// Model name.
    pub name: String,
    /// `GPU-...` UUID.
    pub uuid: String,
    /// PCI bus id in NVML's form (`00000000:3B:00.0`); any form `PciAddr` parses.
    pub pci_bus_id: String,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// NUMA node, when the driver knows it.
    pub numa_node: Option<u32>,
    /// Indices of GPUs reachable over an active NVLink.
    #[serde(default)]
    pub nvlink_peers: Vec<u32>,
}

/// Something that lists GPUs.
pub trait GpuSource: Send + Sync {
    /// The GPUs, in index order.
    fn gpus(&self) -> Result<Vec<GpuInfo>, TopologyError>;
    /// Where the list comes from, for logs.
    fn describe(&self) -> String;
}

/// No GPUs.
pub struct NoGpus(pub String);

impl GpuSource for NoGpus {
    fn gpus(&self) -> Result<Vec<GpuInfo>, TopologyError> {
        Ok(Vec::new())
    }
    fn describe(&self) -> String {
        format!("no GPUs ({})", self.0)
    }
}

/// GPUs from a JSON file (a list of [`GpuInfo`]).
pub struct FixtureGpus(pub PathBuf);

impl GpuSource for FixtureGpus {
    fn gpus(&self) -> Result<Vec<GpuInfo>, TopologyError> {
        let text = std::fs::read_to_string(&self.0)
            .map_err(|source| TopologyError::GpuFile { path: self.0.clone(), source })?;
        let mut v: Vec<GpuInfo> =
            serde_json::from_str(&text).map_err(|source| TopologyError::GpuJson { path: self.0.clone(), source })?;
        v.sort_by_key(|g| g.index);
        Ok(v)
    }
    fn describe(&self) -> String {
        format!("GPU list {}", self.0.display())
    }
}

/// GPUs from NVML.
pub struct Nvml(nvml_wrapper::Nvml);

impl Nvml {
    /// Load libnvidia-ml; an error means "no NVML here" (no driver, no GPU).
    pub fn init() -> Result<Self, String> {
        nvml_wrapper::Nvml::init().map(Nvml).map_err(|e| e.to_string())
    }
}

/// NVML if it loads, else no GPUs (with the reason, for the log).
pub fn nvml_or_none() -> Box<dyn GpuSource> {
    match Nvml::init() {
        Ok(n) => Box::new(n),
        Err(e) => Box::new(NoGpus(format!("NVML unavailable: {e}"))),
    }
}

/// NVLink links per GPU NVML may report (`NVML_NVLINK_MAX_LINKS`).
const MAX_NVLINKS: u32 = 18;

impl GpuSource for Nvml {
    fn gpus(&self) -> Result<Vec<GpuInfo>, TopologyError> {
        let e = |what: &str, err: nvml_wrapper::error::NvmlError| TopologyError::Nvml(format!("{what}: {err}"));
        let n = self.0.device_count().map_err(|x| e("device count", x))?;
        let mut out = Vec::new();
        let mut remote: Vec<Vec<super::PciAddr>> = Vec::new();
        for i in 0..n {
            let d = self.0.device_by_index(i).map_err(|x| e("device by index", x))?;
            let pci = d.pci_info().map_err(|x| e("PCI info", x))?;
            let mut peers = Vec::new();
            for l in 0..MAX_NVLINKS {
                let link = d.link_wrapper_for(l);
                if link.is_active().unwrap_or(false) {
                    if let Some(a) = link.remote_pci_info().ok().and_then(|p| p.bus_id.parse().ok()) {
                        peers.push(a);
                    }
                }
            }
            remote.push(peers);
            out.push(GpuInfo {
                index: i,
                name: d.name().unwrap_or_default(),
                uuid: d.uuid().unwrap_or_default(),
                pci_bus_id: pci.bus_id,
                memory_mib: d.memory_info().map(|m| m.total >> 20).unwrap_or(0),
                numa_node: d.numa_node_id().ok(),
                nvlink_peers: Vec::new(),
            });
        }
        // A link's far end is a GPU (direct NVLink) or an NVSwitch; only GPUs are peers here.
        let addrs: Vec<Option<super::PciAddr>> = out.iter().map(|g| g.pci_bus_id.parse().ok()).collect();
        for (i, peers) in remote.iter().enumerate() {
            let mut v: Vec<u32> = peers
                .iter()
                .filter_map(|a| addrs.iter().position(|x| x.as_ref() == Some(a)))
                .map(|j| j as u32)
                .collect();
            v.sort_unstable();
            v.dedup();
            out[i].nvlink_peers = v;
        }
        Ok(out)
    }
    fn describe(&self) -> String {
        "NVML".into()
    }
}
