//! TCP socket options (R6) and listener binding.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::TcpStream;

use crate::config::TcpConfig;

/// Applies nodelay, TCP keepalive and `TCP_USER_TIMEOUT` to a connected socket.
/// Each option is set on its own, so one refused option does not skip the others; the
/// first error is returned.
pub fn apply(stream: &TcpStream, tcp: &TcpConfig) -> io::Result<()> {
    let sock = SockRef::from(stream);
    let mut first_err = None;
    let mut note = |r: io::Result<()>| {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    };
    if tcp.nodelay {
        note(sock.set_tcp_nodelay(true));
    }
    if let Some(ka) = tcp.keepalive {
        let params = TcpKeepalive::new()
            .with_time(ka.idle)
            .with_interval(ka.interval)
            .with_retries(ka.count);
        note(sock.set_tcp_keepalive(&params));
    }
    if let Some(ut) = tcp.user_timeout {
        note(sock.set_tcp_user_timeout(Some(ut)));
    }
    first_err.map_or(Ok(()), Err)
}

/// Binds a listening socket (SO_REUSEADDR, backlog 4096), non-blocking, ready for tokio.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}
