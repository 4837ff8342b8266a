//! fleet firmware for QEMU's mps2-an386 (Cortex-M4 at 25 MHz, LAN9118 Ethernet).
//!
//! The image the HIL runs: boot → read the identity bundle from its flash slot (placed there
//! by `fleet-provision` output through QEMU's `-device loader`) → DHCP → mutual TLS to the
//! gateway → MQTT telemetry and commands, reconnecting with backoff and full jitter forever.
//! Logs go to the host over semihosting, one line per event, prefixed `fleet:`.
#![no_std]
#![no_main]

mod lan9118;
mod log;
mod measure;
mod rng;
mod time;

use core::sync::atomic::{AtomicBool, Ordering};

use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Stack, StackResources};
use fleet_firmware::board::{Board, Resources};
use fleet_firmware::bundle::{self, Bundle, BundleError};
use fleet_firmware::device::{Buffers, MAX_PAYLOAD};
use fleet_firmware::outbox::Outbox;
use fleet_firmware::slots::SlotStore;
use rand_core::RngCore;
use static_cell::StaticCell;

use crate::log::fatal;

/// Identity slots, as `fleet-provision`'s board table has them for qemu-mps2-an386.
const SLOT_A: usize = 0x003F_0000;
const SLOT_B: usize = 0x003F_8000;
const SLOT_LEN: usize = 0x8000;

fn slot(addr: usize) -> &'static [u8] {
    // SAFETY: the slots are the last 64 KiB of SSRAM1, outside the image (memory.x ends FLASH
    // below them); the firmware writes them only through `FlashSlots`, never while a bundle
    // parsed from the slot being written is in use.
    unsafe { core::slice::from_raw_parts(addr as *const u8, SLOT_LEN) }
}

/// The identity slots. On mps2-an386 "flash" is SSRAM, so writing is a copy (emulation
/// only; a real board erases and programs its flash sectors here).
struct FlashSlots;

const SLOTS: [usize; 2] = [SLOT_A, SLOT_B];

impl SlotStore for FlashSlots {
    fn read(&self, slot: usize) -> &[u8] {
        self::slot(SLOTS[slot & 1])
    }

    fn write(&mut self, slot: usize, bytes: &[u8]) -> bool {
        if bytes.len() > SLOT_LEN {
            return false;
        }
        let base = SLOTS[slot & 1] as *mut u8;
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: inside the slot (checked above), which nothing else borrows now.
            unsafe { core::ptr::write_volatile(base.add(i), *b) };
        }
        true
    }

    fn erase(&mut self, slot: usize) -> bool {
        let base = SLOTS[slot & 1] as *mut u8;
        for i in 0..64 {
            // SAFETY: the first bytes of the slot: the header becomes invalid.
            unsafe { core::ptr::write_volatile(base.add(i), 0xff) };
        }
        true
    }
}

/// The emulated board for the shared loop: semihosting log, memory-mapped slots, and the
/// handshake measurement.
struct Qemu {
    connecting: Option<measure::Mark>,
}

impl Board for Qemu {
    const NAME: &'static str = "qemu-mps2-an386";

    fn log(&mut self, line: core::fmt::Arguments<'_>) {
        cortex_m_semihosting::hprintln!("{}", line);
    }

    fn identity(&self) -> Result<(usize, Bundle<'static>), BundleError> {
        bundle::newest(slot(SLOT_A), slot(SLOT_B))
    }

    fn tcp_connected(&mut self) {
        self.connecting = Some(measure::mark());
    }

    fn session_accepted(&mut self) {
        if let Some(m) = self.connecting.take() {
            log!(
                "measure: handshake+connect busy {} ns (instructions under -icount shift=0), peak stack {} bytes",
                measure::busy_since(m),
                measure::peak_stack()
            );
        }
    }

    fn telemetry_note(&mut self, out: &mut dyn core::fmt::Write) {
        let now = time::now_ns().max(1);
        let _ = write!(
            out,
            " (core busy {}% since boot)",
            (now.saturating_sub(measure::idle_ns()) * 100) / now
        );
    }
}

/// Emulation only: QEMU has no TRNG, so the generator is seeded from the bundle's per-device
/// seed and the LAN9118 free-running counter. Real boards use their hardware TRNG.
fn emulation_rng(bundle: &Bundle<'_>) -> rng::EmulationRng {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"fleet qemu-mps2-an386 emulation rng");
    h.update(bundle.seed.map_or(&[][..], |s| &s[..]));
    // SAFETY: FREE_RUN (0x9c) is a read-only counter register of the LAN9118.
    let free_run = unsafe { core::ptr::read_volatile((lan9118::BASE + 0x9c) as *const u32) };
    h.update(free_run.to_le_bytes());
    rng::EmulationRng::new(h.finalize().into())
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, lan9118::Lan9118>) -> ! {
    runner.run().await
}

static NET: StaticCell<StackResources<3>> = StaticCell::new();
static TLS: StaticCell<Buffers> = StaticCell::new();
/// QoS 1 telemetry kept across reconnects (4 messages: the RAM budget is 40 KiB).
static OUTBOX: StaticCell<Outbox<4, MAX_PAYLOAD>> = StaticCell::new();
static TCP_RX: StaticCell<[u8; 2048]> = StaticCell::new();
static TCP_TX: StaticCell<[u8; 2048]> = StaticCell::new();

static EXECUTOR: StaticCell<embassy_executor::raw::Executor> = StaticCell::new();

/// Set when a task is woken (embassy calls [`pender`]); the executor loop sleeps only while
/// it is clear.
static PENDED: AtomicBool = AtomicBool::new(false);

/// embassy's pender for the one executor: a task was woken, from a task or an interrupt.
#[export_name = "__pender"]
fn pender(_context: *mut ()) {
    PENDED.store(true, Ordering::Release);
}

/// The executor loop, counting the time spent asleep so the HIL can report CPU-busy time per
/// handshake. It sleeps in WFI, not WFE as embassy's own loop: QEMU runs WFE as a no-op, so a
/// WFE loop spins, and the executor polls of that spinning counted as work — about 3 M
/// instructions per handshake, varying with the network's timing. Interrupts are masked from the
/// check of [`PENDED`] through the WFI, so a wake in between is not lost: a pending interrupt
/// ends WFI even while masked, and is taken as soon as they are unmasked.
#[cortex_m_rt::entry]
fn entry() -> ! {
    measure::paint_stack();
    let executor = EXECUTOR.init(embassy_executor::raw::Executor::new(core::ptr::null_mut()));
    if executor
        .spawner()
        .spawn(main_task(executor.spawner()))
        .is_err()
    {
        fatal("main task")
    }
    loop {
        // SAFETY: polled only from this loop, on this one thread.
        unsafe { executor.poll() };
        cortex_m::interrupt::free(|_| {
            if !PENDED.swap(false, Ordering::AcqRel) {
                let asleep = time::now_ns();
                cortex_m::asm::wfi();
                measure::add_idle(time::now_ns().saturating_sub(asleep));
            }
        });
    }
}

#[embassy_executor::task]
async fn main_task(spawner: Spawner) {
    let Some(mut core) = cortex_m::Peripherals::take() else {
        fatal("core peripherals taken twice")
    };
    time::init(&mut core.SYST);
    log!(
        "boot qemu-mps2-an386 fleet-firmware {}",
        env!("CARGO_PKG_VERSION")
    );

    let (bundle, gateway) =
        match fleet_firmware::board::boot_identity(&mut Qemu { connecting: None }) {
            Ok(found) => found,
            Err(what) => fatal(what),
        };
    log!("WARNING: emulation RNG seeded from the bundle's per-device seed; real boards use their hardware TRNG");
    let mut rng = emulation_rng(&bundle);

    // SAFETY: the LAN9118 at BASE belongs to this driver alone.
    let eth = match unsafe { lan9118::Lan9118::new(lan9118::BASE) } {
        Ok(eth) => eth,
        Err(e) => {
            log!("LAN9118: {e:?}");
            fatal("no Ethernet")
        }
    };
    let mac = eth.mac();
    log!(
        "LAN9118 id {:#010x} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        eth.id_rev(),
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    let (stack, runner) = embassy_net::new(
        eth,
        embassy_net::Config::dhcpv4(Default::default()),
        NET.init(StackResources::new()),
        rng.next_u64(),
    );
    if spawner.spawn(net_task(runner)).is_err() {
        fatal("network task")
    }
    stack.wait_config_up().await;
    if let Some(cfg) = stack.config_v4() {
        log!("dhcp address {}", cfg.address);
    }
    run(stack, gateway, bundle.gateway_port, &mut rng).await
}

async fn run(
    stack: Stack<'static>,
    gateway: Ipv4Address,
    port: u16,
    rng: &mut rng::EmulationRng,
) -> ! {
    let resources = Resources {
        tls: TLS.init(Buffers::new()),
        outbox: OUTBOX.init(Outbox::new()),
        tcp_rx: TCP_RX.init([0; 2048]),
        tcp_tx: TCP_TX.init([0; 2048]),
    };
    let mut board = Qemu { connecting: None };
    fleet_firmware::board::run(&mut board, FlashSlots, stack, gateway, port, rng, resources).await
}
