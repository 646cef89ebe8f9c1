//! The persistent session store (API stub; implementation in progress).
#![allow(unsafe_code)]
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where and how big the store file is.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub capacity: u64,
    pub slot_size: u32,
}

/// Source of "now" (unix seconds); injectable so tests can move time by months.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_secs(&self) -> u64;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("todo")]
    Todo,
}

#[derive(Debug)]
pub struct SessionStore;

impl SessionStore {
    pub fn open_or_create(_cfg: &StoreConfig) -> Result<Self, StoreError> { todo!() }
    pub fn open_or_create_with_clock(_cfg: &StoreConfig, _clock: Arc<dyn Clock>) -> Result<Self, StoreError> { todo!() }
    pub fn open_existing(_path: &Path) -> Result<Self, StoreError> { todo!() }
    pub fn put(&self, _key: &[u8], _value: &[u8], _ttl: Duration) -> bool { todo!() }
    pub fn get(&self, _key: &[u8]) -> Option<Vec<u8>> { todo!() }
    pub fn take(&self, _key: &[u8]) -> Option<Vec<u8>> { todo!() }
    pub fn flush(&self) -> Result<(), StoreError> { todo!() }
}

/// rustls server session storage over a [`SessionStore`].
#[derive(Debug)]
pub struct SessionCache;
impl SessionCache {
    pub fn new(_store: Arc<SessionStore>, _lifetime: Duration) -> Self { SessionCache }
}
impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, _key: Vec<u8>, _value: Vec<u8>) -> bool { todo!() }
    fn get(&self, _key: &[u8]) -> Option<Vec<u8>> { todo!() }
    fn take(&self, _key: &[u8]) -> Option<Vec<u8>> { todo!() }
    fn can_cache(&self) -> bool { true }
}
