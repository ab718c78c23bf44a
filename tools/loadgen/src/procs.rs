//! Resident memory and CPU time of the processes under test, read from
//! `/proc` (Linux): the process listening on the target's port, and every
//! other `ticketing` process (the services of a microservices deployment on
//! this machine). CPU time per operation is the figure that stays put on a
//! noisy shared machine, where wall-clock rates move with the neighbours.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// A process and its memory.
#[derive(Debug, Clone, Serialize)]
pub struct ProcMemory {
    pub pid: u32,
    /// What it runs: `TICKETING_SERVICES` / `--services`, else its name.
    pub what: String,
    /// Resident memory before anything ran, MB.
    pub idle_mb: f64,
    /// Highest resident memory seen while the scenario set up (signing
    /// users up, listing tickets), MB.
    pub setup_peak_mb: f64,
    /// Highest resident memory seen while the load ran, MB.
    pub peak_mb: f64,
    /// CPU time (user + system) it used during the measured part of the
    /// load, ms.
    pub cpu_ms: f64,
    #[serde(skip)]
    cpu_start: Option<u64>,
}

/// Milliseconds per clock tick of `/proc/<pid>/stat` (USER_HZ, 100 on
/// Linux whatever the kernel's own tick rate).
const MS_PER_TICK: f64 = 10.0;

/// User + system CPU time of `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); field 3 is the first after the name.
    let (utime, stime) = (fields.get(11)?, fields.get(12)?);
    Some(utime.parse::<u64>().ok()? + stime.parse::<u64>().ok()?)
}

/// User + system CPU time of `pid` so far, ms.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    cpu_ticks(pid).map(|t| t as f64 * MS_PER_TICK)
}

/// The measured part of the load begins: CPU time counts from now.
pub fn measure_started() {
    if let Some(seen) = CURRENT.lock().unwrap().as_ref() {
        for m in seen.lock().unwrap().values_mut() {
            m.cpu_start = cpu_ticks(m.pid);
        }
    }
}

/// The load is over: the CPU time of its measured part.
pub fn measure_ended() {
    if let Some(seen) = CURRENT.lock().unwrap().as_ref() {
        for m in seen.lock().unwrap().values_mut() {
            if let (Some(start), Some(now)) = (m.cpu_start, cpu_ticks(m.pid)) {
                m.cpu_ms = now.saturating_sub(start) as f64 * MS_PER_TICK;
            }
        }
    }
}

/// The running watch, so the driver can say when the load begins.
type Seen = Arc<Mutex<BTreeMap<u32, ProcMemory>>>;

static CURRENT: Mutex<Option<Seen>> = Mutex::new(None);

/// The set-up is over: what was seen so far is the set-up's peak; the load's
/// peak starts from now.
pub fn load_started() {
    if let Some(seen) = CURRENT.lock().unwrap().as_ref() {
        for m in seen.lock().unwrap().values_mut() {
            m.setup_peak_mb = m.peak_mb;
            m.peak_mb = rss_kb(m.pid).map_or(0.0, |kb| kb as f64 / 1024.0);
        }
    }
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The pid listening on TCP `port`, if it is on this machine.
pub fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for pid in pids() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What a `ticketing` process runs, or `None` for other programs.
fn ticketing_role(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let exe = args.first()?;
    if exe.rsplit('/').next().is_none_or(|n| n != "ticketing") {
        return None;
    }
    if let Some(i) = args.iter().position(|a| a == "--services") {
        return args.get(i + 1).cloned();
    }
    if let Some(s) = args.iter().find_map(|a| a.strip_prefix("--services=")) {
        return Some(s.to_owned());
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let services = environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("TICKETING_SERVICES="))
        .map(str::to_owned);
    if args
        .get(1)
        .is_some_and(|a| a != "run" && !a.starts_with('-'))
    {
        return None; // a one-shot command (streams, drill, …)
    }
    Some(services.unwrap_or_else(|| "all".to_owned()))
}

/// Samples the memory of the target's process and every `ticketing`
/// process until stopped.
pub struct Watch {
    seen: Arc<Mutex<BTreeMap<u32, ProcMemory>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Starts watching; the current readings are the idle figures.
    pub fn start(target_port: Option<u16>) -> Watch {
        let mut procs: Vec<(u32, String)> = pids()
            .into_iter()
            .filter_map(|p| ticketing_role(p).map(|r| (p, r)))
            .collect();
        if let Some(pid) = target_port.and_then(listener_pid) {
            if !procs.iter().any(|(p, _)| *p == pid) {
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                procs.push((pid, name));
            }
        }
        let seen: BTreeMap<u32, ProcMemory> = procs
            .into_iter()
            .filter_map(|(pid, what)| {
                let mb = rss_kb(pid)? as f64 / 1024.0;
                Some((
                    pid,
                    ProcMemory {
                        pid,
                        what,
                        idle_mb: mb,
                        setup_peak_mb: mb,
                        peak_mb: mb,
                        cpu_ms: 0.0,
                        cpu_start: None,
                    },
                ))
            })
            .collect();
        let seen = Arc::new(Mutex::new(seen));
        *CURRENT.lock().unwrap() = Some(seen.clone());
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stopped.changed() => return,
                    }
                    let mut seen = seen.lock().unwrap();
                    for m in seen.values_mut() {
                        if let Some(kb) = rss_kb(m.pid) {
                            m.peak_mb = m.peak_mb.max(kb as f64 / 1024.0);
                        }
                    }
                }
            })
        };
        Watch { seen, stop, task }
    }

    pub async fn finish(self) -> Vec<ProcMemory> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let mut seen = self.seen.lock().unwrap();
        for m in seen.values_mut() {
            if let Some(kb) = rss_kb(m.pid) {
                m.peak_mb = m.peak_mb.max(kb as f64 / 1024.0);
            }
        }
        seen.values().cloned().collect()
    }
}

/// Resident memory of `pid` now, MB.
pub fn rss_mb(pid: u32) -> Option<f64> {
    rss_kb(pid).map(|kb| kb as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_cpu_time_reads_and_grows() {
        let me = std::process::id();
        let before = super::cpu_ticks(me).expect("own stat readable");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(super::cpu_ticks(me).unwrap() > before);
    }
}
