//! A mirror's pull loop (`lo directory serve --secondary-of PRIMARY`): every
//! refresh period it asks its primary for the entries written since the serial it
//! holds ([`Request::Transfer`], incremental like a DNS zone transfer, everything
//! the first time), checks each entry's signature and name, fetches the logic blobs
//! it lacks (checked by hash), and stores the pull together with the primary's
//! freshness statement, which must vouch for exactly the contents it then holds.
//! Contents that do not add up are dropped and pulled again from serial 0.

use crate::client::Client;
use crate::fresh::EntryKey;
use crate::protocol::{Request, Response};
use crate::record::{Delegation, ObjectRecord, Signed};
use crate::server::{Directory, MirrorError, MirrorOf};
use crate::store::Change;
use std::sync::Arc;

/// Pull from `of.primary` into `directory` until the task is aborted.
pub(crate) async fn pull_loop(directory: Arc<Directory>, of: MirrorOf) {
    let mut client: Option<Client> = None;
    loop {
        if client.is_none() {
            match Client::connect(of.primary, of.root).await {
                Ok(c) => client = Some(c),
                Err(e) => tracing::warn!("mirror: {e}"),
            }
        }
        if let Some(c) = &client
            && let Err(e) = pull(&directory, c).await
        {
            tracing::warn!("mirror of {}: {e}", of.primary);
            if matches!(e, PullError::Transport(_)) {
                client = None;
            }
        }
        tokio::time::sleep(of.refresh).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error("{0}")]
    Transport(#[from] crate::client::ClientError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error("the primary sent a bad transfer: {0}")]
    Bad(String),
}

/// One pull, until the primary says it is complete.
async fn pull(directory: &Arc<Directory>, client: &Client) -> Result<(), PullError> {
    loop {
        let since = directory.store().serial().map_err(MirrorError::from)?;
        let response = client.request(&Request::Transfer { since }).await?;
        let Response::Transfer {
            changes,
            serial,
            complete,
            statement,
        } = response
        else {
            return Err(PullError::Bad(format!("answered {response:?}")));
        };
        check_changes(&changes, since, serial)?;
        fetch_blobs(directory, client, &changes).await?;
        let statement = match (complete, statement) {
            (true, None) => {
                return Err(PullError::Bad(
                    "a complete transfer without a freshness statement".into(),
                ));
            }
            (_, statement) => statement.filter(|_| complete),
        };
        let installed = {
            let directory = directory.clone();
            tokio::task::spawn_blocking(move || {
                directory.install_pull(&changes, serial, statement.as_ref())
            })
            .await
            .map_err(|e| PullError::Bad(format!("storing the pull failed: {e}")))?
        };
        match installed {
            Err(MirrorError::Differs { serial }) => {
                directory
                    .store()
                    .clear_entries()
                    .map_err(MirrorError::from)?;
                directory.forget_fresh();
                return Err(MirrorError::Differs { serial }.into());
            }
            Err(e) => return Err(e.into()),
            Ok(()) if complete => return Ok(()),
            Ok(()) => {}
        }
    }
}

/// Serials rise within `(since, serial]`, and each entry is a signed value of its
/// kind under its own name (whether the signer owns the zone is the clients'
/// check, as for anything a server sends).
fn check_changes(changes: &[Change], since: u64, serial: u64) -> Result<(), PullError> {
    let mut last = since;
    for change in changes {
        if change.serial <= last || change.serial > serial {
            return Err(PullError::Bad(format!(
                "entry serial {} out of order (after {last}, up to {serial})",
                change.serial
            )));
        }
        last = change.serial;
        let (named, valid) = match &change.key {
            EntryKey::Record(name) => {
                let signed = Signed::<ObjectRecord>::from_bytes(&change.value)
                    .map_err(|e| PullError::Bad(format!("{}: {e}", change.key)))?;
                let record = signed
                    .open()
                    .map_err(|e| PullError::Bad(format!("{}: {e}", change.key)))?;
                (&record.name == name, signed.signature_valid())
            }
            EntryKey::Delegation(zone) => {
                let signed = Signed::<Delegation>::from_bytes(&change.value)
                    .map_err(|e| PullError::Bad(format!("{}: {e}", change.key)))?;
                let delegation = signed
                    .open()
                    .map_err(|e| PullError::Bad(format!("{}: {e}", change.key)))?;
                (&delegation.zone == zone, signed.signature_valid())
            }
        };
        if !named || !valid {
            return Err(PullError::Bad(format!(
                "the {} is {}",
                change.key,
                if named {
                    "not validly signed"
                } else {
                    "stored under another name"
                }
            )));
        }
    }
    Ok(())
}

/// Fetch the logic of the pulled records that this mirror lacks.
async fn fetch_blobs(
    directory: &Directory,
    client: &Client,
    changes: &[Change],
) -> Result<(), PullError> {
    for change in changes {
        if !matches!(change.key, EntryKey::Record(_)) {
            continue;
        }
        let record = Signed::<ObjectRecord>::from_bytes(&change.value)
            .and_then(|s| s.open())
            .map_err(|e| PullError::Bad(e.to_string()))?;
        let hash = record.logic.hash;
        if directory
            .store()
            .has_blob(&hash)
            .map_err(MirrorError::from)?
        {
            continue;
        }
        let bytes = match client.request(&Request::FetchBlob(hash)).await? {
            Response::Blob(bytes) => bytes,
            other => return Err(PullError::Bad(format!("answered {other:?}"))),
        };
        crate::verify::verify_logic(&record, &bytes)
            .map_err(|e| PullError::Bad(format!("logic of {}: {e}", record.name)))?;
        directory
            .store()
            .put_blob(&hash, &bytes)
            .map_err(MirrorError::from)?;
    }
    Ok(())
}
