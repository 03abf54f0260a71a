use super::*;

fn parse(text: &str) -> Result<ServerFileConfig, Error> {
    ServerFileConfig::parse(Path::new("server.toml"), text)
}

#[test]
fn defaults_fill_in() {
    let c = parse("trust_domain = \"example.org\"\nnode_id = 3\n").expect("parse");
    assert_eq!(c.node_id, 3);
    assert_eq!(c.data_dir, PathBuf::from(DATA_DIR_DEFAULT));
    assert_eq!(c.bind, BIND_DEFAULT.parse::<SocketAddr>().expect("addr"));
    assert!(!c.bootstrap);
    assert_eq!(c.ca_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(c.x509_svid_ttl, Duration::from_secs(3600));
    assert_eq!(c.jwt_svid_ttl, Duration::from_secs(300));
    assert_eq!(c.agent_svid_ttl, Duration::from_secs(3600));
    assert_eq!(c.staleness_max, Duration::from_secs(24 * 3600));
}

#[test]
fn limits_have_defaults_and_refuse_zero() {
    let d = parse("trust_domain = \"a.org\"\nnode_id = 1\n").expect("parse");
    assert_eq!(d.limits, crate::rt::limits::SourceLimits::default());
    let c = parse(
        "trust_domain = \"a.org\"\nnode_id = 1\n[limits]\nconnections_per_source = 8\nunauthenticated_per_sec = 5\n",
    )
    .expect("parse");
    assert_eq!(c.limits.connections_per_source, 8);
    assert_eq!(c.limits.unauthenticated_per_sec, 5);
    assert_eq!(
        c.limits.unauthenticated_burst,
        d.limits.unauthenticated_burst
    );
    for bad in [
        "trust_domain = \"a.org\"\nnode_id = 1\n[limits]\nunauthenticated_burst = 0\n",
        "trust_domain = \"a.org\"\nnode_id = 1\n[limits]\nbogus = 3\n",
    ] {
        let err = parse(bad).expect_err("refused").to_string();
        assert!(err.contains("limits") || err.contains("bogus"), "{err}");
    }
}

#[test]
fn every_option_and_every_error() {
    let c = parse(
        "trust_domain = \"example.org\"\nnode_id = 1\ndata_dir = \"/tmp/x\"\nbind = \"127.0.0.1:9000\"\n\
         admin_socket = \"/tmp/a.sock\"\nbootstrap = true\nca_ttl = \"12h\"\nx509_svid_ttl = \"30m\"\n\
         jwt_svid_ttl = \"2m\"\nagent_svid_ttl = \"20m\"\nstaleness_max = \"1h\"\n",
    )
    .expect("parse");
    assert!(c.bootstrap);
    assert_eq!(c.ca_ttl, Duration::from_secs(12 * 3600));
    assert_eq!(c.staleness_max, Duration::from_secs(3600));
    assert_eq!(c.agent_svid_ttl, Duration::from_secs(1200));
    for (bad, needle) in [
        (
            "trust_domain = \"a.org\"\nnode_id = 1\nagent_svid_ttl = \"5s\"\n",
            "agent_svid_ttl",
        ),
        ("node_id = 1\n", "trust_domain"),
        ("trust_domain = \"Bad TD\"\nnode_id = 1\n", "trust_domain"),
        ("trust_domain = \"a.org\"\nnode_id = 0\n", "node_id"),
        (
            "trust_domain = \"a.org\"\nnode_id = 1\nbind = \"nope\"\n",
            "bind",
        ),
        (
            "trust_domain = \"a.org\"\nnode_id = 1\nca_ttl = \"1x\"\n",
            "ca_ttl",
        ),
        (
            "trust_domain = \"a.org\"\nnode_id = 1\nca_ttl = \"1m\"\n",
            "ca_ttl",
        ),
        (
            "trust_domain = \"a.org\"\nnode_id = 1\nbind = \"0.0.0.0:1\"\n",
            "advertise",
        ),
        (
            "trust_domain = \"a.org\"\nnode_id = 2\nbootstrap = true\n[join]\ntoken = \"t\"\nseeds = [\"127.0.0.1:1\"]\nbundle_sha256 = \"00\"\n",
            "exclude",
        ),
        (
            "trust_domain = \"a.org\"\nnode_id = 2\n[join]\ntoken = \"t\"\nseeds = []\nbundle_sha256 = \"00\"\n",
            "seeds",
        ),
        (
            "trust_domain = \"a.org\"\nnode_id = 2\n[join]\ntoken = \"t\"\nseeds = [\"127.0.0.1:1\"]\nbundle_sha256 = \"00\"\n",
            "bundle_sha256",
        ),
        ("trust_domain = \"a.org\"\nnode_id = 1\ntypo = 1\n", "typo"),
        (
            "trust_domain = \"a.org\"\nnode_id = 1\nx509_svid_ttl = \"0\"\n",
            "TTL",
        ),
        ("not toml", "server.toml"),
    ] {
        let err = parse(bad).expect_err(bad).to_string();
        assert!(err.contains(needle), "{bad:?}: {err}");
        assert!(err.contains("server.toml"), "{err}");
    }
}

#[test]
fn join_section() {
    let hash = "ab".repeat(32);
    let c = parse(&format!(
        "trust_domain = \"a.org\"\nnode_id = 2\nbind = \"0.0.0.0:9000\"\nadvertise = \"10.0.0.2:9000\"\n\
         [join]\ntoken = \"secret-token\"\nseeds = [\"10.0.0.1:8443\"]\nbundle_sha256 = \"{}\"\n",
        hash.to_uppercase()
    ))
    .expect("parse");
    let join = c.join.clone().expect("join");
    assert_eq!(join.bundle_sha256, hash);
    assert_eq!(join.seeds.len(), 1);
    assert_eq!(c.advertise.to_string(), "10.0.0.2:9000");
    let shown = format!("{c:?}");
    assert!(!shown.contains("secret-token"), "{shown}");
}

#[test]
fn agent_config() {
    let p = Path::new("agent.toml");
    let hash = "cd".repeat(32);
    let c = AgentFileConfig::parse(
        p,
        &format!("trust_domain = \"a.org\"\nservers = [\"127.0.0.1:8443\"]\njoin_token = \"sekrit\"\nbundle_sha256 = \"{hash}\"\n"),
    )
    .expect("parse");
    assert_eq!(c.data_dir, PathBuf::from(AGENT_DATA_DIR_DEFAULT));
    assert_eq!(c.socket_path, PathBuf::from(AGENT_SOCKET_DEFAULT));
    assert_eq!(
        c.admin_socket,
        Path::new(AGENT_DATA_DIR_DEFAULT).join(AGENT_ADMIN_SOCKET_NAME)
    );
    assert!(!format!("{c:?}").contains("sekrit"));
    for (bad, needle) in [
        ("trust_domain = \"a.org\"\nservers = []\n", "servers"),
        ("trust_domain = \"a.org\"\nservers = [\"x\"]\n", "servers"),
        (
            "trust_domain = \"a.org\"\nservers = [\"127.0.0.1:1\"]\njoin_token = \"t\"\n",
            "bundle_sha256",
        ),
        (
            "trust_domain = \"a.org\"\nservers = [\"127.0.0.1:1\"]\nnope = 1\n",
            "nope",
        ),
    ] {
        let err = AgentFileConfig::parse(p, bad).expect_err(bad).to_string();
        assert!(err.contains(needle), "{bad:?}: {err}");
    }
}

#[test]
fn x509pop_sections() {
    let c = parse(
        "trust_domain = \"a.org\"\nnode_id = 1\n[x509pop]\nca_bundle = \"/etc/sigil/cas.pem\"\n",
    )
    .expect("parse");
    assert_eq!(
        c.x509pop_ca_bundle,
        Some(PathBuf::from("/etc/sigil/cas.pem"))
    );
    assert_eq!(
        parse("trust_domain = \"a.org\"\nnode_id = 1\n")
            .expect("parse")
            .x509pop_ca_bundle,
        None
    );
    for bad in [
        "trust_domain = \"a.org\"\nnode_id = 1\n[x509pop]\n",
        "trust_domain = \"a.org\"\nnode_id = 1\n[x509pop]\nca_bundle = \"/x\"\ntypo = 1\n",
    ] {
        let err = parse(bad).expect_err(bad).to_string();
        assert!(err.contains("server.toml"), "{err}");
    }

    let p = Path::new("agent.toml");
    let base = "trust_domain = \"a.org\"\nservers = [\"127.0.0.1:8443\"]\n";
    let c = AgentFileConfig::parse(
        p,
        &format!("{base}[x509pop]\ncert = \"/etc/a.pem\"\nkey = \"/etc/a.key\"\n"),
    )
    .expect("x509pop needs no pin: the stored bundle may do");
    assert_eq!(
        c.x509pop,
        Some(AgentX509PopConfig {
            cert: PathBuf::from("/etc/a.pem"),
            key: PathBuf::from("/etc/a.key"),
        })
    );
    let both = format!(
        "{base}join_token = \"t\"\nbundle_sha256 = \"{}\"\n[x509pop]\ncert = \"/a\"\nkey = \"/b\"\n",
        "ab".repeat(32)
    );
    let err = AgentFileConfig::parse(p, &both)
        .expect_err("both")
        .to_string();
    assert!(err.contains("one attestation method"), "{err}");
    let err = AgentFileConfig::parse(p, &format!("{base}[x509pop]\ncert = \"/a\"\n"))
        .expect_err("no key")
        .to_string();
    assert!(err.contains("key"), "{err}");
}

#[test]
fn tpm_sections() {
    let hash = "AB".repeat(32);
    let c = parse(&format!(
        "trust_domain = \"a.org\"\nnode_id = 1\n[tpm]\nek_ca_bundle = \"/etc/sigil/tpm.pem\"\nek_hashes = [\"{hash}\"]\n"
    ))
    .expect("parse");
    assert_eq!(
        c.tpm,
        Some(ServerTpmConfig {
            ek_ca_bundle: Some(PathBuf::from("/etc/sigil/tpm.pem")),
            ek_hashes: vec!["ab".repeat(32)],
        })
    );
    let only_hashes = parse(&format!(
        "trust_domain = \"a.org\"\nnode_id = 1\n[tpm]\nek_hashes = [\"{hash}\"]\n"
    ))
    .expect("parse");
    assert_eq!(only_hashes.tpm.expect("tpm").ek_ca_bundle, None);
    assert_eq!(
        parse("trust_domain = \"a.org\"\nnode_id = 1\n")
            .expect("parse")
            .tpm,
        None
    );
    for (bad, needle) in [
        ("[tpm]\n", "ek_ca_bundle"),
        ("[tpm]\nek_hashes = []\n", "ek_hashes"),
        ("[tpm]\nek_hashes = [\"abc\"]\n", "tpm.ek_hashes"),
        ("[tpm]\nek_ca_bundle = \"/x\"\ntypo = 1\n", "typo"),
    ] {
        let text = format!("trust_domain = \"a.org\"\nnode_id = 1\n{bad}");
        let err = parse(&text).expect_err(bad).to_string();
        assert!(
            err.contains(needle) && err.contains("server.toml"),
            "{bad:?}: {err}"
        );
    }

    let p = Path::new("agent.toml");
    let base = "trust_domain = \"a.org\"\nservers = [\"127.0.0.1:8443\"]\n";
    let minimal = AgentFileConfig::parse(p, &format!("{base}[tpm]\n"));
    let custom = AgentFileConfig::parse(
        p,
        &format!("{base}[tpm]\ntcti = \"swtpm:host=127.0.0.1,port=2321\"\npcrs = [16, 0, 7, 7]\nek = \"ecc\"\n"),
    );
    if cfg!(feature = "tpm") {
        assert_eq!(
            minimal.expect("defaults").tpm,
            Some(AgentTpmConfig {
                tcti: TPM_TCTI_DEFAULT.into(),
                pcrs: vec![0, 7],
                ek: EkAlgorithm::Rsa,
            })
        );
        assert_eq!(
            custom.expect("custom").tpm,
            Some(AgentTpmConfig {
                tcti: "swtpm:host=127.0.0.1,port=2321".into(),
                pcrs: vec![0, 7, 16],
                ek: EkAlgorithm::Ecc,
            })
        );
    } else {
        for result in [minimal, custom] {
            let err = result.expect_err("no TPM support").to_string();
            assert!(
                err.contains("built without TPM support; build with --features tpm"),
                "{err}"
            );
        }
    }
    for (bad, needle) in [
        ("[tpm]\npcrs = [24]\n", "tpm.pcrs"),
        ("[tpm]\npcrs = [-1]\n", "tpm.pcrs"),
        ("[tpm]\npcrs = []\n", "tpm.pcrs"),
        ("[tpm]\nek = \"dsa\"\n", "tpm.ek"),
        ("[tpm]\ntcti = \"\"\n", "tpm.tcti"),
        ("[tpm]\ntypo = 1\n", "typo"),
        (
            "join_token = \"t\"\nbundle_sha256 = \"abababababababababababababababababababababababababababababababab\"\n[tpm]\n",
            "join_token and [tpm] are both set",
        ),
        (
            "[tpm]\n[x509pop]\ncert = \"/a\"\nkey = \"/b\"\n",
            "[x509pop] and [tpm] are both set",
        ),
    ] {
        let err = AgentFileConfig::parse(p, &format!("{base}{bad}"))
            .expect_err(bad)
            .to_string();
        assert!(err.contains(needle), "{bad:?}: {err}");
    }
}

#[test]
fn x509pop_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let err = load_x509pop_cas(&missing).expect_err("missing").to_string();
    assert!(
        err.contains("missing.pem") && err.contains("ca_bundle"),
        "{err}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").expect("write");
    let err = load_x509pop_cas(&empty).expect_err("empty").to_string();
    assert!(
        err.contains("empty.pem") && err.contains("CERTIFICATE"),
        "{err}"
    );
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, pem_text("CERTIFICATE", &[0x30, 0x03, 1, 2, 3])).expect("write");
    let err = load_x509pop_cas(&junk).expect_err("junk").to_string();
    assert!(
        err.contains("junk.pem") && err.contains("certificate 1"),
        "{err}"
    );

    let agent = AgentX509PopConfig {
        cert: dir.path().join("agent.pem"),
        key: dir.path().join("agent.key"),
    };
    let err = agent.load().expect_err("no files").to_string();
    assert!(err.contains("agent.pem"), "{err}");
}

fn pem_text(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

#[test]
fn x509pop_key_pem() {
    let key = crate::rt::tls::TlsKey::generate().expect("key");
    let pkcs8 = key.pkcs8_der().to_vec();
    let text = format!(
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
        pem_text("PRIVATE KEY", &pkcs8)
    );
    let loaded = x509pop_key_from_pem(text.as_bytes()).expect("PKCS#8 P-256");
    assert_eq!(loaded.algorithm(), "ECDSA P-256");
    let secret_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&pkcs8)
    };
    for (bad, needle) in [
        (pem_text("ENCRYPTED PRIVATE KEY", &pkcs8), "encrypted"),
        ("nothing\n".to_owned(), "no PRIVATE KEY"),
        (
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n".to_owned(),
            "base64",
        ),
        (
            format!("-----BEGIN PRIVATE KEY-----\n{secret_b64}\n"),
            "END",
        ),
        (pem_text("RSA PRIVATE KEY", &pkcs8), "PKCS#1"),
        (pem_text("EC PRIVATE KEY", &pkcs8[..40]), "SEC1"),
    ] {
        let err = x509pop_key_from_pem(bad.as_bytes()).expect_err(needle);
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(
            !err.contains(&secret_b64[10..30]),
            "no key material in errors"
        );
    }
    let shown = format!("{loaded:?}");
    assert!(!shown.contains(&secret_b64[10..30]), "{shown}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration_secs("300"), Ok(300));
    assert_eq!(parse_duration_secs("1h30m"), Ok(5400));
    assert!(parse_duration_secs("").is_err());
    assert!(parse_duration_secs("5").is_ok());
    assert!(parse_duration_secs("5x").is_err());
    assert!(parse_duration_secs("99999999999999999999d").is_err());
}
