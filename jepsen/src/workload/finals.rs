//! The final phase's per-node records: every node's services, leases and token lists read
//! locally.

use std::time::Duration;

use baton::client::Consistency;
use baton::proto;
use futures::StreamExt as _;

use super::recording::{describe, lease_obs};
use crate::cluster::Cluster;
use crate::history::{Event, FinalService, HistoryWriter};

/// Most revisions scanned with `ValidateToken` per node for the final token list.
const MAX_TOKEN_SCAN: u64 = 200_000;

/// Every token ever granted for `service` on one node: the API has no token list, but
/// tokens are log indices and `ValidateToken` with LOCAL consistency answers from the
/// node's own state whether a token was issued (CURRENT or SUPERSEDED) or not (UNKNOWN),
/// so every index up to the node's revision is asked.
async fn token_list(addr: &str, service: &str, revision: u64) -> Result<Vec<u64>, String> {
    if revision > MAX_TOKEN_SCAN {
        return Err(format!("revision {revision} is too high to scan"));
    }
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let cc = proto::coordinator_client::CoordinatorClient::new(ch);
    let answers: Vec<Result<(u64, i32), String>> = futures::stream::iter(1..=revision)
        .map(|token| {
            let mut cc = cc.clone();
            let service = service.to_string();
            async move {
                cc.validate_token(proto::ValidateTokenRequest {
                    service,
                    token,
                    consistency: proto::Consistency::Local as i32,
                })
                .await
                .map(|r| (token, r.into_inner().validity))
                .map_err(|s| format!("token {token}: {}", s.message()))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut tokens = Vec::new();
    for a in answers {
        let (token, validity) = a?;
        match proto::TokenValidity::try_from(validity) {
            Ok(proto::TokenValidity::Current | proto::TokenValidity::Superseded) => {
                tokens.push(token)
            }
            Ok(proto::TokenValidity::Unknown) => {}
            _ => return Err(format!("token {token}: unspecified validity")),
        }
    }
    tokens.sort_unstable();
    Ok(tokens)
}

/// Records `node_final` for every node: its services and leases read locally (LOCAL
/// consistency, straight to the node), with each service's token list. Returns the
/// highest lease revision seen.
pub async fn record_node_finals(cluster: &Cluster, history: &HistoryWriter) -> u64 {
    let mut max_rev = 0;
    for n in cluster.nodes() {
        let c = cluster.direct_to(n.id);
        let event = match c.list_services(Consistency::Local).await {
            Ok(resp) => {
                let mut services = Vec::new();
                let mut error = None;
                for s in &resp.services {
                    let (Some(spec), Some(l)) = (&s.spec, &s.lease) else {
                        continue;
                    };
                    let lease = lease_obs(l);
                    max_rev = max_rev.max(lease.revision);
                    let tokens =
                        match token_list(&n.listen.to_string(), &spec.name, resp.revision).await {
                            Ok(t) => t,
                            Err(e) => {
                                error = Some(format!("token list of {}: {e}", spec.name));
                                Vec::new()
                            }
                        };
                    services.push(FinalService {
                        service: spec.name.clone(),
                        lease,
                        tokens,
                    });
                }
                Event::NodeFinal {
                    node: n.id,
                    region: n.region.clone(),
                    revision: resp.revision,
                    services,
                    error,
                }
            }
            Err(e) => Event::NodeFinal {
                node: n.id,
                region: n.region.clone(),
                revision: 0,
                services: Vec::new(),
                error: Some(describe(&e)),
            },
        };
        history.record(event);
    }
    max_rev
}
