//! A three-node NATS cluster of real `nats-server` processes, for scenarios that kill nodes.
//!
//! Each node listens on random loopback ports (clients, cluster routes, HTTP monitoring), has
//! JetStream with its own store directory and routes to the others, as `nats/cluster/n*.conf`
//! do. A node can be killed with SIGKILL and started again on the same ports and store, or
//! frozen with SIGSTOP and thawed; the scenario then waits until the cluster is healthy again by
//! polling each node's monitoring endpoint, the only place the server tells it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Time between two looks at the monitoring endpoints while waiting for a condition.
const POLL: Duration = Duration::from_millis(50);
/// Timeout of one monitoring request.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of each node's log shown when a test fails.
const LOG_TAIL: usize = 40;

/// The ports of one node, fixed for its whole life so that a restarted node is found again.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    route: u16,
    http: u16,
}

/// One node: its ports and, while it runs, its process.
struct Node {
    name: String,
    ports: Ports,
    config: PathBuf,
    log: PathBuf,
    process: Option<Child>,
}

/// Three (or more) `nats-server` processes routed into one cluster; all killed on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` nodes named `n1`, `n2`, … with `extra_config` (nats-server syntax) appended
    /// to each node's configuration, and waits until the cluster is healthy (see
    /// [`NatsCluster::wait_healthy`]).
    ///
    /// The binary is `$NATS_SERVER_BIN`, or `nats-server` on the `PATH`, as for
    /// [`crate::NatsServer`].
    ///
    /// # Panics
    /// When a node cannot be started or the cluster is not healthy within `deadline`.
    pub async fn start(size: usize, extra_config: &str, deadline: Duration) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(size);
        let routes: Vec<String> = ports.iter().map(|p| format!("nats-route://127.0.0.1:{}", p.route)).collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, ports)| {
                let name = format!("n{}", i + 1);
                let config = dir.path().join(format!("{name}.conf"));
                let store = dir.path().join(&name);
                std::fs::write(&config, node_config(&name, *ports, &store, &routes, extra_config))
                    .expect("config written");
                let log = dir.path().join(format!("{name}.log"));
                Node { name, ports: *ports, config, log, process: None }
            })
            .collect();
        let http = reqwest::Client::builder().timeout(MONITOR_TIMEOUT).build().expect("http client");
        let mut cluster = Self { nodes, http, _dir: dir };
        for i in 0..size {
            cluster.restart(i);
        }
        cluster.wait_healthy(deadline).await;
        cluster
    }

    /// The client URLs of every node, comma-separated, as components take them.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|node| client_url(node.ports)).collect::<Vec<_>>().join(",")
    }

    /// The client URL of node `i` (0-based).
    pub fn url(&self, i: usize) -> String {
        client_url(self.nodes[i].ports)
    }

    /// The server name of node `i` (`n1` for 0).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node named `name`, if any.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    /// Kills node `i` with SIGKILL (no lame-duck mode, no goodbye: its sockets just close) and
    /// waits until the process is gone.
    ///
    /// # Panics
    /// When the node is not running.
    pub fn kill(&mut self, i: usize) {
        let mut process = self.nodes[i].process.take().expect("the node runs");
        // On Unix, `Child::kill` is SIGKILL.
        process.kill().expect("killed");
        process.wait().expect("reaped");
    }

    /// Freezes node `i` with SIGSTOP: its sockets stay open and nothing answers on them, as
    /// with a node stalled by its machine, until [`NatsCluster::thaw`].
    ///
    /// # Panics
    /// When the node is not running.
    pub fn freeze(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets node `i` run again after [`NatsCluster::freeze`] (SIGCONT).
    ///
    /// # Panics
    /// When the node is not running.
    pub fn thaw(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, i: usize, signal: nix::sys::signal::Signal) {
        let process = self.nodes[i].process.as_ref().expect("the node runs");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(process.id()).expect("a pid"));
        nix::sys::signal::kill(pid, signal).expect("signalled");
    }

    /// Starts node `i` (again) with its configuration, ports and store directory; it is
    /// healthy once [`NatsCluster::wait_healthy`] says so.
    ///
    /// # Panics
    /// When the node runs already or cannot be started.
    pub fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.process.is_none(), "{} runs already", node.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("log file");
        let binary = std::env::var_os("NATS_SERVER_BIN").map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
        let process =
            Command::new(&binary).arg("-c").arg(&node.config).stdout(Stdio::null()).stderr(log).spawn().unwrap_or_else(
                |e| panic!("cannot start {}: {e} (set NATS_SERVER_BIN or run scripts/test.sh)", binary.display()),
            );
        node.process = Some(process);
    }

    /// Waits until every running node is healthy: its `/healthz` answers 200, which nats-server
    /// does only once JetStream has a meta leader and every stream and consumer replica the node
    /// holds is current (a restarted node has caught up); returns how long that took.
    ///
    /// # Panics
    /// When that does not happen within `deadline` (the message names the first unhealthy node
    /// and its answer).
    pub async fn wait_healthy(&self, deadline: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let mut unhealthy = None;
            for node in self.running() {
                let url = format!("http://127.0.0.1:{}/healthz", node.ports.http);
                let answer = match self.http.get(&url).send().await {
                    Ok(response) if response.status().is_success() => continue,
                    Ok(response) => format!("{}: {}", response.status(), response.text().await.unwrap_or_default()),
                    Err(e) => e.to_string(),
                };
                unhealthy = Some(format!("{}: {answer}", node.name));
                break;
            }
            let Some(unhealthy) = unhealthy else { return started.elapsed() };
            assert!(started.elapsed() < deadline, "cluster not healthy after {deadline:?}: {unhealthy}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// The name of the JetStream meta leader, as a running node sees it.
    pub async fn meta_leader(&self) -> Option<String> {
        let jsz = self.monitor(self.running().next()?, "/jsz").await?;
        jsz.pointer("/meta_cluster/leader")?.as_str().map(str::to_owned)
    }

    /// The name of the node leading stream `stream` (of any account), as a running node sees it.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        for node in self.running() {
            let Some(jsz) = self.monitor(node, "/jsz?accounts=true&streams=true").await else { continue };
            let accounts = jsz.get("account_details").and_then(Value::as_array).into_iter().flatten();
            let streams = accounts.flat_map(|a| a.get("stream_detail").and_then(Value::as_array).into_iter().flatten());
            let found = streams.filter(|s| s.get("name").and_then(Value::as_str) == Some(stream));
            if let Some(leader) = found.filter_map(|s| s.pointer("/cluster/leader")?.as_str()).next() {
                return Some(leader.to_owned());
            }
        }
        None
    }

    /// The index of the running node a client connection named `connection` is on.
    pub async fn node_of(&self, connection: &str) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate().filter(|(_, node)| node.process.is_some()) {
            let Some(connz) = self.monitor(node, "/connz?limit=4096").await else { continue };
            let connections = connz.get("connections").and_then(Value::as_array).into_iter().flatten();
            if connections.into_iter().any(|c| c.get("name").and_then(Value::as_str) == Some(connection)) {
                return Some(i);
            }
        }
        None
    }

    fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.process.is_some())
    }

    /// The JSON of monitoring `path` on `node`, when it answers.
    async fn monitor(&self, node: &Node, path: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path}", node.ports.http);
        self.http.get(url).send().await.ok()?.json().await.ok()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                let _ = process.kill();
                let _ = process.wait();
            }
            if std::thread::panicking() {
                print_tail(&node.name, &node.log);
            }
        }
    }
}

/// The configuration of one node: that of `nats/cluster/n*.conf` on loopback ports, without
/// accounts (unless `extra` adds them).
fn node_config(name: &str, ports: Ports, store: &Path, routes: &[String], extra: &str) -> String {
    format!(
        "server_name: {name}\n\
         listen: 127.0.0.1:{client}\n\
         http: 127.0.0.1:{http}\n\
         ping_interval: \"1s\"\n\
         ping_max: 2\n\
         jetstream {{ store_dir: {store:?} }}\n\
         cluster {{\n  name: tunnel-test\n  listen: 127.0.0.1:{route}\n  routes: [ {routes} ]\n}}\n\
         {extra}\n",
        client = ports.client,
        http = ports.http,
        route = ports.route,
        routes = routes.join(", "),
    )
}

fn client_url(ports: Ports) -> String {
    format!("nats://127.0.0.1:{}", ports.client)
}

/// Three free loopback ports per node, all different: every listener is held until all are
/// bound, then released for the servers to take.
fn free_ports(nodes: usize) -> Vec<Ports> {
    let listeners: Vec<std::net::TcpListener> =
        (0..nodes * 3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().expect("address").port()).collect();
    ports.chunks(3).map(|p| Ports { client: p[0], route: p[1], http: p[2] }).collect()
}

/// The last lines of a node's log, on stderr (shown with a failed test's output).
fn print_tail(name: &str, log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("--- last lines of nats-server {name} ---");
    for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
        eprintln!("{line}");
    }
}
