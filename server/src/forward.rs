//! Channels from a follower to the leader's client API, for forwarding writes and reads.

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
    pub fn client(&self, address: &str) -> Result<LedgerClient<Channel>, String> {
        let mut channels = self.channels.lock().expect("leader channel cache lock");
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| format!("bad leader address {address:?}: {e}"))?
                    .connect_timeout(FORWARD_CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(address.to_string(), channel.clone());
                channel
            }
        };
        Ok(LedgerClient::new(channel)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX))
    }
}
