//! The one file that talks to hwloc (through `hwlocality`): load a topology
//! (live or from XML, with I/O objects kept) and copy what placement needs
//! into our plain [`Topology`].

use super::{Cache, Core, Locality, NumaNode, Package, PciAddr, PciDevice, Topology, TopologyError};
use hwlocality::object::attributes::ObjectAttributes;
use hwlocality::object::types::ObjectType;
use hwlocality::object::TopologyObject;
use hwlocality::topology::builder::TypeFilter;
use std::path::Path;

fn bits<B>(set: Option<B>) -> Vec<u32>
where
    B: std::ops::Deref,
    B::Target: BitmapLike,
{
    set.map(|s| s.indices()).unwrap_or_default()
}

/// Bitmaps we read (cpusets and nodesets).
trait BitmapLike {
    fn indices(&self) -> Vec<u32>;
}

impl BitmapLike for hwlocality::cpu::cpuset::CpuSet {
    fn indices(&self) -> Vec<u32> {
        self.iter_set().map(|i| usize::from(i) as u32).collect()
    }
}

impl BitmapLike for hwlocality::memory::nodeset::NodeSet {
    fn indices(&self) -> Vec<u32> {
        self.iter_set().map(|i| usize::from(i) as u32).collect()
    }
}

fn err(what: &'static str, path: Option<&Path>, e: impl std::fmt::Display) -> TopologyError {
    TopologyError::Hwloc { what, path: path.map(Path::to_path_buf), detail: e.to_string() }
}

/// Load the CPU side and every PCI device with its locality.
pub fn load(xml: Option<&Path>) -> Result<Topology, TopologyError> {
    let mut b = hwlocality::Topology::builder()
        .with_io_type_filter(TypeFilter::KeepImportant)
        .map_err(|e| err("keep I/O objects", xml, e))?;
    if let Some(p) = xml {
        if !p.is_file() {
            return Err(err("read the XML topology", Some(p), "no such file"));
        }
        b = b.from_xml_file(p).map_err(|e| err("read the XML topology", Some(p), e))?;
    }
    let t = b.build().map_err(|e| err("build the topology", xml, e))?;
    Ok(copy(&t))
}

fn copy(t: &hwlocality::Topology) -> Topology {
    let mut out = Topology {
        hostname: t.root_object().info("HostName").map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        ..Default::default()
    };
    for p in t.objects_with_type(ObjectType::Package) {
        out.packages.push(Package {
            index: p.os_index().unwrap_or(p.logical_index()) as u32,
            model: p.info("CPUModel").map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            cpus: bits(p.cpuset()),
            numa: bits(p.nodeset()),
        });
    }
    if out.packages.is_empty() {
        // Some VMs and XML files have no package level: the machine is one.
        let r = t.root_object();
        out.packages.push(Package { index: 0, model: String::new(), cpus: bits(r.cpuset()), numa: bits(r.nodeset()) });
    }
    let package_of = |cpus: &[u32], pk: &[Package]| {
        pk.iter().find(|p| cpus.first().is_some_and(|c| p.cpus.contains(c))).map(|p| p.index).unwrap_or(0)
    };
    for n in t.objects_with_type(ObjectType::NUMANode) {
        let cpus = bits(n.cpuset());
        let memory_bytes = match n.attributes() {
            Some(ObjectAttributes::NUMANode(a)) => a.local_memory().map(|m| m.get()).unwrap_or(0),
            _ => 0,
        };
        let package = package_of(&cpus, &out.packages);
        out.numa.push(NumaNode { index: n.os_index().unwrap_or(0) as u32, memory_bytes, cpus, package });
    }
    for (i, c) in t.objects_with_type(ObjectType::Core).enumerate() {
        let pus = bits(c.cpuset());
        let numa = bits(c.nodeset()).first().copied().unwrap_or(0);
        out.cores.push(Core { index: i as u32, package: package_of(&pus, &out.packages), numa, pus });
    }
    if out.cores.is_empty() {
        // No core level (rare): every PU is its own core.
        for (i, pu) in t.objects_with_type(ObjectType::PU).enumerate() {
            let pus = bits(pu.cpuset());
            let numa = bits(pu.nodeset()).first().copied().unwrap_or(0);
            out.cores.push(Core { index: i as u32, package: package_of(&pus, &out.packages), numa, pus });
        }
    }
    for ty in [ObjectType::L1Cache, ObjectType::L2Cache, ObjectType::L3Cache] {
        let level = match ty {
            ObjectType::L1Cache => 1,
            ObjectType::L2Cache => 2,
            _ => 3,
        };
        for c in t.objects_with_type(ty) {
            let size_bytes = match c.attributes() {
                Some(ObjectAttributes::Cache(a)) => a.size().map(|s| s.get()).unwrap_or(0),
                _ => 0,
            };
            out.caches.push(Cache { level, size_bytes, cpus: bits(c.cpuset()) });
        }
    }
    for d in t.pci_devices() {
        let Some(ObjectAttributes::PCIDevice(a)) = d.attributes() else { continue };
        let addr = PciAddr { domain: a.domain() as u32, bus: a.bus_id(), dev: a.bus_device(), func: a.function() };
        let os_devices = d
            .io_children()
            .filter(|c| c.object_type() == ObjectType::OSDevice)
            .filter_map(|c| c.name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        out.pci.push(PciDevice {
            addr,
            class: a.class_id(),
            vendor: a.vendor_id(),
            device: a.device_id(),
            os_devices,
            locality: locality(d),
        });
    }
    out.pci.sort_by_key(|d| d.addr);
    out
}

fn locality(d: &TopologyObject) -> Locality {
    let near = d.first_non_io_ancestor();
    let mut pci_path: Vec<u64> = d
        .ancestors()
        .take_while(|a| a.object_type().is_io())
        .filter(|a| a.object_type() == ObjectType::Bridge)
        .map(|a| a.global_persistent_index())
        .collect();
    pci_path.reverse();
    Locality { cpus: bits(near.and_then(|n| n.cpuset())), numa: bits(near.and_then(|n| n.nodeset())), pci_path }
}
