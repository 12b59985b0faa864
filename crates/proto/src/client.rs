//! A gRPC client over the KMS Unix socket, for the CLI's client commands,
//! `kmsgate bench` and tests.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::{admin, v1beta1, v2};

/// A socket that could not be reached, named.
#[derive(Debug, thiserror::Error)]
#[error("connecting to {socket:?}: {source}")]
pub struct ConnectError {
    pub socket: PathBuf,
    pub source: tonic::transport::Error,
}

/// Connects to the daemon's socket. The URI is a placeholder: the apiserver
/// (grpc-go) sends `:authority` "localhost" on Unix sockets, and so does
/// this client.
pub async fn connect(socket: &Path) -> Result<Channel, ConnectError> {
    let path: PathBuf = socket.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| ConnectError {
            socket: socket.to_owned(),
            source,
        })
}

pub type V2Client = v2::key_management_service_client::KeyManagementServiceClient<Channel>;
pub type V1beta1Client =
    v1beta1::key_management_service_client::KeyManagementServiceClient<Channel>;

pub async fn v2(socket: &Path) -> Result<V2Client, ConnectError> {
    Ok(V2Client::new(connect(socket).await?))
}

pub async fn v1beta1(socket: &Path) -> Result<V1beta1Client, ConnectError> {
    Ok(V1beta1Client::new(connect(socket).await?))
}

pub type AdminClient = admin::admin_client::AdminClient<Channel>;

pub async fn admin(socket: &Path) -> Result<AdminClient, ConnectError> {
    Ok(AdminClient::new(connect(socket).await?))
}
