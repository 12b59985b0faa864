use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use kmsgate_core::envelope;
use kmsgate_core::error::{Action, KmsError, ProviderError};
use kmsgate_core::limits::Annotations;
use kmsgate_core::sanitize::Escaped;
use kmsgate_core::secret::Plaintext;
use kmsgate_proto::v1beta1::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};
use kmsgate_proto::v1beta1::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, VersionRequest,
    VersionResponse,
};

/// `v1beta1.KeyManagementService` (deprecated in Kubernetes; served for
/// clusters that still use KMS v1).
pub struct V1beta1Service {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
}

impl V1beta1Service {
    pub fn server(
        gateway: Arc<Gateway>,
        metrics: Arc<Metrics>,
    ) -> KeyManagementServiceServer<V1beta1Service> {
        KeyManagementServiceServer::new(V1beta1Service { gateway, metrics })
            .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
    }
}

/// The only API version v1beta1 callers may ask for.
const API_VERSION: &str = "v1beta1";

fn check_version(version: &str) -> Result<(), Status> {
    // The apiserver always sends "v1beta1"; an empty string is tolerated for
    // hand-made clients.
    if version.is_empty() || version == API_VERSION {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "unsupported KMS API version {version:?}, expected v1beta1"
        )))
    }
}

#[tonic::async_trait]
impl KeyManagementService for V1beta1Service {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        check_version(&request.into_inner().version)?;
        Ok(Response::new(VersionResponse {
            version: API_VERSION.into(),
            runtime_name: "kmsgate".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        let started = Instant::now();
        let _in_flight = self.metrics.in_flight();
        let deadline = super::caller_deadline(request.metadata());
        let EncryptRequest { version, plain } = request.into_inner();
        check_version(&version)?;
        let plaintext = Plaintext::new(plain);
        let provider = self.gateway.primary().name().to_string();
        let span =
            tracing::debug_span!("encrypt", api = "v1beta1", %provider, bytes = plaintext.len());
        let result = self
            .gateway
            .encrypt("", &plaintext, deadline)
            .instrument(span.clone())
            .await
            .and_then(|sealed| {
                if sealed.annotations.is_empty() {
                    return Ok(sealed);
                }
                Err(KmsError::Provider {
                    provider: provider.clone(),
                    action: Action::Encrypt,
                    error: ProviderError::InvalidConfig(
                        "the provider returns annotations, which KMS v1beta1 cannot store; use KMS v2".into(),
                    ),
                })
            });
        let sealed = super::conclude(
            &self.metrics,
            ("v1beta1", "encrypt"),
            &provider,
            "",
            started,
            &span,
            result,
        )?;
        let _entered = span.enter();
        tracing::debug!(key_id = %sealed.key_id, "encrypted");
        Ok(Response::new(EncryptResponse {
            cipher: envelope::seal(&sealed.key_id, &sealed.ciphertext),
        }))
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let started = Instant::now();
        let _in_flight = self.metrics.in_flight();
        let deadline = super::caller_deadline(request.metadata());
        let DecryptRequest { version, cipher } = request.into_inner();
        check_version(&version)?;
        let opened = envelope::open(&cipher).map_err(KmsError::InvalidRequest);
        let key_id = opened
            .as_ref()
            .map(|(key_id, _)| *key_id)
            .unwrap_or_default();
        let provider = self.gateway.provider_of(key_id).unwrap_or_default();
        let span =
            tracing::debug_span!("decrypt", api = "v1beta1", %provider, key_id = %Escaped(key_id));
        let result = match opened {
            Ok((key_id, ciphertext)) => {
                self.gateway
                    .decrypt("", key_id, ciphertext, &Annotations::new(), deadline)
                    .instrument(span.clone())
                    .await
            }
            Err(error) => Err(error),
        };
        let plaintext = super::conclude(
            &self.metrics,
            ("v1beta1", "decrypt"),
            &provider,
            "",
            started,
            &span,
            result,
        )?;
        let _entered = span.enter();
        tracing::debug!("decrypted");
        Ok(Response::new(DecryptResponse {
            plain: plaintext.into_vec(),
        }))
    }
}
