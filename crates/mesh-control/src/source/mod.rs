//! Configuration sources. The config directory is the embedded default; the
//! Kubernetes watchers feed the same [`ConfigStore`] through the same
//! [`publish::Publisher`] (debounce, status, snapshots), so nothing
//! downstream knows where an object came from.

pub mod dir;
pub mod kube;
pub mod publish;
pub mod store;

pub use dir::{DirSource, DirSourceConfig};
pub use kube::{KubeSource, KubeSourceConfig};
pub use store::{ConfigStatus, ConfigStore, ObjectStatus};
