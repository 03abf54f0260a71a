//! The files `sigil dev` writes under DIR: private dirs and files (0700/0600, written through a
//! temporary file), the marker, the x509pop dev CA and agent certificate, each node's
//! `server.toml` (and its `[join]` section, [`with_join`]) and the agent's `agent.toml` (its
//! `bundle_sha256` pin, [`with_pin`]).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use wire::TrustDomain;
use zeroize::Zeroizing;

use super::plan::{Layout, Marker, Plan};
use super::{fail, io_fail, toml_string, wall_secs, DevError};
use crate::rt::config::ServerFileConfig;

pub(super) fn create_private_dir(path: &Path) -> Result<(), DevError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| io_fail("cannot create", path, &e))
}

/// Writes `text` to `path` (mode 0600: a config may hold a join token) through a temporary file.
pub(super) fn write_private(path: &Path, text: &str) -> Result<(), DevError> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_fail("cannot write", path, &e)
    })
}

pub(super) fn read_text(path: &Path) -> Result<String, DevError> {
    std::fs::read_to_string(path).map_err(|e| io_fail("cannot read", path, &e))
}

/// Makes the dev x509pop CA (its key is dropped: nothing else is ever signed with it) and the
/// agent's certificate and key.
fn make_x509pop_files(layout: &Layout, td: &TrustDomain) -> Result<(), DevError> {
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa,
        Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    let broken = |e: rcgen::Error| fail(format!("cannot make the dev x509pop certificates: {e}"));
    let year = i32::try_from(1970 + wall_secs() / 31_556_952).unwrap_or(2025);
    let named = |cn: String| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn
    };
    let mut ca = CertificateParams::default();
    ca.distinguished_name = named(format!("sigil dev agent CA ({td})"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = date_time_ymd(year - 1, 1, 1);
    ca.not_after = date_time_ymd(year + 30, 1, 1);
    let ca_key = KeyPair::generate().map_err(broken)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(broken)?;

    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = named("sigil dev agent".to_owned());
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.subject_alt_names = vec![SanType::DnsName("localhost".try_into().map_err(broken)?)];
    leaf.not_before = date_time_ymd(year - 1, 1, 1);
    leaf.not_after = date_time_ymd(year + 30, 1, 1);
    let leaf_key = KeyPair::generate().map_err(broken)?;
    let leaf_cert = leaf
        .signed_by(&leaf_key, &Issuer::from_params(&ca, &ca_key))
        .map_err(broken)?;
    let key_pem = Zeroizing::new(leaf_key.serialize_pem());

    create_private_dir(&layout.agent_dir())?;
    write_private(&layout.agent_key(), &key_pem)?;
    write_private(&layout.agent_cert(), &leaf_cert.pem())?;
    write_private(&layout.ca_bundle(), &ca_cert.pem())
}

fn server_toml_text(
    layout: &Layout,
    td: &TrustDomain,
    i: u8,
    nodes: u8,
    bind: SocketAddr,
) -> String {
    let path = |p: PathBuf| toml_string(&p.display().to_string());
    let bootstrap = if i == 1 {
        "# The first node of a new trust domain (ignored once the node has Raft state).\nbootstrap = true\n"
    } else {
        "# Joins through the [join] section below, which sigil dev writes with a fresh server join\n# token (`sigil token generate --server`) whenever the node needs one.\n"
    };
    format!(
        "# server.toml of server node {i} of {nodes} of the `sigil dev` plane in {dir}.\n\
         # sigil dev runs it as `sigil server --config <this file>`; README \"Running a server node\"\n\
         # lists every option and its default.\n\
         trust_domain = {td}\n\
         node_id = {i}\n\
         data_dir = {data}\n\
         bind = \"{bind}\"\n\
         admin_socket = {admin}\n\
         {bootstrap}\n\
         [x509pop]\n\
         # The dev CA the agent's certificate chains to (sigil dev made it and dropped its key).\n\
         ca_bundle = {ca}\n",
        dir = layout.dir().display(),
        td = toml_string(td.as_str()),
        data = path(layout.node_dir(i)),
        admin = path(layout.admin_socket(i)),
        ca = path(layout.ca_bundle()),
    )
}

fn agent_toml_text(layout: &Layout, td: &TrustDomain, servers: &[SocketAddr]) -> String {
    let path = |p: PathBuf| toml_string(&p.display().to_string());
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "# agent.toml of the `sigil dev` plane in {dir}; sigil dev runs it as\n\
         # `sigil agent --config <this file>`. README \"Running an agent\" lists every option.\n\
         trust_domain = {td}\n\
         servers = [{servers}]\n\
         data_dir = {data}\n\
         socket_path = {socket}\n\
         admin_socket = {admin}\n\
         # The cluster's bundle hash for a first contact; sigil dev refreshes it on every start.\n\
         bundle_sha256 = \"{zeros}\"\n\
         \n\
         [x509pop]\n\
         # A certificate from the dev CA in x509pop-ca.pem: the agent's SPIFFE ID is\n\
         # spiffe://<td>/sigil/agent/x509pop/<sha256 of this certificate>, the same on every run.\n\
         cert = {cert}\n\
         key = {key}\n",
        dir = layout.dir().display(),
        td = toml_string(td.as_str()),
        servers = servers.join(", "),
        data = path(layout.agent_dir()),
        socket = path(layout.agent_socket()),
        admin = path(layout.agent_admin()),
        zeros = "0".repeat(64),
        cert = path(layout.agent_cert()),
        key = path(layout.agent_key()),
    )
}

/// `text` (a server.toml) with any `[join]` section and root `bootstrap` line replaced by `join`.
pub fn with_join(text: &str, join: &str) -> String {
    let mut out = String::new();
    let mut root = true;
    let mut in_join = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            root = false;
            in_join = t.trim_start_matches('[').trim_start().starts_with("join")
                && t.trim_start_matches('[')
                    .trim_start()
                    .trim_start_matches("join")
                    .trim_start()
                    .starts_with(']');
        }
        if in_join {
            continue;
        }
        if root && is_key(t, "bootstrap") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out.push('\n');
    out.push_str(join);
    out
}

/// Whether TOML line `t` assigns `key`.
fn is_key(t: &str, key: &str) -> bool {
    t.strip_prefix(key)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// `text` (an agent.toml) with its root `bundle_sha256` set to `hash`.
pub fn with_pin(text: &str, hash: &str) -> String {
    let line = format!("bundle_sha256 = \"{hash}\"");
    let mut out = String::new();
    let mut root = true;
    let mut done = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') && root {
            root = false;
            if !done {
                out.push_str(&line);
                out.push_str("\n\n");
                done = true;
            }
        }
        if root && is_key(t, "bundle_sha256") {
            if !done {
                out.push_str(&line);
                out.push('\n');
                done = true;
            }
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    if !done {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The `[join]` section for a server join token.
pub(super) fn join_section(token: &str, seeds: &[String], bundle_sha256: &str, from: u8) -> String {
    let seeds: Vec<String> = seeds.iter().map(|s| toml_string(s)).collect();
    format!(
        "[join]\n\
         # Written by sigil dev: a single-use server join token from node {from} (spent once this\n\
         # node joined; a restart uses the node's identity files instead).\n\
         token = {}\nseeds = [{}]\nbundle_sha256 = {}\n",
        toml_string(token),
        seeds.join(", "),
        toml_string(bundle_sha256)
    )
}

/// UDP ports on 127.0.0.1 that were free a moment ago, distinct and not in `taken`.
fn free_ports(n: usize, taken: &[u16]) -> Result<Vec<u16>, DevError> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..(n * 20 + 20) {
        if ports.len() == n {
            break;
        }
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")
            .map_err(|e| fail(format!("cannot find a free UDP port on 127.0.0.1: {e}")))?;
        let port = socket
            .local_addr()
            .map_err(|e| fail(format!("cannot find a free UDP port on 127.0.0.1: {e}")))?
            .port();
        if !taken.contains(&port) && !ports.contains(&port) {
            ports.push(port);
        }
        held.push(socket);
    }
    if ports.len() < n {
        return Err(fail("cannot find enough free UDP ports on 127.0.0.1"));
    }
    Ok(ports)
}

/// Creates whatever of the plane's files is missing (everything at first run).
pub(super) fn set_up_files(plan: &Plan) -> Result<(), DevError> {
    let layout = &plan.layout;
    let td = &plan.trust_domain;
    if !layout.marker().exists() {
        let marker = Marker {
            format: 1,
            trust_domain: td.to_string(),
            nodes: plan.nodes,
        };
        write_private(&layout.marker(), &marker.text())?;
    }
    let x509pop_files = [layout.ca_bundle(), layout.agent_cert(), layout.agent_key()];
    if !x509pop_files.iter().all(|p| p.exists()) {
        make_x509pop_files(layout, td)?;
    }
    let mut taken = Vec::new();
    let mut missing = Vec::new();
    for i in 1..=plan.nodes {
        let path = layout.server_toml(i);
        if path.exists() {
            let cfg = ServerFileConfig::load(&path).map_err(|e| fail(e.to_string()))?;
            taken.push(cfg.bind.port());
        } else {
            missing.push(i);
        }
    }
    let ports = free_ports(missing.len(), &taken)?;
    for (i, port) in missing.iter().zip(ports) {
        create_private_dir(&layout.node_dir(*i))?;
        let bind = SocketAddr::from(([127, 0, 0, 1], port));
        write_private(
            &layout.server_toml(*i),
            &server_toml_text(layout, td, *i, plan.nodes, bind),
        )?;
    }
    if !layout.agent_toml().exists() {
        let mut servers = Vec::new();
        for i in 1..=plan.nodes {
            let cfg =
                ServerFileConfig::load(&layout.server_toml(i)).map_err(|e| fail(e.to_string()))?;
            servers.push(cfg.advertise);
        }
        create_private_dir(&layout.agent_dir())?;
        write_private(&layout.agent_toml(), &agent_toml_text(layout, td, &servers))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::rt::config::AgentFileConfig;

    #[test]
    fn join_sections_replace_bootstrap_and_old_joins() {
        let base = "trust_domain = \"a.org\"\nnode_id = 1\n# first node\nbootstrap = true\n\n[x509pop]\nca_bundle = \"/x\"\n";
        let join = join_section("t1", &["127.0.0.1:1".to_owned()], &"ab".repeat(32), 2);
        let once = with_join(base, &join);
        assert!(!once.contains("bootstrap ="), "{once}");
        assert!(once.contains("[x509pop]\nca_bundle = \"/x\"\n"), "{once}");
        let cfg = ServerFileConfig::parse(Path::new("server.toml"), &once).expect("parses");
        assert_eq!(cfg.join.expect("join").seeds.len(), 1);
        let join2 = join_section("t2", &["127.0.0.1:2".to_owned()], &"cd".repeat(32), 3);
        let twice = with_join(&once, &join2);
        assert!(!twice.contains("t1") && twice.contains("t2"), "{twice}");
        assert_eq!(twice.matches("[join]").count(), 1, "{twice}");
        assert!(twice.contains("[x509pop]"), "{twice}");
        ServerFileConfig::parse(Path::new("server.toml"), &twice).expect("parses");
    }

    #[test]
    fn pins_are_replaced_or_added() {
        let hash = "ef".repeat(32);
        let text = "trust_domain = \"a.org\"\nbundle_sha256 = \"00\"\n\n[x509pop]\ncert = \"/c\"\n";
        let pinned = with_pin(text, &hash);
        assert_eq!(pinned.matches("bundle_sha256").count(), 1, "{pinned}");
        assert!(
            pinned.contains(&hash) && pinned.contains("[x509pop]\ncert"),
            "{pinned}"
        );
        let without = "trust_domain = \"a.org\"\n\n[x509pop]\ncert = \"/c\"\n";
        let added = with_pin(without, &hash);
        let before_section = added.split("[x509pop]").next().unwrap_or_default();
        assert!(before_section.contains(&hash), "{added}");
        let flat = with_pin("trust_domain = \"a.org\"\n", &hash);
        assert!(
            flat.ends_with(&format!("bundle_sha256 = \"{hash}\"\n")),
            "{flat}"
        );
    }

    #[test]
    fn generated_files_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path().to_path_buf());
        let td: TrustDomain = "dev.sigil.test".parse().expect("td");
        let bind: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        let node1 = server_toml_text(&layout, &td, 1, 3, bind);
        let cfg = ServerFileConfig::parse(Path::new("server.toml"), &node1).expect("node 1");
        assert!(cfg.bootstrap && cfg.join.is_none());
        assert_eq!(cfg.admin_socket, layout.admin_socket(1));
        assert_eq!(cfg.x509pop_ca_bundle, Some(layout.ca_bundle()));
        let node2 = server_toml_text(&layout, &td, 2, 3, bind);
        let cfg = ServerFileConfig::parse(Path::new("server.toml"), &node2).expect("node 2");
        assert!(!cfg.bootstrap);
        let agent = agent_toml_text(&layout, &td, &[bind]);
        let agent = with_pin(&agent, &"12".repeat(32));
        let cfg = AgentFileConfig::parse(Path::new("agent.toml"), &agent).expect("agent");
        assert_eq!(cfg.socket_path, layout.agent_socket());
        assert_eq!(cfg.admin_socket, layout.agent_admin());
        assert_eq!(cfg.bundle_sha256, Some("12".repeat(32)));

        make_x509pop_files(&layout, &td).expect("certificates");
        let ca = std::fs::read(layout.ca_bundle()).expect("ca");
        let cas = crate::rt::config::load_x509pop_cas(&layout.ca_bundle()).expect("usable CA");
        assert_eq!(cas.len(), 1, "{}", String::from_utf8_lossy(&ca));
        let x = cfg.x509pop.expect("x509pop section");
        let credential = x.load().expect("the agent's certificate and key load");
        assert_eq!(credential.chain.len(), 1);
        let mode = std::fs::metadata(layout.agent_key()).expect("key").mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
