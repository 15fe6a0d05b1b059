//! Plain TCP and UDP backends for the demo, the tests and the benches: each
//! answers with its name (the version it stands for), so a client sees which
//! version a connection or a datagram reached; and [`ask_version`], the
//! client's side. [`spawn_tokio_server`] runs any async server (HTTP, gRPC,
//! WebSocket) in a namespace.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv6Addr, TcpListener, TcpStream, UdpSocket},
};

use crate::netns::NetNs;

/// Binds `[::]:port` (both families) in `ns` and runs `serve` on that
/// listener on a thread of its own (a current-thread tokio runtime) until
/// the process ends. Binding errors come back; the server's are its own.
pub fn spawn_tokio_server<F, Fut>(ns: &NetNs, port: u16, serve: F) -> std::io::Result<()>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let listener = ns.run(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            serve(listener).await;
        });
    });
    Ok(())
}

/// A TCP backend on `[::]:port` (both families): answers every line a client
/// sends with `name` and a newline, for as long as the client keeps the
/// connection open. Runs until the process exits.
pub fn serve_tcp(ns: &NetNs, port: u16, name: &'static str) -> std::io::Result<()> {
    serve_tcp_after(ns, port, name, std::time::Duration::ZERO)
}

/// [`serve_tcp`] answering each line `delay` after it came: a client's next
/// packet after its question is the server's.
pub fn serve_tcp_after(ns: &NetNs, port: u16, name: &'static str, delay: std::time::Duration) -> std::io::Result<()> {
    let listener = ns.run(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&conn);
                let mut line = String::new();
                while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    if (&conn).write_all(format!("{name}\n").as_bytes()).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
    Ok(())
}

/// A [`serve_tcp`] backend that can be stopped, as a killed server is: its
/// listener closes (new connections are refused) and the connections it
/// holds are shut down. Stopped when dropped.
pub struct StoppableTcp {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

/// Starts a [`StoppableTcp`] backend on `[::]:port` in `ns`, answering with `name`.
pub fn serve_tcp_stoppable(ns: &NetNs, port: u16, name: &'static str) -> std::io::Result<StoppableTcp> {
    use std::sync::{atomic::Ordering::Relaxed, Arc, Mutex};
    let listener = ns.run(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let accept = std::thread::spawn(move || {
        // The connections open now (each handler removes its own when it ends).
        let held: Arc<Mutex<std::collections::HashMap<u64, TcpStream>>> = Arc::default();
        let mut next_id = 0u64;
        while !flag.load(Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let id = next_id;
                    next_id += 1;
                    if let Ok(copy) = conn.try_clone() {
                        held.lock().expect("held").insert(id, copy);
                    }
                    let held = held.clone();
                    std::thread::spawn(move || {
                        let mut reader = BufReader::new(&conn);
                        let mut line = String::new();
                        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                            if (&conn).write_all(format!("{name}\n").as_bytes()).is_err() {
                                break;
                            }
                            line.clear();
                        }
                        held.lock().expect("held").remove(&id);
                    });
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        for (_, conn) in held.lock().expect("held").drain() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    });
    Ok(StoppableTcp { stop, accept: Some(accept) })
}

impl StoppableTcp {
    /// Closes the listener and the connections; returns once it is closed.
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StoppableTcp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks a [`serve_tcp`] backend (through `conn`) which version it is.
pub fn ask_version(conn: &TcpStream) -> std::io::Result<String> {
    ask(conn)?;
    answer(conn)
}

/// The question half of [`ask_version`] (to have many in flight at once).
pub fn ask(conn: &TcpStream) -> std::io::Result<()> {
    (&*conn).write_all(b"version?\n")
}

/// The answer half of [`ask_version`].
pub fn answer(conn: &TcpStream) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "backend closed the connection"));
    }
    Ok(line.trim().to_owned())
}

/// A UDP backend on `[::]:port` (both families): answers each datagram with `name`.
pub fn serve_udp(ns: &NetNs, port: u16, name: &'static str) -> std::io::Result<()> {
    let sock = ns.run(|| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), from);
        }
    });
    Ok(())
}
