//! Measurements the HIL reports: CPU-busy virtual time (with QEMU's `-icount shift=0` one
//! instruction is one virtual nanosecond, so this counts instructions) and peak stack use by
//! stack painting.

use core::sync::atomic::{AtomicU32, Ordering};

/// Virtual nanoseconds spent asleep in WFE, as two 32-bit halves (Cortex-M4 has no 64-bit
/// atomics; only the executor loop writes them).
static IDLE_LO: AtomicU32 = AtomicU32::new(0);
static IDLE_HI: AtomicU32 = AtomicU32::new(0);

/// Adds a sleep to the idle total (called by the executor loop only).
pub fn add_idle(ns: u64) {
    let total = idle_ns() + ns;
    IDLE_HI.store((total >> 32) as u32, Ordering::Relaxed);
    IDLE_LO.store(total as u32, Ordering::Relaxed);
}

/// Nanoseconds the core has slept since boot.
pub fn idle_ns() -> u64 {
    (u64::from(IDLE_HI.load(Ordering::Relaxed)) << 32) | u64::from(IDLE_LO.load(Ordering::Relaxed))
}

/// A point in time for [`busy_since`].
#[derive(Clone, Copy)]
pub struct Mark {
    at_ns: u64,
    idle_ns: u64,
}

pub fn mark() -> Mark {
    Mark {
        at_ns: crate::time::now_ns(),
        idle_ns: idle_ns(),
    }
}

/// CPU-busy nanoseconds since `m` (elapsed minus asleep).
pub fn busy_since(m: Mark) -> u64 {
    let elapsed = crate::time::now_ns().saturating_sub(m.at_ns);
    elapsed.saturating_sub(idle_ns().saturating_sub(m.idle_ns))
}

const PAINT: u32 = 0x5AFE_57AC;
/// How much of the stack is painted (the top of RAM downwards).
const PAINTED: usize = 64 * 1024;

extern "C" {
    static _stack_start: u32;
}

fn stack_top() -> usize {
    // Only the linker symbol's address is used, never its value.
    core::ptr::addr_of!(_stack_start) as usize
}

/// Fills the unused part of the top 64 KiB of stack with a pattern (call once, early).
pub fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize;
    let bottom = stack_top() - PAINTED;
    let mut p = bottom;
    // Stay well below the current frame.
    while p + 256 < sp {
        // SAFETY: [bottom, sp - 256) is stack memory nobody uses yet.
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// The deepest the stack has reached, in bytes from its top.
pub fn peak_stack() -> usize {
    let bottom = stack_top() - PAINTED;
    let mut p = bottom;
    while p < stack_top() {
        // SAFETY: reading painted stack memory.
        if unsafe { core::ptr::read_volatile(p as *const u32) } != PAINT {
            break;
        }
        p += 4;
    }
    stack_top() - p
}
