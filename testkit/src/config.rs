//! `server.toml` and `agent.toml` as the harness writes them: the keys every node or agent
//! needs, the usual options, and further lines or tables as written.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// `s` as a TOML basic string, quoted and escaped.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path_str(p: &Path) -> String {
    toml_str(&p.display().to_string())
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A `[join]` table: how a new server node joins a running cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub token: String,
    pub seeds: Vec<String>,
    pub bundle_sha256: String,
}

impl Join {
    /// From what `sigil token generate --server --json` printed (its token, seeds and pinned
    /// bundle hash).
    pub fn from_token(token: &Value) -> Option<Join> {
        Some(Join {
            token: token["token"].as_str()?.to_owned(),
            seeds: token["seeds"]
                .as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect::<Option<_>>()?,
            bundle_sha256: token["bundle_sha256"].as_str()?.to_owned(),
        })
    }
}

/// A `server.toml`.
#[derive(Debug, Clone)]
pub struct ServerToml {
    trust_domain: String,
    node_id: u64,
    data_dir: PathBuf,
    bind: String,
    admin_socket: PathBuf,
    advertise: Option<String>,
    bootstrap: bool,
    join: Option<Join>,
    lines: Vec<String>,
    tables: Vec<String>,
}

impl ServerToml {
    /// Node `node_id` of `trust_domain`, with its data in `data_dir`, QUIC on `bind`, the admin
    /// API on `admin_socket`; neither bootstrapping nor joining yet.
    pub fn new(
        trust_domain: &str,
        node_id: u64,
        data_dir: impl Into<PathBuf>,
        bind: impl ToString,
        admin_socket: impl Into<PathBuf>,
    ) -> ServerToml {
        ServerToml {
            trust_domain: trust_domain.to_owned(),
            node_id,
            data_dir: data_dir.into(),
            bind: bind.to_string(),
            admin_socket: admin_socket.into(),
            advertise: None,
            bootstrap: false,
            join: None,
            lines: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// `bootstrap = true`: this node starts the trust domain.
    pub fn bootstrap(mut self) -> ServerToml {
        self.bootstrap = true;
        self
    }

    /// The `[join]` table.
    pub fn join(mut self, join: Join) -> ServerToml {
        self.join = Some(join);
        self
    }

    /// `advertise = ADDR`: where peers and agents reach this node (when not `bind`).
    pub fn advertise(mut self, addr: impl ToString) -> ServerToml {
        self.advertise = Some(addr.to_string());
        self
    }

    /// A further top-level line, as written (`agent_svid_ttl = "10s"`).
    pub fn line(mut self, line: impl Into<String>) -> ServerToml {
        self.lines.push(line.into());
        self
    }

    /// A further table, as written (`[limits]\n…`).
    pub fn table(mut self, table: impl Into<String>) -> ServerToml {
        self.tables.push(table.into());
        self
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "trust_domain = {}\nnode_id = {}\ndata_dir = {}\nbind = {}\nadmin_socket = {}\n",
            toml_str(&self.trust_domain),
            self.node_id,
            path_str(&self.data_dir),
            toml_str(&self.bind),
            path_str(&self.admin_socket),
        );
        if let Some(a) = &self.advertise {
            let _ = writeln!(text, "advertise = {}", toml_str(a));
        }
        if self.bootstrap {
            text.push_str("bootstrap = true\n");
        }
        for l in &self.lines {
            let _ = writeln!(text, "{}", l.trim_end());
        }
        if let Some(j) = &self.join {
            let _ = write!(
                text,
                "\n[join]\ntoken = {}\nseeds = {}\nbundle_sha256 = {}\n",
                toml_str(&j.token),
                list(&j.seeds),
                toml_str(&j.bundle_sha256)
            );
        }
        for t in &self.tables {
            let _ = writeln!(text, "\n{}", t.trim_end());
        }
        text
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.render())
    }
}

/// An `agent.toml`.
#[derive(Debug, Clone)]
pub struct AgentToml {
    trust_domain: String,
    servers: Vec<String>,
    data_dir: PathBuf,
    socket_path: PathBuf,
    join_token: Option<String>,
    bundle_sha256: Option<String>,
    tables: Vec<String>,
}

impl AgentToml {
    /// An agent of `trust_domain` that talks to `servers`, keeps its data in `data_dir` and
    /// serves the Workload API on `socket_path`; no attestation configured yet.
    pub fn new<S: ToString>(
        trust_domain: &str,
        servers: &[S],
        data_dir: impl Into<PathBuf>,
        socket_path: impl Into<PathBuf>,
    ) -> AgentToml {
        AgentToml {
            trust_domain: trust_domain.to_owned(),
            servers: servers.iter().map(ToString::to_string).collect(),
            data_dir: data_dir.into(),
            socket_path: socket_path.into(),
            join_token: None,
            bundle_sha256: None,
            tables: Vec::new(),
        }
    }

    /// `join_token = TOKEN`: join-token attestation.
    pub fn join_token(mut self, token: &str) -> AgentToml {
        self.join_token = Some(token.to_owned());
        self
    }

    /// `bundle_sha256 = HASH`: the pinned bundle.
    pub fn bundle_sha256(mut self, hash: &str) -> AgentToml {
        self.bundle_sha256 = Some(hash.to_owned());
        self
    }

    /// A further table, as written (`[x509pop]\n…`, `[tpm]\n…`).
    pub fn table(mut self, table: impl Into<String>) -> AgentToml {
        self.tables.push(table.into());
        self
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "trust_domain = {}\nservers = {}\ndata_dir = {}\nsocket_path = {}\n",
            toml_str(&self.trust_domain),
            list(&self.servers),
            path_str(&self.data_dir),
            path_str(&self.socket_path),
        );
        if let Some(t) = &self.join_token {
            let _ = writeln!(text, "join_token = {}", toml_str(t));
        }
        if let Some(h) = &self.bundle_sha256 {
            let _ = writeln!(text, "bundle_sha256 = {}", toml_str(h));
        }
        for t in &self.tables {
            let _ = writeln!(text, "\n{}", t.trim_end());
        }
        text
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_toml_renders_keys_then_tables() {
        let text = ServerToml::new("a.test", 2, "/d/data", "127.0.0.1:7001", "/d/admin.sock")
            .advertise("127.0.0.1:7002")
            .line("agent_svid_ttl = \"10s\"")
            .join(Join {
                token: "t".into(),
                seeds: vec!["127.0.0.1:7000".into()],
                bundle_sha256: "h".into(),
            })
            .table("[limits]\nconnections_per_source = 8\n")
            .render();
        assert_eq!(
            text,
            "trust_domain = \"a.test\"\nnode_id = 2\ndata_dir = \"/d/data\"\nbind = \"127.0.0.1:7001\"\n\
             admin_socket = \"/d/admin.sock\"\nadvertise = \"127.0.0.1:7002\"\nagent_svid_ttl = \"10s\"\n\
             \n[join]\ntoken = \"t\"\nseeds = [\"127.0.0.1:7000\"]\nbundle_sha256 = \"h\"\n\
             \n[limits]\nconnections_per_source = 8\n"
        );
    }

    #[test]
    fn agent_toml_and_escaping() {
        let text = AgentToml::new("a.test", &["127.0.0.1:1", "127.0.0.1:2"], "/d\"x", "/s")
            .join_token("tok")
            .bundle_sha256("h")
            .render();
        assert_eq!(
            text,
            "trust_domain = \"a.test\"\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n\
             data_dir = \"/d\\\"x\"\nsocket_path = \"/s\"\njoin_token = \"tok\"\nbundle_sha256 = \"h\"\n"
        );
        assert_eq!(toml_str("a\\b\n"), "\"a\\\\b\\u000a\"");
    }

    #[test]
    fn join_from_a_token() {
        let token = serde_json::json!({
            "token": "t", "seeds": ["127.0.0.1:1"], "bundle_sha256": "h", "purpose": "server"
        });
        assert_eq!(
            Join::from_token(&token),
            Some(Join {
                token: "t".into(),
                seeds: vec!["127.0.0.1:1".into()],
                bundle_sha256: "h".into(),
            })
        );
        assert_eq!(Join::from_token(&serde_json::json!({"token": "t"})), None);
    }
}
