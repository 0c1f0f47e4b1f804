//! Channels from this node to other nodes' gRPC port: a follower forwarding writes and reads to
//! the leader's client API, and the admin service calling a peer's admin API.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use dedup_cluster::ledger::limits::GRPC_MESSAGE_BYTES_MAX;
use dedup_proto::v1::ledger_client::LedgerClient;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

/// Marks a call a follower forwarded, so that the receiver never forwards it again.
pub const FORWARDED_HEADER: &str = "x-dedup-forwarded";
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Default)]
pub struct LeaderChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl LeaderChannels {
    /// A lazily connected channel to `address` (HOST:PORT), one per address.
    pub fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("bad node address {address:?}: {e}"))?
            .connect_timeout(FORWARD_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    pub fn client(&self, address: &str) -> Result<LedgerClient<Channel>, String> {
        let channel = self.channel(address)?;
        Ok(LedgerClient::new(channel)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX))
    }
}
