//! WebSocket through linger: the 101 and the tunnel both ways, with a real WebSocket crate
//! on both ends.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_messages_flow_both_ways_after_101() {
    trace_init();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(sock)
            .await
            .expect("upstream handshake");
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                ws.send(Message::Text(format!("echo: {t}").into()))
                    .await
                    .unwrap();
            }
        }
    });
    let linger = InProcess::start(&[up_addr], |_| {}).unwrap();
    let sock = TcpStream::connect(linger.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://a.test/chat", sock)
        .await
        .expect("handshake through linger");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}").into()))
            .await
            .unwrap();
        let got = tokio::time::timeout(OUTER, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::Text(format!("echo: hello {i}").into()));
    }
    ws.close(None).await.unwrap();
    drop(ws);
    let _ = tokio::time::timeout(OUTER, upstream).await;
}
