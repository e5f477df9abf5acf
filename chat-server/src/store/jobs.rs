//! The writes a client waits for, as both backends' writers queue them
//! and fold them into one transaction (group commit), and how each is
//! answered once that transaction committed or failed.

use tokio::sync::oneshot;

use super::{
    Answer, Appended, Change, Changed, RoomHead, RoomId, SessionId, StoreError, UserRecord,
};

/// A write a client waits for, folded with others into one transaction.
pub(super) enum WriteJob {
    Append {
        room: RoomId,
        user: String,
        text: String,
        reply_to: Option<u64>,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    },
    Change {
        room: RoomId,
        seq: u64,
        user: String,
        admin: bool,
        change: Change,
        answer: Option<Answer>,
        reply: oneshot::Sender<Result<Changed, StoreError>>,
    },
    OpenRoom {
        name: String,
        reply: oneshot::Sender<Result<RoomHead, StoreError>>,
    },
    DeleteRoom {
        name: String,
        requested_by: SessionId,
        reply: oneshot::Sender<Result<RoomId, StoreError>>,
    },
    CreateUser {
        user: UserRecord,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// What a job produced inside the transaction, answered after commit.
#[derive(Debug)]
pub(super) enum Outcome {
    Appended(Appended),
    Changed(Changed),
    Opened(RoomHead),
    Deleted(RoomId),
    Done,
    Refused(StoreError),
}

pub(super) fn answer(job: WriteJob, outcome: Result<Outcome, StoreError>) {
    // A dropped receiver means the session went away; nothing to tell.
    let refused = |outcome| match outcome {
        Ok(Outcome::Refused(e)) | Err(e) => e,
        Ok(_) => StoreError::Closed,
    };
    match job {
        WriteJob::Append { reply, .. } => {
            let _ = reply.send(match outcome {
                Ok(Outcome::Appended(appended)) => Ok(appended),
                other => Err(refused(other)),
            });
        }
        WriteJob::Change { reply, .. } => {
            let _ = reply.send(match outcome {
                Ok(Outcome::Changed(changed)) => Ok(changed),
                other => Err(refused(other)),
            });
        }
        WriteJob::OpenRoom { reply, .. } => {
            let _ = reply.send(match outcome {
                Ok(Outcome::Opened(head)) => Ok(head),
                other => Err(refused(other)),
            });
        }
        WriteJob::DeleteRoom { reply, .. } => {
            let _ = reply.send(match outcome {
                Ok(Outcome::Deleted(id)) => Ok(id),
                other => Err(refused(other)),
            });
        }
        WriteJob::CreateUser { reply, .. } => {
            let _ = reply.send(match outcome {
                Ok(Outcome::Done) => Ok(()),
                other => Err(refused(other)),
            });
        }
    }
}
