use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::gateway::Gateway;
use crate::proto::v2::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};
use crate::proto::v2::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};
use crate::secret::Plaintext;

/// `v2.KeyManagementService`.
pub struct V2Service {
    gateway: Arc<Gateway>,
}

impl V2Service {
    pub fn server(gateway: Arc<Gateway>) -> KeyManagementServiceServer<V2Service> {
        KeyManagementServiceServer::new(V2Service { gateway })
            .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl KeyManagementService for V2Service {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let status = self.gateway.status();
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
        let EncryptRequest { plaintext, uid } = request.into_inner();
        let plaintext = Plaintext::new(plaintext);
        let span = tracing::info_span!("encrypt", api = "v2", %uid, bytes = plaintext.len());
        async {
            let sealed = self
                .gateway
                .encrypt(&uid, &plaintext)
                .await
                .inspect_err(log_failure)?;
            tracing::debug!(key_id = %sealed.key_id, "encrypted");
            Ok(Response::new(EncryptResponse {
                ciphertext: sealed.ciphertext,
                key_id: sealed.key_id,
                annotations: sealed.annotations.into_iter().collect(),
            }))
        }
        .instrument(span)
        .await
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let DecryptRequest {
            ciphertext,
            uid,
            key_id,
            annotations,
        } = request.into_inner();
        let span = tracing::info_span!("decrypt", api = "v2", %uid, %key_id);
        async {
            let annotations = to_annotations(annotations);
            let plaintext = self
                .gateway
                .decrypt(&uid, &key_id, &ciphertext, &annotations)
                .await
                .inspect_err(log_failure)?;
            tracing::debug!("decrypted");
            Ok(Response::new(DecryptResponse {
                plaintext: plaintext.into_vec(),
            }))
        }
        .instrument(span)
        .await
    }
}

fn to_annotations(map: HashMap<String, Vec<u8>>) -> crate::limits::Annotations {
    map.into_iter().collect()
}

pub(super) fn log_failure(error: &crate::error::KmsError) {
    tracing::warn!(code = ?error.code(), "{error}");
}
