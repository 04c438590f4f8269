//! containerd's snapshots gRPC API (`containerd.services.snapshots.v1`), generated at
//! build time from the vendored protos, and a client connector for unix sockets.

#![allow(missing_docs)] // generated code

/// containerd's API packages, nested as their proto package names are.
pub mod containerd {
    /// `containerd.types`: the mount message.
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    /// `containerd.services.*`.
    pub mod services {
        /// `containerd.services.snapshots`.
        pub mod snapshots {
            /// `containerd.services.snapshots.v1`: the snapshots service.
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

/// Lamina's own API (`lamina.v1`).
pub mod lamina {
    /// `lamina.v1`: layer apply and diff, images, and the cache service (leases, GC,
    /// prune, disk usage).
    pub mod v1 {
        tonic::include_proto!("lamina.v1");
    }
}

/// Kubernetes' CRI (`runtime.v1`), the image-pulling part only.
pub mod runtime {
    /// `runtime.v1`: ImageService.PullImage.
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types;

use std::path::PathBuf;

/// A mount as the store gives it, for the wire (containerd leaves `target` empty: the
/// caller chooses where to mount).
impl From<lamina_core::Mount> for types::Mount {
    fn from(m: lamina_core::Mount) -> Self {
        types::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        }
    }
}

/// A mount from the wire, for Lamina's own mount code (`lamina_core::sys::mount_all`).
impl From<&types::Mount> for lamina_core::Mount {
    fn from(m: &types::Mount) -> Self {
        lamina_core::Mount {
            kind: m.r#type.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        }
    }
}

/// A mount list from the wire, for Lamina's own mount code.
pub fn core_mounts(mounts: &[types::Mount]) -> Vec<lamina_core::Mount> {
    mounts.iter().map(Into::into).collect()
}

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Opens a gRPC channel to a server listening on the unix socket `path`.
pub async fn connect_unix(path: impl Into<PathBuf>) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.into();
    // The URI is required by the API but unused: the connector below dials the socket.
    Endpoint::from_static("http://[::1]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}
