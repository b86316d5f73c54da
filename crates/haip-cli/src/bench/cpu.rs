//! The server's own CPU time, read from /proc, so that a figure per message does not
//! depend on what the load generator costs. The server is the process given with
//! `--server-pid`, or else the one on this machine listening on the URL's port; and its
//! resident memory.

use std::time::Duration;

use super::report::Row;

/// A server process whose CPU time can be read, with the other processes that serve with
/// it (the other nodes of a cluster and its Redis, `--also-pid`): their CPU time counts too.
#[derive(Debug, Clone, Copy)]
pub struct ServerCpu {
    pub pid: u32,
    also: [Option<u32>; MAX_ALSO],
    ticks_per_second: u64,
}

/// The most processes counted besides the server.
pub const MAX_ALSO: usize = 8;

/// A reading to measure from.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    ticks: u64,
}

impl ServerCpu {
    /// The server: `pid` when given, else the local process listening on `port` (none when
    /// the server is on another machine or /proc cannot tell).
    pub fn find(pid: Option<u32>, port: Option<u16>) -> Option<ServerCpu> {
        let pid = pid.or_else(|| port.and_then(listening_pid))?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let cpu = ServerCpu {
            pid,
            also: [None; MAX_ALSO],
            ticks_per_second: u64::try_from(ticks).ok().filter(|&t| t > 0)?,
        };
        cpu.mark().map(|_| cpu)
    }

    /// Counts the CPU time of `pids` too (at most [`MAX_ALSO`]).
    pub fn with_also(mut self, pids: &[u32]) -> ServerCpu {
        for (slot, pid) in self.also.iter_mut().zip(pids) {
            *slot = Some(*pid);
        }
        self
    }

    /// The CPU time the processes have used so far (user + system, all threads).
    pub fn mark(&self) -> Option<Mark> {
        let mut ticks = 0;
        for pid in std::iter::once(self.pid).chain(self.also.iter().flatten().copied()) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            ticks += process_ticks(&stat)?;
        }
        Some(Mark { ticks })
    }

    /// The CPU time used since `from`.
    pub fn since(&self, from: Mark) -> Option<Duration> {
        let now = self.mark()?;
        let ticks = now.ticks.saturating_sub(from.ticks);
        Some(Duration::from_secs_f64(
            ticks as f64 / self.ticks_per_second as f64,
        ))
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after its closing one.
pub fn process_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Field 3 is the first after the name: utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The pid of the local process listening on TCP `port`, found through the socket's inode.
fn listening_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Inodes of the sockets listening on `port` in a `/proc/net/tcp` table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let listening = *f.get(3)? == LISTEN;
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The server's CPU time since `mark` for `messages` delivered: in all, and per message.
pub(super) fn cpu_rows(mark: Option<(ServerCpu, Mark)>, messages: u64) -> Vec<Row> {
    // Nothing measured (no server here) or less than the clock's tick: no figure rather
    // than a zero.
    let Some(used) = mark
        .and_then(|(server, from)| server.since(from))
        .filter(|d| !d.is_zero())
    else {
        return Vec::new();
    };
    let per_message = used.as_secs_f64() * 1e6 / messages.max(1) as f64;
    vec![
        ("server CPU", used.as_secs_f64() * 1000.0, "ms"),
        ("server CPU per message", per_message, "us"),
    ]
}

/// The port of a URL (80 or 443 by its scheme when it names none).
pub(super) fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?']).next()?;
    match host.rsplit_once(':') {
        Some((_, port)) if !port.ends_with(']') => port.parse().ok(),
        _ => Some(if matches!(scheme, "https" | "wss") {
            443
        } else {
            80
        }),
    }
}

/// Resident memory of a process in KiB.
pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks_past_a_name_with_spaces() {
        let stat = "4242 (haip serve) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    150 35 0 0 20 0 9 0 100 0 0";
        assert_eq!(process_ticks(stat), Some(185));
        assert_eq!(process_ticks("garbage"), None);
    }

    #[test]
    fn finds_the_listening_socket_of_a_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5551 1 0\n\
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 6662 1 0\n\
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7773 1 0\n";
        assert_eq!(listening_inodes(table, 8080), vec![5551]);
        assert_eq!(listening_inodes(table, 22), vec![7773]);
        assert!(listening_inodes(table, 9).is_empty());
    }

    #[test]
    fn this_process_can_be_read() {
        let cpu = ServerCpu::find(Some(std::process::id()), None).expect("own /proc");
        let mark = cpu.mark().unwrap();
        // Burn a little CPU: the reading does not go back.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu.since(mark).is_some());
    }
}
