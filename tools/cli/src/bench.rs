//! `shoal bench`: key-addressed request round trips on a 3-node loopback
//! cluster, beside plain UDP echo between two processes measured in the
//! same run, at concurrency 1 and 64.
//!
//! A shoal round trip is: the client seals a request to n1, n1 forwards it
//! to the key's owner when that is another node (about two keys in three),
//! the owner answers back along the same path, every hop over the reliable
//! link (sealed, acknowledged). The echo is one unsealed datagram each way.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_core::Pool;

/// The concurrency the network benchmark measures at, beside 1 (its
/// recorded results use 64; a client keeps up to
/// [`MAX_IN_FLIGHT`](crate::client::MAX_IN_FLIGHT)).
const CONCURRENCY: usize = 64;
use crate::cluster::{self, LocalCluster};
use crate::members;

const PAYLOAD: usize = 32;

/// One measurement.
struct Measure {
    what: &'static str,
    concurrency: usize,
    requests: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    mean_hops: Option<f64>,
}

impl Measure {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: usize) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = (self.latencies.len() * p / 100).min(self.latencies.len() - 1);
        self.latencies[i]
    }
}

/// Runs the benchmark and prints a Markdown table.
pub fn run(requests: usize) -> Result<()> {
    if requests < 100 {
        bail!("--requests must be at least 100");
    }
    let bin = cluster::node_binary()?;
    let dir = std::env::temp_dir().join(format!("shoal-bench-{}", std::process::id()));
    cluster::stop_on_interrupt(Some(dir.clone()));
    let mut results = Vec::new();
    {
        let mut c = LocalCluster::create(&dir, bin, false)?;
        eprintln!("bench: starting 3 nodes in {}", dir.display());
        c.start(3)?;
        for i in 0..3 {
            c.wait_for_view(i, Duration::from_secs(20), |r| members::alive(r) == 3)?;
        }
        let mut client = c.client(0, Duration::from_secs(5))?;
        let keys: Vec<Vec<u8>> = (0..requests)
            .map(|i| format!("bench-{i}").into_bytes())
            .collect();
        let payload = [0x5a; PAYLOAD];
        eprintln!("bench: warming up");
        client.send_many(Pool::Data, &keys[..requests.min(2000)], &payload, 16)?;
        for concurrency in [1, CONCURRENCY] {
            let n = if concurrency == 1 {
                requests / 4
            } else {
                requests
            };
            eprintln!("bench: {n} key-addressed requests at concurrency {concurrency}");
            let start = Instant::now();
            let outcomes = client.send_many(Pool::Data, &keys[..n], &payload, concurrency)?;
            let elapsed = start.elapsed();
            let mut latencies = Vec::with_capacity(n);
            let mut hops = 0u64;
            let mut failed = 0;
            for o in &outcomes {
                match o.result {
                    Ok(sent) => {
                        latencies.push(o.latency);
                        hops += u64::from(sent.hops);
                    }
                    Err(_) => failed += 1,
                }
            }
            latencies.sort();
            results.push(Measure {
                what: "shoal send (key-addressed, 3 nodes)",
                concurrency,
                requests: n,
                failed,
                elapsed,
                mean_hops: Some(hops as f64 / latencies.len().max(1) as f64),
                latencies,
            });
        }
        c.stop();
    }
    let _ = std::fs::remove_dir_all(&dir);

    let (mut echo, addr) = spawn_echo()?;
    for concurrency in [1, CONCURRENCY] {
        let n = if concurrency == 1 {
            requests / 4
        } else {
            requests
        };
        eprintln!("bench: {n} UDP echoes at concurrency {concurrency}");
        results.push(echo_round_trips(addr, n, concurrency)?);
    }
    let _ = echo.kill();
    let _ = echo.wait();

    println!("| path | concurrency | requests | failed | round trips/s | p50 | p99 | mean hops |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in &results {
        println!(
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} |",
            m.what,
            m.concurrency,
            m.requests,
            m.failed,
            m.rate(),
            micros(m.percentile(50)),
            micros(m.percentile(99)),
            m.mean_hops.map_or("-".into(), |h| format!("{h:.2}")),
        );
    }
    Ok(())
}

fn micros(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

/// Starts `shoal udp-echo` and reads the port it bound.
fn spawn_echo() -> Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe().context("cannot find the running shoal binary")?;
    let mut child = Command::new(exe)
        .arg("udp-echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the echo process")?;
    let stdout = child.stdout.take().context("echo process has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .parse()
        .with_context(|| format!("echo process printed {line:?}, not an address"))?;
    Ok((child, addr))
}

/// Round trips of `PAYLOAD`-byte datagrams to the echo process, keeping
/// `concurrency` in flight. A datagram not back within a second counts as
/// failed.
fn echo_round_trips(addr: SocketAddr, n: usize, concurrency: usize) -> Result<Measure> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut in_flight: HashMap<u64, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(n);
    let mut failed = 0;
    let mut next = 0u64;
    let mut buf = [0u8; PAYLOAD];
    let start = Instant::now();
    while latencies.len() + failed < n {
        while in_flight.len() < concurrency && (next as usize) < n {
            buf[..8].copy_from_slice(&next.to_le_bytes());
            socket.send(&buf)?;
            in_flight.insert(next, Instant::now());
            next += 1;
        }
        let mut reply = [0u8; PAYLOAD];
        match socket.recv(&mut reply) {
            Ok(len) if len >= 8 => {
                let seq = u64::from_le_bytes(reply[..8].try_into().unwrap_or_default());
                if let Some(sent) = in_flight.remove(&seq) {
                    latencies.push(sent.elapsed());
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                failed += in_flight.len();
                in_flight.clear();
            }
            Err(e) => return Err(e.into()),
        }
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(Measure {
        what: "UDP echo (two processes, unsealed)",
        concurrency,
        requests: n,
        failed,
        elapsed,
        latencies,
        mean_hops: None,
    })
}

/// `shoal udp-echo`: binds 127.0.0.1, prints its address, echoes every
/// datagram until its standard input closes (its parent went away).
pub fn udp_echo() -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    println!("{}", socket.local_addr()?);
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..n], from)?;
    }
}
