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
    set_options(SockRef::from(stream), tcp)
}

/// Applies the same options to a listening socket: Linux hands them to every socket it
/// accepts, so a new connection costs no `setsockopt` of its own ([`inherited`] checks
/// that the kernel did).
pub fn apply_listener(listener: &std::net::TcpListener, tcp: &TcpConfig) -> io::Result<()> {
    set_options(SockRef::from(listener), tcp)
}

/// Does an accepted socket carry the options already (inherited from its listener)?
pub fn inherited(stream: &TcpStream, tcp: &TcpConfig) -> bool {
    let sock = SockRef::from(stream);
    let nodelay = !tcp.nodelay || sock.tcp_nodelay().unwrap_or(false);
    let keepalive = match tcp.keepalive {
        None => true,
        Some(ka) => {
            sock.keepalive().unwrap_or(false)
                && sock.tcp_keepalive_time().ok() == Some(ka.idle)
                && sock.tcp_keepalive_interval().ok() == Some(ka.interval)
                && sock.tcp_keepalive_retries().ok() == Some(ka.count)
        }
    };
    let user_timeout = match tcp.user_timeout {
        None => true,
        Some(ut) => sock.tcp_user_timeout().ok().flatten() == Some(ut),
    };
    nodelay && keepalive && user_timeout
}

fn set_options(sock: SockRef<'_>, tcp: &TcpConfig) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TcpKeepalive;
    use std::time::Duration;

    /// The kernel hands a listening socket's options to the sockets it accepts: the
    /// listener-level setting is checked here on this machine's kernel.
    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options() {
        let tcp = TcpConfig {
            keepalive: Some(TcpKeepalive {
                idle: Duration::from_secs(33),
                interval: Duration::from_secs(7),
                count: 4,
            }),
            user_timeout: Some(Duration::from_millis(12_345)),
            nodelay: true,
        };
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let plain = tokio::net::TcpListener::from_std(listener.try_clone().unwrap()).unwrap();
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let (before, _) = plain.accept().await.unwrap();
        assert!(!inherited(&before, &tcp), "options before they were set");
        apply_listener(&listener, &tcp).unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let (after, _) = plain.accept().await.unwrap();
        assert!(
            inherited(&after, &tcp),
            "the accepted socket lacks the listener's options"
        );
    }
}
