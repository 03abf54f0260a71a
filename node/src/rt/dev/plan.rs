//! What a `sigil dev` run works on: the [`Layout`] of DIR (every path the plane uses), the
//! `sigil-dev.toml` [`Marker`] that makes DIR a plane, and the [`Plan`] [`resolve`] settles from
//! the options and DIR before anything is touched.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wire::TrustDomain;

use super::{
    fail, io_fail, toml_string, DevError, DevOptions, MARKER_FILE, NODES_DEFAULT, SOCKET_PATH_MAX,
    SOCKET_STAGING_EXTRA, TRUST_DOMAIN_DEFAULT,
};

/// Where everything lives under DIR.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout under `dir` (absolute).
    pub fn new(dir: PathBuf) -> Layout {
        Layout { dir }
    }

    /// DIR itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub(super) fn marker(&self) -> PathBuf {
        self.dir.join(MARKER_FILE)
    }
    pub(super) fn dev_pid(&self) -> PathBuf {
        self.dir.join("dev.pid")
    }
    pub(super) fn ca_bundle(&self) -> PathBuf {
        self.dir.join("x509pop-ca.pem")
    }
    /// `DIR/node-<i>`: the node's data dir.
    pub fn node_dir(&self, i: u8) -> PathBuf {
        self.dir.join(format!("node-{i}"))
    }
    pub(super) fn server_toml(&self, i: u8) -> PathBuf {
        self.node_dir(i).join("server.toml")
    }
    /// `DIR/node-<i>/admin.sock`.
    pub fn admin_socket(&self, i: u8) -> PathBuf {
        self.node_dir(i).join("admin.sock")
    }
    pub(super) fn node_pid(&self, i: u8) -> PathBuf {
        self.node_dir(i).join("pid")
    }
    pub(super) fn node_log(&self, i: u8) -> PathBuf {
        self.node_dir(i).join("log")
    }
    pub(super) fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }
    pub(super) fn agent_toml(&self) -> PathBuf {
        self.agent_dir().join("agent.toml")
    }
    /// `DIR/agent.sock`: the Workload API.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    pub(super) fn agent_admin(&self) -> PathBuf {
        self.agent_dir().join("admin.sock")
    }
    pub(super) fn agent_cert(&self) -> PathBuf {
        self.agent_dir().join("x509pop.pem")
    }
    pub(super) fn agent_key(&self) -> PathBuf {
        self.agent_dir().join("x509pop.key")
    }
    pub(super) fn agent_pid(&self) -> PathBuf {
        self.agent_dir().join("pid")
    }
    pub(super) fn agent_log(&self) -> PathBuf {
        self.agent_dir().join("log")
    }

    /// Checks that every socket under DIR fits a Unix socket path.
    pub fn check_socket_paths(&self, nodes: u8) -> Result<(), DevError> {
        let mut sockets: Vec<(PathBuf, usize)> = (1..=nodes)
            .map(|i| (self.admin_socket(i), SOCKET_STAGING_EXTRA))
            .collect();
        sockets.push((self.agent_admin(), SOCKET_STAGING_EXTRA));
        sockets.push((self.agent_socket(), 0));
        let longest = sockets
            .iter()
            .map(|(p, extra)| p.as_os_str().len() + extra)
            .max()
            .unwrap_or(0);
        if longest > SOCKET_PATH_MAX {
            let dir_len = self.dir.as_os_str().len();
            let allowed = dir_len.saturating_sub(longest - SOCKET_PATH_MAX);
            return Err(fail(format!(
                "--data-dir {} is too long ({dir_len} bytes): Unix socket paths must stay under 108 bytes, and the sockets under it (e.g. {}, bound through a temporary name {SOCKET_STAGING_EXTRA} bytes longer) would not; use a data dir of at most {allowed} bytes, e.g. /tmp/sigil-dev",
                self.dir.display(),
                self.admin_socket(nodes).display()
            )));
        }
        Ok(())
    }
}

/// `DIR/sigil-dev.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(super) struct Marker {
    pub(super) format: u32,
    pub(super) trust_domain: String,
    pub(super) nodes: u8,
}

impl Marker {
    pub(super) fn text(&self) -> String {
        format!(
            "# This directory holds a local sigil plane made by `sigil dev`: {n} server node(s) in\n\
             # node-<i>/ and an agent in agent/. Run `sigil dev --data-dir <this directory>` again\n\
             # to resume it; remove the directory to start over.\n\
             format = {}\ntrust_domain = {}\nnodes = {n}\n",
            self.format,
            toml_string(&self.trust_domain),
            n = self.nodes,
        )
    }
}

/// What this run does, settled before anything is touched.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) layout: Layout,
    pub(super) trust_domain: TrustDomain,
    pub(super) nodes: u8,
    /// DIR holds a plane already.
    pub(super) resume: bool,
    pub(super) uid: u32,
}

pub(super) fn resolve(opts: &DevOptions, uid: u32) -> Result<Plan, DevError> {
    if let Some(n) = opts.nodes {
        if ![1, 3, 5].contains(&n) {
            return Err(fail(format!(
                "--nodes {n}: run 1, 3 or 5 server nodes (a Raft cluster wants an odd size)"
            )));
        }
    }
    let dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/sigil-dev-{uid}")));
    if dir.as_os_str().is_empty() {
        return Err(fail("--data-dir: empty path"));
    }
    let dir = std::path::absolute(&dir)
        .map_err(|e| fail(format!("--data-dir {}: {e}", dir.display())))?;
    if dir.to_str().is_none() {
        return Err(fail(format!(
            "--data-dir {}: the path must be valid UTF-8 (it is written into config files)",
            dir.display()
        )));
    }
    let layout = Layout::new(dir.clone());
    let shown = dir.display();
    let marker = match std::fs::metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_fail("cannot inspect --data-dir", &dir, &e)),
        Ok(m) if !m.is_dir() => {
            return Err(fail(format!(
                "--data-dir {shown} exists and is not a directory; pass another --data-dir"
            )))
        }
        Ok(m) => {
            if m.uid() != uid {
                return Err(fail(format!(
                    "--data-dir {shown} belongs to uid {}, not to you (uid {uid}): refusing to use it; pass another --data-dir",
                    m.uid()
                )));
            }
            match std::fs::read_to_string(layout.marker()) {
                Ok(text) => Some(toml::from_str::<Marker>(&text).map_err(|e| {
                    fail(format!(
                        "{}: {} — this file marks a sigil dev plane; if the directory is not one, pass another --data-dir",
                        layout.marker().display(),
                        e.message()
                    ))
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let empty = std::fs::read_dir(&dir)
                        .map_err(|e| io_fail("cannot read --data-dir", &dir, &e))?
                        .next()
                        .is_none();
                    if !empty {
                        return Err(fail(format!(
                            "--data-dir {shown} is not a sigil dev directory (it is not empty and has no {MARKER_FILE}): refusing to touch it; pass another --data-dir, or an empty or new one"
                        )));
                    }
                    None
                }
                Err(e) => return Err(io_fail("cannot read", &layout.marker(), &e)),
            }
        }
    };
    let (trust_domain, nodes, resume) = match marker {
        None => (
            opts.trust_domain
                .clone()
                .unwrap_or_else(|| TRUST_DOMAIN_DEFAULT.to_owned()),
            opts.nodes.unwrap_or(NODES_DEFAULT),
            false,
        ),
        Some(m) => {
            if m.format != 1 || ![1, 3, 5].contains(&m.nodes) {
                return Err(fail(format!(
                    "{}: not a plane this version of sigil dev can run (format {}, {} nodes); pass another --data-dir",
                    layout.marker().display(),
                    m.format,
                    m.nodes
                )));
            }
            if let Some(td) = &opts.trust_domain {
                if *td != m.trust_domain {
                    return Err(fail(format!(
                        "{shown} holds trust domain {}, not {td}: leave out --trust-domain to resume it, or pass another --data-dir for a new one",
                        m.trust_domain
                    )));
                }
            }
            if let Some(n) = opts.nodes {
                if n != m.nodes {
                    return Err(fail(format!(
                        "{shown} holds a plane of {} server node(s), not {n}: leave out --nodes to resume it, or pass another --data-dir for a new one",
                        m.nodes
                    )));
                }
            }
            (m.trust_domain, m.nodes, true)
        }
    };
    let trust_domain: TrustDomain = trust_domain
        .parse()
        .map_err(|e| fail(format!("--trust-domain {trust_domain}: {e}")))?;
    layout.check_socket_paths(nodes)?;
    Ok(Plan {
        layout,
        trust_domain,
        nodes,
        resume,
        uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::dev::own_uid;

    #[test]
    fn socket_paths_are_checked() {
        let ok = Layout::new(PathBuf::from("/tmp/sigil-dev-1000"));
        assert!(ok.check_socket_paths(5).is_ok());
        let long = Layout::new(PathBuf::from(format!("/tmp/{}", "d".repeat(80))));
        let err = long
            .check_socket_paths(3)
            .expect_err("too long")
            .to_string();
        assert!(
            err.contains("too long") && err.contains("at most 75 bytes"),
            "{err}"
        );
        let edge = Layout::new(PathBuf::from(format!("/{}", "d".repeat(74))));
        assert!(edge.check_socket_paths(5).is_ok());
        let over = Layout::new(PathBuf::from(format!("/{}", "d".repeat(75))));
        assert!(over.check_socket_paths(5).is_err());
    }

    #[test]
    fn markers_and_dirs() {
        let marker = Marker {
            format: 1,
            trust_domain: "dev.sigil.test".into(),
            nodes: 3,
        };
        assert_eq!(
            toml::from_str::<Marker>(&marker.text()).expect("parses"),
            marker
        );
        let uid = own_uid().expect("uid");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("something"), "else").expect("write");
        let opts = DevOptions {
            data_dir: Some(dir.path().to_path_buf()),
            ..DevOptions::default()
        };
        let err = resolve(&opts, uid).expect_err("foreign dir").to_string();
        assert!(err.contains("not a sigil dev directory"), "{err}");
        assert!(dir.path().join("something").exists());

        let empty = tempfile::tempdir().expect("tempdir");
        let opts = DevOptions {
            data_dir: Some(empty.path().to_path_buf()),
            ..DevOptions::default()
        };
        let plan = resolve(&opts, uid).expect("empty dir");
        assert!(!plan.resume && plan.nodes == NODES_DEFAULT);
        std::fs::write(empty.path().join(MARKER_FILE), marker.text()).expect("marker");
        let plan = resolve(&opts, uid).expect("resume");
        assert!(plan.resume);
        let five = DevOptions {
            nodes: Some(5),
            ..opts.clone()
        };
        assert!(resolve(&five, uid)
            .expect_err("5 vs 3")
            .to_string()
            .contains("3 server node"));
        let other_td = DevOptions {
            trust_domain: Some("other.test".into()),
            ..opts.clone()
        };
        assert!(resolve(&other_td, uid).is_err());
        let two = DevOptions {
            nodes: Some(2),
            ..opts
        };
        assert!(resolve(&two, uid)
            .expect_err("2")
            .to_string()
            .contains("1, 3 or 5"));
    }
}
