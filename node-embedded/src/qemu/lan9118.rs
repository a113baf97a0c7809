//! An `embassy-net` driver for the SMSC LAN9118 as QEMU emulates it on
//! `mps2-an385` (at `0x4020_0000`, interrupt 13).
//!
//! Received frames are copied out of the RX data FIFO into one buffer and
//! handed to the stack; frames to send are built in another and pushed into
//! the TX data FIFO. The interrupt only signals "a frame is waiting": it
//! masks itself and wakes the stack, which unmasks it once the FIFO is empty.

use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;

const BASE: usize = 0x4020_0000;

const RX_DATA_FIFO: usize = 0x00;
const TX_DATA_FIFO: usize = 0x20;
const RX_STATUS_FIFO: usize = 0x40;
const TX_STATUS_FIFO: usize = 0x48;
const IRQ_CFG: usize = 0x54;
const INT_STS: usize = 0x58;
const INT_EN: usize = 0x5C;
const BYTE_TEST: usize = 0x64;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7C;
const TX_FIFO_INF: usize = 0x80;
const PMT_CTRL: usize = 0x84;
const MAC_CSR_CMD: usize = 0xA4;
const MAC_CSR_DATA: usize = 0xA8;

/// MAC control register and address registers, behind MAC_CSR_CMD.
const MAC_CR: u32 = 1;
const MAC_ADDRH: u32 = 2;
const MAC_ADDRL: u32 = 3;
const MAC_CR_TXEN: u32 = 1 << 3;
const MAC_CR_RXEN: u32 = 1 << 2;
const MAC_CSR_BUSY: u32 = 1 << 31;
const MAC_CSR_READ: u32 = 1 << 30;

/// RX status FIFO level interrupt.
const INT_RSFL: u32 = 1 << 3;
/// Interrupt enabled, push-pull, active high. QEMU drives the line with the
/// opposite level unless both polarity and type bits are set.
const IRQ_CFG_ENABLED: u32 = 0x111;
const TX_CFG_ON: u32 = 1 << 1;
/// Let the TX status FIFO overrun: nobody reads transmit statuses.
const TX_CFG_TXSAO: u32 = 1 << 2;
const HW_CFG_SRST: u32 = 1;
const PMT_READY: u32 = 1;
const RX_STATUS_ERROR: u32 = 1 << 15;
const TX_CMD_A_FIRST: u32 = 1 << 13;
const TX_CMD_A_LAST: u32 = 1 << 12;

/// Largest Ethernet frame: 1514 bytes plus the 4-byte FCS the controller
/// appends to received frames, rounded up to whole FIFO words.
const FRAME: usize = 1520;
const MTU: usize = 1514;
const FCS: usize = 4;

static RX_WAKER: AtomicWaker = AtomicWaker::new();

fn read(offset: usize) -> u32 {
    // SAFETY: BASE + offset is one of the LAN9118's documented 32-bit
    // registers on this board; a volatile word read is how it is accessed.
    unsafe { core::ptr::read_volatile((BASE + offset) as *const u32) }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`; writes to these registers have no effect on
    // memory the program owns.
    unsafe { core::ptr::write_volatile((BASE + offset) as *mut u32, value) }
}

fn mac_wait() {
    while read(MAC_CSR_CMD) & MAC_CSR_BUSY != 0 {}
}

fn mac_read(index: u32) -> u32 {
    mac_wait();
    write(MAC_CSR_CMD, MAC_CSR_BUSY | MAC_CSR_READ | index);
    mac_wait();
    read(MAC_CSR_DATA)
}

fn mac_write(index: u32, value: u32) {
    mac_wait();
    write(MAC_CSR_DATA, value);
    write(MAC_CSR_CMD, MAC_CSR_BUSY | index);
    mac_wait();
}

fn set_rx_interrupt(enabled: bool) {
    critical_section::with(|_| {
        let en = read(INT_EN);
        write(
            INT_EN,
            if enabled {
                en | INT_RSFL
            } else {
                en & !INT_RSFL
            },
        );
    });
}

/// Masks the receive interrupt and wakes the stack; called from the
/// interrupt handler.
pub fn on_interrupt() {
    set_rx_interrupt(false);
    write(INT_STS, INT_RSFL);
    RX_WAKER.wake();
}

/// Why the controller could not be brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum InitError {
    /// The byte-order test register did not read back its fixed pattern:
    /// the machine is not an `mps2-an385` with `-nic …,model=lan9118`.
    NotFound,
}

/// The LAN9118 and its frame buffers.
pub struct Lan9118 {
    mac: [u8; 6],
    rx: [u8; FRAME],
    tx: [u8; FRAME],
}

impl Lan9118 {
    /// Resets the controller, enables its MAC and the receive interrupt.
    pub fn new() -> Result<Lan9118, InitError> {
        if read(BYTE_TEST) != 0x8765_4321 {
            return Err(InitError::NotFound);
        }
        while read(PMT_CTRL) & PMT_READY == 0 {}
        write(HW_CFG, HW_CFG_SRST);
        while read(HW_CFG) & HW_CFG_SRST != 0 {}
        let lo = mac_read(MAC_ADDRL).to_le_bytes();
        let hi = mac_read(MAC_ADDRH).to_le_bytes();
        let mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
        mac_write(MAC_CR, mac_read(MAC_CR) | MAC_CR_TXEN | MAC_CR_RXEN);
        write(TX_CFG, TX_CFG_ON | TX_CFG_TXSAO);
        write(INT_STS, u32::MAX);
        write(INT_EN, INT_RSFL);
        write(IRQ_CFG, IRQ_CFG_ENABLED);
        // SAFETY: the handler (`on_interrupt`) only touches the controller's
        // interrupt registers and an AtomicWaker.
        unsafe { cortex_m::peripheral::NVIC::unmask(super::Irq::Ethernet) };
        Ok(Lan9118 {
            mac,
            rx: [0; FRAME],
            tx: [0; FRAME],
        })
    }

    /// The MAC address QEMU assigned (`-nic …,mac=`).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Reads the next good frame into `self.rx`; its length without FCS.
    fn pop_frame(&mut self) -> Option<usize> {
        loop {
            if (read(RX_FIFO_INF) >> 16) & 0xff == 0 {
                return None;
            }
            let status = read(RX_STATUS_FIFO);
            let len = ((status >> 16) & 0x3fff) as usize;
            let words = len.div_ceil(4);
            let good = status & RX_STATUS_ERROR == 0 && (FCS + 14..=FRAME).contains(&len);
            for i in 0..words {
                let w = read(RX_DATA_FIFO).to_le_bytes();
                if good {
                    self.rx[4 * i..4 * i + 4].copy_from_slice(&w);
                }
            }
            if good {
                return Some(len - FCS);
            }
        }
    }
}

/// A received frame.
pub struct RxToken<'a>(&'a mut [u8]);

/// Room for one frame to send.
pub struct TxToken<'a>(&'a mut [u8; FRAME]);

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        let r = f(&mut self.0[..len]);
        write(TX_DATA_FIFO, TX_CMD_A_FIRST | TX_CMD_A_LAST | len as u32);
        write(TX_DATA_FIFO, len as u32);
        for w in self.0[..len.next_multiple_of(4)].chunks_exact(4) {
            write(TX_DATA_FIFO, u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
        // Statuses may overrun (TXSAO), but keep the FIFO empty anyway.
        while (read(TX_FIFO_INF) >> 16) & 0xff != 0 {
            let _ = read(TX_STATUS_FIFO);
        }
        r
    }
}

fn tx_room() -> bool {
    (read(TX_FIFO_INF) & 0xffff) as usize >= FRAME + 8
}

impl embassy_net_driver::Driver for Lan9118 {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, cx: &mut Context) -> Option<(RxToken<'_>, TxToken<'_>)> {
        // Register first: a frame arriving after the check wakes us.
        RX_WAKER.register(cx.waker());
        if !tx_room() {
            cx.waker().wake_by_ref();
            return None;
        }
        match self.pop_frame() {
            Some(len) => Some((RxToken(&mut self.rx[..len]), TxToken(&mut self.tx))),
            None => {
                set_rx_interrupt(true);
                None
            }
        }
    }

    fn transmit(&mut self, cx: &mut Context) -> Option<TxToken<'_>> {
        if tx_room() {
            Some(TxToken(&mut self.tx))
        } else {
            // QEMU sends a frame as soon as it is written, so the FIFO
            // drains at once; ask to be polled again.
            cx.waker().wake_by_ref();
            None
        }
    }

    fn link_state(&mut self, _cx: &mut Context) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(4);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
