//! Which way the PostgreSQL backend runs a search of several words.
//!
//! Every query word matches as a prefix, and GIN matches a prefix by
//! reading the posting lists of every indexed word that starts with it into
//! a bitmap before anything else happens (no skipping, unlike whole
//! words). A query pairing a very common short word with a rare one then
//! pays for the common word's whole list: `'ciza':* & 'ji':*` read a quarter
//! of a million entries to find 441 messages (28 ms), and walking messages
//! newest first instead has to test 37,000 of them (22 ms to 106 ms).
//! Reading the rare word's matches only and testing each for the others
//! costs a few milliseconds ([`SEARCH_RARE`](super::SEARCH_RARE)).
//!
//! Which word is rare comes from the planner's own statistics of the
//! `words` column (`pg_stats.most_common_elems`, kept by `ANALYZE`), read
//! now and then and kept by the store: a word's share of messages is
//! estimated as the sum of the shares of the common words it is a prefix
//! of, or, when it is a prefix of none, as the least common one's. The
//! choice only changes the plan, never the results.

use std::time::{Duration, Instant};

/// How long the statistics are used before being read again.
pub(super) const STATS_TTL: Duration = Duration::from_secs(300);

/// Costs per row measured on the 1M-message benchmark (`chat-bench
/// search --backend postgres`), in microseconds: testing a message while
/// walking them newest first (pages read in order), reading one entry of a
/// posting list, and fetching and testing one message from a bitmap
/// (random pages).
const WALK_US: f64 = 0.6;
const POSTING_US: f64 = 0.12;
const FETCH_US: f64 = 5.0;

/// The planner's statistics of the words of messages.
#[derive(Debug, Clone)]
pub(super) struct WordStats {
    pub read_at: Instant,
    /// Messages in the table (`pg_class.reltuples`).
    pub messages: f64,
    /// The most common words and the share of messages holding each,
    /// sorted by word.
    pub common: Vec<(String, f64)>,
    /// The share of the least common of them: what any other word is
    /// taken to have.
    pub floor: f64,
}

impl WordStats {
    pub fn new(read_at: Instant, messages: f64, mut common: Vec<(String, f64)>) -> WordStats {
        common.sort_by(|a, b| a.0.cmp(&b.0));
        let floor = common
            .iter()
            .map(|(_, share)| *share)
            .fold(f64::INFINITY, f64::min);
        WordStats {
            read_at,
            messages,
            common,
            floor: if floor.is_finite() { floor } else { 0.0 },
        }
    }

    /// The share of messages holding a word that starts with `prefix`.
    pub fn share(&self, prefix: &str) -> f64 {
        // The words starting with `prefix` sort together, from `prefix` on.
        let start = self.common.partition_point(|(w, _)| w.as_str() < prefix);
        let sum: f64 = self.common[start..]
            .iter()
            .take_while(|(w, _)| w.starts_with(prefix))
            .map(|(_, share)| share)
            .sum();
        if sum > 0.0 {
            sum.min(1.0)
        } else {
            self.floor
        }
    }

    /// The word to read the matches of, when reading only that word's and
    /// testing them for the others is the cheapest way to find a page of
    /// `limit` results for all of `words`; `None` when walking messages
    /// newest first or intersecting every word's matches (the plans the
    /// planner picks between for [`SEARCH`](super::SEARCH)) is cheaper, or
    /// when there are no statistics.
    pub fn rarest<'w>(&self, words: &'w [String], limit: usize) -> Option<&'w str> {
        if words.len() < 2 || self.common.is_empty() || self.messages <= 0.0 {
            return None;
        }
        let n = self.messages;
        let shares: Vec<f64> = words.iter().map(|w| self.share(w)).collect();
        let (rarest, &rare) = shares
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))?;
        // Taken as independent.
        let all: f64 = shares.iter().product::<f64>().max(f64::MIN_POSITIVE);
        let walk = (limit as f64 / all).min(n) * WALK_US;
        let intersect = shares.iter().sum::<f64>() * n * POSTING_US + all * n * FETCH_US;
        let one = rare * n * (POSTING_US + FETCH_US);
        (one < walk.min(intersect)).then(|| words[rarest].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> WordStats {
        let common = [
            ("ji", 0.25),
            ("jita", 0.005),
            ("tu", 0.6),
            ("ke", 0.35),
            ("bo", 0.01),
            ("boka", 0.002),
            ("zu", 0.002),
        ];
        let common = common.iter().map(|(w, s)| ((*w).to_owned(), *s)).collect();
        WordStats::new(Instant::now(), 1_000_000.0, common)
    }

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn a_prefix_counts_every_common_word_it_starts() {
        let stats = stats();
        assert!((stats.share("ji") - 0.255).abs() < 1e-9);
        assert!((stats.share("jit") - 0.005).abs() < 1e-9);
        assert!((stats.share("b") - 0.012).abs() < 1e-9);
        // Not a prefix of any common word: as rare as the rarest of them.
        assert_eq!(stats.share("ciza"), 0.002);
        assert_eq!(stats.share("zz"), 0.002);
    }

    #[test]
    fn a_rare_word_with_a_common_one_is_read_alone() {
        let stats = stats();
        assert_eq!(stats.rarest(&words(&["ji", "ciza"]), 21), Some("ciza"));
        assert_eq!(
            stats.rarest(&words(&["ciza", "tu", "ke"]), 21),
            Some("ciza")
        );
        // Common together: walking finds a page at once.
        assert_eq!(stats.rarest(&words(&["tu", "ke"]), 21), None);
        // One word, or no statistics: the planner's plans.
        assert_eq!(stats.rarest(&words(&["ciza"]), 21), None);
        let empty = WordStats::new(Instant::now(), 1_000_000.0, Vec::new());
        assert_eq!(empty.rarest(&words(&["ji", "ciza"]), 21), None);
    }
}
