//! The workload mix: `--mix 'echo:90,sleep(ms=5):9,blob(size=1048576):1'`.
//!
//! Each entry is a command name, optional arguments in parentheses
//! (`name=value` joined by commas) and a weight after a colon. A request's
//! command is picked by its sequence number, so the mix is exact over every
//! block of `total weight` requests and the same on every run.

use std::fmt;

/// One command of the mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The command name.
    pub name: String,
    /// Arguments, in the order given.
    pub args: Vec<(String, String)>,
    /// Relative weight (at least 1).
    pub weight: u32,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())?;
        write!(f, ":{}", self.weight)
    }
}

impl Entry {
    /// The command with its arguments, as written in the mix: `sleep(ms=5)`.
    pub fn label(&self) -> String {
        if self.args.is_empty() {
            return self.name.clone();
        }
        let args: Vec<String> = self.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}({})", self.name, args.join(","))
    }

    /// The value of argument `name`.
    pub fn arg(&self, name: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    entries: Vec<Entry>,
    /// Sequence slot → entry index, `total weight` long.
    wheel: Vec<usize>,
}

impl Mix {
    /// Parses a mix specification.
    pub fn parse(spec: &str) -> Result<Mix, String> {
        let mut entries = Vec::new();
        for part in split_top_level(spec)? {
            entries.push(parse_entry(part.trim())?);
        }
        if entries.is_empty() {
            return Err("mix: empty; expected e.g. `echo:90,sleep(ms=5):10`".into());
        }
        let total: u64 = entries.iter().map(|e| u64::from(e.weight)).sum();
        if total > 1_000_000 {
            return Err(format!("mix: total weight {total} is over 1000000"));
        }
        // Interleave the entries over the wheel so a short run still sees
        // every command: slot i goes to the entry furthest behind its share.
        let mut wheel = Vec::with_capacity(total as usize);
        let mut given = vec![0u64; entries.len()];
        for slot in 0..total {
            let pick = (0..entries.len())
                .max_by_key(|&i| {
                    let share = u64::from(entries[i].weight) * (slot + 1);
                    (share.saturating_sub(given[i] * total), std::cmp::Reverse(i))
                })
                .expect("not empty");
            given[pick] += 1;
            wheel.push(pick);
        }
        Ok(Mix { entries, wheel })
    }

    /// The longest `chain(len=K)` of the mix (0 without chains).
    pub fn max_chain_len(&self) -> usize {
        self.entries
            .iter()
            .filter_map(super::requests::chain_len)
            .max()
            .unwrap_or(0)
    }

    /// The entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry index for request number `seq`.
    #[inline]
    pub fn pick(&self, seq: u64) -> usize {
        if self.entries.len() == 1 {
            return 0;
        }
        self.wheel[(seq % self.wheel.len() as u64) as usize]
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.entries.iter().map(Entry::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits at commas outside parentheses.
fn split_top_level(spec: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in spec.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("mix: unbalanced `)` at byte {i} of `{spec}`"));
                }
            }
            ',' if depth == 0 => {
                parts.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("mix: unclosed `(` in `{spec}`"));
    }
    parts.push(&spec[start..]);
    Ok(parts.into_iter().filter(|p| !p.trim().is_empty()).collect())
}

fn parse_entry(part: &str) -> Result<Entry, String> {
    let (command, weight) = match part.rfind(':') {
        Some(colon) if !part[colon..].contains(')') => (&part[..colon], &part[colon + 1..]),
        _ => (part, "1"),
    };
    let weight: u32 = weight
        .trim()
        .parse()
        .ok()
        .filter(|w| *w > 0)
        .ok_or_else(|| format!("mix: `{part}`: weight `{weight}` is not a whole number above 0"))?;
    let command = command.trim();
    let (name, args) = match command.find('(') {
        None => (command, Vec::new()),
        Some(open) => {
            let Some(inner) = command[open + 1..].strip_suffix(')') else {
                return Err(format!("mix: `{part}`: arguments must end with `)`"));
            };
            let mut args = Vec::new();
            for pair in inner.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    format!("mix: `{part}`: argument `{pair}` is not `name=value`")
                })?;
                if k.trim().is_empty() {
                    return Err(format!("mix: `{part}`: argument `{pair}` has no name"));
                }
                args.push((k.trim().to_string(), v.trim().to_string()));
            }
            (&command[..open], args)
        }
    };
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("mix: `{part}`: `{name}` is not a command name"));
    }
    if name == "chain" {
        let len = args
            .iter()
            .find(|(k, _)| k == "len")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .filter(|n| (1..=1024).contains(n));
        if len.is_none() || args.len() != 1 {
            return Err(format!(
                "mix: `{part}`: a chain takes one argument, len, from 1 to 1024: `chain(len=8)`"
            ));
        }
    }
    Ok(Entry {
        name: name.to_string(),
        args,
        weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_arguments_and_weights() {
        let mix = Mix::parse("echo:90, sleep(ms=5):9,blob(size=1048576):1").unwrap();
        let e = mix.entries();
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].name.as_str(), e[0].weight), ("echo", 90));
        assert_eq!(e[1].args, [("ms".to_string(), "5".to_string())]);
        assert_eq!(e[2].arg("size"), Some("1048576"));
        assert_eq!(
            mix.to_string(),
            "echo:90,sleep(ms=5):9,blob(size=1048576):1"
        );
    }

    #[test]
    fn weight_defaults_to_one_and_args_may_be_many() {
        let mix = Mix::parse("put(key=a,other=b)").unwrap();
        assert_eq!(mix.entries()[0].weight, 1);
        assert_eq!(mix.entries()[0].label(), "put(key=a,other=b)");
    }

    #[test]
    fn the_wheel_gives_each_entry_its_exact_share() {
        let mix = Mix::parse("a:3,b:1").unwrap();
        let picks: Vec<usize> = (0..8).map(|s| mix.pick(s)).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 6);
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 2);
        assert_eq!(
            &picks[..4],
            &picks[4..],
            "the pattern repeats every total weight"
        );
        let mix = Mix::parse("echo:99,sleep(ms=1):1").unwrap();
        assert_eq!((0..100).filter(|&s| mix.pick(s) == 1).count(), 1);
    }

    #[test]
    fn bad_mixes_say_what_is_wrong() {
        let cases = [
            ("", "mix: empty; expected e.g. `echo:90,sleep(ms=5):10`"),
            (
                "echo:x",
                "mix: `echo:x`: weight `x` is not a whole number above 0",
            ),
            (
                "echo:0",
                "mix: `echo:0`: weight `0` is not a whole number above 0",
            ),
            ("sleep(ms=5", "mix: unclosed `(` in `sleep(ms=5`"),
            (
                "sleep)ms=5(",
                "mix: unbalanced `)` at byte 5 of `sleep)ms=5(`",
            ),
            (
                "sleep(ms):2",
                "mix: `sleep(ms):2`: argument `ms` is not `name=value`",
            ),
            (
                "sleep(=5):2",
                "mix: `sleep(=5):2`: argument `=5` has no name",
            ),
            (":5", "mix: `:5`: `` is not a command name"),
            (
                "chain(len=0)",
                "mix: `chain(len=0)`: a chain takes one argument, len, from 1 to 1024: `chain(len=8)`",
            ),
            (
                "chain",
                "mix: `chain`: a chain takes one argument, len, from 1 to 1024: `chain(len=8)`",
            ),
            (
                "sleep(ms=1)x:2",
                "mix: `sleep(ms=1)x:2`: arguments must end with `)`",
            ),
        ];
        for (spec, message) in cases {
            assert_eq!(Mix::parse(spec).unwrap_err(), message, "{spec}");
        }
    }
}
