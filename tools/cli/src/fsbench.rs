//! `shoal bench-fs`: file-system throughput on a 3-node loopback cluster,
//! beside a plain UDP blast between two processes measured in the same run.
//!
//! - **UDP blast** (the baseline): this process sends 1200-byte datagrams
//!   (Shoal's largest) as fast as one socket can to a `shoal udp-sink`
//!   process for a few seconds; the sink counts the bytes it received
//!   between the first and the last datagram. Unsealed, unacknowledged,
//!   one copy.
//! - **put** and **get** of one large file of random bytes through node 1,
//!   from and to a file on local disk, with the cluster's replication
//!   (3 replicas, write quorum 2: every byte is sent to three nodes and
//!   written durably on two before a chunk counts).
//! - **small puts**: 1 KiB files, each a full `put` (chunk, file record,
//!   directory entry), from `concurrency` clients at once, all into one
//!   directory; then **ls** of that directory.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use shoal_core::rng::Rng;
use shoal_core::wire::MAX_DATAGRAM;

use crate::client::Client;
use crate::cluster::{self, LocalCluster};
use crate::fs::{self, Remote};
use crate::members;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Size of the large file, in MiB.
    pub size_mib: u64,
    /// Small files to put.
    pub files: usize,
    /// Clients putting small files at once.
    pub concurrency: usize,
    /// The cluster's chunk size, if not the default.
    pub chunk_size: Option<u32>,
}

/// How long the UDP blast runs.
const BLAST: Duration = Duration::from_secs(3);

/// Runs the benchmark and prints a Markdown table.
pub fn run(o: &Options) -> Result<()> {
    if o.size_mib == 0 || o.files == 0 || o.concurrency == 0 {
        bail!("--size-mib, --files and --concurrency must be at least 1");
    }
    let bin = cluster::node_binary()?;
    let dir = std::env::temp_dir().join(format!("shoal-bench-fs-{}", std::process::id()));
    cluster::stop_on_interrupt(Some(dir.clone()));
    let result = measure(o, bin, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let r = result?;
    let mb = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    let blast = mb(r.blast_bytes, r.blast_time);
    let put = mb(r.size, r.put);
    let get = mb(r.size, r.get);
    let small = r.small_files as f64 / r.small_time.as_secs_f64();
    println!(
        "| measurement | result | of UDP blast |\n|---|---|---|\n\
         | UDP blast, 1200-byte datagrams, two processes | {blast:.0} MB/s | 100% |\n\
         | put {} MiB (3 replicas, W = 2, chunk {} B) | {put:.1} MB/s | {:.1}% |\n\
         | get {} MiB | {get:.1} MB/s | {:.1}% |\n\
         | put 1 KiB files, concurrency {} | {small:.0} files/s | - |\n\
         | ls of a directory of {} files | {:.2} s | - |",
        o.size_mib,
        r.chunk_size,
        100.0 * put / blast,
        o.size_mib,
        100.0 * get / blast,
        o.concurrency,
        r.listed,
        r.ls.as_secs_f64(),
    );
    Ok(())
}

struct Results {
    blast_bytes: u64,
    blast_time: Duration,
    chunk_size: u32,
    size: u64,
    put: Duration,
    get: Duration,
    small_files: usize,
    small_time: Duration,
    listed: usize,
    ls: Duration,
}

fn measure(o: &Options, bin: PathBuf, dir: &Path) -> Result<Results> {
    std::fs::create_dir_all(dir)?;
    eprintln!("bench-fs: UDP blast for {} s", BLAST.as_secs());
    let (blast_bytes, blast_time) = blast()?;

    let input = dir.join("input.bin");
    eprintln!("bench-fs: writing {} MiB of random bytes", o.size_mib);
    let want = random_file(&input, o.size_mib << 20)?;

    let mut c = LocalCluster::create(&dir.join("cluster"), bin, false)?;
    if let Some(cs) = o.chunk_size {
        c.node_args(["--chunk-size".to_string(), cs.to_string()]);
    }
    eprintln!("bench-fs: starting 3 nodes");
    c.start(3)?;
    for i in 0..3 {
        c.wait_for_view(i, Duration::from_secs(20), |r| members::alive(r) == 3)?;
    }
    let mut client = c.client(0, Duration::from_secs(10))?;
    let chunk_size = fs::info(&mut client)?.chunk_size;

    let remote = Remote::file("/bench/big.bin".into())?;
    eprintln!("bench-fs: put");
    let start = Instant::now();
    let meta = fs::put_from(&mut client, fs::Source::open(&input)?, &remote)?;
    let put = start.elapsed();
    let output = dir.join("output.bin");
    eprintln!("bench-fs: get");
    let start = Instant::now();
    fs::get_to(&mut client, &remote, &output, false)?;
    let get = start.elapsed();
    if sha256_of(&output)? != want || meta.size != o.size_mib << 20 {
        bail!("the file read back differs from the one put");
    }
    let _ = std::fs::remove_file(&output);
    let _ = std::fs::remove_file(&input);

    eprintln!(
        "bench-fs: {} puts of 1 KiB files from {} clients",
        o.files, o.concurrency
    );
    let small = dir.join("small");
    std::fs::create_dir_all(&small)?;
    let mut clients = Vec::new();
    for i in 0..o.concurrency {
        clients.push(c.client(i % 3, Duration::from_secs(10))?);
    }
    let start = Instant::now();
    let per = o.files.div_ceil(o.concurrency);
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(t, mut client)| {
                let small = &small;
                s.spawn(move || small_puts(&mut client, small, t, per))
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        Ok(())
    })?;
    let small_time = start.elapsed();
    eprintln!("bench-fs: ls");
    let start = Instant::now();
    let listed = fs::list(&mut client, &Remote::dir("/small".into())?)?.len();
    let ls = start.elapsed();
    if listed != per * o.concurrency {
        bail!("ls listed {listed} files, not {}", per * o.concurrency);
    }
    c.stop();
    Ok(Results {
        blast_bytes,
        blast_time,
        chunk_size,
        size: o.size_mib << 20,
        put,
        get,
        small_files: per * o.concurrency,
        small_time,
        listed,
        ls,
    })
}

/// Client `t` puts `n` distinct 1 KiB files.
fn small_puts(client: &mut Client, dir: &Path, t: usize, n: usize) -> Result<()> {
    let local = dir.join(format!("src-{t}"));
    let mut rng = Rng::new(t as u64 + 1);
    for i in 0..n {
        let mut data = [0u8; 1024];
        for b in data.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        std::fs::write(&local, data)?;
        let remote = Remote::file(format!("/small/{t}-{i}").into())?;
        fs::put_from(client, fs::Source::open(&local)?, &remote)
            .with_context(|| format!("put {remote}"))?;
    }
    Ok(())
}

fn random_file(path: &Path, len: u64) -> Result<[u8; 32]> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut rng = Rng::new(0xb16);
    let mut hash = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            w.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        hash.update(&block[..n]);
        left -= n as u64;
    }
    out.flush()?;
    Ok(hash.finalize().into())
}

fn sha256_of(path: &Path) -> Result<[u8; 32]> {
    let mut f = BufReader::new(File::open(path)?);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hash.finalize().into());
        }
        hash.update(&buf[..n]);
    }
}

/// Blasts datagrams at a `shoal udp-sink` process; the bytes it received
/// and over how long.
fn blast() -> Result<(u64, Duration)> {
    let exe = std::env::current_exe().context("cannot find the shoal binary")?;
    let mut sink = Command::new(exe)
        .arg("udp-sink")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the sink process")?;
    let mut lines = BufReader::new(sink.stdout.take().context("sink has no stdout")?).lines();
    let addr: SocketAddr = lines
        .next()
        .context("the sink printed nothing")??
        .trim()
        .parse()
        .context("the sink printed no address")?;
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let data = [0x5au8; MAX_DATAGRAM];
    let end = Instant::now() + BLAST;
    while Instant::now() < end {
        for _ in 0..64 {
            let _ = socket.send_to(&data, addr);
        }
    }
    // The end marker: a 1-byte datagram, a few times in case one is lost.
    let report = loop {
        let _ = socket.send_to(&[0], addr);
        std::thread::sleep(Duration::from_millis(50));
        if let Some(line) = lines.next() {
            break line?;
        }
    };
    let _ = sink.wait();
    let mut parts = report.split_whitespace();
    let bytes: u64 = parts.next().context("no byte count")?.parse()?;
    let micros: u64 = parts.next().context("no duration")?.parse()?;
    Ok((bytes, Duration::from_micros(micros.max(1))))
}

/// `shoal udp-sink`: binds 127.0.0.1, prints its address, counts the bytes
/// of datagrams larger than one byte, and on the first 1-byte datagram
/// prints `BYTES MICROS` (first to last counted datagram) and exits.
pub fn udp_sink() -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    // Room for bursts, as a node's socket would want.
    println!("{}", socket.local_addr()?);
    std::io::stdout().flush()?;
    let mut buf = [0u8; 2048];
    let mut bytes = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        let (n, _) = socket.recv_from(&mut buf)?;
        if n <= 1 {
            break;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        bytes += n as u64;
    }
    let micros = first.map_or(0, |f| (last - f).as_micros() as u64);
    println!("{bytes} {micros}");
    Ok(())
}
