//! Flags and the config file.
//!
//! Every setting is a flag and may also be written in a TOML file named by
//! `--config`; a flag overrides the file. [`Flags::settings`] checks the
//! result and turns it into [`Settings`], or into a [`ConfigError`] that says
//! what to fix. Relative paths in the file are taken from the file's folder.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use shoal_core::fs::CHUNK_SIZES;
use shoal_core::id::{MAX_TAGS, NAME_LEN, Name, TAG_LEN, Tag, Tags};
use shoal_core::member::MAX_SEEDS;
use shoal_core::node::{DataConfig, MAX_MESSAGE};
use shoal_core::repl::{MAX_REPLICAS, Quorum};
use shoal_core::{Pool, PoolSet};

/// Where a node listens when neither flag nor file says.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";
/// The router weight of a host that does not say.
pub const DEFAULT_WEIGHT: u32 = 100;
/// The pools a host serves unless told otherwise (`mcu` is for microcontrollers).
pub const HOST_POOLS: [Pool; 4] = [Pool::Meta, Pool::Data, Pool::Runner, Pool::Sched];

/// The command line.
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "shoal-node",
    version,
    about = "Runs one Shoal host node.",
    after_help = "Every flag may also be set in the --config file (see docs/node.md); flags win."
)]
pub struct Flags {
    /// TOML file holding any of the settings below.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Name shown to operators, at most 24 bytes [default: the host name].
    #[arg(long)]
    pub name: Option<String>,
    /// UDP address to listen on [default: 127.0.0.1:7000].
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Address peers reach this node at [default: the listen address].
    #[arg(long, value_name = "IP:PORT")]
    pub advertise: Option<String>,
    /// A member to join the cluster through; repeat for more (at most 8).
    #[arg(long, value_name = "IP:PORT")]
    pub join: Vec<String>,
    /// Data directory: the node's identity and store (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Cluster key file, holding 64 hex digits.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Relative capacity for placement; 0 places nothing here [default: 100].
    #[arg(long, value_name = "N")]
    pub weight: Option<u32>,
    /// Pools served, comma-separated [default: meta,data,runner,sched].
    #[arg(long, value_name = "POOLS", value_delimiter = ',')]
    pub pools: Option<Vec<String>>,
    /// Labels for the scheduler, comma-separated: at most 4, 16 bytes each.
    #[arg(long, value_name = "TAGS", value_delimiter = ',')]
    pub tags: Option<Vec<String>>,
    /// Address to serve /status, /metrics and the status page on [default: none].
    #[arg(long, value_name = "IP:PORT")]
    pub http: Option<String>,
    /// Bytes per file chunk this node tells clients to cut files into,
    /// 1024 to 15360 [default: 2048, what a microcontroller carries].
    #[arg(long, value_name = "BYTES")]
    pub chunk_size: Option<u32>,
    /// Copies of each chunk and record, 1 to 5 [default: 3].
    #[arg(long, value_name = "N")]
    pub replicas: Option<u8>,
    /// Copies a write waits for before it succeeds, 1 to N [default: 2].
    #[arg(long, value_name = "W")]
    pub write_quorum: Option<u8>,
    /// Answers a record read waits for, 1 to N [default: 2].
    #[arg(long, value_name = "R")]
    pub read_quorum: Option<u8>,
    /// Most bytes this node's store holds; beyond it the node refuses new
    /// chunks and records, and writers place them on the next node
    /// [default: no limit but the disk's].
    #[arg(long, value_name = "BYTES")]
    pub max_store: Option<u64>,
}

/// The config file: the same settings as the flags, by the same names.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    name: Option<String>,
    listen: Option<String>,
    advertise: Option<String>,
    join: Option<Vec<String>>,
    data: Option<PathBuf>,
    key: Option<PathBuf>,
    weight: Option<u32>,
    pools: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    http: Option<String>,
    chunk_size: Option<u32>,
    replicas: Option<u8>,
    write_quorum: Option<u8>,
    read_quorum: Option<u8>,
    max_store: Option<u64>,
}

/// Checked settings, ready to start a node with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Name shown to operators.
    pub name: Name,
    /// UDP address to bind (its port may be 0: the OS picks one).
    pub listen: SocketAddr,
    /// Address peers reach this node at; `None` means the bound address.
    pub advertise: Option<SocketAddr>,
    /// Members to join through.
    pub join: Vec<SocketAddr>,
    /// Data directory.
    pub data: PathBuf,
    /// Cluster key file.
    pub key: PathBuf,
    /// Router weight.
    pub weight: u32,
    /// Pools served.
    pub pools: PoolSet,
    /// Scheduler labels.
    pub tags: Tags,
    /// Status server address.
    pub http: Option<SocketAddr>,
    /// Bytes per file chunk.
    pub chunk_size: u32,
    /// Replicas, write quorum and read quorum.
    pub quorum: Quorum,
    /// Most bytes of chunks and records to store, if limited.
    pub max_store: Option<u64>,
}

impl Settings {
    /// The address to advertise once the UDP socket is bound to `bound`.
    pub fn advertised(&self, bound: SocketAddr) -> SocketAddr {
        self.advertise.unwrap_or(bound)
    }
}

/// Why the settings cannot start a node. Each message says what to change.
#[derive(Debug)]
pub enum ConfigError {
    /// The config file could not be read.
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The config file is not valid TOML or has an unknown or mistyped key.
    ParseFile {
        /// The file.
        path: PathBuf,
        /// Line of the mistake, from 1.
        line: usize,
        /// What is wrong there.
        message: String,
    },
    /// An address is not `IP:PORT`.
    Address {
        /// The flag (or file key) it came from.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// The advertised address is one peers cannot send to.
    Unreachable(SocketAddr),
    /// No data directory was given.
    NoData,
    /// No key file was given.
    NoKey,
    /// More `--join` addresses than a node keeps.
    TooManySeeds(usize),
    /// A pool name that is not one of [`Pool::ALL`].
    UnknownPool(String),
    /// More tags than a node carries.
    TooManyTags(usize),
    /// A tag longer than [`TAG_LEN`] bytes.
    TagTooLong(String),
    /// A name longer than [`NAME_LEN`] bytes.
    NameTooLong(String),
    /// A chunk size outside [`CHUNK_SIZES`].
    ChunkSize(u32),
    /// Replicas and quorums that do not fit `1 ≤ W, R ≤ N ≤ 5`.
    Quorum(Quorum),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::ReadFile { path, source } => write!(
                f,
                "cannot read config file {}: {}",
                path.display(),
                crate::io_reason(source)
            ),
            ConfigError::ParseFile {
                path,
                line,
                message,
            } => write!(f, "config file {} line {line}: {message}", path.display()),
            ConfigError::Address { flag, value } => {
                write!(f, "invalid --{flag} address '{value}': expected IP:PORT")
            }
            ConfigError::Unreachable(addr) if addr.port() == 0 => write!(
                f,
                "cannot advertise {addr}: peers need a real port; pass --advertise IP:PORT"
            ),
            ConfigError::Unreachable(addr) => write!(
                f,
                "cannot advertise {addr}: peers cannot send to an unspecified address; \
                 pass --advertise IP:PORT with an address they reach"
            ),
            ConfigError::NoData => {
                f.write_str("no data dir: pass --data DIR (it is created if missing)")
            }
            ConfigError::NoKey => f.write_str(
                "no cluster key: create one with 'shoal keygen --out FILE' and pass --key FILE",
            ),
            ConfigError::TooManySeeds(n) => write!(
                f,
                "{n} --join addresses given; a node joins through at most {MAX_SEEDS}"
            ),
            ConfigError::UnknownPool(name) => {
                let names: Vec<&str> = Pool::ALL.iter().map(|p| p.name()).collect();
                write!(
                    f,
                    "unknown pool '{name}' in --pools: expected some of {}",
                    names.join(", ")
                )
            }
            ConfigError::TooManyTags(n) => {
                write!(f, "{n} tags given; a node carries at most {MAX_TAGS}")
            }
            ConfigError::TagTooLong(tag) => {
                write!(f, "tag '{tag}' is longer than {TAG_LEN} bytes")
            }
            ConfigError::NameTooLong(name) => {
                write!(f, "name '{name}' is longer than {NAME_LEN} bytes")
            }
            ConfigError::ChunkSize(size) => write!(
                f,
                "--chunk-size {size} is out of range: choose {} to {} bytes",
                CHUNK_SIZES.start(),
                CHUNK_SIZES.end()
            ),
            ConfigError::Quorum(q) => write!(
                f,
                "--replicas {}, --write-quorum {}, --read-quorum {} do not fit: need \
                 1 <= replicas <= {MAX_REPLICAS} and both quorums between 1 and the replicas",
                q.n, q.w, q.r
            ),
        }
    }
}

/// The message carries the cause, so there is no separate source.
impl std::error::Error for ConfigError {}

impl Flags {
    /// Reads the config file, if any, lays the flags over it and checks the
    /// result.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        self.merge(file)
    }

    fn merge(&self, file: FileConfig) -> Result<Settings, ConfigError> {
        let name = match self.name.clone().or(file.name).filter(|n| !n.is_empty()) {
            Some(n) => Name::try_from(n.as_str()).map_err(|_| ConfigError::NameTooLong(n))?,
            None => default_name(),
        };
        let listen = self
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = parse_addr("listen", &listen)?;
        let advertise = match self.advertise.clone().or(file.advertise) {
            Some(a) => Some(parse_addr("advertise", &a)?),
            None => None,
        };
        let shown = advertise.unwrap_or(listen);
        if shown.ip().is_unspecified() || advertise.is_some_and(|a| a.port() == 0) {
            return Err(ConfigError::Unreachable(shown));
        }
        let join = if self.join.is_empty() {
            file.join.unwrap_or_default()
        } else {
            self.join.clone()
        };
        let join = join
            .iter()
            .map(|a| parse_addr("join", a))
            .collect::<Result<Vec<_>, _>>()?;
        if join.len() > MAX_SEEDS {
            return Err(ConfigError::TooManySeeds(join.len()));
        }
        let pools = match self.pools.clone().or(file.pools) {
            Some(names) => parse_pools(&names)?,
            None => HOST_POOLS.into_iter().collect(),
        };
        let tags = parse_tags(&self.tags.clone().or(file.tags).unwrap_or_default())?;
        let http = match self.http.clone().or(file.http) {
            Some(a) => Some(parse_addr("http", &a)?),
            None => None,
        };
        let chunk_size = self
            .chunk_size
            .or(file.chunk_size)
            .unwrap_or(DataConfig::default().chunk_size);
        if !CHUNK_SIZES.contains(&chunk_size) {
            return Err(ConfigError::ChunkSize(chunk_size));
        }
        let defaults = DataConfig::default().quorum;
        let quorum = Quorum {
            n: self.replicas.or(file.replicas).unwrap_or(defaults.n),
            w: self
                .write_quorum
                .or(file.write_quorum)
                .unwrap_or(defaults.w),
            r: self.read_quorum.or(file.read_quorum).unwrap_or(defaults.r),
        };
        if !quorum.is_valid() {
            return Err(ConfigError::Quorum(quorum));
        }
        Ok(Settings {
            name,
            listen,
            advertise,
            join,
            data: self.data.clone().or(file.data).ok_or(ConfigError::NoData)?,
            key: self.key.clone().or(file.key).ok_or(ConfigError::NoKey)?,
            weight: self.weight.or(file.weight).unwrap_or(DEFAULT_WEIGHT),
            pools,
            tags,
            http,
            chunk_size,
            quorum,
            max_store: self.max_store.or(file.max_store),
        })
    }
}

// A chunk of the largest size, with its request's envelope, fits the
// message buffer of a host node.
const _: () = assert!(*CHUNK_SIZES.end() as usize + 64 <= MAX_MESSAGE);

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let mut file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        line: e
            .span()
            .map_or(1, |s| 1 + text[..s.start].matches('\n').count()),
        message: e.message().trim().replace('\n', "; "),
    })?;
    // Paths in the file are relative to the file, not to where the node runs.
    let base = path.parent().unwrap_or(Path::new(""));
    for p in [&mut file.data, &mut file.key].into_iter().flatten() {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(file)
}

fn parse_addr(flag: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::Address {
        flag,
        value: value.to_owned(),
    })
}

fn parse_pools(names: &[String]) -> Result<PoolSet, ConfigError> {
    names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(|n| Pool::from_name(n).ok_or_else(|| ConfigError::UnknownPool(n.to_owned())))
        .collect()
}

fn parse_tags(names: &[String]) -> Result<Tags, ConfigError> {
    let names: Vec<&str> = names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .collect();
    if names.len() > MAX_TAGS {
        return Err(ConfigError::TooManyTags(names.len()));
    }
    let mut tags = Tags::new();
    for n in names {
        let tag = Tag::try_from(n).map_err(|_| ConfigError::TagTooLong(n.to_owned()))?;
        // Cannot fail: the count was checked above.
        let _ = tags.push(tag);
    }
    Ok(tags)
}

/// The host's name, cut to what a node name holds.
fn default_name() -> Name {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let mut name = Name::new();
    for c in host.trim().chars() {
        if name.push(c).is_err() {
            break;
        }
    }
    if name.is_empty() {
        let _ = name.push_str("shoal-node");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut all = vec!["shoal-node"];
        all.extend_from_slice(args);
        Flags::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults() {
        let s = flags(&["--data", "d", "--key", "k"]).settings().unwrap();
        assert_eq!(s.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(s.advertise, None);
        assert_eq!(s.weight, DEFAULT_WEIGHT);
        assert_eq!(s.pools, HOST_POOLS.into_iter().collect());
        assert!(s.tags.is_empty() && s.join.is_empty() && s.http.is_none());
        assert!(!s.name.is_empty());
    }

    #[test]
    fn lists_and_repeats() {
        let s = flags(&[
            "--data",
            "d",
            "--key",
            "k",
            "--join",
            "127.0.0.1:1",
            "--join",
            "[::1]:2",
            "--pools",
            "meta,runner",
            "--tags",
            "gpu,fast",
            "--weight",
            "7",
        ])
        .settings()
        .unwrap();
        assert_eq!(s.join.len(), 2);
        assert_eq!(s.pools, [Pool::Meta, Pool::Runner].into_iter().collect());
        assert_eq!(s.tags.len(), 2);
        assert_eq!(s.tags[1].as_str(), "fast");
        assert_eq!(s.weight, 7);
    }

    #[test]
    fn errors_say_what_to_fix() {
        let err = |args: &[&str]| flags(args).settings().unwrap_err().to_string();
        assert_eq!(
            err(&["--data", "d", "--key", "k", "--listen", "nope"]),
            "invalid --listen address 'nope': expected IP:PORT"
        );
        assert_eq!(
            err(&["--data", "d"]),
            "no cluster key: create one with 'shoal keygen --out FILE' and pass --key FILE"
        );
        assert!(err(&["--key", "k"]).starts_with("no data dir"));
        assert!(
            err(&["--data", "d", "--key", "k", "--listen", "0.0.0.0:7000"])
                .starts_with("cannot advertise 0.0.0.0:7000")
        );
        assert!(
            err(&["--data", "d", "--key", "k", "--advertise", "10.0.0.1:0"]).contains("real port")
        );
        assert!(err(&["--data", "d", "--key", "k", "--pools", "meta,x"]).contains("'x'"));
        assert!(err(&["--data", "d", "--key", "k", "--tags", "a,b,c,d,e"]).contains("at most 4"));
        assert!(
            err(&["--data", "d", "--key", "k", "--tags", "abcdefghijklmnopq"])
                .contains("longer than 16")
        );
        assert!(
            err(&["--data", "d", "--key", "k", "--name", &"n".repeat(25)])
                .contains("longer than 24")
        );
    }

    #[test]
    fn chunk_size_and_quorums() {
        let s = flags(&["--data", "d", "--key", "k"]).settings().unwrap();
        assert_eq!(s.chunk_size, DataConfig::default().chunk_size);
        assert_eq!(s.quorum, DataConfig::default().quorum);
        let s = flags(&[
            "--data",
            "d",
            "--key",
            "k",
            "--chunk-size",
            "15360",
            "--replicas",
            "5",
            "--write-quorum",
            "3",
            "--read-quorum",
            "3",
        ])
        .settings()
        .unwrap();
        assert_eq!(s.chunk_size, 15 * 1024);
        assert_eq!(s.quorum, Quorum { n: 5, w: 3, r: 3 });
        // One replica: the default quorums no longer fit and must be given.
        let s = flags(&[
            "--data",
            "d",
            "--key",
            "k",
            "--replicas",
            "1",
            "--write-quorum",
            "1",
            "--read-quorum",
            "1",
        ])
        .settings()
        .unwrap();
        assert_eq!(s.quorum, Quorum { n: 1, w: 1, r: 1 });

        let err = |args: &[&str]| {
            let mut all = vec!["--data", "d", "--key", "k"];
            all.extend_from_slice(args);
            flags(&all).settings().unwrap_err().to_string()
        };
        assert_eq!(
            err(&["--chunk-size", "1023"]),
            "--chunk-size 1023 is out of range: choose 1024 to 15360 bytes"
        );
        assert!(err(&["--chunk-size", "16384"]).contains("out of range"));
        for bad in [
            &["--replicas", "0"][..],
            &["--replicas", "6"],
            &["--replicas", "1"],
            &["--write-quorum", "4"],
            &["--read-quorum", "0"],
        ] {
            let e = err(bad);
            assert!(e.contains("do not fit"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn data_settings_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "data = \"d\"\nkey = \"k\"\nchunk-size = 4096\nreplicas = 2\n\
             write-quorum = 1\nread-quorum = 2\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = flags(&["--config", p]).settings().unwrap();
        assert_eq!(s.chunk_size, 4096);
        assert_eq!(s.quorum, Quorum { n: 2, w: 1, r: 2 });
        let s = flags(&["--config", p, "--write-quorum", "2"])
            .settings()
            .unwrap();
        assert_eq!(s.quorum, Quorum { n: 2, w: 2, r: 2 });
    }

    #[test]
    fn wildcard_listen_with_advertise_is_fine() {
        let s = flags(&[
            "--data",
            "d",
            "--key",
            "k",
            "--listen",
            "0.0.0.0:7000",
            "--advertise",
            "10.1.2.3:7000",
        ])
        .settings()
        .unwrap();
        assert_eq!(
            s.advertised("0.0.0.0:7000".parse().unwrap()),
            "10.1.2.3:7000".parse().unwrap()
        );
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "name = \"a\"\nlisten = \"127.0.0.1:7100\"\njoin = [\"127.0.0.1:7000\"]\n\
             data = \"data\"\nkey = \"/etc/shoal/key\"\nweight = 5\npools = [\"data\"]\n\
             tags = [\"ssd\"]\nhttp = \"127.0.0.1:8100\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = flags(&["--config", p]).settings().unwrap();
        assert_eq!(s.name.as_str(), "a");
        assert_eq!(s.data, dir.path().join("data"));
        assert_eq!(s.key, PathBuf::from("/etc/shoal/key"));
        assert_eq!(s.pools, [Pool::Data].into_iter().collect());
        assert_eq!(s.http, Some("127.0.0.1:8100".parse().unwrap()));
        let s = flags(&[
            "--config",
            p,
            "--name",
            "b",
            "--weight",
            "9",
            "--join",
            "127.0.0.1:1",
        ])
        .settings()
        .unwrap();
        assert_eq!((s.name.as_str(), s.weight), ("b", 9));
        assert_eq!(s.join, vec!["127.0.0.1:1".parse().unwrap()]);
        assert_eq!(s.listen, "127.0.0.1:7100".parse().unwrap());
    }

    #[test]
    fn file_mistakes_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "name = \"a\"\nwieght = 5\n").unwrap();
        let e = flags(&["--config", path.to_str().unwrap()])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("wieght"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = flags(&["--config", "/nonexistent/node.toml"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read config file"), "{e}");
    }
}
