//! The PostgreSQL backend (being written).

use async_trait::async_trait;
use chat_proto::MessageRecord;
use tokio::sync::mpsc;

use super::{
    Appended, Commit, HistoryPage, RoomHead, RoomId, RoomRecord, SessionId, Store, StoreError,
    UserRecord,
};

/// The URL without its password, for logs and messages.
pub fn redact(url: &str) -> String {
    url.to_owned()
}

/// The PostgreSQL store.
pub struct PostgresStore;

impl PostgresStore {
    pub async fn open(
        _url: &str,
        _feed: mpsc::Sender<Commit>,
    ) -> Result<PostgresStore, StoreError> {
        Err(StoreError::Open("not yet".into()))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn find_user(&self, _name: &str) -> Result<Option<UserRecord>, StoreError> {
        unimplemented!()
    }
    async fn create_user(
        &self,
        _name: &str,
        _password_hash: &str,
        _admin: bool,
    ) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn set_password(&self, _name: &str, _password_hash: &str) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn delete_user(&self, _name: &str) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        unimplemented!()
    }
    async fn count_users(&self) -> Result<u64, StoreError> {
        unimplemented!()
    }
    async fn open_room(&self, _name: &str) -> Result<RoomHead, StoreError> {
        unimplemented!()
    }
    async fn room(&self, _name: &str) -> Result<Option<RoomHead>, StoreError> {
        unimplemented!()
    }
    async fn list_rooms(&self) -> Result<Vec<RoomRecord>, StoreError> {
        unimplemented!()
    }
    async fn delete_room(
        &self,
        _name: &str,
        _requested_by: SessionId,
    ) -> Result<RoomId, StoreError> {
        unimplemented!()
    }
    async fn append(
        &self,
        _room: RoomId,
        _user: &str,
        _text: &str,
    ) -> Result<Appended, StoreError> {
        unimplemented!()
    }
    async fn history(
        &self,
        _name: &str,
        _before: Option<u64>,
        _limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        unimplemented!()
    }
    async fn range(
        &self,
        _room: RoomId,
        _name: &str,
        _after: u64,
        _upto: u64,
        _limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        unimplemented!()
    }
    async fn is_empty(&self) -> Result<bool, StoreError> {
        unimplemented!()
    }
    async fn import_user(&self, _user: &UserRecord) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn import_room(&self, _room: &RoomRecord) -> Result<RoomId, StoreError> {
        unimplemented!()
    }
    async fn import_messages(
        &self,
        _room: RoomId,
        _messages: &[MessageRecord],
    ) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn close(&self) {}
}
