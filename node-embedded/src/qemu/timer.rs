//! embassy-time on the CMSDK dual timer of `mps2-an385` (at `0x4000_2000`,
//! interrupt 10, clocked at 25 MHz).
//!
//! Timer 1 runs free from `u32::MAX` down and wraps; each wrap (every 172 s)
//! adds a period, extending it to 64 bits. Timer 2 is a one-shot alarm for
//! the earliest queued wake-up. A free-running hardware counter keeps exact
//! time however busy the host running QEMU is, where counting SysTick
//! interrupts drifts.

use core::cell::{Cell, RefCell};
use core::task::Waker;

use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_time_driver::Driver;
use embassy_time_queue_utils::Queue;

const TIMER1: usize = 0x4000_2000;
const TIMER2: usize = 0x4000_2020;

const LOAD: usize = 0x00;
const VALUE: usize = 0x04;
const CONTROL: usize = 0x08;
const INTCLR: usize = 0x0C;
const RIS: usize = 0x10;

const CTRL_ONESHOT: u32 = 1 << 0;
const CTRL_32BIT: u32 = 1 << 1;
const CTRL_INTEN: u32 = 1 << 5;
const CTRL_ENABLE: u32 = 1 << 7;

/// Timer clock cycles per embassy tick (25 MHz / 1 MHz).
const CYCLES_PER_TICK: u64 = 25_000_000 / embassy_time_driver::TICK_HZ;
/// Longest alarm armed at once; a later wake-up is re-armed when it fires.
const MAX_ALARM_CYCLES: u64 = 1 << 30;

fn read(timer: usize, offset: usize) -> u32 {
    // SAFETY: `timer + offset` is a documented 32-bit register of the CMSDK
    // dual timer on this board; volatile word reads are how it is accessed.
    unsafe { core::ptr::read_volatile((timer + offset) as *const u32) }
}

fn write(timer: usize, offset: usize, value: u32) {
    // SAFETY: as in `read`; the timer's registers alias no program memory.
    unsafe { core::ptr::write_volatile((timer + offset) as *mut u32, value) }
}

struct DualTimer {
    /// Wraps of timer 1 counted so far.
    periods: Mutex<CriticalSectionRawMutex, Cell<u32>>,
    queue: Mutex<CriticalSectionRawMutex, RefCell<Queue>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: DualTimer = DualTimer {
    periods: Mutex::new(Cell::new(0)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

/// Starts both timers. Call once, before the executor runs.
pub fn init() {
    write(TIMER1, CONTROL, 0);
    write(TIMER1, LOAD, u32::MAX);
    write(TIMER1, INTCLR, 1);
    // Free-running (not periodic), 32-bit, interrupt on every wrap.
    write(TIMER1, CONTROL, CTRL_ENABLE | CTRL_32BIT | CTRL_INTEN);
    write(TIMER2, CONTROL, 0);
    write(TIMER2, INTCLR, 1);
    // SAFETY: the handler (`on_interrupt`) only touches the timers and
    // state behind critical-section mutexes.
    unsafe { cortex_m::peripheral::NVIC::unmask(super::Irq::DualTimer) };
}

impl DualTimer {
    /// Cycles since `init`, as 64 bits. Must run in a critical section.
    fn cycles(&self, periods: u32) -> u64 {
        let elapsed = u32::MAX - read(TIMER1, VALUE);
        // A wrap not yet counted by the interrupt: if the counter reads
        // low, it wrapped before we read it.
        let wrapped = read(TIMER1, RIS) & 1 != 0 && elapsed < 1 << 31;
        (u64::from(periods) + u64::from(wrapped)) << 32 | u64::from(elapsed)
    }

    /// Arms timer 2 for tick `at`; false if `at` has already passed.
    fn set_alarm(&self, at: u64) -> bool {
        write(TIMER2, CONTROL, 0);
        write(TIMER2, INTCLR, 1);
        if at == u64::MAX {
            return true;
        }
        let now = self.now();
        if at <= now {
            return false;
        }
        let cycles = ((at - now) * CYCLES_PER_TICK).min(MAX_ALARM_CYCLES);
        write(TIMER2, LOAD, cycles as u32);
        write(
            TIMER2,
            CONTROL,
            CTRL_ENABLE | CTRL_32BIT | CTRL_INTEN | CTRL_ONESHOT,
        );
        true
    }

    fn fire_due(&self) {
        critical_section::with(|cs| {
            let mut queue = self.queue.borrow(cs).borrow_mut();
            loop {
                let next = queue.next_expiration(self.now());
                if self.set_alarm(next) {
                    break;
                }
            }
        });
    }
}

impl Driver for DualTimer {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.cycles(self.periods.borrow(cs).get()) / CYCLES_PER_TICK)
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let mut queue = self.queue.borrow(cs).borrow_mut();
            if queue.schedule_wake(at, waker) {
                loop {
                    let next = queue.next_expiration(self.now());
                    if self.set_alarm(next) {
                        break;
                    }
                }
            }
        });
    }
}

/// Counts a wrap of timer 1 and runs the wake-ups timer 2 says are due.
pub fn on_interrupt() {
    critical_section::with(|cs| {
        if read(TIMER1, RIS) & 1 != 0 {
            write(TIMER1, INTCLR, 1);
            let p = DRIVER.periods.borrow(cs);
            p.set(p.get().wrapping_add(1));
        }
    });
    if read(TIMER2, RIS) & 1 != 0 {
        write(TIMER2, INTCLR, 1);
        DRIVER.fire_due();
    }
}
