//! TCP socket options (R6) and listener binding.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::TcpStream;

use crate::config::TcpConfig;

/// Applies nodelay, TCP keepalive, `TCP_USER_TIMEOUT` and the ACK mode to a connected
/// socket. Each option is set on its own, so one refused option does not skip the others;
/// the first error is returned.
pub fn apply(sock: SockRef<'_>, tcp: &TcpConfig) -> io::Result<()> {
    set_options(sock, tcp, Options::All)
}

/// Sets the ACK mode of a socket about to connect, so that the handshake's last ACK can
/// ride on the request (HAProxy's `option tcp-smart-connect`).
pub fn apply_before_connect(sock: SockRef<'_>, tcp: &TcpConfig) -> io::Result<()> {
    set_options(sock, tcp, Options::AckMode)
}

/// The rest, once it is connected: set before, `TCP_USER_TIMEOUT` would also cut the
/// connect's SYN retries short of `connect_timeout`.
pub fn apply_after_connect(sock: SockRef<'_>, tcp: &TcpConfig) -> io::Result<()> {
    set_options(sock, tcp, Options::AllButAckMode)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Options {
    All,
    AckMode,
    AllButAckMode,
}

/// Applies the same options to a listening socket: Linux hands them to every socket it
/// accepts, so a new connection costs no `setsockopt` of its own ([`inherited`] checks
/// that the kernel did). With `quickack` off, an accepted connection starts in delayed-ACK
/// mode: the ACK of its first request rides on the response instead of going alone, one
/// packet less per connection (HAProxy's `option tcp-smart-accept`).
pub fn apply_listener(listener: &std::net::TcpListener, tcp: &TcpConfig) -> io::Result<()> {
    set_options(SockRef::from(listener), tcp, Options::All)
}

/// Does an accepted socket carry the options already (inherited from its listener)?
pub fn inherited(sock: SockRef<'_>, tcp: &TcpConfig) -> bool {
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
    let lowat = match tcp.notsent_lowat {
        None => true,
        Some(l) => sock.tcp_notsent_lowat().ok() == Some(l),
    };
    nodelay && keepalive && user_timeout && lowat
}

fn set_options(sock: SockRef<'_>, tcp: &TcpConfig, which: Options) -> io::Result<()> {
    let mut first_err = None;
    let mut note = |r: io::Result<()>| {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    };
    #[cfg(target_os = "linux")]
    if !tcp.quickack && which != Options::AllButAckMode {
        note(sock.set_tcp_quickack(false));
    }
    if which == Options::AckMode {
        return first_err.map_or(Ok(()), Err);
    }
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
    if let Some(lowat) = tcp.notsent_lowat {
        note(sock.set_tcp_notsent_lowat(lowat));
    }
    first_err.map_or(Ok(()), Err)
}

/// A listening socket as a worker's accept loop waits on it: it accepts connections that
/// are non-blocking from the start (no `fcntl` of their own) and not registered with the
/// event loop (see [`Tcp`]: a connection registers only once it has to wait).
///
/// tokio hands out readiness for a socket only through its own types, whose `accept`
/// registers every connection it returns, or through `AsyncFd`, which is `unsafe` to build:
/// the listening socket is held as a tokio `TcpStream`, for its readiness only (a
/// listening socket is readable when a connection is waiting), and accepted from with
/// `accept4` itself.
///
/// [`Tcp`]: super::transport::Tcp
#[derive(Debug)]
pub struct Listening {
    sock: TcpStream,
}

// === impl Listening ===

impl Listening {
    /// Registers a bound, listening, non-blocking socket with the current runtime.
    pub fn new(listener: std::net::TcpListener) -> io::Result<Self> {
        let fd = std::os::fd::OwnedFd::from(listener);
        Ok(Self {
            sock: TcpStream::from_std(std::net::TcpStream::from(fd))?,
        })
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            self.sock.readable().await?;
            match self
                .sock
                .try_io(tokio::io::Interest::READABLE, || self.try_accept())
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// A connection that is waiting already; `WouldBlock` when none is.
    pub fn try_accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        let (sock, addr) =
            SockRef::from(&self.sock).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
        let peer = addr.as_socket().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "an accepted peer with no IP address",
            )
        })?;
        Ok((sock.into(), peer))
    }
}

/// What an error from `accept` means for the loop that accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// That one connection failed before it was accepted (the client reset it, or a
    /// network error Linux passes on from the new socket, as accept(2) says): accept the
    /// next at once.
    Connection,
    /// Anything else: out of file descriptors or memory, or nothing waiting. Wait a moment
    /// before accepting again, rather than spin.
    Backoff,
}

/// Sorts an `accept` error (see [`AcceptError`]).
pub fn accept_error(e: &io::Error) -> AcceptError {
    match e.raw_os_error() {
        Some(
            libc::ECONNABORTED
            | libc::EINTR
            | libc::EPERM
            | libc::EPROTO
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH,
        ) => AcceptError::Connection,
        _ => AcceptError::Backoff,
    }
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
    #[test]
    fn a_failed_connection_is_skipped_and_a_lack_of_resources_waits() {
        let os = io::Error::from_raw_os_error;
        for errno in [
            libc::ECONNABORTED,
            libc::EPROTO,
            libc::ENETUNREACH,
            libc::EPERM,
        ] {
            assert_eq!(accept_error(&os(errno)), AcceptError::Connection, "{errno}");
        }
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EBADF,
        ] {
            assert_eq!(accept_error(&os(errno)), AcceptError::Backoff, "{errno}");
        }
        let empty = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(accept_error(&empty), AcceptError::Backoff);
    }

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
            quickack: false,
            notsent_lowat: Some(48 * 1024),
        };
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let plain = tokio::net::TcpListener::from_std(listener.try_clone().unwrap()).unwrap();
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let (before, _) = plain.accept().await.unwrap();
        assert!(
            !inherited(SockRef::from(&before), &tcp),
            "options before they were set"
        );
        apply_listener(&listener, &tcp).unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let (after, _) = plain.accept().await.unwrap();
        assert!(
            inherited(SockRef::from(&after), &tcp),
            "the accepted socket lacks the listener's options"
        );
        assert_eq!(
            SockRef::from(&after).tcp_notsent_lowat().unwrap(),
            48 * 1024,
            "the limit on unsent bytes is handed on"
        );
        // The ACK mode is handed on too (getsockopt reads it back as "quick ACKs on").
        assert!(SockRef::from(&before).tcp_quickack().unwrap());
        assert!(
            !SockRef::from(&after).tcp_quickack().unwrap(),
            "the accepted socket acks its first request on its own"
        );
    }

    /// An upstream socket is in delayed-ACK mode from before its connect, so the last ACK
    /// of the handshake rides on the request; `quickack = true` leaves the kernel's mode.
    #[test]
    fn the_ack_mode_follows_the_config() {
        for quickack in [false, true] {
            let tcp = TcpConfig {
                keepalive: None,
                user_timeout: None,
                nodelay: true,
                quickack,
                notsent_lowat: None,
            };
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            apply_before_connect(SockRef::from(&sock), &tcp).unwrap();
            assert_eq!(sock.tcp_quickack().unwrap(), quickack);
            assert!(
                !sock.tcp_nodelay().unwrap(),
                "only the ACK mode before the connect"
            );
        }
    }
}
