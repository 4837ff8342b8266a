//! embassy-time on the Cortex-M SysTick: a 1 kHz tick extended to 64 bits in software.
//!
//! The tick handler also polls the LAN9118 receive FIFO and wakes the network stack.

use core::cell::{Cell, RefCell};
use core::task::Waker;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;
use critical_section::Mutex;
use embassy_time_queue_utils::Queue;

/// mps2-an386 runs its core at 25 MHz.
pub const CORE_HZ: u32 = 25_000_000;
/// embassy-time's tick rate (feature `tick-hz-1_000`).
const TICK_HZ: u32 = 1_000;

struct SysTickDriver {
    ticks: Mutex<Cell<u64>>,
    queue: Mutex<RefCell<Queue>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver {
    ticks: Mutex::new(Cell::new(0)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

impl embassy_time_driver::Driver for SysTickDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.ticks.borrow(cs).get())
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let mut queue = self.queue.borrow(cs).borrow_mut();
            if queue.schedule_wake(at, waker) {
                let now = self.ticks.borrow(cs).get();
                queue.next_expiration(now);
            }
        });
    }
}

/// Nanoseconds since boot at sub-tick resolution (SysTick counts down at the core clock).
pub fn now_ns() -> u64 {
    const NS_PER_CYCLE: u64 = 1_000_000_000 / CORE_HZ as u64;
    critical_section::with(|cs| {
        let ticks = DRIVER.ticks.borrow(cs).get();
        let reload = u64::from(CORE_HZ / TICK_HZ - 1);
        let current = u64::from(SYST::get_current());
        // A wrap not yet counted by the (masked) interrupt.
        let pending = cortex_m::peripheral::SCB::is_pendst_pending();
        let ticks = if pending { ticks + 1 } else { ticks };
        let current = if pending {
            u64::from(SYST::get_current())
        } else {
            current
        };
        ticks * 1_000_000 + (reload - current) * NS_PER_CYCLE
    })
}

/// Starts the tick.
pub fn init(syst: &mut SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CORE_HZ / TICK_HZ - 1);
    syst.clear_current();
    syst.enable_counter();
    syst.enable_interrupt();
}

#[exception]
fn SysTick() {
    critical_section::with(|cs| {
        let ticks = DRIVER.ticks.borrow(cs);
        let now = ticks.get() + 1;
        ticks.set(now);
        DRIVER.queue.borrow(cs).borrow_mut().next_expiration(now);
    });
    if crate::lan9118::rx_pending() {
        crate::lan9118::WAKER.wake();
    }
}
