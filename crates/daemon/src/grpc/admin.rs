//! `kmsgate.admin.v1.Admin`: what is serving, and reload on demand.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::reload::Reloader;
use kmsgate_proto::admin::admin_server::{Admin, AdminServer};
use kmsgate_proto::admin::{ProvidersRequest, ProvidersResponse, ReloadRequest, ReloadResponse};

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
        Ok(Response::new(self.reloader.view()))
    }

    async fn reload(
        &self,
        request: Request<ReloadRequest>,
    ) -> Result<Response<ReloadResponse>, Status> {
        let remove = request.into_inner().remove;
        let report = self
            .reloader
            .reload_removing("kmsgate reload", &remove)
            .await;
        Ok(Response::new(ReloadResponse {
            error: report.problems(),
            removed: report.removed,
            swapped: report.swapped,
            refused: report.refused.into_iter().map(|(name, _)| name).collect(),
        }))
    }
}
