//! `lo replay`: re-execute a flight recording (`lo node --record DIR`) step by step,
//! or compare two replicas' recordings (`--diff`).

use anyhow::{Context, Result, bail};
use clap::Args;
use liveobjects_host::runtime::Runtime;
use liveobjects_host::runtime::recorder::StartReason;
use liveobjects_host::runtime::replay::{self, Difference, Replay, Step};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;

/// `lo replay`
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A replica's recording: its folder under the node's --record directory
    /// (`DIR/<object>-<member>`), or one of its `seg-*.lorec` segments.
    recording: PathBuf,
    /// Stop after this event (numbered as the recording counts: from the
    /// replica's first).
    #[arg(long, value_name = "N")]
    until: Option<u64>,
    /// Print the state's size and SHA-256 after each event (a snapshot each).
    #[arg(long)]
    state: bool,
    /// Call this method after each event and print its results (a query; what
    /// an update would multicast goes nowhere).
    #[arg(long, value_name = "METHOD")]
    query: Option<String>,
    /// An argument of --query, in WAVE text form (repeat for more).
    #[arg(
        long,
        value_name = "WAVE",
        requires = "query",
        allow_hyphen_values = true
    )]
    query_arg: Vec<String>,
    /// Instead: replay this second recording of the same object beside the first
    /// and print the first event after which their states differ (exit status 1
    /// if they do).
    #[arg(long, value_name = "RECORDING")]
    diff: Option<PathBuf>,
    /// The component the recording ran (default: the copy the node kept in the
    /// recording directory's `logic/`).
    #[arg(long, value_name = "FILE")]
    logic: Option<PathBuf>,
    /// Replay the whole frames of a recording whose last frame is torn (a node
    /// killed mid-write) instead of refusing it.
    #[arg(long)]
    truncated_ok: bool,
    /// Print only the summary, not each step.
    #[arg(long)]
    quiet: bool,
}

fn open(runtime: &Runtime, args: &ReplayArgs, path: &std::path::Path) -> Result<Replay> {
    super::slow_step(&format!("loading {}", path.display()), || {
        Replay::open(runtime, path, args.logic.as_deref(), args.truncated_ok)
    })
    .with_context(|| format!("cannot replay {}", path.display()))
}

/// Run `lo replay`.
pub fn replay(runtime: &Runtime, args: ReplayArgs) -> Result<()> {
    let mut first = open(runtime, &args, &args.recording)?;
    if let Some(other) = &args.diff {
        let mut second = open(runtime, &args, other)?;
        if first.identity().object != second.identity().object {
            bail!(
                "{} records {} and {} records {}: --diff compares two replicas of one object",
                args.recording.display(),
                first.identity().object,
                other.display(),
                second.identity().object
            );
        }
        let difference = replay::diff(&mut first, &mut second)?;
        println!(
            "{} ({}) vs {} ({}): {difference}",
            args.recording.display(),
            first.identity().member,
            other.display(),
            second.identity().member
        );
        return match difference {
            Difference::None { .. } => Ok(()),
            _ => std::process::exit(1),
        };
    }
    let query_args: Vec<&str> = args.query_arg.iter().map(String::as_str).collect();
    let mut out = std::io::stdout().lock();
    let (mut events, mut views, mut calls, mut segments) = (0u64, 0u64, 0u64, 0u64);
    if !args.quiet {
        writeln!(
            out,
            "replaying {} of {} (member {})",
            args.recording.display(),
            first.identity().object,
            first.identity().member
        )?;
    }
    while let Some(step) = first.step()? {
        let mut stop = false;
        match step {
            Step::Event {
                number,
                event,
                outcome,
            } => {
                events += 1;
                stop = args.until.is_some_and(|until| number >= until);
                if args.quiet {
                    if stop {
                        break;
                    }
                    continue;
                }
                write!(
                    out,
                    "event {number}: {} seq {} t={} {} B: {outcome}",
                    event.sender,
                    event.seq,
                    event.timestamp_ms,
                    event.payload.len()
                )?;
                if args.state {
                    let state = first.state()?;
                    write!(
                        out,
                        "  state {} B sha256 {}",
                        state.len(),
                        hex::encode(Sha256::digest(&state))
                    )?;
                }
                writeln!(out)?;
                if let Some(method) = &args.query {
                    match first.query(method, &query_args) {
                        Ok(results) => writeln!(out, "  {method} = {}", results.join(", "))?,
                        Err(e) => writeln!(out, "  {method} failed: {e}")?,
                    }
                }
            }
            Step::View {
                id,
                members,
                outcome,
            } => {
                views += 1;
                if !args.quiet {
                    writeln!(out, "view {id} [{}]: {outcome}", members.join(", "))?;
                }
            }
            Step::Call { call } => {
                calls += 1;
                if !args.quiet {
                    let result = match &call.result {
                        Ok(results) => format!("[{}]", results.join(", ")),
                        Err(e) => format!("error: {e}"),
                    };
                    writeln!(
                        out,
                        "call {}({}) -> {result}",
                        call.method,
                        call.args.join(", ")
                    )?;
                }
            }
            Step::Digest { events, sha256 } => {
                if !args.quiet {
                    writeln!(
                        out,
                        "state after event {events} matches the recording (sha256 {})",
                        hex::encode(sha256)
                    )?;
                }
            }
            Step::Segment { path, reason } => {
                segments += 1;
                if !args.quiet {
                    let why = match reason {
                        StartReason::Init => "starting over from its snapshot (a state transfer)",
                        StartReason::Rotation => "continuing from the same state",
                    };
                    writeln!(out, "segment {}: {why}", path.display())?;
                }
            }
        }
        if stop {
            break;
        }
    }
    writeln!(
        out,
        "replayed {events} events, {views} view changes and {calls} calls{}; {} state \
         digests matched the recording{}",
        if segments > 0 {
            format!(" across {} segments", segments + 1)
        } else {
            String::new()
        },
        first.digests_matched(),
        if first.truncated() {
            " (its torn last frame was left out)"
        } else {
            ""
        }
    )?;
    Ok(())
}
