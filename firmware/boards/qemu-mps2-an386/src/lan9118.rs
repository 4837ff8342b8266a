//! An `embassy-net-driver` for the SMSC LAN9118 Ethernet controller of the MPS2 boards, as
//! QEMU emulates it (32-bit mode, PIO through the data FIFOs).
//!
//! Written by hand because no maintained crate drives this chip. Only what a TCP/IP client
//! needs: reset, MAC address from the controller, receive and transmit through the FIFOs.
//! Interrupts are not used: the 1 kHz system tick checks the receive status FIFO and wakes
//! the network stack (see `time.rs`), which keeps the board free of a vector table.

use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;

/// Where the controller sits on mps2-an385/an386.
pub const BASE: usize = 0x4020_0000;

const RX_DATA_FIFO: usize = 0x00;
const TX_DATA_FIFO: usize = 0x20;
const RX_STATUS_FIFO: usize = 0x40;
const TX_STATUS_FIFO: usize = 0x48;
const ID_REV: usize = 0x50;
const BYTE_TEST: usize = 0x64;
const RX_CFG: usize = 0x6c;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7c;
const TX_FIFO_INF: usize = 0x80;
const PMT_CTRL: usize = 0x84;
const MAC_CSR_CMD: usize = 0xa4;
const MAC_CSR_DATA: usize = 0xa8;

const BYTE_TEST_VALUE: u32 = 0x8765_4321;
const HW_CFG_SRST: u32 = 1;
const PMT_CTRL_READY: u32 = 1;
const TX_CFG_TX_ON: u32 = 1 << 1;
const CSR_BUSY: u32 = 1 << 31;
const CSR_READ: u32 = 1 << 30;

const MAC_CR: u32 = 1;
const MAC_ADDRH: u32 = 2;
const MAC_ADDRL: u32 = 3;
const MAC_CR_FDPX: u32 = 1 << 20;
const MAC_CR_TXEN: u32 = 1 << 3;
const MAC_CR_RXEN: u32 = 1 << 2;

/// TX command A: first and last segment of a one-buffer frame.
const TX_CMD_A_FIRST: u32 = 1 << 13;
const TX_CMD_A_LAST: u32 = 1 << 12;
/// RX status: error summary.
const RX_STS_ERROR: u32 = 1 << 15;

/// Largest Ethernet frame without FCS.
pub const MTU: usize = 1514;
const FRAME_BUF: usize = 1536;
/// Bounded polls while waiting for the controller.
const SPIN: u32 = 100_000;

/// Wakes the network stack when frames arrive or transmit space frees up.
pub static WAKER: AtomicWaker = AtomicWaker::new();

/// Why the controller could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// BYTE_TEST did not read back 0x87654321: no LAN9118 at this address.
    NotFound(u32),
    /// Soft reset or power management never reported ready.
    NotReady,
}

/// The register window.
#[derive(Clone, Copy)]
struct Regs(usize);

impl Regs {
    fn read(self, offset: usize) -> u32 {
        // SAFETY: `self.0` is the controller's MMIO base (checked through BYTE_TEST at
        // init); every offset used is a 32-bit register inside its 256-byte window.
        unsafe { core::ptr::read_volatile((self.0 + offset) as *const u32) }
    }

    fn write(self, offset: usize, value: u32) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile((self.0 + offset) as *mut u32, value) }
    }

    fn wait(self, offset: usize, done: impl Fn(u32) -> bool) -> Result<(), InitError> {
        for _ in 0..SPIN {
            if done(self.read(offset)) {
                return Ok(());
            }
        }
        Err(InitError::NotReady)
    }

    fn mac_read(self, reg: u32) -> Result<u32, InitError> {
        self.write(MAC_CSR_CMD, CSR_BUSY | CSR_READ | reg);
        self.wait(MAC_CSR_CMD, |v| v & CSR_BUSY == 0)?;
        Ok(self.read(MAC_CSR_DATA))
    }

    fn mac_write(self, reg: u32, value: u32) -> Result<(), InitError> {
        self.write(MAC_CSR_DATA, value);
        self.write(MAC_CSR_CMD, CSR_BUSY | reg);
        self.wait(MAC_CSR_CMD, |v| v & CSR_BUSY == 0)
    }

    fn rx_frames(self) -> u32 {
        (self.read(RX_FIFO_INF) >> 16) & 0xff
    }

    fn tx_space(self) -> u32 {
        self.read(TX_FIFO_INF) & 0xffff
    }
}

/// True when a received frame waits in the FIFO (called from the tick interrupt).
pub fn rx_pending() -> bool {
    Regs(BASE).rx_frames() > 0
}

/// The controller and one frame buffer each way.
pub struct Lan9118 {
    regs: Regs,
    mac: [u8; 6],
    rx: [u8; FRAME_BUF],
    tx: [u8; FRAME_BUF],
    tag: u16,
}

impl Lan9118 {
    /// Resets the controller at `base` and starts its transmitter and receiver.
    ///
    /// # Safety
    /// `base` must be the MMIO base of a LAN9118 that nothing else accesses.
    pub unsafe fn new(base: usize) -> Result<Lan9118, InitError> {
        let regs = Regs(base);
        let test = regs.read(BYTE_TEST);
        if test != BYTE_TEST_VALUE {
            return Err(InitError::NotFound(test));
        }
        regs.write(HW_CFG, HW_CFG_SRST);
        regs.wait(HW_CFG, |v| v & HW_CFG_SRST == 0)?;
        regs.wait(PMT_CTRL, |v| v & PMT_CTRL_READY != 0)?;
        let low = regs.mac_read(MAC_ADDRL)?.to_le_bytes();
        let high = regs.mac_read(MAC_ADDRH)?.to_le_bytes();
        let mut mac = [low[0], low[1], low[2], low[3], high[0], high[1]];
        if mac == [0; 6] || mac == [0xff; 6] {
            // No EEPROM address: a locally administered one.
            mac = [0x02, 0x00, 0x00, 0x12, 0x34, 0x56];
            regs.mac_write(
                MAC_ADDRL,
                u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
            )?;
            regs.mac_write(MAC_ADDRH, u32::from(mac[4]) | u32::from(mac[5]) << 8)?;
        }
        regs.write(RX_CFG, 0);
        regs.write(TX_CFG, TX_CFG_TX_ON);
        // Own address and broadcast only (reset leaves promiscuous mode on).
        regs.mac_write(MAC_CR, MAC_CR_FDPX | MAC_CR_TXEN | MAC_CR_RXEN)?;
        Ok(Lan9118 {
            regs,
            mac,
            rx: [0; FRAME_BUF],
            tx: [0; FRAME_BUF],
            tag: 0,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn id_rev(&self) -> u32 {
        self.regs.read(ID_REV)
    }

    /// Pops one frame into the receive buffer; `None` if it was bad or too big (dropped).
    fn pop_frame(&mut self) -> Option<usize> {
        let status = self.regs.read(RX_STATUS_FIFO);
        let with_fcs = ((status >> 16) & 0x3fff) as usize;
        let words = with_fcs.div_ceil(4);
        let fits = with_fcs >= 4 && words * 4 <= self.rx.len();
        for i in 0..words {
            let word = self.regs.read(RX_DATA_FIFO).to_le_bytes();
            if fits {
                self.rx[i * 4..i * 4 + 4].copy_from_slice(&word);
            }
        }
        (fits && status & RX_STS_ERROR == 0).then_some(with_fcs - 4)
    }
}

/// A received frame.
pub struct RxToken<'a> {
    frame: &'a mut [u8],
}

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Room to send one frame.
pub struct TxToken<'a> {
    regs: Regs,
    buf: &'a mut [u8; FRAME_BUF],
    tag: &'a mut u16,
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        let out = f(&mut self.buf[..len]);
        *self.tag = self.tag.wrapping_add(1);
        let n = len as u32;
        self.regs
            .write(TX_DATA_FIFO, TX_CMD_A_FIRST | TX_CMD_A_LAST | n);
        self.regs
            .write(TX_DATA_FIFO, u32::from(*self.tag) << 16 | n);
        for chunk in self.buf[..len].chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            self.regs.write(TX_DATA_FIFO, u32::from_le_bytes(word));
        }
        // Drain transmit statuses so the status FIFO never fills.
        while (self.regs.read(TX_FIFO_INF) >> 16) & 0xff != 0 {
            self.regs.read(TX_STATUS_FIFO);
        }
        out
    }
}

impl embassy_net_driver::Driver for Lan9118 {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(RxToken<'_>, TxToken<'_>)> {
        WAKER.register(cx.waker());
        while self.regs.rx_frames() > 0 {
            if (self.regs.tx_space() as usize) < FRAME_BUF + 8 {
                return None;
            }
            if let Some(len) = self.pop_frame() {
                let Lan9118 {
                    regs, rx, tx, tag, ..
                } = self;
                return Some((
                    RxToken {
                        frame: &mut rx[..len],
                    },
                    TxToken {
                        regs: *regs,
                        buf: tx,
                        tag,
                    },
                ));
            }
        }
        None
    }

    fn transmit(&mut self, cx: &mut Context<'_>) -> Option<TxToken<'_>> {
        if (self.regs.tx_space() as usize) < FRAME_BUF + 8 {
            WAKER.register(cx.waker());
            return None;
        }
        Some(TxToken {
            regs: self.regs,
            buf: &mut self.tx,
            tag: &mut self.tag,
        })
    }

    fn link_state(&mut self, _cx: &mut Context<'_>) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
