//! fleet firmware for NUCLEO-F767ZI: STM32F767 at 216 MHz, Ethernet through the on-board
//! LAN8742A PHY (RMII), the hardware TRNG, identity slots in the last two 256 KiB flash
//! sectors of single-bank mode (A at 0x08180000, B at 0x081C0000, where `fleet-provision …
//! --hex-board stm32f767zi` puts the bundle), logs over RTT (`probe-rs run` shows them).
#![no_std]
#![no_main]

use core::fmt::Write as _;

use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Ipv4Address, Stack, StackResources};
use embassy_stm32::eth::{Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::flash::Flash;
use embassy_stm32::peripherals::{ETH, ETH_SMA};
use embassy_stm32::rng::Rng;
use embassy_stm32::{bind_interrupts, eth, peripherals, rng, Config};
use embassy_time::{Duration, Instant, Timer};
use fleet_firmware::backoff::Backoff;
use fleet_firmware::bundle;
use fleet_firmware::device::{
    self, App, Buffers, Clock, Options, RotationEvent, Stats, MAX_PAYLOAD,
};
use fleet_firmware::outbox::Outbox;
use fleet_firmware::slots::{Outcome, SlotStore, Slots};
use fleet_firmware::Error;
use rtt_target::{rprintln, rtt_init_print};
use static_cell::StaticCell;

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    RNG => rng::InterruptHandler<peripherals::RNG>;
});

/// Identity slots, as `fleet-provision`'s board table has them for stm32f767zi.
const FLASH_BASE: usize = 0x0800_0000;
const SLOTS: [usize; 2] = [0x0818_0000, 0x081C_0000];
/// One flash sector per slot.
const SLOT_LEN: usize = 0x4_0000;
/// Failed connections of a renewed identity before rolling back.
const ROLLBACK_AFTER: u32 = 3;

macro_rules! log {
    ($($arg:tt)*) => {
        rprintln!("fleet: [{:>8}] {}", Instant::now().as_millis(), format_args!($($arg)*))
    };
}

fn slot(addr: usize) -> &'static [u8] {
    // SAFETY: the slots are flash sectors outside the image (memory.x ends before them), only
    // changed through `FlashSlots` while no bundle parsed from the changed slot is alive.
    unsafe { core::slice::from_raw_parts(addr as *const u8, SLOT_LEN) }
}

/// The identity slots in flash.
struct FlashSlots {
    flash: Flash<'static, embassy_stm32::flash::Blocking>,
}

impl SlotStore for FlashSlots {
    fn read(&self, slot: usize) -> &[u8] {
        self::slot(SLOTS[slot & 1])
    }

    fn write(&mut self, slot: usize, bytes: &[u8]) -> bool {
        let offset = (SLOTS[slot & 1] - FLASH_BASE) as u32;
        if bytes.len() > SLOT_LEN
            || self
                .flash
                .blocking_erase(offset, offset + SLOT_LEN as u32)
                .is_err()
        {
            return false;
        }
        // Program in whole write units; the tail is padded with the erased value.
        let unit = embassy_stm32::flash::WRITE_SIZE;
        let mut chunk = [0xffu8; 256];
        for (i, part) in bytes.chunks(256).enumerate() {
            chunk.fill(0xff);
            chunk[..part.len()].copy_from_slice(part);
            let len = part.len().div_ceil(unit) * unit;
            if self
                .flash
                .blocking_write(offset + (i * 256) as u32, &chunk[..len])
                .is_err()
            {
                return false;
            }
        }
        true
    }

    fn erase(&mut self, slot: usize) -> bool {
        let offset = (SLOTS[slot & 1] - FLASH_BASE) as u32;
        self.flash
            .blocking_erase(offset, offset + SLOT_LEN as u32)
            .is_ok()
    }
}

struct EmbassyClock;

impl Clock for EmbassyClock {
    fn now_ms(&self) -> u64 {
        Instant::now().as_millis()
    }

    async fn sleep_until(&self, at_ms: u64) {
        Timer::at(Instant::from_millis(at_ms)).await
    }
}

struct BoardApp {
    id: &'static str,
    slots: Slots<FlashSlots>,
}

struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl core::fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(core::fmt::Error)
        } else {
            Ok(())
        }
    }
}

impl App for BoardApp {
    fn telemetry(&mut self, seq: u32, out: &mut [u8]) -> usize {
        let mut w = SliceWriter { buf: out, len: 0 };
        let _ = write!(
            w,
            "{{\"seq\":{seq},\"uptime_ms\":{},\"board\":\"nucleo-f767zi\"}}",
            Instant::now().as_millis()
        );
        log!("telemetry seq={seq}");
        w.len
    }

    fn on_command(&mut self, topic: &str, payload: &[u8], reply: &mut [u8]) -> Option<usize> {
        log!(
            "command topic={topic} payload={}",
            core::str::from_utf8(payload).unwrap_or("<binary>")
        );
        let mut w = SliceWriter { buf: reply, len: 0 };
        let _ = write!(w, "{{\"ok\":true,\"device\":\"{}\",\"echo\":{}}}", self.id, payload.len());
        Some(w.len)
    }

    fn on_connected(&mut self) {
        log!("connected as {}", self.id);
        if let Outcome::Confirmed { slot } = self.slots.connected() {
            log!("rotation: confirmed the identity in slot {}", slot_name(slot));
        }
    }

    fn on_rotation(&mut self, event: RotationEvent<'_>) {
        match event {
            RotationEvent::Status { renew } => log!("rotation: status renew={renew}"),
            RotationEvent::Requested => log!("rotation: new key made, CSR sent"),
            RotationEvent::Refused(why) => log!("rotation: refused: {why}"),
            RotationEvent::Renewed { generation } => {
                log!("rotation: new certificate, generation {generation}")
            }
            RotationEvent::Rejected => log!("rotation: the certificate is not for our new key"),
            other => log!("rotation: {other:?}"),
        }
    }
}

fn slot_name(slot: usize) -> &'static str {
    if slot == 0 {
        "A"
    } else {
        "B"
    }
}

type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device>) -> ! {
    runner.run().await
}

static PACKETS: StaticCell<PacketQueue<4, 4>> = StaticCell::new();
static NET: StaticCell<StackResources<3>> = StaticCell::new();
static TLS: StaticCell<Buffers> = StaticCell::new();
static OUTBOX: StaticCell<Outbox<4, MAX_PAYLOAD>> = StaticCell::new();
static TCP_RX: StaticCell<[u8; 2048]> = StaticCell::new();
static TCP_TX: StaticCell<[u8; 2048]> = StaticCell::new();
static ID: StaticCell<heapless::String<64>> = StaticCell::new();

fn halt(what: &str) -> ! {
    rprintln!("fleet: FATAL {}", what);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    rprintln!("fleet: PANIC {}", info);
    loop {
        cortex_m::asm::wfi();
    }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    rtt_init_print!();
    let mut config = Config::default();
    {
        use embassy_stm32::rcc::*;
        use embassy_stm32::time::Hertz;
        // 8 MHz from the ST-LINK's MCO → PLL → 216 MHz.
        config.rcc.hse = Some(Hse {
            freq: Hertz(8_000_000),
            mode: HseMode::Bypass,
        });
        config.rcc.pll_src = PllSource::HSE;
        config.rcc.pll = Some(Pll {
            prediv: PllPreDiv::DIV4,
            mul: PllMul::MUL216,
            divp: Some(PllPDiv::DIV2),
            divq: None,
            divr: None,
        });
        config.rcc.ahb_pre = AHBPrescaler::DIV1;
        config.rcc.apb1_pre = APBPrescaler::DIV4;
        config.rcc.apb2_pre = APBPrescaler::DIV2;
        config.rcc.sys = Sysclk::PLL1_P;
    }
    let p = embassy_stm32::init(config);
    log!("boot nucleo-f767zi fleet-firmware {}", env!("CARGO_PKG_VERSION"));

    let (slot_index, bundle) = match bundle::newest(slot(SLOTS[0]), slot(SLOTS[1])) {
        Ok(found) => found,
        Err(e) => {
            log!("no valid identity bundle at {:#x} or {:#x}: {e}", SLOTS[0], SLOTS[1]);
            halt("no identity")
        }
    };
    log!(
        "identity {} tenant {} generation {} from slot {} gateway {}:{}",
        bundle.device_id,
        bundle.tenant,
        bundle.generation,
        slot_name(slot_index),
        bundle.gateway_host,
        bundle.gateway_port
    );
    let Ok(gateway) = bundle.gateway_host.parse::<Ipv4Address>() else {
        log!("gateway host {} is not an IPv4 address (no DNS resolver on this board yet)", bundle.gateway_host);
        halt("gateway address")
    };
    let id = ID.init(heapless::String::new());
    let _ = id.push_str(bundle.device_id);

    let mut rng = Rng::new(p.RNG, Irqs);
    // A locally administered MAC from the chip's unique id.
    let uid = embassy_stm32::uid::uid();
    let mac = [0x02, uid[0], uid[1], uid[2], uid[3], uid[4]];
    let eth = Ethernet::new(
        PACKETS.init(PacketQueue::new()),
        p.ETH,
        Irqs,
        p.PA1,
        p.PA7,
        p.PC4,
        p.PC5,
        p.PG13,
        p.PB13,
        p.PG11,
        mac,
        p.ETH_SMA,
        p.PA2,
        p.PC1,
    );
    let (stack, runner) = embassy_net::new(
        eth,
        embassy_net::Config::dhcpv4(Default::default()),
        NET.init(StackResources::new()),
        rng.next_u64(),
    );
    if spawner.spawn(net_task(runner)).is_err() {
        halt("network task")
    }
    stack.wait_config_up().await;
    if let Some(cfg) = stack.config_v4() {
        log!("dhcp address {}", cfg.address);
    }
    let flash = Flash::new_blocking(p.FLASH);
    run(stack, gateway, bundle.gateway_port, &mut rng, id, FlashSlots { flash }).await
}

async fn run(
    stack: Stack<'static>,
    gateway: Ipv4Address,
    port: u16,
    rng: &mut Rng<'static, peripherals::RNG>,
    id: &'static str,
    store: FlashSlots,
) -> ! {
    let tls = TLS.init(Buffers::new());
    let outbox = OUTBOX.init(Outbox::new());
    let tcp_rx = TCP_RX.init([0; 2048]);
    let tcp_tx = TCP_TX.init([0; 2048]);
    let mut app = BoardApp {
        id,
        slots: Slots::new(store, ROLLBACK_AFTER),
    };
    let mut stats = Stats::default();
    let options = Options::default();
    let backoff = Backoff::default();
    let mut attempt = 0u32;
    loop {
        let (connected, renewed, slot_index) = {
            let Ok((slot_index, bundle)) = bundle::newest(slot(SLOTS[0]), slot(SLOTS[1])) else {
                halt("no identity left")
            };
            let connects = stats.connects;
            let mut socket = TcpSocket::new(stack, tcp_rx, tcp_tx);
            socket.set_timeout(Some(Duration::from_secs(90)));
            let mut renewed = None;
            match socket.connect((gateway, port)).await {
                Err(e) => log!("tcp connect to {gateway}:{port}: {e:?}"),
                Ok(()) => {
                    log!(
                        "tcp connected to {gateway}:{port} with slot {} generation {}",
                        slot_name(slot_index),
                        bundle.generation
                    );
                    let (rd, wr) = socket.split();
                    let Err(ended) = device::run_connection(
                        rd,
                        wr,
                        &bundle,
                        &mut *rng,
                        &EmbassyClock,
                        &mut app,
                        &options,
                        &mut *outbox,
                        tls,
                        &mut stats,
                    )
                    .await;
                    log!("connection ended: {ended}");
                    if let Error::Renewed(len) = ended {
                        renewed = Some(len);
                    }
                }
            }
            socket.abort();
            let _ = socket.flush().await;
            drop(socket);
            (stats.connects > connects, renewed, slot_index)
        };
        if !connected {
            if let Outcome::RolledBack { from, to } = app.slots.failed() {
                log!(
                    "rotation: slot {} failed {ROLLBACK_AFTER} times, rolled back to slot {}",
                    slot_name(from),
                    slot_name(to)
                );
            }
        }
        if let Some(len) = renewed {
            let bytes = &tls.bundle_out[..len.min(tls.bundle_out.len())];
            if app.slots.store_renewed(bytes) {
                log!("rotation: stored the renewed identity in slot {}", slot_name(1 - slot_index));
                attempt = 0;
                continue;
            }
            log!("rotation: could not store the renewed identity");
        }
        attempt = if connected { 0 } else { attempt + 1 };
        let delay = backoff.delay_ms(attempt, rng);
        log!("reconnecting in {delay} ms (attempt {attempt})");
        Timer::after_millis(u64::from(delay)).await;
    }
}
