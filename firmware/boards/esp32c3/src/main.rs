//! fleet firmware for ESP32-C3: Wi-Fi station (esp-radio on esp-rtos), embassy-net with DHCP,
//! the hardware TRNG, identity slots at flash offsets 0x3f0000 (A) and 0x3f8000 (B) — where
//! `fleet-provision … --hex-board esp32c3` / `espflash write-bin 0x3f0000` put the bundle —
//! and logs on the USB serial/JTAG or UART console (`espflash monitor` shows them).
//!
//! The Wi-Fi network is compiled in: `FLEET_WIFI_SSID` and `FLEET_WIFI_PASSWORD` at build
//! time. An image built without them boots, says so, and stops.
#![no_std]
#![no_main]

use core::cell::UnsafeCell;

use embassy_executor::Spawner;
use embassy_net::{Runner, StackResources};
use embassy_time::Instant;
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use esp_hal::clock::CpuClock;
use esp_hal::interrupt::software::SoftwareInterruptControl;
use esp_hal::rng::{Trng, TrngSource};
use esp_hal::timer::timg::TimerGroup;
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{Config as WifiConfig, ControllerConfig, Interface, WifiController};
use esp_storage::FlashStorage;
use fleet_firmware::board::{Board, Resources};
use fleet_firmware::bundle::{self, Bundle, BundleError};
use fleet_firmware::device::{Buffers, MAX_PAYLOAD};
use fleet_firmware::outbox::Outbox;
use fleet_firmware::slots::SlotStore;
use static_cell::StaticCell;

esp_bootloader_esp_idf::esp_app_desc!();

/// Identity slots, as `fleet-provision`'s board table has them for esp32c3: flash offsets in
/// the 64 KiB `fleet_id` data partition.
const SLOTS: [u32; 2] = [0x3f_0000, 0x3f_8000];
const SLOT_LEN: u32 = 0x8000;
/// Flash is not memory-mapped here: each slot is mirrored in RAM, up to this many bytes (a
/// bundle with a three-certificate chain is ~2 KiB).
const MIRROR_LEN: usize = 8 * 1024;

const WIFI_SSID: Option<&str> = option_env!("FLEET_WIFI_SSID");
const WIFI_PASSWORD: Option<&str> = option_env!("FLEET_WIFI_PASSWORD");

macro_rules! log {
    ($($arg:tt)*) => {
        println!("fleet: [{:>8}] {}", Instant::now().as_millis(), format_args!($($arg)*))
    };
}

/// The RAM copies of the two slots.
struct Mirrors(UnsafeCell<[[u8; MIRROR_LEN]; 2]>);

// SAFETY: one executor thread on a single core touches the mirrors: bundles borrowed from a
// mirror live only inside one iteration of the shared loop, and the loop writes a slot (through
// `FlashSlots`) only after that borrow has ended.
unsafe impl Sync for Mirrors {}

static MIRRORS: Mirrors = Mirrors(UnsafeCell::new([[0xff; MIRROR_LEN]; 2]));

fn mirror(slot: usize) -> &'static [u8] {
    // SAFETY: see `Mirrors`.
    unsafe { &(*MIRRORS.0.get())[slot & 1] }
}

/// The identity slots: flash through esp-storage, read through the RAM mirrors.
struct FlashSlots {
    flash: FlashStorage<'static>,
}

impl FlashSlots {
    /// Loads both mirrors from flash.
    fn load(mut flash: FlashStorage<'static>) -> Self {
        for (i, offset) in SLOTS.iter().enumerate() {
            // SAFETY: see `Mirrors`; nothing borrows a mirror yet.
            let buf = unsafe { &mut (*MIRRORS.0.get())[i] };
            if flash.read(*offset, buf).is_err() {
                buf.fill(0xff);
            }
        }
        FlashSlots { flash }
    }

    fn set_mirror(slot: usize, bytes: &[u8]) {
        // SAFETY: see `Mirrors`.
        let buf = unsafe { &mut (*MIRRORS.0.get())[slot & 1] };
        buf.fill(0xff);
        buf[..bytes.len()].copy_from_slice(bytes);
    }
}

impl SlotStore for FlashSlots {
    fn read(&self, slot: usize) -> &[u8] {
        mirror(slot)
    }

    fn write(&mut self, slot: usize, bytes: &[u8]) -> bool {
        let offset = SLOTS[slot & 1];
        if bytes.len() > MIRROR_LEN || self.flash.erase(offset, offset + SLOT_LEN).is_err() {
            return false;
        }
        // Whole 4-byte words; the tail is padded with the erased value.
        let mut chunk = [0xffu8; 256];
        for (i, part) in bytes.chunks(chunk.len()).enumerate() {
            chunk.fill(0xff);
            chunk[..part.len()].copy_from_slice(part);
            let len = part.len().div_ceil(FlashStorage::WORD_SIZE as usize)
                * FlashStorage::WORD_SIZE as usize;
            let at = offset + (i * chunk.len()) as u32;
            if self.flash.write(at, &chunk[..len]).is_err() {
                return false;
            }
        }
        Self::set_mirror(slot, bytes);
        true
    }

    fn erase(&mut self, slot: usize) -> bool {
        let offset = SLOTS[slot & 1];
        let erased = self
            .flash
            .erase(offset, offset + FlashStorage::SECTOR_SIZE)
            .is_ok();
        if erased {
            Self::set_mirror(slot, &[]);
        }
        erased
    }
}

/// The ESP32-C3 board for the shared loop: console log, mirrored flash slots.
struct Esp32c3;

impl Board for Esp32c3 {
    const NAME: &'static str = "esp32c3";

    fn log(&mut self, line: core::fmt::Arguments<'_>) {
        println!("{}", line);
    }

    fn identity(&self) -> Result<(usize, Bundle<'static>), BundleError> {
        bundle::newest(mirror(0), mirror(1))
    }
}

fn halt(what: &str) -> ! {
    println!("fleet: FATAL {}", what);
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("fleet: PANIC {}", info);
    loop {
        core::hint::spin_loop();
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface<'static>>) -> ! {
    runner.run().await
}

/// Joins the Wi-Fi network and rejoins it whenever the connection drops.
#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>) -> ! {
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                log!("wifi connected");
                let _ = controller.wait_for_disconnect_async().await;
                log!("wifi disconnected");
            }
            Err(_) => log!("wifi connect failed; retrying in 5 s"),
        }
        embassy_time::Timer::after_secs(5).await;
    }
}

static NET: StaticCell<StackResources<3>> = StaticCell::new();
static TLS: StaticCell<Buffers> = StaticCell::new();
static OUTBOX: StaticCell<Outbox<4, MAX_PAYLOAD>> = StaticCell::new();
static TCP_RX: StaticCell<[u8; 2048]> = StaticCell::new();
static TCP_TX: StaticCell<[u8; 2048]> = StaticCell::new();
static TRNG_SOURCE: StaticCell<TrngSource<'static>> = StaticCell::new();

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // The Wi-Fi driver allocates; everything of ours is static.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 32 * 1024);
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    let sw_int = SoftwareInterruptControl::new(peripherals.SW_INTERRUPT);
    esp_rtos::start(timg0.timer0, sw_int.software_interrupt0);
    log!("boot esp32c3 fleet-firmware {}", env!("CARGO_PKG_VERSION"));

    let slots = FlashSlots::load(FlashStorage::new(peripherals.FLASH));
    let (bundle, gateway) = match fleet_firmware::board::boot_identity(&mut Esp32c3) {
        Ok(found) => found,
        Err(what) => halt(what),
    };
    let port = bundle.gateway_port;
    let (Some(ssid), Some(password)) = (WIFI_SSID, WIFI_PASSWORD) else {
        log!("no Wi-Fi network: build with FLEET_WIFI_SSID and FLEET_WIFI_PASSWORD set");
        halt("no Wi-Fi credentials")
    };

    // True random numbers: the TRNG source (RNG + ADC noise) stays enabled for the whole run.
    TRNG_SOURCE.init(TrngSource::new(peripherals.RNG, peripherals.ADC1));
    let Ok(mut trng) = Trng::try_new() else {
        halt("TRNG unavailable")
    };

    let station = WifiConfig::Station(
        StationConfig::default()
            .with_ssid(ssid)
            .with_password(password.into()),
    );
    let Ok((controller, interfaces)) = esp_radio::wifi::new(
        peripherals.WIFI,
        ControllerConfig::default().with_initial_config(station),
    ) else {
        halt("Wi-Fi driver")
    };
    let seed = u64::from(trng.random()) << 32 | u64::from(trng.random());
    let (stack, runner) = embassy_net::new(
        interfaces.station,
        embassy_net::Config::dhcpv4(Default::default()),
        NET.init(StackResources::new()),
        seed,
    );
    match (net_task(runner), wifi_task(controller)) {
        (Ok(net), Ok(wifi)) => {
            spawner.spawn(net);
            spawner.spawn(wifi);
        }
        _ => halt("network tasks"),
    }
    stack.wait_config_up().await;
    if let Some(cfg) = stack.config_v4() {
        log!("dhcp address {}", cfg.address);
    }
    let resources = Resources {
        tls: TLS.init(Buffers::new()),
        outbox: OUTBOX.init(Outbox::new()),
        tcp_rx: TCP_RX.init([0; 2048]),
        tcp_tx: TCP_TX.init([0; 2048]),
    };
    fleet_firmware::board::run(
        &mut Esp32c3,
        slots,
        stack,
        gateway,
        port,
        &mut trng,
        resources,
    )
    .await
}
