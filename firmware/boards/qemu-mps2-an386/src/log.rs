//! Log lines and the exit code, over semihosting (QEMU: `-semihosting-config enable=on`).

/// One `fleet: …` line on the host's stdout, with the uptime in milliseconds.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        cortex_m_semihosting::hprintln!(
            "fleet: [{:>8}] {}",
            embassy_time::Instant::now().as_millis(),
            format_args!($($arg)*)
        )
    };
}

/// Logs a fatal verdict and ends the emulation with a failure code.
pub fn fatal(what: &str) -> ! {
    cortex_m_semihosting::hprintln!("fleet: FATAL {}", what);
    exit(1)
}

/// Ends the emulation (QEMU exits with `code`); on a real board, stops here.
pub fn exit(code: i32) -> ! {
    let status = if code == 0 {
        cortex_m_semihosting::debug::EXIT_SUCCESS
    } else {
        cortex_m_semihosting::debug::EXIT_FAILURE
    };
    cortex_m_semihosting::debug::exit(status);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    cortex_m_semihosting::hprintln!("fleet: PANIC {}", info);
    exit(101)
}

/// Built with `-C panic=immediate-abort` (`.cargo/config.toml`), a panic is a trap
/// instruction rather than a call to [`panic`]: it ends here, as does any other fault.
#[cortex_m_rt::exception]
unsafe fn HardFault(frame: &cortex_m_rt::ExceptionFrame) -> ! {
    // The faulting instruction's address, to look up in the image (`llvm-objdump -d`), and
    // why (SCB's configurable fault status and bus fault address, ARMv7-M B3.2.15-18).
    let (cfsr, bfar) = unsafe {
        (
            core::ptr::read_volatile(0xE000_ED28 as *const u32),
            core::ptr::read_volatile(0xE000_ED38 as *const u32),
        )
    };
    cortex_m_semihosting::hprintln!(
        "fleet: PANIC (hard fault) at pc {:#010x} cfsr {:#010x} bfar {:#010x} lr {:#010x} r0 {:#010x}",
        frame.pc(),
        cfsr,
        bfar,
        frame.lr(),
        frame.r0()
    );
    exit(101)
}
