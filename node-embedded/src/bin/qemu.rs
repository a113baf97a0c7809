//! Shoal on QEMU's `mps2-an385`: a Cortex-M3 with a LAN9118 NIC.
//!
//! ```sh
//! cargo run --release --features board-qemu --bin qemu --target thumbv7m-none-eabi
//! ```
//! Per-instance settings come from the semihosting command line
//! (`-semihosting-config enable=on,target=native,arg=shoal,arg=epoch=…`);
//! see `shoal_firmware::settings::Settings::apply`.
#![no_std]
#![no_main]

use core::net::Ipv4Addr;

use defmt_semihosting as _;
use embassy_executor::Spawner;
use embassy_executor::raw::Executor;
use embassy_net::{Ipv4Cidr, StackResources, StaticConfigV4};
use shoal_firmware::driver;
use shoal_firmware::identity::Identity;
use shoal_firmware::qemu::{self, lan9118::Lan9118};
use shoal_firmware::settings::Settings;
use static_cell::StaticCell;

/// QEMU user networking's guest address and gateway.
const SLIRP_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const SLIRP_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

static EXECUTOR: StaticCell<Executor> = StaticCell::new();
static NET: StaticCell<StackResources<2>> = StaticCell::new();
static SETTINGS: StaticCell<Settings> = StaticCell::new();

#[cortex_m_rt::entry]
fn main() -> ! {
    qemu::timer::init();
    let executor = EXECUTOR.init(Executor::new(core::ptr::null_mut()));
    let spawner = executor.spawner();
    match boot(spawner) {
        Ok(task) => spawner.spawn(task),
        Err(e) => defmt::panic!("spawning boot: {}", e),
    }
    qemu::run_executor(executor)
}

#[embassy_executor::task]
async fn boot(spawner: Spawner) {
    let mut line = [0u8; 256];
    let line = qemu::command_line(&mut line);
    let settings = SETTINGS.init(Settings {
        loopback_via: Some(SLIRP_GATEWAY),
        ..Settings::default()
    });
    if let Err(e) = settings.apply(line) {
        defmt::panic!("bad setting {}", e.0);
    }
    let nic = match Lan9118::new() {
        Ok(nic) => nic,
        Err(e) => defmt::panic!("ethernet: {}", e),
    };
    let mac = nic.mac();
    let nonce = embassy_time::Instant::now().as_ticks();
    let identity = Identity::new(&mac, settings.epoch, nonce);

    let (ip, prefix) = settings.ip.unwrap_or((SLIRP_IP, 24));
    let gateway = settings.gateway.or(Some(SLIRP_GATEWAY));
    let net = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(ip, prefix),
        gateway,
        dns_servers: heapless::Vec::new(),
    });
    let seed = identity.id.0 ^ nonce.rotate_left(17);
    let (stack, runner) = embassy_net::new(nic, net, NET.init(StackResources::new()), seed);
    match net_task(runner) {
        Ok(task) => spawner.spawn(task),
        Err(e) => defmt::panic!("spawning net: {}", e),
    }

    driver::start(stack, mac, ip, identity, seed, settings).await
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Lan9118>) -> ! {
    runner.run().await
}

#[cortex_m_rt::exception]
unsafe fn DefaultHandler(irqn: i16) {
    qemu::on_interrupt(irqn);
}

#[cortex_m_rt::exception]
unsafe fn HardFault(frame: &cortex_m_rt::ExceptionFrame) -> ! {
    defmt::error!("hard fault at pc {=u32:08x}", frame.pc());
    qemu::exit(false)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    qemu::exit(false)
}
