//! `ledger`: a bank ledger of named accounts. `open` and `transfer` are updates;
//! `balance`, `total`, `accounts`, `applied` and `transfers` are queries of the
//! local replica.
//!
//! Meant for a total-order driver (`vsync`): every replica applies the same
//! updates in the same order, so every replica refuses the same transfers. A
//! refused update is a deterministic abort: `apply` returns `Err` before changing
//! anything, and the driver tells the caller.
//!
//! Invariants, after every update, on every replica:
//! - money is conserved: the sum of all balances equals the sum of all opening
//!   balances (`total`); only `open` changes it;
//! - no balance is ever negative (balances are `u64`, and overdrafts are refused);
//! - a transfer id is applied at most once, so a client may retry a transfer whose
//!   outcome it did not learn without moving the money twice.

use liveobjects_guest::{EventContext, LiveObject};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

wit_bindgen::generate!({
    inline: r#"
        package liveobjects:ledger@0.1.0;

        /// A bank ledger: accounts with balances in whole units (cents, say),
        /// transfers between them, no overdrafts.
        interface ledger {
            /// Open `account` with a balance of `initial`: the only update that changes
            /// the total. Refused here if the name is empty or longer than 64 bytes;
            /// refused when applied (on every replica alike) if the account exists,
            /// the ledger holds 10,000 accounts already, or the total would overflow.
            open: func(account: string, initial: u64) -> result<_, string>;
            /// Move `amount` from `from` to `to`, once: `id` names the transfer, and a
            /// transfer whose `id` was applied before is refused as already applied,
            /// so a client may retry with the same `id`. (`from` is a WIT keyword,
            /// hence `%from` below; the parameter's name is `from`.) Refused here if `id` or a name
            /// is empty or longer than 64 bytes, `from` equals `to`, or `amount` is 0;
            /// refused when applied if an account does not exist or `from` holds less
            /// than `amount` (no overdrafts). A refused transfer changes nothing and
            /// its `id` is not remembered.
            transfer: func(id: string, %from: string, to: string, amount: u64) -> result<_, string>;
            /// The balance of `account` at this replica, if it exists.
            balance: func(account: string) -> option<u64>;
            /// The sum of all balances, which is the sum of all opening balances.
            total: func() -> u64;
            /// Every account and its balance, by name.
            accounts: func() -> list<tuple<string, u64>>;
            /// Whether the transfer `id` was applied.
            applied: func(id: string) -> bool;
            /// Number of transfers applied.
            transfers: func() -> u64;
        }

        world ledger-object {
            export ledger;
        }
    "#,
});

use exports::liveobjects::ledger::ledger::Guest;

/// Longest account name or transfer id, in bytes.
const MAX_NAME_BYTES: usize = 64;
/// Most accounts kept, so the state stays bounded; opening more is refused.
const MAX_ACCOUNTS: usize = 10_000;

/// The replicated state. Ordered collections, so the snapshot bytes are the same on
/// every replica.
#[derive(Default, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Ledger {
    /// Account name -> balance.
    balances: BTreeMap<String, u64>,
    /// Ids of the transfers applied. Kept forever: forgetting one would let a late
    /// retry of that transfer move the money a second time.
    applied: BTreeSet<String>,
    /// Sum of every opening balance; equal to the sum of `balances` at all times.
    minted: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Event {
    Open {
        account: String,
        initial: u64,
    },
    Transfer {
        id: String,
        from: String,
        to: String,
        amount: u64,
    },
}

/// What a successful update tells local watchers: `notify(topic, detail)`.
type Notice = (&'static str, String);

/// An account name or transfer id must be 1 to [`MAX_NAME_BYTES`] bytes.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} is {} bytes, the limit is {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    Ok(())
}

/// The checks of a transfer that do not depend on the state, made both by the
/// caller's replica (to refuse early) and at apply time (a replica must not trust
/// another replica's code to have made them).
fn check_transfer_args(id: &str, from: &str, to: &str, amount: u64) -> Result<(), String> {
    check_name("transfer id", id)?;
    check_name("source account name", from)?;
    check_name("destination account name", to)?;
    if from == to {
        return Err(format!(
            "transfer `{id}` refused: from and to are both `{from}`"
        ));
    }
    if amount == 0 {
        return Err(format!(
            "transfer `{id}` refused: the amount from `{from}` to `{to}` is 0"
        ));
    }
    Ok(())
}

impl Ledger {
    /// Apply one event: the whole logic of the object, free of host calls so it runs
    /// in native unit tests. Every check comes before the first change, so an `Err`
    /// leaves the state as it was.
    fn execute(&mut self, event: Event) -> Result<Notice, String> {
        match event {
            Event::Open { account, initial } => self.open(account, initial),
            Event::Transfer {
                id,
                from,
                to,
                amount,
            } => self.transfer(id, from, to, amount),
        }
    }

    fn open(&mut self, account: String, initial: u64) -> Result<Notice, String> {
        check_name("account name", &account)?;
        if let Some(balance) = self.balances.get(&account) {
            return Err(format!(
                "account `{account}` already exists (balance {balance})"
            ));
        }
        if self.balances.len() >= MAX_ACCOUNTS {
            return Err(format!(
                "cannot open `{account}`: the ledger holds {MAX_ACCOUNTS} accounts already"
            ));
        }
        let minted = self.minted.checked_add(initial).ok_or_else(|| {
            format!(
                "cannot open `{account}` with {initial}: the total {} would overflow",
                self.minted
            )
        })?;
        self.minted = minted;
        let detail = format!("{account} opened with {initial}");
        self.balances.insert(account, initial);
        Ok(("open", detail))
    }

    fn transfer(
        &mut self,
        id: String,
        from: String,
        to: String,
        amount: u64,
    ) -> Result<Notice, String> {
        check_name("transfer id", &id)?;
        // Before the other checks: a retry must learn that its first attempt went
        // through, even if the balances since make the same transfer impossible.
        if self.applied.contains(&id) {
            return Err(format!(
                "transfer `{id}` ({amount} from `{from}` to `{to}`) already applied"
            ));
        }
        check_transfer_args(&id, &from, &to, amount)?;
        let unknown = |account: &str| format!("transfer `{id}` refused: no account `{account}`");
        let from_balance = *self.balances.get(&from).ok_or_else(|| unknown(&from))?;
        let to_balance = *self.balances.get(&to).ok_or_else(|| unknown(&to))?;
        let new_from = from_balance.checked_sub(amount).ok_or_else(|| {
            format!(
                "transfer `{id}` refused: `{from}` has {from_balance}, cannot send {amount} \
                 to `{to}` (no overdrafts)"
            )
        })?;
        // Cannot fail while the balances sum to `minted`, a u64; checked all the same
        // so a broken invariant aborts instead of wrapping.
        let new_to = to_balance.checked_add(amount).ok_or_else(|| {
            format!(
                "transfer `{id}` refused: `{to}` has {to_balance}, receiving {amount} \
                 would overflow"
            )
        })?;
        let detail = format!("{id}: {amount} from {from} to {to}");
        self.balances.insert(from, new_from);
        self.balances.insert(to, new_to);
        self.applied.insert(id);
        Ok(("transfer", detail))
    }
}

impl LiveObject for Ledger {
    type Event = Event;

    fn apply(&mut self, event: Event, _ctx: &EventContext) -> Result<(), String> {
        let (topic, detail) = self.execute(event)?;
        liveobjects_guest::notify(topic, &detail);
        Ok(())
    }
}

impl Guest for Ledger {
    fn open(account: String, initial: u64) -> Result<(), String> {
        check_name("account name", &account)?;
        Ledger::emit(&Event::Open { account, initial });
        Ok(())
    }

    fn transfer(id: String, from: String, to: String, amount: u64) -> Result<(), String> {
        check_transfer_args(&id, &from, &to, amount)?;
        Ledger::emit(&Event::Transfer {
            id,
            from,
            to,
            amount,
        });
        Ok(())
    }

    fn balance(account: String) -> Option<u64> {
        Ledger::read(|l| l.balances.get(&account).copied())
    }

    fn total() -> u64 {
        Ledger::read(|l| l.minted)
    }

    fn accounts() -> Vec<(String, u64)> {
        Ledger::read(|l| l.balances.iter().map(|(a, b)| (a.clone(), *b)).collect())
    }

    fn applied(id: String) -> bool {
        Ledger::read(|l| l.applied.contains(&id))
    }

    fn transfers() -> u64 {
        Ledger::read(|l| l.applied.len() as u64)
    }
}

liveobjects_guest::export_object!(Ledger);
export!(Ledger);

#[cfg(test)]
mod tests {
    use super::*;

    fn open(ledger: &mut Ledger, account: &str, initial: u64) -> Result<Notice, String> {
        ledger.execute(Event::Open {
            account: account.into(),
            initial,
        })
    }

    fn transfer(
        ledger: &mut Ledger,
        id: &str,
        from: &str,
        to: &str,
        amount: u64,
    ) -> Result<Notice, String> {
        ledger.execute(Event::Transfer {
            id: id.into(),
            from: from.into(),
            to: to.into(),
            amount,
        })
    }

    /// alice 100, bob 50, carol 0.
    fn three_accounts() -> Ledger {
        let mut ledger = Ledger::default();
        open(&mut ledger, "alice", 100).unwrap();
        open(&mut ledger, "bob", 50).unwrap();
        open(&mut ledger, "carol", 0).unwrap();
        ledger
    }

    /// Apply `event` expecting a refusal whose message contains `expected`, and
    /// check it changed nothing.
    fn assert_refused(ledger: &mut Ledger, event: Event, expected: &str) {
        let before = ledger.clone();
        let err = ledger.execute(event).expect_err("should be refused");
        assert!(
            err.contains(expected),
            "`{err}` should mention `{expected}`"
        );
        assert_eq!(*ledger, before, "a refused event changed the state");
    }

    fn sum_of_balances(ledger: &Ledger) -> u64 {
        ledger.balances.values().sum()
    }

    /// splitmix64: a seeded generator for the random workload, no dependency needed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            liveobjects_guest::aggregate::uniform_hash(self.0)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn transfer_moves_money_and_remembers_its_id() {
        let mut ledger = three_accounts();
        transfer(&mut ledger, "t1", "alice", "carol", 30).unwrap();
        assert_eq!(ledger.balances["alice"], 70);
        assert_eq!(ledger.balances["carol"], 30);
        assert!(ledger.applied.contains("t1"));
        assert_eq!(ledger.applied.len(), 1);
        assert_eq!(ledger.minted, 150);
    }

    #[test]
    fn random_transfers_conserve_the_total() {
        for seed in 0..10 {
            let mut rng = Rng(seed);
            let mut ledger = Ledger::default();
            let names: Vec<String> = (0..6).map(|i| format!("acct{i}")).collect();
            let mut opened = 0u64;
            for name in &names {
                let initial = rng.below(1_000);
                open(&mut ledger, name, initial).unwrap();
                opened += initial;
            }
            let mut applied = 0u64;
            for i in 0..2_000 {
                let from = &names[rng.below(6) as usize];
                let to = &names[rng.below(6) as usize];
                // Amounts up to 600 overdraw often; from == to and 0 are refused too.
                let amount = rng.below(600);
                let before = ledger.clone();
                match transfer(&mut ledger, &format!("t{i}"), from, to, amount) {
                    Ok(_) => applied += 1,
                    Err(_) => assert_eq!(ledger, before, "seed {seed}: refusal changed state"),
                }
                assert_eq!(
                    sum_of_balances(&ledger),
                    opened,
                    "seed {seed}, transfer {i}"
                );
                assert_eq!(ledger.minted, opened);
            }
            assert_eq!(ledger.applied.len() as u64, applied);
            assert!(
                applied > 100,
                "seed {seed}: too few transfers applied ({applied})"
            );
        }
    }

    #[test]
    fn overdraft_is_refused_and_leaves_the_state_unchanged() {
        let mut ledger = three_accounts();
        let overdraft = Event::Transfer {
            id: "t1".into(),
            from: "bob".into(),
            to: "alice".into(),
            amount: 51,
        };
        assert_refused(&mut ledger, overdraft, "`bob` has 50, cannot send 51");
        assert!(!ledger.applied.contains("t1"));
        // Draining the account exactly is not an overdraft.
        transfer(&mut ledger, "t2", "bob", "alice", 50).unwrap();
        assert_eq!(ledger.balances["bob"], 0);
    }

    #[test]
    fn duplicate_transfer_id_is_refused_as_already_applied() {
        let mut ledger = three_accounts();
        transfer(&mut ledger, "t1", "alice", "bob", 10).unwrap();
        let retry = Event::Transfer {
            id: "t1".into(),
            from: "alice".into(),
            to: "bob".into(),
            amount: 10,
        };
        assert_refused(
            &mut ledger,
            retry,
            "`t1` (10 from `alice` to `bob`) already applied",
        );
        // Even a different transfer reusing the id.
        let reuse = Event::Transfer {
            id: "t1".into(),
            from: "bob".into(),
            to: "carol".into(),
            amount: 1,
        };
        assert_refused(&mut ledger, reuse, "already applied");
        assert_eq!(ledger.balances["alice"], 90);
        assert_eq!(ledger.balances["bob"], 60);
        assert_eq!(ledger.applied.len(), 1);
    }

    #[test]
    fn refused_transfer_id_may_be_retried() {
        let mut ledger = three_accounts();
        transfer(&mut ledger, "t1", "carol", "alice", 5).unwrap_err();
        transfer(&mut ledger, "t2", "alice", "carol", 5).unwrap();
        transfer(&mut ledger, "t1", "carol", "alice", 5).unwrap();
        assert_eq!(ledger.balances["carol"], 0);
    }

    #[test]
    fn transfer_with_unknown_account_same_accounts_or_zero_amount_is_refused() {
        let mut ledger = three_accounts();
        let event = |from: &str, to: &str, amount| Event::Transfer {
            id: "t1".into(),
            from: from.into(),
            to: to.into(),
            amount,
        };
        assert_refused(&mut ledger, event("dave", "alice", 1), "no account `dave`");
        assert_refused(&mut ledger, event("alice", "dave", 1), "no account `dave`");
        assert_refused(&mut ledger, event("alice", "alice", 1), "both `alice`");
        assert_refused(&mut ledger, event("alice", "bob", 0), "is 0");
        let empty_id = Event::Transfer {
            id: String::new(),
            from: "alice".into(),
            to: "bob".into(),
            amount: 1,
        };
        assert_refused(&mut ledger, empty_id, "transfer id is empty");
    }

    #[test]
    fn open_refuses_existing_empty_and_long_names() {
        let mut ledger = three_accounts();
        let event = |account: String| Event::Open {
            account,
            initial: 7,
        };
        assert_refused(&mut ledger, event("alice".into()), "already exists");
        assert_refused(&mut ledger, event(String::new()), "account name is empty");
        assert_refused(&mut ledger, event("x".repeat(65)), "65 bytes");
        open(&mut ledger, &"x".repeat(64), 7).unwrap();
        assert_eq!(ledger.minted, 157);
    }

    #[test]
    fn open_refuses_a_total_that_would_overflow() {
        let mut ledger = Ledger::default();
        open(&mut ledger, "whale", u64::MAX).unwrap();
        let event = Event::Open {
            account: "minnow".into(),
            initial: 1,
        };
        assert_refused(&mut ledger, event, "would overflow");
        open(&mut ledger, "empty", 0).unwrap();
    }
}
