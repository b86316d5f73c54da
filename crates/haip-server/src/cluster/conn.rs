//! One connection to Redis, single or Cluster: both multiplex many requests over few
//! sockets, so requests issued together travel together (one write, one read).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// How long one request may wait for its answer before it counts as failed.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long opening a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is: one server, or the seed nodes of a Redis Cluster.
#[derive(Clone)]
pub enum Target {
    Single(redis::Client),
    /// The cluster, and its first seed node for pub/sub.
    Cluster(Box<ClusterClient>, redis::Client),
}

impl Target {
    /// Reads `REDIS_URL`: one `redis://` or `rediss://` URL, or several separated by
    /// commas (the seed nodes of a Redis Cluster); `cluster` makes a single URL a seed.
    pub fn parse(urls: &str, cluster: bool) -> RedisResult<Target> {
        let urls: Vec<&str> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if cluster || urls.len() > 1 {
            let seed = redis::Client::open(urls.first().copied().unwrap_or_default())?;
            let client = ClusterClient::builder(urls)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .build()?;
            Ok(Target::Cluster(Box::new(client), seed))
        } else {
            let url = urls.first().copied().unwrap_or_default();
            Ok(Target::Single(redis::Client::open(url)?))
        }
    }

    /// A connection that reconnects by itself (the cluster one once it reached a seed).
    pub async fn connect(&self) -> RedisResult<Connection> {
        match self {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
                Ok(Connection::Single(manager))
            }
            Target::Cluster(client, _) => {
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// A plain client for pub/sub: in a Redis Cluster a PUBLISH reaches every node, so
    /// listening on one seed hears it.
    pub fn pubsub_client(&self) -> redis::Client {
        match self {
            Target::Single(client) | Target::Cluster(_, client) => client.clone(),
        }
    }
}

#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}
