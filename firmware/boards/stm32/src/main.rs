//! fleet firmware for NUCLEO-F767ZI: STM32F767 at 216 MHz, Ethernet through the on-board
//! LAN8742A PHY (RMII), the hardware TRNG, identity slots in the last two 256 KiB flash
//! sectors of single-bank mode (A at 0x08180000, B at 0x081C0000, where `fleet-provision …
//! --hex-board stm32f767zi` puts the bundle), logs over RTT (`probe-rs run` shows them).
#![no_std]
#![no_main]

use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Stack, StackResources};
use embassy_stm32::eth::{Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::flash::Flash;
use embassy_stm32::peripherals::{ETH, ETH_SMA};
use embassy_stm32::rng::Rng;
use embassy_stm32::{bind_interrupts, eth, peripherals, rng, Config};
use embassy_time::Instant;
use fleet_firmware::board::{Board, Resources};
use fleet_firmware::bundle::{self, Bundle, BundleError};
use fleet_firmware::device::{Buffers, MAX_PAYLOAD};
use fleet_firmware::outbox::Outbox;
use fleet_firmware::slots::SlotStore;
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

/// The NUCLEO board for the shared loop: RTT log, memory-mapped flash slots.
struct Nucleo;

impl Board for Nucleo {
    const NAME: &'static str = "nucleo-f767zi";

    fn log(&mut self, line: core::fmt::Arguments<'_>) {
        rprintln!("{}", line);
    }

    fn identity(&self) -> Result<(usize, Bundle<'static>), BundleError> {
        bundle::newest(slot(SLOTS[0]), slot(SLOTS[1]))
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

/// Built with `-C panic=immediate-abort` (`.cargo/config.toml`), a panic is a trap
/// instruction rather than a call to [`panic`]: it ends here, as does any other fault.
#[cortex_m_rt::exception]
unsafe fn HardFault(_frame: &cortex_m_rt::ExceptionFrame) -> ! {
    rprintln!("fleet: PANIC (hard fault)");
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
    log!(
        "boot nucleo-f767zi fleet-firmware {}",
        env!("CARGO_PKG_VERSION")
    );

    let (bundle, gateway) = match fleet_firmware::board::boot_identity(&mut Nucleo) {
        Ok(found) => found,
        Err(what) => halt(what),
    };

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
    run(
        stack,
        gateway,
        bundle.gateway_port,
        &mut rng,
        FlashSlots { flash },
    )
    .await
}

async fn run(
    stack: Stack<'static>,
    gateway: Ipv4Address,
    port: u16,
    rng: &mut Rng<'static, peripherals::RNG>,
    store: FlashSlots,
) -> ! {
    let resources = Resources {
        tls: TLS.init(Buffers::new()),
        outbox: OUTBOX.init(Outbox::new()),
        tcp_rx: TCP_RX.init([0; 2048]),
        tcp_tx: TCP_TX.init([0; 2048]),
    };
    fleet_firmware::board::run(&mut Nucleo, store, stack, gateway, port, rng, resources).await
}
