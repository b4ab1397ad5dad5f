//! The names of log levels: one table for every place that prints one (the text and
//! JSON log formats, `logs`, the configuration's `log_level`, notices on the terminal).

/// Indexed by `log::Level as usize - 1` (Error = 1 ... Trace = 5): the name as JSON, the
/// configuration and notices spell it, and as the text log format shows it, upper case
/// and padded to five columns so that messages line up.
const NAMES: [(&str, &str); 5] = [
    ("error", "ERROR"),
    ("warn", "WARN "),
    ("info", "INFO "),
    ("debug", "DEBUG"),
    ("trace", "TRACE"),
];

fn entry(l: log::Level) -> (&'static str, &'static str) {
    NAMES[l as usize - 1]
}

/// `error`, `warn`, `info`, `debug`, `trace`.
pub fn name(l: log::Level) -> &'static str {
    entry(l).0
}

/// `ERROR`, `WARN `, `INFO `, `DEBUG`, `TRACE`: the text log format's column.
pub fn padded(l: log::Level) -> &'static str {
    entry(l).1
}

/// A level's rank, Error = 1 ... Trace = 5: a level is shown when its rank is at most
/// the filter's.
pub fn rank(l: log::Level) -> u8 {
    l as u8
}

/// The level whose rank (`rank`) is `n`; `info` for a rank that is none.
pub fn from_rank(n: u8) -> log::Level {
    log::Level::iter()
        .find(|l| *l as u8 == n)
        .unwrap_or(log::Level::Info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_has_its_names() {
        for l in log::Level::iter() {
            assert_eq!(name(l), l.as_str().to_ascii_lowercase());
            assert_eq!(padded(l), format!("{:<5}", l.as_str()));
            assert_eq!(from_rank(rank(l)), l);
        }
        assert_eq!(from_rank(0), log::Level::Info);
        assert_eq!(from_rank(9), log::Level::Info);
    }
}
