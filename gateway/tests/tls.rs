//! Outbound HTTPS: a provider and an MCP server reached over real TLS (a TLS terminator in front
//! of the mock upstream, its certificate issued by a private CA that `PALISADE_CA_FILE` names),
//! and a provider whose certificate no trusted CA issued, refused with an error that says so.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::pki::{Pki, pki};
use common::{SUPPORT_KEY, TestGateway, chat_body};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

/// Terminate TLS with `pki`'s certificate and pass the bytes on to `target`.
async fn tls_front(pki: &Pki, target: SocketAddr) -> u16 {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![pki.cert_der.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone())),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to pass on.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_and_mcp_servers_are_reached_over_tls() {
    let trusted = pki("trusted");
    let stranger = pki("stranger");
    let dir = common::temp_dir("tls");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &trusted.ca_pem).expect("write CA");
    // Read once per process, before the first client is built; this binary's only test sets it.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(palisade::net::CA_FILE_ENV, &ca_file);
    }
    let mock_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let (mock_addr, mock) = mock_upstream::spawn(mock_listener);
    let secure = tls_front(&trusted, mock_addr).await;
    let untrusted = tls_front(&stranger, mock_addr).await;
    let extra = format!(
        r#"
[[providers]]
name = "secure"
base_url = "https://localhost:{secure}"

[[providers]]
name = "impostor"
base_url = "https://localhost:{untrusted}"

[routes.tls]
targets = ["secure/gpt-4o-mini"]

[routes.impostor]
targets = ["impostor/gpt-4o-mini"]

[[mcp_servers]]
name = "desk"
transport = "http"
url = "https://localhost:{secure}/mcp"
"#
    );
    let gw = TestGateway::start_full(common::Db::Sqlite, &[], "", false, &extra).await;

    let ok = gw.chat(SUPPORT_KEY, &chat_body("tls", "hello")).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    assert_eq!(ok.headers["palisade-provider"], "secure/gpt-4o-mini");
    assert!(!ok.content().is_empty(), "{}", ok.json);
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.path == "/v1/chat/completions"),
        "the call reached the mock through TLS"
    );

    let refused = gw.chat(SUPPORT_KEY, &chat_body("impostor", "hello")).await;
    assert_eq!(refused.status, 502, "{}", refused.json);
    assert!(
        refused.message().to_lowercase().contains("certificate"),
        "says why: {}",
        refused.json
    );

    // The MCP desk over HTTPS.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}});
    let h = [("accept", "application/json, text/event-stream")];
    let (status, headers, _) = gw
        .request_with(
            "POST",
            "/mcp",
            Some(SUPPORT_KEY),
            Bytes::from(init.to_string()),
            &h,
        )
        .await;
    assert_eq!(status, 200);
    let sid = headers["mcp-session-id"].to_str().unwrap().to_string();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, _, body) = gw
        .request_with(
            "POST",
            "/mcp",
            Some(SUPPORT_KEY),
            Bytes::from(list.to_string()),
            &[
                h[0],
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-11-25"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let names: Vec<&str> = body["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(names.contains(&"desk__crm_query"), "{body}");
}
