//! Shoal on a Nucleo-F429ZI: STM32F429ZI, Ethernet over RMII to its LAN8742
//! PHY, an address from DHCP, defmt over RTT.
//!
//! ```sh
//! SHOAL_SEEDS=192.168.1.10:7000 SHOAL_KEY_HEX=$(cat cluster.key) cargo nucleo
//! ```
//! (`cargo nucleo` flashes with `probe-rs run --chip STM32F429ZITx`.)
//!
//! Identity: the chip's 96-bit unique id and a per-boot nonce from the
//! hardware RNG; with no persistent storage yet, each boot joins as a new
//! member at epoch 1 (see `shoal_firmware::identity`).
#![no_std]
#![no_main]

use defmt_rtt as _;
use embassy_executor::Spawner;
use embassy_net::StackResources;
use embassy_stm32::bind_interrupts;
use embassy_stm32::eth::{self, Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::peripherals::{ETH, ETH_SMA, RNG};
use embassy_stm32::rng::{self, Rng};
use embassy_stm32::time::Hertz;
use panic_probe as _;
use shoal_firmware::driver;
use shoal_firmware::identity::Identity;
use shoal_firmware::settings::Settings;
use static_cell::StaticCell;

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    HASH_RNG => rng::InterruptHandler<RNG>;
});

type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;

static PACKETS: StaticCell<PacketQueue<4, 4>> = StaticCell::new();
static NET: StaticCell<StackResources<3>> = StaticCell::new();
static SETTINGS: StaticCell<Settings> = StaticCell::new();

fn clocks() -> embassy_stm32::Config {
    use embassy_stm32::rcc::*;
    let mut config = embassy_stm32::Config::default();
    // 8 MHz from the ST-LINK; 168 MHz system clock, 48 MHz for the RNG.
    config.rcc.hse = Some(Hse {
        freq: Hertz(8_000_000),
        mode: HseMode::Bypass,
    });
    config.rcc.pll_src = PllSource::HSE;
    config.rcc.pll = Some(Pll {
        prediv: PllPreDiv::DIV4,
        mul: PllMul::MUL168,
        divp: Some(PllPDiv::DIV2),
        divq: Some(PllQDiv::DIV7),
        divr: None,
    });
    config.rcc.ahb_pre = AHBPrescaler::DIV1;
    config.rcc.apb1_pre = APBPrescaler::DIV4;
    config.rcc.apb2_pre = APBPrescaler::DIV2;
    config.rcc.sys = Sysclk::PLL1_P;
    config
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_stm32::init(clocks());
    let mut rng = Rng::new(p.RNG, Irqs);
    let nonce = rng.next_u64();
    let uid = embassy_stm32::uid::uid();
    let settings = SETTINGS.init(Settings::default());
    let identity = Identity::new(&uid, settings.epoch, nonce);
    // A locally administered unicast MAC, stable per chip.
    let u = uid;
    let mac = [
        0x02,
        u[0] ^ u[6],
        u[1] ^ u[7],
        u[2] ^ u[8],
        u[3] ^ u[9],
        u[4] ^ u[10] ^ u[5] ^ u[11],
    ];

    let device: Device = Ethernet::new(
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
    let net = embassy_net::Config::dhcpv4(Default::default());
    let seed = rng.next_u64();
    let (stack, runner) = embassy_net::new(device, net, NET.init(StackResources::new()), seed);
    match net_task(runner) {
        Ok(task) => spawner.spawn(task),
        Err(e) => defmt::panic!("spawning net: {}", e),
    }
    defmt::info!("waiting for DHCP");
    stack.wait_config_up().await;
    let Some(v4) = stack.config_v4() else {
        defmt::panic!("DHCP finished without an IPv4 address");
    };
    let ip = v4.address.address();
    driver::start(stack, mac, ip, identity, seed, settings).await
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device>) -> ! {
    runner.run().await
}
