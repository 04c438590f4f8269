//! The one mapping from snapshot-store errors to gRPC status codes, chosen so that
//! containerd's errdefs turns them back into ErrNotFound, ErrAlreadyExists, ...
//!
//! Running out of a resource (file descriptors, disk space) is told apart from other
//! I/O failures wherever in an error's chain the OS error sits: it becomes
//! `ResourceExhausted`, with what to raise or free, not an opaque `Internal`.

use lamina_core::cache::CacheError;
use lamina_core::layer::LayerError;
use lamina_core::Error;
use tonic::{Code, Status};

/// Converts a store error into the status containerd expects for it.
pub fn to_status(e: Error) -> Status {
    if let Some(status) = exhausted(&e) {
        return status;
    }
    let code = code(&e);
    if code == Code::Internal {
        tracing::error!(error = %e, "internal error");
    }
    match limit_setting(&e) {
        Some(key) => Status::new(code, format!("{e} (laminad's {key} setting)")),
        None => Status::new(code, e.to_string()),
    }
}

/// The config key of the limit `e` hit, if it hit one.
fn limit_setting(e: &Error) -> Option<&'static str> {
    match e {
        Error::Layer(LayerError::TooLarge { .. }) => Some("max_layer_bytes"),
        Error::Layer(LayerError::TooManyEntries { .. }) => Some("max_layer_entries"),
        Error::InLayer { source, .. } => limit_setting(source),
        _ => None,
    }
}

/// The gRPC code of a store error.
fn code(e: &Error) -> Code {
    match e {
        Error::NotFound { .. } | Error::ImageNotFound { .. } => Code::NotFound,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::InvalidArgument(_) | Error::Filter { .. } => Code::InvalidArgument,
        Error::RootLocked { .. } => Code::Unavailable,
        // A layer of an image: what happened to it decides.
        Error::InLayer { source, .. } => code(source),
        Error::Layer(LayerError::Io { .. }) => Code::Internal,
        // What the client sent is bad: corrupt, hostile, too large, wrong digest.
        Error::Layer(_) => Code::InvalidArgument,
        Error::Cache(c) => match c {
            CacheError::LeaseNotFound { .. } | CacheError::RecordNotFound { .. } => Code::NotFound,
            CacheError::LeaseExists { .. } => Code::AlreadyExists,
            CacheError::WrongKind { .. } | CacheError::Locked { .. } => Code::FailedPrecondition,
            CacheError::BadTime { .. }
            | CacheError::BadDuration { .. }
            | CacheError::BadResource { .. }
            | CacheError::BadId { .. } => Code::InvalidArgument,
            CacheError::Corrupt { .. } => Code::Internal,
        },
        Error::Io { .. } | Error::Metadata(_) | Error::CorruptRecord { .. } => Code::Internal,
    }
}

/// What to do about an OS error that means a resource ran out, if `errno` is one.
fn exhausted_hint(errno: i32) -> Option<&'static str> {
    match errno {
        libc::EMFILE | libc::ENFILE => Some(
            "laminad ran out of open files: raise its LimitNOFILE (systemd) or `ulimit -n` \
             (and fs.file-max for ENFILE)",
        ),
        libc::ENOSPC => Some("the file system of laminad's root is full: free space and retry"),
        libc::EDQUOT => Some("a disk quota on laminad's root is exhausted: raise it and retry"),
        _ => None,
    }
}

/// The `ResourceExhausted` status for an error whose chain holds an OS error meaning a
/// resource ran out (EMFILE, ENFILE, ENOSPC, EDQUOT); `None` for any other error.
pub fn exhausted(e: &(dyn std::error::Error + 'static)) -> Option<Status> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(hint) = io.raw_os_error().and_then(exhausted_hint) {
                tracing::error!(error = %e, "resource exhausted");
                return Some(Status::resource_exhausted(format!("{e}: {hint}")));
            }
        }
        cur = err.source();
    }
    None
}

/// The status for an I/O error outside the store (files laminad reads and writes
/// itself): `ResourceExhausted` when a resource ran out, else `Internal`.
pub fn io_status(context: &str, e: std::io::Error) -> Status {
    match e.raw_os_error().and_then(exhausted_hint) {
        Some(hint) => Status::resource_exhausted(format!("{context}: {e}: {hint}")),
        None => Status::internal(format!("{context}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn io(errno: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn running_out_of_files_or_space_is_resource_exhausted() {
        for errno in [libc::EMFILE, libc::ENFILE] {
            let s = to_status(Error::io("open", "/x/y", io(errno)));
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
            assert!(s.message().contains("LimitNOFILE"), "{}", s.message());
            assert!(s.message().contains("/x/y"), "{}", s.message());
        }
        // Deep in a layer error, as an unpack reports it.
        let s = to_status(Error::Layer(LayerError::Io {
            op: "write",
            path: PathBuf::from("usr/lib/big"),
            source: io(libc::ENOSPC),
        }));
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("No space left"), "{}", s.message());
        assert!(s.message().contains("usr/lib/big"), "{}", s.message());
        assert!(s.message().contains("free space"), "{}", s.message());
        let s = io_status("open blob", io(libc::EMFILE));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("LimitNOFILE"), "{}", s.message());
        // Other I/O errors stay internal.
        let s = to_status(Error::io("open", "/x", io(libc::EIO)));
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(io_status("x", io(libc::EIO)).code(), Code::Internal);
    }

    #[test]
    fn a_layer_named_keeps_its_code_and_hint() {
        let e = Error::Layer(LayerError::TooLarge { limit: 9 }).in_layer(&"sha256:abc");
        let s = to_status(e.in_layer(&"sha256:other"));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "layer sha256:abc: layer exceeds the limit of 9 uncompressed bytes \
             (laminad's max_layer_bytes setting)"
        );
        let e = Error::io("write", "/r/x", io(libc::ENOSPC)).in_layer(&"sha256:abc");
        let s = to_status(e);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(
            s.message().starts_with("layer sha256:abc: write /r/x: "),
            "{}",
            s.message()
        );
    }

    #[test]
    fn layer_limits_name_their_setting() {
        let s = to_status(Error::Layer(LayerError::TooLarge { limit: 1024 }));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("1024"), "{}", s.message());
        assert!(s.message().contains("max_layer_bytes"), "{}", s.message());
        let s = to_status(Error::Layer(LayerError::TooManyEntries { limit: 7 }));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("max_layer_entries"), "{}", s.message());
    }
}
