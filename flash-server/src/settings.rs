//! The configuration file (`--config FILE`): a flat TOML table whose keys
//! are the long flag names (and `root` for the positional document root),
//! merged into the command line.
//!
//! The mapping is generic over the clap [`Command`]: a key is turned back
//! into command-line text (`--KEY=VALUE`, a bare `--KEY` for a boolean,
//! `--KEY=V` once per element of an array) and parsed by clap itself, so
//! every flag, including ones added later, is a key with its own value
//! parser and validation. Flags win: the command line is parsed first to
//! learn which arguments were given there ([`ArgMatches::value_source`]),
//! and the file's keys for those are skipped, so a repeatable flag given on
//! the command line replaces the file's list.
//!
//! [`load`] has no side effect beyond reading the file, so a supervisor can
//! call it again on SIGHUP with the same arguments to pick up an edited file.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, Parser};

/// The id (and long name) of the flag that names the configuration file.
pub const CONFIG_ARG: &str = "config";

/// Flags that cannot be keys of a configuration file: they are about the
/// invocation itself, not the server.
pub const COMMAND_LINE_ONLY: [&str; 4] = [CONFIG_ARG, "check", "help", "version"];

/// Parses `args` (with the program name first, as from
/// [`std::env::args_os`]) and, if they name a `--config FILE`, merges the
/// file's settings in, the command line winning.
///
/// Errors: a command-line error (including `--help` and `--version`, which
/// clap reports as errors) is returned as the [`clap::Error`], so the caller
/// can `downcast_ref::<clap::Error>()` and `exit()` it as clap would; a
/// problem in the file is one line naming the file, the line and the key,
/// e.g. `/etc/flash/flash.toml:12: unknown key "helper-timout" (did you
/// mean "helper-timeout"?)`.
pub fn load<C: Parser>(args: &[OsString]) -> Result<C> {
    let (_, matches) = parse_merged(&C::command(), args)?;
    Ok(C::from_arg_matches(&matches)?)
}

/// [`load`], and `args` with the settings of their `--config` file spelled
/// out as flags and the `--config FILE` itself removed: a command line that
/// means what `args` mean now, whatever later becomes of the file. The
/// supervisor hands it to its workers, so they run exactly the
/// configuration it validated, and never read the file themselves.
pub fn load_expanded<C: Parser>(args: &[OsString]) -> Result<(C, Vec<OsString>)> {
    let (merged, matches) = parse_merged(&C::command(), args)?;
    Ok((C::from_arg_matches(&matches)?, without_config(&merged)))
}

/// `args` with the settings of their `--config` file (if any) merged in:
/// the merged command line and its parse.
fn parse_merged(command: &Command, args: &[OsString]) -> Result<(Vec<OsString>, ArgMatches)> {
    let matches = command.clone().try_get_matches_from(args)?;
    let Some(path) = matches
        .get_raw(CONFIG_ARG)
        .and_then(|mut values| values.next())
        .map(PathBuf::from)
    else {
        return Ok((args.to_vec(), matches));
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    let file = path.display().to_string();
    let merged = merge(command, &matches, args, &file, &text)?;
    let matches = parse_with_file(command, &merged, &file)?;
    Ok((merged, matches))
}

/// Parses the merged command line `merged`; an error (say, two settings
/// that conflict) is reported as the file's, since the command line alone
/// parsed.
fn parse_with_file(command: &Command, merged: &[OsString], file: &str) -> Result<ArgMatches> {
    command
        .clone()
        .try_get_matches_from(merged)
        .map_err(|e| anyhow!("{file}: {}", clap_message(&e)))
}

/// `args` without `--config FILE` / `--config=FILE` (before a `--`, after
/// which every word is a positional value).
fn without_config(args: &[OsString]) -> Vec<OsString> {
    let flag = format!("--{CONFIG_ARG}");
    let mut kept = Vec::with_capacity(args.len());
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word == "--" {
            kept.push(word.clone());
            kept.extend(words.cloned());
            break;
        }
        if *word == *flag {
            words.next();
            continue;
        }
        if word.to_string_lossy().starts_with(&format!("{flag}=")) {
            continue;
        }
        kept.push(word.clone());
    }
    kept
}

/// [`load`], or the process ends as a command line's error would: for a
/// usage error, `--help` or `--version` as clap ends it (status 2, or 0
/// after printing help or the version), for a problem with the file with
/// the message on stderr and status 1. Under `--check` every problem ends
/// with status 1, the verdict "not OK".
pub fn load_or_exit<C: Parser>(args: &[OsString]) -> C {
    match load(args) {
        Ok(cli) => cli,
        Err(e) => match e.downcast_ref::<clap::Error>() {
            Some(usage) if usage.use_stderr() && args.iter().any(|a| a == "--check") => {
                let _ = usage.print();
                std::process::exit(1);
            }
            Some(usage) => usage.exit(),
            None => {
                eprintln!("flash-server: {e:#}");
                std::process::exit(1);
            }
        },
    }
}

/// `args` with the settings of the configuration file `text` (called
/// `file` in messages) added, as flags before the command line's own, for
/// the arguments `matches` (the parse of `args`) did not get from the
/// command line.
fn merge(
    command: &Command,
    matches: &ArgMatches,
    args: &[OsString],
    file: &str,
    text: &str,
) -> Result<Vec<OsString>> {
    let document = toml_edit::Document::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |span| line_of(text, span.start));
        anyhow!("{file}:{line}: TOML syntax error: {}", e.message().trim())
    })?;
    let table = document.as_table();
    // Positional values go first, so no flag can take them for its value.
    let mut positional = Vec::new();
    let mut flags = Vec::new();
    for (key, item) in table.iter() {
        let key_span = table.key(key).and_then(toml_edit::Key::span);
        let line = key_span.map_or(1, |span| line_of(text, span.start));
        let at = |message: String| anyhow!("{file}:{line}: {message}");
        if COMMAND_LINE_ONLY.contains(&key) {
            return Err(at(format!(
                "key {key:?} is not allowed in a configuration file (it is a command-line flag)"
            )));
        }
        let Some(arg) = command.get_arguments().find(|a| key_of(a) == Some(key)) else {
            let hint = suggestion(command, key)
                .map(|known| format!(" (did you mean {known:?}?)"))
                .unwrap_or_default();
            return Err(at(format!("unknown key {key:?}{hint}")));
        };
        if matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let words = words_of(arg, key, item).map_err(at)?;
        // Each key alone through clap, so a bad value is reported with
        // its key and line in the flag parser's own words. Errors about
        // other arguments (one flag requiring another) are left to the
        // parse of the merged command line below.
        let program = args
            .first()
            .cloned()
            .unwrap_or_else(|| "flash-server".into());
        if let Err(e) = command
            .clone()
            .try_get_matches_from(std::iter::once(program).chain(words.iter().cloned()))
        {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                InvalidValue | ValueValidation | InvalidUtf8 | WrongNumberOfValues | TooManyValues
            ) {
                return Err(at(format!("bad value for {key:?}: {}", clap_message(&e))));
            }
        }
        if arg.is_positional() {
            positional.extend(words);
        } else {
            flags.extend(words);
        }
    }
    let mut merged = Vec::with_capacity(args.len() + positional.len() + flags.len());
    merged.extend(args.first().cloned());
    merged.extend(positional);
    merged.extend(flags);
    merged.extend(args.iter().skip(1).cloned());
    Ok(merged)
}

/// The configuration-file key of `arg`: its long name, or for a positional
/// argument its id (`root`).
fn key_of(arg: &Arg) -> Option<&str> {
    match arg.get_long() {
        Some(long) => Some(long),
        None if arg.is_positional() => Some(arg.get_id().as_str()),
        None => None,
    }
}

/// The command-line words that say what `item` says for `arg`.
fn words_of(arg: &Arg, key: &str, item: &toml_edit::Item) -> Result<Vec<OsString>, String> {
    let value = item.as_value().ok_or_else(|| {
        format!(
            "{key:?} must be a value, not a {} (the file is one flat table)",
            item.type_name()
        )
    })?;
    let flag = || OsString::from(format!("--{key}"));
    match arg.get_action() {
        // A switch: true is its presence, false its absence.
        ArgAction::SetTrue | ArgAction::SetFalse => match value.as_bool() {
            Some(true) => Ok(vec![flag()]),
            Some(false) => Ok(Vec::new()),
            None => Err(format!(
                "{key:?} is a switch: true or false, not a {}",
                value.type_name()
            )),
        },
        ArgAction::Count => match value.as_integer().map(usize::try_from) {
            Some(Ok(n)) => Ok(vec![flag(); n]),
            _ => Err(format!("{key:?} is a count: a number of at least 0")),
        },
        action if action.takes_values() => {
            let texts = match value.as_array() {
                Some(array) if matches!(action, ArgAction::Append) => array
                    .iter()
                    .map(|element| scalar_text(key, element))
                    .collect::<Result<Vec<_>, _>>()?,
                Some(_) => return Err(format!("{key:?} takes one value, not a list")),
                None => vec![scalar_text(key, value)?],
            };
            Ok(texts
                .into_iter()
                .map(|text| {
                    if arg.is_positional() {
                        // A leading '-' would read as a flag; "./-x" is the same path.
                        if text.starts_with('-') {
                            format!("./{text}").into()
                        } else {
                            text.into()
                        }
                    } else {
                        // `--key=value` keeps a value starting with '-' a value.
                        format!("--{key}={text}").into()
                    }
                })
                .collect())
        }
        _ => Err(format!("{key:?} cannot be set in a configuration file")),
    }
}

/// The flag-value text of a TOML string, number, boolean or date.
fn scalar_text(key: &str, value: &toml_edit::Value) -> Result<String, String> {
    use toml_edit::Value;
    match value {
        Value::String(s) => Ok(s.value().clone()),
        Value::Integer(i) => Ok(i.value().to_string()),
        Value::Float(f) => Ok(f.value().to_string()),
        Value::Boolean(b) => Ok(b.value().to_string()),
        Value::Datetime(d) => Ok(d.value().to_string()),
        Value::Array(_) | Value::InlineTable(_) => Err(format!(
            "{key:?}: a {} cannot be a flag value",
            value.type_name()
        )),
    }
}

/// A clap error's message without its `error: ` prefix, usage and help
/// hint, on one line.
fn clap_message(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    let message = message.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_string()
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The known key closest to the unknown `key`, if it is close enough to be
/// a likely typo.
fn suggestion<'a>(command: &'a Command, key: &str) -> Option<&'a str> {
    command
        .get_arguments()
        .filter_map(key_of)
        .filter(|known| !COMMAND_LINE_ONLY.contains(known))
        .map(|known| (edit_distance(key, known), known))
        .filter(|&(distance, known)| distance <= 2.max(known.len() / 4))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, known)| known)
}

/// Levenshtein distance between `a` and `b`, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;
    use clap::{CommandFactory, FromArgMatches};
    use std::time::Duration;

    /// `flash-server ARGS` with the configuration file `text` merged in
    /// (as `load` does after reading `--config`).
    fn with_file(args: &[&str], text: &str) -> Result<Cli> {
        let args: Vec<OsString> = std::iter::once("flash-server")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let command = Cli::command();
        let matches = command.clone().try_get_matches_from(&args)?;
        let merged = merge(&command, &matches, &args, "flash.toml", text)?;
        let matches = parse_with_file(&command, &merged, "flash.toml")?;
        Ok(Cli::from_arg_matches(&matches)?)
    }

    fn error(args: &[&str], text: &str) -> String {
        match with_file(args, text) {
            Ok(cli) => panic!("accepted: {cli:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn file_values_reach_the_flags() {
        let cli = with_file(
            &[],
            "root = \"/srv/www\"\nhelper-timeout = \"5s\"\nhelpers = 3\nhidden = \"allow\"\n",
        )
        .unwrap();
        assert_eq!(cli.root, Some("/srv/www".into()));
        assert_eq!(cli.helper_timeout, Duration::from_secs(5));
        assert_eq!(cli.helpers, 3);
        assert!(matches!(cli.hidden, crate::HiddenArg::Allow));
        // Keys not in the file keep their defaults.
        assert_eq!(cli.header_timeout, Duration::from_secs(10));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file =
            "root = \"/srv/www\"\nhelpers = 3\nlisten = [\"127.0.0.1:81\", \"127.0.0.1:82\"]\n";
        let cli = with_file(&["/other", "--helpers", "5"], file).unwrap();
        assert_eq!(cli.root, Some("/other".into()));
        assert_eq!(cli.helpers, 5);
        assert_eq!(cli.listen.len(), 2, "listen comes from the file");
        // A repeatable flag on the command line replaces the file's list.
        let cli = with_file(&["--listen", "127.0.0.1:83"], file).unwrap();
        assert_eq!(cli.listen, ["127.0.0.1:83".parse().unwrap()]);
    }

    #[test]
    fn arrays_are_repeated_flags() {
        let cli = with_file(&[], "listen = [\"127.0.0.1:81\", \"[::1]:82\"]\n").unwrap();
        assert_eq!(
            cli.listen,
            ["127.0.0.1:81".parse().unwrap(), "[::1]:82".parse().unwrap()]
        );
        // A single value for a repeatable flag is a list of one.
        let cli = with_file(&[], "listen = \"127.0.0.1:81\"\n").unwrap();
        assert_eq!(cli.listen, ["127.0.0.1:81".parse().unwrap()]);
        // A list for a flag that takes one value is refused.
        let e = error(&[], "\nhelpers = [1, 2]\n");
        assert!(
            e.contains("flash.toml:2:") && e.contains("takes one value"),
            "{e}"
        );
    }

    #[test]
    fn booleans_are_the_presence_of_a_switch() {
        assert!(
            with_file(&[], "no-header-cache = true")
                .unwrap()
                .no_header_cache
        );
        assert!(
            !with_file(&[], "no-header-cache = false")
                .unwrap()
                .no_header_cache
        );
        let e = error(&[], "no-header-cache = \"yes\"");
        assert!(
            e.contains("flash.toml:1:") && e.contains("is a switch"),
            "{e}"
        );
    }

    #[test]
    fn numbers_and_leading_dashes_are_values() {
        let cli = with_file(
            &[],
            "min-send-rate = 0\npath-cache-ttl = 2.5\nroot = \"-www\"",
        )
        .unwrap();
        assert_eq!(cli.min_send_rate, 0);
        assert_eq!(cli.path_cache_ttl, Duration::from_millis(2500));
        assert_eq!(cli.root, Some("./-www".into()));
    }

    #[test]
    fn unknown_key_names_its_line_and_a_likely_key() {
        let e = error(
            &[],
            "root = \"/srv\"\n\n# comment\nhelper-timout = \"30s\"\n",
        );
        assert_eq!(
            e,
            "flash.toml:4: unknown key \"helper-timout\" (did you mean \"helper-timeout\"?)"
        );
        let e = error(&[], "colour = \"blue\"\n");
        assert_eq!(e, "flash.toml:1: unknown key \"colour\"");
        // A key given on the command line is still checked in the file.
        let e = error(&["--helpers", "2"], "helperz = 2\n");
        assert!(e.contains("did you mean \"helpers\""), "{e}");
    }

    #[test]
    fn command_line_only_keys_are_refused() {
        for key in COMMAND_LINE_ONLY {
            let e = error(&[], &format!("\n{key} = true\n"));
            assert!(
                e.starts_with(&format!("flash.toml:2: key {key:?} is not allowed")),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_value_names_key_line_and_the_parsers_message() {
        let e = error(&[], "root = \"/srv\"\nheader-timeout = \"soon\"\n");
        assert!(
            e.starts_with("flash.toml:2: bad value for \"header-timeout\""),
            "{e}"
        );
        assert!(e.contains("invalid duration: soon"), "{e}");
        let e = error(&[], "arch = \"turbo\"");
        assert!(e.starts_with("flash.toml:1: bad value for \"arch\""), "{e}");
        assert!(e.contains("amped, sped"), "{e}");
        let e = error(&[], "index = \"a/b\"");
        assert!(e.contains("invalid index file name"), "{e}");
        // A bad value under a flag given on the command line is not read.
        assert!(with_file(&["--arch", "sped"], "arch = \"turbo\"").is_ok());
    }

    #[test]
    fn tables_are_not_values() {
        let e = error(&[], "helpers = 2\n[listen]\naddr = 1\n");
        assert!(
            e.starts_with("flash.toml:2:") && e.contains("not a table"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_names_its_line() {
        let e = error(&[], "helpers = 2\nroot = \"/srv\n");
        assert!(e.starts_with("flash.toml:2: TOML syntax error"), "{e}");
        let e = error(&[], "helpers = 2\nhelpers = 3\n");
        assert!(e.starts_with("flash.toml:2: TOML syntax error"), "{e}");
    }

    #[test]
    fn load_reads_the_named_file() {
        let path = std::env::temp_dir().join(format!("flash-settings-{}.toml", std::process::id()));
        std::fs::write(&path, "helpers = 4\n").unwrap();
        let args: Vec<OsString> = ["flash-server", "--config"]
            .iter()
            .map(OsString::from)
            .chain([path.clone().into_os_string()])
            .collect();
        let loaded = load::<Cli>(&args);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap().helpers, 4);
        let e = load::<Cli>(&args).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot read the configuration file"),
            "{e:#}"
        );
        // Without --config nothing is read.
        assert_eq!(
            load::<Cli>(&args[..1]).unwrap().helpers,
            flash_core::DEFAULT_HELPERS
        );
    }

    #[test]
    fn load_expanded_spells_the_file_out_as_flags() {
        let path = std::env::temp_dir().join(format!("flash-expand-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "root = \"/srv\"\nhelpers = 4\nno-header-cache = true\n",
        )
        .unwrap();
        let args: Vec<OsString> = ["flash-server", "--helpers", "2", "--config"]
            .iter()
            .map(OsString::from)
            .chain([path.clone().into_os_string()])
            .chain(["--index".into(), "a.html".into()])
            .collect();
        let result = load_expanded::<Cli>(&args);
        std::fs::remove_file(&path).unwrap();
        let (loaded, expanded) = result.unwrap();
        assert!(
            !expanded
                .iter()
                .any(|a| a.to_string_lossy().contains("config")),
            "{expanded:?}"
        );
        // The expanded command line means what the file and flags meant.
        let again = load::<Cli>(&expanded).unwrap();
        assert_eq!(again.root, Some("/srv".into()));
        assert_eq!(again.helpers, 2, "the flag still wins");
        assert!(again.no_header_cache);
        assert_eq!(
            format!(
                "{:?}",
                Cli {
                    config: None,
                    ..loaded
                }
            ),
            format!("{again:?}")
        );
        let words = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            without_config(&words(&["s", "--config=x", "-- ", "--", "--config", "y"])),
            words(&["s", "-- ", "--", "--config", "y"])
        );
    }

    /// The keys a configuration file may hold: every long flag but the
    /// command-line-only ones, and the positional root.
    fn keys() -> std::collections::BTreeSet<String> {
        let command = Cli::command();
        let keys = command
            .get_arguments()
            .filter_map(key_of)
            .filter(|key| !COMMAND_LINE_ONLY.contains(key))
            .map(String::from)
            .collect();
        keys
    }

    const CONTRIB: &str = include_str!("../../contrib/flash.toml");

    /// The keys of `contrib/flash.toml`, set or commented out (`# key = ...`).
    fn documented_keys() -> std::collections::BTreeSet<String> {
        CONTRIB
            .lines()
            .filter_map(|line| {
                let line = line.strip_prefix('#').unwrap_or(line).trim_start();
                let (key, _) = line.split_once(" = ")?;
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    .then(|| key.to_string())
            })
            .collect()
    }

    #[test]
    fn contrib_config_documents_every_flag() {
        let (documented, keys) = (documented_keys(), keys());
        let missing: Vec<_> = keys.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&keys).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "contrib/flash.toml must document exactly the flags: missing {missing:?}, unknown {extra:?}"
        );
    }

    #[test]
    fn contrib_config_is_valid_as_shipped_and_uncommented() {
        with_file(&[], CONTRIB).expect("contrib/flash.toml as shipped");
        let uncommented: String = CONTRIB
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.contains(' ')) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let set: std::collections::BTreeSet<String> = toml_edit::Document::parse(&uncommented)
            .expect("uncommented contrib/flash.toml is TOML")
            .iter()
            .map(|(key, _)| key.to_string())
            .collect();
        assert_eq!(set, keys(), "every key uncommented");
        let cli = with_file(&[], &uncommented).expect("contrib/flash.toml with every key set");
        // Every key set: the values are the defaults, except where the
        // file gives an example.
        assert!(!cli.no_header_cache);
        assert_eq!(cli.helpers, flash_core::DEFAULT_HELPERS);
    }
}
