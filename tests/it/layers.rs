//! The layers keep their promises, read from the source: `src/domain`
//! imports no tonic, prost or sea-orm and nothing of `crate::store` (or of
//! the edges, `grpc` and `app`); `src/store` imports from `crate::domain`
//! only the seam (`ports`), the records (`records`), the ids (`ids`) and the
//! errors (`error`); and no two modules of `src/` import each other, directly
//! or around a loop.
//!
//! Every path is read, not only `use` lines: `use` trees of any shape
//! (grouped, nested, `self`, globs, renames, `pub use`) and paths written
//! inline (`crate::store::SqlStore` in a signature). `super` and `self` are
//! resolved against the file's module; comments and string literals are
//! skipped.

use std::path::{Path, PathBuf};

/// Crates the domain must not name (the first segment of a path).
const DOMAIN_FORBIDDEN_CRATES: &[&str] = &["tonic", "prost", "sea_orm", "sea_query", "sqlx", "migration"];
/// Modules of this crate the domain must not name.
const DOMAIN_FORBIDDEN_MODULES: &[&str] = &["store", "grpc", "app"];
/// The modules of `crate::domain` the store may name.
const STORE_ALLOWED_DOMAIN_MODULES: &[&str] = &["ports", "records", "ids", "error"];

#[test]
fn domain_and_store_import_only_what_their_layers_allow() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let (mut domain_files, mut store_files, mut store_paths_into_domain) = (0, 0, 0);
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        let source = std::fs::read_to_string(&file).unwrap();
        let module = module_path(&relative);
        if relative.starts_with("domain/") {
            domain_files += 1;
        } else if relative.starts_with("store/") {
            store_files += 1;
            store_paths_into_domain += paths(&source, &module)
                .iter()
                .filter(|path| path.starts_with(&["crate".to_owned(), "domain".to_owned()]))
                .count();
        }
        violations.extend(check(&relative, &source));
    }
    // The reader found the house: a parser that saw nothing would pass.
    assert!(
        domain_files >= 10 && store_files >= 5,
        "read {domain_files} domain and {store_files} store files"
    );
    assert!(
        store_paths_into_domain >= 10,
        "found only {store_paths_into_domain} store paths into the domain"
    );
    assert!(violations.is_empty(), "imports across the layers:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_catches_what_it_must_and_nothing_else() {
    let store_ok = "use crate::domain::{\n    error::{Error, Result},\n    ids::{KeyId, UserId},\n    \
                    ports::{AuditFor, KeyStore},\n    records::{ApiKey, NewKey},\n};\n\
                    use super::{SqlStore, entity::users};\n\
                    fn f() -> crate::domain::records::User { todo!() }\n";
    assert_eq!(check("store/keys.rs", store_ok), Vec::<String>::new());
    let domain_ok = "use super::{ports::Store, records::User, Error};\nuse chrono::Utc;\n\
                     // use crate::store::SqlStore; (a comment)\n\
                     /* use sea_orm::Entity; */\n\
                     const S: &str = \"crate::store::SqlStore\";\n\
                     fn f<'a>(c: char) -> bool { c == '{' || c == '\\'' }\n\
                     use crate::config::Config;\n";
    assert_eq!(check("domain/keys.rs", domain_ok), Vec::<String>::new());

    let caught = |relative: &str, source: &str, wanted: &str| {
        let found = check(relative, source);
        let wanted = format!("`{wanted}`");
        assert!(found.iter().any(|v| v.contains(&wanted)), "{source:?} in {relative}: {found:?}");
    };
    // The store reaching past the seam, in every shape of path.
    caught("store/keys.rs", "use crate::domain::limits::LockPolicy;", "crate::domain::limits::LockPolicy");
    caught(
        "store/keys.rs",
        "use crate::{config::Config, domain::{records::User, validate::{Validator, CacheConfig}}};",
        "crate::domain::validate::CacheConfig",
    );
    caught("store/users.rs", "use crate::domain::User;", "crate::domain::User");
    caught("store/users.rs", "use crate::domain;", "crate::domain");
    caught("store/users.rs", "use crate::domain::*;", "crate::domain::*");
    caught("store/users.rs", "use crate::domain::{self, records::User};", "crate::domain");
    caught("store/users.rs", "use super::super::domain::Clock;", "crate::domain::Clock");
    caught("store/mod.rs", "use super::domain::Clock as C;", "crate::domain::Clock");
    caught(
        "store/mfa.rs",
        "fn f(p: crate::domain::limits::LockPolicy) {}",
        "crate::domain::limits::LockPolicy",
    );
    // The domain reaching down to the store or out to the wire.
    caught("domain/mod.rs", "use crate::{config::Config, store::SqlStore};", "crate::store::SqlStore");
    caught("domain/login.rs", "use crate::store::{NewSession, SessionMatch};", "crate::store::SessionMatch");
    caught("domain/mfa.rs", "async fn p() -> crate::store::SessionMatch {}", "crate::store::SessionMatch");
    caught("domain/mfa.rs", "use super::super::store::Rotation;", "crate::store::Rotation");
    caught("domain/limits.rs", "pub use sea_orm::{EntityTrait, QueryFilter};", "sea_orm::QueryFilter");
    caught("domain/error.rs", "fn f() -> ::tonic::Status { todo!() }", "tonic::Status");
    caught("domain/types.rs", "fn t() -> prost_types::Timestamp { todo!() }", "prost_types::Timestamp");
    caught("domain/grpc_like.rs", "use crate::grpc::convert;", "crate::grpc::convert");
}

#[test]
fn no_import_loop_between_the_modules_of_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges = Vec::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        let source = std::fs::read_to_string(&file).unwrap();
        edges.extend(module_edges(&relative, &source));
    }
    // The reader found the arrows the layout promises.
    for (from, to) in [("grpc", "domain"), ("store", "domain"), ("request", "errors"), ("app", "server")] {
        assert!(edges.iter().any(|(f, t)| f == from && t == to), "no arrow {from} -> {to} in {edges:?}");
    }
    assert_eq!(cycle(&edges), None, "an import loop between the modules of src/");
}

#[test]
fn the_loop_finder_finds_a_loop() {
    let mut edges = module_edges("request/observe.rs", "use crate::metrics::Metrics;");
    edges.extend(module_edges("metrics.rs", "fn f(o: crate::request::Outcome) {}"));
    edges.extend(module_edges("grpc/mod.rs", "use super::super::domain::Domain; use crate::Config;"));
    assert!(edges.contains(&("grpc".into(), "domain".into())), "{edges:?}");
    assert!(!edges.iter().any(|(_, to)| to == "Config"), "{edges:?}");
    let found = cycle(&edges).expect("request -> metrics -> request");
    assert!(found.contains(&"request".to_owned()) && found.contains(&"metrics".to_owned()), "{found:?}");
    edges.retain(|(from, _)| from != "metrics");
    assert_eq!(cycle(&edges), None);
}

/// The top-level modules of `src/` (a folder or a file, `lib`/`main` aside)
/// that one file names: `(its module, the other module)`.
fn module_edges(relative: &str, source: &str) -> Vec<(String, String)> {
    let module = module_path(relative);
    let Some(from) = module.get(1).cloned() else { return Vec::new() };
    let is_module = |name: &str| name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    let mut edges: Vec<(String, String)> = paths(source, &module)
        .into_iter()
        .filter(|path| path.len() >= 2 && path[0] == "crate" && path[1] != from && is_module(&path[1]))
        .map(|path| (from.clone(), path[1].clone()))
        .collect();
    edges.sort();
    edges.dedup();
    edges
}

/// A loop in the graph, as the modules along it, if there is one.
fn cycle(edges: &[(String, String)]) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &[(String, String)],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            return Some(path[start..].to_vec());
        }
        if done.iter().any(|n| n == node) {
            return None;
        }
        path.push(node.to_owned());
        for (_, to) in edges.iter().filter(|(from, _)| from == node) {
            if let Some(found) = visit(to, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.push(node.to_owned());
        None
    }
    let mut done = Vec::new();
    edges.iter().find_map(|(from, _)| visit(from, edges, &mut Vec::new(), &mut done))
}

/// The violations in one file of `src/` (its path relative to `src/`).
fn check(relative: &str, source: &str) -> Vec<String> {
    let module = module_path(relative);
    let mut violations = Vec::new();
    for path in paths(source, &module) {
        let shown = path.join("::");
        if relative.starts_with("domain/") {
            let first = path[0].as_str();
            let foreign_crate = DOMAIN_FORBIDDEN_CRATES
                .iter()
                .any(|name| first == *name || first.starts_with(&format!("{name}_")));
            let outer_module = first == "crate"
                && path.get(1).is_some_and(|module| DOMAIN_FORBIDDEN_MODULES.contains(&module.as_str()));
            if foreign_crate || outer_module {
                violations.push(format!("src/{relative}: the domain names `{shown}`"));
            }
        } else if relative.starts_with("store/")
            && path.starts_with(&["crate".to_owned(), "domain".to_owned()])
            && !path.get(2).is_some_and(|module| STORE_ALLOWED_DOMAIN_MODULES.contains(&module.as_str()))
        {
            violations.push(format!(
                "src/{relative}: the store names `{shown}`; from the domain it may name only {}",
                STORE_ALLOWED_DOMAIN_MODULES.join(", ")
            ));
        }
    }
    violations
}

/// The module a file under `src/` defines, as path segments.
fn module_path(relative: &str) -> Vec<String> {
    let mut segments = vec!["crate".to_owned()];
    let without_extension = relative.trim_end_matches(".rs");
    for part in without_extension.split('/') {
        if !matches!(part, "mod" | "lib" | "main") {
            segments.push(part.to_owned());
        }
    }
    segments
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

// === Reading paths ===

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

/// Every path `source` names, resolved against `module` where it starts
/// with `crate`, `super` or `self`: the leaves of its `use` trees and the
/// paths written inline.
fn paths(source: &str, module: &[String]) -> Vec<Vec<String>> {
    let tokens = tokenize(source);
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == Token::Ident("use".into()) {
            let mut leaves = Vec::new();
            i = use_tree(&tokens, i + 1, Vec::new(), &mut leaves);
            found.extend(leaves.into_iter().map(|leaf| resolve(leaf, module)));
            continue;
        }
        let starts_path = matches!(tokens[i], Token::Ident(_))
            && tokens.get(i + 1) == Some(&Token::PathSep)
            && (i == 0 || tokens[i - 1] != Token::PathSep);
        let rooted = tokens[i] == Token::PathSep && (i == 0 || !matches!(tokens[i - 1], Token::Ident(_)));
        if starts_path || rooted {
            let mut segments = Vec::new();
            let mut j = if rooted { i + 1 } else { i };
            while let Some(Token::Ident(name)) = tokens.get(j) {
                segments.push(name.clone());
                if tokens.get(j + 1) == Some(&Token::PathSep) {
                    j += 2;
                } else {
                    j += 1;
                    break;
                }
            }
            if !segments.is_empty() {
                found.push(resolve(segments, module));
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    found
}

/// Reads one use tree from `tokens[i]` under `prefix`, pushing its leaves;
/// returns where reading stopped (after the tree).
fn use_tree(tokens: &[Token], mut i: usize, mut prefix: Vec<String>, leaves: &mut Vec<Vec<String>>) -> usize {
    if tokens.get(i) == Some(&Token::PathSep) {
        i += 1; // `use ::tonic::…`
    }
    loop {
        match tokens.get(i) {
            Some(Token::Ident(name)) if name == "self" && !prefix.is_empty() => {
                // `a::{self, …}` names `a`.
                leaves.push(prefix.clone());
                i += 1;
            }
            Some(Token::Ident(name)) => {
                prefix.push(name.clone());
                i += 1;
                if tokens.get(i) == Some(&Token::PathSep) {
                    i += 1;
                    continue;
                }
                leaves.push(prefix.clone());
            }
            Some(Token::Punct('*')) => {
                prefix.push("*".into());
                leaves.push(prefix.clone());
                i += 1;
            }
            Some(Token::Punct('{')) => {
                i += 1;
                while tokens.get(i).is_some_and(|token| *token != Token::Punct('}')) {
                    i = use_tree(tokens, i, prefix.clone(), leaves);
                    if tokens.get(i) == Some(&Token::Punct(',')) {
                        i += 1;
                    }
                }
                i += 1;
            }
            _ => {}
        }
        break;
    }
    // `as alias`, then the end of this tree.
    if tokens.get(i) == Some(&Token::Ident("as".into())) {
        i += 2;
    }
    if tokens.get(i) == Some(&Token::Punct(';')) {
        i += 1;
    }
    i
}

/// Makes a path absolute where it starts with `crate`, `super` or `self`.
fn resolve(path: Vec<String>, module: &[String]) -> Vec<String> {
    let mut segments = path.into_iter().peekable();
    let mut base: Vec<String> = match segments.peek().map(String::as_str) {
        Some("crate") => {
            segments.next();
            vec!["crate".into()]
        }
        Some("self") => {
            segments.next();
            module.to_vec()
        }
        Some("super") => module.to_vec(),
        _ => Vec::new(),
    };
    while segments.peek().map(String::as_str) == Some("super") {
        segments.next();
        if base.len() > 1 {
            base.pop();
        }
    }
    base.extend(segments);
    base
}

/// Identifiers, `::` and the punctuation a use tree needs; comments,
/// string, character and byte literals and lifetimes are dropped.
fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            i = skip_string(&chars, i + 1);
        } else if (c == 'r' || (c == 'b' && next == Some('r')))
            && raw_string_start(&chars, if c == 'b' { i + 2 } else { i + 1 }).is_some()
        {
            let start = if c == 'b' { i + 2 } else { i + 1 };
            let hashes = raw_string_start(&chars, start).unwrap_or_default();
            i = skip_raw_string(&chars, start + hashes + 1, hashes);
        } else if c == 'b' && next == Some('"') {
            i = skip_string(&chars, i + 2);
        } else if c == 'b' && next == Some('\'') {
            i = skip_char(&chars, i + 1);
        } else if c == '\'' {
            // A character literal, or a lifetime (`'a`), which is skipped.
            if next == Some('\\') || chars.get(i + 2) == Some(&'\'') {
                i = skip_char(&chars, i);
            } else {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word == "r" && chars.get(i) == Some(&'#') {
                // A raw identifier: `r#type`.
                i += 1;
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            } else {
                tokens.push(Token::Ident(word));
            }
        } else if c == ':' && next == Some(':') {
            tokens.push(Token::PathSep);
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

/// After `"` at `i`: the index after the closing quote.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The number of `#` of a raw string opening at `i` (`#…#"`), if one does.
fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
    let hashes = chars[i.min(chars.len())..].iter().take_while(|c| **c == '#').count();
    (chars.get(i + hashes) == Some(&'"')).then_some(hashes)
}

/// After the opening `"` of a raw string with `hashes` `#`: the index after
/// its end.
fn skip_raw_string(chars: &[char], mut i: usize, hashes: usize) -> usize {
    while i < chars.len() {
        if chars[i] == '"' && chars[i + 1..].iter().take(hashes).filter(|c| **c == '#').count() == hashes {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

/// At the opening `'` of a character literal: the index after it.
fn skip_char(chars: &[char], mut i: usize) -> usize {
    i += 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '\'' => return i + 1,
            _ => i += 1,
        }
    }
    i
}
