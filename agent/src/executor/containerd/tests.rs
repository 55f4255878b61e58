use super::*;

#[test]
fn log_uri_has_one_escaped_query_key() {
    let uri = log_uri(
        Path::new("/usr/bin/apiary"),
        Path::new("/var/lib/apiary/logs/a b.log"),
    );
    assert_eq!(
        uri,
        "binary:///usr/bin/apiary?__log-driver=/var/lib/apiary/logs/a%20b.log"
    );
    assert_eq!(uri.matches('=').count(), 1);
    assert!(!uri.contains('&'));
}

#[test]
fn rootfs_dirs_top_first() {
    let overlay = CdMount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: vec![
            "index=off".into(),
            "workdir=/s/3/work".into(),
            "upperdir=/s/3/fs".into(),
            "lowerdir=/s/2/fs:/s/1/fs".into(),
        ],
    };
    assert_eq!(
        rootfs_dirs(&[overlay]),
        [PathBuf::from("/s/3/fs"), "/s/2/fs".into(), "/s/1/fs".into()]
    );
    let bind = CdMount {
        r#type: "bind".into(),
        source: "/s/1/fs".into(),
        target: String::new(),
        options: vec!["ro".into(), "rbind".into()],
    };
    assert_eq!(rootfs_dirs(&[bind]), [PathBuf::from("/s/1/fs")]);
}

#[tokio::test]
async fn namespaces_are_checked() {
    // connect_lazy needs a runtime but never dials here.
    let ch =
        containerd_client::tonic::transport::Endpoint::from_static("http://[::]").connect_lazy();
    assert!(Api::new(ch.clone(), "apiary-node1").is_ok());
    assert!(Api::new(ch.clone(), "bad ns").is_err());
    assert!(Api::new(ch, "").is_err());
}
