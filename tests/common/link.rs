//! A link between two nodes that a test can cut and heal.
//!
//! Chaos tests put a `Link` between an edge and the cloud: the edge's peer
//! conninfo names the link's port instead of the cloud's, and the test cuts
//! the link at moments it picks (every connection through it drops at once,
//! as when a network goes away) and heals it later. It is an in-process TCP
//! proxy on loopback, std only: one thread accepts, and each forwarded
//! connection has one thread per direction.
//!
//! The link listens on port 0, so the OS picks a port that is free, never one
//! it has handed or will hand to a client as its ephemeral port; the listener
//! stays open for the link's whole life so that nobody else can take the port
//! between a cut and a heal. While cut, the link still accepts (the kernel
//! completes handshakes in the backlog anyway) but closes each connection at
//! once, so a client sees an error at its first read instead of hanging.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a forwarded connection waits for the target to answer; on
/// loopback a target that is down refuses at once, so this only bounds the odd case.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much one direction reads before handing it on.
const BUFFER_BYTES: usize = 16 * 1024;
/// Pause after a failed accept (out of file descriptors, say), so that the
/// accepting thread does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// An in-process TCP proxy from a port of its own to `127.0.0.1:target_port`.
/// Dropping it closes its port and every connection through it, and ends its threads.
pub struct Link {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// What the link's threads and its owner share.
struct Shared {
    target: SocketAddr,
    /// Bytes read from either end and handed to the other.
    carried: AtomicU64,
    state: Mutex<State>,
}

/// Everything `cut` must see at one moment: it holds the lock while it
/// closes, and a connection is forwarded only if it is still in `open` when
/// its target answers, so none slips past a cut.
#[derive(Default)]
struct State {
    cut: bool,
    stopping: bool,
    next_id: u64,
    open: HashMap<u64, Ends>,
}

/// Handles on one forwarded connection's sockets, for `cut` to shut down.
struct Ends {
    client: TcpStream,
    /// None until the target has answered.
    target: Option<TcpStream>,
}

impl Ends {
    fn shut(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(target) = &self.target {
            let _ = target.shutdown(Shutdown::Both);
        }
    }
}

impl State {
    fn close_all(&mut self) {
        for (_, ends) in self.open.drain() {
            ends.shut();
        }
    }
}

impl Shared {
    /// The state, even if a thread panicked while holding it: the state is
    /// consistent between statements, and the link must still cut and drop.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Link {
    /// A link to `127.0.0.1:target_port`, forwarding from now on.
    pub fn new(target_port: u16) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port for the link");
        let port = listener.local_addr().expect("the link's own address").port();
        let shared = Arc::new(Shared {
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            carried: AtomicU64::new(0),
            state: Mutex::default(),
        });
        let for_acceptor = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("link-{port}"))
            .spawn(move || accept_loop(listener, &for_acceptor))
            .expect("start the link's thread");
        Link { port, shared, acceptor: Some(acceptor) }
    }

    /// The port to connect to instead of the target's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq conninfo that reaches the target through the link.
    pub fn conninfo(&self, user: &str, dbname: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={dbname}", self.port)
    }

    /// Drop every connection through the link, and close each new one at
    /// once until `heal`. When this returns, no connection through the link
    /// carries another byte.
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        state.cut = true;
        state.close_all();
    }

    /// Forward new connections again (the ones `cut` dropped stay dropped).
    pub fn heal(&self) {
        self.shared.lock().cut = false;
    }

    pub fn is_cut(&self) -> bool {
        self.shared.lock().cut
    }

    /// Total bytes carried, both directions, since the link was made. A byte
    /// counts once read from one end, just before it is written to the other,
    /// so a peer that has received it sees it counted.
    pub fn bytes(&self) -> u64 {
        self.shared.carried.load(Ordering::SeqCst)
    }

    /// Connections accepted and not yet closed (including those still
    /// waiting for the target to answer).
    pub fn open_connections(&self) -> usize {
        self.shared.lock().open.len()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            state.close_all();
        }
        // The accepting thread may be blocked in accept(): a connection of
        // our own wakes it, it sees `stopping`, closes the listener and joins
        // the connections' threads. Should that connection fail, joining
        // could wait forever, so the thread is left to itself instead.
        let woken = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        if let Some(acceptor) = self.acceptor.take() {
            if woken {
                let _ = acceptor.join();
            }
        }
    }
}

/// What the accepting thread does with a connection it has just accepted.
enum Admission {
    Forward(u64),
    Refuse,
    Stop,
}

/// Accept until the link is dropped; each admitted connection gets a thread.
fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    let mut forwarders: Vec<JoinHandle<()>> = Vec::new();
    for incoming in listener.incoming() {
        let client = match incoming {
            Ok(client) => client,
            Err(_) => {
                std::thread::sleep(ACCEPT_ERROR_BACKOFF);
                continue;
            }
        };
        forwarders.retain(|forwarder| !forwarder.is_finished());
        match admit(shared, &client) {
            Admission::Forward(id) => {
                let shared = Arc::clone(shared);
                forwarders.push(std::thread::spawn(move || forward(&shared, id, client)));
            }
            Admission::Refuse => drop(client),
            Admission::Stop => break,
        }
    }
    drop(listener);
    for forwarder in forwarders {
        let _ = forwarder.join();
    }
}

/// Register `client` in the open connections, unless the link is cut
/// (then it is closed at once) or being dropped.
fn admit(shared: &Shared, client: &TcpStream) -> Admission {
    let mut state = shared.lock();
    if state.stopping {
        return Admission::Stop;
    }
    let handle = if state.cut { None } else { client.try_clone().ok() };
    let Some(handle) = handle else {
        let _ = client.shutdown(Shutdown::Both);
        return Admission::Refuse;
    };
    let id = state.next_id;
    state.next_id += 1;
    state.open.insert(id, Ends { client: handle, target: None });
    Admission::Forward(id)
}

/// One connection's life: reach the target, carry bytes both ways until
/// either end (or a cut) closes it, then forget it.
fn forward(shared: &Arc<Shared>, id: u64, client: TcpStream) {
    if let Some(target) = connect_target(shared, id, &client) {
        carry_both_ways(shared, client, target);
    }
    shared.lock().open.remove(&id);
}

/// The target's end of connection `id`, registered beside the client's; None
/// (and the client closed) if the target does not answer or a cut came first.
fn connect_target(shared: &Shared, id: u64, client: &TcpStream) -> Option<TcpStream> {
    let target = match TcpStream::connect_timeout(&shared.target, TARGET_CONNECT_TIMEOUT) {
        Ok(target) => target,
        Err(_) => {
            let _ = client.shutdown(Shutdown::Both);
            return None;
        }
    };
    // Each side writes whatever it has read at once; the proxy must not add
    // Nagle's delay to PostgreSQL's small messages.
    let _ = target.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let mut state = shared.lock();
    let handle = target.try_clone().ok();
    // A cut since the accept took this connection out of `open` (and shut its client end).
    match (state.open.get_mut(&id), handle) {
        (Some(ends), Some(handle)) => {
            ends.target = Some(handle);
            Some(target)
        }
        _ => {
            let _ = client.shutdown(Shutdown::Both);
            let _ = target.shutdown(Shutdown::Both);
            None
        }
    }
}

/// Client to target on a thread of its own, target to client on this one.
fn carry_both_ways(shared: &Arc<Shared>, client: TcpStream, target: TcpStream) {
    let (Ok(client_reader), Ok(target_writer)) = (client.try_clone(), target.try_clone()) else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = target.shutdown(Shutdown::Both);
        return;
    };
    let for_upstream = Arc::clone(shared);
    let upstream = std::thread::spawn(move || carry(client_reader, target_writer, &for_upstream.carried));
    carry(target, client, &shared.carried);
    let _ = upstream.join();
}

/// Copy `from` to `to` until `from` ends. An orderly end is passed on as a
/// half close (the other direction may still have bytes to carry); an error
/// (a cut shuts both sockets down) ends both directions.
fn carry(mut from: TcpStream, mut to: TcpStream, carried: &AtomicU64) {
    let mut buffer = vec![0u8; BUFFER_BYTES];
    loop {
        match from.read(&mut buffer) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                carried.fetch_add(n as u64, Ordering::SeqCst);
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
