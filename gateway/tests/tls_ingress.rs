//! HTTPS at ingress (issue 16): a certificate from a private CA made here, HTTP/2 and HTTP/1.1
//! chosen by ALPN, the CLI over HTTPS with `--ca-file`, the official openai Python SDK over
//! HTTPS and httpx over HTTP/2, and a renewed certificate picked up by the reload.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::pki::{Pki, pki};
use common::{ADMIN_TOKEN, SUPPORT_KEY, TestGateway, chat_body, write_atomic};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn client_config(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA");
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

fn chat(addr: std::net::SocketAddr, text: &str) -> http::Request<Full<Bytes>> {
    http::Request::post(format!(
        "https://localhost:{}/v1/chat/completions",
        addr.port()
    ))
    .header("authorization", format!("Bearer {SUPPORT_KEY}"))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(chat_body("m", text).to_string())))
    .unwrap()
}

async fn answer(resp: http::Response<hyper::body::Incoming>) -> Value {
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("JSON")
}

fn write_pki(dir: &Path, p: &Pki) {
    write_atomic(&dir.join("cert.pem"), p.cert_pem.as_bytes());
    write_atomic(&dir.join("key.pem"), p.key_pem.as_bytes());
    std::fs::write(dir.join("ca.pem"), &p.ca_pem).expect("CA file");
}

async fn start() -> (TestGateway, Pki, std::path::PathBuf) {
    let first = pki("first");
    let certs = common::temp_dir("tls-ingress");
    write_pki(&certs, &first);
    let extra = format!(
        "server.tls_cert = \"{}\"\nserver.tls_key = \"{}\"\n",
        certs.join("cert.pem").display(),
        certs.join("key.pem").display()
    );
    let gw = TestGateway::start_full(common::Db::Sqlite, &[], "", true, &extra).await;
    (gw, first, certs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_and_http1_by_alpn_and_a_renewed_certificate() {
    let (gw, first, certs) = start().await;

    // HTTP/2 by ALPN.
    let tls = tls_connect(gw.addr, client_config(&first.ca_der, &[b"h2", b"http/1.1"]))
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .expect("h2");
    tokio::spawn(conn);
    let resp = send
        .send_request(chat(gw.addr, "over h2"))
        .await
        .expect("h2 answer");
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, http::Version::HTTP_2)
    );
    let v = answer(resp).await;
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("over h2")),
        "{v}"
    );

    // HTTP/1.1 by ALPN.
    let tls = tls_connect(gw.addr, client_config(&first.ca_der, &[b"http/1.1"]))
        .await
        .expect("TLS handshake");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let resp = send
        .send_request(chat(gw.addr, "over h1"))
        .await
        .expect("h1 answer");
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, http::Version::HTTP_11)
    );

    // Plain HTTP on the TLS port gets nowhere.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the connection is closed");
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1 200"),
        "cleartext is not served on an HTTPS listener"
    );

    // A renewed certificate (from another CA) is served after the reload; the old CA no longer
    // verifies new connections.
    let second = pki("second");
    let mut events = gw.gw.policy.subscribe();
    events.borrow_and_update();
    write_pki(&certs, &second);
    tokio::time::timeout(Duration::from_secs(20), events.changed())
        .await
        .expect("a reload within 20 s")
        .expect("reload events");
    let status = gw.gw.policy.status();
    assert!(status.last_ok, "{status:?}");
    let tls = tls_connect(gw.addr, client_config(&second.ca_der, &[b"h2"]))
        .await
        .expect("the renewed certificate verifies");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert!(
        tls_connect(gw.addr, client_config(&first.ca_der, &[b"h2"]))
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    let _ = std::fs::remove_dir_all(&certs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_python_sdks_speak_https() {
    let (gw, _first, certs) = start().await;
    let url = format!("https://localhost:{}", gw.addr.port());
    let ca = certs.join("ca.pem");

    // The CLI with --ca-file.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["agents", "list", "--url", &url, "--ca-file"])
        .arg(&ca)
        .env("PALISADE_TOKEN", ADMIN_TOKEN)
        .env_remove("PALISADE_URL")
        .output()
        .await
        .expect("run palisade");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("support-bot"), "{stdout}");
    // Without the CA it refuses the certificate, and says so.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["agents", "list", "--url", &url])
        .env("PALISADE_TOKEN", ADMIN_TOKEN)
        .env_remove("PALISADE_CA_FILE")
        .output()
        .await
        .expect("run palisade");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The official openai SDK over HTTPS, and httpx over HTTP/2.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/https_clients.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .env("PALISADE_TEST_URL", &url)
        .env("PALISADE_TEST_CA", &ca)
        .env("PALISADE_TEST_KEY", SUPPORT_KEY)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the Python clients finish within 2 minutes")
        .expect("run python3 (pip install -r tests/e2e/requirements.txt)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("openai: ok"), "{stdout}");
    assert!(stdout.contains("httpx: HTTP/2"), "{stdout}");
    let _ = std::fs::remove_dir_all(&certs);
}
