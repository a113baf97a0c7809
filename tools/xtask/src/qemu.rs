//! Running firmware in QEMU and decoding its defmt log.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};
use defmt_decoder::{DecodeError, Table};

/// One QEMU instance's settings.
#[derive(Clone, Debug)]
pub struct Instance {
    /// The firmware ELF.
    pub elf: PathBuf,
    /// The NIC's MAC address.
    pub mac: String,
    /// Host UDP port forwarded to the node's port 7000.
    pub host_port: u16,
    /// `name=value` words for the firmware's semihosting command line.
    pub args: Vec<String>,
}

/// The `qemu-system-arm` command for `instance`: `mps2-an385`, user
/// networking with the node's port forwarded, semihosting for the log.
pub fn command(instance: &Instance) -> Command {
    let mut semi = String::from("enable=on,target=native,arg=shoal");
    for a in &instance.args {
        semi.push_str(",arg=");
        semi.push_str(a);
    }
    let mut cmd = Command::new("qemu-system-arm");
    cmd.args(["-M", "mps2-an385", "-nographic", "-monitor", "none"])
        .args(["-serial", "none", "-semihosting-config", &semi])
        .arg("-nic")
        .arg(format!(
            "user,model=lan9118,mac={},hostfwd=udp:127.0.0.1:{}-:7000",
            instance.mac, instance.host_port
        ))
        .arg("-kernel")
        .arg(&instance.elf);
    cmd
}

/// Starts `instance`; its log is decoded and printed with `prefix` by a
/// background thread.
pub fn spawn(instance: &Instance, prefix: String) -> Result<(Child, JoinHandle<()>)> {
    let mut child = command(instance)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .context("starting qemu-system-arm (apt-get install qemu-system-arm)")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let elf = instance.elf.clone();
    let log = std::thread::spawn(move || {
        if let Err(e) = decode(&elf, stdout, &prefix) {
            eprintln!("{prefix}log decoder: {e:#}");
        }
    });
    Ok((child, log))
}

/// Decodes the defmt stream `input` with the tables of `elf`, printing one
/// line per frame.
pub fn decode(elf: &Path, mut input: impl Read, prefix: &str) -> Result<()> {
    let bytes = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
    let table = Table::parse(&bytes)?.ok_or_else(|| anyhow!("the ELF has no defmt table"))?;
    let mut decoder = table.new_stream_decoder();
    let mut buf = [0u8; 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        decoder.received(&buf[..n]);
        loop {
            match decoder.decode() {
                Ok(frame) => println!("{prefix}{}", frame.display(false)),
                Err(DecodeError::UnexpectedEof) => break,
                Err(DecodeError::Malformed) => {
                    println!("{prefix}(malformed defmt frame)");
                    break;
                }
            }
        }
    }
}

/// `cargo xtask qemu ELF [WORDS…]`: the firmware's cargo runner; boots one
/// image with host port 7101 forwarded and prints its log. The image
/// advertises 127.0.0.1:7101 and boots in epoch "now" unless `words` say
/// otherwise.
pub fn run(elf: PathBuf, words: Vec<String>) -> Result<()> {
    let mut args = vec![
        format!("epoch={}", crate::fleet::epoch_now()),
        "advertise=127.0.0.1:7101".to_string(),
    ];
    args.extend(words);
    let instance = Instance {
        elf,
        mac: "52:54:00:12:34:51".into(),
        host_port: 7101,
        args,
    };
    let (mut child, log) = spawn(&instance, String::new())?;
    let status = child.wait()?;
    let _ = log.join();
    if !status.success() {
        anyhow::bail!("qemu exited with {status}");
    }
    Ok(())
}
