//! A mirror's pull loop (`lo directory serve --secondary-of PRIMARY`): every
//! refresh period (sooner if its statement would expire first) it asks its primary
//! for the entries written since the serial it holds ([`Request::Transfer`],
//! incremental like a DNS zone transfer, everything the first time), checks each
//! entry's signature and name, fetches the logic blobs it lacks (checked by hash),
//! and stores the whole pull in one transaction together with the primary's
//! freshness statement, which must vouch for exactly the contents that result.
//! Until then readers get the previous contents. A pull that does not add up is
//! not stored; the mirror then pulls everything again at once and swaps it in.
//! A pull is held in memory until it is stored (a first pull of a large directory
//! needs as much memory as its entries).

use crate::client::{Client, ClientError};
use crate::fresh::{EntryKey, Freshness};
use crate::protocol::{ErrorCode, Request, Response};
use crate::record::{Delegation, ObjectRecord, Signed};
use crate::server::{Directory, MirrorError, MirrorOf, unix_now};
use crate::store::Change;
use std::sync::Arc;
use std::time::Duration;

/// Transfers in a row that may bring nothing new before a pull gives up until the
/// next period (the primary answers so only while it is being written to).
const STALLED_TRANSFERS: usize = 20;

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
        if let Some(c) = &client {
            let mut outcome = pull(&directory, c, false).await;
            if let Err(PullError::Mirror(MirrorError::Differs { serial })) = &outcome {
                tracing::warn!(
                    "mirror of {}: its contents at serial {serial} differ from what the \
                     primary vouches for; pulling everything again",
                    of.primary
                );
                outcome = pull(&directory, c, true).await;
            }
            if let Err(e) = outcome {
                tracing::warn!("mirror of {}: {e}", of.primary);
                if matches!(e, PullError::Transport(_)) {
                    client = None;
                }
            }
        }
        tokio::time::sleep(next_pull(&directory, of.refresh)).await;
    }
}

/// The refresh period, or sooner: half the time the held statement has left, so
/// that a short validity on the primary does not leave the mirror without one.
fn next_pull(directory: &Directory, refresh: Duration) -> Duration {
    let left = directory
        .store()
        .freshness()
        .ok()
        .flatten()
        .and_then(|s| s.open().ok())
        .map(|f: Freshness| f.expires_at.saturating_sub(unix_now()));
    match left {
        Some(left) => {
            refresh.min(Duration::from_millis(left * 500).max(Duration::from_millis(200)))
        }
        None => refresh,
    }
}

#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error("{0}")]
    Transport(#[from] ClientError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error("the primary sent a bad transfer: {0}")]
    Bad(String),
}

/// One pull, from the serial the mirror holds (from 0 with `replace`), until the
/// primary says it is complete; then stored at once.
async fn pull(directory: &Arc<Directory>, client: &Client, replace: bool) -> Result<(), PullError> {
    let start = if replace {
        0
    } else {
        directory.store().serial().map_err(MirrorError::from)?
    };
    let mut since = start;
    let mut pulled: Vec<Change> = Vec::new();
    let mut stalled = 0;
    let (serial, statement) = loop {
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
        if complete {
            let statement = statement.ok_or_else(|| {
                PullError::Bad("a complete transfer without a freshness statement".into())
            })?;
            pulled.extend(changes);
            break (serial, statement);
        }
        if changes.is_empty() && serial <= since {
            stalled += 1;
            if stalled >= STALLED_TRANSFERS {
                return Err(PullError::Bad(format!(
                    "no progress after {STALLED_TRANSFERS} transfers from serial {since}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        stalled = 0;
        since = serial;
        pulled.extend(changes);
    };
    let directory = directory.clone();
    tokio::task::spawn_blocking(move || {
        directory.install_pull(&pulled, serial, &statement, replace)
    })
    .await
    .map_err(|e| PullError::Bad(format!("storing the pull failed: {e}")))??;
    Ok(())
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
        let bytes = match client.request(&Request::FetchBlob(hash)).await {
            Ok(Response::Blob(bytes)) => bytes,
            // The primary lacks it too (repaired or damaged store): the record is
            // mirrored as it is; clients fetching its logic are told it is missing.
            Err(ClientError::Refused {
                code: ErrorCode::NotFound,
                message,
            }) => {
                tracing::warn!("mirror: the logic of {} is missing: {message}", record.name);
                continue;
            }
            Ok(other) => return Err(PullError::Bad(format!("answered {other:?}"))),
            Err(e) => return Err(e.into()),
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
