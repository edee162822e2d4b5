//! NICs from a sysfs tree: `class/net/*` (network interfaces) and
//! `class/infiniband/*` (RDMA devices: InfiniBand HCAs, RoCE NICs, EFA), merged
//! by PCI address. The PCI address is the last `DDDD:BB:DD.F` component of the
//! device's resolved sysfs path, which works for virtio NICs too (their
//! `device` is a virtio bus device under the PCI function). Virtual
//! interfaces (`/devices/virtual/`) are left out.

use super::{Locality, Nic, NicKind, PciAddr};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Amazon's PCI vendor id; EFA device ids are 0xefa0..0xefaf.
const AMAZON: u16 = 0x1d0f;

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn hex16(p: &Path) -> Option<u16> {
    read_trim(p).and_then(|s| u16::from_str_radix(s.trim_start_matches("0x"), 16).ok())
}

/// The last PCI address in a resolved device path.
fn pci_in_path(p: &Path) -> Option<PciAddr> {
    p.components().filter_map(|c| c.as_os_str().to_str()).filter_map(|c| c.parse::<PciAddr>().ok()).next_back()
}

fn driver(dev: &Path) -> String {
    if let Some(d) = read_trim(&dev.join("uevent"))
        .and_then(|u| u.lines().find_map(|l| l.strip_prefix("DRIVER=").map(str::to_string)))
    {
        return d;
    }
    std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<(String, PathBuf)> =
        rd.filter_map(Result::ok).map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect();
    v.sort();
    v
}

/// `"100 Gb/sec (4X EDR)"` → 100000 Mb/s.
fn parse_rate(s: &str) -> Option<u64> {
    let mut it = s.split_whitespace();
    let n: f64 = it.next()?.parse().ok()?;
    match it.next()? {
        "Gb/sec" => Some((n * 1000.0) as u64),
        "Mb/sec" => Some(n as u64),
        _ => None,
    }
}

#[derive(Default)]
struct Partial {
    netdev: Option<String>,
    rdma: Option<String>,
    driver: String,
    vendor: Option<u16>,
    device: Option<u16>,
    speed: Option<u64>,
    link_layer: Option<String>,
    pci: Option<PciAddr>,
}

/// Every physical NIC under `sysfs`, sorted by name.
pub fn nics(sysfs: &Path) -> Vec<Nic> {
    // Keyed by PCI address (or by name for non-PCI devices).
    let mut by_key: BTreeMap<String, Partial> = BTreeMap::new();
    for (name, path) in entries(&sysfs.join("class/net")) {
        let real = std::fs::canonicalize(&path).unwrap_or(path.clone());
        if name == "lo" || real.components().any(|c| c.as_os_str() == "virtual") {
            continue;
        }
        let dev = path.join("device");
        if !dev.exists() {
            continue;
        }
        let pci = pci_in_path(&real);
        let key = pci.map(|a| a.to_string()).unwrap_or_else(|| name.clone());
        let p = by_key.entry(key).or_default();
        p.pci = pci;
        p.netdev.get_or_insert(name);
        p.driver = driver(&dev);
        p.vendor = p.vendor.or(hex16(&dev.join("vendor")));
        p.device = p.device.or(hex16(&dev.join("device")));
        p.speed =
            read_trim(&path.join("speed")).and_then(|s| s.parse::<i64>().ok()).filter(|&s| s > 0).map(|s| s as u64);
    }
    for (name, path) in entries(&sysfs.join("class/infiniband")) {
        let real = std::fs::canonicalize(&path).unwrap_or(path.clone());
        let pci = pci_in_path(&real);
        let key = pci.map(|a| a.to_string()).unwrap_or_else(|| name.clone());
        let p = by_key.entry(key).or_default();
        let dev = path.join("device");
        p.pci = pci;
        p.rdma = Some(name);
        let d = driver(&dev);
        if !d.is_empty() {
            p.driver = d;
        }
        p.vendor = p.vendor.or(hex16(&dev.join("vendor")));
        p.device = p.device.or(hex16(&dev.join("device")));
        if let Some(r) = read_trim(&path.join("ports/1/rate")).and_then(|r| parse_rate(&r)) {
            p.speed = Some(p.speed.unwrap_or(0).max(r));
        }
        p.link_layer = read_trim(&path.join("ports/1/link_layer"));
    }
    let mut out: Vec<Nic> = by_key
        .into_values()
        .map(|p| {
            let efa = p.driver == "efa" || (p.vendor == Some(AMAZON) && p.device.is_some_and(|d| d & 0xfff0 == 0xefa0));
            let kind = if efa {
                NicKind::Efa
            } else if p.rdma.is_some() && p.link_layer.as_deref() == Some("InfiniBand") {
                NicKind::InfiniBand
            } else {
                NicKind::Ethernet
            };
            Nic {
                name: p.netdev.clone().or(p.rdma.clone()).unwrap_or_default(),
                netdev: p.netdev,
                rdma: p.rdma,
                driver: p.driver,
                kind,
                speed_mbps: p.speed,
                pci: p.pci,
                locality: Locality::default(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Whether a network interface of this name exists in our network namespace.
pub fn in_own_netns(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else { return false };
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100 Gb/sec (4X EDR)"), Some(100_000));
        assert_eq!(parse_rate("2.5 Gb/sec (1X SDR)"), Some(2500));
        assert_eq!(parse_rate("garbage"), None);
    }

    #[test]
    fn pci_from_a_virtio_path() {
        let p = Path::new("/sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0");
        assert_eq!(pci_in_path(p).unwrap().to_string(), "0000:00:03.0");
    }
}
