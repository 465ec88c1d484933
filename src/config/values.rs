//! The config's value types, each checked in its own `Deserialize` so that `toml` reports the
//! value's line and column: worker counts, batch sizes, durations, sizes, signals, argv and
//! listen addresses.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// How many workers: `N`, `"max"`, `"max-K"` or `"P%"` of the usable CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    Fixed(usize),
    MaxMinus(usize),
    Percent(u32),
}

impl Instances {
    /// The worker count for `cpus` usable CPUs; between 1 and [`MAX_INSTANCES`].
    pub fn resolve(self, cpus: usize) -> usize {
        let n = match self {
            Instances::Fixed(n) => n,
            Instances::MaxMinus(k) => cpus.saturating_sub(k),
            Instances::Percent(p) => cpus.saturating_mul(p as usize).div_ceil(100),
        };
        n.clamp(1, MAX_INSTANCES)
    }
}

impl FromStr for Instances {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid instances {s:?}: expected a number, \"max\", \"max-1\" or a percentage like \"50%\"");
        let s = s.trim();
        if s == "max" {
            return Ok(Instances::MaxMinus(0));
        }
        if let Some(k) = s.strip_prefix("max-") {
            return k.trim().parse().map(Instances::MaxMinus).map_err(|_| bad());
        }
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| bad())?;
            return if (1..=100).contains(&p) {
                Ok(Instances::Percent(p))
            } else {
                Err(format!("invalid instances {s:?}: a percentage must be between 1% and 100%"))
            };
        }
        let n: usize = s.parse().map_err(|_| bad())?;
        Instances::fixed(n)
    }
}

impl Instances {
    fn fixed(n: usize) -> Result<Self, String> {
        if n == 0 {
            Err("instances must be at least 1".into())
        } else if n > MAX_INSTANCES {
            Err(format!("instances = {n} is more than corral runs in one pool (at most {MAX_INSTANCES})"))
        } else {
            Ok(Instances::Fixed(n))
        }
    }
}

/// A value written either as a number or as a string (`instances`, `reload.batch`, `memory`).
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    N(i64),
    S(String),
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use NumOrStr as Raw;
        match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("instances must be a number or a string like \"max\", \"max-1\", \"50%\""))?
        {
            Raw::N(n) if n < 1 => Err(de::Error::custom("instances must be at least 1")),
            Raw::N(n) => Instances::fixed(usize::try_from(n).unwrap_or(usize::MAX)).map_err(de::Error::custom),
            Raw::S(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

/// `reload.batch`: a count or a percentage of the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Count(usize),
    Percent(u32),
}

impl Batch {
    pub fn resolve(self, instances: usize) -> usize {
        match self {
            Batch::Count(n) => n,
            Batch::Percent(p) => instances.saturating_mul(p as usize).div_ceil(100),
        }
        .clamp(1, MAX_INSTANCES)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use NumOrStr as Raw;
        let msg = "reload.batch must be a number of workers (1 to 1024) or a percentage like \"25%\"";
        match Raw::deserialize(d).map_err(|_| de::Error::custom(msg))? {
            Raw::N(n) if (1..=MAX_INSTANCES as i64).contains(&n) => Ok(Batch::Count(n as usize)),
            Raw::S(s) => match s.trim().strip_suffix('%').map(|p| p.trim().parse::<u32>()) {
                Some(Ok(p)) if (1..=100).contains(&p) => Ok(Batch::Percent(p)),
                _ => Err(de::Error::custom(msg)),
            },
            Raw::N(_) => Err(de::Error::custom(msg)),
        }
    }
}

/// The longest duration any setting takes: 366 days (so `"1y"` fits). Every deadline the pool
/// computes is a time plus at most this, which can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// The most workers a pool may have (`instances`, `corral scale`, `reload.batch`).
pub const MAX_INSTANCES: usize = 1024;

/// A duration written like `500ms`, `30s`, `1h 30m`; at most [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)
            .map_err(|_| de::Error::custom("expected a duration as a string, like \"500ms\", \"30s\" or \"1h\""))?;
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            de::Error::custom(format!("invalid duration {s:?}: {e} (write it like \"500ms\", \"30s\", \"1h\")"))
        })?;
        if d > MAX_DURATION {
            return Err(de::Error::custom(format!("duration {s:?} is too long: the most any setting takes is 366d")));
        }
        Ok(Dur(d))
    }
}

/// A size written like `300MiB`, `1G`, `512 kB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use NumOrStr as Raw;
        let hint = "write a size like \"300MiB\", \"1G\" or a number of bytes";
        match Raw::deserialize(d).map_err(|_| de::Error::custom(format!("expected a size: {hint}")))? {
            Raw::N(n) if n <= 0 => Err(de::Error::custom("a size must be greater than 0")),
            Raw::N(n) => Ok(Size(n as u64)),
            Raw::S(s) => match bytesize::ByteSize::from_str(s.trim()) {
                Ok(b) if b.as_u64() > 0 => Ok(Size(b.as_u64())),
                Ok(_) => Err(de::Error::custom("a size must be greater than 0")),
                Err(e) => Err(de::Error::custom(format!("invalid size {s:?}: {e}; {hint}"))),
            },
        }
    }
}

/// A signal name like `SIGTERM` or `TERM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub Signal);

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d).map_err(|_| de::Error::custom("expected a signal name like \"SIGTERM\""))?;
        let up = s.trim().to_ascii_uppercase();
        let full = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
        match Signal::from_str(&full) {
            Ok(Signal::SIGKILL | Signal::SIGSTOP) => {
                Err(de::Error::custom(format!("{full} cannot be used as a stop signal: it cannot be handled")))
            }
            Ok(sig) => Ok(Sig(sig)),
            Err(_) => {
                Err(de::Error::custom(format!("unknown signal {s:?} (expected a name like \"SIGTERM\" or \"SIGINT\")")))
            }
        }
    }
}

/// The argv of a worker: a non-empty array of non-empty strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command(pub Vec<String>);

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let argv = Vec::<String>::deserialize(d).map_err(|_| {
            de::Error::custom(
                "command must be an array of strings, like [\"node\", \"src/index.js\"] (no shell is involved)",
            )
        })?;
        if argv.is_empty() || argv[0].is_empty() {
            return Err(de::Error::custom(
                "command must not be empty: give the program and its arguments, like [\"node\", \"src/index.js\"]",
            ));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(de::Error::custom("command arguments must not contain NUL bytes"));
        }
        Ok(Command(argv))
    }
}

/// One `listen` entry: a TCP address or a unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// A bare port: every address, IPv6 and IPv4, like systemd's `ListenStream=3000`.
    Port(u16),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Port(p) => write!(f, "[::]:{p}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("unix socket path must be absolute, like \"unix:/run/app/http.sock\": {s:?}"));
            }
            if path.as_os_str().len() > 107 {
                return Err(format!("unix socket path is longer than 107 bytes: {s:?}"));
            }
            return Ok(ListenAddr::Unix(path));
        }
        if let Ok(port) = s.parse::<u16>() {
            return Ok(ListenAddr::Port(port));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(addr));
        }
        if let Some(port) = s.strip_prefix("localhost:").and_then(|p| p.parse::<u16>().ok()) {
            return Ok(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        Err(format!(
            "invalid listen address {s:?}: expected \"127.0.0.1:3000\", \"[::1]:3000\", \"3000\" or \"unix:/path/to.sock\""
        ))
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)
            .map_err(|_| de::Error::custom("a listen address must be a string like \"127.0.0.1:3000\""))?;
        s.trim().parse().map_err(de::Error::custom)
    }
}
