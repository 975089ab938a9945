//! Child processes pinned to a core with `taskset`, and CPU time of any process from /proc.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use crate::Result;

/// A child process pinned to one core; killed when dropped.
pub struct Pinned {
    pub name: &'static str,
    child: Child,
    stderr: Receiver<String>,
}

impl Pinned {
    /// Runs `taskset -c <core> <program> <args>` (taskset execs, so the pid is the program's).
    /// Its stderr is read by a thread: lines can be awaited with [`Pinned::wait_for`], and
    /// warnings and errors are echoed to ours.
    pub fn spawn<I, S>(
        name: &'static str,
        core: usize,
        program: &OsStr,
        args: I,
        env: &[(&str, &str)],
    ) -> Result<Pinned>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new("taskset");
        command
            .arg("-c")
            .arg(core.to_string())
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {name} with taskset: {e}"))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if line.contains("WARN") || line.contains("ERROR") || line.contains("error") {
                    eprintln!("[{name}] {line}");
                }
                let _ = tx.send(line);
            }
        });
        Ok(Pinned {
            name,
            child,
            stderr: rx,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stderr line containing `needle`, within `bound`.
    pub fn wait_for(&self, needle: &str, bound: Duration) -> Result<String> {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(
                        format!("{}: no {needle:?} line within {bound:?}", self.name).into(),
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{} exited before printing {needle:?}", self.name).into());
                }
            }
        }
    }

    /// Waits for the `data https://ADDR` line the gateway (and serve-direct) print on start.
    pub fn data_addr(&self) -> Result<SocketAddr> {
        self.addr_after("data https://")
    }

    /// Waits for a line containing `needle` followed by an address.
    pub fn addr_after(&self, needle: &str) -> Result<SocketAddr> {
        let line = self.wait_for(needle, Duration::from_secs(30))?;
        let rest = &line[line.find(needle).expect("matched") + needle.len()..];
        let addr = rest.split_whitespace().next().unwrap_or_default();
        Ok(addr
            .parse()
            .map_err(|e| format!("{}: bad address {addr:?}: {e}", self.name))?)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// utime + stime of a /proc `stat` file's contents (all threads, including exited ones, for a
/// process; one thread for a task), and the command name.
fn parse_stat(stat: &str) -> Option<(String, Duration)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    // Fields after the command name start at field 3 (state); utime and stime are 14 and 15.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    let hz = clock_ticks_per_second();
    Some((comm, Duration::from_micros(ticks * 1_000_000 / hz)))
}

/// CPU time (user + system) used so far by process `pid`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat)
        .map(|(_, cpu)| cpu)
        .ok_or_else(|| format!("cannot parse /proc/{pid}/stat").into())
}

/// Busy and stolen time of the whole machine (all cores) so far, from /proc/stat.
pub fn machine_times() -> Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    // cpu user nice system idle iowait irq softirq steal ...
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if f.len() < 8 {
        return Err("cannot parse /proc/stat".into());
    }
    let hz = clock_ticks_per_second();
    let time = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / hz);
    Ok((time(f[0] + f[1] + f[2] + f[5] + f[6]), time(f[7])))
}

/// CPU time of each live thread of `pid`, by thread name, largest first.
pub fn thread_times(pid: u32) -> Vec<(String, Duration)> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Some(parsed) = std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
            {
                out.push(parsed);
            }
        }
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.1));
    out
}

/// The cores this process may run on (`Cpus_allowed_list`).
pub fn own_affinity() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_the_name() {
        let hz = clock_ticks_per_second();
        let stat = format!(
            "42 (tokio (rt) x) S 1 2 3 4 5 6 7 8 9 10 {} {} 0 0 20 0 1 0",
            hz * 2,
            hz / 2
        );
        let (comm, cpu) = parse_stat(&stat).unwrap();
        assert_eq!(comm, "tokio (rt) x");
        assert_eq!(cpu, Duration::from_millis(2500));
    }

    #[test]
    fn own_process_has_cpu_time() {
        assert!(cpu_time(std::process::id()).is_ok());
    }
}
