//! The standard `process_*` metrics (as the Prometheus client libraries name them), read
//! from `/proc/self` at each scrape. A value that cannot be read is left out rather than
//! reported wrong.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Registered once, unprefixed: its families are `process_*`.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// A family's name and help.
type Descriptor = (&'static str, &'static str);

const CPU: Descriptor = (
    "process_cpu_seconds",
    "Total user and system CPU time spent in seconds.",
);
const RESIDENT: Descriptor = (
    "process_resident_memory_bytes",
    "Resident memory size in bytes.",
);
const VIRTUAL: Descriptor = (
    "process_virtual_memory_bytes",
    "Virtual memory size in bytes.",
);
const OPEN_FDS: Descriptor = ("process_open_fds", "Number of open file descriptors.");
const MAX_FDS: Descriptor = (
    "process_max_fds",
    "Maximum number of open file descriptors.",
);
const START: Descriptor = (
    "process_start_time_seconds",
    "Start time of the process since unix epoch in seconds.",
);

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = Snapshot::read();
        if let Some(v) = s.cpu_seconds {
            write(&mut encoder, CPU, ConstCounter::new(v))?;
        }
        for (descriptor, value) in [
            (RESIDENT, s.resident_bytes),
            (VIRTUAL, s.virtual_bytes),
            (OPEN_FDS, s.open_fds),
            (MAX_FDS, s.max_fds),
        ] {
            if let Some(v) = value {
                write(&mut encoder, descriptor, ConstGauge::new(v))?;
            }
        }
        if let Some(v) = s.start_time_seconds {
            write(&mut encoder, START, ConstGauge::new(v))?;
        }
        Ok(())
    }
}

/// Writes one family of one sample.
fn write(
    encoder: &mut DescriptorEncoder,
    (name, help): Descriptor,
    metric: impl EncodeMetric,
) -> fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One scrape's readings.
#[derive(Debug, Default, PartialEq)]
struct Snapshot {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

impl Snapshot {
    fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| Stat::parse(&s));
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_boot_time(&s));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64);
        // `None` is RLIM_INFINITY: no number to report.
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Self::from_readings(
            stat,
            boot_time,
            rustix::param::clock_ticks_per_second(),
            rustix::param::page_size() as u64,
            open_fds,
            max_fds,
        )
    }

    fn from_readings(
        stat: Option<Stat>,
        boot_time: Option<u64>,
        ticks_per_second: u64,
        page_size: u64,
        open_fds: Option<u64>,
        max_fds: Option<u64>,
    ) -> Self {
        let ticks = (ticks_per_second > 0).then_some(ticks_per_second as f64);
        let stat = stat.as_ref();
        Self {
            cpu_seconds: stat.zip(ticks).map(|(s, t)| (s.utime + s.stime) as f64 / t),
            resident_bytes: stat
                .filter(|_| page_size > 0)
                .map(|s| s.rss_pages * page_size),
            virtual_bytes: stat.map(|s| s.vsize),
            open_fds,
            max_fds,
            start_time_seconds: stat
                .zip(ticks)
                .zip(boot_time)
                .map(|((s, t), boot)| boot as f64 + s.starttime as f64 / t),
        }
    }
}

/// The fields of `/proc/self/stat` the metrics use (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// User and system CPU time, in clock ticks.
    utime: u64,
    stime: u64,
    /// Start time after boot, in clock ticks.
    starttime: u64,
    /// Virtual memory size, in bytes.
    vsize: u64,
    /// Resident set size, in pages.
    rss_pages: u64,
}

impl Stat {
    fn parse(text: &str) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces and `)`: the
        // fields that follow start after the last `)`, with field 3 (state).
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        Some(Self {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// Boot time in seconds since the epoch: the `btime` line of `/proc/stat`.
fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "21539 (a b) c)) R 21533 21533 15341 0 -1 4194304 98 0 0 0 250 130 0 0 20 \
                        0 1 0 889490 3133440 412 18446744073709551615 94429677076480 0 0\n";

    #[test]
    fn stat_fields_are_counted_after_the_command_name_whatever_it_holds() {
        assert_eq!(
            Stat::parse(STAT),
            Some(Stat {
                utime: 250,
                stime: 130,
                starttime: 889490,
                vsize: 3133440,
                rss_pages: 412,
            })
        );
    }

    #[test]
    fn a_cut_or_garbled_stat_is_no_stat() {
        assert_eq!(Stat::parse("21539 (cat) R 1 2 3"), None);
        assert_eq!(Stat::parse("no parentheses here"), None);
        assert_eq!(Stat::parse(&STAT.replace(" 250 ", " x ")), None);
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        let text = "cpu  1 2 3\nintr 5\nbtime 1796410042\nprocesses 9\n";
        assert_eq!(parse_boot_time(text), Some(1796410042));
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn readings_become_seconds_and_bytes() {
        let s = Snapshot::from_readings(
            Stat::parse(STAT),
            Some(1_700_000_000),
            100,
            4096,
            Some(12),
            Some(1024),
        );
        assert_eq!(
            s,
            Snapshot {
                cpu_seconds: Some(3.8),
                resident_bytes: Some(412 * 4096),
                virtual_bytes: Some(3133440),
                open_fds: Some(12),
                max_fds: Some(1024),
                start_time_seconds: Some(1_700_000_000.0 + 8894.9),
            }
        );
    }

    #[test]
    fn what_cannot_be_read_is_left_out() {
        let s = Snapshot::from_readings(Stat::parse(STAT), None, 0, 0, None, None);
        assert_eq!(
            s,
            Snapshot {
                virtual_bytes: Some(3133440),
                ..Snapshot::default()
            }
        );
        assert_eq!(
            Snapshot::from_readings(None, Some(1), 100, 4096, None, None),
            Snapshot::default()
        );
    }

    #[test]
    fn this_process_reads_as_alive() {
        let s = Snapshot::read();
        let rss = s.resident_bytes.expect("resident memory");
        let vsz = s.virtual_bytes.expect("virtual memory");
        assert!(rss > 0 && rss <= vsz, "rss {rss}, vsz {vsz}");
        // stdin/stdout/stderr at least (the directory's own descriptor counts too).
        assert!(s.open_fds.expect("open fds") >= 3);
        assert!(s.max_fds.is_none_or(|m| m >= s.open_fds.unwrap()));
        assert!(s.cpu_seconds.expect("cpu seconds") >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = s.start_time_seconds.expect("start time");
        // Started in the past, and not long ago.
        assert!(
            start <= now + 1.0 && start > now - 365.0 * 86400.0,
            "{start} vs {now}"
        );
    }
}
