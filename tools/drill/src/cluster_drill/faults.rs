//! The faults the cluster drill injects, and which of them a run takes.

use super::*;

/// The faults to run, in order: `--faults`, or all of them (the
/// partitions unless `--no-partitions`); refused before anything starts
/// when a partition is asked for without namespaces.
pub(super) fn faults(args: &ClusterArgs) -> anyhow::Result<Vec<Fault>> {
    let faults = if args.faults.is_empty() {
        let mut all = vec![Fault::Leader, Fault::Follower];
        if !args.no_partitions {
            all.extend([Fault::PartitionLeader, Fault::PartitionFollower]);
        }
        all.push(Fault::RollingRestart);
        all
    } else {
        args.faults.clone()
    };
    if args.no_partitions
        && faults
            .iter()
            .any(|f| matches!(f, Fault::PartitionLeader | Fault::PartitionFollower))
    {
        anyhow::bail!("the partitions need network namespaces: leave out --no-partitions");
    }
    Ok(faults)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    Leader,
    Follower,
    PartitionLeader,
    PartitionFollower,
    #[value(name = "rolling")]
    RollingRestart,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Leader => "kill -9 ORDERS leader + orders-1",
            Fault::Follower => "kill -9 an ORDERS follower + tickets-1",
            Fault::PartitionLeader => "ORDERS leader cut off + orders-2 killed",
            Fault::PartitionFollower => "ORDERS follower cut off + payments killed",
            Fault::RollingRestart => "rolling restart of 3 nodes + expiration",
        })
    }
}

impl Fault {
    /// Injects the fault and heals it after `hold` (for a rolling restart:
    /// each node down for `hold / 3`, the next once the cluster answers);
    /// the streams the failed node led.
    pub(super) async fn inject(
        self,
        nats: &mut NatsCluster,
        procs: &mut Cluster,
        ids: &HashMap<&str, Vec<ProcId>>,
        hold: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let leader = nats
            .stream_leader("ORDERS")
            .await
            .context("the ORDERS stream has no leader")?;
        let follower = (leader + 1) % nats.size();
        let failed = match self {
            Fault::Leader | Fault::PartitionLeader => Some(leader),
            Fault::Follower | Fault::PartitionFollower => Some(follower),
            Fault::RollingRestart => None,
        };
        let mut led = Vec::new();
        if let Some(node) = failed {
            for stream in super::stream_names() {
                if nats.stream_leader(&stream).await == Some(node) {
                    led.push(stream);
                }
            }
        }
        // A service replica dies with each fault and comes back with the
        // heal: which one, per fault.
        let (service, replica) = match self {
            Fault::Leader => ("orders", 0),
            Fault::Follower => ("tickets", 0),
            Fault::PartitionLeader => ("orders", 1),
            Fault::PartitionFollower => ("payments", 0),
            Fault::RollingRestart => ("expiration", 0),
        };
        let replica = ids[service][replica];
        procs.kill(replica);
        match (self, failed) {
            (Fault::Leader | Fault::Follower, Some(node)) => {
                nats.kill(node);
                tokio::time::sleep(hold).await;
                nats.restart(node)?;
            }
            (Fault::PartitionLeader | Fault::PartitionFollower, Some(node)) => {
                nats.partition(node)?;
                tokio::time::sleep(hold).await;
                nats.heal(node)?;
            }
            _ => {
                for node in 0..nats.size() {
                    nats.kill(node);
                    tokio::time::sleep(hold / 3).await;
                    nats.restart(node)?;
                    nats.wait_ready(Duration::from_secs(60))
                        .await
                        .map_err(anyhow::Error::msg)?;
                    // The next node goes only once this one has caught up
                    // on every stream: else a stream can be left without a
                    // majority of current replicas.
                    nats.wait_streams_current(super::stream_names(), Duration::from_secs(60))
                        .await
                        .map_err(anyhow::Error::msg)?;
                }
            }
        }
        procs.start(replica)?;
        Ok(led)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `ClusterArgs` as the command line gives them.
    #[derive(clap::Parser)]
    struct Line {
        #[command(flatten)]
        args: ClusterArgs,
    }

    fn args(line: &[&str]) -> ClusterArgs {
        Line::try_parse_from(std::iter::once("drill").chain(line.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn faults_are_all_by_default_or_those_listed_in_order() {
        use Fault::*;
        let all = [
            Leader,
            Follower,
            PartitionLeader,
            PartitionFollower,
            RollingRestart,
        ];
        assert_eq!(faults(&args(&[])).unwrap(), all);
        assert_eq!(
            faults(&args(&["--no-partitions"])).unwrap(),
            [Leader, Follower, RollingRestart]
        );
        assert_eq!(
            faults(&args(&["--faults", "rolling,leader,rolling"])).unwrap(),
            [RollingRestart, Leader, RollingRestart]
        );
        let refused = faults(&args(&[
            "--no-partitions",
            "--faults",
            "partition-follower",
        ]));
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("network namespaces")
        );
    }
}
