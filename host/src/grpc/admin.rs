//! `kmsgate.admin.v1.Admin`: what is serving, and reload on demand.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use tonic::{Request, Response, Status};

use crate::gateway::namespaced;
use crate::proto::admin::admin_server::{Admin, AdminServer};
use crate::proto::admin::{
    ProviderInfo, ProvidersRequest, ProvidersResponse, ReloadRequest, ReloadResponse,
};
use crate::reload::Reloader;

pub struct AdminService {
    reloader: Arc<Reloader>,
}

impl AdminService {
    pub fn server(reloader: Arc<Reloader>) -> AdminServer<AdminService> {
        AdminServer::new(AdminService { reloader })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn providers(
        &self,
        _: Request<ProvidersRequest>,
    ) -> Result<Response<ProvidersResponse>, Status> {
        let gateway = self.reloader.gateway();
        let primary = gateway.primary();
        let providers = gateway
            .slots()
            .iter()
            .map(|slot| {
                let serving = slot.serving();
                let health = slot.health();
                ProviderInfo {
                    name: slot.name().to_string(),
                    primary: slot.name() == primary.name(),
                    component: serving.origin.component.display().to_string(),
                    sha256: serving.origin.sha256.clone(),
                    loaded_at_unix_ms: serving
                        .loaded_at
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or_default(),
                    generation: serving.generation,
                    healthy: health.healthy,
                    key_id: health
                        .key_id
                        .map(|id| namespaced(slot.name(), &id))
                        .unwrap_or_default(),
                    detail: health.detail,
                    last_reload_error: slot.last_reload_error().unwrap_or_default(),
                }
            })
            .collect();
        let stats = &self.reloader.stats;
        Ok(Response::new(ProvidersResponse {
            providers,
            reloads_total: stats.reloads_total.load(Ordering::Relaxed),
            reload_failures_total: stats.failures_total.load(Ordering::Relaxed),
            last_reload_error: stats.last_error().unwrap_or_default(),
        }))
    }

    async fn reload(&self, _: Request<ReloadRequest>) -> Result<Response<ReloadResponse>, Status> {
        let report = self.reloader.reload("kmsgate reload").await;
        Ok(Response::new(ReloadResponse {
            error: report.problems(),
            swapped: report.swapped,
            refused: report.refused.into_iter().map(|(name, _)| name).collect(),
        }))
    }
}
