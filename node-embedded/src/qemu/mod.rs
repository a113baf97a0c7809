//! Board support for QEMU's `mps2-an385` machine (Cortex-M3 at 25 MHz):
//! the LAN9118 Ethernet controller, a time driver on the CMSDK dual timer,
//! an executor that sleeps with WFI, and the semihosting command line.

pub mod lan9118;
pub mod timer;

use core::sync::atomic::{AtomicBool, Ordering};

use cortex_m::interrupt::InterruptNumber;

/// The board's interrupt lines used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Irq {
    /// CMSDK dual timer (both timers).
    DualTimer = 10,
    /// SMSC LAN9118 Ethernet.
    Ethernet = 13,
}

// SAFETY: the numbers are the mps2-an385 interrupt lines of these devices,
// all below the Cortex-M3's 240.
unsafe impl InterruptNumber for Irq {
    fn number(self) -> u16 {
        self as u16
    }
}

/// Dispatches an interrupt line to its device; the program's
/// `DefaultHandler` calls this with the line number.
pub fn on_interrupt(irqn: i16) {
    match irqn {
        10 => timer::on_interrupt(),
        13 => lan9118::on_interrupt(),
        _ => {}
    }
}

static PENDED: AtomicBool = AtomicBool::new(false);

// The executor calls this whenever a task is woken, from any context.
#[unsafe(export_name = "__pender")]
fn pender(_context: *mut ()) {
    PENDED.store(true, Ordering::Release);
}

/// Runs `executor` forever, sleeping with WFI while no task is ready.
///
/// QEMU executes WFE as a busy loop, so the stock thread executor keeps a
/// host core busy; WFI lets an idle node cost almost nothing.
pub fn run_executor(executor: &'static embassy_executor::raw::Executor) -> ! {
    loop {
        PENDED.store(false, Ordering::Release);
        // SAFETY: `poll` is only called from this loop, on the one thread
        // that owns the executor, never reentrantly.
        unsafe { executor.poll() };
        cortex_m::interrupt::free(|_| {
            // With interrupts masked, an interrupt that pends a task after
            // this check still ends the WFI; it runs once unmasked.
            if !PENDED.load(Ordering::Acquire) {
                cortex_m::asm::wfi();
            }
        });
    }
}

/// Copies the semihosting command line (QEMU's
/// `-semihosting-config arg=…`) into `buf`; the words as text.
pub fn command_line(buf: &mut [u8]) -> &str {
    let mut block = [buf.as_mut_ptr() as usize, buf.len()];
    // SAFETY: SYS_GET_CMDLINE writes at most `block[1]` bytes to
    // `block[0]`, which is `buf`, and stores the length it wrote in
    // `block[1]`. The image only runs under QEMU with semihosting enabled.
    let r = unsafe {
        cortex_m_semihosting::syscall1(
            cortex_m_semihosting::nr::GET_CMDLINE,
            block.as_mut_ptr() as usize,
        )
    };
    if r != 0 {
        return "";
    }
    let n = block[1].min(buf.len());
    core::str::from_utf8(&buf[..n]).unwrap_or("")
}

/// Ends QEMU with the given status.
pub fn exit(ok: bool) -> ! {
    let status = if ok {
        cortex_m_semihosting::debug::EXIT_SUCCESS
    } else {
        cortex_m_semihosting::debug::EXIT_FAILURE
    };
    cortex_m_semihosting::debug::exit(status);
    loop {
        cortex_m::asm::wfi();
    }
}
