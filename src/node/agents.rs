//! In-process agents for `baton dev`: one per region of the sample service, each renewing
//! the lease whenever its region holds it and acknowledging demotion at once.

use crate::client::{Client, LeaseHandle, LeaseOptions};
use crate::config::NodeConfig;

/// Running dev agents; dropping this stops them.
pub struct DevAgents {
    _handles: Vec<LeaseHandle>,
}

/// Starts one agent per region of the dev cluster's sample service.
pub async fn start_dev_agents(configs: &[NodeConfig]) -> DevAgents {
    let endpoints: Vec<String> = configs.iter().map(|c| c.listen.clone()).collect();
    let mut handles = Vec::new();
    for c in configs {
        match Client::new(endpoints.clone()) {
            Ok(client) => handles.push(client.keep_alive(
                "payments",
                &c.region,
                &format!("dev-agent-{}", c.region),
                LeaseOptions {
                    auto_ack_demotion: true,
                    ..LeaseOptions::default()
                },
            )),
            Err(e) => tracing::warn!(region = %c.region, "dev agent not started: {e}"),
        }
    }
    DevAgents { _handles: handles }
}
