//! `cardtable`: a game of slap in which every replica agrees who won each race.
//! `sit`, `flip` and `slap` are updates; `round`, `top`, `slappable`, `pile-size`,
//! `winner` and `scores` are queries of the local replica.
//!
//! The rules. Players sit at the table (at most 8). Each `flip` puts one card on
//! the pile and starts a new round. The pile is *slappable* when its top card is a
//! jack or has the rank of the card under it (a pair). The first slap applied for
//! the current round while it is slappable wins the pile: its cards go to the
//! slapper's score and the pile is empty until the next flip.
//!
//! Meant for a total-order driver (`vsync`): players race, and since every replica
//! applies the slaps in the same order, all agree which slap came first. A refused
//! update is a deterministic abort (`apply` returns `Err`, the state is unchanged,
//! the driver tells the caller): a slap for a round already won, for a past round,
//! or for a round not flipped yet. A slap for the current round while it is not
//! slappable is *not* refused: it is applied, and what it does is cost the slapper
//! a point (an abort could not change the score).

use liveobjects_guest::aggregate::uniform_hash;
use liveobjects_guest::{EventContext, LiveObject};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

wit_bindgen::generate!({
    inline: r#"
        package liveobjects:cardtable@0.1.0;

        /// A table for slap: players race to slap the pile when its top card is a
        /// jack or pairs the card under it. Cards are written rank then suit: ranks
        /// A, 2 to 10, J, Q, K; suits S, H, D, C (spades, hearts, diamonds, clubs),
        /// e.g. "JS", "10H", "AC".
        interface cardtable {
            /// Seat `player`. Refused here if the name is empty or longer than 64
            /// bytes; refused when applied if `player` is seated already or 8
            /// players are.
            sit: func(player: string) -> result<_, string>;
            /// Flip the next card onto the pile and start a new round. The card is
            /// drawn from all 52 with equal chance (a bottomless shoe), by a hash of
            /// the round and the event's sender, sequence number and timestamp, so
            /// every replica draws the same card.
            flip: func();
            /// `player` slaps the pile of `round`. When applied: the first slap for
            /// the current round while the pile is slappable wins the pile (its
            /// cards are added to the player's score); a slap for a round already
            /// won is refused ("round R already won by P"), as is a slap for a past
            /// round, a round not flipped yet, or by a player not seated; a slap for
            /// the current round while the pile is not slappable is applied and
            /// costs the player a point. Refused here if the name is empty or longer
            /// than 64 bytes.
            slap: func(player: string, round: u64) -> result<_, string>;
            /// The current round: the number of flips so far (0 before the first).
            round: func() -> u64;
            /// The top card of the pile, if the pile is not empty.
            top: func() -> option<string>;
            /// Whether a slap for the current round would win the pile now.
            slappable: func() -> bool;
            /// Cards in the pile.
            pile-size: func() -> u64;
            /// Who won `round`, if anyone did.
            winner: func(round: u64) -> option<string>;
            /// Every seated player and their score (cards won minus penalties), by
            /// name.
            scores: func() -> list<tuple<string, s64>>;
        }

        world cardtable-object {
            export cardtable;
        }
    "#,
});

use exports::liveobjects::cardtable::cardtable::Guest;

/// Most players at the table.
const MAX_PLAYERS: usize = 8;
/// Longest player name, in bytes.
const MAX_NAME_BYTES: usize = 64;
/// Rank index of the jack (ranks run ace, 2, ..., 10, jack, queen, king).
const JACK: u8 = 10;

/// A playing card: `rank + 13 * suit`, below 52.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Card(u8);

impl Card {
    fn rank(self) -> u8 {
        self.0 % 13
    }

    /// Rank then suit, e.g. "JS", "10H", "AC".
    fn label(self) -> String {
        const RANKS: [&str; 13] = [
            "A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K",
        ];
        const SUITS: [&str; 4] = ["S", "H", "D", "C"];
        format!(
            "{}{}",
            RANKS[self.rank() as usize],
            SUITS[(self.0 / 13) as usize]
        )
    }

    /// The card of a flip: a hash of everything that identifies the flip, so every
    /// replica draws the same card without a random source. (WASI randomness would
    /// agree too, but it is not available to native unit tests.)
    fn draw(round: u64, ctx: &EventContext) -> Card {
        let mut h = fnv(0xcbf2_9ce4_8422_2325, &round.to_le_bytes());
        h = fnv(h, &(ctx.sender.len() as u64).to_le_bytes());
        h = fnv(h, ctx.sender.as_bytes());
        h = fnv(h, &ctx.seq.to_le_bytes());
        h = fnv(h, &ctx.timestamp_ms.to_le_bytes());
        // FNV alone spreads poorly into the low bits the modulo keeps.
        Card((uniform_hash(h) % 52) as u8)
    }
}

/// FNV-1a, 64 bits: small and deterministic (no std hasher randomness).
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The replicated state. Only the top two cards of the pile matter to the rules, so
/// the pile is kept as those and a count, and the state stays small however long
/// nobody slaps.
#[derive(Default, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Table {
    /// Seated player -> score (cards won minus penalty points).
    scores: BTreeMap<String, i64>,
    /// The current round: flips so far.
    round: u64,
    /// The pile's top card, if the pile is not empty.
    top: Option<Card>,
    /// The card under the top one, if the pile holds two or more.
    under: Option<Card>,
    /// Cards in the pile.
    pile: u64,
    /// Round -> the player who won it, for every round won.
    winners: BTreeMap<u64, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Event {
    Sit(String),
    Flip,
    Slap { player: String, round: u64 },
}

/// What a successful update tells local watchers: `notify(topic, detail)`.
type Notice = (&'static str, String);

/// A player name must be 1 to [`MAX_NAME_BYTES`] bytes.
fn check_player(player: &str) -> Result<(), String> {
    if player.is_empty() {
        return Err("player name is empty".into());
    }
    if player.len() > MAX_NAME_BYTES {
        return Err(format!(
            "player name is {} bytes, the limit is {MAX_NAME_BYTES}",
            player.len()
        ));
    }
    Ok(())
}

impl Table {
    /// Whether a slap for the current round would win the pile.
    fn slappable(&self) -> bool {
        let Some(top) = self.top else {
            return false;
        };
        let pair = self.under.is_some_and(|under| under.rank() == top.rank());
        !self.winners.contains_key(&self.round) && (top.rank() == JACK || pair)
    }

    /// Apply one event: the whole logic of the object, free of host calls so it runs
    /// in native unit tests. Every refusal comes before the first change, so an `Err`
    /// leaves the state as it was.
    fn execute(&mut self, event: Event, ctx: &EventContext) -> Result<Notice, String> {
        match event {
            Event::Sit(player) => self.sit(player),
            Event::Flip => self.flip(ctx),
            Event::Slap { player, round } => self.slap(player, round),
        }
    }

    fn sit(&mut self, player: String) -> Result<Notice, String> {
        check_player(&player)?;
        if self.scores.contains_key(&player) {
            return Err(format!("`{player}` is seated already"));
        }
        if self.scores.len() >= MAX_PLAYERS {
            return Err(format!(
                "cannot seat `{player}`: the table is full ({MAX_PLAYERS} players)"
            ));
        }
        let detail = format!("{player} sat down");
        self.scores.insert(player, 0);
        Ok(("sit", detail))
    }

    fn flip(&mut self, ctx: &EventContext) -> Result<Notice, String> {
        let round = self
            .round
            .checked_add(1)
            .ok_or("no rounds left: the round counter is at its maximum")?;
        let card = Card::draw(round, ctx);
        self.round = round;
        self.under = self.top.replace(card);
        self.pile += 1;
        Ok(("flip", format!("round {round}: {}", card.label())))
    }

    fn slap(&mut self, player: String, round: u64) -> Result<Notice, String> {
        check_player(&player)?;
        if !self.scores.contains_key(&player) {
            return Err(format!("`{player}` is not seated at the table"));
        }
        // Before the round checks: a slap that lost the race, even one applied
        // after the next flip, learns who won.
        if let Some(winner) = self.winners.get(&round) {
            return Err(format!("round {round} already won by {winner}"));
        }
        if round < self.round {
            return Err(format!(
                "round {round} is over: the current round is {}",
                self.round
            ));
        }
        if round > self.round || round == 0 {
            return Err(format!(
                "round {round} has not been flipped: the current round is {}",
                self.round
            ));
        }
        let slappable = self.slappable();
        let score = self.scores.get_mut(&player).expect("seated, checked above");
        if !slappable {
            *score = score.saturating_sub(1);
            return Ok((
                "penalty",
                format!("{player} slapped round {round}, which was not slappable: -1"),
            ));
        }
        let cards = self.pile;
        *score = score.saturating_add(i64::try_from(cards).unwrap_or(i64::MAX));
        self.top = None;
        self.under = None;
        self.pile = 0;
        let detail = format!("{player} won round {round}: {cards} cards");
        self.winners.insert(round, player);
        Ok(("won", detail))
    }
}

impl LiveObject for Table {
    type Event = Event;

    fn apply(&mut self, event: Event, ctx: &EventContext) -> Result<(), String> {
        let (topic, detail) = self.execute(event, ctx)?;
        liveobjects_guest::notify(topic, &detail);
        Ok(())
    }
}

impl Guest for Table {
    fn sit(player: String) -> Result<(), String> {
        check_player(&player)?;
        Table::emit(&Event::Sit(player));
        Ok(())
    }

    fn flip() {
        Table::emit(&Event::Flip);
    }

    fn slap(player: String, round: u64) -> Result<(), String> {
        check_player(&player)?;
        Table::emit(&Event::Slap { player, round });
        Ok(())
    }

    fn round() -> u64 {
        Table::read(|t| t.round)
    }

    fn top() -> Option<String> {
        Table::read(|t| t.top.map(Card::label))
    }

    fn slappable() -> bool {
        Table::read(Table::slappable)
    }

    fn pile_size() -> u64 {
        Table::read(|t| t.pile)
    }

    fn winner(round: u64) -> Option<String> {
        Table::read(|t| t.winners.get(&round).cloned())
    }

    fn scores() -> Vec<(String, i64)> {
        Table::read(|t| t.scores.iter().map(|(p, s)| (p.clone(), *s)).collect())
    }
}

liveobjects_guest::export_object!(Table);
export!(Table);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(seq: u64) -> EventContext {
        EventContext {
            sender: "dealer".into(),
            seq,
            timestamp_ms: 1_700_000_000_000 + seq,
        }
    }

    fn slap(player: &str, round: u64) -> Event {
        Event::Slap {
            player: player.into(),
            round,
        }
    }

    /// A table with alice and bob seated, counting events for their contexts.
    struct Game {
        table: Table,
        seq: u64,
    }

    impl Game {
        fn new() -> Game {
            let mut game = Game {
                table: Table::default(),
                seq: 0,
            };
            game.apply(Event::Sit("alice".into())).unwrap();
            game.apply(Event::Sit("bob".into())).unwrap();
            game
        }

        fn apply(&mut self, event: Event) -> Result<Notice, String> {
            self.seq += 1;
            self.table.execute(event, &ctx(self.seq))
        }

        /// Flip until the pile is slappable; returns the round.
        fn flip_until_slappable(&mut self) -> u64 {
            for _ in 0..1_000 {
                self.apply(Event::Flip).unwrap();
                if self.table.slappable() {
                    return self.table.round;
                }
            }
            panic!("1,000 flips without a jack or a pair");
        }

        /// Flip until the pile is not slappable; returns the round.
        fn flip_until_not_slappable(&mut self) -> u64 {
            for _ in 0..1_000 {
                self.apply(Event::Flip).unwrap();
                if !self.table.slappable() {
                    return self.table.round;
                }
            }
            panic!("1,000 slappable flips in a row");
        }

        /// Apply `event` expecting a refusal whose message contains `expected`, and
        /// check it changed nothing.
        fn assert_refused(&mut self, event: Event, expected: &str) {
            let before = self.table.clone();
            let err = self.apply(event).expect_err("should be refused");
            assert!(
                err.contains(expected),
                "`{err}` should mention `{expected}`"
            );
            assert_eq!(self.table, before, "a refused event changed the state");
        }
    }

    #[test]
    fn first_slap_wins_the_pile_and_later_slaps_are_refused() {
        let mut game = Game::new();
        let round = game.flip_until_slappable();
        let cards = game.table.pile;
        game.apply(slap("bob", round)).unwrap();
        assert_eq!(game.table.winners[&round], "bob");
        assert_eq!(game.table.scores["bob"], cards as i64);
        assert_eq!(game.table.pile, 0);
        assert_eq!(game.table.top, None);
        assert!(!game.table.slappable());
        let expected = format!("round {round} already won by bob");
        game.assert_refused(slap("alice", round), &expected);
        game.assert_refused(slap("bob", round), &expected);
        // Still refused as won, not as old, after the next flip.
        game.apply(Event::Flip).unwrap();
        game.assert_refused(slap("alice", round), &expected);
        assert_eq!(game.table.scores["alice"], 0);
    }

    #[test]
    fn slap_on_an_unslappable_pile_costs_a_point() {
        let mut game = Game::new();
        let round = game.flip_until_not_slappable();
        let before = game.table.clone();
        let (topic, _) = game.apply(slap("alice", round)).unwrap();
        assert_eq!(topic, "penalty");
        assert_eq!(game.table.scores["alice"], -1);
        assert_eq!(game.table.winners, before.winners);
        assert_eq!(game.table.pile, before.pile);
        assert_eq!(game.table.top, before.top);
    }

    #[test]
    fn slap_for_a_past_or_future_round_is_refused() {
        let mut game = Game::new();
        game.assert_refused(slap("alice", 0), "round 0 has not been flipped");
        let round = game.flip_until_not_slappable();
        game.assert_refused(slap("alice", round + 1), "has not been flipped");
        game.apply(Event::Flip).unwrap();
        game.assert_refused(slap("alice", round), &format!("round {round} is over"));
    }

    #[test]
    fn slap_by_a_player_not_seated_is_refused() {
        let mut game = Game::new();
        let round = game.flip_until_slappable();
        game.assert_refused(slap("mallory", round), "`mallory` is not seated");
        game.assert_refused(slap("", round), "player name is empty");
        assert!(game.table.slappable());
    }

    #[test]
    fn jack_or_pair_makes_the_pile_slappable() {
        let mut table = Table {
            round: 1,
            pile: 1,
            top: Some(Card(JACK)),
            ..Table::default()
        };
        assert!(table.slappable(), "a jack on top");
        table.top = Some(Card(4 + 13)); // 5H
        table.under = Some(Card(4 + 39)); // 5C
        assert!(table.slappable(), "a pair of fives");
        table.under = Some(Card(5));
        assert!(!table.slappable(), "5H on 6S");
        table.under = Some(Card(JACK));
        assert!(
            !table.slappable(),
            "a jack under the top card does not count"
        );
        table.top = Some(Card(JACK));
        table.winners.insert(1, "alice".into());
        assert!(!table.slappable(), "a round already won");
    }

    #[test]
    fn sit_refuses_a_seated_player_and_a_ninth() {
        let mut game = Game::new();
        game.assert_refused(Event::Sit("alice".into()), "seated already");
        for i in 3..=MAX_PLAYERS {
            game.apply(Event::Sit(format!("player{i}"))).unwrap();
        }
        game.assert_refused(Event::Sit("ninth".into()), "the table is full");
        game.assert_refused(Event::Sit("x".repeat(65)), "65 bytes");
    }

    #[test]
    fn flips_draw_the_same_card_on_every_replica_and_all_cards_appear() {
        let mut seen = [false; 52];
        let mut a = Table::default();
        let mut b = Table::default();
        for seq in 1..=2_000 {
            a.execute(Event::Flip, &ctx(seq)).unwrap();
            b.execute(Event::Flip, &ctx(seq)).unwrap();
            assert_eq!(a, b);
            seen[a.top.unwrap().0 as usize] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "some card never drawn in 2,000 flips"
        );
        assert_eq!(a.round, 2_000);
        assert_eq!(a.pile, 2_000);
    }

    #[test]
    fn card_labels_are_rank_then_suit() {
        assert_eq!(Card(0).label(), "AS");
        assert_eq!(Card(JACK).label(), "JS");
        assert_eq!(Card(9 + 13).label(), "10H");
        assert_eq!(Card(12 + 26).label(), "KD");
        assert_eq!(Card(51).label(), "KC");
    }

    #[test]
    fn scores_add_up_to_cards_won_minus_penalties() {
        let mut game = Game::new();
        let mut won = 0i64;
        let mut penalties = 0i64;
        for i in 0..500u64 {
            game.apply(Event::Flip).unwrap();
            let round = game.table.round;
            let player = if i % 2 == 0 { "alice" } else { "bob" };
            let slappable = game.table.slappable();
            let cards = game.table.pile as i64;
            // Slap a third of the rounds, and every slappable one.
            if slappable || i % 3 == 0 {
                let (topic, _) = game.apply(slap(player, round)).unwrap();
                if slappable {
                    assert_eq!(topic, "won");
                    won += cards;
                } else {
                    assert_eq!(topic, "penalty");
                    penalties += 1;
                }
            }
        }
        let total: i64 = game.table.scores.values().sum();
        assert_eq!(total, won - penalties);
        assert_eq!(
            won + game.table.pile as i64,
            500,
            "every card is won or on the pile"
        );
    }
}
