use tonic::Code;

use super::{
    call::{BACKOFF_BASE, BACKOFF_MAX, Call, backoff, map_error, never_sent},
    convert::key_range,
    tls, *,
};

#[test]
fn range_keys_cover_prefix_and_after() {
    assert_eq!(key_range("a/b/", ""), (b"a/b/".to_vec(), b"a/b0".to_vec()));
    assert_eq!(key_range("", ""), (vec![0], vec![0]));
    assert_eq!(key_range("", "k"), (b"k\0".to_vec(), vec![0]));
    assert_eq!(key_range("p/", "p/b").0, b"p/b\0");
    // `after` below the prefix does not widen the range.
    assert_eq!(key_range("p/", "a").0, b"p/");
}

#[test]
fn debug_hides_the_password() {
    let user = Some(("aios".into(), "hunter2".into()));
    let options = format!(
        "{:?}",
        EtcdOptions {
            user,
            ..EtcdOptions::default()
        }
    );
    assert!(
        options.contains("aios") && !options.contains("hunter2"),
        "{options}"
    );
}

#[test]
fn backoff_grows_jittered_and_capped() {
    for attempt in 1..40 {
        let ceiling = (BACKOFF_BASE * (1 << (attempt - 1).min(16))).min(BACKOFF_MAX);
        let pause = backoff(attempt);
        assert!(
            pause >= ceiling / 2 && pause <= ceiling,
            "{attempt}: {pause:?}"
        );
    }
}

#[test]
fn only_connect_failures_prove_nothing_was_sent() {
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let refused = tonic::Status::from_error(Box::new(tonic::ConnectError(refused.into())));
    assert!(never_sent(&EtcdError::GRpcStatus(refused)));
    let timed_out = tonic::Status::unavailable("etcdserver: request timed out");
    assert!(!never_sent(&EtcdError::GRpcStatus(timed_out)));
}

#[test]
fn etcd_errors_map_to_store_errors() {
    let call = Call {
        revision: 3,
        ..Call::read("test").lease(7)
    };
    let map =
        |code, text: &str| map_error(&EtcdError::GRpcStatus(tonic::Status::new(code, text)), call);
    let lease = map(Code::NotFound, "etcdserver: requested lease not found");
    assert_eq!(lease, StoreError::LeaseNotFound(7));
    let compacted = map(
        Code::OutOfRange,
        "mvcc: required revision has been compacted",
    );
    assert!(matches!(
        compacted,
        StoreError::Compacted { requested: 3, .. }
    ));
    let future = map(
        Code::OutOfRange,
        "mvcc: required revision is a future revision",
    );
    assert!(matches!(future, StoreError::Internal(_)));
    let leader = map(Code::Unavailable, "etcdserver: leader changed");
    assert!(matches!(leader, StoreError::Unavailable(_)));
    let ttl_zero = EtcdError::LeaseKeepAliveError("lease not found".into());
    assert_eq!(map_error(&ttl_zero, call), StoreError::LeaseNotFound(7));
}

#[test]
fn endpoints_get_the_scheme_tls_asks_for() {
    let endpoints = |list: &[&str]| list.iter().map(|e| e.to_string()).collect::<Vec<_>>();
    let plain = tls::endpoint_urls(&endpoints(&["a:1", "http://b:2"]), false).unwrap();
    assert_eq!(plain, ["http://a:1", "http://b:2"]);
    let secure = tls::endpoint_urls(&endpoints(&["a:1", "https://b:2"]), true).unwrap();
    assert_eq!(secure, ["https://a:1", "https://b:2"]);
    let refused = [(["https://a:1"], false), (["http://a:1"], true)];
    for (list, tls) in refused {
        let result = tls::endpoint_urls(&endpoints(&list), tls);
        assert!(matches!(result, Err(StoreError::Internal(_))), "{result:?}");
    }
}

#[test]
fn tls_files_are_read_and_checked_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("empty.pem"), "").unwrap();
    std::fs::write(path("garbage.pem"), "-----BEGIN CERTIFICATE-----\n%%%\n").unwrap();
    let files = |ca: &str, cert: Option<&str>| EtcdTls {
        ca_file: path(ca),
        client_cert_file: cert.map(path),
        client_key_file: None,
    };
    let cases = [
        (files("missing.pem", None), "cannot read CA file"),
        (files("empty.pem", None), "no PEM certificate"),
        (files("garbage.pem", None), "garbage.pem"),
        (files("empty.pem", Some("cert.pem")), "key go together"),
    ];
    for (tls, expected) in cases {
        let Err(StoreError::Internal(message)) = tls::client_config(&tls, "https://a:1") else {
            panic!("{tls:?} was accepted");
        };
        assert!(message.contains(expected), "{message}");
    }
}

#[tokio::test]
async fn a_probe_says_why_an_endpoint_failed() {
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap();
    let urls = [format!("http://127.0.0.1:{port}")];
    let causes = tls::probe(&urls, None, Duration::from_secs(2)).await;
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert!(
        causes[0].starts_with(&format!("connecting to {} directly: ", urls[0])),
        "{causes:?}"
    );
    assert!(causes[0].contains("Connection refused"), "{causes:?}");
}
