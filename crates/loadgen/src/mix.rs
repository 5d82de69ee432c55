//! The mix of orders: which kinds, in what proportions, and in what sequence.
//!
//! A mix is a weight per [`Kind`], written `ordinary=70,scarce=10,flaky=10,fail=5,repeat=5`.
//! Weights are relative: `ordinary=7,fail=1` is the same mix as `ordinary=70,fail=10`. A kind
//! left out gets weight 0 and is never sent.
//!
//! [`Picker`] turns the weights into a sequence with no random numbers: in every run of
//! `sum(weights)` orders, each kind appears exactly `weight` times, spread out rather than in
//! blocks. A run is therefore reproducible, and even a short one (a test's 60 orders) contains
//! every kind it was asked for.

use std::{fmt, str::FromStr};

/// What an order is meant to exercise in the system under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An ordinary order for well-stocked SKUs: reserved.
    Ordinary,
    /// An order for `SCARCE-1`, of which there are 10: the first few are reserved, then the
    /// stock runs out and the rest are rejected (a business outcome, not a failure).
    Scarce,
    /// An order for `FLAKY-1`, which fails its first delivery: redelivered, then reserved.
    Flaky,
    /// An order for `FAIL-1`, which fails every delivery: dead-lettered once JetStream gives up
    /// (about 23 s with the workers' default BackOff).
    Fail,
    /// An ordinary order sent twice with the same `Idempotency-Key`, as a client does when it
    /// lost the first answer: both answers must name the same order.
    Repeat,
}

impl Kind {
    /// Every kind, in the order a mix is written and a summary lists them.
    pub const ALL: [Kind; 5] = [Kind::Ordinary, Kind::Scarce, Kind::Flaky, Kind::Fail, Kind::Repeat];

    /// The name used in `--mix`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ordinary => "ordinary",
            Kind::Scarce => "scarce",
            Kind::Flaky => "flaky",
            Kind::Fail => "fail",
            Kind::Repeat => "repeat",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a mix was refused. Each message names the part of the text that is wrong, so that clap
/// can show it after the flag's name (`invalid value '…' for '--mix <MIX>': …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    #[error("{part:?} is not a weight: write name=weight, e.g. ordinary=70")]
    NotAPair { part: String },
    #[error("unknown kind {name:?}: use ordinary, scarce, flaky, fail or repeat")]
    UnknownKind { name: String },
    #[error("the weight of {kind} is {value:?}: expected a whole number, 0 or more")]
    BadWeight { kind: Kind, value: String },
    #[error("{kind} is given twice")]
    Repeated { kind: Kind },
    #[error("every weight is 0: at least one kind needs a weight above 0")]
    AllZero,
}

/// A weight per kind; at least one is above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; Kind::ALL.len()],
}

impl Mix {
    /// The default mix: mostly ordinary orders, with some of every other kind.
    pub const DEFAULT: &'static str = "ordinary=70,scarce=10,flaky=10,fail=5,repeat=5";

    /// A mix from (kind, weight) pairs; kinds not named get weight 0.
    pub fn new(weights: &[(Kind, u32)]) -> Result<Self, MixError> {
        let mut mix = Self { weights: [0; Kind::ALL.len()] };
        let mut given = [false; Kind::ALL.len()];
        for &(kind, weight) in weights {
            if given[kind.index()] {
                return Err(MixError::Repeated { kind });
            }
            given[kind.index()] = true;
            mix.weights[kind.index()] = weight;
        }
        if mix.total() == 0 {
            return Err(MixError::AllZero);
        }
        Ok(mix)
    }

    /// Only orders of one kind.
    pub fn only(kind: Kind) -> Self {
        let mut weights = [0; Kind::ALL.len()];
        weights[kind.index()] = 1;
        Self { weights }
    }

    pub fn weight(&self, kind: Kind) -> u32 {
        self.weights[kind.index()]
    }

    /// The sum of the weights: the length of one cycle of [`Picker`].
    pub fn total(&self) -> u64 {
        self.weights.iter().map(|&w| u64::from(w)).sum()
    }

    /// The sequence of kinds this mix produces, endless.
    pub fn picker(&self) -> Picker {
        Picker { mix: *self, current: [0; Kind::ALL.len()] }
    }
}

impl Default for Mix {
    fn default() -> Self {
        // In the order of `Kind::ALL`; a unit test checks this is what `Mix::DEFAULT` says.
        Self { weights: [70, 10, 10, 5, 5] }
    }
}

impl FromStr for Mix {
    type Err = MixError;

    /// Parses `name=weight` pairs separated by commas; spaces around them are ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (name, value) =
                part.split_once('=').ok_or_else(|| MixError::NotAPair { part: part.to_owned() })?;
            let (name, value) = (name.trim(), value.trim());
            let kind = Kind::ALL
                .into_iter()
                .find(|kind| kind.name() == name)
                .ok_or_else(|| MixError::UnknownKind { name: name.to_owned() })?;
            // `u32::from_str` also accepts "+5"; a weight is plain digits.
            let weight = value
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| value.parse::<u32>().ok())
                .flatten()
                .ok_or_else(|| MixError::BadWeight { kind, value: value.to_owned() })?;
            weights.push((kind, weight));
        }
        Self::new(&weights)
    }
}

impl fmt::Display for Mix {
    /// The same text `--mix` takes, listing only the kinds that are sent.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Kind::ALL
            .into_iter()
            .filter(|&kind| self.weight(kind) > 0)
            .map(|kind| format!("{kind}={}", self.weight(kind)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Picks kinds in proportion to their weights, by *smooth weighted round-robin* (the algorithm
/// nginx uses to spread requests over weighted upstreams).
///
/// Each kind keeps a running score. On every pick, each score grows by its kind's weight; the
/// highest score wins and pays back the total of all weights. Over one cycle every score grows
/// by `weight × total` and the winner pays `total` each time it wins, so each kind wins
/// exactly `weight` times per cycle, and a heavy kind's wins are interleaved with the others'.
#[derive(Debug, Clone)]
pub struct Picker {
    mix: Mix,
    current: [i64; Kind::ALL.len()],
}

impl Picker {
    /// The next kind to send.
    pub fn pick(&mut self) -> Kind {
        let total = i64::try_from(self.mix.total()).unwrap_or(i64::MAX);
        let mut best = Kind::Ordinary;
        for kind in Kind::ALL {
            self.current[kind.index()] += i64::from(self.mix.weight(kind));
            // Ties go to the kind listed first, so the sequence is the same on every run.
            if self.current[kind.index()] > self.current[best.index()] {
                best = kind;
            }
        }
        self.current[best.index()] -= total;
        best
    }
}

impl Iterator for Picker {
    type Item = Kind;

    /// Never `None`: the sequence is endless.
    fn next(&mut self) -> Option<Kind> {
        Some(self.pick())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn parse(text: &str) -> Result<Mix, MixError> {
        text.parse()
    }

    fn counts(mix: &Mix, n: usize) -> BTreeMap<Kind, u32> {
        let mut counts = BTreeMap::new();
        for kind in mix.picker().take(n) {
            *counts.entry(kind).or_default() += 1;
        }
        counts
    }

    #[test]
    fn the_default_mix_parses_and_matches_its_text() {
        let mix = parse(Mix::DEFAULT).unwrap();
        assert_eq!(mix, Mix::default());
        assert_eq!(mix.to_string(), Mix::DEFAULT);
        assert_eq!(mix.total(), 100);
    }

    #[test]
    fn kinds_left_out_get_weight_zero_and_spaces_are_ignored() {
        let mix = parse(" ordinary = 3 , fail=1 ").unwrap();
        assert_eq!(mix.weight(Kind::Ordinary), 3);
        assert_eq!(mix.weight(Kind::Fail), 1);
        assert_eq!(mix.weight(Kind::Scarce), 0);
        assert_eq!(mix.to_string(), "ordinary=3,fail=1");
    }

    #[test]
    fn an_unknown_kind_is_refused_by_name() {
        let err = parse("ordinary=70,bogus=5").unwrap_err();
        assert_eq!(err, MixError::UnknownKind { name: "bogus".into() });
        assert!(err.to_string().contains("\"bogus\""), "{err}");
        assert!(err.to_string().contains("ordinary, scarce, flaky, fail or repeat"), "{err}");
    }

    #[test]
    fn a_weight_must_be_a_whole_number_of_zero_or_more() {
        for bad in ["-1", "1.5", "ten", "", "+5", "99999999999"] {
            let err = parse(&format!("ordinary=70,fail={bad}")).unwrap_err();
            assert_eq!(err, MixError::BadWeight { kind: Kind::Fail, value: bad.into() }, "{bad}");
        }
    }

    #[test]
    fn a_part_without_equals_a_kind_given_twice_and_all_zeros_are_refused() {
        assert_eq!(parse("ordinary").unwrap_err(), MixError::NotAPair { part: "ordinary".into() });
        assert_eq!(parse("").unwrap_err(), MixError::NotAPair { part: String::new() });
        assert_eq!(parse("ordinary=1,ordinary=2").unwrap_err(), MixError::Repeated { kind: Kind::Ordinary });
        assert_eq!(parse("ordinary=0,fail=0").unwrap_err(), MixError::AllZero);
    }

    #[test]
    fn every_cycle_contains_each_kind_exactly_its_weight_in_times() {
        let mix = parse(Mix::DEFAULT).unwrap();
        let expected: BTreeMap<Kind, u32> = Kind::ALL.into_iter().map(|k| (k, mix.weight(k))).collect();
        assert_eq!(counts(&mix, 100), expected);
        let doubled: BTreeMap<Kind, u32> = expected.iter().map(|(k, n)| (*k, n * 2)).collect();
        assert_eq!(counts(&mix, 200), doubled);
    }

    #[test]
    fn a_kind_of_weight_zero_is_never_picked() {
        let mix = parse("ordinary=5,scarce=0,repeat=1").unwrap();
        let counts = counts(&mix, 600);
        assert_eq!(counts.get(&Kind::Scarce), None);
        assert_eq!(counts[&Kind::Ordinary], 500);
        assert_eq!(counts[&Kind::Repeat], 100);
    }

    #[test]
    fn picks_are_spread_out_rather_than_in_blocks() {
        let mix = parse("ordinary=1,fail=1").unwrap();
        let picks: Vec<Kind> = mix.picker().take(6).collect();
        assert_eq!(picks, [Kind::Ordinary, Kind::Fail].repeat(3));

        // The rare kinds of the default mix already appear within its first 20 picks.
        let first: Vec<Kind> = parse(Mix::DEFAULT).unwrap().picker().take(20).collect();
        for kind in Kind::ALL {
            assert!(first.contains(&kind), "{kind} missing from {first:?}");
        }
    }

    #[test]
    fn a_mix_of_one_kind_picks_only_that_kind() {
        assert!(Mix::only(Kind::Flaky).picker().take(10).all(|kind| kind == Kind::Flaky));
    }
}
