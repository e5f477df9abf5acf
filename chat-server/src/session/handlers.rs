//! Requests: each client event becomes a call on the hub, and its answer
//! (or refusal) becomes frames. Nothing here touches the socket beyond
//! `reply`/`error`, and nothing here knows the store, rooms or fan-out.

use std::sync::Arc;
use std::time::Instant;

use chat_proto::limits::{
    close, DEFAULT_PAGE, DEFAULT_SEARCH, JOIN_HISTORY, MAX_CHANGES_PAGE, MAX_PAGE, MAX_ROOMS_PAGE,
    MAX_SEARCH,
};
use chat_proto::validate::{
    is_valid_emoji, is_valid_name, is_valid_password, is_valid_room, normalize_text, search_words,
    TextError,
};
use chat_proto::{
    decode_client, features, ClientEvent, ErrorCode, MessageRecord, Request, ServerEvent,
    PROTOCOL_VERSION,
};

use super::{Account, Ending, JoinedRoom, Session};
use crate::auth::NotAdmitted;
use crate::hub::Refusal;
use crate::rooms::SessionHandle;
use crate::store::{Change, RoomId};
use crate::untrusted::Untrusted;

/// What a `join` says the client already holds.
#[derive(Debug, Default, Clone, Copy)]
struct Resume {
    /// Every message up to this seq.
    since: Option<u64>,
    /// Every change up to this rev (only with `since`).
    since_rev: Option<u64>,
}

/// Token bucket for sends.
pub(super) struct RateLimit {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub(super) fn new(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_sec: per_sec as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    /// Takes a token; false when the bucket is empty. A rate of 0 disables
    /// the limit.
    fn allow(&mut self) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Session {
    pub(super) async fn on_text(&mut self, text: &str) -> Result<(), Ending> {
        let Request { id, event } = match decode_client(text) {
            Ok(request) => request,
            Err(err) => return self.error(ErrorCode::BadRequest, err.reason, err.id).await,
        };
        let Some(account) = &self.account else {
            return match event {
                ClientEvent::Login { user, password } => self.login(user, password, id).await,
                ClientEvent::Register { user, password } => self.register(user, password, id).await,
                _ => {
                    self.error(ErrorCode::AuthRequired, "log in first", id)
                        .await
                }
            };
        };
        let handle = account.handle.clone();
        // Every request that names a room: a malformed name is refused first.
        let room = match &event {
            ClientEvent::Join { room, .. }
            | ClientEvent::Leave { room, .. }
            | ClientEvent::Read { room, .. }
            | ClientEvent::Invite { room, .. }
            | ClientEvent::Send { room, .. }
            | ClientEvent::Edit { room, .. }
            | ClientEvent::Delete { room, .. }
            | ClientEvent::React { room, .. }
            | ClientEvent::Search {
                room: Some(room), ..
            }
            | ClientEvent::History { room, .. }
            | ClientEvent::Typing { room }
            | ClientEvent::DeleteRoom { room } => Some(room),
            _ => None,
        };
        // A direct conversation's name (`alice+bob`) is a room name too.
        if room.is_some_and(|room| !is_valid_room(room)) {
            return self.invalid_room(id).await;
        }
        match event {
            ClientEvent::Login { .. } | ClientEvent::Register { .. } => {
                self.error(ErrorCode::BadRequest, "already logged in", id)
                    .await
            }
            ClientEvent::Rooms { after, limit } => self.rooms(&handle.user, after, limit, id).await,
            ClientEvent::Join {
                room,
                since,
                since_rev,
                private,
            } => {
                self.join(&handle, room, Resume { since, since_rev }, private, id)
                    .await
            }
            ClientEvent::Invite { room, user } => {
                if !is_valid_name(&user) {
                    return self.invalid_user(id).await;
                }
                match self.state.hub.invite(&handle, &room, &user).await {
                    Ok(()) => {
                        let by = handle.user.to_string();
                        self.reply(&ServerEvent::Invited {
                            room,
                            user,
                            by,
                            re: id,
                        })
                        .await
                    }
                    Err(refusal) => {
                        let subject = match refusal {
                            Refusal::NoSuchUser => user,
                            _ => room,
                        };
                        self.refused(refusal, &subject, id).await
                    }
                }
            }
            ClientEvent::Dm { user } => {
                if !is_valid_name(&user) {
                    return self.invalid_user(id).await;
                }
                match self.state.hub.dm(&handle, &user).await {
                    // Answered as a join of the conversation's room.
                    Ok(room) => self.join(&handle, room, Resume::default(), false, id).await,
                    Err(refusal) => self.refused(refusal, &user, id).await,
                }
            }
            ClientEvent::Leave { room, forget } => self.leave(&handle, room, forget, id).await,
            ClientEvent::Read { room, seq } => match self.state.hub.read(&handle, &room, seq).await
            {
                // No answer: the other connections of the user are told.
                Ok(()) => Ok(()),
                Err(refusal) => self.refused(refusal, &room, id).await,
            },
            ClientEvent::Send {
                room,
                text,
                reply_to,
            } => self.send(&handle, room, text, reply_to, id).await,
            ClientEvent::Edit { room, seq, text } => {
                let text = match normalize_text(&text) {
                    Ok(text) => text,
                    Err(err @ TextError::TooLarge(_)) => {
                        return self.error(ErrorCode::TooLarge, err.to_string(), id).await
                    }
                    Err(err) => {
                        return self.error(ErrorCode::BadRequest, err.to_string(), id).await
                    }
                };
                self.change(&handle, room, seq, Change::Edit { text }, id)
                    .await
            }
            ClientEvent::Delete { room, seq } => {
                self.change(&handle, room, seq, Change::Delete, id).await
            }
            ClientEvent::React { room, seq, emoji } => {
                if !is_valid_emoji(&emoji) {
                    return self
                        .error(
                            ErrorCode::BadRequest,
                            "a reaction is 1 to 32 bytes, without spaces or control characters",
                            id,
                        )
                        .await;
                }
                self.change(&handle, room, seq, Change::React { emoji }, id)
                    .await
            }
            ClientEvent::Search {
                query,
                room,
                limit,
                cursor,
            } => {
                self.search(&handle.user, query, room, limit, cursor, id)
                    .await
            }
            ClientEvent::History {
                room,
                before,
                limit,
            } => self.history(&handle.user, room, before, limit, id).await,
            ClientEvent::Typing { room } => {
                let Some(room_id) = self.joined_room(&room) else {
                    return self.not_joined(&handle, &room, "join it first", id).await;
                };
                self.state.hub.typing(&room, room_id, &handle.user).await;
                Ok(())
            }
            ClientEvent::DeleteRoom { room } => self.delete_room(&handle, room, id).await,
            ClientEvent::Ping => self.reply(&ServerEvent::Pong { re: id }).await,
        }
    }

    async fn login(
        &mut self,
        user: String,
        password: String,
        id: Option<String>,
    ) -> Result<(), Ending> {
        let state = self.state.clone();
        let admission = match state.auth.admit(self.peer.ip()) {
            Ok(admission) => admission,
            Err(why) => return self.not_admitted(why, id).await,
        };
        let check = async {
            let record = if is_valid_name(&user) {
                state.hub.user(&user).await?
            } else {
                None
            };
            let (hash, admin) = match record {
                Some(r) => (Some(r.password_hash), r.admin),
                None => (None, false),
            };
            let matches = admission.verify(password, hash.clone()).await;
            Ok::<_, Refusal>(hash.filter(|_| matches).map(|hash| (admin, hash)))
        };
        match self.while_logging_in(check).await? {
            Ok(Some((admin, hash))) => self.welcome(user, admin, hash, id).await,
            Ok(None) => {
                tracing::info!(peer = %self.peer, user = %Untrusted(&user), "login failed");
                self.failed_login(
                    ErrorCode::AuthFailed,
                    "wrong user name or password".into(),
                    id,
                )
                .await
            }
            Err(refusal) => self.refused(refusal, "", id).await,
        }
    }

    /// Answers a failed login or registration, counting it against this
    /// connection and its address.
    async fn failed_login(
        &mut self,
        code: ErrorCode,
        message: String,
        id: Option<String>,
    ) -> Result<(), Ending> {
        self.failures += 1;
        self.state.auth.failed(self.peer.ip());
        self.error(code, message, id).await?;
        if self.failures >= chat_proto::limits::MAX_LOGIN_FAILURES {
            return Err(Ending::Close(close::POLICY, "too many failed logins"));
        }
        Ok(())
    }

    /// Answers a login that was not admitted to the hashing queue.
    async fn not_admitted(&mut self, why: NotAdmitted, id: Option<String>) -> Result<(), Ending> {
        let message = match why {
            NotAdmitted::QueueFull | NotAdmitted::AddressBusy => {
                "too many logins waiting: try again in a moment"
            }
            NotAdmitted::TooManyFailures => {
                "too many failed logins from your address: try again in a minute"
            }
        };
        self.error(ErrorCode::Busy, message, id).await
    }

    async fn register(
        &mut self,
        user: String,
        password: String,
        id: Option<String>,
    ) -> Result<(), Ending> {
        if !self.state.config.open_registration {
            return self
                .error(
                    ErrorCode::RegistrationClosed,
                    "registration is closed: ask an admin for an account",
                    id,
                )
                .await;
        }
        if !is_valid_name(&user) {
            return self
                .failed_login(
                    ErrorCode::InvalidName,
                    "user names are 1 to 32 characters from A-Z a-z 0-9 _ - .".into(),
                    id,
                )
                .await;
        }
        if !is_valid_password(&password) {
            return self
                .failed_login(
                    ErrorCode::BadRequest,
                    "passwords are 8 to 1024 bytes".into(),
                    id,
                )
                .await;
        }
        let state = self.state.clone();
        let admission = match state.auth.admit(self.peer.ip()) {
            Ok(admission) => admission,
            Err(why) => return self.not_admitted(why, id).await,
        };
        // The name is checked before the (costly) hash; the store still
        // refuses a name taken meanwhile.
        let create = async {
            if state.hub.user(&user).await?.is_some() {
                return Err(Refusal::UserExists);
            }
            let hash = admission.hash(password).await.ok_or_else(|| {
                Refusal::Unavailable(crate::store::StoreError::Unavailable(
                    "could not hash the password".into(),
                ))
            })?;
            state.hub.register(&user, &hash).await.map(|()| hash)
        };
        match self.while_logging_in(create).await? {
            Ok(hash) => {
                tracing::info!(peer = %self.peer, user = %Untrusted(&user), "user registered");
                self.welcome(user, false, hash, id).await
            }
            Err(Refusal::UserExists) => {
                let message = format!("the name {user} is taken");
                self.failed_login(ErrorCode::UserExists, message, id).await
            }
            Err(refusal) => self.refused(refusal, &user, id).await,
        }
    }

    /// Logs the session in as `user`, who proved to know the password
    /// whose hash is `password_hash` (a change of it closes the session).
    async fn welcome(
        &mut self,
        user: String,
        admin: bool,
        password_hash: String,
        id: Option<String>,
    ) -> Result<(), Ending> {
        // Read first: a login whose rooms cannot be read is refused (the
        // client retries) rather than welcomed without them.
        let rooms = match self.state.hub.account_rooms(&user).await {
            Ok(rooms) => rooms,
            Err(refusal) => return self.refused(refusal, &user, id).await,
        };
        tracing::info!(peer = %self.peer, user = %Untrusted(&user), "logged in");
        let handle = Arc::new(SessionHandle::new(self.id, user.as_str().into()));
        self.state.hub.logged_in(&handle, password_hash);
        self.account = Some(Account { handle });
        self.reply(&ServerEvent::Welcome {
            user,
            admin,
            protocol: PROTOCOL_VERSION,
            server: format!("chat-server {}", env!("CARGO_PKG_VERSION")),
            features: [
                features::READ,
                features::ROOMS_PAGING,
                features::PRIVATE,
                features::DM,
                features::EDIT,
                features::REACT,
                features::REPLY,
                features::SEARCH,
            ]
            .map(String::from)
            .to_vec(),
            rooms,
            re: id,
        })
        .await
    }

    /// Puts a refusal of the hub in words. `subject` is the room (or the
    /// user name, for a registration) the request named.
    async fn refused(
        &mut self,
        refusal: Refusal,
        subject: &str,
        id: Option<String>,
    ) -> Result<(), Ending> {
        let (code, message) = match refusal {
            Refusal::NoSuchRoom => (ErrorCode::NoSuchRoom, format!("there is no room {subject}")),
            Refusal::NotJoined => (ErrorCode::NotJoined, format!("you are not in {subject}")),
            Refusal::Forbidden(why) => (ErrorCode::Forbidden, format!("{subject}: {why}")),
            Refusal::NoSuchUser => (ErrorCode::NoSuchUser, format!("there is no user {subject}")),
            Refusal::NoSuchMessage => (
                ErrorCode::NoSuchMessage,
                format!("{subject} has no such message (or it was deleted)"),
            ),
            Refusal::BadRequest(why) => (ErrorCode::BadRequest, why.to_owned()),
            Refusal::DeletedWhileJoining => (
                ErrorCode::NoSuchRoom,
                "the room was deleted while joining".to_owned(),
            ),
            Refusal::UserExists => (
                ErrorCode::UserExists,
                format!("the name {subject} is taken"),
            ),
            Refusal::RoomQuota(quota) => (
                ErrorCode::RateLimited,
                format!(
                    "you created {quota} rooms in the last hour: join an existing one, or wait"
                ),
            ),
            Refusal::TooManyRooms(max) => (
                ErrorCode::Forbidden,
                format!("the server holds its limit of {max} rooms: join an existing one"),
            ),
            Refusal::Unavailable(err) => {
                tracing::error!(peer = %self.peer, error = %err, "request failed");
                (
                    ErrorCode::Internal,
                    "the server could not complete the request".to_owned(),
                )
            }
        };
        self.error(code, message, id).await
    }

    /// The rooms `viewer` may see.
    async fn rooms(
        &mut self,
        viewer: &str,
        after: Option<String>,
        limit: Option<u64>,
        id: Option<String>,
    ) -> Result<(), Ending> {
        let limit = match limit {
            None => MAX_ROOMS_PAGE,
            Some(0) => {
                return self
                    .error(ErrorCode::BadRequest, "limit must be at least 1", id)
                    .await
            }
            Some(n) => n.min(MAX_ROOMS_PAGE as u64) as usize,
        };
        match self.state.hub.rooms(viewer, after.as_deref(), limit).await {
            Ok((rooms, has_more)) => {
                self.reply(&ServerEvent::Rooms {
                    rooms,
                    has_more,
                    re: id,
                })
                .await
            }
            Err(refusal) => self.refused(refusal, "", id).await,
        }
    }

    async fn join(
        &mut self,
        handle: &Arc<SessionHandle>,
        room: String,
        resume: Resume,
        private: bool,
        id: Option<String>,
    ) -> Result<(), Ending> {
        let joined = match self.state.hub.join(handle, &room, private).await {
            Ok(joined) => joined,
            Err(refusal) => return self.refused(refusal, &room, id).await,
        };
        // Live messages up to the join point (or up to what the client says
        // it holds) are already in the history below, and live changes up
        // to it are in the state of the messages read below: the outbox
        // filter skips them.
        self.forget_joined(&room);
        self.joined.push(JoinedRoom {
            name: room.clone(),
            room_id: joined.room_id,
            newest: joined.last_seq.max(resume.since.unwrap_or(0)),
            newest_rev: joined.rev,
        });
        self.reply(&ServerEvent::Joined {
            room: room.clone(),
            last_seq: joined.last_seq,
            members: joined.members,
            rev: joined.rev,
            re: id,
        })
        .await?;
        if let (Some(since), Some(since_rev)) = (resume.since, resume.since_rev) {
            // Before the history: the backlog read after it then holds at
            // least the state these changes are of.
            self.send_changes(joined.room_id, &room, since, since_rev)
                .await?;
        }
        // Without `since`, the newest page; with it, everything after it.
        let since = resume
            .since
            .unwrap_or(joined.last_seq.saturating_sub(JOIN_HISTORY as u64));
        self.send_backlog(joined.room_id, &room, since, joined.last_seq)
            .await
    }

    /// The current state of every message with `seq <= since` changed
    /// after `since_rev`, in `changes` events of at most 200 messages (one
    /// empty one when nothing changed), all saying the `rev` the first one
    /// was read at. Live changes up to that `rev` are skipped from then on;
    /// later ones are delivered (a message changed again while the pages
    /// are read can thus arrive twice, never be missed).
    async fn send_changes(
        &mut self,
        room_id: RoomId,
        room: &str,
        since: u64,
        since_rev: u64,
    ) -> Result<(), Ending> {
        let mut after_seq = 0;
        let mut rev = None;
        loop {
            let (messages, read_at) = match self
                .state
                .hub
                .changed_since(room_id, room, since_rev, after_seq, since, MAX_CHANGES_PAGE)
                .await
            {
                Ok(page) => page,
                Err(refusal) => return self.refused(refusal, room, None).await,
            };
            let rev = *rev.get_or_insert_with(|| {
                if let Some(joined) = self.joined.iter_mut().find(|j| j.room_id == room_id) {
                    joined.newest_rev = joined.newest_rev.max(read_at);
                }
                read_at
            });
            let full = messages.len() >= MAX_CHANGES_PAGE;
            after_seq = messages.last().map_or(after_seq, |m| m.seq);
            self.reply(&ServerEvent::Changes {
                room: room.to_owned(),
                messages,
                rev,
            })
            .await?;
            if !full {
                return Ok(());
            }
        }
    }

    /// The room's id when this session is a member. The session's own list
    /// is enough: leaving removes a room from it, and so does a deletion
    /// (when its notice passes through the outbox); a send that races a
    /// deletion is refused by the store, which appends by room id.
    fn joined_room(&self, room: &str) -> Option<RoomId> {
        self.joined
            .iter()
            .find(|j| j.name == room)
            .map(|j| j.room_id)
    }

    pub(super) fn forget_joined(&mut self, room: &str) {
        self.joined.retain(|j| j.name != room);
    }

    /// Every message with `since < seq <= last_seq`, in pages of at most 200.
    async fn send_backlog(
        &mut self,
        room_id: RoomId,
        room: &str,
        since: u64,
        last_seq: u64,
    ) -> Result<(), Ending> {
        let mut after = since;
        loop {
            let page = match self
                .state
                .hub
                .backlog(room_id, room, after, last_seq, MAX_PAGE)
                .await
            {
                Ok(page) => page,
                Err(refusal) => return self.refused(refusal, room, None).await,
            };
            let Some(newest) = page.last().map(|m| m.seq) else {
                if after == since {
                    // Nothing missing: one empty history says so.
                    return self
                        .send_history(room, Vec::new(), since > 0 && last_seq > 0)
                        .await;
                }
                return Ok(());
            };
            let has_more = page.first().is_some_and(|m| m.seq > 1);
            self.send_history(room, page, has_more).await?;
            if newest >= last_seq {
                return Ok(());
            }
            after = newest;
        }
    }

    async fn send_history(
        &mut self,
        room: &str,
        messages: Vec<MessageRecord>,
        has_more: bool,
    ) -> Result<(), Ending> {
        self.reply(&ServerEvent::History {
            room: room.to_owned(),
            messages,
            has_more,
            re: None,
        })
        .await
    }

    /// The answer to a request for a room this connection is not in:
    /// `forbidden` when the room is private and the user not a member (it
    /// is none of their business), `not_joined` otherwise.
    async fn not_joined(
        &mut self,
        handle: &Arc<SessionHandle>,
        room: &str,
        advice: &str,
        id: Option<String>,
    ) -> Result<(), Ending> {
        match self.state.hub.may_enter(&handle.user, room).await {
            Ok(()) => {
                let message = format!("you are not in {room}: {advice}");
                self.error(ErrorCode::NotJoined, message, id).await
            }
            Err(refusal) => self.refused(refusal, room, id).await,
        }
    }

    async fn invalid_user(&mut self, id: Option<String>) -> Result<(), Ending> {
        self.error(
            ErrorCode::InvalidName,
            "user names are 1 to 32 characters from A-Z a-z 0-9 _ - .",
            id,
        )
        .await
    }

    async fn invalid_room(&mut self, id: Option<String>) -> Result<(), Ending> {
        self.error(
            ErrorCode::InvalidName,
            "room names are 1 to 32 characters from A-Z a-z 0-9 _ - .",
            id,
        )
        .await
    }

    /// Leaves `room`; with `forget`, also removes it from the account's
    /// rooms, on every device (then this connection need not be in it).
    async fn leave(
        &mut self,
        handle: &Arc<SessionHandle>,
        room: String,
        forget: bool,
        id: Option<String>,
    ) -> Result<(), Ending> {
        self.forget_joined(&room);
        let left = self.state.hub.leave(&room, self.id, &handle.user).await;
        let done = match left {
            Err(Refusal::NotJoined) if forget => Ok(()),
            other => other,
        };
        let done = match done {
            Ok(()) if forget => self.state.hub.forget(handle, &room).await,
            other => other,
        };
        match done {
            Ok(()) => self.reply(&ServerEvent::Left { room, re: id }).await,
            Err(refusal) => self.refused(refusal, &room, id).await,
        }
    }

    async fn send(
        &mut self,
        handle: &Arc<SessionHandle>,
        room: String,
        text: String,
        reply_to: Option<u64>,
        id: Option<String>,
    ) -> Result<(), Ending> {
        let room_id = match self.joined_room(&room) {
            Some(room_id) => room_id,
            None => {
                return self
                    .not_joined(handle, &room, "join it before sending to it", id)
                    .await
            }
        };
        let text = match normalize_text(&text) {
            Ok(text) => text,
            Err(err @ TextError::TooLarge(_)) => {
                return self.error(ErrorCode::TooLarge, err.to_string(), id).await
            }
            Err(err) => return self.error(ErrorCode::BadRequest, err.to_string(), id).await,
        };
        if !self.rate.allow() {
            return self.rate_limited(id).await;
        }
        let stored = self
            .state
            .hub
            .send(room_id, handle.user.clone(), text, reply_to);
        let peer = self.peer;
        self.pending_acks.push_back(Box::pin(async move {
            Some(match stored.await {
                Ok(appended) => ServerEvent::Ack {
                    re: id,
                    room,
                    seq: appended.seq,
                    ts: appended.ts,
                },
                Err(Refusal::NoSuchRoom) => {
                    ServerEvent::error(ErrorCode::NoSuchRoom, format!("{room} was deleted"), id)
                }
                Err(Refusal::NoSuchMessage) => ServerEvent::error(
                    ErrorCode::NoSuchMessage,
                    format!("{room} has no message to reply to at that seq"),
                    id,
                ),
                Err(err) => {
                    tracing::error!(%peer, error = %err, "storing a message failed");
                    ServerEvent::error(ErrorCode::Internal, "the message could not be stored", id)
                }
            })
        }));
        Ok(())
    }

    /// The answer to a send, edit, deletion or reaction over the rate limit.
    async fn rate_limited(&mut self, id: Option<String>) -> Result<(), Ending> {
        let message = format!(
            "slow down: {} messages per second",
            self.state.config.send_rate
        );
        self.error(ErrorCode::RateLimited, message, id).await
    }

    /// An edit, deletion or reaction: needs the room joined (like a send)
    /// and takes from the same rate limit. Pipelined like sends; a
    /// success is answered by the session's own copy of the event, which
    /// arrives in order with the room's others.
    async fn change(
        &mut self,
        handle: &Arc<SessionHandle>,
        room: String,
        seq: u64,
        change: Change,
        id: Option<String>,
    ) -> Result<(), Ending> {
        let Some(room_id) = self.joined_room(&room) else {
            return self
                .not_joined(handle, &room, "join it before changing its messages", id)
                .await;
        };
        if !self.rate.allow() {
            return self.rate_limited(id).await;
        }
        let changed = self
            .state
            .hub
            .change(handle, room_id, seq, change, id.clone());
        let peer = self.peer;
        self.pending_acks.push_back(Box::pin(async move {
            let (code, message) = match changed.await {
                Ok(_) => return None,
                Err(Refusal::NoSuchRoom) => (ErrorCode::NoSuchRoom, format!("{room} was deleted")),
                Err(Refusal::NoSuchMessage) => (
                    ErrorCode::NoSuchMessage,
                    format!("{room} has no message {seq} (or it was deleted)"),
                ),
                Err(Refusal::Forbidden(why)) => (ErrorCode::Forbidden, why.to_owned()),
                Err(Refusal::BadRequest(why)) => (ErrorCode::BadRequest, why.to_owned()),
                Err(err) => {
                    tracing::error!(%peer, error = %err, "storing a change failed");
                    (
                        ErrorCode::Internal,
                        "the change could not be stored".to_owned(),
                    )
                }
            };
            Some(ServerEvent::error(code, message, id))
        }));
        Ok(())
    }

    /// Full-text search over the rooms the user may read (or one of them).
    async fn search(
        &mut self,
        viewer: &str,
        query: String,
        room: Option<String>,
        limit: Option<u64>,
        cursor: Option<String>,
        id: Option<String>,
    ) -> Result<(), Ending> {
        let words = match search_words(&query) {
            Ok(words) => words,
            Err(err) => return self.error(ErrorCode::BadRequest, err.to_string(), id).await,
        };
        let limit = match limit {
            None => DEFAULT_SEARCH,
            Some(0) => {
                return self
                    .error(ErrorCode::BadRequest, "limit must be at least 1", id)
                    .await
            }
            Some(n) => n.min(MAX_SEARCH as u64) as usize,
        };
        // The cursor is the position (in the store's order of all
        // messages) of the last result of the previous page.
        let before = match cursor.as_deref().map(str::parse::<i64>) {
            None => None,
            Some(Ok(before)) if before > 0 => Some(before),
            Some(_) => {
                return self
                    .error(ErrorCode::BadRequest, "not a cursor from this server", id)
                    .await
            }
        };
        match self
            .state
            .hub
            .search(viewer, words, room.as_deref(), before, limit)
            .await
        {
            Ok(page) => {
                self.reply(&ServerEvent::SearchResults {
                    query,
                    messages: page.messages,
                    next: page.next.map(|n| n.to_string()),
                    re: id,
                })
                .await
            }
            Err(refusal) => {
                self.refused(refusal, room.as_deref().unwrap_or_default(), id)
                    .await
            }
        }
    }

    async fn history(
        &mut self,
        viewer: &str,
        room: String,
        before: Option<u64>,
        limit: Option<u64>,
        id: Option<String>,
    ) -> Result<(), Ending> {
        if !is_valid_room(&room) {
            return self.invalid_room(id).await;
        }
        let limit = match limit {
            None => DEFAULT_PAGE,
            Some(0) => {
                return self
                    .error(ErrorCode::BadRequest, "limit must be at least 1", id)
                    .await
            }
            Some(n) => n.min(MAX_PAGE as u64) as usize,
        };
        match self.state.hub.history(viewer, &room, before, limit).await {
            Ok(page) => {
                self.reply(&ServerEvent::History {
                    room,
                    messages: page.messages,
                    has_more: page.has_more,
                    re: id,
                })
                .await
            }
            Err(refusal) => self.refused(refusal, &room, id).await,
        }
    }

    async fn delete_room(
        &mut self,
        handle: &Arc<SessionHandle>,
        room: String,
        id: Option<String>,
    ) -> Result<(), Ending> {
        // Admin rights are read again: they may have been taken away (or
        // the account deleted) since this session logged in.
        let admin = match self.state.hub.user(&handle.user).await {
            Ok(record) => record.is_some_and(|r| r.admin),
            Err(refusal) => return self.refused(refusal, &room, id).await,
        };
        if !admin {
            return self
                .error(ErrorCode::Forbidden, "only admins can delete rooms", id)
                .await;
        }
        match self.state.hub.delete_room(&room, self.id).await {
            Ok(()) => {
                tracing::info!(peer = %self.peer, room = %Untrusted(&room), "room deleted");
                self.forget_joined(&room);
                self.reply(&ServerEvent::RoomDeleted { room, re: id }).await
            }
            Err(refusal) => self.refused(refusal, &room, id).await,
        }
    }
}
