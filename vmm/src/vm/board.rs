//! The devices of a VM: the legacy ports, the accounting device and the
//! virtio devices on their buses, each device's counters, and the thread
//! that runs the virtio devices' event loop.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use accounting::abi;
use accounting::ledger::Accounting;
use devices::acct::{AcctDevice, TagRegion};
use devices::bus::SharedDevice;
use devices::legacy::{AcpiPm, DebugPort, ExitPort, Serial, ACPI_PM_LEN, ACPI_PM_PORT, I8042};
use devices::virtio::block::{BlockDevice, BlockHandler, BlockLimitConfig, LimitLookup};
use devices::virtio::net::{NetDevice, NetHandler};
use devices::virtio::shared_tenant::SharedTenant;
use devices::virtio::vsock::{AgentConnect, UdsConnector, VsockConnector, VsockDevice, VsockHandler};
use devices::virtio::Charger;
use devices::virtio::{MmioTransport, VirtioDevice, MMIO_LEN};
use devices::Bus;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{host_err, kvm_err, virtio_slot, VmError, COM1_IRQ, I8042_IRQ};
use crate::agent::AgentHub;
use crate::charger::BooksCharger;
use crate::config::{ContainerLimit, DiskConfig, NetConfig, VsockConfig};
use crate::live_limits::{DeviceKind, LiveLimits, RegistryLookup};
use crate::probes::{lock, DeviceProbes};
use crate::sandbox::{self, Seccomp, ThreadKind};

/// The devices of a VM, on their buses.
pub(super) struct Devices {
    pub(super) pio: Bus,
    pub(super) mmio: Bus,
    pub(super) serial: Arc<Mutex<Serial>>,
    /// Event-loop subscribers of the virtio devices.
    pub(super) handlers: Vec<Subscriber>,
    /// Every device's counters.
    pub(super) probes: Arc<DeviceProbes>,
}

/// Everything `build_devices` needs.
pub(super) struct DeviceEnv<'a> {
    pub(super) vm: &'a VmFd,
    pub(super) with_irqchip: bool,
    pub(super) mem: &'a GuestMemoryMmap,
    pub(super) region: &'a Arc<TagRegion>,
    pub(super) acct: &'a Arc<Accounting>,
    pub(super) accounting: bool,
    pub(super) device_writer: usize,
    /// The agent's flow bindings, which the net devices consult.
    pub(super) agent: &'a Arc<AgentHub>,
    /// Per-container limits (`--limit`): the block keys on every disk, the
    /// net TX keys on every net device.
    pub(super) container_limits: &'a [ContainerLimit],
    /// The limits the API may change while the VM runs (with `--api-sock`).
    pub(super) live: Option<&'a Arc<LiveLimits>>,
}

/// An event-loop subscriber (one per virtio device).
pub(super) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Puts virtio device `dev` in slot `index`: its interrupt line (with an
/// irqchip) and its transport on the MMIO bus; its counters are read as
/// `name` of `kind`.
fn place_virtio<D: VirtioDevice + 'static>(
    env: &DeviceEnv<'_>,
    bus: &mut VirtioBus<'_>,
    index: usize,
    (name, kind): (String, &'static str),
    dev: D,
) -> Result<Arc<Mutex<D>>, VmError> {
    let (base, irq) = virtio_slot(index);
    if env.with_irqchip {
        env.vm
            .register_irqfd(dev.interrupt().irqfd(), irq)
            .map_err(kvm_err("connect a virtio interrupt"))?;
    }
    let dev = Arc::new(Mutex::new(dev));
    let transport = Arc::new(Mutex::new(MmioTransport::new(env.mem.clone(), Arc::clone(&dev))));
    bus.mmio
        .insert(Arc::clone(&transport) as SharedDevice, base, MMIO_LEN)?;
    bus.probes.add_virtio(name, kind, Arc::clone(&dev), transport);
    Ok(dev)
}

/// Where virtio devices go: the MMIO bus, and the list of counters.
struct VirtioBus<'a> {
    pub(super) mmio: &'a mut Bus,
    pub(super) probes: &'a mut DeviceProbes,
}

/// The charger of the device thread's ledger column.
fn device_charger(env: &DeviceEnv<'_>) -> Box<dyn Charger + Send> {
    let writer = env.accounting.then(|| env.acct.writer(env.device_writer));
    Box::new(BooksCharger::new(writer, env.with_irqchip))
}

/// VSOCK CONNECTOR: how guest connects reach the host. Port
/// [`devices::virtio::vsock::AGENT_PORT`] (1024) goes to `agent` (the
/// agent server hands out one end of a stream pair); any other port P to
/// `UDS_P` when `--vsock ...,uds=UDS` is set; the rest are refused.
pub fn vsock_connector(
    uds: Option<std::path::PathBuf>,
    agent: Option<AgentConnect>,
) -> Box<dyn VsockConnector> {
    Box::new(UdsConnector::new(uds, agent))
}

/// The vsock device of `--vsock`, if any, and its agent-port server.
pub(super) struct VsockSetup<'a> {
    pub(super) config: &'a VsockConfig,
    pub(super) agent: Option<AgentConnect>,
}

/// The limits of one kind of device (`kind`) and the registry lookup that
/// finds a tag's limit by its container's path: `None` when no limit has
/// keys for it and none can be set live; with the API (`env.live`) every
/// device has a lookup that takes up live changes.
/// The device shares the tenant buckets of its kind, `tenants`.
fn device_limits(
    env: &DeviceEnv<'_>,
    name: &str,
    kind: DeviceKind,
    tenants: &TenantBuckets,
) -> Option<(Vec<BlockLimitConfig>, Box<dyn LimitLookup>)> {
    let shared = tenants.of(kind);
    if let Some(live) = env.live {
        let (limits, lookup) = live.lookup(env.acct, name, kind);
        return Some((limits, Box::new(lookup.sharing(shared))));
    }
    let limits = kind.configs(env.container_limits);
    if limits.is_empty() {
        return None;
    }
    let lookup = RegistryLookup::fixed(env.acct, limits.iter().map(|l| l.path.clone()).collect());
    Some((limits, Box::new(lookup.sharing(shared))))
}

/// One set of tenant buckets per kind of device: the tenant limit caps the
/// whole VM (every disk together, every net device's TX together, ...).
/// The guest CPU limiter is one for the VM and keeps its tenant budget
/// itself ([`crate::cpu_limit`]): its set is never shared with anything.
#[derive(Default)]
struct TenantBuckets([SharedTenant; 5]);

impl TenantBuckets {
    fn of(&self, kind: DeviceKind) -> SharedTenant {
        let i = match kind {
            DeviceKind::Block => 0,
            DeviceKind::NetTx => 1,
            DeviceKind::NetRx => 2,
            DeviceKind::Vsock => 3,
            DeviceKind::Cpu => 4,
        };
        self.0[i].clone()
    }
}

/// Registers a limited handler's wake with the live limits, if any.
fn add_waker(
    env: &DeviceEnv<'_>,
    name: &str,
    waker: Option<std::io::Result<EventFd>>,
) -> Result<(), VmError> {
    if let (Some(live), Some(w)) = (env.live, waker) {
        live.add_waker(name, w.map_err(host_err("eventfd for live limit changes"))?);
    }
    Ok(())
}

/// The virtio devices: disks first, then network interfaces, then vsock, in
/// slot order (which is also their index for the guest's queue tag tables).
fn build_virtio(
    env: &DeviceEnv<'_>,
    disks: &[DiskConfig],
    nets: &[NetConfig],
    vsock: Option<VsockSetup<'_>>,
    bus: &mut VirtioBus<'_>,
) -> Result<Vec<Subscriber>, VmError> {
    let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    let mut subscribers: Vec<Subscriber> = Vec::with_capacity(disks.len() + nets.len());
    let tenants = TenantBuckets::default();
    for (i, disk) in disks.iter().enumerate() {
        let mut dev =
            BlockDevice::open(&disk.path, disk.read_only, &format!("rsrc-disk{i}")).map_err(|source| {
                VmError::Disk {
                    path: disk.path.display().to_string(),
                    source,
                }
            })?;
        // Requests may carry the guest's explicit tags (queue tag tables).
        dev.set_queue_tags(env.region.queue_tag_reader(), index(i));
        let limits = device_limits(env, &format!("disk{i}"), DeviceKind::Block, &tenants);
        let limited = limits.is_some();
        if let Some((limits, lookup)) = limits {
            // Validated with the configuration: a refusal here is a bug.
            dev.set_limits(&limits, lookup)
                .map_err(|e| VmError::Limits(e.to_string()))?;
        }
        let dev = place_virtio(env, bus, i, (format!("disk{i}"), "virtio-blk"), dev)?;
        let handler = if limited {
            BlockHandler::with_limits(dev, device_charger(env)).map_err(VmError::LimitTimer)?
        } else {
            BlockHandler::new(dev, device_charger(env))
        };
        add_waker(env, &format!("disk{i}"), handler.limit_waker())?;
        subscribers.push(Arc::new(Mutex::new(handler)));
    }
    for (j, net) in nets.iter().enumerate() {
        let i = disks.len() + j;
        let mut dev = NetDevice::open_tap(&net.tap, net.mac).map_err(|source| VmError::Net {
            tap: net.tap.clone(),
            source,
        })?;
        dev.set_queue_tags(env.region.queue_tag_reader(), index(i));
        dev.set_flow_bindings(Arc::clone(env.agent) as Arc<dyn devices::virtio::net::flow::FlowBindings>);
        let limits = device_limits(env, &format!("net{j}"), DeviceKind::NetTx, &tenants);
        let rx_limits = device_limits(env, &format!("net{j}-rx"), DeviceKind::NetRx, &tenants);
        let limited = limits.is_some() || rx_limits.is_some();
        // Validated with the configuration: a refusal here is a bug.
        if let Some((limits, lookup)) = limits {
            dev.set_tx_limits(&limits, lookup)
                .map_err(|e| VmError::Limits(e.to_string()))?;
        }
        if let Some((limits, lookup)) = rx_limits {
            dev.set_rx_limits(&limits, lookup)
                .map_err(|e| VmError::Limits(e.to_string()))?;
        }
        let dev = place_virtio(env, bus, i, (format!("net{j}"), "virtio-net"), dev)?;
        let handler = if limited {
            NetHandler::with_limits(dev, device_charger(env)).map_err(VmError::LimitTimer)?
        } else {
            NetHandler::new(dev, device_charger(env))
        };
        add_waker(env, &format!("net{j}"), handler.limit_waker())?;
        subscribers.push(Arc::new(Mutex::new(handler)));
    }
    if let Some(v) = vsock {
        let i = disks.len() + nets.len();
        let connector = vsock_connector(v.config.uds.clone(), v.agent);
        let mut dev =
            VsockDevice::new(v.config.cid, connector, v.config.uds.as_deref()).map_err(VmError::Vsock)?;
        dev.set_queue_tags(env.region.queue_tag_reader(), index(i));
        let limits = device_limits(env, "vsock0", DeviceKind::Vsock, &tenants);
        let limited = limits.is_some();
        if let Some((limits, lookup)) = limits {
            dev.set_limits(&limits, lookup)
                .map_err(|e| VmError::Limits(e.to_string()))?;
        }
        let dev = place_virtio(env, bus, i, ("vsock0".into(), "virtio-vsock"), dev)?;
        let handler = if limited {
            VsockHandler::with_limits(dev, device_charger(env)).map_err(VmError::LimitTimer)?
        } else {
            VsockHandler::new(dev, device_charger(env))
        };
        add_waker(env, "vsock0", handler.limit_waker())?;
        subscribers.push(Arc::new(Mutex::new(handler)));
    }
    Ok(subscribers)
}

pub(super) fn build_devices(
    env: &DeviceEnv<'_>,
    console: Box<dyn Write + Send>,
    disks: &[DiskConfig],
    nets: &[NetConfig],
    vsock: Option<VsockSetup<'_>>,
) -> Result<Devices, VmError> {
    let DeviceEnv {
        vm,
        with_irqchip,
        mem,
        region,
        acct,
        ..
    } = *env;
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("eventfd for the serial interrupt"))?;
    if with_irqchip {
        vm.register_irqfd(&irq, COM1_IRQ)
            .map_err(kvm_err("connect the serial interrupt"))?;
    }
    let serial = Arc::new(Mutex::new(Serial::new(irq, console)));
    let mut pio = Bus::new();
    pio.insert(serial.clone() as SharedDevice, u64::from(abi::COM1_PORT), 8)?;
    pio.insert(
        Arc::new(Mutex::new(DebugPort::default())),
        u64::from(abi::DEBUG_PORT),
        1,
    )?;
    pio.insert(Arc::new(Mutex::new(ExitPort)), u64::from(abi::EXIT_PORT), 4)?;
    let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("eventfd for the i8042 interrupt"))?;
    if with_irqchip {
        vm.register_irqfd(&kbd_irq, I8042_IRQ)
            .map_err(kvm_err("connect the i8042 interrupt"))?;
    }
    let mut probes = DeviceProbes::default();
    let i8042 = Arc::new(Mutex::new(I8042::new(kbd_irq)));
    pio.insert(Arc::clone(&i8042) as SharedDevice, 0x60, 5)?;
    probes.add(
        "i8042".into(),
        "i8042",
        Box::new(move || vec![("dropped".into(), lock(&i8042).dropped())]),
    );
    let rtc = Arc::new(Mutex::new(devices::legacy::Rtc::new()));
    pio.insert(Arc::clone(&rtc) as SharedDevice, 0x70, 2)?;
    probes.add(
        "rtc".into(),
        "cmos-rtc",
        Box::new(move || vec![("bad_time_writes".into(), lock(&rtc).bad_time_writes())]),
    );
    pio.insert(
        Arc::new(Mutex::new(AcpiPm)),
        u64::from(ACPI_PM_PORT),
        u64::from(ACPI_PM_LEN),
    )?;
    let mut mmio = Bus::new();
    let acct_dev = AcctDevice::new(mem.clone(), Arc::clone(region), Arc::clone(acct));
    mmio.insert(
        Arc::new(Mutex::new(acct_dev)),
        abi::ACCT_MMIO_BASE,
        abi::ACCT_MMIO_SIZE,
    )?;
    let handlers = build_virtio(
        env,
        disks,
        nets,
        vsock,
        &mut VirtioBus {
            mmio: &mut mmio,
            probes: &mut probes,
        },
    )?;
    Ok(Devices {
        pio,
        mmio,
        serial,
        handlers,
        probes: Arc::new(probes),
    })
}

/// Runs the virtio devices' event loop on a thread of its own until `stop`.
/// No thread is started when there are no devices.
/// The thread says on `filtered` once its filter is in.
pub(super) fn spawn_device_loop(
    handlers: Vec<Subscriber>,
    stop: Arc<AtomicBool>,
    seccomp: Seccomp,
    filtered: mpsc::Sender<()>,
) -> Result<Option<std::thread::JoinHandle<()>>, VmError> {
    if handlers.is_empty() {
        return Ok(None);
    }
    let mut em =
        EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().map_err(|e| VmError::Host {
            what: "create the device event loop",
            source: std::io::Error::other(format!("{e:?}")),
        })?;
    for h in handlers {
        em.add_subscriber(h);
    }
    let handle = std::thread::Builder::new()
        .name("rsrc-devices".into())
        .spawn(move || {
            sandbox::enter_or_exit(ThreadKind::Devices, seccomp);
            let _ = filtered.send(());
            while !stop.load(Ordering::Acquire) {
                if let Err(e) = em.run_with_timeout(DEVICE_LOOP_TIMEOUT_MS) {
                    log::error!("device event loop: {e:?}");
                    break;
                }
            }
        })
        .map_err(host_err("spawn the device thread"))?;
    Ok(Some(handle))
}

/// How often the device loop checks whether the VM has stopped, in ms.
const DEVICE_LOOP_TIMEOUT_MS: i32 = 20;
