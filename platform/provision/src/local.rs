//! A nats-server with JetStream as a child process on this machine, for
//! drills, benchmarks and tests that need a server of their own (own port,
//! own store, killable and restartable).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port free now for a server the caller starts at once (and may start
/// again on the same port after killing it).
///
/// Chosen below the kernel's ephemeral range: a port the OS hands out for
/// `bind(0)` comes from that range, and so do the local ports of outgoing
/// connections (to PostgreSQL, NATS, HTTP), one of which could take it
/// before the server binds it — which failed a test run with "Address
/// already in use". Ports are taken in turn from a start that depends on
/// the process id (no two calls in one process get the same one), and each
/// is checked by binding it.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = reserved_range();
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // Everything below the ephemeral range is taken: let the OS choose.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The ports `free_port` chooses from: from 10 000 up to the start of the
/// ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`, 32 768 by
/// default).
fn reserved_range() -> (u16, u16) {
    const LOW: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    (LOW, ephemeral_start.max(LOW + 1_000))
}

/// Where a child's stderr goes.
#[derive(Debug, Clone)]
pub enum Logs {
    /// The parent's stderr (tests).
    Inherit,
    /// `<dir>/<name>.log`, appended across restarts (the drill).
    Dir(PathBuf),
}

impl Logs {
    /// Where the process `name` writes its stderr.
    pub fn stderr(&self, name: &str) -> std::io::Result<Stdio> {
        Ok(match self {
            Logs::Inherit => Stdio::inherit(),
            Logs::Dir(dir) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{name}.log")))?
                .into(),
        })
    }
}

/// A nats-server with JetStream, storing under a directory of the caller's,
/// on a fixed port so it can be killed and restarted with its data.
pub struct NatsServer {
    binary: String,
    port: u16,
    store_dir: PathBuf,
    logs: Logs,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts `binary` (e.g. `nats-server`) on a free port.
    pub fn start(binary: &str, store_dir: &Path, logs: Logs) -> std::io::Result<NatsServer> {
        let mut server = NatsServer {
            binary: binary.to_owned(),
            port: free_port()?,
            store_dir: store_dir.to_owned(),
            logs,
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL (no clean shutdown).
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the server again (killing it first if it runs), same port and
    /// store, so streams and consumers survive.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let mut command = Command::new(&self.binary);
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store_dir);
        self.child = Some(spawn(command, &self.binary, &self.logs, "nats-server")?);
        Ok(())
    }

    /// Connects (retrying while the server starts) and returns a JetStream
    /// context.
    pub async fn jetstream(&self) -> Result<async_nats::jetstream::Context, String> {
        let url = self.url();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match async_nats::connect(&url).await {
                Ok(c) => return Ok(async_nats::jetstream::new(c)),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(format!("nats-server at {url} never came up: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// SIGKILL and reap `child`, if it runs.
fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Starts a nats-server `command` (of `binary`), its stderr to the log
/// `name`; with inherited logs it is silenced: the server's start-up banner
/// would drown a test's output.
fn spawn(mut command: Command, binary: &str, logs: &Logs, name: &str) -> std::io::Result<Child> {
    command
        .stdout(Stdio::null())
        .stderr(match logs {
            Logs::Inherit => Stdio::null(),
            Logs::Dir(_) => logs.stderr(name)?,
        })
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {binary}: {e}")))
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of nats-servers with JetStream on this machine, joined by
/// cluster routes, each with a store of its own under the caller's
/// directory and fixed ports, so a node can be killed (`kill -9`) and
/// started again with its data. Stream replicas live on its nodes.
pub struct NatsCluster {
    nodes: Vec<Node>,
    /// The namespaces and links of [`NatsCluster::start_partitionable`];
    /// removed after the nodes stop.
    network: Option<Network>,
}

struct Node {
    /// The server's name (`n1`, `n2`, …): what JetStream reports as a
    /// stream's leader or replica.
    name: String,
    /// The address it listens on: 127.0.0.1, or its namespace's own.
    host: String,
    /// The network namespace it runs in, when the cluster has a network.
    netns: Option<String>,
    binary: String,
    port: u16,
    cluster_port: u16,
    store_dir: PathBuf,
    routes: Vec<String>,
    logs: Logs,
    child: Option<Child>,
}

impl Node {
    fn kill(&mut self) {
        kill(&mut self.child);
    }

    fn start(&mut self) -> std::io::Result<()> {
        self.kill();
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &self.binary]);
                c
            }
            None => Command::new(&self.binary),
        };
        command
            .args(["-a", &self.host, "-p", &self.port.to_string()])
            .args(["-n", &self.name, "-js", "-sd"])
            .arg(&self.store_dir)
            .args(["--cluster_name", "local"])
            .args([
                "--cluster",
                &format!("nats://{}:{}", self.host, self.cluster_port),
            ])
            .args(["--routes", &self.routes.join(",")]);
        let child = spawn(
            command,
            &self.binary,
            &self.logs,
            &format!("nats-{}", self.name),
        )?;
        self.child = Some(child);
        Ok(())
    }
}

/// Where `binary` is: itself if it names a path, else the first match on
/// `PATH`; NotFound if it is nowhere.
fn executable(binary: &str) -> std::io::Result<PathBuf> {
    let found = if binary.contains('/') {
        Some(PathBuf::from(binary)).filter(|p| p.is_file())
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(binary))
                .find(|p| p.is_file())
        })
    };
    found.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{binary}: no such executable"),
        )
    })
}

/// Index of a node in its [`NatsCluster`].
pub type NodeId = usize;

impl NatsCluster {
    /// Starts `size` nodes of `binary` (three for a cluster that survives
    /// the loss of one), storing under `dir/<name>`.
    pub fn start(
        binary: &str,
        dir: &Path,
        size: usize,
        logs: Logs,
    ) -> std::io::Result<NatsCluster> {
        let hosts = vec!["127.0.0.1".to_owned(); size];
        let mut ports = Vec::new();
        for _ in 0..size {
            ports.push((free_port()?, free_port()?));
        }
        Self::start_on(binary, dir, hosts, ports, None, logs)
    }

    /// Like [`NatsCluster::start`], each node in a network namespace of its
    /// own joined to the others and to this machine by a bridge, so one
    /// can be cut off ([`NatsCluster::partition`]) and joined again.
    /// Needs root (or `CAP_NET_ADMIN`) and iproute2's `ip`.
    pub fn start_partitionable(
        binary: &str,
        dir: &Path,
        size: usize,
        logs: Logs,
    ) -> std::io::Result<NatsCluster> {
        // `ip netns exec` would start, then fail to find the binary: the
        // caller would only see nodes that never answer.
        let binary = executable(binary)?;
        let binary = binary.to_string_lossy();
        let network = Network::create(size)?;
        let hosts = (0..size).map(|i| network.host(i)).collect();
        // Each node has its own address: the same ports everywhere.
        let ports = vec![(4222, 6222); size];
        Self::start_on(&binary, dir, hosts, ports, Some(network), logs)
    }

    fn start_on(
        binary: &str,
        dir: &Path,
        hosts: Vec<String>,
        ports: Vec<(u16, u16)>,
        network: Option<Network>,
        logs: Logs,
    ) -> std::io::Result<NatsCluster> {
        let nodes: Vec<Node> = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, cluster_port))| Node {
                name: format!("n{}", i + 1),
                host: hosts[i].clone(),
                netns: network.as_ref().map(|n| n.netns(i)),
                binary: binary.to_owned(),
                port,
                cluster_port,
                store_dir: dir.join(format!("n{}", i + 1)),
                routes: ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, (_, c))| format!("nats://{}:{c}", hosts[j]))
                    .collect(),
                logs: logs.clone(),
                child: None,
            })
            .collect();
        // Owned by the cluster first: a node that fails to start stops the
        // ones already started, and the network goes with them.
        let mut cluster = NatsCluster { nodes, network };
        for node in &mut cluster.nodes {
            node.start()?;
        }
        Ok(cluster)
    }

    /// Cuts `node` off from the other nodes and from this machine (its
    /// link to the bridge goes down): nothing reaches it, it reaches
    /// nothing, and it keeps running. Only for a partitionable cluster.
    pub fn partition(&mut self, node: NodeId) -> std::io::Result<()> {
        self.network()?.link(node, false)
    }

    /// Joins a partitioned node again.
    pub fn heal(&mut self, node: NodeId) -> std::io::Result<()> {
        self.network()?.link(node, true)
    }

    fn network(&self) -> std::io::Result<&Network> {
        self.network
            .as_ref()
            .ok_or_else(|| std::io::Error::other("this cluster was not started partitionable"))
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's client URL, comma-separated: what `NATS_URL` takes.
    pub fn url(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node_url(&self, node: NodeId) -> String {
        format!("nats://{}:{}", self.nodes[node].host, self.nodes[node].port)
    }

    /// The node's server name (`n1`…).
    pub fn name(&self, node: NodeId) -> &str {
        &self.nodes[node].name
    }

    /// The node called `name`, if it is one of these.
    pub fn node_named(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Kills a node with SIGKILL (no clean shutdown).
    pub fn kill(&mut self, node: NodeId) {
        self.nodes[node].kill();
    }

    /// Starts a node again (killing it first if it runs), same ports and
    /// store.
    pub fn restart(&mut self, node: NodeId) -> std::io::Result<()> {
        self.nodes[node].start()
    }

    pub fn is_running(&self, node: NodeId) -> bool {
        self.nodes[node].child.is_some()
    }

    /// Waits until JetStream answers on every running node — the cluster
    /// has elected its meta leader — or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        for node in (0..self.nodes.len()).filter(|n| self.is_running(*n)) {
            let url = self.node_url(node);
            loop {
                // The raw account request: the client's typed one does not
                // read every server version's answer.
                let answered = async {
                    let client = async_nats::connect(&url).await.ok()?;
                    let reply = client.request("$JS.API.INFO", "".into()).await.ok()?;
                    let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
                    info.get("error").is_none().then_some(())
                };
                if tokio::time::timeout(Duration::from_secs(2), answered)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(format!(
                        "JetStream on {} ({url}) did not answer within {timeout:?}",
                        self.nodes[node].name
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Waits until each of `streams` has a leader and every other running
    /// node is a current replica of it, or `timeout` passes. A node started again
    /// rejoins its streams some time after JetStream answers on it; until
    /// it has caught up, losing another node can leave a stream without a
    /// majority of current replicas (on 2.9.10 for tens of seconds).
    pub async fn wait_streams_current(
        &self,
        streams: impl IntoIterator<Item = impl AsRef<str>>,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        for stream in streams {
            self.wait_stream_current(stream.as_ref(), deadline).await?;
        }
        Ok(())
    }

    async fn wait_stream_current(
        &self,
        stream: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        let running: Vec<String> = (0..self.nodes.len())
            .filter(|n| self.is_running(*n))
            .map(|n| self.nodes[n].name.clone())
            .collect();
        let mut last = String::from("no node answered");
        loop {
            for node in (0..self.nodes.len()).filter(|n| self.is_running(*n)) {
                let Some(cluster) = self.stream_cluster(node, stream).await else {
                    continue;
                };
                let Some(leader) = cluster.leader else {
                    last = "no leader".into();
                    continue;
                };
                let behind: Vec<&str> = running
                    .iter()
                    .filter(|name| **name != leader)
                    .filter(|name| {
                        !cluster
                            .replicas
                            .iter()
                            .any(|p| p.name == **name && p.current && !p.offline)
                    })
                    .map(String::as_str)
                    .collect();
                if behind.is_empty() {
                    return Ok(());
                }
                last = format!("led by {leader}; not current: {}", behind.join(", "));
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "stream {stream} not current on every running node in time: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node leading `stream` now, asking any running node.
    pub async fn stream_leader(&self, stream: &str) -> Option<NodeId> {
        for node in (0..self.nodes.len()).filter(|n| self.is_running(*n)) {
            if let Some(leader) = self
                .stream_cluster(node, stream)
                .await
                .and_then(|c| c.leader)
            {
                return self.node_named(&leader);
            }
        }
        None
    }

    /// `stream`'s group (leader and replicas) as `node` sees it, if it
    /// answers within 2 s.
    async fn stream_cluster(
        &self,
        node: NodeId,
        stream: &str,
    ) -> Option<async_nats::jetstream::stream::ClusterInfo> {
        let asked = async {
            let client = async_nats::connect(self.node_url(node)).await.ok()?;
            let js = async_nats::jetstream::new(client);
            let mut s = js.get_stream(stream).await.ok()?;
            s.info().await.ok()?.cluster.clone()
        };
        tokio::time::timeout(Duration::from_secs(2), asked)
            .await
            .ok()
            .flatten()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        // The namespaces go after the processes in them (Network's drop).
        self.network.take();
    }
}

/// A bridge on this machine and, per node, a network namespace joined to it
/// by a veth pair, on a /24 of its own (10.213.k.0/24: the machine .1, node
/// i .10+i). Removed when dropped.
struct Network {
    /// Short and unique: interface names have at most 15 characters.
    prefix: String,
    subnet: u8,
    size: usize,
}

impl Network {
    fn create(size: usize) -> std::io::Result<Network> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id().wrapping_mul(31).wrapping_add(n)) % 9_973;
        // A subnet no interface of this machine has yet.
        let used = ip_output(&["-4", "-o", "addr", "show"])?;
        let subnet = (0..250u32)
            .map(|k| ((id + k) % 250 + 1) as u8)
            .find(|k| !used.contains(&format!("10.213.{k}.")))
            .ok_or_else(|| std::io::Error::other("no free 10.213.x.0/24 subnet"))?;
        let mut net = Network {
            prefix: format!("tk{id}{}", n % 10),
            subnet,
            size: 0,
        };
        let bridge = net.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.213.{subnet}.1/24"),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..size {
            let (ns, outside, inside) = (net.netns(i), net.veth(i), format!("{}-i{i}", net.prefix));
            ip(&["netns", "add", &ns])?;
            net.size = i + 1;
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["link", "set", &outside, "master", &bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            let addr = format!("{}/24", net.host(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inside])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}-br", self.prefix)
    }

    fn veth(&self, node: usize) -> String {
        format!("{}-v{node}", self.prefix)
    }

    fn netns(&self, node: usize) -> String {
        format!("{}-n{node}", self.prefix)
    }

    fn host(&self, node: usize) -> String {
        format!("10.213.{}.{}", self.subnet, 10 + node)
    }

    fn link(&self, node: usize, up: bool) -> std::io::Result<()> {
        ip(&[
            "link",
            "set",
            &self.veth(node),
            if up { "up" } else { "down" },
        ])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for i in 0..self.size {
            // Deleting the namespace deletes its end of the pair, and so
            // the pair.
            let _ = ip(&["netns", "del", &self.netns(i)]);
            let _ = ip(&["link", "del", &self.veth(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Runs `ip <args>`; an error says which command failed and why.
fn ip(args: &[&str]) -> std::io::Result<()> {
    ip_output(args).map(drop)
}

fn ip_output(args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run ip (iproute2): {e}")))?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing nats-server used to surface as nodes that never answered
    /// (after a 30 s wait): `ip netns exec` started, then failed to exec.
    #[test]
    fn a_partitionable_cluster_of_a_missing_binary_fails_at_once_naming_it() {
        let dir = std::env::temp_dir().join("never-made");
        let err =
            NatsCluster::start_partitionable("/nonexistent/nats-server", &dir, 3, Logs::Inherit)
                .err()
                .expect("no cluster of a missing binary");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("/nonexistent/nats-server"),
            "{err}"
        );
        assert!(executable("sh").is_ok());
        assert!(executable("no-such-program-anywhere").is_err());
    }

    /// Never a port an outgoing connection could be given meanwhile, and
    /// never the same one twice in a process (tests start servers in
    /// parallel).
    #[test]
    fn free_ports_lie_below_the_ephemeral_range_and_are_not_handed_out_twice() {
        let (low, high) = reserved_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        assert!(
            ports.iter().all(|p| (low..high).contains(p)),
            "{ports:?} not in {low}..{high}"
        );
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        // A port is free when handed out.
        let port = free_port().unwrap();
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
