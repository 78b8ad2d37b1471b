//! Tests of the multi-node harness itself, against plain TCP peers: no
//! PostgreSQL server needed. The link (common::link) is checked against an
//! echo server on a port the OS picks; the ports nodes get (common::free_port)
//! against the kernel's ephemeral range.

mod common;

use common::Link;
use std::collections::BTreeSet;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// How long a condition, a read or a drop may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Poll `condition` until it holds; panic naming `what` once `DEADLINE` passes.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < until, "timed out after {DEADLINE:?} waiting for: {what}");
        thread::sleep(POLL_INTERVAL);
    }
}

/// A server that sends back whatever it reads, on a port the OS picks.
struct Echo {
    port: u16,
    /// Connections the server has seen end.
    ended: Arc<AtomicUsize>,
}

fn echo_server() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ended = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ended);
    // Left blocked in accept when the test ends: the test process exits anyway.
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counted = Arc::clone(&counted);
            thread::spawn(move || {
                echo(stream);
                counted.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Echo { port, ended }
}

fn echo(mut stream: TcpStream) {
    let mut buffer = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buffer) {
        if stream.write_all(&buffer[..n]).is_err() {
            return;
        }
    }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// Send `message` and read it back.
fn round_trip(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    stream.write_all(message)?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back)?;
    assert_eq!(back, message, "the echo came back changed");
    Ok(())
}

/// A read timed out: the peer neither answered nor closed.
fn hung(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The link under `stream` has dropped: a read ends (end of file or an
/// error) before the deadline instead of hanging.
fn sees_link_drop(stream: &mut TcpStream) -> bool {
    match stream.read(&mut [0u8; 64]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !hung(&e),
    }
}

/// A new connection through the link is closed before it carries anything.
fn refused_at_once(port: u16) -> bool {
    let mut stream = connect(port);
    match round_trip(&mut stream, b"anyone there?") {
        Ok(()) => false,
        Err(e) => !hung(&e),
    }
}

#[test]
fn node_ports_lie_outside_the_ephemeral_range_free_and_never_handed_twice() {
    let (low, high) = common::ephemeral_port_range();
    // each port is free again at once (nothing keeps it), yet never handed out twice
    let ports: Vec<u16> = (0..50).map(|_| common::free_port()).collect();
    assert_eq!(ports.iter().collect::<BTreeSet<_>>().len(), ports.len(), "a port was handed out twice: {ports:?}");
    for port in ports {
        assert!(port < low || port > high, "port {port} lies in the ephemeral range {low}-{high}");
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} was handed out taken");
    }
}

#[test]
fn node_port_candidates_avoid_the_ephemeral_range() {
    assert_eq!(common::parse_port_range("32768\t60999\n"), Some((32768, 60999)));
    assert_eq!(common::parse_port_range("61000 32768"), None);
    assert_eq!(common::parse_port_range("32768"), None);
    let candidates = common::node_port_candidates((32768, 60999));
    assert_eq!((candidates.first(), candidates.last()), (Some(&10000), Some(&u16::MAX)));
    assert!(candidates.contains(&32767) && candidates.contains(&61000));
    assert!(!candidates.iter().any(|port| (32768..=60999).contains(port)));
    assert!(common::node_port_candidates((1024, u16::MAX)).is_empty());
}

#[test]
fn link_forwards_both_ways_and_counts_bytes() {
    let echo = echo_server();
    let link = Link::new(echo.port);
    assert_ne!(link.port(), echo.port);
    assert_eq!(link.conninfo("edge_login", "postgres"), format!("host=127.0.0.1 port={} user=edge_login dbname=postgres", link.port()));
    let mut first = connect(link.port());
    let mut second = connect(link.port());
    round_trip(&mut first, b"hello").unwrap();
    round_trip(&mut second, b"world!").unwrap();
    round_trip(&mut first, &[7u8; 100_000]).unwrap();
    assert_eq!(link.bytes(), 2 * (5 + 6 + 100_000));
    assert_eq!(link.open_connections(), 2);
    // a client's orderly close reaches the server, and the link forgets the connection
    drop(first);
    wait_until("the server sees the first connection end", || echo.ended.load(Ordering::SeqCst) == 1);
    wait_until("the link forgets the first connection", || link.open_connections() == 1);
    round_trip(&mut second, b"still here").unwrap();
}

#[test]
fn cut_drops_open_connections_and_refuses_new_ones_until_heal() {
    let echo = echo_server();
    let link = Link::new(echo.port);
    let mut open = connect(link.port());
    round_trip(&mut open, b"before the cut").unwrap();
    let carried = link.bytes();

    link.cut();
    assert!(link.is_cut());
    assert_eq!(link.open_connections(), 0);
    assert!(sees_link_drop(&mut open), "an open connection outlived the cut");
    wait_until("the server sees its end dropped", || echo.ended.load(Ordering::SeqCst) == 1);
    assert!(refused_at_once(link.port()), "a connection made while cut was forwarded or hung");
    assert_eq!(link.bytes(), carried, "bytes crossed a cut link");
    assert_eq!(echo.ended.load(Ordering::SeqCst), 1, "a connection made while cut reached the server");

    link.heal();
    assert!(!link.is_cut());
    let mut healed = connect(link.port());
    round_trip(&mut healed, b"after the heal").unwrap();
    assert_eq!(link.bytes(), carried + 2 * 14);
}

#[test]
fn a_link_to_nothing_closes_its_clients_at_once() {
    // a port nobody listens on, as when the cloud is stopped
    let link = Link::new(common::free_port());
    assert!(refused_at_once(link.port()), "the client hung or reached something");
    wait_until("the link forgets the connection", || link.open_connections() == 0);
}

#[test]
fn dropping_the_link_closes_its_port_and_connections() {
    let echo = echo_server();
    let link = Link::new(echo.port);
    let port = link.port();
    let mut open = connect(port);
    round_trip(&mut open, b"before the drop").unwrap();
    let (dropped, was_dropped) = mpsc::channel();
    thread::spawn(move || {
        drop(link);
        let _ = dropped.send(());
    });
    was_dropped.recv_timeout(DEADLINE).expect("dropping the link returns (its threads end)");
    assert!(sees_link_drop(&mut open), "a connection outlived the link");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the dropped link's port still accepts");
}

/// What a client thread saw while the link was cut under it.
#[derive(Default)]
struct AfterCut {
    tries: AtomicUsize,
    echoed: AtomicUsize,
    hung: AtomicUsize,
}

/// Connect and echo over and over until `stop`, counting what happens once `cut_returned`.
fn keep_echoing(port: u16, echoed: &AtomicUsize, cut_returned: &AtomicBool, after_cut: &AfterCut, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let mut stream = connect(port);
        loop {
            let was_cut = cut_returned.load(Ordering::SeqCst);
            let result = round_trip(&mut stream, b"ping");
            if was_cut {
                after_cut.tries.fetch_add(1, Ordering::SeqCst);
                match &result {
                    Ok(()) => after_cut.echoed.fetch_add(1, Ordering::SeqCst),
                    Err(e) if hung(e) => after_cut.hung.fetch_add(1, Ordering::SeqCst),
                    Err(_) => 0,
                };
            }
            if result.is_err() || stop.load(Ordering::SeqCst) {
                break;
            }
            echoed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn nothing_crosses_a_cut_even_while_clients_keep_connecting() {
    let echo = echo_server();
    let link = Link::new(echo.port);
    let port = link.port();
    let echoed = Arc::new(AtomicUsize::new(0));
    let cut_returned = Arc::new(AtomicBool::new(false));
    let after_cut = Arc::new(AfterCut::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (echoed, cut_returned, after_cut, stop) = (echoed.clone(), cut_returned.clone(), after_cut.clone(), stop.clone());
            thread::spawn(move || keep_echoing(port, &echoed, &cut_returned, &after_cut, &stop))
        })
        .collect();
    wait_until("clients echo through the link", || echoed.load(Ordering::SeqCst) >= 200);

    link.cut();
    cut_returned.store(true, Ordering::SeqCst);
    assert_eq!(link.open_connections(), 0, "a connection registered after the cut");
    wait_until("clients try the cut link", || after_cut.tries.load(Ordering::SeqCst) >= 200);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(after_cut.echoed.load(Ordering::SeqCst), 0, "an echo crossed the link after cut() returned");
    assert_eq!(after_cut.hung.load(Ordering::SeqCst), 0, "a client hung on the cut link");
    assert_eq!(link.open_connections(), 0);

    link.heal();
    round_trip(&mut connect(port), b"healed").unwrap();
}
