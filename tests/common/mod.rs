//! Multi-node test harness: real PostgreSQL clusters on loopback ports.
//!
//! A `Cluster` owns a scratch directory and the nodes started in it. Nodes
//! are driven with `initdb`, `pg_ctl` and `pg_basebackup` (as an
//! unprivileged OS user when the tests run as root, since PostgreSQL refuses
//! root) and talked to only through SQL. Waits poll a condition until a
//! deadline; when one expires, or a test panics, every node's log tail is
//! printed.
//!
//! Environment:
//! - `EDGESYNC_PG_CONFIG`: the `pg_config` of the server to test (edgesync installed there).
//! - `EDGESYNC_PG_USER`: the OS user that runs PostgreSQL when running as root (default `postgres`).

#![allow(dead_code)]

pub mod link;
pub mod star;
#[allow(unused_imports)] // not every test file puts a link between nodes
pub use link::Link;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use postgres::{Client, NoTls, Row};

static CLUSTER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// The default deadline for a wait.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// How often `wait_for` looks at its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn pg_bindir() -> PathBuf {
    let pg_config = std::env::var("EDGESYNC_PG_CONFIG").unwrap_or_else(|_| "pg_config".to_string());
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {pg_config} (set EDGESYNC_PG_CONFIG): {e}"));
    assert!(out.status.success(), "{pg_config} --bindir failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// kill -9 one process (a worker; the postmaster then restarts every backend).
pub fn kill9_pid(pid: i32) {
    let ok = Command::new("kill").args(["-9", &pid.to_string()]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "kill -9 {pid}");
}

/// kill -9 the worker `pid` of `n` and wait until the postmaster has
/// restarted every backend after the crash (the launcher is a new process).
pub fn kill9_worker(c: &Cluster, n: &Node, pid: i32, what: &str) {
    let launcher = || -> Result<i32, String> {
        let r = n.try_query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'edgesync launcher'")?;
        r.first().map(|row| row.get(0)).ok_or_else(|| "no launcher".to_string())
    };
    let before = launcher().unwrap();
    kill9_pid(pid);
    c.wait_for(&format!("{what}: {} restarted after the crash", n.name), DEADLINE, || Ok(launcher()? != before));
}

/// Make edgesync's workers on `n` hold at `point` (`edgesync.fault_point`), or no longer.
pub fn set_fault_point(n: &Node, point: Option<&str>) {
    match point {
        Some(p) => n.execute(&format!("ALTER SYSTEM SET edgesync.fault_point = '{p}'")),
        None => n.execute("ALTER SYSTEM RESET edgesync.fault_point"),
    }
    n.execute("SELECT pg_reload_conf()");
}

/// The lowest port a node is given: clear of the well-known and registered
/// ports that services on a machine tend to take.
const NODE_PORT_FLOOR: u16 = 10000;
/// Linux's default ephemeral range, for when /proc does not say.
const DEFAULT_EPHEMERAL_RANGE: (u16, u16) = (32768, 60999);

/// Ports `free_port` handed out in this test process, never handed again: a
/// node that is stopped for a while keeps its port even though it is free then.
static HANDED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// Where this process starts looking, so that test processes running side
/// by side do not all try the same ports first.
static SEARCH_START: OnceLock<usize> = OnceLock::new();

/// A port for a PostgreSQL node on 127.0.0.1: outside the kernel's
/// ephemeral range, free when checked (it binds), and not handed out before
/// in this process.
///
/// A port the OS picks (bind to port 0) would do for a listener we keep
/// open, as `Link` does, but a node's port must be named before the server
/// starts; and any port in the ephemeral range may meanwhile become the local
/// end of some client connection, and the server then fails to start with
/// "Address already in use". Outside that range only a listener can hold a
/// port, and the bind check sees one.
pub fn free_port() -> u16 {
    let candidates = node_port_candidates(ephemeral_port_range());
    assert!(!candidates.is_empty(), "no port from {NODE_PORT_FLOOR} up lies outside the ephemeral range {:?}", ephemeral_port_range());
    let start = *SEARCH_START.get_or_init(|| search_start(candidates.len()));
    let mut handed = HANDED_PORTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let port = (0..candidates.len())
        .map(|i| candidates[(start + i) % candidates.len()])
        .find(|port| !handed.contains(port) && TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("every port outside the ephemeral range is taken");
    handed.insert(port);
    port
}

/// The kernel's ephemeral port range, inclusive (`ip_local_port_range`).
pub fn ephemeral_port_range() -> (u16, u16) {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or(DEFAULT_EPHEMERAL_RANGE)
}

/// "32768\t60999\n" -> (32768, 60999).
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut ends = text.split_whitespace().map(|n| n.parse::<u16>().ok());
    match (ends.next()??, ends.next()??) {
        (low, high) if low <= high => Some((low, high)),
        _ => None,
    }
}

/// The ports a node may get: from `NODE_PORT_FLOOR` up, below and above the
/// ephemeral range `low..=high`.
pub fn node_port_candidates((low, high): (u16, u16)) -> Vec<u16> {
    (NODE_PORT_FLOOR..=u16::MAX).filter(|port| *port < low || *port > high).collect()
}

/// A starting index into `len` candidates that differs between processes.
fn search_start(len: usize) -> usize {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (std::process::id() as usize).wrapping_mul(7919).wrapping_add(nanos as usize) % len
}

struct Runner {
    bindir: PathBuf,
    os_user: Option<String>,
}

impl Runner {
    /// A command for a PostgreSQL program, run as the unprivileged user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        match &self.os_user {
            Some(user) => {
                let mut c = Command::new("sudo");
                c.args(["-n", "-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{program} {args:?} failed ({}):\n{text}", out.status))
        }
    }

    fn give_to_user(&self, dir: &Path) {
        if let Some(user) = &self.os_user {
            let ok = Command::new("chown").args(["-R", user]).arg(dir).status().map(|s| s.success()).unwrap_or(false);
            assert!(ok, "chown {user} {}", dir.display());
        }
    }
}

pub struct Cluster {
    base: PathBuf,
    runner: Runner,
    nodes: Vec<Node>,
}

#[derive(Clone)]
pub struct Node {
    pub name: String,
    pub port: u16,
    pub datadir: PathBuf,
    pub logfile: PathBuf,
}

impl Cluster {
    /// A new scratch area for `test`'s nodes. Lives under /tmp so that the
    /// PostgreSQL user can reach it whatever the checkout's permissions are.
    pub fn new(test: &str) -> Cluster {
        let base = std::env::temp_dir().join(format!(
            "edgesync-it-{}-{}-{}",
            test,
            std::process::id(),
            CLUSTER_SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let os_user = running_as_root().then(|| std::env::var("EDGESYNC_PG_USER").unwrap_or_else(|_| "postgres".into()));
        let runner = Runner { bindir: pg_bindir(), os_user };
        runner.give_to_user(&base);
        Cluster { base, runner, nodes: Vec::new() }
    }

    /// initdb and start a node with edgesync preloaded and logical WAL; `extra_conf`
    /// lines are appended last, so they win.
    pub fn add_node(&mut self, name: &str, extra_conf: &[&str]) -> Node {
        let datadir = self.base.join(name);
        self.runner
            .run("initdb", &["-D", datadir.to_str().unwrap(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .unwrap_or_else(|e| panic!("{e}"));
        let node = self.configure(name, datadir, extra_conf);
        self.start(&node);
        node
    }

    fn configure(&mut self, name: &str, datadir: PathBuf, extra_conf: &[&str]) -> Node {
        let port = free_port();
        let logfile = self.base.join(format!("{name}.log"));
        let mut conf = fs::OpenOptions::new().append(true).open(datadir.join("postgresql.conf")).unwrap();
        let base_conf = [
            format!("port = {port}"),
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", datadir.display()),
            format!("cluster_name = '{name}'"),
            "shared_preload_libraries = 'edgesync'".to_string(),
            "wal_level = logical".to_string(),
            "track_commit_timestamp = on".to_string(),
            "max_wal_senders = 10".to_string(),
            "max_replication_slots = 10".to_string(),
            "wal_receiver_status_interval = 1s".to_string(),
            "fsync = off".to_string(),
            "log_min_messages = warning".to_string(),
        ];
        writeln!(conf, "\n# edgesync test harness").unwrap();
        for line in base_conf.iter().map(String::as_str).chain(extra_conf.iter().copied()) {
            writeln!(conf, "{line}").unwrap();
        }
        drop(conf);
        self.runner.give_to_user(&datadir);
        // the log lives outside the data directory so that pg_basebackup does not copy it
        fs::File::create(&logfile).unwrap();
        self.runner.give_to_user(&logfile);
        let node = Node { name: name.to_string(), port, datadir, logfile };
        self.nodes.push(node.clone());
        node
    }

    /// A hot standby of `primary` made with pg_basebackup, streaming through physical slot `slot`.
    pub fn add_standby(&mut self, name: &str, primary: &Node, slot: &str) -> Node {
        let datadir = self.base.join(name);
        let port = primary.port.to_string();
        self.runner
            .run(
                "pg_basebackup",
                &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", datadir.to_str().unwrap(), "-R", "-X", "stream", "-C", "-S", slot, "--no-sync"],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let node = self.configure(name, datadir, &["hot_standby = on"]);
        self.start(&node);
        node
    }

    pub fn start(&self, node: &Node) {
        self.runner
            .run("pg_ctl", &["-D", node.datadir.to_str().unwrap(), "-l", node.logfile.to_str().unwrap(), "-w", "-t", "120", "start"])
            .unwrap_or_else(|e| panic!("starting {}: {e}\n{}", node.name, self.log_tails()));
    }

    pub fn stop(&self, node: &Node) {
        self.runner
            .run("pg_ctl", &["-D", node.datadir.to_str().unwrap(), "-m", "fast", "-w", "-t", "120", "stop"])
            .unwrap_or_else(|e| panic!("stopping {}: {e}", node.name));
    }

    pub fn restart(&self, node: &Node) {
        self.stop(node);
        self.start(node);
    }

    /// SIGKILL the postmaster: a crash, not a shutdown. `start` then runs crash recovery.
    pub fn kill9(&self, node: &Node) {
        let pid_file = fs::read_to_string(node.datadir.join("postmaster.pid")).expect("postmaster.pid: is the node running?");
        let pid = pid_file.lines().next().unwrap().trim().to_string();
        let ok = Command::new("kill").args(["-9", &pid]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "kill -9 {pid}");
        self.wait_for(&format!("postmaster {pid} of {} to die", node.name), DEADLINE, || {
            let alive = Command::new("kill").args(["-0", &pid]).stderr(Stdio::null()).status().map_err(|e| e.to_string())?.success();
            Ok(!alive)
        });
    }

    /// Run a SQL script through psql, statement by statement, as a DBA would paste it.
    pub fn psql(&self, node: &Node, script: &str) -> String {
        let mut child = Command::new(self.runner.bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &node.port.to_string(), "-U", "postgres", "-d", "postgres"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "psql on {} failed for {script:?}:\n{text}", node.name);
        text
    }

    /// Poll `condition` until it holds or `deadline` passes; then fail with every node's log tail.
    /// Errors from the condition (a node restarting, say) count as "not yet".
    pub fn wait_for(&self, what: &str, deadline: Duration, mut condition: impl FnMut() -> Result<bool, String>) {
        let until = Instant::now() + deadline;
        let mut last = String::new();
        loop {
            match condition() {
                Ok(true) => return,
                Ok(false) => last.clear(),
                Err(e) => last = e,
            }
            if Instant::now() >= until {
                panic!("timed out after {deadline:?} waiting for: {what}\nlast error: {last}\n{}", self.log_tails());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Check that `condition` holds for the whole of `window` (what must not
    /// happen can only be watched for a while); fails at the first look where
    /// it does not.
    pub fn assert_stays(&self, what: &str, window: Duration, mut condition: impl FnMut() -> Result<bool, String>) {
        let until = Instant::now() + window;
        while Instant::now() < until {
            match condition() {
                Ok(true) => std::thread::sleep(POLL_INTERVAL),
                Ok(false) => panic!("no longer true: {what}\n{}", self.log_tails()),
                Err(e) => panic!("while watching {what}: {e}\n{}", self.log_tails()),
            }
        }
    }

    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = fs::read_to_string(&n.logfile).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!("----- {} (port {}) log tail -----\n{}\n", n.name, n.port, tail.join("\n")));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        for n in &self.nodes {
            if n.datadir.join("postmaster.pid").exists() {
                let _ = self.runner.run("pg_ctl", &["-D", n.datadir.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
            }
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.base);
        } else {
            eprintln!("node directories kept in {}", self.base.display());
        }
    }
}

/// The server's message for a failed statement, or the client error.
pub fn db_message(e: &postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

impl Node {
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    pub fn try_connect(&self) -> Result<Client, String> {
        Client::connect(&self.conninfo(), NoTls).map_err(|e| format!("{}: {e}", self.name))
    }

    pub fn connect(&self) -> Client {
        self.try_connect().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Run statements (simple protocol); panic on error.
    pub fn execute(&self, sql: &str) {
        self.connect().batch_execute(sql).unwrap_or_else(|e| panic!("{} on {}: {e:?}", sql, self.name));
    }

    pub fn query(&self, sql: &str) -> Vec<Row> {
        self.connect().query(sql, &[]).unwrap_or_else(|e| panic!("{} on {}: {e:?}", sql, self.name))
    }

    pub fn try_query(&self, sql: &str) -> Result<Vec<Row>, String> {
        self.try_connect()?.query(sql, &[]).map_err(|e| format!("{sql} on {}: {}", self.name, db_message(&e)))
    }

    /// First column of the only row.
    pub fn scalar<T: for<'a> postgres::types::FromSql<'a>>(&self, sql: &str) -> T {
        self.connect().query_one(sql, &[]).unwrap_or_else(|e| panic!("{} on {}: {e:?}", sql, self.name)).get(0)
    }
}
