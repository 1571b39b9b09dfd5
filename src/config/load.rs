//! Reading the main file and its drop-ins, merging them in lexical order
//! (later keys win), and pointing every error at file, line, column and key.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::raw::RawConfig;
use super::settings::Settings;

pub(crate) const DEFAULT_CONFIG: &str = "/etc/drydock/drydock.toml";

/// The largest configuration file drydock reads (the shipped one is ~10 KiB).
pub(crate) const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A path as shown in messages: control characters in file names escaped.
fn shown(path: &Path) -> String {
    crate::text::escape(&path.to_string_lossy()).into_owned()
}

/// Causes are kept as text in the message (not as `source`), so a printed
/// chain never repeats them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {}: {problem}", shown(path))]
    Read { path: PathBuf, problem: String },
    #[error("listing config drop-ins in {}: {problem}", shown(dir))]
    DropIns { dir: PathBuf, problem: String },
    #[error(
        "config drop-in {}: {problem}; remove it or rename it so it does not end in .toml",
        shown(path)
    )]
    DropIn { path: PathBuf, problem: String },
    #[error("{}:{line}:{column}: {}: the file is not valid UTF-8 (save it as UTF-8)", shown(path), key.as_deref().map_or("(before any key)".to_string(), |k| format!("key `{k}`")))]
    Encoding {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
    },
    #[error("{}:{line}:{column}: TOML syntax error: {message}", shown(path))]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}:{line}:{column}: key `{key}`: {message}", shown(path))]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

/// A parser's message, bounded (toml quotes whole values in type errors).
fn bounded(message: &str) -> String {
    crate::text::display(message.trim(), 300)
}

/// Where a key and its value sit in one file.
#[derive(Debug, Clone)]
struct KeySpan {
    path: String,
    key: Range<usize>,
    value: Range<usize>,
}

/// One parsed file, kept with its text so errors can be located later.
struct SourceFile {
    path: PathBuf,
    text: String,
    keys: Vec<KeySpan>,
    table: toml::Table,
}

impl SourceFile {
    fn parse(path: PathBuf, text: String) -> Result<SourceFile, ConfigError> {
        // One parse per file: the document gives the key spans, the located
        // type check and the table to merge.
        let doc = toml_edit::Document::parse(text.clone()).map_err(|e| {
            let (line, column) = line_col(&text, e.span().map_or(0, |s| s.start));
            ConfigError::Syntax {
                path: path.clone(),
                line,
                column,
                message: bounded(e.message()),
            }
        })?;
        let mut keys = Vec::new();
        collect_keys(doc.as_table(), "", &mut keys);
        // Unknown keys and wrong types, located in this file.
        if let Err(e) = toml_edit::de::from_document::<RawConfig>(doc.clone()) {
            let span = e.span().unwrap_or(0..0);
            let key = innermost_key(&keys, &span).unwrap_or_else(|| "(top level)".into());
            let (line, column) = line_col(&text, span.start);
            return Err(ConfigError::Invalid {
                path,
                line,
                column,
                key,
                message: bounded(e.message()),
            });
        }
        let table: toml::Table =
            toml_edit::de::from_document(doc).map_err(|e| ConfigError::Syntax {
                path: path.clone(),
                line: 1,
                column: 1,
                message: bounded(e.message()),
            })?;
        Ok(SourceFile {
            path,
            text,
            keys,
            table,
        })
    }
}

fn collect_keys(table: &toml_edit::Table, prefix: &str, out: &mut Vec<KeySpan>) {
    for (name, item) in table.iter() {
        let path = join(prefix, name);
        let key_span = table.key(name).and_then(|k| k.span()).unwrap_or(0..0);
        collect_item(item, &path, key_span, out);
    }
}

fn collect_item(item: &toml_edit::Item, path: &str, key: Range<usize>, out: &mut Vec<KeySpan>) {
    match item {
        toml_edit::Item::Table(t) => {
            out.push(KeySpan {
                path: path.to_string(),
                key: key.clone(),
                value: t.span().unwrap_or(key),
            });
            collect_keys(t, path, out);
        }
        toml_edit::Item::Value(v) => {
            out.push(KeySpan {
                path: path.to_string(),
                key: key.clone(),
                value: v.span().unwrap_or(key.clone()),
            });
            collect_value(v, path, out);
        }
        toml_edit::Item::ArrayOfTables(array) => {
            for (i, t) in array.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.push(KeySpan {
                    path: p.clone(),
                    key: key.clone(),
                    value: t.span().unwrap_or(key.clone()),
                });
                collect_keys(t, &p, out);
            }
        }
        toml_edit::Item::None => {}
    }
}

fn collect_value(value: &toml_edit::Value, path: &str, out: &mut Vec<KeySpan>) {
    match value {
        toml_edit::Value::Array(array) => {
            for (i, v) in array.iter().enumerate() {
                let p = format!("{path}[{i}]");
                let span = v.span().unwrap_or(0..0);
                out.push(KeySpan {
                    path: p.clone(),
                    key: span.clone(),
                    value: span,
                });
                collect_value(v, &p, out);
            }
        }
        toml_edit::Value::InlineTable(t) => {
            for (name, v) in t.iter() {
                let p = join(path, name);
                let key = t.key(name).and_then(|k| k.span()).unwrap_or(0..0);
                out.push(KeySpan {
                    path: p.clone(),
                    key,
                    value: v.span().unwrap_or(0..0),
                });
                collect_value(v, &p, out);
            }
        }
        _ => {}
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The deepest key whose key or value span covers the error position.
fn innermost_key(keys: &[KeySpan], span: &Range<usize>) -> Option<String> {
    let covers = |r: &Range<usize>| r.start <= span.start && span.start < r.end.max(r.start + 1);
    keys.iter()
        .filter(|k| covers(&k.key) || covers(&k.value))
        .max_by_key(|k| k.path.len())
        .map(|k| k.path.clone())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => {
                merge(existing, incoming)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// The drop-in directory that belongs to a main config file.
pub(crate) fn drop_in_dir(main: &Path) -> PathBuf {
    let mut dir = main.as_os_str().to_owned();
    dir.push(".d");
    PathBuf::from(dir)
}

/// The files that make up the configuration, in merge order. Every
/// `*.toml` in the drop-in directory must be a readable regular file (or a
/// symlink to one): one that is not is an error, never silently skipped.
/// Hidden files (`.#x.toml`, an editor's lock) are not drop-ins.
pub(crate) fn config_files(main: &Path, main_required: bool) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    // symlink_metadata: a dangling symlink at the main path is there, and
    // must fail to read rather than be taken for "no file".
    if main_required || std::fs::symlink_metadata(main).is_ok() {
        files.push(main.to_path_buf());
    }
    let dir = drop_in_dir(main);
    let list_err = |e: std::io::Error| ConfigError::DropIns {
        dir: dir.clone(),
        problem: e.to_string(),
    };
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut drop_ins = Vec::new();
            for entry in entries {
                let entry = entry.map_err(list_err)?;
                let name = entry.file_name();
                let name = name.as_encoded_bytes();
                if !name.ends_with(b".toml") || name.starts_with(b".") {
                    continue;
                }
                let path = entry.path();
                check_drop_in(&path)?;
                drop_ins.push(path);
            }
            drop_ins.sort();
            files.extend(drop_ins);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(list_err(e)),
    }
    Ok(files)
}

fn check_drop_in(path: &Path) -> Result<(), ConfigError> {
    let problem = |problem: String| ConfigError::DropIn {
        path: path.to_path_buf(),
        problem,
    };
    let link = std::fs::symlink_metadata(path).map_err(|e| problem(e.to_string()))?;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(meta) => Err(problem(format!(
            "it is {}, not a regular file",
            crate::fileread::kind_of(meta.file_type())
        ))),
        Err(e) if link.file_type().is_symlink() => Err(problem(format!(
            "it is a symbolic link that cannot be followed (dangling or a loop: {e})"
        ))),
        Err(e) => Err(problem(e.to_string())),
    }
}

/// One file's text: a regular file of bounded size, in UTF-8.
fn read_source(path: &Path) -> Result<String, ConfigError> {
    let bytes =
        crate::fileread::read_regular(path, MAX_CONFIG_BYTES).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let lossy = String::from_utf8_lossy(e.as_bytes());
        // The bytes before the bad one are intact, so the position (and,
        // when the rest parses, the key) is the same in the lossy text.
        let (line, column) = line_col(&lossy, offset);
        let key = toml_edit::Document::parse(lossy.as_ref())
            .ok()
            .and_then(|doc| {
                let mut keys = Vec::new();
                collect_keys(doc.as_table(), "", &mut keys);
                innermost_key(&keys, &(offset..offset + 1))
            });
        ConfigError::Encoding {
            path: path.to_path_buf(),
            line,
            column,
            key,
        }
    })
}

/// Parses configuration text as if read from `path` (no drop-ins): the
/// loader without the file system, for fuzzing and tests.
pub fn load_text(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    let source = SourceFile::parse(path.to_path_buf(), text.to_string())?;
    settle(path, vec![source])
}

/// Loads and validates the configuration. `explicit` is true when the user
/// named the main file, which then must exist.
pub fn load(main: &Path, explicit: bool) -> Result<Settings, ConfigError> {
    let mut sources = Vec::new();
    for path in config_files(main, explicit)? {
        let text = read_source(&path)?;
        sources.push(SourceFile::parse(path, text)?);
    }
    settle(main, sources)
}

fn settle(main: &Path, sources: Vec<SourceFile>) -> Result<Settings, ConfigError> {
    let mut merged = toml::Table::new();
    for source in &sources {
        merge(&mut merged, source.table.clone());
    }
    let raw =
        RawConfig::deserialize(toml::Value::Table(merged)).map_err(|e| ConfigError::Invalid {
            path: main.to_path_buf(),
            line: 1,
            column: 1,
            key: "(merged)".into(),
            message: bounded(e.message()),
        })?;
    Settings::from_raw(raw).map_err(|e| {
        // The last file that set the key is the one that counts.
        let found = sources.iter().rev().find_map(|s| {
            let exact = s.keys.iter().find(|k| k.path == e.key);
            // An element's key like `list[2]` falls back to the list itself.
            let within = || {
                s.keys
                    .iter()
                    .filter(|k| e.key.starts_with(&format!("{}[", k.path)))
                    .max_by_key(|k| k.path.len())
            };
            exact.or_else(within).map(|k| (s, k.value.start))
        });
        let (path, (line, column)) = match found {
            Some((s, offset)) => (s.path.clone(), line_col(&s.text, offset)),
            None => (main.to_path_buf(), (1, 1)),
        };
        ConfigError::Invalid {
            path,
            line,
            column,
            key: e.key,
            message: e.error.to_string(),
        }
    })
}
