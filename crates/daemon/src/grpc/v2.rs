use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use kmsgate_core::sanitize::Escaped;
use kmsgate_core::secret::Plaintext;
use kmsgate_proto::v2::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};
use kmsgate_proto::v2::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};

/// `v2.KeyManagementService`.
pub struct V2Service {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
}

impl V2Service {
    pub fn server(
        gateway: Arc<Gateway>,
        metrics: Arc<Metrics>,
    ) -> KeyManagementServiceServer<V2Service> {
        KeyManagementServiceServer::new(V2Service { gateway, metrics })
            .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl KeyManagementService for V2Service {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let started = Instant::now();
        let status = self.gateway.status();
        let provider = self.gateway.primary().name().to_string();
        self.metrics
            .observe("v2", "status", &provider, Ok(()), started.elapsed());
        Ok(Response::new(StatusResponse {
            version: "v2".into(),
            healthz: status.healthz,
            key_id: status.key_id,
        }))
    }

    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        let started = Instant::now();
        let _in_flight = self.metrics.in_flight();
        let deadline = super::caller_deadline(request.metadata());
        let EncryptRequest { plaintext, uid } = request.into_inner();
        let plaintext = Plaintext::new(plaintext);
        let provider = self.gateway.primary().name().to_string();
        let span = tracing::debug_span!("encrypt", api = "v2", uid = %Escaped(&uid), %provider, bytes = plaintext.len());
        let result = self
            .gateway
            .encrypt(&uid, &plaintext, deadline)
            .instrument(span.clone())
            .await;
        let sealed = super::conclude(
            &self.metrics,
            ("v2", "encrypt"),
            &provider,
            &uid,
            started,
            &span,
            result,
        )?;
        let _entered = span.enter();
        tracing::debug!(key_id = %sealed.key_id, "encrypted");
        Ok(Response::new(EncryptResponse {
            ciphertext: sealed.ciphertext,
            key_id: sealed.key_id,
            annotations: sealed.annotations.into_iter().collect(),
        }))
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let started = Instant::now();
        let _in_flight = self.metrics.in_flight();
        let deadline = super::caller_deadline(request.metadata());
        let DecryptRequest {
            ciphertext,
            uid,
            key_id,
            annotations,
        } = request.into_inner();
        let provider = self.gateway.provider_of(&key_id).unwrap_or_default();
        let span = tracing::debug_span!("decrypt", api = "v2", uid = %Escaped(&uid), %provider, key_id = %Escaped(&key_id));
        let annotations = to_annotations(annotations);
        let result = self
            .gateway
            .decrypt(&uid, &key_id, &ciphertext, &annotations, deadline)
            .instrument(span.clone())
            .await;
        let plaintext = super::conclude(
            &self.metrics,
            ("v2", "decrypt"),
            &provider,
            &uid,
            started,
            &span,
            result,
        )?;
        let _entered = span.enter();
        tracing::debug!("decrypted");
        Ok(Response::new(DecryptResponse {
            plaintext: plaintext.into_vec(),
        }))
    }
}

fn to_annotations(map: HashMap<String, Vec<u8>>) -> kmsgate_core::limits::Annotations {
    map.into_iter().collect()
}
