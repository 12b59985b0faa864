//! `kmsgate.admin.v1.Admin`: what is serving, and reload on demand.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::reload::Reloader;
use kmsgate_proto::admin::admin_server::{Admin, AdminServer};
use kmsgate_proto::admin::{
    ProviderInfo, ProvidersRequest, ProvidersResponse, ReloadRequest, ReloadResponse,
};

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
        let view = self.reloader.view();
        let providers = view
            .providers
            .into_iter()
            .map(|p| ProviderInfo {
                name: p.name,
                primary: p.primary,
                component: p.component,
                sha256: p.sha256,
                loaded_at_unix_ms: p.loaded_at_unix_ms,
                generation: p.generation,
                healthy: p.healthy,
                key_id: p.key_id,
                detail: p.detail,
                last_reload_error: p.last_reload_error,
                batches_decrypts: p.batches_decrypts,
                decrypt_batches: p.decrypt_batches,
                decrypt_batch_items: p.decrypt_batch_items,
                decrypts_abandoned: p.decrypts_abandoned,
                breaker: p.breaker,
                fast_failures: p.fast_failures,
                instances: p.instances,
                queued_calls: p.queued_calls,
                sandbox_memory_bytes: p.sandbox_memory_bytes,
            })
            .collect();
        Ok(Response::new(ProvidersResponse {
            providers,
            reloads_total: view.reloads_total,
            reload_failures_total: view.reload_failures_total,
            last_reload_error: view.last_reload_error,
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
