//! Firmware images: building them, and measuring them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSection, ObjectSymbol};

/// One board's program.
#[derive(Clone, Copy, Debug)]
pub struct Image {
    /// The program in `node-embedded/src/bin/`.
    pub bin: &'static str,
    /// The feature selecting its board support.
    pub feature: &'static str,
    /// The Rust target it is built for.
    pub target: &'static str,
    /// Flash and static-RAM budgets (RAM without the store arena), if any.
    pub budget: Option<(u64, u64)>,
}

/// The QEMU `mps2-an385` image.
pub const QEMU: Image = Image {
    bin: "qemu",
    feature: "board-qemu",
    target: "thumbv7m-none-eabi",
    budget: Some((128 * 1024, 64 * 1024)),
};

/// The Nucleo-F429ZI image.
pub const NUCLEO: Image = Image {
    bin: "nucleo",
    feature: "board-nucleo",
    target: "thumbv7em-none-eabihf",
    budget: None,
};

/// Every image.
pub const IMAGES: [Image; 2] = [QEMU, NUCLEO];

/// The firmware's build-time settings (read by `node-embedded/build.rs`).
pub const SETTINGS: [&str; 5] = [
    "SHOAL_KEY_HEX",
    "SHOAL_SEEDS",
    "SHOAL_PORT",
    "SHOAL_STORE_BYTES",
    "SHOAL_STORE_ENTRIES",
];

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("xtask lives in tools/xtask")
        .to_path_buf()
}

/// The firmware package's folder.
pub fn dir() -> PathBuf {
    root().join("node-embedded")
}

impl Image {
    /// Builds the image in release with the default settings; its ELF path.
    pub fn build(&self) -> Result<PathBuf> {
        self.build_with(&[])
    }

    /// Builds the image in release with build-time `settings` (environment
    /// variables the firmware's `build.rs` reads, such as `SHOAL_KEY_HEX`
    /// or `SHOAL_STORE_BYTES`); the others keep their defaults, whatever
    /// this process's environment says. Its ELF path.
    pub fn build_with(&self, settings: &[(&str, String)]) -> Result<PathBuf> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let shown: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "== firmware {}: {}cargo build --release --features {} --bin {} --target {}",
            self.bin,
            shown
                .iter()
                .filter(|s| !s.starts_with("SHOAL_KEY_HEX="))
                .map(|s| format!("{s} "))
                .collect::<String>(),
            self.feature,
            self.bin,
            self.target
        );
        let mut cmd = Command::new(cargo);
        for var in SETTINGS {
            cmd.env_remove(var);
        }
        for (k, v) in settings {
            cmd.env(k, v);
        }
        let status = cmd
            .current_dir(dir())
            .args(["build", "--release", "--features", self.feature])
            .args(["--bin", self.bin, "--target", self.target])
            .status()
            .context("running cargo for the firmware")?;
        if !status.success() {
            bail!("building firmware image {} failed", self.bin);
        }
        Ok(self.elf())
    }

    /// Where the built ELF is.
    pub fn elf(&self) -> PathBuf {
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir().join("target"));
        target_dir.join(self.target).join("release").join(self.bin)
    }
}

/// What an image occupies.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sizes {
    /// `.vector_table`, `.text`, `.rodata` and `.data` (its initial values).
    pub flash: u64,
    /// `.data`, `.bss` and `.uninit`.
    pub ram: u64,
    /// The store static (arena and index), part of `ram`.
    pub store: u64,
}

/// Measures the ELF at `path`.
pub fn measure(path: &Path) -> Result<Sizes> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let elf = object::File::parse(&*bytes).context("parsing the ELF")?;
    let mut s = Sizes::default();
    for section in elf.sections() {
        let size = section.size();
        match section.name().unwrap_or("") {
            ".vector_table" | ".text" | ".rodata" => s.flash += size,
            ".data" => {
                s.flash += size;
                s.ram += size;
            }
            ".bss" | ".uninit" => s.ram += size,
            _ => {}
        }
    }
    // The store is the static named STORE in the board program.
    s.store = elf
        .symbols()
        .filter(|sym| sym.name().is_ok_and(|n| n.contains("5STORE17h")))
        .map(|sym| sym.size())
        .sum();
    Ok(s)
}

/// `cargo xtask sizes`: builds every image and prints its sizes; fails
/// when an image is over its budget.
pub fn sizes() -> Result<()> {
    let mut over = Vec::new();
    let mut table = Vec::new();
    for image in IMAGES {
        let elf = image.build()?;
        table.push((image, measure(&elf)?));
    }
    println!();
    println!("| image | target | flash | static RAM (without store) | budget |");
    println!("|---|---|---|---|---|");
    for (image, s) in &table {
        let budget = match image.budget {
            Some((f, r)) => {
                if s.flash > f || s.ram - s.store > r {
                    over.push(image.bin);
                }
                format!("{} KiB flash, {} KiB RAM", f / 1024, r / 1024)
            }
            None => "-".into(),
        };
        println!(
            "| {} | {} | {} B ({:.1} KiB) | {} B ({:.1} KiB) | {budget} |",
            image.bin,
            image.target,
            s.flash,
            s.flash as f64 / 1024.0,
            s.ram - s.store,
            (s.ram - s.store) as f64 / 1024.0,
        );
    }
    println!();
    for (image, s) in &table {
        println!(
            "store arena ({}): {} B (SHOAL_STORE_BYTES plus its index)",
            image.bin, s.store
        );
    }
    if !over.is_empty() {
        bail!("over budget: {}", over.join(", "));
    }
    Ok(())
}
