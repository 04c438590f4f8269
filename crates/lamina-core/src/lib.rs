//! Lamina's snapshot store: containerd's snapshot model (Prepare, View, Mounts, Commit,
//! Remove, Stat, Update, Usage, Walk, Cleanup) kept in one transactional metadata file and
//! materialised by an overlayfs or native-copy backend.
//!
//! This crate has no gRPC in it: `laminad` serves it over containerd's snapshots API, and
//! Rust programs can use [`Snapshotter`] directly.

pub mod backend;
pub mod cache;
pub mod content;
pub mod error;
pub mod filter;
pub mod fsutil;
pub mod image;
pub mod index;
pub mod layer;
pub mod lazy;
pub mod lock;
mod meta;
pub mod model;
pub mod snapshotter;
pub mod sys;

pub use backend::BackendKind;
pub use error::{Error, Result};
pub use filter::Filter;
pub use model::{Info, Kind, Labels, Mount, Usage};
pub use snapshotter::{
    chain_ids, next_chain_id, parse_size, CleanupReport, DiffSpec, LayerIndexInfo, LayerLimits,
    LayerSource, MergeMethod, MergeReport, Snapshotter, StoreConfig, BLOCK_LABEL, QUOTA_LABEL,
};
